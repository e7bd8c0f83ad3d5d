"""`train-mrpc bench end-to-end`: the speed comparison runs and writes a complete record (never asserting a speed)."""

import json
import os
import subprocess
import sys
from pathlib import Path

from conftest import ROOT, TEST_ENV


def check_end_to_end(proc: subprocess.CompletedProcess, out: Path) -> dict:
    """A quick end-to-end run's output in ``out`` is complete and well formed; returns its record."""
    assert proc.returncode == 0, proc.stderr[-3000:]
    record = json.loads((out / "end_to_end.json").read_text())
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
    assert (out / "end_to_end.png").read_bytes()[:4] == b"\x89PNG"
    last = json.loads(proc.stdout.strip().splitlines()[-1])
    assert last["benchmark"] == "end_to_end" and "speedup_wall" in last
    return record


def test_quick_end_to_end_comparison_is_complete(tmp_path):
    command = [sys.executable, "-m", "train_mrpc", "bench", "end-to-end", "--quick", "--out", str(tmp_path)]
    proc = subprocess.run(command, capture_output=True, text=True, env={**os.environ, **TEST_ENV}, cwd=ROOT, timeout=600)
    first = check_end_to_end(proc, tmp_path)

    # --previous keeps the earlier runs, except those --rerun names (variant:seed), which are measured again.
    previous = tmp_path / "previous.json"
    (tmp_path / "end_to_end.json").rename(previous)
    proc = subprocess.run([*command, "--previous", str(previous), "--rerun", "defaults:42"], capture_output=True,
                          text=True, env={**os.environ, **TEST_ENV}, cwd=ROOT, timeout=600)  # fmt: skip
    kept, measured = check_end_to_end(proc, tmp_path)["runs"]
    assert kept == {**first["runs"][0], "kept_from": str(previous)} and "kept_from" not in measured


def test_quick_honours_model(tmp_path, monkeypatch, tiny_model_dir, capsys):
    """--quick picks the tiny model only when --model is left out: it trained tiny-random-bert whatever --model
    named. The runs themselves are replaced (the flags they get are what is checked), so this takes a second."""
    from train_mrpc.bench import end_to_end
    from train_mrpc.cli import main

    commands = []

    def fake_run(variant, seed, flags, out):
        commands.append(flags)
        return {"variant": variant, "seed": seed, "wall_s": 2.0, "train_runtime_s": 1.0, "eval_accuracy": 0.5,
                "eval_f1": 0.5, "train_tokens_per_second": 10.0}  # fmt: skip

    monkeypatch.setattr(end_to_end, "run_once", fake_run)
    main(["bench", "end-to-end", "--quick", "--model", str(tiny_model_dir), "--out", str(tmp_path / "named")])
    record = json.loads((tmp_path / "named" / "end_to_end.json").read_text())
    assert [c[c.index("--model_name_or_path") + 1] for c in commands] == [str(tiny_model_dir.resolve())] * 2
    assert record["model_label"] == tiny_model_dir.name and record["quick"] is True

    commands.clear()  # left out: the tiny model, as before
    main(["bench", "end-to-end", "--quick", "--out", str(tmp_path / "default")])
    assert [c[c.index("--model_name_or_path") + 1] for c in commands] == ["tiny-random-bert"] * 2
    assert json.loads((tmp_path / "default" / "end_to_end.json").read_text())["model_label"] == "tiny-random-bert"
    capsys.readouterr()
