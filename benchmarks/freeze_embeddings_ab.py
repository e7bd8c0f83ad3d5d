"""--freeze_word_embeddings on and off, interleaved fresh runs of the same steps: does the lever win on this machine?

    python benchmarks/freeze_embeddings_ab.py --out benchmarks/results/cpu-2core/fast-recipe --rounds 3

Each run is `python -m train_mrpc` (train_mrpc.bench.end_to_end.run_once: the end-to-end benchmark's own run) of
all-MiniLM-L6-v2 on ../shared MRPC with --recipe fast cut to --max_train_steps, once with the table frozen (the
recipe) and once trained, each first in turn (bench steps' round_order) so a slow spell hits both. The figure
is training time per optimizer step (train_runtime minus the one evaluation at the end, over the steps). Writes
freeze_embeddings_ab.json.
"""

from __future__ import annotations

import argparse
import statistics
from pathlib import Path

from train_mrpc.bench import common
from train_mrpc.bench.end_to_end import model_path, run_once
from train_mrpc.bench.steps import round_order

VARIANTS = {"frozen": [], "trained": ["--freeze_word_embeddings", "false"]}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--out", type=Path, required=True)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--max_train_steps", type=int, default=60)
    args = parser.parse_args()
    data = common.shared_asset(common.SHARED_MRPC, "train.tsv")
    if data is None:
        raise SystemExit("needs the shared GLUE MRPC files (../shared/data/mrpc)")
    model = model_path(argparse.Namespace(model="minilm", quick=False))
    flags = ["--model_name_or_path", model, "--data_dir", str(data), "--recipe", "fast"]
    flags += ["--max_train_steps", str(args.max_train_steps), "--logging_steps", "10"]
    runs = []
    for round_index in range(args.rounds):
        for name in round_order(list(VARIANTS), round_index):
            run = run_once(name, 42, [*flags, *VARIANTS[name]], args.out)
            run["round"] = round_index
            run["train_s_per_step"] = (run["train_runtime_s"] - run["eval_runtime_s"]) / args.max_train_steps
            runs.append(run)
            print(f"round {round_index} {name}: {1000 * run['train_s_per_step']:.1f} ms a step", flush=True)
    summary = {
        name: statistics.median(r["train_s_per_step"] for r in runs if r["variant"] == name) for name in VARIANTS
    }
    record = {
        "benchmark": "freeze_embeddings_ab",
        "max_train_steps": args.max_train_steps,
        "median_s_per_step": summary,
        "trained_over_frozen": summary["trained"] / summary["frozen"],
        "runs": runs,
        "environment": common.environment(),
    }
    common.write_json(args.out / "freeze_embeddings_ab.json", record)
    print(f"trained / frozen step time: {record['trained_over_frozen']:.3f} (medians over {args.rounds} rounds)")


if __name__ == "__main__":
    main()
