"""Markdown tables from benchmark JSON files, for benchmarks/README.md: the README's figures are pasted
from this output, never typed by hand.

    train-mrpc bench tables benchmarks/results/cpu-2core
"""

from __future__ import annotations

from pathlib import Path


def env_line(env: dict) -> str:
    v, cpu = env["versions"], env["cpu"]
    commit = (env["git"]["commit"] or "unknown")[:10] + (" (with uncommitted changes)" if env["git"]["dirty"] else "")
    machine = (
        env["gpu"]["name"]
        if env.get("gpu")
        else f"{cpu['model']}, {cpu['usable_cpus']} CPUs, flags {' '.join(cpu['flags_of_interest'])}"
    )
    return (
        f"{machine}; torch {v['torch']}, transformers {v['transformers']}, accelerate {v['accelerate']}, "
        f"datasets {v['datasets']}, tokenizers {v['tokenizers']}; commit {commit}; {env['started_utc']}; "
        f"{env['torch_threads']} torch threads; load average at start {cpu['load_average_1m']:.2f}"
    )


def other_cores(*figures) -> str:
    """Cores other processes used during the timed part (max over the runs given); '*' marks contended ones."""
    guards = [f["guard"] for f in figures if f and f.get("guard")]
    if not guards or any(g["other_cpu_cores"] is None for g in guards):
        return "–"
    worst = max(g["other_cpu_cores"] for g in guards)
    return f"{worst:.2f}" + (" *" if any(g["contended"] for g in guards) else "")


def tokenization_table(record: dict) -> str:
    s, lens = record["settings"], record["lengths"]
    lines = [
        f"{s['pairs']} pairs ({s['data_source']}), tokenizer {s['tokenizer']}, truncation to {s['max_length']}; "
        f"median of {s['repeats']} repeats after {s['warmup']} warm-up. Tokens per pair: mean {lens['mean']:.1f}, "
        f"median {lens['median']:.0f}, p95 {lens['p95']:.0f}, max {lens['max']}.",
        "",
        (
            "| method | pairs/s | tokens/s | median ms (min–max) | throughput / floor | time / floor "
            "| time / no-offsets floor | ids = floor | other CPU (cores) |"
        ),
        "|---|---:|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for name, m in record["methods"].items():
        if "skipped" in m:
            lines.append(f"| {name} | skipped: {m['skipped']} | | | | | | | |")
            continue
        t = m["seconds"]
        lines.append(
            f"| {name} | {m['pairs_per_s']:,.0f} | {m['tokens_per_s']:,.0f} | {t['median'] * 1e3:,.1f} "
            f"({t['min'] * 1e3:,.1f}–{t['max'] * 1e3:,.1f}) | {m['throughput_ratio_to_floor']:.2f} | "
            f"{m['time_ratio_to_floor']:.2f}× | {m['time_ratio_to_floor_no_offsets']:.2f}× | "
            f"{m['identical_ids_fraction']:.4f} | {other_cores(m)} |"
        )
    b = record.get("project_warm_breakdown")
    if b:
        lines += [
            "",
            f"Cache hit (project_warm, {record['methods']['project_warm']['seconds']['median'] * 1e3:.0f} ms): "
            f"tokenizer fingerprint {b['tokenizer_fingerprint_seconds'] * 1e3:.0f} ms, content fingerprint "
            f"{b['content_fingerprint_seconds'] * 1e3:.0f} ms, rest (datasets' hashing of the map call, Arrow "
            f"load) {b['rest_seconds'] * 1e3:.0f} ms.",
        ]
    lines += ["", f"Measured on: {env_line(record['environment'])}."]
    return "\n".join(lines)


def train_step_table(record: dict) -> str:
    s, peaks = record["settings"], record["matmul_peak"]
    gib = 2**30
    memory = "CUDA max allocated" if record["environment"]["device"] == "cuda" else "process RSS peak"
    lines = [
        f"Median of {s['steps']} timed steps after {s['warmup']} warm-up; batches from {s['data_source']}. "
        "Matmul peak (MFU denominator, "
        + ", ".join(f"{p} {v['flops_per_s'] / 1e9:,.0f} GFLOP/s" for p, v in peaks.items())
        + f", {next(iter(peaks.values()))['size']}² matmul).",
        "",
        f"| model | batch | prec | padding | attn | compile | step s median (min–max) | samples/s | real tokens/s | "
        f"padding | peak GiB ({memory}) | GFLOP/s | MFU % | useful MFU % | Accelerate / bare | compile s | other CPU (cores) |",
        "|---|---:|---|---|---|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for c in record["cells"]:
        a, t = c["accelerate"], c["accelerate"]["step_seconds"]
        ratio = f"{c['accelerate_overhead_ratio']:.3f}" if c["accelerate_overhead_ratio"] is not None else "–"
        compile_s = f"{a['compile_seconds']:.0f}" if c["compile"] else ""
        lines.append(
            f"| {c['model']} | {c['batch_size']} | {c['precision']} | {c['padding']} | {c['attn']} | "
            f"{'yes' if c['compile'] else 'no'} | {t['median']:.3f} ({t['min']:.3f}–{t['max']:.3f}) | "
            f"{a['samples_per_s']:.1f} | {a['real_tokens_per_s']:,.0f} | {100 * c['padding_fraction']:.0f}% | "
            f"{a['peak_memory_bytes'] / gib:.2f} | {a['achieved_flops_per_s'] / 1e9:.0f} | {100 * a['mfu']:.1f} | "
            f"{100 * a['useful_mfu']:.1f} | {ratio} | {compile_s} | {other_cores(a, c['bare'])} |"
        )
    summary = record["summary"]
    if summary["accelerate_overhead_ratio_median"] is not None:
        lines += [
            "",
            f"Accelerate / bare step-time ratio over the {sum(c['bare'] is not None for c in record['cells'])} "
            f"cells with a bare baseline: median {summary['accelerate_overhead_ratio_median']:.3f}, range "
            f"{summary['accelerate_overhead_ratio_min']:.3f}–{summary['accelerate_overhead_ratio_max']:.3f}.",
        ]
    lines += [
        "",
        f"Measured on: {env_line(record['environment'])}; load average at the end "
        f"{record['environment_end']['load_average_1m']:.2f}; whole run {record['wall_seconds']:.0f} s.",
    ]
    return "\n".join(lines)


RENDERERS = {"tokenization.json": ("tokenization", tokenization_table), "train_step.json": ("steps", train_step_table)}


def render_file(path: Path, command: str, render) -> str:
    """The Markdown of one result file, or one UserError naming it: not JSON, not an object, or not the record
    ``train-mrpc bench COMMAND`` writes (a field missing or of another kind)."""
    from train_mrpc.bench import common
    from train_mrpc.errors import UserError, read_json_object

    expected = f"the JSON record train-mrpc bench {command} writes"
    record = read_json_object(path, str(path), expected)
    try:  # json.loads takes NaN, Infinity and integers of any size; a benchmark writes none of them
        common.check_finite(record, "record")
    except ValueError as err:
        raise UserError(f"{path}: {err}; expected {expected}") from None
    try:
        return render(record)
    except KeyError as err:
        raise UserError(f"{path}: no {err.args[0]!r} field where one was expected; expected {expected}") from None
    except (TypeError, ValueError, IndexError, AttributeError, ArithmeticError) as err:
        raise UserError(f"{path}: a field of the wrong kind ({common.reason(err)}); expected {expected}") from None


def main(argv=None) -> None:
    from train_mrpc.bench import common
    from train_mrpc.errors import UserError

    if argv is None:  # run as a script
        return common.run_as_command("tables")
    parser = common.Parser("train-mrpc bench tables", __doc__)
    parser.add_argument("folder", type=Path, help="A --out folder holding tokenization.json and/or train_step.json.")
    args = parser.parse_args(argv)
    if not args.folder.is_dir():
        raise UserError(
            f"{args.folder}: not a folder; expected a --out folder of train-mrpc bench (tokenization.json, "
            "train_step.json)"
        )
    found = [(name, args.folder / name) for name in RENDERERS if (args.folder / name).is_file()]
    if not found:
        raise UserError(f"{args.folder}: holds neither tokenization.json nor train_step.json")
    tables = [(name, render_file(path, *RENDERERS[name])) for name, path in found]  # every file checked first
    for name, table in tables:
        print(f"### {name}\n\n{table}\n")


if __name__ == "__main__":
    main()
