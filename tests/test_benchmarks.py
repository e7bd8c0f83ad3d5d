"""The benchmark suite's smoke test: `train-mrpc bench tokenization|steps --quick` write complete, well-formed
output (tests/test_bench_wheel.py runs them again from an installed wheel, outside the repository).

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

from train_mrpc.cpu_speed import ATTENTION_NAME

ROOT = Path(__file__).resolve().parents[1]
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


def run_bench(command: str, *args, timeout: float = 120, cwd: Path = ROOT, env: dict | None = None):
    """Run ``train-mrpc bench COMMAND ARGS`` as a user would (``python -m train_mrpc``, the console script's
    code); returns the process and the JSON object on its last stdout line."""
    result = subprocess.run(
        [sys.executable, "-m", "train_mrpc", "bench", command, *map(str, args)], cwd=cwd,
        env=env or {**os.environ, **OFFLINE}, capture_output=True, text=True, timeout=timeout,
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


def check_summary_paths(summary: dict, out: Path, cwd: Path, name: str) -> None:
    """The summary line names the files written into ``out`` (paths relative to the command's directory)."""
    assert (cwd / summary["json"]).resolve() == (out / f"{name}.json").resolve(), summary["json"]
    assert [(cwd / p).resolve() for p in summary["plots"]] == [(out / f"{name}.png").resolve()], summary["plots"]


def check_tokenization(result, summary: dict, out: Path, cwd: Path = ROOT) -> dict:
    """The quick tokenization benchmark's output in ``out`` is complete and well formed; returns its record."""
    record = json.loads((out / "tokenization.json").read_text())
    assert summary["benchmark"] == "tokenization" and summary["quick"] is True
    check_summary_paths(summary, out, cwd, "tokenization")
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
    check_png(out / "tokenization.png")
    assert "method" in result.stdout and "floor" in result.stdout  # the rich table
    return record


def check_train_step(result, summary: dict, out: Path, cwd: Path = ROOT) -> dict:
    """The quick step benchmark's output in ``out`` is complete and well formed; returns its record."""
    record = json.loads((out / "train_step.json").read_text())
    assert summary["benchmark"] == "train_step" and summary["cells"] == len(QUICK_CELLS)
    check_summary_paths(summary, out, cwd, "train_step")
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
            # The kernel asked for, or, with the loop's CPU speed-ups, their attention function in sdpa's place.
            speedups = figures["cpu_speedups"] and cell["attn"] == "sdpa"
            assert figures["attn_implementation_used"] == (ATTENTION_NAME if speedups else cell["attn"]), key
            assert figures["guard"]["attempts"] >= 1 and "contended" in figures["guard"], key
            if cell["compile"]:
                assert figures["compile_seconds"] >= 0 and figures["graphs_compiled_during_timing"] == 0, key
    # Padding strategies differ as they should (a property of the data, not of speed).
    for precision in ("fp32", "bf16"):
        pad = {c["padding"]: c["padding_fraction"] for c in record["cells"] if c["precision"] == precision and c["attn"] == "sdpa"}
        assert pad["fixed"] > pad["dynamic"] > pad["grouped"], pad
    check_png(out / "train_step.png")
    assert "samples/s" in result.stdout  # the rich table
    return record


def test_tokenization_quick(tmp_path):
    check_tokenization(*run_bench("tokenization", "--quick", "--out", tmp_path), tmp_path)


def test_train_step_quick(tmp_path):
    check_train_step(*run_bench("steps", "--quick", "--out", tmp_path), tmp_path)


def test_fallback_without_shared_assets(tmp_path):
    """Generated pairs and the tiny tokenizer: what a machine without ../shared runs."""
    _, summary = run_bench("tokenization", "--quick", "--data_dir", "synthetic", "--tokenizer", "tiny",
                           "--pairs", "200", "--out", tmp_path)  # fmt: skip
    record = json.loads((tmp_path / "tokenization.json").read_text())
    assert record["settings"]["data_source"].startswith("generated")
    assert all(m["identical_ids_fraction"] == 1.0 for m in record["methods"].values())
    _, summary = run_bench("steps", "--quick", "--data_dir", "synthetic", "--tokenizer", "tiny",
                           "--precision", "fp32", "--padding", "dynamic", "--attn", "sdpa", "--compile", "off",
                           "--out", tmp_path)  # fmt: skip
    assert summary["cells"] == 1
    record = json.loads((tmp_path / "train_step.json").read_text())
    positive(record["cells"][0]["accelerate"]["samples_per_s"], "samples_per_s")
    check_png(tmp_path / "train_step.png")


@pytest.mark.parametrize("command", ["tokenization", "steps", "end-to-end"])
def test_help(command):
    result = subprocess.run([sys.executable, "-m", "train_mrpc", "bench", command, "--help"], capture_output=True,
                            text=True, timeout=60)  # fmt: skip
    assert result.returncode == 0 and "--quick" in result.stdout and "--out" in result.stdout
    assert f"train-mrpc bench {command}" in result.stdout


def test_bench_usage_and_unknown_command():
    run = [sys.executable, "-m", "train_mrpc", "bench"]
    listing = subprocess.run(run, capture_output=True, text=True, timeout=60)
    assert listing.returncode == 0
    for command in ("tokenization", "steps", "end-to-end", "tables"):
        assert command in listing.stdout
    wrong = subprocess.run([*run, "tokenisation"], capture_output=True, text=True, timeout=60)
    assert wrong.returncode == 2 and wrong.stderr.strip().splitlines() == [
        "train-mrpc: error: train-mrpc bench: unknown command 'tokenisation'; one of: tokenization, steps, "
        "end-to-end, tables (see train-mrpc bench --help)"
    ]


@pytest.mark.parametrize("name", ["bench_tokenization.py", "bench_train_step.py", "bench_end_to_end.py", "make_tables.py"])
def test_old_script_paths_still_run(name):
    """benchmarks/*.py are shims over the package (gpu_check and old notes call them)."""
    result = subprocess.run([sys.executable, str(ROOT / "benchmarks" / name), "--help"], capture_output=True,
                            text=True, timeout=60)  # fmt: skip
    assert result.returncode == 0 and "usage: train-mrpc bench" in result.stdout


def test_tables_from_published_results():
    result = subprocess.run([sys.executable, "-m", "train_mrpc", "bench", "tables", ROOT / "benchmarks" / "results" / "cpu-2core"],
                            capture_output=True, text=True, timeout=60)  # fmt: skip
    assert result.returncode == 0, result.stderr
    assert "### tokenization.json" in result.stdout and "### train_step.json" in result.stdout
    assert "| floor |" in result.stdout and "| bert-base | 8 | fp32 | fixed | eager | no |" in result.stdout


def test_shared_assets_and_default_out(tmp_path, monkeypatch):
    """Where the real assets and results go: $TRAIN_MRPC_SHARED first, else ../shared beside this checkout (or
    ./shared, ../shared from the current directory); benchmarks/results/ in a checkout."""
    from conftest import write_glue_dir

    from train_mrpc.bench import common

    assert common.source_checkout() == ROOT
    assert common.default_out() == ROOT / "benchmarks" / "results"
    shared = tmp_path / "assets"
    write_glue_dir(shared / "data" / "mrpc", ["1\t1\t2\tA cat sat.\tA cat was sitting."])
    monkeypatch.setenv(common.SHARED_ENV, str(shared))
    assert common.shared_candidates() == [shared]
    assert common.shared_asset(common.SHARED_MRPC, "train.tsv") == (shared / "data" / "mrpc").resolve()
    assert common.shared_asset(common.SHARED_BERT, "tokenizer.json") is None  # -> the tiny tokenizer
    splits, source = common.load_pairs("auto")
    assert splits["train"]["sentence1"] == ["A cat sat."] and str(shared) in source
    assert common.load_tokenizer("auto")[2].startswith("tiny")
    monkeypatch.setenv(common.SHARED_ENV, str(tmp_path / "missing"))
    with pytest.raises(SystemExit, match="not a folder"):
        common.shared_candidates()
    monkeypatch.delenv(common.SHARED_ENV)
    monkeypatch.chdir(tmp_path)
    assert common.shared_candidates()[0] == ROOT.parent / "shared"
    assert common.shared_candidates()[1:] == [tmp_path / "shared", tmp_path.parent / "shared"]


def test_step_batches_repeat_when_an_epoch_has_fewer_than_the_steps_timed():
    """A batch as large as the GPU's largest (512) leaves MRPC only 7 batches an epoch, fewer than the 22 steps
    a cell warms up and times: the benchmark reuses batches (as a second epoch would) instead of stopping."""
    import random

    from transformers import BertConfig

    from train_mrpc.bench import common
    from train_mrpc.bench.steps import select_batches

    tokenizer = common.load_tokenizer("tiny")[0]
    rng = random.Random(0)
    words = "the cat sat on a mat while dogs ran far away".split()
    pairs = [(" ".join(rng.choices(words, k=rng.randint(3, 20))), " ".join(rng.choices(words, k=5))) for _ in range(100)]
    examples = [dict(tokenizer(a, b)) for a, b in pairs]
    config = BertConfig(vocab_size=tokenizer.vocab_size, type_vocab_size=2)
    warm, timed = select_batches(examples, tokenizer, config, "grouped", 32, None, warmup=2, steps=20, seed=0)
    assert len(warm) == 2 and len(timed) == 20  # from 3 batches of 32
    assert all(batch["input_ids"].shape[0] == 32 for batch, _, _ in warm + timed)
    assert len({tuple(lengths) for _, lengths, _ in timed}) == 3  # every batch of the epoch among those timed

    # On a GPU each timed shape is stepped once more before the clock (kernel loading), and counted as warm-up.
    import torch

    from train_mrpc.bench.steps import shape_warmups

    shapes = {length for _, _, length in timed}
    assert sorted(b[2] for b in shape_warmups(timed, torch.device("cuda"))) == sorted(shapes)
    assert shape_warmups(timed, torch.device("cpu")) == []
