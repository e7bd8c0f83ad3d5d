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


class Preempted(Exception):
    """Raised after a checkpoint was saved because SIGTERM/SIGUSR1 asked the run to stop."""


class PreemptionHandler:
    """Turns SIGTERM/SIGUSR1 (what SLURM sends before killing a job) into a flag the loop checks."""

    SIGNALS = (signal.SIGTERM, signal.SIGUSR1)

    def __init__(self) -> None:
        self.received: str | None = None
        self._previous = {}

    def __enter__(self) -> PreemptionHandler:
        for sig in self.SIGNALS:
            self._previous[sig] = signal.signal(sig, self._handle)
        return self

    def __exit__(self, *exc) -> None:
        for sig, handler in self._previous.items():
            signal.signal(sig, handler)

    def _handle(self, signum, frame) -> None:
        self.received = signal.Signals(signum).name


def checkpoint_root(output_dir: str | Path) -> Path:
    return Path(output_dir) / CHECKPOINTS_DIR


def validate_checkpoint(path: Path) -> dict:
    """The checkpoint's trainer state, or a UserError saying why it cannot be resumed from."""
    state_file = path / STATE_FILE
    if not path.is_dir():
        raise UserError(f"checkpoint {path} does not exist")
    if not state_file.is_file():
        raise UserError(f"checkpoint {path} is incomplete: {STATE_FILE} is missing (a save was interrupted?)")
    try:
        record = json.loads(state_file.read_text())
        files = record["files"]
    except (ValueError, KeyError):
        raise UserError(f"checkpoint {path} is damaged: {STATE_FILE} is not valid") from None
    for name, size in files.items():
        file = path / name
        if not file.is_file():
            raise UserError(f"checkpoint {path} is damaged: {name} is missing")
        if file.stat().st_size != size:
            raise UserError(f"checkpoint {path} is damaged: {name} has {file.stat().st_size} bytes, expected {size}")
    return record


def list_checkpoints(output_dir: str | Path) -> list[Path]:
    """Complete-looking checkpoint directories, oldest step first."""
    root = checkpoint_root(output_dir)
    if not root.is_dir():
        return []
    return sorted((p for p in root.glob("step_*") if p.is_dir()), key=lambda p: int(p.name.split("_")[1]))


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


def save_checkpoint(accelerator, output_dir: str | Path, state: TrainState, meters: dict, eval_metrics: dict | None) -> Path:
    """Write a checkpoint atomically: temporary directory, then rename. Every process must call this.

    ``meters`` (the loss and token counts since the last logging step) make the resumed run log exactly
    the losses of an uninterrupted one; ``eval_metrics`` (the evaluation at this step, if one ran) let
    rotation keep the best checkpoint.
    """
    root = checkpoint_root(output_dir)
    final = root / f"step_{state.step:06d}"
    tmp = root / f".tmp-{final.name}"
    if accelerator.is_main_process:
        shutil.rmtree(tmp, ignore_errors=True)
        root.mkdir(parents=True, exist_ok=True)
    accelerator.wait_for_everyone()
    accelerator.save_state(str(tmp))
    accelerator.wait_for_everyone()
    if accelerator.is_main_process:
        files = {p.name: p.stat().st_size for p in tmp.iterdir() if p.is_file()}
        record = {**asdict(state), "meters": meters, "eval_metrics": eval_metrics or {}, "files": files}
        with open(tmp / STATE_FILE, "w") as f:
            json.dump(record, f, indent=2)
            f.flush()
            os.fsync(f.fileno())
        if final.exists():  # the same step saved again (e.g. preempted right after a checkpoint)
            shutil.rmtree(final)
        os.replace(tmp, final)
        _fsync_dir(root)
    accelerator.wait_for_everyone()
    return final


def load_checkpoint(accelerator, path: Path) -> tuple[TrainState, dict, dict]:
    """Restore Accelerate's state; return the run's state, its meters and the evaluation at that step."""
    record = validate_checkpoint(path)
    try:
        accelerator.load_state(str(path))
    except Exception as err:  # a damaged tensor file surfaces as one of several library errors
        raise UserError(f"checkpoint {path} cannot be loaded: {' '.join(str(err).split())[:300]}") from None
    fields = TrainState.__dataclass_fields__
    state = TrainState(**{k: v for k, v in record.items() if k in fields})
    return state, record.get("meters", {}), record.get("eval_metrics", {})


def rotate_checkpoints(output_dir: str | Path, keep_last: int | None, metric: str, greater_is_better: bool) -> None:
    """Keep the last ``keep_last`` checkpoints plus the best by ``metric``; delete the rest."""
    if keep_last is None:
        return
    checkpoints = list_checkpoints(output_dir)
    keep = set(checkpoints[-keep_last:])
    scored = []
    for path in checkpoints:
        try:
            metrics = json.loads((path / STATE_FILE).read_text()).get("eval_metrics") or {}
        except (OSError, ValueError):
            continue
        if metric in metrics:
            scored.append((metrics[metric] if greater_is_better else -metrics[metric], path.name, path))
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
