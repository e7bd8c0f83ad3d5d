"""Command line: ``train-mrpc``, ``python -m train_mrpc`` and ``accelerate launch -m train_mrpc`` all land here."""

from __future__ import annotations

import os
import sys

from train_mrpc.errors import UserError


def _print_error(message: str) -> None:
    # One line per run, not per process.
    if os.environ.get("RANK", "0") == "0":
        print(f"train-mrpc: error: {message}", file=sys.stderr)


def run_training(argv: list[str]) -> None:
    from train_mrpc.config import SYNTHETIC, parse_config
    from train_mrpc.hub import go_offline_if_unreachable, is_hub_name
    from train_mrpc.synthetic import TINY_MODEL
    from train_mrpc.train import train

    config = parse_config(argv)
    needs_hub = []
    if config.model_name_or_path != TINY_MODEL and is_hub_name(config.model_name_or_path):
        needs_hub.append(config.model_name_or_path)
    if not (config.data_dir or config.train_file or config.dataset == SYNTHETIC):
        needs_hub.append(config.dataset)
    go_offline_if_unreachable(needs_hub)
    train(config)


def main(argv: list[str] | None = None) -> None:
    argv = sys.argv[1:] if argv is None else argv
    try:
        run_training(argv)
    except UserError as err:
        _print_error(str(err))
        sys.exit(2)
    except KeyboardInterrupt:
        _print_error("interrupted")
        sys.exit(130)
