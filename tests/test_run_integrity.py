"""Runs that belong to someone else, damage of the same size, two runs in one folder, a full disk, results
after a resume: every case stops with one line or ends exactly like the uninterrupted run (issue 14, 1-5)."""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
from pathlib import Path

import pytest
from test_checkpointing import assert_identical_runs, run_args

from train_mrpc.checkpointing import sealed

from conftest import (
    ROOT,
    TEST_ENV,
    accelerate_launch,
    run_cli,
    small_tmpfs,
    tiny_args,
    training_workers,
    wait_for_log_lines,
)
from conftest import (
    assert_error_after_loading as assert_one_line_error,
)


def finished_run(tmp_path_factory, tiny_model_dir, name: str, *extra) -> Path:
    out = tmp_path_factory.mktemp(name) / "run"
    proc = run_cli(run_args(tiny_model_dir, out, *extra))
    assert proc.returncode == 0, proc.stderr[-3000:]
    return out


@pytest.fixture
def reference(one_process_reference) -> Path:
    """An uninterrupted 60-step run (checkpoints at 10, 20, ... 60): conftest's, made once for this file and
    tests/test_checkpointing.py, which run it with the same arguments (run_args)."""
    return one_process_reference


def test_latest_refuses_a_checkpoint_of_another_run(tmp_path, tiny_model_dir, reference):
    out = tmp_path / "copy"
    shutil.copytree(reference, out)  # someone else's finished run in this folder
    # A different run started there is refused at once: the folder holds another run's checkpoints.
    args = tiny_args(
        tiny_model_dir,
        out,
        "--max_train_steps",
        "6",
        "--seed",
        "7",
        "--logging_steps",
        "1",
        "--checkpointing_steps",
        "5",
    )
    proc = run_cli(args)
    assert_one_line_error(proc.returncode, proc.stderr, f"--output_dir {out} holds another run's checkpoints")
    # Asked to resume "latest" there: the newest checkpoint is the other run's, and it is refused.
    proc = run_cli([*args, "--resume_from_checkpoint", "latest"])
    line = assert_one_line_error(proc.returncode, proc.stderr, "step_000060 was made by a run with other settings")
    assert "seed 42 -> 7" in line and "max_steps 60 -> 6" in line and "--overwrite_output_dir" in line
    assert (out / "model.safetensors").read_bytes() == (reference / "model.safetensors").read_bytes()

    # Asked for explicitly: start fresh (the old run's files go), which ends as the same run does elsewhere.
    proc = run_cli([*args, "--resume_from_checkpoint", "latest", "--overwrite_output_dir", "true"])
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert "resumed from" not in proc.stdout
    alone = tmp_path / "alone"
    assert (
        run_cli(
            tiny_args(
                tiny_model_dir,
                alone,
                "--max_train_steps",
                "6",
                "--seed",
                "7",
                "--logging_steps",
                "1",
                "--checkpointing_steps",
                "5",
            )
        ).returncode
        == 0
    )
    assert (out / "model.safetensors").read_bytes() == (alone / "model.safetensors").read_bytes()
    assert sorted(p.name for p in (out / "checkpoints").iterdir()) == ["step_000005", "step_000006"]


def test_changed_batch_size_is_named_and_can_be_allowed(tmp_path, tiny_model_dir, reference):
    out = tmp_path / "copy"
    shutil.copytree(reference, out)
    checkpoint = out / "checkpoints" / "step_000030"
    args = run_args(tiny_model_dir, out, "--resume_from_checkpoint", checkpoint, "--per_device_train_batch_size", "8")
    proc = run_cli(args)
    assert_one_line_error(proc.returncode, proc.stderr, "per_device_train_batch_size 16 -> 8")
    proc = run_cli([*args, "--resume_with_changed_settings", "true"])
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert "resuming" in proc.stderr and "with changed settings: per_device_train_batch_size 16 -> 8" in proc.stderr


def test_a_resume_with_fewer_batches_an_epoch_than_the_checkpoint_had_done_is_refused(
    tmp_path, tiny_model_dir, reference
):
    """Step 30 was saved 10 batches into epoch 2; with batches of 64 an epoch has 5, so skipping 10 would skip
    the whole epoch and more (the run ended silently short)."""
    out = tmp_path / "copy"
    shutil.copytree(reference, out)
    checkpoint = out / "checkpoints" / "step_000030"
    proc = run_cli(
        run_args(
            tiny_model_dir,
            out,
            "--resume_from_checkpoint",
            checkpoint,
            "--per_device_train_batch_size",
            "64",
            "--resume_with_changed_settings",
            "true",
        )
    )
    assert_one_line_error(
        proc.returncode,
        proc.stderr,
        f"checkpoint {checkpoint} was saved 10 batches into an epoch, but this run's epochs have 5",
    )


@pytest.mark.parametrize("edit", [{"batches_in_epoch": 1000}, {"meters": {}}, {"meters": {"loss_sum": "abc"}}])
def test_an_edited_trainer_state_fails_its_own_checksum(tmp_path, tiny_model_dir, reference, edit):
    """Fields of the right type but the wrong value (a counter, the meters) would resume silently wrong: the
    state carries a checksum of itself, beside those of the other files."""
    out = tmp_path / "copy"
    shutil.copytree(reference, out)
    latest = out / "checkpoints" / "step_000060"
    state = json.loads((latest / "trainer_state.json").read_text())
    (latest / "trainer_state.json").write_text(json.dumps({**state, **edit}, indent=2))
    proc = run_cli(run_args(tiny_model_dir, out, "--resume_from_checkpoint", latest))
    assert_one_line_error(
        proc.returncode,
        proc.stderr,
        f"checkpoint {latest} is damaged: trainer_state.json differs from what was saved (checksum)",
    )
    proc = run_cli(run_args(tiny_model_dir, out, "--resume_from_checkpoint", "latest"))
    assert proc.returncode == 0 and "step_000050" in proc.stdout, proc.stderr[-3000:]


@pytest.mark.parametrize("damage", ["zero 64 bytes of random_states_0.pkl", "0xff over the weights"])
def test_same_size_damage_is_caught_by_checksums(tmp_path, tiny_model_dir, reference, damage):
    out = tmp_path / "copy"
    shutil.copytree(reference, out)
    latest = out / "checkpoints" / "step_000060"
    name = "random_states_0.pkl" if "random" in damage else "model.safetensors"
    data = bytearray((latest / name).read_bytes())
    middle = len(data) // 2
    data[middle : middle + 64] = bytes(64) if "zero" in damage else b"\xff" * 64
    (latest / name).write_bytes(bytes(data))

    proc = run_cli(run_args(tiny_model_dir, out, "--resume_from_checkpoint", latest))
    assert_one_line_error(
        proc.returncode, proc.stderr, f"checkpoint {latest} is damaged: the content of {name} differs"
    )
    proc = run_cli(run_args(tiny_model_dir, out, "--resume_from_checkpoint", "latest"))
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert f"skipping checkpoint {latest} is damaged" in proc.stderr and "step_000050" in proc.stdout
    assert (out / "model.safetensors").read_bytes() == (reference / "model.safetensors").read_bytes()


@pytest.mark.parametrize(
    "state, problem",
    [
        ("[]", "holds list, expected an object"),
        ('{"files": null}', "lists no files"),
        ('{"step": "three", "files": {"model.safetensors": 1}}', "has step = 'three', expected an integer"),
    ],
)
def test_malformed_trainer_state_is_skipped_or_named(tmp_path, tiny_model_dir, reference, state, problem):
    out = tmp_path / "copy"
    shutil.copytree(reference, out)
    latest = out / "checkpoints" / "step_000060"
    (latest / "trainer_state.json").write_text(state)
    proc = run_cli(run_args(tiny_model_dir, out, "--resume_from_checkpoint", latest))
    assert_one_line_error(proc.returncode, proc.stderr, f"checkpoint {latest} is damaged: trainer_state.json {problem}")
    proc = run_cli(run_args(tiny_model_dir, out, "--resume_from_checkpoint", "latest"))
    assert proc.returncode == 0 and "step_000050" in proc.stdout, proc.stderr[-3000:]


def test_a_second_run_in_the_same_folder_stops_at_once(tmp_path, tiny_model_dir):
    out = tmp_path / "shared"
    args = tiny_args(tiny_model_dir, out, "--num_train_epochs", "50", "--logging_steps", "1")
    first = subprocess.Popen(
        [sys.executable, "-m", "train_mrpc", *args],
        cwd=ROOT,
        env={**os.environ, **TEST_ENV},
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        log = out / "train_log.jsonl"
        for _ in range(3000):
            if log.exists() and log.read_text().strip():
                break
            assert first.poll() is None, first.stderr.read()
            import time

            time.sleep(0.05)
        second = run_cli(args)
        assert_one_line_error(
            second.returncode, second.stderr, f"--output_dir {out} is in use by another run (pid {first.pid}"
        )
    finally:
        first.kill()
        first.wait()
    # The lock died with its process: the folder is free again.
    assert (
        run_cli(tiny_args(tiny_model_dir, out, "--max_train_steps", "2", "--overwrite_output_dir", "true")).returncode
        == 0
    )


@pytest.fixture
def small_disk(tmp_path):
    """A real 1 MiB tmpfs: room for the tiny run's outputs and a few checkpoints (~0.2 MB each), not all."""
    with small_tmpfs(tmp_path / "disk", "1m") as mount:
        yield mount


def test_full_disk_keeps_the_last_checkpoint_and_says_so(small_disk, tiny_model_dir):
    out = small_disk / "run"
    proc = run_cli(tiny_args(tiny_model_dir, out, "--num_train_epochs", "3", "--checkpointing_steps", "4"))
    line = assert_one_line_error(proc.returncode, proc.stderr, "failed: no space left on the device")
    assert "the partial save was removed" in line
    checkpoints = sorted((out / "checkpoints").iterdir())
    assert not [p for p in checkpoints if p.name.startswith(".tmp")], checkpoints
    if "is kept" in line:  # the last good checkpoint validates and resumes
        from train_mrpc.checkpointing import validate_checkpoint

        kept = Path(line.split("the last good checkpoint, ")[1].split(", is kept")[0])
        validate_checkpoint(kept)


def test_rerunning_a_finished_run_reports_the_same_results(tmp_path, tiny_model_dir, reference):
    out = tmp_path / "copy"
    shutil.copytree(reference, out)
    before = json.loads((out / "all_results.json").read_text())
    proc = run_cli(run_args(tiny_model_dir, out, "--resume_from_checkpoint", "latest"))
    assert proc.returncode == 0, proc.stderr[-3000:]
    text = (out / "all_results.json").read_text()
    after = json.loads(text, parse_constant=lambda c: pytest.fail(f"all_results.json holds {c}: not JSON"))
    for key in ("train_loss", "eval_accuracy", "eval_loss", "global_step", "train_samples", "best_step"):
        assert after[key] == before[key], key
    assert after["train_samples_per_second"] == pytest.approx(before["train_samples_per_second"], rel=0.2)
    assert_identical_runs(reference, out)


def test_kill_during_the_save_after_an_evaluation_logs_each_evaluation_once(tmp_path, tiny_model_dir, reference):
    """Killed after epoch 2's evaluation was logged but before the checkpoint that follows it was written.

    The latest checkpoint is then the one --checkpointing_steps 10 saved at step 40 just before that
    evaluation (the save after it replaces it under the same name, so the test writes back the state that
    checkpoint held: in epoch 2 with all its batches done, last evaluation at step 20). The resumed run
    evaluates epoch 2 again: its log must hold each evaluation once, as the uninterrupted run's does."""
    out = tmp_path / "copy"
    shutil.copytree(reference, out)
    for later in ("step_000050", "step_000060"):
        shutil.rmtree(out / "checkpoints" / later)
    state_file = out / "checkpoints" / "step_000040" / "trainer_state.json"
    state = json.loads(state_file.read_text())
    assert state["step"] == 40 and state["last_eval_step"] == 40 and state["epoch"] == 2
    evals = [json.loads(line) for line in (out / "eval_results.jsonl").read_text().splitlines()]
    first = evals[0]["eval_accuracy"]
    state.update(
        epoch=1,
        batches_in_epoch=20,
        last_eval_step=20,
        eval_metrics={},
        best_metric=first,
        best_step=20,
        evals_without_improvement=0,
    )
    state_file.write_text(json.dumps(sealed(state)))  # resealed: the state checks its own checksum
    (out / "eval_results.jsonl").write_text("".join(json.dumps(e) + "\n" for e in evals[:2]))  # epoch 2's logged
    proc = run_cli(run_args(tiny_model_dir, out, "--resume_from_checkpoint", "latest"))
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert "step_000040" in proc.stdout
    assert (out / "eval_results.jsonl").read_text() == (reference / "eval_results.jsonl").read_text()
    assert_identical_runs(reference, out)


def test_sigterm_during_set_up_exits_75_with_a_message(tmp_path, tiny_model_dir):
    """Signalled while it loads and tokenizes (before any step): status 75, one line, preempted.json."""
    import time

    out = tmp_path / "starting"
    proc = subprocess.Popen(
        [sys.executable, "-m", "train_mrpc", *tiny_args(tiny_model_dir, out)],
        cwd=ROOT,
        env={**os.environ, **TEST_ENV},
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    deadline = time.monotonic() + 120
    while not (out / "train_config.json").exists() and time.monotonic() < deadline and proc.poll() is None:
        time.sleep(0.005)  # the output folder exists: set-up has begun, training has not
    proc.send_signal(signal.SIGTERM)
    _, stderr = proc.communicate(timeout=300)
    assert proc.returncode == 75, stderr[-3000:]
    assert stderr.strip().splitlines()[-1].startswith("train-mrpc: error: stopped by SIGTERM before training began")
    marker = json.loads((out / "preempted.json").read_text())
    assert marker == {"signal": "SIGTERM", "step": 0, "checkpoint": None, "exit_status": 75}
    assert not (out / "train_log.jsonl").exists() or not (out / "train_log.jsonl").read_text()


def test_preempted_run_under_accelerate_launch_leaves_its_marker(tmp_path, tiny_model_dir, reference):
    """accelerate launch reports any failure as status 1, so the run's own record of the stop is the contract
    a requeue script can rely on: preempted.json names the checkpoint, and resuming from it ends exactly."""
    out = tmp_path / "launched"
    launcher = subprocess.Popen(
        accelerate_launch("cpu.yaml") + run_args(tiny_model_dir, out),
        cwd=ROOT,
        env={**os.environ, **TEST_ENV},
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    wait_for_log_lines(out, 25)
    workers = training_workers(out)
    assert len(workers) == 1, workers
    os.kill(workers[0], signal.SIGTERM)  # what SLURM's scancel --signal delivers to the training process
    _, stderr = launcher.communicate(timeout=300)
    assert launcher.returncode == 1  # the launcher's status, whatever the child's
    marker = json.loads((out / "preempted.json").read_text())
    assert marker["signal"] == "SIGTERM" and marker["exit_status"] == 75 and 25 <= marker["step"] < 60
    assert Path(marker["checkpoint"]).name == f"step_{marker['step']:06d}"
    proc = run_cli(run_args(tiny_model_dir, out, "--resume_from_checkpoint", "latest"))
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert not (out / "preempted.json").exists()
    assert_identical_runs(reference, out)


def test_odd_files_beside_checkpoints_do_not_break_a_resume(tmp_path, tiny_model_dir, reference):
    """A stray 'step_4.bak' copy, a same-size edit of a step number, a half-written log line: latest still
    resumes from the newest sound checkpoint and ends exactly like the uninterrupted run."""
    out = tmp_path / "copy"
    shutil.copytree(reference, out)
    shutil.copytree(out / "checkpoints" / "step_000040", out / "checkpoints" / "step_40.bak")
    edited = out / "checkpoints" / "step_000060" / "trainer_state.json"
    edited.write_text(edited.read_text().replace('"step": 60,', '"step": 61,'))
    with open(out / "train_log.jsonl", "a") as log:
        log.write('{"step": 61, "lo')  # what a kill in the middle of an append leaves
    proc = run_cli(run_args(tiny_model_dir, out, "--resume_from_checkpoint", "latest"))
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert "says step 61, but the folder is step_000060" in proc.stderr and "step_000050" in proc.stdout
    assert_identical_runs(reference, out)


@pytest.mark.parametrize(
    "where, extra, message",
    [
        ("inside a checkpoint", [], "is a checkpoint folder of another run"),
        ("the model's own folder", [], "is the folder of --model_name_or_path"),
        (
            "warm-up as long as the run",
            ["--num_warmup_steps", "8", "--max_train_steps", "8"],
            "the warm-up (8 steps) is as long",
        ),
    ],
)
def test_output_dirs_and_schedules_that_would_destroy_or_waste_a_run_are_refused(
    tmp_path, tiny_model_dir, reference, where, extra, message
):
    model = tmp_path / "model"
    shutil.copytree(tiny_model_dir, model)
    # A copy of the reference's last checkpoint (the refused run still locks the folder: the shared reference
    # stays as it was).
    checkpoint = tmp_path / "other-run" / "checkpoints" / "step_000060"
    if where == "inside a checkpoint":
        shutil.copytree(reference / "checkpoints" / "step_000060", checkpoint)
    out = {"inside a checkpoint": checkpoint, "the model's own folder": model}.get(where, tmp_path / "run")
    before = (out / "model.safetensors").read_bytes() if (out / "model.safetensors").exists() else None
    proc = run_cli(tiny_args(model, out, *extra))
    assert_one_line_error(proc.returncode, proc.stderr, message)
    if before is not None:
        assert (out / "model.safetensors").read_bytes() == before


def test_full_disk_during_the_model_save_is_one_line_and_leaves_no_config_without_weights(tmp_path, tiny_model_dir):
    with small_tmpfs(tmp_path / "tiny-disk", "48k") as mount:
        out = mount / "run"
        proc = run_cli(tiny_args(tiny_model_dir, out, "--checkpointing_steps", "no", "--num_train_epochs", "1"))
        assert_one_line_error(proc.returncode, proc.stderr, "failed: no space left on the device")
        assert not (out / "config.json").exists() or (out / "model.safetensors").exists()
        assert not (out / "best_model" / "config.json").exists() or (out / "best_model" / "model.safetensors").exists()
        assert not list(out.glob(".tmp-*")) and not list(mount.glob(".tmp-*"))
