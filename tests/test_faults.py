"""Faults in a 2-process job lose nothing and hang nothing (issue 12, item 4): a SIGKILLed process, a stalled one
and bad input end the job within seconds with one line; a resume, or the launcher's own restart, ends with the
uninterrupted run's weights, bit for bit."""

from __future__ import annotations

import json
import os
import re
import shutil
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest
from test_checkpointing import STEPS, assert_identical_runs

import train_mrpc
from train_mrpc.checkpointing import validate_checkpoint
from train_mrpc.errors import JobFailure, UserError, distributed_failure, job_failure

from conftest import (
    run_cli,
    seconds_until_ended,
    start_job,
    stop_job,
    two_process_job_args,
    two_process_launcher,
    wait_for_log_lines,
    workers_by_rank,
)

# What gloo (torch 2.13) raised in this project's runs when the other process was SIGKILLed or SIGSTOPped.
GLOO_CLOSED = "[/__w/pytorch/pytorch/third_party/gloo/gloo/transport/tcp/pair.cc:553] Connection closed by peer [127.0.0.1]:63184. This is typically caused by a remote worker crashing. Check the logs of the remote worker before reporting an error. GLHF! 🏖️"
GLOO_RESET = "[/__w/pytorch/pytorch/third_party/gloo/gloo/transport/tcp/pair.cc:537] Read error [127.0.0.1]:47332: Connection reset by peer. This is typically caused by a remote worker hanging or bugs in the application."
GLOO_TIMEOUT = "[/__w/pytorch/pytorch/third_party/gloo/gloo/transport/tcp/unbound_buffer.cc:78] Timed out waiting 10000ms for recv operation to complete"

# A traceback line from the training processes' own code (the launcher's report has its own, from torch):
# a frame in this package's source, wherever the checkout lives (its folder may itself be named train_mrpc,
# so the launcher's .venv frames sit under .../train_mrpc/ too), or torchrun's per-rank prefix.
PACKAGE_DIR = str(Path(train_mrpc.__file__).resolve().parent)
OUR_TRACEBACK = re.compile(re.escape(f'File "{PACKAGE_DIR}/') + r"|\[rank\d+\]:")


def two_process(*extra_launch_flags: str) -> list[str]:
    # A free port: a fixed one (multi_cpu.yaml's 29511) taken by another job on this machine would silently
    # turn the launch into torchrun's standalone mode (another rendezvous).
    return two_process_launcher(*extra_launch_flags)


def job_args(model_dir: Path, out: Path, *extra) -> list[str]:
    """60 steps (2 x 8 per step, 3 epochs), a log line per step, a checkpoint every 10 steps."""
    return two_process_job_args(model_dir, out, *extra)


def error_lines(stderr: str) -> list[str]:
    return [line for line in stderr.splitlines() if line.startswith("train-mrpc: error: ")]


def output(log_dir: Path) -> tuple[str, str]:
    return (log_dir / "stdout").read_text(), (log_dir / "stderr").read_text()


# two_process_reference (conftest, one per session: tests/test_checkpointing.py and tests/test_ctrl_c.py compare
# with it too): the uninterrupted 2-process run of job_args, global_step STEPS, every broken one must end like.


# --- what counts as "another process failed" ------------------------------------------------------------


def test_collective_failures_are_told_apart_from_other_errors():
    assert distributed_failure(RuntimeError(GLOO_CLOSED))[0] == "lost"
    assert distributed_failure(RuntimeError(GLOO_RESET))[0] == "lost"
    assert distributed_failure(RuntimeError(GLOO_TIMEOUT))[0] == "timeout"
    # Other errors, also those that sound alike but do not come from the communication library.
    for other in (
        RuntimeError("mat1 and mat2 shapes cannot be multiplied"),
        RuntimeError("read error in data.bin"),
        ValueError(GLOO_CLOSED),
        OSError(32, "Broken pipe"),
    ):
        assert distributed_failure(other) is None, other
    # A checkpoint save turns its failure into a UserError "from None": the collective is still found.
    try:
        try:
            raise RuntimeError(GLOO_CLOSED)
        except RuntimeError:
            raise UserError("saving checkpoint step_000020 failed: ...") from None
    except UserError as wrapped:
        kind, collective = distributed_failure(wrapped)
        assert kind == "lost" and str(collective) == GLOO_CLOSED


def test_the_job_failure_line_says_what_happened_what_is_kept_and_how_to_go_on():
    line = str(job_failure(RuntimeError(GLOO_CLOSED), 1800, "runs/x/checkpoints/step_000010"))
    assert line == (
        "another process of this job died or lost its connection (Connection closed by peer "
        "[127.0.0.1]:63184); the last good checkpoint, runs/x/checkpoints/step_000010, is kept: "
        "--resume_from_checkpoint latest continues the run"
    )
    line = str(job_failure(RuntimeError(GLOO_TIMEOUT), 30, None))
    assert "took no part in a collective for --ddp_timeout 30 s" in line and "no checkpoint was saved yet" in line
    line = str(job_failure(RuntimeError(GLOO_RESET), 1800, "c/step_000010", restart=0, max_restarts=2))
    assert "the launcher restarts the job (restart 1 of 2)" in line and "\n" not in line
    assert isinstance(job_failure(RuntimeError(GLOO_RESET), 1800), JobFailure)


def test_the_line_names_the_failed_process_where_it_is_known():
    from train_mrpc.faults import FailedProcess

    dead = [FailedProcess(1, "node-a", 4242, "died")]
    line = str(job_failure(RuntimeError(GLOO_CLOSED), 1800, "c/step_000010", failed=dead))
    assert line.startswith(
        "rank 1 (pid 4242 on host node-a) of this job died (Connection closed by peer "
        "[127.0.0.1]:63184); the last good checkpoint, c/step_000010, is kept"
    )
    two = dead + [FailedProcess(3, "node-b", 77, "died")]
    assert str(job_failure(RuntimeError(GLOO_RESET), 1800, failed=two)).startswith(
        "rank 1 (pid 4242 on host node-a) and rank 3 (pid 77 on host node-b) of this job died (Read error"
    )
    stopped = [FailedProcess(1, "node-a", 4242, "stopped")]
    assert str(job_failure(RuntimeError(GLOO_TIMEOUT), 30, failed=stopped)).startswith(
        "rank 1 (pid 4242 on host node-a) of this job is stopped (SIGSTOP or a debugger) and took no part in a "
        "collective for --ddp_timeout 30 s;"
    )
    # Where nothing is known, the line says what it knows, as before.
    assert str(job_failure(RuntimeError(GLOO_CLOSED), 1800, failed=[])).startswith("another process of this job died")


@pytest.fixture
def job_store(monkeypatch):
    """A real TCPStore standing in for torchrun's agent store, and the environment a rank of its job sees."""
    from datetime import timedelta

    from torch.distributed import TCPStore

    store = TCPStore("127.0.0.1", 0, is_master=True, wait_for_workers=False, timeout=timedelta(seconds=5))
    for key, value in {
        "WORLD_SIZE": "2",
        "MASTER_ADDR": "127.0.0.1",
        "MASTER_PORT": str(store.port),
        "TORCHELASTIC_USE_AGENT_STORE": "True",
        "TORCHELASTIC_RUN_ID": "test",
        "TORCHELASTIC_RESTART_COUNT": "0",
    }.items():
        monkeypatch.setenv(key, value)
    monkeypatch.delenv("TRAIN_MRPC_AGENT_STORE", raising=False)
    return store


def test_each_error_line_is_printed_once_per_job(job_store, monkeypatch, capsys):
    """The rule in cli._print_error, with the processes' reports in the order a real job makes them."""
    from train_mrpc.cli import CONSEQUENCE, OWN, TOGETHER, _print_error

    def report(rank: int, message: str, kind: str) -> str:
        monkeypatch.setenv("RANK", str(rank))
        _print_error(message, kind)
        return capsys.readouterr().err

    # Bad input every process finds: the first to report it prints it, the others do not.
    assert (
        report(1, "--learning_rate x: expected a number", OWN)
        == "train-mrpc: error: --learning_rate x: expected a number\n"
    )
    assert report(0, "--learning_rate x: expected a number", OWN) == ""
    # The other processes then lose their connection to it: nothing more to say.
    assert report(0, "another process of this job died", CONSEQUENCE) == ""
    # A different problem only one process has is its own line.
    assert report(1, "cannot read random_states_1.pkl", OWN) == "train-mrpc: error: cannot read random_states_1.pkl\n"

    monkeypatch.setenv("TORCHELASTIC_RESTART_COUNT", "1")  # the restarted job reports afresh
    # A SIGKILLed process says nothing: the first survivor says it, once.
    assert (
        report(1, "another process of this job died", CONSEQUENCE)
        == "train-mrpc: error: another process of this job died\n"
    )
    assert report(2, "another process of this job died", CONSEQUENCE) == ""
    # A stop every process agreed on: the main process speaks for all.
    assert report(1, "stopped by SIGTERM at step 20", TOGETHER) == ""
    assert report(0, "stopped by SIGTERM at step 20", TOGETHER) == "train-mrpc: error: stopped by SIGTERM at step 20\n"

    # No store to ask (a launcher other than torchrun): each process prints rather than none.
    monkeypatch.delenv("TORCHELASTIC_USE_AGENT_STORE")
    assert (
        report(1, "another process of this job died", CONSEQUENCE)
        == "train-mrpc: error: another process of this job died\n"
    )


def exited_pid() -> int:
    """The pid of a process of this host that has ended (and been reaped)."""
    child = subprocess.Popen([sys.executable, "-c", "pass"])
    child.wait()
    return child.pid


def test_a_survivor_finds_the_registered_process_that_is_gone(job_store, monkeypatch):
    """Each process registers rank -> (host, pid) in the agent's store; a survivor checks the pids of its own
    host (a zombie counts as gone), takes another host's survivors' word for theirs, and leaves out a process
    that reported its own error or is still alive."""
    from train_mrpc import faults
    from train_mrpc.faults import FailedProcess

    here = socket.gethostname()
    monkeypatch.setenv("WORLD_SIZE", "4")
    monkeypatch.setenv("RANK", "2")
    monkeypatch.setattr(faults, "_registered", None)
    faults.register_this_process()  # rank 2: this (live) process
    assert json.loads(job_store.get("train_mrpc/processes/test/0/2")) == {"host": here, "pid": os.getpid()}
    dead = exited_pid()
    assert faults.process_state(dead) is None
    job_store.set("train_mrpc/processes/test/0/1", json.dumps({"host": here, "pid": dead}))
    job_store.set("train_mrpc/processes/test/0/3", json.dumps({"host": "node-b", "pid": 77}))  # another host's
    monkeypatch.setenv("RANK", "0")
    assert faults.failed_processes("lost", wait_s=0.1) == [FailedProcess(1, here, dead, "died")]
    # A survivor on another host finds rank 1 through the mark this one left, and rank 3 once node-b's says so.
    job_store.set("train_mrpc/processes/test/0/3/gone", "node-b")
    monkeypatch.setattr(socket, "gethostname", lambda: "node-c")
    assert faults.failed_processes("lost", wait_s=0.1) == [
        FailedProcess(1, here, dead, "died"),
        FailedProcess(3, "node-b", 77, "died"),
    ]


def test_after_a_timeout_a_stopped_process_of_this_host_is_named(job_store, monkeypatch):
    from train_mrpc import faults

    child = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)"])
    try:
        os.kill(child.pid, signal.SIGSTOP)
        while faults.process_state(child.pid) != "T":
            time.sleep(0.01)
        job_store.set("train_mrpc/processes/test/0/1", json.dumps({"host": socket.gethostname(), "pid": child.pid}))
        monkeypatch.setenv("RANK", "0")
        assert [(p.rank, p.how) for p in faults.failed_processes("timeout")] == [(1, "stopped")]
        assert faults.failed_processes("lost", wait_s=0.1) == []  # alive: not the one that died
    finally:
        child.kill()
        child.wait()


def test_a_process_that_reported_its_error_is_not_called_dead(job_store, monkeypatch, capsys):
    from train_mrpc import faults
    from train_mrpc.cli import OWN, _print_error

    monkeypatch.setenv("RANK", "1")
    job_store.set("train_mrpc/processes/test/0/1", json.dumps({"host": socket.gethostname(), "pid": exited_pid()}))
    _print_error("cannot read random_states_1.pkl", OWN)
    monkeypatch.setenv("RANK", "0")
    found = faults.failed_processes("lost", wait_s=0.1)
    assert [(p.rank, p.how) for p in found] == [(1, "reported its own error")]
    # Without a store (another launcher) nothing is known: the line says "another process".
    monkeypatch.delenv("TORCHELASTIC_USE_AGENT_STORE")
    assert faults.failed_processes("lost", wait_s=0.1) == []
    assert str(job_failure(RuntimeError(GLOO_CLOSED), 1800)).startswith("another process of this job died")


def test_a_restart_without_resume_is_told_to_pass_it(tmp_path, tiny_model_dir, monkeypatch, capsys):
    """accelerate launch --max_restarts restarts the same command: without --resume_from_checkpoint latest it
    would start over in a folder that holds the first attempt's checkpoints, so it stops and says why."""
    from train_mrpc.cli import main

    out = tmp_path / "run"
    (out / "checkpoints" / "step_000010").mkdir(parents=True)
    monkeypatch.setenv("TORCHELASTIC_RESTART_COUNT", "1")
    monkeypatch.setenv("TORCHELASTIC_MAX_RESTARTS", "3")
    with pytest.raises(SystemExit) as stop:
        main(job_args(tiny_model_dir, out))
    assert stop.value.code == 2
    line = capsys.readouterr().err.strip().splitlines()[-1]
    assert (
        line.startswith("train-mrpc: error: restart 1 of this job found the checkpoints")
        and "--resume_from_checkpoint latest" in line
    )


# --- real 2-process jobs --------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def main_process_killed(tmp_path_factory, tiny_model_dir) -> dict:
    """A 2-process job whose rank 0 (logging, saving) was SIGKILLed while it saved the checkpoint of step 20:
    as soon as the save's temporary folder appeared (in this project's runs, always before the save ended)."""
    out = tmp_path_factory.mktemp("killed") / "run"
    logs = out.parent / "logs"
    launcher = start_job(two_process() + job_args(tiny_model_dir, out), logs)
    try:
        ranks = workers_by_rank(out, 2)
        assert set(ranks) == {0, 1}, ranks
        saving = out / "checkpoints" / ".tmp-step_000020"
        deadline = time.monotonic() + 300
        while not saving.exists() and time.monotonic() < deadline and launcher.poll() is None:
            time.sleep(0.001)
        assert saving.exists() or (saving.parent / "step_000020").exists(), "the save of step 20 never began"
        os.kill(ranks[0], signal.SIGKILL)
        survivor_s = seconds_until_ended(ranks[1], timeout=120)
        launcher.wait(timeout=120)
    finally:
        stop_job(launcher, out)
    print(f"rank 1 ended {survivor_s:.2f} s after rank 0 was SIGKILLed")
    return {
        "out": out,
        "stderr": output(logs)[1],
        "survivor_s": survivor_s,
        "status": launcher.returncode,
        "killed_pid": ranks[0],
    }


def test_sigkill_of_the_main_process_stops_the_other_at_once_with_one_line(main_process_killed):
    """Rank 0 dies without a word, in the middle of a save. Rank 1 says so in one line within seconds (not the
    1800 s collective timeout), naming the checkpoint it leaves; the interrupted save left nothing behind."""
    out, stderr = main_process_killed["out"], main_process_killed["stderr"]
    survivor_s = main_process_killed["survivor_s"]
    assert survivor_s < 20, f"the survivor took {survivor_s:.1f} s"
    assert main_process_killed["status"] == 1
    kept = sorted(p.name for p in (out / "checkpoints").iterdir())
    # The save of step 20 was interrupted and removed; had it ended before the kill landed, it is complete.
    assert kept in (["step_000010"], ["step_000010", "step_000020"]), kept  # and no .tmp-* left over
    print(f"checkpoints after the kill: {kept}")
    for name in kept:
        validate_checkpoint(out / "checkpoints" / name)
    lines = error_lines(stderr)
    assert len(lines) == 1, stderr[-3000:]
    # The line names the killed process, as the launcher's report does after it.
    killed = f"rank 0 (pid {main_process_killed['killed_pid']} on host {socket.gethostname()})"
    assert lines[0].startswith(f"train-mrpc: error: {killed} of this job died ("), lines[0]
    assert lines[0].endswith(
        f"; the last good checkpoint, {out / 'checkpoints' / kept[-1]}, is kept: "
        "--resume_from_checkpoint latest continues the run"
    )
    assert not OUR_TRACEBACK.search(stderr), stderr[-3000:]
    assert not (out / "preempted.json").exists()  # nobody claims a preemption checkpoint that was never saved


def test_sigkill_of_rank_1_is_named_by_the_main_process(tmp_path, tiny_model_dir):
    """Rank 1 dies without a word mid-run: rank 0, which survives it, names it (rank, pid, host) in the line."""
    out, logs = tmp_path / "run", tmp_path / "logs"
    launcher = start_job(two_process() + job_args(tiny_model_dir, out), logs)
    try:
        wait_for_log_lines(out, 13)
        ranks = workers_by_rank(out, 2)
        assert set(ranks) == {0, 1}, ranks
        os.kill(ranks[1], signal.SIGKILL)
        survivor_s = seconds_until_ended(ranks[0], timeout=120)
        launcher.wait(timeout=120)
    finally:
        stop_job(launcher, out)
    print(f"rank 0 ended {survivor_s:.2f} s after rank 1 was SIGKILLed")
    stderr = output(logs)[1]
    assert survivor_s < 20 and launcher.returncode == 1, stderr[-3000:]
    lines = error_lines(stderr)
    assert len(lines) == 1, stderr[-3000:]
    killed = f"rank 1 (pid {ranks[1]} on host {socket.gethostname()})"
    assert lines[0].startswith(f"train-mrpc: error: {killed} of this job died ("), lines[0]
    assert lines[0].endswith("--resume_from_checkpoint latest continues the run"), lines[0]
    assert not OUR_TRACEBACK.search(stderr), stderr[-3000:]


@pytest.mark.slow  # with the uninterrupted reference run: ~70 s here
def test_resume_after_the_main_process_was_killed_is_exact(
    tmp_path, tiny_model_dir, main_process_killed, two_process_reference
):
    out = tmp_path / "run"
    shutil.copytree(main_process_killed["out"], out)  # the killed run stays as it was for the other test
    latest = out / "checkpoints" / sorted(p.name for p in (out / "checkpoints").iterdir())[-1]
    resumed = run_cli(job_args(tiny_model_dir, out, "--resume_from_checkpoint", "latest"), launcher=two_process())
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    assert f"resumed from {latest}" in " ".join(resumed.stdout.split()), resumed.stdout[-2000:]
    assert_identical_runs(two_process_reference, out)


@pytest.mark.slow  # with the uninterrupted reference run: ~70 s here
def test_elastic_restart_after_a_sigkill_resumes_and_ends_like_the_uninterrupted_run(
    tmp_path, tiny_model_dir, two_process_reference
):
    """accelerate launch --max_restarts 1: rank 1 is SIGKILLed mid-epoch, the launcher restarts both processes,
    which resume from the last checkpoint (the lock, the folder checks, the logs trimmed to it) and end with the
    uninterrupted run's weights, losses and evaluations."""
    out, logs = tmp_path / "restarted", tmp_path / "logs"
    command = two_process("--max_restarts", "1", "--monitor_interval", "1")
    launcher = start_job(command + job_args(tiny_model_dir, out, "--resume_from_checkpoint", "latest"), logs)
    try:
        wait_for_log_lines(out, 13)
        first = workers_by_rank(out, 2)
        assert set(first) == {0, 1}, first
        os.kill(first[1], signal.SIGKILL)
        survivor_s = seconds_until_ended(first[0], timeout=120)
        launcher.wait(timeout=300)
    finally:
        stop_job(launcher, out)
    print(f"rank 0 ended {survivor_s:.2f} s after rank 1 was SIGKILLed")
    stdout, stderr = output(logs)
    assert survivor_s < 20 and launcher.returncode == 0, stderr[-3000:]
    words = " ".join(stdout.split())
    assert "restart 1 of at most 1 (accelerate launch --max_restarts)" in words
    assert f"resumed from {out / 'checkpoints' / 'step_000010'} at step 10" in words
    lines = error_lines(stderr)  # the first attempt's survivor; the restarted attempt has nothing to report
    killed = f"rank 1 (pid {first[1]} on host {socket.gethostname()}) of this job died ("
    assert len(lines) == 1 and lines[0].startswith(f"train-mrpc: error: {killed}"), stderr[-3000:]
    assert lines[0].endswith(
        "is kept: the launcher restarts the job (restart 1 of 1), which continues from it with "
        "--resume_from_checkpoint latest"
    )
    assert not OUR_TRACEBACK.search(stderr), stderr[-3000:]
    results = json.loads((out / "all_results.json").read_text())
    assert results["elastic_restarts"] == 1 and results["resumed_from"] == str(out / "checkpoints" / "step_000010")
    assert results["global_step"] == STEPS
    assert not (out / "preempted.json").exists()
    holder = (out / ".lock").read_text()
    assert holder.startswith("pid ") and int(holder.split()[1]) != first[0]  # the restarted rank 0 held the folder
    assert_identical_runs(two_process_reference, out)  # weights, and each step's loss and evaluation logged once


def test_bad_input_every_process_finds_is_one_line(tmp_path, tiny_model_dir):
    out, missing = tmp_path / "run", tmp_path / "no-such-checkpoint"
    start = time.monotonic()
    proc = run_cli(
        job_args(tiny_model_dir, out, "--resume_from_checkpoint", missing), launcher=two_process(), timeout=120
    )
    took = time.monotonic() - start
    assert proc.returncode == 1 and took < 90, proc.stderr[-3000:]  # accelerate launch's status for any failure
    assert error_lines(proc.stderr) == [f"train-mrpc: error: checkpoint {missing} does not exist"], proc.stderr[-3000:]
    assert not OUR_TRACEBACK.search(proc.stderr), proc.stderr[-3000:]


def test_an_error_of_the_main_process_alone_is_not_followed_by_a_lost_process_line(tmp_path, tiny_model_dir):
    """Only the main process locks --output_dir: when another run holds it, rank 0 stops with that one line, and
    rank 1, which loses its connection to rank 0, adds nothing."""
    from train_mrpc.checkpointing import OutputDirLock

    out = tmp_path / "run"
    out.mkdir()
    held = OutputDirLock(out).acquire()  # "another run" (this test's process) holds the folder
    try:
        proc = run_cli(job_args(tiny_model_dir, out), launcher=two_process(), timeout=120)
    finally:
        held.release()
    assert proc.returncode == 1, proc.stderr[-3000:]
    holder = f"pid {os.getpid()} on {os.uname().nodename}"
    assert error_lines(proc.stderr) == [
        (
            f"train-mrpc: error: --output_dir {out} is in use by another run ({holder}); wait for it to finish or "
            "choose another --output_dir"
        )
    ], proc.stderr[-3000:]
    assert not OUR_TRACEBACK.search(proc.stderr), proc.stderr[-3000:]


DDP_TIMEOUT = 8  # seconds: a few times the longest wait for a sibling before the stall (the peak-FLOP/s measurement)


def test_a_stalled_process_fails_the_job_after_ddp_timeout(tmp_path, tiny_model_dir):
    """Rank 1 stops (SIGSTOP) mid-run: rank 0 waits in its next collective for --ddp_timeout seconds, not
    the default 1800 (the flag reaches gloo), then stops with one line naming the flag."""
    out, logs = tmp_path / "stalled", tmp_path / "logs"
    launcher = start_job(two_process() + job_args(tiny_model_dir, out, "--ddp_timeout", str(DDP_TIMEOUT)), logs)
    try:
        wait_for_log_lines(out, 13)
        ranks = workers_by_rank(out, 2)
        assert set(ranks) == {0, 1}, ranks
        os.kill(ranks[1], signal.SIGSTOP)
        survivor_s = seconds_until_ended(ranks[0], timeout=DDP_TIMEOUT + 120)
        os.kill(ranks[1], signal.SIGKILL)  # what an operator (or a cluster's health check) would do
        launcher.wait(timeout=120)
    finally:
        stop_job(launcher, out)
    print(f"rank 0 ended {survivor_s:.2f} s after rank 1 was SIGSTOPped (--ddp_timeout {DDP_TIMEOUT})")
    _, stderr = output(logs)
    assert DDP_TIMEOUT - 1 <= survivor_s < DDP_TIMEOUT + 20, stderr[-3000:]
    latest = out / "checkpoints" / "step_000010"
    assert error_lines(stderr) == [  # the stopped process is named: its state on this host says it is stopped
        (
            f"train-mrpc: error: rank 1 (pid {ranks[1]} on host {socket.gethostname()}) of this job is stopped (SIGSTOP "
            f"or a debugger) and took no part in a collective for --ddp_timeout {DDP_TIMEOUT} s; the last good "
            f"checkpoint, {latest}, is kept: "
            "--resume_from_checkpoint latest continues the run (raise --ddp_timeout if a process is legitimately "
            "that slow)"
        )
    ], stderr[-3000:]
    assert not OUR_TRACEBACK.search(stderr), stderr[-3000:]
    validate_checkpoint(latest)
    assert not [p for p in (out / "checkpoints").iterdir() if p.name.startswith(".tmp")]
