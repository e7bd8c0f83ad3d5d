"""The benchmark suite's smoke test: both scripts in --quick mode write complete, well-formed output.

Never asserts a speed: on a shared 2-core CI machine timings mean nothing. It asserts that every method
and every cell is there with finite positive figures, that the work compared is the same work (token ids
equal the floor's; the Accelerate and bare loops reach the same loss), that the PNGs are PNGs, and that
stdout ends with one JSON line.
"""

from __future__ import annotations

import json
import math
import os
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
BENCH = ROOT / "benchmarks"
OFFLINE = {"HF_HUB_OFFLINE": "1", "HF_DATASETS_OFFLINE": "1", "PYTHONUNBUFFERED": "1"}
PNG_MAGIC = b"\x89PNG\r\n\x1a\n"

TOKENIZATION_METHODS = [
    "floor", "floor_no_offsets", "project_cold", "project_warm", "course_padding_true", "per_pair_call",
    "legacy_python", "transformers_in_map", "datasets_map_1proc", "datasets_map_2proc",
]  # fmt: skip
QUICK_CELLS = [  # model/batch/precision/padding/attention/compile of the default --quick grid on CPU
    f"tiny/b8/{precision}/{padding}/{attn}/eager-mode"
    for precision in ("fp32", "bf16") for padding in ("fixed", "dynamic", "grouped") for attn in ("eager", "sdpa")
] + ["tiny/b8/fp32/fixed/sdpa/compile-eager"]  # fmt: skip
VARIANT_FIGURES = [
    "samples_per_s", "real_tokens_per_s", "padded_tokens_per_s", "achieved_flops_per_s", "mfu", "useful_mfu",
    "peak_memory_bytes", "rss_before_bytes",
]  # fmt: skip
STEP_STATS = ["median", "mean", "min", "max", "p25", "p75"]


def run_script(name: str, *args, timeout: float = 120) -> tuple[subprocess.CompletedProcess, dict]:
    """Run a benchmark as a user would; returns the process and the JSON object on its last stdout line."""
    result = subprocess.run(
        [sys.executable, str(BENCH / name), *map(str, args)], cwd=ROOT, env={**os.environ, **OFFLINE},
        capture_output=True, text=True, timeout=timeout,
    )  # fmt: skip
    assert result.returncode == 0, f"exit {result.returncode}\n{result.stdout[-3000:]}\n{result.stderr[-3000:]}"
    last = result.stdout.strip().splitlines()[-1]
    return result, json.loads(last)


def positive(value, where: str) -> None:
    assert isinstance(value, (int, float)) and not isinstance(value, bool), f"{where}: {value!r} is not a number"
    assert math.isfinite(value) and value > 0, f"{where}: {value!r} is not a finite positive number"


def check_png(path: Path) -> None:
    assert path.is_file(), f"{path} was not written"
    data = path.read_bytes()
    assert data[:8] == PNG_MAGIC and len(data) > 5000, f"{path} is not a plausible PNG ({len(data)} bytes)"


def check_environment(env: dict) -> None:
    for key in ("device", "device_name", "cpu", "versions", "git", "torch_threads", "started_utc", "command"):
        assert key in env, f"environment lacks {key}"
    for package in ("python", "torch", "transformers", "accelerate", "datasets", "tokenizers"):
        assert env["versions"][package], f"no version recorded for {package}"
    assert "commit" in env["git"] and "flags_of_interest" in env["cpu"]
    if env["device"] == "cuda":
        assert env["gpu"]["name"]


def test_tokenization_quick(tmp_path):
    result, summary = run_script("bench_tokenization.py", "--quick", "--out", tmp_path)
    record = json.loads((tmp_path / "tokenization.json").read_text())
    assert summary["benchmark"] == "tokenization" and summary["quick"] is True
    assert Path(summary["json"]).resolve() == (tmp_path / "tokenization.json").resolve()
    assert set(summary["ratio_to_floor"]) == set(TOKENIZATION_METHODS)
    check_environment(record["environment"])
    assert record["settings"]["pairs"] > 0
    for key in ("total_tokens", "mean", "median", "p95", "max", "min"):
        positive(record["lengths"][key], f"lengths.{key}")
    assert record["lengths"]["max"] <= record["settings"]["max_length"]
    assert list(record["methods"]) == TOKENIZATION_METHODS
    for name, method in record["methods"].items():
        assert "skipped" not in method, f"{name} skipped: {method.get('skipped')}"
        for key in STEP_STATS:
            positive(method["seconds"][key], f"{name}.seconds.{key}")
        for key in ("pairs_per_s", "tokens_per_s", "throughput_ratio_to_floor", "time_ratio_to_floor",
                    "time_ratio_to_floor_no_offsets"):
            positive(method[key], f"{name}.{key}")
        assert method["guard"]["attempts"] >= 1 and "other_cpu_cores" in method["guard"], name
        # Every method does the same work: the floor's token ids, pair for pair.
        assert method["identical_ids_fraction"] == 1.0, name
    assert record["methods"]["floor"]["throughput_ratio_to_floor"] == 1.0
    assert 0 < record["methods"]["course_padding_true"]["padding_fraction"] < 1
    check_png(tmp_path / "tokenization.png")
    assert "method" in result.stdout and "floor" in result.stdout  # the rich table


def test_train_step_quick(tmp_path):
    result, summary = run_script("bench_train_step.py", "--quick", "--out", tmp_path)
    record = json.loads((tmp_path / "train_step.json").read_text())
    assert summary["benchmark"] == "train_step" and summary["cells"] == len(QUICK_CELLS)
    positive(summary["best_samples_per_s"], "summary.best_samples_per_s")
    check_environment(record["environment"])
    assert sorted(c["key"] for c in record["cells"]) == sorted(QUICK_CELLS)
    for precision in record["settings"]["precisions"]:
        positive(record["matmul_peak"][precision]["flops_per_s"], f"matmul_peak.{precision}")
    params = record["models"]["tiny"]["parameters"]
    assert params["total"] == params["embedding"] + params["per_sequence"] + params["per_token"] > 0
    for cell in record["cells"]:
        key = cell["key"]
        for figure in ("flops_per_step", "useful_flops_per_step", "mean_padded_length", "mean_real_length"):
            positive(cell[figure], f"{key}.{figure}")
        assert 0 <= cell["padding_fraction"] < 1, key
        assert cell["flops_per_step"] >= cell["useful_flops_per_step"], key
        positive(cell["accelerate_overhead_ratio"], f"{key}.accelerate_overhead_ratio")
        # Identical work: same weights, batches and dropout masks give the same final loss.
        assert cell["last_loss_abs_diff"] < 1e-4, f"{key}: Accelerate and bare losses differ by {cell['last_loss_abs_diff']}"
        for variant in ("accelerate", "bare"):
            figures = cell[variant]
            assert figures["step_seconds"]["n"] == cell["timed_steps"] >= 1, key
            for stat in STEP_STATS:
                positive(figures["step_seconds"][stat], f"{key}.{variant}.step_seconds.{stat}")
            for figure in VARIANT_FIGURES:
                positive(figures[figure], f"{key}.{variant}.{figure}")
            assert len(figures["warmup_seconds"]) == cell["warmup_steps"] >= 1
            assert figures["attn_implementation_used"] == cell["attn"], key
            assert figures["guard"]["attempts"] >= 1 and "contended" in figures["guard"], key
            if cell["compile"]:
                assert figures["compile_seconds"] >= 0 and figures["graphs_compiled_during_timing"] == 0, key
    # Padding strategies differ as they should (a property of the data, not of speed).
    for precision in ("fp32", "bf16"):
        pad = {c["padding"]: c["padding_fraction"] for c in record["cells"] if c["precision"] == precision and c["attn"] == "sdpa"}
        assert pad["fixed"] > pad["dynamic"] > pad["grouped"], pad
    check_png(tmp_path / "train_step.png")
    assert "samples/s" in result.stdout  # the rich table


def test_fallback_without_shared_assets(tmp_path):
    """Generated pairs and the tiny tokenizer: what a machine without ../shared runs."""
    _, summary = run_script("bench_tokenization.py", "--quick", "--data_dir", "synthetic", "--tokenizer", "tiny",
                            "--pairs", "200", "--out", tmp_path)  # fmt: skip
    record = json.loads((tmp_path / "tokenization.json").read_text())
    assert record["settings"]["data_source"].startswith("generated")
    assert all(m["identical_ids_fraction"] == 1.0 for m in record["methods"].values())
    _, summary = run_script("bench_train_step.py", "--quick", "--data_dir", "synthetic", "--tokenizer", "tiny",
                            "--precision", "fp32", "--padding", "dynamic", "--attn", "sdpa", "--compile", "off",
                            "--out", tmp_path)  # fmt: skip
    assert summary["cells"] == 1
    record = json.loads((tmp_path / "train_step.json").read_text())
    positive(record["cells"][0]["accelerate"]["samples_per_s"], "samples_per_s")
    check_png(tmp_path / "train_step.png")


@pytest.mark.parametrize("name", ["bench_tokenization.py", "bench_train_step.py"])
def test_help(name):
    result = subprocess.run([sys.executable, str(BENCH / name), "--help"], capture_output=True, text=True, timeout=60)
    assert result.returncode == 0 and "--quick" in result.stdout and "--out" in result.stdout
