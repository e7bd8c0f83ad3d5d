"""Freezing levers on and off, interleaved fresh runs of the same steps: does a lever win on this machine?

    python benchmarks/freeze_ab.py --out benchmarks/results/cpu-2core/fast-recipe --rounds 3
    python benchmarks/freeze_ab.py --out DIR --record freeze_lower_layers_ab \\
        --variant recipe "" --variant lower2 "--freeze_lower_layers 2" --variant lower3 "--freeze_lower_layers 3"

Each run is `python -m train_mrpc` (train_mrpc.bench.end_to_end.run_once: the end-to-end benchmark's own run) of
all-MiniLM-L6-v2 on ../shared MRPC with --recipe fast cut to --max_train_steps, plus each variant's flags (by
default: the table frozen, as the recipe has it, and trained). Each variant goes first in turn (bench steps'
round_order) so a slow spell hits all. The figure is training time per optimizer step (train_runtime minus the
one evaluation at the end, over the steps), as medians over the rounds and as ratios to the first variant.
Writes RECORD.json (default freeze_embeddings_ab.json).
"""

from __future__ import annotations

import argparse
import shlex
import statistics
from pathlib import Path

from train_mrpc.bench import common
from train_mrpc.bench.end_to_end import model_path, run_once
from train_mrpc.bench.steps import round_order

DEFAULT_VARIANTS = {"frozen": [], "trained": ["--freeze_word_embeddings", "false"]}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--out", type=Path, required=True)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--max_train_steps", type=int, default=60)
    parser.add_argument("--record", default="freeze_embeddings_ab", help="The record's name (RECORD.json).")
    parser.add_argument(
        "--variant",
        nargs=2,
        action="append",
        metavar=("NAME", "FLAGS"),
        help="A variant: its name and the flags it adds to the recipe (repeat; the first is the baseline).",
    )
    args = parser.parse_args()
    variants = {name: shlex.split(flags) for name, flags in args.variant} if args.variant else DEFAULT_VARIANTS
    data = common.shared_asset(common.SHARED_MRPC, "train.tsv")
    if data is None:
        raise SystemExit("needs the shared GLUE MRPC files (../shared/data/mrpc)")
    model = model_path(argparse.Namespace(model="minilm", quick=False))
    flags = ["--model_name_or_path", model, "--data_dir", str(data), "--recipe", "fast"]
    flags += ["--max_train_steps", str(args.max_train_steps), "--logging_steps", "10"]
    runs = []
    for round_index in range(args.rounds):
        for name in round_order(list(variants), round_index):
            run = run_once(name, 42, [*flags, *variants[name]], args.out)
            run["round"] = round_index
            run["train_s_per_step"] = (run["train_runtime_s"] - run["eval_runtime_s"]) / args.max_train_steps
            runs.append(run)
            print(f"round {round_index} {name}: {1000 * run['train_s_per_step']:.1f} ms a step", flush=True)
    medians = {
        name: statistics.median(r["train_s_per_step"] for r in runs if r["variant"] == name) for name in variants
    }
    baseline = next(iter(variants))
    record = {
        "benchmark": args.record,
        "max_train_steps": args.max_train_steps,
        "variants": {name: shlex.join(extra) for name, extra in variants.items()},
        "median_s_per_step": medians,
        f"over_{baseline}": {name: medians[name] / medians[baseline] for name in variants},
        "runs": runs,
        "environment": common.environment(),
    }
    common.write_json(args.out / f"{args.record}.json", record)
    for name in variants:
        print(f"{name}: {1000 * medians[name]:.1f} ms a step, {medians[name] / medians[baseline]:.3f} x {baseline}")


if __name__ == "__main__":
    main()
