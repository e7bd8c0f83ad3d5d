"""Kept for old command lines: this is `train-mrpc bench tokenization` (train_mrpc/bench/tokenization.py)."""

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # a checkout without `pip install -e .`
from train_mrpc.bench.tokenization import *  # noqa: E402, F403  (`import bench_tokenization` keeps working)
from train_mrpc.bench.tokenization import main  # noqa: E402

if __name__ == "__main__":
    main()
