"""The end-to-end speed comparison runs and writes a complete record (never asserting a speed)."""

import json
import subprocess
import sys

from conftest import ROOT, TEST_ENV


def test_quick_end_to_end_comparison_is_complete(tmp_path):
    import os

    proc = subprocess.run([sys.executable, str(ROOT / "benchmarks" / "bench_end_to_end.py"), "--quick", "--out", str(tmp_path)],
                          capture_output=True, text=True, env={**os.environ, **TEST_ENV}, timeout=600)  # fmt: skip
    assert proc.returncode == 0, proc.stderr[-3000:]
    record = json.loads((tmp_path / "end_to_end.json").read_text())
    assert [(r["variant"], r["seed"]) for r in record["runs"]] == [("reference", 42), ("defaults", 42)]
    for run in record["runs"]:
        assert run["wall_s"] > run["train_runtime_s"] > 0 and 0 <= run["eval_accuracy"] <= 1
    reference, defaults = (r["speed"] for r in record["runs"])
    assert (reference["precision"], reference["batching"]) == ("fp32", "random")
    assert defaults["batching"] == "length-grouped" and defaults["precision_reason"].startswith("auto")
    assert record["runs"][0]["launch"]["per_device_train_batch_size"] == 16
    summary = record["summary"]
    assert summary["speedup_wall"] > 0 and set(summary["targets_met"]) == {"speedup", "accuracy"}
    assert record["environment"]["versions"]["torch"]
    assert (tmp_path / "end_to_end.png").read_bytes()[:4] == b"\x89PNG"
    last = json.loads(proc.stdout.strip().splitlines()[-1])
    assert last["benchmark"] == "end_to_end" and "speedup_wall" in last
