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
import torch

from train_mrpc.cpu_speed import ATTENTION_NAME
from train_mrpc.errors import UserError

from conftest import assert_one_line_error

ROOT = Path(__file__).resolve().parents[1]
OFFLINE = {"HF_HUB_OFFLINE": "1", "HF_DATASETS_OFFLINE": "1", "PYTHONUNBUFFERED": "1"}
PNG_MAGIC = b"\x89PNG\r\n\x1a\n"
CUDA = torch.cuda.is_available()

TOKENIZATION_METHODS = [
    "floor",
    "floor_no_offsets",
    "project_cold",
    "project_warm",
    "course_padding_true",
    "per_pair_call",
    "legacy_python",
    "transformers_in_map",
    "datasets_map_1proc",
    "datasets_map_2proc",
]
QUICK_CELLS = [  # model/batch/precision/padding/attention/compile of the default --quick grid on CPU
    f"tiny/b8/{precision}/{padding}/{attn}/eager-mode"
    for precision in ("fp32", "bf16")
    for padding in ("fixed", "dynamic", "grouped")
    for attn in ("eager", "sdpa")
] + ["tiny/b8/fp32/fixed/sdpa/compile-eager"]
VARIANT_FIGURES = [
    "samples_per_s",
    "real_tokens_per_s",
    "padded_tokens_per_s",
    "achieved_flops_per_s",
    "mfu",
    "useful_mfu",
    "peak_memory_bytes",
    "rss_before_bytes",
]
STEP_STATS = ["median", "mean", "min", "max", "p25", "p75"]


def run_bench(command: str, *args, timeout: float = 120, cwd: Path = ROOT, env: dict | None = None):
    """Run ``train-mrpc bench COMMAND ARGS`` as a user would (``python -m train_mrpc``, the console script's
    code); returns the process and the JSON object on its last stdout line."""
    result = subprocess.run(
        [sys.executable, "-m", "train_mrpc", "bench", command, *map(str, args)],
        cwd=cwd,
        env=env or {**os.environ, **OFFLINE},
        capture_output=True,
        text=True,
        timeout=timeout,
    )
    assert result.returncode == 0, f"exit {result.returncode}\n{result.stdout[-3000:]}\n{result.stderr[-3000:]}"
    last = result.stdout.strip().splitlines()[-1]
    return result, json.loads(last)


def bench_in_process(command: str, *args, cwd: Path = ROOT):
    """``train-mrpc bench COMMAND ARGS`` through ``cli.main`` in this process (conftest.run_in_process: output
    captured, environment, folder and signal handlers put back), without a new Python's ~6 s of imports; what
    the benchmark changes process-wide (torch threads, library log levels, progress bars) is put back too.
    Returns the CompletedProcess and the JSON object on its last stdout line, as run_bench."""
    import datasets
    import torch
    import transformers

    from conftest import run_in_process

    threads = torch.get_num_threads()
    hf_verbosity, ds_verbosity = transformers.logging.get_verbosity(), datasets.utils.logging.get_verbosity()
    bars = datasets.utils.are_progress_bars_disabled()
    try:
        result = run_in_process(["bench", command, *map(str, args)], cwd=cwd, env=OFFLINE)
    finally:
        torch.set_num_threads(threads)
        transformers.logging.set_verbosity(hf_verbosity)
        datasets.utils.logging.set_verbosity(ds_verbosity)
        (datasets.disable_progress_bars if bars else datasets.enable_progress_bars)()
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
        for key in (
            "pairs_per_s",
            "tokens_per_s",
            "throughput_ratio_to_floor",
            "time_ratio_to_floor",
            "time_ratio_to_floor_no_offsets",
        ):
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
        positive(cell["accelerate_overhead_ratio_of_mins"], f"{key}.accelerate_overhead_ratio_of_mins")
        # Identical work: same weights, batches and dropout masks give the same final loss.
        assert cell["last_loss_abs_diff"] < 1e-4, (
            f"{key}: Accelerate and bare losses differ by {cell['last_loss_abs_diff']}"
        )
        # Timed interleaved: each round ran every variant once on that round's batch, the first alternating
        # (A B, B A, A B, ...); both variants timed the same batches in the same order.
        assert cell["variants"] == ["accelerate", "bare"], key
        order = cell["timed_order"]
        assert len(order) == cell["timed_steps"] and all(sorted(r) == ["accelerate", "bare"] for r in order), order
        assert [r[0] for r in order] == [("accelerate", "bare")[i % 2] for i in range(len(order))], order
        assert cell["accelerate"]["batches"] == cell["bare"]["batches"], key
        assert len(cell["accelerate"]["batches"]) == cell["timed_steps"], key
        if not CUDA:  # the CUDA-graph variant says why it did not run
            assert cell["skipped_variants"] == {"graphs": "needs CUDA"} and cell["graphs"] is None, key
        for variant in ("accelerate", "bare"):
            figures = cell[variant]
            assert figures["step_seconds"]["n"] == cell["timed_steps"] >= 1, key
            assert len(figures["timed_seconds"]) == cell["timed_steps"], key
            assert min(figures["timed_seconds"]) == figures["step_seconds"]["min"], key
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
        pad = {
            c["padding"]: c["padding_fraction"]
            for c in record["cells"]
            if c["precision"] == precision and c["attn"] == "sdpa"
        }
        assert pad["fixed"] > pad["dynamic"] > pad["grouped"], pad
    check_png(out / "train_step.png")
    assert "samples/s" in result.stdout  # the rich table
    if not CUDA:
        assert summary["variants_skipped"] == {"graphs": ["needs CUDA"]}, summary
        assert "graphs: needs CUDA" in result.stderr
    return record


def test_tokenization_quick(tmp_path):
    check_tokenization(*bench_in_process("tokenization", "--quick", "--out", tmp_path), tmp_path)


def test_train_step_quick(tmp_path):
    check_train_step(*bench_in_process("steps", "--quick", "--out", tmp_path), tmp_path)


def test_fallback_without_shared_assets(tmp_path):
    """Generated pairs and the tiny tokenizer: what a machine without ../shared runs."""
    _, summary = bench_in_process(
        "tokenization", "--quick", "--data_dir", "synthetic", "--tokenizer", "tiny", "--pairs", "200", "--out", tmp_path
    )
    record = json.loads((tmp_path / "tokenization.json").read_text())
    assert record["settings"]["data_source"].startswith("generated")
    assert all(m["identical_ids_fraction"] == 1.0 for m in record["methods"].values())
    _, summary = bench_in_process(
        "steps",
        "--quick",
        "--data_dir",
        "synthetic",
        "--tokenizer",
        "tiny",
        "--precision",
        "fp32",
        "--padding",
        "dynamic",
        "--attn",
        "sdpa",
        "--compile",
        "off",
        "--out",
        tmp_path,
    )
    assert summary["cells"] == 1
    record = json.loads((tmp_path / "train_step.json").read_text())
    positive(record["cells"][0]["accelerate"]["samples_per_s"], "samples_per_s")
    check_png(tmp_path / "train_step.png")


@pytest.mark.parametrize("command", ["tokenization", "steps", "end-to-end"])
def test_help(command):
    result = subprocess.run(
        [sys.executable, "-m", "train_mrpc", "bench", command, "--help"], capture_output=True, text=True, timeout=60
    )
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


@pytest.mark.parametrize(
    "name", ["bench_tokenization.py", "bench_train_step.py", "bench_end_to_end.py", "make_tables.py"]
)
def test_old_script_paths_still_run(name):
    """benchmarks/*.py are shims over the package (gpu_check and old notes call them)."""
    result = subprocess.run(
        [sys.executable, str(ROOT / "benchmarks" / name), "--help"], capture_output=True, text=True, timeout=60
    )
    assert result.returncode == 0 and "usage: train-mrpc bench" in result.stdout


def test_tables_from_published_results():
    result = subprocess.run(
        [sys.executable, "-m", "train_mrpc", "bench", "tables", ROOT / "benchmarks" / "results" / "cpu-2core"],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert result.returncode == 0, result.stderr
    assert "### tokenization.json" in result.stdout and "### train_step.json" in result.stdout
    assert "| floor |" in result.stdout and "| bert-base | 8 | fp32 | fixed | eager | no |" in result.stdout


def test_shared_assets_and_default_out(tmp_path, monkeypatch):
    """Where the real assets and results go: $TRAIN_MRPC_SHARED first, else ../shared beside this checkout (or
    ./shared, ../shared from the current directory); benchmarks/results/ in a checkout."""
    from train_mrpc.bench import common

    from conftest import write_glue_dir

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
    with pytest.raises(UserError, match="not a folder"):
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
    pairs = [
        (" ".join(rng.choices(words, k=rng.randint(3, 20))), " ".join(rng.choices(words, k=5))) for _ in range(100)
    ]
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


def test_step_variants_take_turns_first():
    """Interleaved rounds: with two variants A B, B A, A B, ...; with a third (the CUDA-graph step) each still
    goes first in turn."""
    from train_mrpc.bench.steps import BASELINE, VARIANTS, round_order

    assert [round_order(["a", "b"], k) for k in range(4)] == [["a", "b"], ["b", "a"], ["a", "b"], ["b", "a"]]
    rounds = [round_order(["a", "b", "c"], k) for k in range(3)]
    assert rounds == [["a", "b", "c"], ["b", "c", "a"], ["c", "a", "b"]]
    assert list(VARIANTS)[:2] == ["accelerate", BASELINE] and "graphs" in VARIANTS


# --- bad input: one line `train-mrpc: error: ...`, exit status 2, before any work ----------------------------

# Flags that keep a step benchmark to one small cell, should a bad flag ever slip through and the benchmark run.
ONE_CELL = [
    "--quick",
    "--data_dir",
    "synthetic",
    "--tokenizer",
    "tiny",
    "--precision",
    "fp32",
    "--padding",
    "dynamic",
    "--attn",
    "sdpa",
    "--compile",
    "off",
]
QUICK_TOKENIZATION = ["--quick", "--data_dir", "synthetic", "--tokenizer", "tiny"]


def write_file(name: str, text: str, argument: str = "file"):
    """Makes ``name`` holding ``text`` in the test's folder; the argument that names it (the file, or its folder)."""

    def make(tmp_path: Path) -> str:
        path = tmp_path / name
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(text)
        return str(path if argument == "file" else path.parent)

    return make


def empty_folder(tmp_path: Path) -> str:
    (tmp_path / "empty").mkdir()
    return str(tmp_path / "empty")


@pytest.mark.parametrize(
    "argv, fragments",
    [
        (
            ["steps", "--batch_size", "0", *ONE_CELL],
            ["argument --batch_size: '0' is invalid: expected an integer >= 1"],
        ),
        (["steps", "--threads", "-1", *ONE_CELL], ["argument --threads: '-1' is invalid: expected an integer >= 1"]),
        (["steps", "--matmul_size", "-4", *ONE_CELL], ["argument --matmul_size: '-4' is invalid"]),
        (["steps", "--steps", "0", *ONE_CELL], ["argument --steps: '0' is invalid: expected an integer >= 1"]),
        (["steps", "--steps", "two", *ONE_CELL], ["argument --steps: 'two' is invalid"]),
        (["steps", "--warmup", "-1", *ONE_CELL], ["argument --warmup: '-1' is invalid: expected an integer >= 0"]),
        (["steps", "--max_wait", "nan", *ONE_CELL], ["argument --max_wait: 'nan' is invalid: expected a number >= 0"]),
        (["steps", "--precision", "fp64", *ONE_CELL], ["argument --precision: invalid choice: 'fp64'"]),
        (["steps", "--bogus", *ONE_CELL], ["unrecognized arguments: --bogus"]),
        (["steps", "--step", "5", *ONE_CELL], ["unrecognized arguments: --step"]),  # no abbreviations
        (
            ["steps", "--model_config", write_file("config.json", "{not json"), *ONE_CELL],
            ["--model_config ", "config.json: line 1 is not valid JSON", "expected a model's config.json"],
        ),
        (
            ["steps", "--model_config", write_file("config.json", "[1]"), *ONE_CELL],
            ["config.json: holds a list, not a JSON object"],
        ),
        (
            ["steps", "--model_config", write_file("config.json", '{"model_type": "no-such-model"}'), *ONE_CELL],
            ["config.json: transformers cannot build a model config from it (ValueError: Unrecognized model"],
        ),
        (["steps", "--model_config", empty_folder, *ONE_CELL], ["empty: a folder without config.json"]),
        (["tokenization", "--pairs", "-1", *QUICK_TOKENIZATION], ["argument --pairs: '-1' is invalid"]),
        (["tokenization", "--repeats", "-3", *QUICK_TOKENIZATION], ["argument --repeats: '-3' is invalid"]),
        (
            ["tokenization", "--quick", "--tokenizer", empty_folder],
            ["argument --tokenizer: ", "empty: holds no tokenizer.json; expected a tokenizer folder"],
        ),
        (
            ["tokenization", "--quick", "--tokenizer", write_file("tok/tokenizer.json", "{}", "folder")],
            ["--tokenizer ", "tok: cannot load a tokenizer from it"],
        ),
        (
            ["tables", write_file("results/train_step.json", "{not json", "folder")],
            ["train_step.json: line 1 is not valid JSON", "expected the JSON record train-mrpc bench steps writes"],
        ),
        (
            ["tables", write_file("results/train_step.json", "[1]", "folder")],
            ["train_step.json: holds a list, not a JSON object"],
        ),
        (["tables", write_file("results/train_step.json", "{}", "folder")], ["train_step.json: no 'settings' field"]),
        (["tables", empty_folder], ["empty: holds neither tokenization.json nor train_step.json"]),
        (
            ["end-to-end", "--quick", "--previous", write_file("end_to_end.json", "{not json")],
            ["--previous ", "end_to_end.json: line 1 is not valid JSON"],
        ),
        (
            ["end-to-end", "--quick", "--previous", write_file("end_to_end.json", "[" * 100_000)],
            ["--previous ", "end_to_end.json: line 1 is nested too deeply"],
        ),
        (
            [
                "end-to-end",
                "--quick",
                "--previous",
                write_file("end_to_end.json", '{"runs": [{"variant": "defaults"}]}'),
            ],
            ["end_to_end.json: runs[0] is not a run record"],
        ),
        (["end-to-end", "--quick", "--seeds", "0"], ["argument --seeds: '0' is invalid"]),
        (["end-to-end", "--quick", "--rerun", "defaults-42"], ["argument --rerun: 'defaults-42' is invalid"]),
    ],
    ids=[
        "steps-batch-0",
        "steps-threads-negative",
        "steps-matmul-negative",
        "steps-steps-0",
        "steps-steps-word",
        "steps-warmup-negative",
        "steps-max-wait-nan",
        "steps-bad-choice",
        "steps-unknown-flag",
        "steps-abbreviated",
        "model-config-not-json",
        "model-config-list",
        "model-config-unknown-type",
        "model-config-empty-folder",
        "tokenization-pairs-negative",
        "tokenization-repeats-negative",
        "tokenizer-empty-folder",
        "tokenizer-broken",
        "tables-not-json",
        "tables-list",
        "tables-incomplete",
        "tables-empty-folder",
        "previous-not-json",
        "previous-nested",
        "previous-bad-run",
        "end-to-end-seeds-0",
        "end-to-end-rerun-malformed",
    ],
)
def test_bad_bench_input_is_one_line_before_any_work(tmp_path, capsys, argv, fragments):
    """Flags argparse refuses, numbers out of range, files that are not what they should be: one line each,
    exit status 2, nothing printed or written before it."""
    from train_mrpc.cli import main

    argv = [a(tmp_path) if callable(a) else a for a in argv]
    argv += ["--out", str(tmp_path / "out")] if argv[0] != "tables" else []
    with pytest.raises(SystemExit) as info:
        main(["bench", *argv])
    captured = capsys.readouterr()
    assert_one_line_error(info.value.code, captured.err, *fragments)
    assert captured.out == "" and not (tmp_path / "out").exists()


@pytest.mark.parametrize(
    "command, env",
    [
        ([sys.executable, "-m", "train_mrpc", "bench", "tokenization", "--quick"], {"TRAIN_MRPC_SHARED": __file__}),
        ([sys.executable, str(ROOT / "benchmarks" / "bench_train_step.py"), "--steps", "0"], {}),
    ],
    ids=["shared-is-a-file", "old-script-path"],
)
def test_bench_input_errors_from_the_command_line(tmp_path, command, env):
    """As a user meets them: `TRAIN_MRPC_SHARED=FILE train-mrpc bench ...` (exit 1 and no prefix before), and a
    bad flag through an old script path (benchmarks/*.py run `train-mrpc bench` itself)."""
    result = subprocess.run(
        [*command, "--out", str(tmp_path / "out")],
        cwd=tmp_path,
        capture_output=True,
        text=True,
        env={**os.environ, **OFFLINE, **env},
        timeout=120,
    )
    line = assert_one_line_error(result.returncode, result.stderr)
    assert ("$TRAIN_MRPC_SHARED=" in line and "not a folder" in line) if env else "argument --steps: '0'" in line
    assert result.stdout == "" and not (tmp_path / "out").exists()


def test_sigterm_stops_a_benchmark(tmp_path):
    """Only training commands turn SIGTERM into a checkpoint-and-stop flag; a benchmark (which never checks that
    flag) ran on to its end, so `kill` could not stop it."""
    import signal
    import time

    from conftest import TEST_ENV

    proc = subprocess.Popen(
        [sys.executable, "-m", "train_mrpc", "bench", "steps", "--quick", "--out", str(tmp_path / "out")],
        cwd=tmp_path,
        env={**os.environ, **TEST_ENV},
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    time.sleep(4)  # past start-up, into the benchmark
    assert proc.poll() is None
    proc.send_signal(signal.SIGTERM)
    assert proc.wait(timeout=60) == -signal.SIGTERM


@pytest.mark.parametrize(
    "figure, shown",
    [
        ("1" + "0" * 400, "record.methods.floor.pairs_per_s is 100000000000... (401 digits): beyond a float's range"),
        ("NaN", "record.methods.floor.pairs_per_s is nan: not a finite number"),
        ("-Infinity", "record.methods.floor.pairs_per_s is -inf: not a finite number"),
    ],
    ids=["beyond-float", "nan", "infinity"],
)
def test_tables_refuse_a_figure_no_benchmark_writes(tmp_path, capsys, figure, shown):
    """json.loads takes NaN, Infinity and integers of any size: a 401-digit figure stopped the tables with an
    OverflowError traceback, and NaN was printed in the README's table as a measured 'nan' pairs/s."""
    import re

    from train_mrpc.cli import main

    text = (ROOT / "benchmarks" / "results" / "cpu-2core" / "tokenization.json").read_text()
    (tmp_path / "tokenization.json").write_text(re.sub(r'("pairs_per_s": )[^,}]+', rf"\g<1>{figure}", text, count=1))
    with pytest.raises(SystemExit) as info:
        main(["bench", "tables", str(tmp_path)])
    captured = capsys.readouterr()
    assert_one_line_error(
        info.value.code,
        captured.err,
        f"{tmp_path / 'tokenization.json'}: {shown}; expected the JSON record train-mrpc bench tokenization writes",
    )
    assert captured.out == ""
