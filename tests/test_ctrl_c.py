"""Ctrl-C keeps the work: the first SIGINT while training finishes the step, saves a checkpoint and stops with
exit 130 and a line saying how to resume; the resumed run ends where an uninterrupted one ends. A second Ctrl-C
stops at once. Under `accelerate launch` every process of the job gets it and they stop at the same step."""

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from train_mrpc.checkpointing import INTERRUPTED_EXIT_CODE, PreemptionHandler, validate_checkpoint

from conftest import (
    ROOT,
    TEST_ENV,
    read_log,
    run_cli,
    start_job,
    stop_job,
    tiny_args,
    two_process_job_args,
    two_process_launcher,
    wait_for_log_lines,
    workers_by_rank,
)


def run_args(model_dir, out, *extra):
    """20 steps (160 pairs, batch 16, 2 epochs), a log line and a chance to stop at every step."""
    return tiny_args(
        model_dir, out, "--max_train_samples", "160", "--logging_steps", "1", "--checkpointing_steps", "10", *extra
    )


def assert_same_run(a: Path, b: Path) -> None:
    assert (a / "model.safetensors").read_bytes() == (b / "model.safetensors").read_bytes()
    assert read_log(a) == read_log(b)


def test_the_first_ctrl_c_saves_exits_130_and_the_resume_equals_the_uninterrupted_run(tmp_path, tiny_model_dir):
    full, stopped = tmp_path / "full", tmp_path / "stopped"
    assert run_cli(run_args(tiny_model_dir, full)).returncode == 0
    proc = subprocess.Popen(
        [sys.executable, "-m", "train_mrpc", *run_args(tiny_model_dir, stopped)],
        cwd=ROOT,
        env={**os.environ, **TEST_ENV},
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    wait_for_log_lines(stopped, 13)
    proc.send_signal(signal.SIGINT)
    _, stderr = proc.communicate(timeout=300)
    assert proc.returncode == INTERRUPTED_EXIT_CODE == 130, stderr[-3000:]
    step = max(int(p.name.split("_")[1]) for p in (stopped / "checkpoints").glob("step_*"))
    assert 13 <= step < 20, "a checkpoint at the step the Ctrl-C came in, not only the periodic one at 10"
    assert validate_checkpoint(stopped / "checkpoints" / f"step_{step:06d}")["step"] == step
    assert "Ctrl-C: finishing this step, then saving a checkpoint" in stderr
    assert stderr.strip().splitlines()[-1] == (
        f"train-mrpc: error: stopped by SIGINT at step {step}; checkpoint saved to "
        f"{stopped / 'checkpoints' / f'step_{step:06d}'}. Resume with "
        "--resume_from_checkpoint latest"
    )
    assert "Traceback" not in stderr
    assert not (stopped / "preempted.json").exists(), "a Ctrl-C is the user's stop: no requeue marker"

    resumed = run_cli(run_args(tiny_model_dir, stopped, "--resume_from_checkpoint", "latest"))
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    assert_same_run(full, stopped)


def test_a_second_ctrl_c_stops_at_once_and_one_before_training_too():
    """Real SIGINTs to this process: before training, KeyboardInterrupt (set-up has nothing to save); while
    training, a flag; the same Ctrl-C arriving again within a second (the launcher passing it on), still only
    the flag; a later one, KeyboardInterrupt."""
    # Python's own handler, or SIG_IGN where the suite was started in the background (nohup, `cmd &`).
    before = signal.getsignal(signal.SIGINT)
    with PreemptionHandler() as handler:
        with pytest.raises(KeyboardInterrupt):
            os.kill(os.getpid(), signal.SIGINT)
            time.sleep(1)  # the handler runs between bytecodes, at the latest here
        assert handler.received is None
        handler.training = True
        os.kill(os.getpid(), signal.SIGINT)
        os.kill(os.getpid(), signal.SIGINT)  # the launcher's copy of the same Ctrl-C
        assert handler.received == "SIGINT"
        time.sleep(PreemptionHandler.SECOND_CTRL_C_AFTER_S)
        with pytest.raises(KeyboardInterrupt):
            os.kill(os.getpid(), signal.SIGINT)
            time.sleep(1)
    assert signal.getsignal(signal.SIGINT) is before  # restored on leaving


def test_ctrl_c_to_a_launched_job_stops_every_process_at_one_step_and_resumes_exactly(
    tmp_path, tiny_model_dir, two_process_reference
):
    """`accelerate launch` with multi_cpu.yaml, 2 processes, 60 steps (conftest's two_process_job_args; the
    uninterrupted run is conftest's two_process_reference). SIGINT to the launcher and to each worker, as a
    terminal's Ctrl-C reaches a job whose workers share its process group; torchrun's agent passes its own on to
    the workers too."""
    launcher = two_process_launcher()
    full, stopped = two_process_reference, tmp_path / "stopped"

    job = start_job([*launcher, *two_process_job_args(tiny_model_dir, stopped)], tmp_path / "logs")
    try:
        ranks = workers_by_rank(stopped, 2)
        assert len(ranks) == 2
        wait_for_log_lines(stopped, 5)
        for pid in [job.pid, *ranks.values()]:
            os.kill(pid, signal.SIGINT)
        job.wait(timeout=300)
    finally:
        stop_job(job, stopped)
    stderr = (tmp_path / "logs" / "stderr").read_text()
    assert job.returncode != 0
    step = max(int(p.name.split("_")[1]) for p in (stopped / "checkpoints").glob("step_*"))
    assert 5 <= step < 16
    assert stderr.count(f"train-mrpc: error: stopped by SIGINT at step {step}; checkpoint saved to") == 1, stderr[
        -3000:
    ]
    assert validate_checkpoint(stopped / "checkpoints" / f"step_{step:06d}")["step"] == step

    resumed = run_cli(
        two_process_job_args(tiny_model_dir, stopped, "--resume_from_checkpoint", "latest"), launcher=launcher
    )
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    assert_same_run(full, stopped)
