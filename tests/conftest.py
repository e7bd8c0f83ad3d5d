"""Shared fixtures: tiny models and data made on the spot, real assets from ../shared when present."""

from __future__ import annotations

import contextlib
import os
import subprocess
import sys
from pathlib import Path

import pytest

# Under pytest-xdist (make test: two workers on two cores) every process computes on one thread, this worker's
# torch and every process a test starts (OMP_NUM_THREADS is read when torch is imported): two workers each running
# a 2-thread OpenMP pool on 2 cores made the pools spin against each other (an in-process tiny-model run that takes
# 7 s alone took 53 s in CI). A 2-process launch already runs each rank on one thread (torchrun sets it).
if os.environ.get("PYTEST_XDIST_WORKER"):
    os.environ.setdefault("OMP_NUM_THREADS", "1")

ROOT = Path(__file__).resolve().parents[1]
SHARED = ROOT.parent / "shared"
SHARED_MRPC = SHARED / "data" / "mrpc"
SHARED_TOKENIZER = SHARED / "models" / "bert-base-uncased"

# What every run writes into --output_dir (docs/offline.md, "What a run writes").
OUTPUTS = [
    "model.safetensors",
    "config.json",
    "tokenizer.json",
    "tokenizer_config.json",
    "all_results.json",
    "eval_results.jsonl",
    "train_log.jsonl",
    "train_config.json",
]

requires_shared = pytest.mark.skipif(not SHARED_MRPC.is_dir(), reason="../shared (real MRPC assets) is absent")

# Subprocesses run as a user would launch them, but never touch the network or the user's caches.
TEST_ENV = {"HF_HUB_OFFLINE": "1", "TOKENIZERS_PARALLELISM": "false", "PYTHONUNBUFFERED": "1"}


@pytest.fixture(autouse=True)
def _isolated_caches(tmp_path_factory, monkeypatch):
    cache = tmp_path_factory.getbasetemp() / "hf-cache"
    monkeypatch.setenv("HF_HOME", str(cache))
    monkeypatch.setenv("HF_DATASETS_CACHE", str(cache / "datasets"))
    for key, value in TEST_ENV.items():
        monkeypatch.setenv(key, value)


@pytest.fixture(autouse=True)
def _fresh_accelerate_state():
    """Accelerate keeps process-wide singletons; tests that build an Accelerator must not leak it."""
    yield
    from accelerate.state import AcceleratorState, GradientState

    AcceleratorState._reset_state(True)
    GradientState._reset_state()


@pytest.fixture(scope="session")
def tiny_model_dir(tmp_path_factory) -> Path:
    from train_mrpc.synthetic import write_tiny_model

    return write_tiny_model(tmp_path_factory.mktemp("tiny-model"))


GLUE_HEADER = "\ufeffQuality\t#1 ID\t#2 ID\t#1 String\t#2 String\n"  # as GLUE ships it: UTF-8 with a BOM


def write_glue_dir(path: Path, train_rows: list[str], dev_rows: list[str] | None = None) -> Path:
    """A GLUE MRPC folder (train.tsv, dev.tsv) holding these tab-separated rows under GLUE's header."""
    path.mkdir(parents=True, exist_ok=True)
    (path / "train.tsv").write_text(GLUE_HEADER + "".join(r + "\n" for r in train_rows), encoding="utf-8")
    dev = dev_rows if dev_rows is not None else ["1\t3\t4\tA dog runs.\tA dog is running."]
    (path / "dev.tsv").write_text(GLUE_HEADER + "".join(r + "\n" for r in dev), encoding="utf-8")
    return path


def table_text(stdout: str) -> str:
    """The summary table's words with its borders and line wraps removed (rich wraps cells at 80 columns)."""
    import re

    return " ".join(re.sub(r"[│┃┌┐└┘├┤┬┴┼─━]", " ", stdout).split())


def run_cli(
    args: list[str],
    cwd: Path = ROOT,
    launcher: list[str] | None = None,
    timeout: float = 600,
    env=None,
    own_process: bool = False,
):
    """Run train-mrpc as a user would; returns a CompletedProcess (exit status, stdout, stderr).

    With a ``launcher`` (accelerate launch, torchrun) or ``own_process``, a new process: what needs one (signals,
    ranks, exit statuses a launcher sees, the installed command). Otherwise the CLI in this process
    (``cli.main(argv)``): the same code from argument parsing to the exit status and the one error line, without
    the ~6 s of imports a new Python process pays (a tiny 2-epoch run: 1.2 s against 7.1 s).
    """
    if launcher is None and not own_process:
        return run_in_process(args, cwd=cwd, env=env)
    command = (launcher or [sys.executable, "-m", "train_mrpc"]) + [str(a) for a in args]
    full_env = {**os.environ, **TEST_ENV, **(env or {})}
    return subprocess.run(command, cwd=cwd, env=full_env, capture_output=True, text=True, timeout=timeout)


def run_in_process(args: list[str], cwd: Path = ROOT, env=None) -> subprocess.CompletedProcess:
    """``train-mrpc ARGS`` through ``cli.main`` in this process, its output captured as a subprocess's would be.

    What a run changes in the process is put back afterwards: the environment (the run sets Hub and DeepSpeed
    variables), the folder, the signal handlers (the CLI installs its own) and Accelerate's shared state. An
    exception the CLI lets through is exit status 1 with its traceback on stderr, as Python would print it.
    """
    import contextlib
    import io
    import signal
    import traceback

    from accelerate.state import AcceleratorState, GradientState

    from train_mrpc.checkpointing import PreemptionHandler
    from train_mrpc.cli import main

    argv = [str(a) for a in args]
    saved_env, saved_cwd = dict(os.environ), os.getcwd()
    handled = (signal.SIGTERM, signal.SIGUSR1, signal.SIGINT)
    saved_handlers = {sig: signal.getsignal(sig) for sig in handled}
    # hub.go_offline sets these module flags too (not only HF_HUB_OFFLINE): a run that went offline must not leave
    # later runs in this process offline.
    offline_flags = [sys.modules[m] for m in ("huggingface_hub.constants", "datasets.config") if m in sys.modules]
    saved_offline = [module.HF_HUB_OFFLINE for module in offline_flags]
    out, err, code = io.StringIO(), io.StringIO(), 0
    try:
        os.environ.update({**TEST_ENV, **{k: str(v) for k, v in (env or {}).items()}})
        os.chdir(cwd)
        with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
            try:
                main(argv)
            except SystemExit as stop:
                code = stop.code if isinstance(stop.code, int) else (0 if stop.code is None else 1)
                if isinstance(stop.code, str):
                    print(stop.code, file=sys.stderr)
            except Exception:
                traceback.print_exc()
                code = 1
    finally:
        os.chdir(saved_cwd)
        os.environ.clear()
        os.environ.update(saved_env)
        for sig, handler in saved_handlers.items():
            signal.signal(sig, handler)
        PreemptionHandler.early.clear()
        for module, value in zip(offline_flags, saved_offline):
            module.HF_HUB_OFFLINE = value
        AcceleratorState._reset_state(True)
        GradientState._reset_state()
    return subprocess.CompletedProcess(["train-mrpc", *argv], code, out.getvalue(), err.getvalue())


# A launcher's command line also holds "-m train_mrpc ... OUTPUT_DIR": it is told apart by the launcher it runs
# (a module, or its console script), not by a word that an output folder's path may hold too.
LAUNCHER_MODULES = {"accelerate.commands.launch", "accelerate.commands.accelerate_cli", "torch.distributed.run"}
LAUNCHER_SCRIPTS = {"accelerate", "torchrun"}


def is_launcher(argv: list[str]) -> bool:
    """Whether a command line (``/proc/PID/cmdline`` split at NULs) is a launcher's: ``python -m
    accelerate.commands.launch ...``, ``accelerate launch ...``, ``torchrun ...``; a training process is
    ``python [-u] -m train_mrpc ...``."""
    before_script = argv[: argv.index("train_mrpc")] if "train_mrpc" in argv else argv
    return any(arg in LAUNCHER_MODULES or Path(arg).name in LAUNCHER_SCRIPTS for arg in before_script)


def _train_mrpc_processes(output_dir: Path) -> list[int]:
    """PIDs of the training processes of a run writing to ``output_dir`` (any that exits meanwhile left out)."""
    found = subprocess.run(
        ["pgrep", "-f", "--", f"-m train_mrpc .*{output_dir}"], capture_output=True, text=True
    ).stdout
    pids = []
    for pid in map(int, found.split()):
        try:
            argv = Path(f"/proc/{pid}/cmdline").read_bytes().decode(errors="replace").split("\0")
        except OSError:
            continue
        if not is_launcher(argv):
            pids.append(pid)
    return pids


def training_workers(output_dir: Path) -> list[int]:
    """PIDs of the training processes (not the launcher) of a run writing to ``output_dir``."""
    return _train_mrpc_processes(output_dir)


def wait_for_log_lines(output_dir: Path, lines: int, timeout: float = 300) -> None:
    """Wait until the run has logged ``lines`` lines of train_log.jsonl."""
    import time

    log, deadline = output_dir / "train_log.jsonl", time.monotonic() + timeout
    while time.monotonic() < deadline and not (log.exists() and len(log.read_text().splitlines()) >= lines):
        time.sleep(0.002)


def accelerate_launch(config_file: str, *extra: str) -> list[str]:
    return [
        sys.executable,
        "-m",
        "accelerate.commands.launch",
        "--config_file",
        str(ROOT / "accelerate_configs" / config_file),
        *extra,
        "-m",
        "train_mrpc",
    ]


def launch(config_file: str, args: list[str], *launch_flags: str, env=None):
    """An `accelerate launch` of train-mrpc with this config file that must succeed; the CompletedProcess."""
    proc = run_cli(args, launcher=accelerate_launch(config_file, *launch_flags), env=env)
    assert proc.returncode == 0, proc.stderr[-4000:]
    return proc


def weights(output_dir: Path) -> dict:
    """The final model's tensors of a run."""
    from safetensors.torch import load_file

    return load_file(output_dir / "model.safetensors")


def read_log(output_dir: Path) -> list[dict]:
    """Each logged step's step, loss, learning rate and gradient norms from train_log.jsonl."""
    import json

    return [
        {k: r[k] for k in ("step", "loss", "learning_rate", "grad_norm", "grad_norm_max")}
        for r in map(json.loads, (output_dir / "train_log.jsonl").read_text().splitlines())
    ]


def tiny_args(model_dir: Path, output_dir: Path, *extra) -> list[str]:
    """Flags for a quick run: the tiny model on a few hundred generated pairs."""
    args = [
        "--model_name_or_path",
        model_dir,
        "--dataset",
        "synthetic",
        "--output_dir",
        output_dir,
        "--max_train_samples",
        "256",
        "--max_eval_samples",
        "100",
        "--per_device_train_batch_size",
        "16",
        "--learning_rate",
        "1e-3",
        "--num_train_epochs",
        "2",
        "--logging_steps",
        "4",
        *extra,
    ]
    return [str(a) for a in args]


# --- reference runs that tests of several files compare against, each made once per session ---------------

# resume_args: 320 pairs / batch 16 = 20 steps per epoch, 3 epochs, a log line per step, a checkpoint every 10
# steps. Dropout stays on: exact resume needs every RNG state restored, not a deterministic model.
RESUME_STEPS = 60


def resume_args(model_dir: Path, output_dir: Path, *extra) -> list[str]:
    """The 60-step run that checkpointing, resume and fault tests stop, break and resume (tests/test_checkpointing.py's
    run_args)."""
    return tiny_args(
        model_dir,
        output_dir,
        "--max_train_samples",
        "320",
        "--num_train_epochs",
        "3",
        "--logging_steps",
        "1",
        "--checkpointing_steps",
        "10",
        *extra,
    )


def two_process_launcher(*launch_flags: str) -> list[str]:
    """`accelerate launch` with multi_cpu.yaml (2 processes) on a free port: a fixed one (multi_cpu.yaml's 29511)
    taken by another job on this machine would silently turn the launch into torchrun's standalone mode."""
    return accelerate_launch("multi_cpu.yaml", "--main_process_port", "0", *launch_flags)


def two_process_job_args(model_dir: Path, output_dir: Path, *extra) -> list[str]:
    """resume_args on 2 processes: 60 steps of 2 x 8 pairs, a log line per step, a checkpoint every 10 steps."""
    return resume_args(model_dir, output_dir, "--per_device_train_batch_size", "8", *extra)


@pytest.fixture(scope="session")
def one_process_reference(tmp_path_factory, tiny_model_dir) -> Path:
    """The uninterrupted 1-process resume_args run (checkpoints at 10, 20, ... 60), in this process. Read-only:
    a test that changes it works on a copy."""
    out = tmp_path_factory.mktemp("one-process-reference") / "run"
    proc = run_cli(resume_args(tiny_model_dir, out))
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert read_log(out)[-1]["step"] == RESUME_STEPS
    return out


@pytest.fixture(scope="session")
def two_process_reference(tmp_path_factory, tiny_model_dir) -> Path:
    """The uninterrupted 2-process two_process_job_args run every stopped, killed or resumed one must end like.
    Read-only: a test that changes it works on a copy."""
    import json

    out = tmp_path_factory.mktemp("two-process-reference") / "run"
    proc = run_cli(two_process_job_args(tiny_model_dir, out), launcher=two_process_launcher())
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert json.loads((out / "all_results.json").read_text())["global_step"] == RESUME_STEPS
    return out


def paired_run_args(model_dir, out, batch, *extra):
    """The runs that compare one launch with another (2 processes with 1, FSDP or ZeRO-2 with DDP): 128 training
    pairs (an even split on 2 processes), 101 validation pairs (uneven), a log line per step, 25 % warm-up."""
    flags = "--max_train_samples 128 --max_eval_samples 101 --per_device_eval_batch_size 16 --logging_steps 1"
    flags += " --warmup_ratio 0.25"
    return tiny_args(model_dir, out, *flags.split(), "--per_device_train_batch_size", str(batch), *extra)


def equivalence_args(model_dir, out, batch, *extra):
    """paired_run_args in fp32 (with the dropout-free model: runs that must agree up to float reduction order),
    length-grouped batches (the default)."""
    return paired_run_args(model_dir, out, batch, "--precision", "fp32", *extra)


@pytest.fixture(scope="session")
def two_process_equivalence_run(tmp_path_factory, tiny_model_no_dropout) -> tuple[Path, subprocess.CompletedProcess]:
    """(output folder, CompletedProcess) of equivalence_args at batch 8 on 2 processes (multi_cpu.yaml): what one
    process with batch 16 (tests/test_launch.py) and a 2-node job (tests/test_cluster.py) must equal."""
    out = tmp_path_factory.mktemp("two-process-equivalence") / "run"
    proc = launch("multi_cpu.yaml", equivalence_args(tiny_model_no_dropout, out, 8), "--main_process_port", "0")
    return out, proc


@pytest.fixture(scope="session")
def tiny_model_no_dropout(tmp_path_factory) -> Path:
    """Without dropout, N processes x batch B must match 1 process x batch N*B up to float reduction order."""
    from train_mrpc.synthetic import write_tiny_model

    return write_tiny_model(tmp_path_factory.mktemp("tiny-model-no-dropout"), dropout=0.0)


@contextlib.contextmanager
def small_tmpfs(path: Path, size: str):
    """A real tmpfs of ``size`` (mount's spelling: 48k, 1m) at ``path`` for full-disk tests; skips where it cannot
    be mounted (no root, a container without the capability)."""
    path.mkdir(parents=True, exist_ok=True)
    result = subprocess.run(
        ["mount", "-t", "tmpfs", "-o", f"size={size}", "tmpfs", str(path)], capture_output=True, text=True
    )
    if result.returncode != 0:
        pytest.skip(f"cannot mount a small tmpfs here: {result.stderr.strip()}")
    try:
        yield path
    finally:
        subprocess.run(["umount", "-l", str(path)], check=False)


def assert_config_file_refused(tmp_path: Path, parse, text: str, message: str) -> None:
    """``parse("--config", file)`` of a config file holding ``text`` raises a UserError starting with ``message``."""
    import re

    from train_mrpc.errors import UserError

    path = tmp_path / "options.yaml"
    path.write_text(text)
    with pytest.raises(UserError, match="^" + re.escape(message)):
        parse("--config", str(path))


def assert_one_line_error(returncode: int, stderr: str, *fragments: str) -> str:
    """The project's contract for bad input: exit 2 and exactly one stderr line ``train-mrpc: error: ...``."""
    lines = stderr.strip().splitlines()
    assert returncode == 2, stderr
    assert len(lines) == 1 and lines[0].startswith("train-mrpc: error: "), stderr
    for fragment in fragments:
        assert fragment in lines[0], lines[0]
    return lines[0]


def assert_error_after_loading(returncode: int, stderr: str, *fragments: str) -> str:
    """Exit 2, no traceback, and the error as the last line (after the run's own model-loading progress)."""
    assert returncode == 2 and "Traceback" not in stderr, stderr[-3000:]
    line = stderr.strip().splitlines()[-1]
    assert line.startswith("train-mrpc: error: ") and stderr.count("train-mrpc: error:") == 1, stderr[-3000:]
    for fragment in fragments:
        assert fragment in line, line
    return line


# Root reads any file whatever its mode; without these two capabilities it obeys file modes like any user.
_DROP_DAC = ["--inh-caps=-dac_override,-dac_read_search", "--bounding-set=-dac_override,-dac_read_search"]


def non_root_launcher(probe_dir: Path) -> list[str]:
    """A launcher for train-mrpc that honours file permissions (for EACCES tests); skips when none works.

    Non-root users get the plain command. Root gets it under ``setpriv`` with CAP_DAC_OVERRIDE and
    CAP_DAC_READ_SEARCH dropped, checked on a mode-000 probe file (a container may forbid dropping them).
    """
    import shutil

    plain = [sys.executable, "-m", "train_mrpc"]
    probe = probe_dir / "mode-000-probe"
    probe.write_text("secret")
    probe.chmod(0)
    try:
        if os.geteuid() != 0:
            return plain
        setpriv = shutil.which("setpriv")
        if setpriv is None:
            pytest.skip("running as root and setpriv is absent: cannot drop CAP_DAC_OVERRIDE to test permissions")
        check = subprocess.run([setpriv, *_DROP_DAC, "cat", str(probe)], capture_output=True, text=True)
        if check.returncode == 0 or "secret" in check.stdout:
            pytest.skip(f"running as root and setpriv could not drop CAP_DAC_OVERRIDE ({check.stderr.strip()})")
        return [setpriv, *_DROP_DAC, *plain]
    finally:
        probe.chmod(0o600)
        probe.unlink()


# --- multi-process jobs that a test breaks on purpose (tests/test_faults.py) --------------------------


def live_workers(output_dir: Path) -> list[int]:
    """training_workers, tolerating processes that exit while they are listed (a job being torn down)."""
    return _train_mrpc_processes(output_dir)


def start_job(command: list[str], log_dir: Path, env=None) -> subprocess.Popen:
    """Start a launcher in a session of its own, its output going to log_dir/stdout and log_dir/stderr (files,
    not pipes: a job that prints more than a pipe holds while the test waits would block). Stop it with
    stop_job in a finally."""
    log_dir.mkdir(parents=True, exist_ok=True)
    with open(log_dir / "stdout", "w") as out, open(log_dir / "stderr", "w") as err:
        return subprocess.Popen(
            command,
            cwd=ROOT,
            env={**os.environ, **TEST_ENV, **(env or {})},
            stdout=out,
            stderr=err,
            text=True,
            start_new_session=True,
        )


def stop_job(launcher: subprocess.Popen, output_dir: Path) -> None:
    """SIGKILL whatever is left of a job: its training processes (torchrun starts each in a session of its own,
    so killing the launcher's group does not reach them; a SIGSTOPped one dies of SIGKILL too), then the
    launcher's group."""
    import signal

    for pid in live_workers(output_dir):
        try:
            os.killpg(pid, signal.SIGKILL)
        except (ProcessLookupError, PermissionError):
            pass
    if launcher.poll() is None:
        os.killpg(launcher.pid, signal.SIGKILL)
    launcher.wait(timeout=60)


def workers_by_rank(output_dir: Path, count: int, timeout: float = 120) -> dict[int, int]:
    """{RANK: pid} of the training processes of a run writing to ``output_dir`` (from their environment)."""
    import time

    deadline = time.monotonic() + timeout
    while True:
        ranks = {}
        for pid in live_workers(output_dir):
            try:
                environ = Path(f"/proc/{pid}/environ").read_bytes().split(b"\0")
            except OSError:
                continue
            rank = next((v[5:] for v in environ if v.startswith(b"RANK=")), None)
            if rank is not None:
                ranks[int(rank)] = pid
        if len(ranks) == count or time.monotonic() > deadline:
            return ranks
        time.sleep(0.05)


def process_ended(pid: int) -> bool:
    """True once ``pid`` has exited (gone, or a zombie its parent has not reaped yet)."""
    try:
        return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0] in ("Z", "X")
    except OSError:
        return True


def seconds_until_ended(pid: int, timeout: float) -> float:
    """Seconds until ``pid`` exits, polled every 10 ms; ``timeout`` plus a little if it is still running by then."""
    import time

    start = time.monotonic()
    while not process_ended(pid) and time.monotonic() - start < timeout:
        time.sleep(0.01)
    return time.monotonic() - start


def pytest_collection_modifyitems(config, items):
    """The order pytest-xdist hands files to workers (make test: --dist loadfile --no-loadscope-reorder): the files
    whose tests say they take minutes (@pytest.mark.minutes(N), on a test or a module) first, the longest first, so
    that make demo's real fine-tune and the DeepSpeed file's op builds run beside the rest of the suite instead of
    after it; then the files with the most tests, as xdist's own reordering would. No test depends on the order."""
    files: dict[str, list] = {}
    for item in items:
        files.setdefault(item.nodeid.split("::")[0], []).append(item)

    def minutes(item) -> float:
        marker = item.get_closest_marker("minutes")
        return marker.args[0] if marker else 0

    def cost(name: str) -> tuple:
        tests = files[name]
        return (-max(map(minutes, tests)), -len(tests))

    items[:] = [item for name in sorted(files, key=cost) for item in files[name]]
