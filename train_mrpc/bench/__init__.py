"""The benchmark suite, runnable from an installed package, offline: ``train-mrpc bench COMMAND [flags]``.

    train-mrpc bench tokenization [--quick] [flags]   tokenization throughput against the Rust floor
    train-mrpc bench steps [--quick] [flags]          training-step grid, Accelerate vs a bare PyTorch loop
    train-mrpc bench end-to-end [--quick] [flags]     whole fine-tunes: project defaults vs the reference setup
    train-mrpc bench tables FOLDER                    the Markdown tables of benchmarks/README.md from the JSON

Each benchmark prints a rich table, writes <name>.json and <name>.png into --out and ends stdout with one JSON
line. Without real assets (``$TRAIN_MRPC_SHARED``, or ../shared beside a source checkout) they use generated
MRPC-shaped pairs and the project's tiny tokenizer. ``train-mrpc bench COMMAND --help`` lists every flag.
"""

from __future__ import annotations

import importlib

# command -> (module, one-line description)
COMMANDS = {
    "tokenization": ("train_mrpc.bench.tokenization", "tokenization throughput against the Rust floor"),
    "steps": ("train_mrpc.bench.steps", "training-step grid, Accelerate vs a bare PyTorch loop"),
    "end-to-end": ("train_mrpc.bench.end_to_end", "whole fine-tunes: project defaults vs the reference setup"),
    "tables": ("train_mrpc.bench.tables", "Markdown tables from a results folder's JSON files"),
}


def usage() -> str:
    lines = ["usage: train-mrpc bench {" + ",".join(COMMANDS) + "} [flags]", ""]
    lines += [f"  {name:<13} {description}" for name, (_, description) in COMMANDS.items()]
    lines += ["", "train-mrpc bench COMMAND --help lists that command's flags (--quick: a smoke test in seconds)."]
    return "\n".join(lines)


def main(argv: list[str]) -> None:
    """Run ``train-mrpc bench COMMAND [flags]``."""
    from train_mrpc.errors import UserError

    if not argv or argv[0] in ("-h", "--help", "help"):
        print(usage())
        return
    if argv[0] not in COMMANDS:
        raise UserError(
            f"train-mrpc bench: unknown command {argv[0]!r}; one of: {', '.join(COMMANDS)} "
            "(see train-mrpc bench --help)"
        )
    importlib.import_module(COMMANDS[argv[0]][0]).main(argv[1:])
