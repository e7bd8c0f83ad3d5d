"""Kept for old command lines: this is `train-mrpc bench end-to-end` (train_mrpc/bench/end_to_end.py)."""

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # a checkout without `pip install -e .`
from train_mrpc.bench.end_to_end import *  # noqa: E402, F403  (`import bench_end_to_end` keeps working)
from train_mrpc.bench.end_to_end import main  # noqa: E402

if __name__ == "__main__":
    main()
