"""Training end to end: the loss falls, outputs reload, the CLI works through accelerate launch, errors are clear."""

import json
import time
from pathlib import Path

import pytest
import torch

from train_mrpc.cli import main
from train_mrpc.config import parse_config
from train_mrpc.train import train

from conftest import OUTPUTS, accelerate_launch, run_cli, tiny_args


def read_jsonl(path):
    return [json.loads(line) for line in path.read_text().splitlines()]


def test_tiny_model_learns_and_the_saved_model_reloads(tmp_path, tiny_model_dir):
    from transformers import AutoModelForSequenceClassification, AutoTokenizer

    args = tiny_args(
        tiny_model_dir,
        tmp_path,
        "--max_train_samples",
        "1024",
        "--num_train_epochs",
        "5",
        "--learning_rate",
        "3e-3",
        "--warmup_ratio",
        "0.05",
        "--precision",
        "fp32",
    )
    results = train(parse_config(args))
    losses = [r["loss"] for r in read_jsonl(tmp_path / "train_log.jsonl")]
    assert losses[-1] < losses[0] - 0.1, losses
    evals = read_jsonl(tmp_path / "eval_results.jsonl")
    assert [e["epoch"] for e in evals] == [1, 2, 3, 4, 5]
    assert evals[-1]["eval_loss"] < evals[0]["eval_loss"]
    assert results["global_step"] == 5 * 1024 // 16

    # The saved model and tokenizer reproduce the run's own final evaluation.
    from train_mrpc.synthetic import generate_pairs

    reloaded = AutoModelForSequenceClassification.from_pretrained(tmp_path).eval()
    tokenizer = AutoTokenizer.from_pretrained(tmp_path)
    pairs = generate_pairs("validation", seed=0, size=None)
    batch = tokenizer(pairs["sentence1"][:100], pairs["sentence2"][:100], padding=True, return_tensors="pt")
    labels = torch.tensor(pairs["label"][:100])
    with torch.no_grad():
        logits = reloaded(**batch).logits
    assert torch.nn.functional.cross_entropy(logits, labels).item() == pytest.approx(results["eval_loss"], rel=1e-5)
    assert (logits.argmax(-1) == labels).float().mean().item() == pytest.approx(results["eval_accuracy"])
    assert reloaded.config.id2label == {0: "not_equivalent", 1: "equivalent"}


def test_same_seed_same_run(tmp_path, tiny_model_dir):
    first = train(parse_config(tiny_args(tiny_model_dir, tmp_path / "a", "--max_train_steps", "6")))
    from accelerate.state import AcceleratorState

    AcceleratorState._reset_state(True)
    second = train(parse_config(tiny_args(tiny_model_dir, tmp_path / "b", "--max_train_steps", "6")))
    assert first["train_loss"] == second["train_loss"] and first["eval_loss"] == second["eval_loss"]
    assert (tmp_path / "a" / "model.safetensors").read_bytes() == (tmp_path / "b" / "model.safetensors").read_bytes()


def test_cli_through_accelerate_launch_writes_every_output(tmp_path, tiny_model_dir):
    from transformers import pipeline

    out = tmp_path / "run"
    proc = run_cli(tiny_args(tiny_model_dir, out), launcher=accelerate_launch("cpu.yaml"))
    assert proc.returncode == 0, proc.stderr[-3000:]
    for name in OUTPUTS:
        assert (out / name).is_file(), name
    results = json.loads((out / "all_results.json").read_text())
    for key in (
        "eval_accuracy",
        "eval_f1",
        "eval_loss",
        "train_loss",
        "train_runtime",
        "train_samples_per_second",
        "train_tokens_per_second",
        "launch",
    ):
        assert key in results, key
    assert results["launch"]["num_processes"] == 1 and results["launch"]["device_type"] == "cpu"
    assert results["train_samples"] == 2 * 256
    # Real tokens only: fewer than padded batches would hold, more than one per example.
    assert 256 * 2 * 10 < results["train_tokens_per_second"] * (results["train_runtime"] - results["eval_runtime"])
    assert len(read_jsonl(out / "eval_results.jsonl")) == 2
    assert "MRPC fine-tune" in proc.stdout and "eval accuracy" in proc.stdout
    classify = pipeline("text-classification", model=str(out))
    assert classify("A dog runs.", text_pair="A dog is running.")[0]["label"] in {"equivalent", "not_equivalent"}


def test_three_entry_points_are_one(tmp_path):
    import shutil
    import subprocess
    import sysconfig

    # The environment's own scripts folder: under `make test` the venv is not activated (not on PATH).
    script = shutil.which("train-mrpc", path=sysconfig.get_path("scripts"))
    assert script, "console script train-mrpc is not installed"
    outputs = [subprocess.run([script, "--help"], capture_output=True, text=True).stdout, run_cli(["--help"]).stdout]
    assert outputs[0] == outputs[1] and "--model_name_or_path" in outputs[0]


def test_hub_names_fail_fast_offline_with_a_way_out(tmp_path):
    env = {k: "" for k in ("HF_HUB_OFFLINE", "TRANSFORMERS_OFFLINE")}
    start = time.perf_counter()
    proc = run_cli(
        ["--model_name_or_path", "bert-base-uncased", "--dataset", "synthetic", "--output_dir", tmp_path],
        env={**env, "HF_ENDPOINT": "https://hub.invalid"},
    )
    elapsed = time.perf_counter() - start
    assert proc.returncode == 2
    last = proc.stderr.strip().splitlines()[-1]
    assert "cannot load" in last and "'bert-base-uncased'" in last and "--model_name_or_path" in last
    assert "Traceback" not in proc.stderr
    assert elapsed < 20, f"took {elapsed:.0f} s: the libraries' own retries take 23-46 s"

    proc = run_cli(["--model_name_or_path", "tiny-random-bert", "--output_dir", tmp_path])
    assert proc.returncode == 2
    assert "cannot load dataset 'nyu-mll/glue/mrpc'" in proc.stderr and "--data_dir" in proc.stderr


@pytest.mark.parametrize(
    "extra, message",
    [
        (["--max_length", "4096"], "--max_length 4096 is beyond what model"),
        (["--output_dir", "{tmp}/file.txt/sub"], "--output_dir {tmp}/file.txt/sub cannot be written"),
        (["--data_dir", "{tmp}/missing"], "--data_dir {tmp}/missing: not a directory"),
        (
            ["--train_file", "{tmp}/missing.csv", "--validation_file", "{tmp}/missing.csv"],
            "{tmp}/missing.csv: file not found",
        ),
        (["--model_name_or_path", "{tmp}"], "cannot load tokenizer of model directory '{tmp}': it has no config.json"),
    ],
)
def test_bad_run_inputs_end_in_one_line(tmp_path, tiny_model_dir, capsys, extra, message):
    (tmp_path / "file.txt").write_text("")
    args = tiny_args(tiny_model_dir, tmp_path / "out") + [e.replace("{tmp}", str(tmp_path)) for e in extra]
    with pytest.raises(SystemExit) as exit_info:
        main(args)
    err = capsys.readouterr().err.strip().splitlines()
    assert exit_info.value.code == 2
    assert err[-1].startswith("train-mrpc: error: ") and message.replace("{tmp}", str(tmp_path)) in err[-1]


def test_bad_input_through_the_launcher_has_no_traceback(tmp_path, tiny_model_dir):
    proc = run_cli(
        tiny_args(tiny_model_dir, tmp_path, "--data_dir", tmp_path / "nope"), launcher=accelerate_launch("cpu.yaml")
    )
    assert proc.returncode != 0
    assert f"train-mrpc: error: --data_dir {tmp_path / 'nope'}: not a directory" in proc.stderr
    # accelerate launch re-raises a failed child's exit status as its own CalledProcessError; our process
    # prints no traceback, so nothing may come from the training code or the libraries it calls.
    import train_mrpc

    ours = proc.stderr.split("train-mrpc: error:")[0]
    assert "Traceback" not in ours
    # No frame of the launcher's traceback is in this package's source (wherever the checkout lives).
    launcher_traceback = proc.stderr.split("Traceback")[-1].split("CalledProcessError")[0]
    assert str(Path(train_mrpc.__file__).parent) not in launcher_traceback


# --- the loop's small decisions -------------------------------------------------------------------


@pytest.mark.parametrize(
    "batches, flags, expected",
    [
        (115, {}, (115, 345, 3, 35)),  # MRPC at batch 32: 3 epochs, 10 % warm-up rounded up
        (115, {"gradient_accumulation_steps": 2}, (58, 174, 3, 18)),  # the last accumulation is a short step
        (115, {"max_train_steps": 200}, (115, 200, 2, 20)),  # steps win over epochs
        (115, {"num_train_epochs": 0.5, "num_warmup_steps": 0}, (115, 58, 1, 0)),
    ],
)
def test_schedule_counts_optimizer_steps(batches, flags, expected):
    from train_mrpc.config import TrainConfig
    from train_mrpc.train import Schedule, schedule_for

    assert schedule_for(batches, TrainConfig(**flags)) == Schedule(*expected)


def test_best_and_early_stopping_decisions():
    from train_mrpc.checkpointing import TrainState
    from train_mrpc.train import is_improvement, majority_accuracy, should_stop_early

    assert is_improvement(0.5, None, greater_is_better=True) and is_improvement(0.5, None, greater_is_better=False)
    assert is_improvement(0.8, 0.7, True) and not is_improvement(0.7, 0.7, True) and not is_improvement(0.6, 0.7, True)
    assert is_improvement(0.3, 0.4, False) and not is_improvement(0.4, 0.4, False)
    assert not should_stop_early(TrainState(evals_without_improvement=5), None)
    assert should_stop_early(TrainState(evals_without_improvement=2), 2)
    assert not should_stop_early(TrainState(evals_without_improvement=1), 2)
    assert majority_accuracy([1] * 279 + [0] * 129) == pytest.approx(0.6838, abs=1e-4)
