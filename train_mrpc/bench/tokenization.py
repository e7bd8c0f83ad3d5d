"""Tokenization throughput of MRPC sentence pairs: nine ways, each as a ratio to the Rust library's floor.

    train-mrpc bench tokenization            # full run (real MRPC when ../shared has it)
    train-mrpc bench tokenization --quick    # smoke test, a few seconds

Every method tokenizes the same pairs (truncation to 128 tokens, no padding unless the method pads) and
its token ids are checked against the floor's outside the clock. See benchmarks/README.md.
"""

from __future__ import annotations

import tempfile
import time
from pathlib import Path

from train_mrpc import hub
from train_mrpc.bench import common

FLOOR = "floor"
FAST_FLOOR = "floor_no_offsets"
METHODS = {  # name -> what it measures (kept in the JSON next to the figures)
    FLOOR: "tokenizers.Tokenizer.encode_batch on the raw pairs (Rust, parallel; Encoding objects, no Python lists)",
    FAST_FLOOR: "tokenizers.Tokenizer.encode_batch_fast: the same without character offsets (what the project calls)",
    "project_cold": "train_mrpc.data.tokenize_dataset, empty cache: datasets.map(batched) + Arrow files written",
    "project_warm": "train_mrpc.data.tokenize_dataset again, cache hit: content fingerprint + Arrow file loaded",
    "course_padding_true": "one tokenizer call over whole columns, padding=True (the Hugging Face course)",
    "per_pair_call": "one tokenizer call per pair, in a Python loop",
    "legacy_python": "BertTokenizerLegacy (pure-Python WordPiece), one call over whole columns",
    "transformers_in_map": "datasets.map over a tokenizer(a, b, truncation=True) call, in memory, types inferred",
    "datasets_map_1proc": "datasets.map(tokenize_pairs, batched=True, num_proc=1), in memory",
    "datasets_map_2proc": "datasets.map(tokenize_pairs, batched=True, num_proc=2), in memory",
}


def parse_args(argv=None):
    parser = common.base_parser(__doc__, prog="train-mrpc bench tokenization")
    parser.add_argument(
        "--pairs",
        type=common.positive_int,
        default=None,
        help="Use the first N pairs (default: every split, 5801 pairs; --quick: 400).",
    )
    parser.add_argument(
        "--repeats", type=common.positive_int, default=None, help="Timed repeats per method (default 5; --quick 2)."
    )
    parser.add_argument(
        "--warmup", type=common.non_negative_int, default=1, help="Untimed warm-up calls per method (default 1)."
    )
    return parser.parse_args(argv)


def ids_of(encodings) -> list[list[int]]:
    return [list(e) for e in encodings]


def warm_breakdown(raw, tokenizer, max_length: int, warmup: int, repeats: int, warm_median: float) -> dict | None:
    """Where a cache hit's time goes: the project's two content fingerprints, and the rest (datasets' own
    hashing of the map call, opening the Arrow files). None if those private helpers are gone."""
    from train_mrpc import data

    tokenizer_fp, split_fp = getattr(data, "_tokenizer_fingerprint", None), getattr(data, "split_fingerprint", None)
    if tokenizer_fp is None or split_fp is None:
        return None
    tok = common.summarize(
        common.time_calls(lambda: tokenizer_fp(tokenizer, max_length, True), warmup=warmup, repeats=repeats)[0]
    )
    content = common.summarize(
        common.time_calls(lambda: [split_fp(d) for d in raw.values()], warmup=warmup, repeats=repeats)[0]
    )
    return {
        "tokenizer_fingerprint_seconds": tok["median"],
        "content_fingerprint_seconds": content["median"],
        "rest_seconds": max(0.0, warm_median - tok["median"] - content["median"]),
        "note": "medians measured separately; rest = project_warm median minus the two fingerprints",
    }


def main(argv=None) -> dict | None:
    if argv is None:  # run as a script
        return common.run_as_command("tokenization")
    args = parse_args(argv)
    args.out = common.resolve_out(args.out)
    import datasets
    import tokenizers
    from datasets import DatasetDict

    from train_mrpc.data import (
        pair_encoder,
        to_dataset,
        tokenize_dataset,
        tokenize_pairs,
    )

    datasets.disable_progress_bars()
    datasets.utils.logging.set_verbosity_error()
    env = common.environment()
    repeats = args.repeats if args.repeats is not None else (2 if args.quick else 5)
    guard = common.guard_settings(args)
    n_limit = args.pairs if args.pairs is not None else (400 if args.quick else None)

    # --- inputs (outside every clock) ---------------------------------------------------------------
    splits, source = common.load_pairs(args.data_dir, args.seed)
    if n_limit is not None:  # the first N pairs, split by split
        kept, left = {}, n_limit
        for split, columns in splits.items():
            if left > 0:
                kept[split] = {k: v[:left] for k, v in columns.items()}
                left -= len(kept[split]["sentence1"])
        splits = kept
    first = [s for c in splits.values() for s in c["sentence1"]]
    second = [s for c in splits.values() for s in c["sentence2"]]
    pairs = list(zip(first, second))
    n = len(pairs)
    tokenizer, folder, tokenizer_name = common.load_tokenizer(args.tokenizer)
    legacy = common.legacy_tokenizer(folder)
    floor_tokenizer = tokenizers.Tokenizer.from_str(tokenizer.backend_tokenizer.to_str())
    floor_tokenizer.no_padding()
    floor_tokenizer.enable_truncation(max_length=common.MAX_LENGTH)
    raw = DatasetDict({split: to_dataset(columns) for split, columns in splits.items()})
    flat = to_dataset(
        {k: [v for c in splits.values() for v in c[k]] for k in ("sentence1", "sentence2", "label", "idx")}
    )
    max_length = common.MAX_LENGTH
    call_kwargs = {"truncation": True, "max_length": max_length}
    encoder = pair_encoder(tokenizer, max_length)
    workdir = tempfile.TemporaryDirectory(prefix="bench-tokenization-")
    cold_dirs = iter(range(10**6))
    state = {}

    def fresh_cache_dir():
        state["cache"] = Path(workdir.name) / f"cold-{next(cold_dirs)}"

    warm_dir = Path(workdir.name) / "warm"
    tokenize_dataset(raw, tokenizer, max_length, cache_dir=warm_dir)  # fills the cache the warm runs hit

    runs = {
        FLOOR: (lambda: floor_tokenizer.encode_batch(pairs), None),
        FAST_FLOOR: (lambda: floor_tokenizer.encode_batch_fast(pairs), None),
        "project_cold": (
            lambda: tokenize_dataset(raw, tokenizer, max_length, cache_dir=state["cache"]),
            fresh_cache_dir,
        ),
        "project_warm": (lambda: tokenize_dataset(raw, tokenizer, max_length, cache_dir=warm_dir), None),
        "course_padding_true": (lambda: tokenizer(first, second, padding=True, **call_kwargs), None),
        "per_pair_call": (lambda: [tokenizer(a, b, **call_kwargs) for a, b in pairs], None),
        "legacy_python": (lambda: legacy(first, second, return_token_type_ids=True, **call_kwargs), None),
        "transformers_in_map": (
            lambda: flat.map(
                lambda b: tokenizer(b["sentence1"], b["sentence2"], **call_kwargs),
                batched=True,
                batch_size=1000,
                keep_in_memory=True,
                load_from_cache_file=False,
            ),
            None,
        ),
        "datasets_map_1proc": (
            lambda: flat.map(
                tokenize_pairs,
                batched=True,
                batch_size=1000,
                num_proc=None,
                fn_kwargs={"encoder": encoder},
                keep_in_memory=True,
                load_from_cache_file=False,
            ),
            None,
        ),
        "datasets_map_2proc": (
            lambda: flat.map(
                tokenize_pairs,
                batched=True,
                batch_size=1000,
                num_proc=2,
                fn_kwargs={"encoder": encoder},
                keep_in_memory=True,
                load_from_cache_file=False,
            ),
            None,
        ),
    }

    # How each method's output becomes a list of token-id lists, to check it against the floor's.
    def unpadded(out):
        return [ids[: sum(mask)] for ids, mask in zip(out["input_ids"], out["attention_mask"])]

    extract = {
        FLOOR: lambda out: [e.ids for e in out],
        FAST_FLOOR: lambda out: [e.ids for e in out],
        "transformers_in_map": lambda out: out["input_ids"],
        "project_cold": lambda out: [ids for split in out.values() for ids in split["input_ids"]],
        "project_warm": lambda out: [ids for split in out.values() for ids in split["input_ids"]],
        "course_padding_true": unpadded,
        "per_pair_call": lambda out: [o["input_ids"] for o in out],
        "legacy_python": lambda out: out["input_ids"],
        "datasets_map_1proc": lambda out: out["input_ids"],
        "datasets_map_2proc": lambda out: out["input_ids"],
    }

    results, reference = {}, None
    started = time.perf_counter()
    for name, (fn, setup) in runs.items():
        if name == "legacy_python" and legacy is None:
            results[name] = {"description": METHODS[name], "skipped": f"no vocab.txt in {folder}"}
            continue

        def measure(fn=fn, setup=setup):
            with common.OtherCpu() as other:
                outcome = common.time_calls(fn, warmup=args.warmup, repeats=repeats, setup=setup)
            return outcome, other.cores

        (timed, warm, out), guarded = common.run_guarded(measure, **guard)
        ids = extract[name](out)
        if reference is None:
            reference = ids
            lengths = [len(x) for x in ids]
            tokens = sum(lengths)
        identical = sum(a == b for a, b in zip(ids, reference)) / n if len(ids) == n else 0.0
        stats = common.summarize(timed)
        record = {
            "description": METHODS[name],
            "seconds": stats,
            "warmup_seconds": warm,
            "pairs_per_s": n / stats["median"],
            "tokens_per_s": tokens / stats["median"],
            "identical_ids_fraction": identical,
            "guard": guarded,
        }
        if name == "course_padding_true":
            padded = len(out["input_ids"]) * len(out["input_ids"][0])
            record["padded_tokens_per_s"] = padded / stats["median"]
            record["padding_fraction"] = 1 - tokens / padded
        results[name] = record
        del out
    breakdown = warm_breakdown(
        raw, tokenizer, max_length, args.warmup, repeats, results["project_warm"]["seconds"]["median"]
    )
    floor_median, fast_median = (results[name]["seconds"]["median"] for name in (FLOOR, FAST_FLOOR))
    for record in results.values():
        if "seconds" in record:
            record["throughput_ratio_to_floor"] = floor_median / record["seconds"]["median"]
            record["time_ratio_to_floor"] = record["seconds"]["median"] / floor_median
            record["time_ratio_to_floor_no_offsets"] = record["seconds"]["median"] / fast_median
    workdir.cleanup()

    lengths_sorted = sorted(lengths)
    record = {
        "benchmark": "tokenization",
        "quick": args.quick,
        "environment": env,
        "settings": {
            "data_source": source,
            "splits": {split: len(c["sentence1"]) for split, c in splits.items()},
            "pairs": n,
            "tokenizer": tokenizer_name,
            "max_length": max_length,
            "warmup": args.warmup,
            "repeats": repeats,
            "guard": guard,
            "timing": "median of the timed repeats; warm-up calls are reported but not counted",
        },
        "lengths": {
            "total_tokens": tokens,
            "mean": tokens / n,
            "median": common.percentile(lengths_sorted, 50),
            "p95": common.percentile(lengths_sorted, 95),
            "max": lengths_sorted[-1],
            "min": lengths_sorted[0],
            "truncated_at_max_length": sum(length == max_length for length in lengths),
        },
        "methods": results,
        "project_warm_breakdown": breakdown,
        "contended_methods": [name for name, r in results.items() if r.get("guard", {}).get("contended")],
        "environment_end": {"load_average_1m": common.load_average()},
        "wall_seconds": time.perf_counter() - started,
    }

    # --- output -----------------------------------------------------------------------------------------
    args.out.mkdir(parents=True, exist_ok=True)
    rows = []
    for name, r in results.items():
        if "skipped" in r:
            rows.append([name, "skipped", "", "", "", "", "", r["skipped"], ""])
            continue
        s = r["seconds"]
        rows.append(
            [
                name,
                f"{r['pairs_per_s']:,.0f}",
                f"{r['tokens_per_s']:,.0f}",
                f"{s['median'] * 1e3:,.1f} ({s['min'] * 1e3:,.1f}–{s['max'] * 1e3:,.1f})",
                f"{r['throughput_ratio_to_floor']:.3f}",
                f"{r['time_ratio_to_floor']:.2f}x",
                f"{r['time_ratio_to_floor_no_offsets']:.2f}x",
                f"{r['identical_ids_fraction']:.4f}",
                "yes" if r["guard"]["contended"] else "",
            ]
        )
    lens = record["lengths"]
    common.print_table(
        f"Tokenization: {n} pairs ({source}), tokenizer {tokenizer_name}",
        [
            ("method", "left"),
            ("pairs/s", "right"),
            ("tokens/s", "right"),
            ("ms median (min–max)", "right"),
            ("throughput / floor", "right"),
            ("time / floor", "right"),
            ("time / no-offsets floor", "right"),
            ("ids = floor", "right"),
            ("contended", "left"),
        ],
        rows,
        caption=f"tokens per pair: mean {lens['mean']:.1f}, median {lens['median']:.0f}, p95 {lens['p95']:.0f}, "
        f"max {lens['max']}; {repeats} timed repeats after {args.warmup} warm-up"
        + (
            f"; project_warm = tokenizer fingerprint {breakdown['tokenizer_fingerprint_seconds'] * 1e3:.0f} ms + "
            f"content fingerprint {breakdown['content_fingerprint_seconds'] * 1e3:.0f} ms + rest "
            f"{breakdown['rest_seconds'] * 1e3:.0f} ms"
            if breakdown
            else ""
        )
        + f"; {common.short_env(env)}",
    )
    plotted = [(name, r) for name, r in results.items() if "seconds" in r]
    plot = common.barh_panels(
        args.out / "tokenization.png",
        [
            {
                "title": f"{n} MRPC-shaped pairs, {hub.model_name(tokenizer_name)} tokenizer"
                + (" (quick: not a speed claim)" if args.quick else ""),
                "labels": [name for name, _ in plotted],
                "values": [r["throughput_ratio_to_floor"] for _, r in plotted],
                "texts": [
                    f"{r['throughput_ratio_to_floor']:.2f}x  ({r['pairs_per_s']:,.0f} pairs/s)" for _, r in plotted
                ],
                "colors": [
                    "#55a868" if name == FLOOR else "#c44e52" if name == "project_warm" else "#4c72b0"
                    for name, _ in plotted
                ],
                "xlabel": "throughput relative to the floor (tokenizers encode_batch = 1, log scale; higher is faster)",
                "log": True,
                "ref": 1.0,
            }
        ],
        title="Tokenization throughput vs. the Rust floor",
        footnote=common.short_env(env),
    )
    record["plots"] = [plot.name]
    path = common.write_json(args.out / "tokenization.json", record)
    common.print_summary_line(
        {
            "benchmark": "tokenization",
            "quick": args.quick,
            "json": common.display_path(path),
            "plots": [common.display_path(plot)],
            "device": env["device_name"],
            "pairs": n,
            "floor_pairs_per_s": round(results[FLOOR]["pairs_per_s"], 1),
            "ratio_to_floor": {name: round(r["throughput_ratio_to_floor"], 4) for name, r in plotted},
            "project_cold_time_ratio": {
                "floor": round(results["project_cold"]["time_ratio_to_floor"], 4),
                FAST_FLOOR: round(results["project_cold"]["time_ratio_to_floor_no_offsets"], 4),
            },
            "project_warm_seconds": round(results["project_warm"]["seconds"]["median"], 5),
            "wall_seconds": round(record["wall_seconds"], 2),
        }
    )
    return record


if __name__ == "__main__":
    main()
