"""Checkpoints: atomic, validated and rotated; preemption signals; resume at the exact batch.

A checkpoint is ``output_dir/checkpoints/step_NNNNNN/``: Accelerate's ``save_state`` (model as safetensors,
optimizer, scheduler, grad scaler, every process's RNG states) plus ``trainer_state.json`` with the step
counters, the data position and the sizes of every file. It is written under a temporary name and renamed
when complete, so a crash mid-save never leaves a half-written ``step_*`` directory; one damaged later
(a truncated file) fails validation, and ``latest`` skips it with a warning.
"""

from __future__ import annotations

import json
import logging
import os
import re
import shutil
import signal
from dataclasses import asdict, dataclass
from pathlib import Path

from train_mrpc.errors import UserError
from train_mrpc.schema import CHECKPOINTS_DIR

STATE_FILE = "trainer_state.json"
PREEMPTED_EXIT_CODE = 75  # EX_TEMPFAIL: "try again", what a requeue script checks for
logger = logging.getLogger(__name__)


@dataclass
class TrainState:
    """Where the run stands: what a checkpoint restores besides Accelerate's state (weights, optimizer, RNGs)."""

    step: int = 0  # optimizer steps done
    epoch: int = 0  # the epoch in progress (0-based)
    batches_in_epoch: int = 0  # micro-batches of that epoch already trained on, per process
    samples: int = 0  # training examples seen, all processes
    best_metric: float | None = None  # best --metric_for_best_model so far, and where
    best_step: int = 0
    evals_without_improvement: int = 0  # for --early_stopping_patience
    last_eval_step: int = -1  # the step of the last evaluation this state includes (logged, best model kept)
    train_seconds: float = 0.0  # training time of every run segment so far (evaluation excluded)
    eval_seconds: float = 0.0  # evaluation time of every run segment so far


INTERRUPTED_EXIT_CODE = 130  # 128 + SIGINT, what a shell reports for a Ctrl-C


class Preempted(Exception):
    """Raised after a checkpoint was saved because SIGTERM/SIGUSR1 (or a first Ctrl-C) asked the run to stop."""

    def __init__(self, message: str, exit_status: int = PREEMPTED_EXIT_CODE) -> None:
        super().__init__(message)
        self.exit_status = exit_status


class PreemptionHandler:
    """Turns SIGTERM/SIGUSR1 (what SLURM sends before killing a job) into a flag the loop checks, and so a
    first Ctrl-C (SIGINT) while training: the step finishes, a checkpoint is saved, the run stops (exit 130).

    A second Ctrl-C stops at once (KeyboardInterrupt), and so does a Ctrl-C before training began (set-up
    has nothing to save). Under ``accelerate launch`` a Ctrl-C can reach a worker twice within milliseconds:
    from the terminal, and again from torchrun's agent, which passes the signal it got on to its workers. So
    a SIGINT counts as the second only from SECOND_CTRL_C_AFTER_S after the first.
    """

    SIGNALS = (signal.SIGTERM, signal.SIGUSR1)
    SECOND_CTRL_C_AFTER_S = 1.0
    early: list[str] = []  # signals caught by install_early() before any handler context existed

    def __init__(self) -> None:
        self.received: str | None = PreemptionHandler.early[0] if PreemptionHandler.early else None
        self.training = False  # set by the loop: only then does a first Ctrl-C wait for a checkpoint
        self._first_ctrl_c: float | None = None
        self._previous = {}

    @classmethod
    def install_early(cls) -> None:
        """Catch SIGTERM/SIGUSR1 from the moment the command starts (imports, set-up), not only in the loop."""
        for sig in cls.SIGNALS:
            signal.signal(sig, lambda signum, frame: cls.early.append(signal.Signals(signum).name))
        cls.stop_when_the_launcher_dies()

    @staticmethod
    def stop_when_the_launcher_dies() -> None:
        """Under torchrun (``accelerate launch``), a SIGTERM when the launcher dies: its workers run in sessions
        of their own, so a signal that kills only the launcher (SIGUSR1 to its process group: torchrun's
        agent dies of it) left them training unwatched, with no checkpoint. Now they checkpoint and exit."""
        import sys

        if "TORCHELASTIC_RUN_ID" not in os.environ or not sys.platform.startswith("linux"):
            return
        import ctypes

        pr_set_pdeathsig = 1  # <linux/prctl.h>
        ctypes.CDLL(None, use_errno=True).prctl(pr_set_pdeathsig, int(signal.SIGTERM))

    def __enter__(self) -> PreemptionHandler:
        for sig in self.SIGNALS:
            self._previous[sig] = signal.signal(sig, self._handle)
        self._previous[signal.SIGINT] = signal.signal(signal.SIGINT, self._handle_ctrl_c)
        return self

    def __exit__(self, *exc) -> None:
        for sig, handler in self._previous.items():
            signal.signal(sig, handler)

    def _handle(self, signum, frame) -> None:
        self.received = signal.Signals(signum).name

    def _handle_ctrl_c(self, signum, frame) -> None:
        import sys
        import time

        now = time.monotonic()
        again = self._first_ctrl_c is not None and now - self._first_ctrl_c >= self.SECOND_CTRL_C_AFTER_S
        if not self.training or again:
            raise KeyboardInterrupt
        if self._first_ctrl_c is None:
            self._first_ctrl_c = now
            self.received = self.received or "SIGINT"
            if os.environ.get("RANK", "0") == "0":
                print(
                    "train-mrpc: Ctrl-C: finishing this step, then saving a checkpoint and stopping "
                    "(Ctrl-C again to stop at once, without one)",
                    file=sys.stderr,
                    flush=True,
                )


def checkpoint_root(output_dir: str | Path) -> Path:
    return Path(output_dir) / CHECKPOINTS_DIR


def file_checksum(path: Path) -> str:
    """xxh3-64 of the file's bytes: ~10 GB/s, so verifying a 1.3 GB bert-base checkpoint costs ~0.1 s of hashing."""
    import xxhash  # a dependency of datasets

    digest = xxhash.xxh3_64()
    with open(path, "rb") as f:
        while chunk := f.read(1 << 22):
            digest.update(chunk)
    return digest.hexdigest()


def checkpoint_files(folder: Path) -> list[str]:
    """Every file of a checkpoint folder, as POSIX paths relative to it.

    Files in sub-folders count too: under FSDP with SHARDED_STATE_DICT, Accelerate saves the model and the
    optimizer as torch.distributed.checkpoint folders (pytorch_model_fsdp_0/, optimizer_0/: one .distcp file
    per process and a .metadata file), and a damaged shard must fail validation like a damaged top-level file.
    """
    return sorted(p.relative_to(folder).as_posix() for p in folder.rglob("*") if p.is_file())


def is_checkpoint_file_name(name: str) -> bool:
    """A relative path that stays inside the checkpoint folder (a state file naming ../x or /x is damaged)."""
    parts = name.split("/")
    return (
        bool(name)
        and not name.startswith("/")
        and all(part not in ("", ".", "..") for part in parts)
        and not parts[0].startswith(".")
    )


STATE_CHECKSUM = "state_xxh3_64"


def state_checksum(record: dict) -> str:
    """xxh3-64 of the state's canonical JSON, itself left out. Python floats survive a JSON round trip exactly,
    so the figure read back equals the one written."""
    import xxhash

    fields = {k: v for k, v in record.items() if k != STATE_CHECKSUM}
    return xxhash.xxh3_64(json.dumps(fields, sort_keys=True, allow_nan=False).encode()).hexdigest()


def sealed(record: dict) -> dict:
    """The trainer state with its own checksum: it holds the other files' checksums, and a damaged or edited
    field (a counter, the meters) would otherwise resume silently wrong."""
    return {**record, STATE_CHECKSUM: state_checksum(record)}


def validate_checkpoint(path: Path) -> dict:
    """The checkpoint's trainer state, or a UserError saying why it cannot be resumed from.

    Every file must be there with the size and content checksum recorded when it was saved, and the state
    must have the fields and types a resume reads.
    """
    state_file = path / STATE_FILE
    if path.exists() and not path.is_dir():
        raise UserError(
            f"checkpoint {path} is a file; expected a checkpoint folder (output_dir/checkpoints/step_N) or 'latest'"
        )
    if not path.is_dir():
        raise UserError(f"checkpoint {path} does not exist")
    if not state_file.is_file():
        raise UserError(f"checkpoint {path} is incomplete: {STATE_FILE} is missing (a save was interrupted?)")
    try:
        record = json.loads(state_file.read_text())
    except (ValueError, UnicodeDecodeError, OSError, RecursionError):
        raise UserError(f"checkpoint {path} is damaged: {STATE_FILE} is not valid JSON") from None
    problem = _state_problem(record) or _unwritable_number(record)
    if problem is None and re.fullmatch(r"step_\d+", path.name) and record.get("step") != int(path.name[5:]):
        problem = f"says step {record.get('step')!r}, but the folder is {path.name}"
    if problem is None and STATE_CHECKSUM in record and record[STATE_CHECKSUM] != state_checksum(record):
        problem = "differs from what was saved (checksum)"  # checkpoints from before the checksum have none
    if problem:
        raise UserError(f"checkpoint {path} is damaged: {STATE_FILE} {problem}")
    for name, expected in record["files"].items():
        file = path / name
        if not file.is_file():
            raise UserError(f"checkpoint {path} is damaged: {name} is missing")
        size, checksum = (expected, None) if isinstance(expected, int) else (expected["size"], expected["xxh3_64"])
        if file.stat().st_size != size:
            raise UserError(f"checkpoint {path} is damaged: {name} has {file.stat().st_size} bytes, expected {size}")
        if checksum is not None and file_checksum(file) != checksum:
            raise UserError(
                f"checkpoint {path} is damaged: the content of {name} differs from what was saved (checksum)"
            )
    return record


def _state_problem(record) -> str | None:
    """What is wrong with a trainer_state.json record, or None."""
    if not isinstance(record, dict):
        return f"holds {type(record).__name__}, expected an object"
    files = record.get("files")
    if not isinstance(files, dict) or not files:
        return "lists no files"
    for name, entry in files.items():
        ok = isinstance(entry, int) or (
            isinstance(entry, dict) and isinstance(entry.get("size"), int) and isinstance(entry.get("xxh3_64"), str)
        )
        if not ok or not is_checkpoint_file_name(name):
            return f"has a bad entry for file {name!r}"
    for name, f in TrainState.__dataclass_fields__.items():
        value = record.get(name, f.default)
        wanted = (int, float, type(None)) if name == "best_metric" else (int, float) if f.type in ("float",) else (int,)
        if isinstance(value, bool) or not isinstance(value, wanted):
            return f"has {name} = {value!r}, expected {'a number' if float in wanted else 'an integer'}"
        if name != "last_eval_step" and isinstance(value, (int, float)) and value < 0:
            return f"has {name} = {value!r}, expected a number >= 0"
    for name in ("meters", "eval_metrics", "run"):
        if not isinstance(record.get(name, {}), dict):
            return f"has {name} = {record[name]!r}, expected an object"
    return None


def _unwritable_number(value, where: str = "") -> str | None:
    """Where the state holds a number no save writes, or None: NaN or infinity (json.loads takes them; the save
    writes with allow_nan=False, and the state's checksum, computed the same way, failed with a ValueError)."""
    import math

    if isinstance(value, dict):
        items = value.items()
    elif isinstance(value, list):
        items = ((f"[{i}]", v) for i, v in enumerate(value))
    else:
        if isinstance(value, float) and not math.isfinite(value):
            return f"has {where} = {value!r}, which no save writes (expected a finite number)"
        return None
    for key, item in items:
        name = f"{where}{key}" if str(key).startswith("[") else f"{where}.{key}" if where else str(key)
        problem = _unwritable_number(item, name)
        if problem:
            return problem
    return None


def list_checkpoints(output_dir: str | Path) -> list[Path]:
    """Complete-looking checkpoint directories, oldest step first."""
    root = checkpoint_root(output_dir)
    if not root.is_dir():
        return []
    named = (p for p in root.glob("step_*") if re.fullmatch(r"step_\d+", p.name) and p.is_dir())
    return sorted(named, key=lambda p: int(p.name.split("_")[1]))


def find_latest(output_dir: str | Path) -> Path | None:
    """The newest checkpoint that validates; damaged ones are skipped with a warning."""
    for path in reversed(list_checkpoints(output_dir)):
        try:
            validate_checkpoint(path)
            return path
        except UserError as err:
            logger.warning("skipping %s", err)
    return None


def resolve_resume(resume_from: str | None, output_dir: str | Path) -> Path | None:
    """The checkpoint to resume from: an explicit path (validated), or ``latest`` (None if there is none yet)."""
    if resume_from is None:
        return None
    if resume_from == "latest":
        return find_latest(output_dir)
    path = Path(resume_from)
    validate_checkpoint(path)
    return path


def save_checkpoint(
    accelerator,
    output_dir: str | Path,
    state: TrainState,
    meters: dict,
    eval_metrics: dict | None,
    run: dict | None = None,
) -> Path:
    """Write a checkpoint atomically: temporary directory, then rename. Every process must call this.

    ``meters`` (the loss and token counts since the last logging step) make the resumed run log exactly
    the losses of an uninterrupted one; ``eval_metrics`` (the evaluation at this step, if one ran) let
    rotation keep the best checkpoint; ``run`` (the settings that decide the result) lets a resume refuse
    a checkpoint made by other settings. A save that fails (a full disk) leaves no partial directory behind.
    """
    root = checkpoint_root(output_dir)
    final = root / f"step_{state.step:06d}"
    tmp = root / f".tmp-{final.name}"
    if accelerator.is_main_process:
        shutil.rmtree(tmp, ignore_errors=True)
        root.mkdir(parents=True, exist_ok=True)
    accelerator.wait_for_everyone()
    try:
        accelerator.save_state(str(tmp))
        accelerator.wait_for_everyone()
        if accelerator.is_main_process:
            files = {
                name: {"size": (tmp / name).stat().st_size, "xxh3_64": file_checksum(tmp / name)}
                for name in checkpoint_files(tmp)
            }
            record = {
                **asdict(state),
                "meters": meters,
                "eval_metrics": eval_metrics or {},
                "run": run or {},
                "files": files,
            }
            with open(tmp / STATE_FILE, "w") as f:
                json.dump(sealed(record), f, indent=2, allow_nan=False)
                f.flush()
                os.fsync(f.fileno())
            if final.exists():  # the same step saved again (e.g. preempted right after a checkpoint)
                shutil.rmtree(final)
            os.replace(tmp, final)
            _fsync_dir(root)
    except Exception as err:  # disk full surfaces as OSError, SafetensorError or torch's "enforce fail"
        shutil.rmtree(tmp, ignore_errors=True)
        raise save_error(final, err, find_latest(output_dir)) from None
    accelerator.wait_for_everyone()
    return final


def save_error(path: Path, err: Exception, kept: Path | None) -> UserError:
    """A one-line error for a failed save that says when the disk is full, and what is kept."""
    import errno

    free = shutil.disk_usage(path.parent).free if path.parent.exists() else None
    full = getattr(err, "errno", None) in (errno.ENOSPC, errno.EDQUOT) or (free is not None and free < 64 * 2**20)
    reason = (
        f"no space left on the device ({free // 2**20 if free is not None else '?'} MiB free)"
        if full
        else " ".join(str(err).split())[:200]
    )
    previous = f"the last good checkpoint, {kept}, is kept" if kept else "no earlier checkpoint exists"
    return UserError(f"saving checkpoint {path} failed: {reason}; the partial save was removed and {previous}")


def check_same_run(path: Path, saved: dict, current: dict, allow_changes: bool) -> None:
    """Refuse to resume from a checkpoint made with other result-deciding settings (model, data, seed, ...)."""
    changed = [f"{k} {saved[k]!r} -> {current[k]!r}" for k in current if k in saved and saved[k] != current[k]]
    if changed and not allow_changes:
        raise UserError(
            f"checkpoint {path} was made by a run with other settings ({'; '.join(changed)}): "
            "resuming would mix two runs. Use another --output_dir, --overwrite_output_dir true to "
            "start fresh here, or --resume_with_changed_settings true to continue with the new settings"
        )
    if changed:
        logger.warning("resuming %s with changed settings: %s", path, "; ".join(changed))


class OutputDirLock:
    """An exclusive flock on ``output_dir/.lock`` (or any file): held for a run's lifetime, a second run
    there stops at once; as a context manager it waits instead (workers taking turns).

    flock locks die with their process, so a crashed or killed run leaves no stale lock behind.
    """

    def __init__(self, output_dir: Path | None = None, path: Path | None = None) -> None:
        self.path = Path(path) if path is not None else Path(output_dir) / ".lock"
        self.file = None

    def _open(self):
        if self.path.exists() and not self.path.is_file():  # a pipe would fail seek(); a folder, open()
            raise UserError(
                f"{self.path} is not a regular file, but the run locks its folder with a file of that name: remove it"
            )
        return open(self.path, "a+")

    def __enter__(self) -> OutputDirLock:
        import fcntl

        self.file = self._open()
        fcntl.flock(self.file, fcntl.LOCK_EX)  # waits while another process holds it
        return self

    def __exit__(self, *exc) -> None:
        self.release()

    def acquire(self) -> OutputDirLock:
        import fcntl

        self.file = self._open()
        try:
            fcntl.flock(self.file, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            self.file.seek(0)
            holder = self.file.read().strip() or "another process"
            self.file.close()
            raise UserError(
                f"--output_dir {self.path.parent} is in use by another run ({holder}); wait for it to "
                "finish or choose another --output_dir"
            ) from None
        self.file.seek(0)
        self.file.truncate()
        self.file.write(f"pid {os.getpid()} on {os.uname().nodename}")
        self.file.flush()
        return self

    def release(self) -> None:
        """Unlock now (closing the file drops the flock): the next run of a sweep or reproduce may start."""
        if self.file is not None:
            self.file.close()
            self.file = None


def load_checkpoint(accelerator, path: Path, run: dict | None = None, allow_changes: bool = False):
    """Restore Accelerate's state; return the run's state, its meters and the evaluation at that step.

    ``run``: this run's result-deciding settings; a checkpoint made with others is refused (see check_same_run).
    """
    from torch.distributed.checkpoint import CheckpointException  # a BaseException, not an Exception

    record = validate_checkpoint(path)
    if run:
        check_same_run(path, record.get("run") or {}, run, allow_changes)
    check_same_layout(path, record, accelerator)
    try:
        accelerator.load_state(str(path))
    except (Exception, CheckpointException) as err:  # a damaged tensor file surfaces as one of several library errors
        raise UserError(f"checkpoint {path} cannot be loaded: {' '.join(str(err).split())[:300]}") from None
    fields = TrainState.__dataclass_fields__
    state = TrainState(**{k: v for k, v in record.items() if k in fields})
    return state, record.get("meters", {}), record.get("eval_metrics", {})


def check_same_layout(path: Path, record: dict, accelerator) -> None:
    """Refuse, in one line, a checkpoint saved by an FSDP run in a run that is not FSDP, or the reverse.

    Accelerate saves an FSDP model as pytorch_model_fsdp_0/ (or pytorch_model_fsdp_0.bin) and anything else as
    model.safetensors; load_state would look for the other layout's files and fail deep inside
    torch.distributed.checkpoint. (Process counts are compared with the run's other settings.)
    """
    from accelerate.utils import DistributedType

    saved_by_fsdp = any(name.startswith("pytorch_model_fsdp") for name in record["files"])
    fsdp_now = accelerator.distributed_type == DistributedType.FSDP
    if saved_by_fsdp != fsdp_now:
        made, now = (
            ("an FSDP run", f"this run is {accelerator.distributed_type.value}")
            if saved_by_fsdp
            else ("a run without FSDP", "this run is FSDP")
        )
        raise UserError(
            f"checkpoint {path} was saved by {made} and {now}: their checkpoints hold the model in "
            "different layouts. Resume with the launch config that made it, or start fresh in another "
            "--output_dir"
        )


def rotate_checkpoints(output_dir: str | Path, keep_last: int | None, metric: str, greater_is_better: bool) -> None:
    """Keep the last ``keep_last`` checkpoints plus the best by ``metric``; delete the rest."""
    if keep_last is None:
        return
    checkpoints = list_checkpoints(output_dir)
    keep = set(checkpoints[-keep_last:])
    scored = []
    for path in checkpoints:
        # Only a sound record's finite metric scores: a damaged checkpoint (that latest skips: a list, a text or
        # NaN where the metric was) stopped the run at its next save with an AttributeError or TypeError, or, NaN
        # comparing false with everything, could be kept as the best while the real best was deleted.
        try:
            record = json.loads((path / STATE_FILE).read_text())
        except (OSError, ValueError, UnicodeDecodeError, RecursionError):
            continue
        metrics = record.get("eval_metrics") if isinstance(record, dict) else None
        value = metrics.get(metric) if isinstance(metrics, dict) else None
        if isinstance(value, (int, float)) and not isinstance(value, bool) and _unwritable_number(value) is None:
            scored.append((value if greater_is_better else -value, path.name, path))
    if scored:
        keep.add(max(scored)[2])
    for path in checkpoints:
        if path not in keep:
            shutil.rmtree(path, ignore_errors=True)


def _fsync_dir(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)
