"""Nothing lost: killed, preempted and resumed runs end exactly where an uninterrupted run ends."""

import json
import math
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from train_mrpc.checkpointing import PREEMPTED_EXIT_CODE, rotate_checkpoints

from conftest import (
    RESUME_STEPS,
    ROOT,
    TEST_ENV,
    read_log,
    resume_args,
    run_cli,
    tiny_args,
    training_workers,
    two_process_job_args,
    two_process_launcher,
    wait_for_log_lines,
)

# 320 pairs / batch 16 = 20 steps per epoch, 3 epochs, a checkpoint every 10 steps. Dropout stays on:
# exact resume needs every RNG state restored, not a deterministic model.
STEPS = RESUME_STEPS


def run_args(model_dir, out, *extra):
    return resume_args(model_dir, out, *extra)


def assert_identical_runs(a: Path, b: Path) -> None:
    assert (a / "model.safetensors").read_bytes() == (b / "model.safetensors").read_bytes()
    assert read_log(a) == read_log(b)  # bit-identical losses, before and after the resume point
    assert [json.loads(x)["eval_loss"] for x in (a / "eval_results.jsonl").read_text().splitlines()] == [
        json.loads(x)["eval_loss"] for x in (b / "eval_results.jsonl").read_text().splitlines()
    ]


@pytest.fixture
def uninterrupted(one_process_reference):
    """The uninterrupted run_args run (conftest's, made once for this file and tests/test_run_integrity.py)."""
    return one_process_reference


def start_and_signal(args, out: Path, at_step: int, sig: int) -> tuple[subprocess.Popen, int, str]:
    """Start a run, wait until it has logged ``at_step``, then send ``sig``; returns (process, steps logged, stderr)."""
    import os

    proc = subprocess.Popen(
        [sys.executable, "-m", "train_mrpc", *args],
        cwd=ROOT,
        env={**os.environ, **TEST_ENV},
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    log = out / "train_log.jsonl"
    deadline = time.monotonic() + 300
    while time.monotonic() < deadline and proc.poll() is None:
        if log.exists() and len(log.read_text().splitlines()) >= at_step:
            proc.send_signal(sig)
            break
        time.sleep(0.002)
    _, stderr = proc.communicate(timeout=300)
    return proc, len(log.read_text().splitlines()), stderr


def test_sigkill_mid_epoch_then_resume_latest_is_bit_identical(tmp_path, tiny_model_dir, uninterrupted):
    out = tmp_path / "killed"
    proc, logged, _ = start_and_signal(run_args(tiny_model_dir, out), out, at_step=13, sig=signal.SIGKILL)
    assert proc.returncode == -signal.SIGKILL
    checkpoints = sorted(p.name for p in (out / "checkpoints").glob("step_*"))
    assert checkpoints and checkpoints[-1] == "step_000010", checkpoints
    assert 10 < logged < 20, "the kill must land between checkpoints, mid-epoch"

    resumed = run_cli(run_args(tiny_model_dir, out, "--resume_from_checkpoint", "latest"))
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    assert "resumed from" in resumed.stdout and "step_000010" in resumed.stdout
    assert_identical_runs(uninterrupted, out)


def test_sigterm_saves_exits_75_and_resumes_exactly_in_epoch_2(tmp_path, tiny_model_dir, uninterrupted):
    out = tmp_path / "preempted"
    proc, _, stderr = start_and_signal(run_args(tiny_model_dir, out), out, at_step=26, sig=signal.SIGTERM)
    assert proc.returncode == PREEMPTED_EXIT_CODE == 75
    stopped_at = max(int(p.name.split("_")[1]) for p in (out / "checkpoints").glob("step_*"))
    assert 26 <= stopped_at < 40 and stopped_at % 10, "checkpoint written at the signal, mid-epoch 2"
    assert f"stopped by SIGTERM at step {stopped_at}" in stderr
    assert not (out / "all_results.json").exists()

    resumed = run_cli(run_args(tiny_model_dir, out, "--resume_from_checkpoint", "latest"))
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    assert_identical_runs(uninterrupted, out)


@pytest.mark.parametrize("step", [30, 50])
def test_resume_in_a_later_epoch_keeps_that_epochs_data_order(tmp_path, tiny_model_dir, uninterrupted, step):
    """accelerate issue 2016: a loader from skip_first_batches replays epoch 0's order after a resume."""
    out = tmp_path / "resumed"
    checkpoint = uninterrupted / "checkpoints" / f"step_{step:06d}"
    shutil.copytree(checkpoint, out / "checkpoints" / checkpoint.name)
    proc = run_cli(
        run_args(tiny_model_dir, out, "--resume_from_checkpoint", str(out / "checkpoints" / checkpoint.name))
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert (out / "model.safetensors").read_bytes() == (uninterrupted / "model.safetensors").read_bytes()
    assert read_log(out) == [r for r in read_log(uninterrupted) if r["step"] > step]


def test_a_resume_between_logging_steps_logs_the_uninterrupted_windows(tmp_path, tiny_model_dir):
    """Checkpoint at step 10, logs every 4: the resumed run's step-12 line still covers steps 9-12 (loss, grad norms)."""
    full, resumed = tmp_path / "full", tmp_path / "resumed"
    proc = run_cli(run_args(tiny_model_dir, full, "--logging_steps", "4", "--max_train_steps", "16"))
    assert proc.returncode == 0, proc.stderr[-3000:]
    shutil.copytree(full / "checkpoints" / "step_000010", resumed / "checkpoints" / "step_000010")
    proc = run_cli(
        run_args(
            tiny_model_dir,
            resumed,
            "--logging_steps",
            "4",
            "--max_train_steps",
            "16",
            "--resume_from_checkpoint",
            "latest",
        )
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert [r["step"] for r in read_log(resumed)] == [12, 16]
    assert read_log(resumed) == [r for r in read_log(full) if r["step"] > 10]
    assert all(r["grad_norm"] > 0 for r in read_log(resumed))


def test_damaged_checkpoint_is_skipped_by_latest_and_refused_by_path(tmp_path, tiny_model_dir, uninterrupted):
    out = tmp_path / "damaged"
    shutil.copytree(uninterrupted / "checkpoints", out / "checkpoints")
    latest = out / "checkpoints" / "step_000060"
    weights = latest / "model.safetensors"
    weights.write_bytes(weights.read_bytes()[: weights.stat().st_size // 2])  # a truncated file
    (out / "checkpoints" / ".tmp-step_000070").mkdir()  # a save that died half-way
    (out / "checkpoints" / "step_000080").mkdir()  # a directory without its trainer state

    proc = run_cli(run_args(tiny_model_dir, out, "--resume_from_checkpoint", str(latest)))
    assert proc.returncode == 2
    assert f"train-mrpc: error: checkpoint {latest} is damaged: model.safetensors has" in proc.stderr

    proc = run_cli(run_args(tiny_model_dir, out, "--resume_from_checkpoint", "latest"))
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert f"skipping checkpoint {out / 'checkpoints' / 'step_000080'} is incomplete" in proc.stderr
    assert f"skipping checkpoint {latest} is damaged" in proc.stderr
    assert "resumed from" in proc.stdout and "step_000050" in proc.stdout
    assert (out / "model.safetensors").read_bytes() == (uninterrupted / "model.safetensors").read_bytes()


def test_resume_latest_without_checkpoints_starts_fresh(tmp_path, tiny_model_dir):
    proc = run_cli(
        tiny_args(tiny_model_dir, tmp_path / "fresh", "--max_train_steps", "3", "--resume_from_checkpoint", "latest")
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert "resumed from" not in proc.stdout


def test_non_finite_loss_stops_and_keeps_the_last_good_checkpoint(tmp_path, tiny_model_dir):
    out = tmp_path / "diverged"
    args = tiny_args(
        tiny_model_dir,
        out,
        "--learning_rate",
        "1e12",
        "--num_warmup_steps",
        "10",
        "--logging_steps",
        "1",
        "--lr_scheduler_type",
        "constant_with_warmup",
        "--checkpointing_steps",
        "2",
    )
    proc = run_cli(args)
    assert proc.returncode == 2
    message = proc.stderr.strip().splitlines()[-1]
    assert "the training loss became non-finite (nan) by step 3" in message
    assert f"the last good checkpoint, {out / 'checkpoints' / 'step_000002'}, is kept" in message
    assert sorted(p.name for p in (out / "checkpoints").iterdir()) == ["step_000002"]
    state = json.loads((out / "checkpoints" / "step_000002" / "trainer_state.json").read_text())
    assert state["step"] == 2 and math.isfinite(state["meters"]["loss_sum_all_processes"])


def test_rotation_keeps_the_last_k_plus_the_best(tmp_path):
    accuracy = {10: 0.70, 20: 0.90, 30: 0.60, 40: 0.65, 50: 0.62}
    for step, value in accuracy.items():
        path = tmp_path / "checkpoints" / f"step_{step:06d}"
        path.mkdir(parents=True)
        metrics = {"accuracy": value, "loss": 1 - value}
        (path / "trainer_state.json").write_text(json.dumps({"step": step, "eval_metrics": metrics, "files": {}}))
    rotate_checkpoints(tmp_path, keep_last=2, metric="accuracy", greater_is_better=True)
    assert sorted(p.name for p in (tmp_path / "checkpoints").iterdir()) == ["step_000020", "step_000040", "step_000050"]
    rotate_checkpoints(tmp_path, keep_last=1, metric="loss", greater_is_better=False)
    assert sorted(p.name for p in (tmp_path / "checkpoints").iterdir()) == ["step_000020", "step_000050"]


def test_checkpoint_contents(uninterrupted):
    contents = {p.name for p in (uninterrupted / "checkpoints" / "step_000060").iterdir()}
    assert {
        "model.safetensors",
        "optimizer.bin",
        "scheduler.bin",
        "random_states_0.pkl",
        "trainer_state.json",
    } <= contents
    assert len(list((uninterrupted / "checkpoints").glob("step_*"))) == 6  # every 10 steps; none deleted by default


def test_real_run_rotation_keeps_the_limit(tmp_path, tiny_model_dir):
    out = tmp_path / "rotated"
    proc = run_cli(
        run_args(
            tiny_model_dir,
            out,
            "--checkpointing_steps",
            "epoch",
            "--save_total_limit",
            "1",
            "--metric_for_best_model",
            "loss",
        )
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    evals = [json.loads(line) for line in (out / "eval_results.jsonl").read_text().splitlines()]
    best = min(evals, key=lambda e: e["eval_loss"])["step"]
    expected = {f"step_{STEPS:06d}", f"step_{best:06d}"}
    assert {p.name for p in (out / "checkpoints").iterdir()} == expected


def test_two_process_resume_is_exact(tmp_path, tiny_model_dir, two_process_reference):
    """Resumed at step 30 on 2 processes, the run ends as the uninterrupted 2-process run (conftest's, also the
    reference of tests/test_faults.py and tests/test_ctrl_c.py) did: same arguments, same launch."""
    full, resumed = two_process_reference, tmp_path / "resumed"
    shutil.copytree(full / "checkpoints" / "step_000030", resumed / "checkpoints" / "step_000030")
    assert {"random_states_0.pkl", "random_states_1.pkl"} <= {
        p.name for p in (resumed / "checkpoints" / "step_000030").iterdir()
    }
    proc = run_cli(
        two_process_job_args(tiny_model_dir, resumed, "--resume_from_checkpoint", "latest"),
        launcher=two_process_launcher(),
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert (full / "model.safetensors").read_bytes() == (resumed / "model.safetensors").read_bytes()
    assert read_log(resumed) == [r for r in read_log(full) if r["step"] > 30]


def test_processes_agree_on_a_stop_signalled_to_one_of_them(tmp_path, tiny_model_dir):
    import os

    out = tmp_path / "one-signalled"
    args = run_args(tiny_model_dir, out, "--per_device_train_batch_size", "8", "--logging_steps", "2")
    command = two_process_launcher() + args
    launcher = subprocess.Popen(
        command, cwd=ROOT, env={**os.environ, **TEST_ENV}, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True
    )
    wait_for_log_lines(out, 7)
    workers = training_workers(out)
    assert len(workers) == 2, workers
    os.kill(max(workers), signal.SIGUSR1)  # only the second worker hears it
    _, stderr = launcher.communicate(timeout=300)
    assert launcher.returncode != 0
    checkpoints = [p for p in (out / "checkpoints").glob("step_*")]
    assert len(checkpoints) >= 1
    stopped = max(checkpoints, key=lambda p: p.name)
    state = json.loads((stopped / "trainer_state.json").read_text())
    assert state["step"] % 2 == 0 and state["step"] < STEPS  # at a logging step, before the end
    assert {"random_states_0.pkl", "random_states_1.pkl"} <= {p.name for p in stopped.iterdir()}
    assert f"stopped by a signal to another process at step {state['step']}" in stderr
    assert not (out / "all_results.json").exists()


def handmade_checkpoint(folder: Path, **fields) -> Path:
    """A checkpoint folder whose trainer_state.json (sealed with its checksum where it can be) holds ``fields``."""
    from train_mrpc.checkpointing import STATE_CHECKSUM, file_checksum

    folder.mkdir(parents=True)
    (folder / "model.safetensors").write_bytes(b"weights")
    files = {"model.safetensors": {"size": 7, "xxh3_64": file_checksum(folder / "model.safetensors")}}
    record = {"step": int(folder.name[5:]), "files": files, STATE_CHECKSUM: "0" * 16, **fields}
    text = json.dumps(record)  # NaN and Infinity as Python writes them, and json.loads reads them back
    (folder / "trainer_state.json").write_text(text)
    return folder


@pytest.mark.parametrize(
    "fields, problem",
    [
        ({"best_metric": float("nan")}, "has best_metric = nan, which no save writes"),
        ({"train_seconds": float("inf")}, "has train_seconds = inf, which no save writes"),
        ({"meters": {"loss_sum": [1.0, float("-inf")]}}, "has meters.loss_sum[1] = -inf, which no save writes"),
    ],
    ids=["nan-best-metric", "infinite-seconds", "infinite-meter"],
)
def test_a_trainer_state_holding_numbers_no_save_writes_is_damaged(
    tmp_path, tiny_model_dir, capsys, caplog, fields, problem
):
    """json.loads reads NaN and Infinity; the state's checksum (computed with allow_nan=False) then stopped the
    resume, and `latest`, with a ValueError traceback; without a checksum the value was resumed from."""
    from train_mrpc.checkpointing import find_latest
    from train_mrpc.cli import main

    from conftest import assert_one_line_error

    out = tmp_path / "run"
    checkpoint = handmade_checkpoint(out / "checkpoints" / "step_000010", **fields)
    with pytest.raises(SystemExit) as info:
        main(tiny_args(tiny_model_dir, out, "--resume_from_checkpoint", str(checkpoint)))
    assert_one_line_error(
        info.value.code, capsys.readouterr().err, f"checkpoint {checkpoint} is damaged: trainer_state.json {problem}"
    )
    assert find_latest(out) is None and f"skipping checkpoint {checkpoint} is damaged" in caplog.text


def test_rotation_scores_only_sound_records(tmp_path):
    """A damaged checkpoint beside the run's own (which latest skips with a warning) stopped the run at its next
    save: rotation read its state unchecked (AttributeError on a list, TypeError on a text metric). A NaN metric,
    which compares false with everything, was kept as the best while the real best was deleted."""
    states = {
        5: '{"eval_metrics": {"accuracy": NaN}}',
        10: "[]",
        20: '{"eval_metrics": {"accuracy": "high"}}',
        30: '{"eval_metrics": ["accuracy"]}',
        40: '{"eval_metrics": {"accuracy": 0.9}}',
        50: '{"eval_metrics": {"accuracy": 0.6}}',
        60: '{"eval_metrics": {}}',
    }
    for greater_is_better, best in ((True, "step_000040"), (False, "step_000050")):
        root = tmp_path / str(greater_is_better)
        for step, state in states.items():
            (root / "checkpoints" / f"step_{step:06d}").mkdir(parents=True)
            (root / "checkpoints" / f"step_{step:06d}" / "trainer_state.json").write_text(state)
        rotate_checkpoints(root, keep_last=1, metric="accuracy", greater_is_better=greater_is_better)
        assert sorted(p.name for p in (root / "checkpoints").iterdir()) == [best, "step_000060"]
