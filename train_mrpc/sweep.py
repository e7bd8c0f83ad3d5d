"""``train-mrpc sweep``: the BERT paper's protocol -- a grid of learning rates (batch sizes, epochs) x seeds,
every trial a normal run, the configuration chosen on dev by its mean over seeds, failed runs named.

Trials are handed out by Optuna's storage, not by this module: a SQLite file in the sweep folder by default
(several local workers: run the same command several times), or a database URL (``--storage
postgresql://...``) for workers on many nodes. Every worker runs the same loop:

* Optuna's ``GridSampler`` (seed 0 in every worker, so all workers shuffle the grid alike) gives trial number
  ``k < n`` grid point ``k``; trial numbers are handed out by the database, so each grid point is started once
  however many workers ask at the same moment.
* Each trial is ``train()`` in its own folder, ``output_dir/lr{lr}_bs{batch}_ep{epochs}/seed_{seed}``, with
  ``resume_from_checkpoint="latest"``: the folder is a function of the grid point, so whoever runs a point
  again continues its run from its last checkpoint (a finished folder's ``all_results.json`` is read, not
  retrained).
* Optuna's heartbeat (``heartbeat_interval``, ``grace_period``) marks a trial whose worker died (SIGKILL, a
  lost node) as failed once its heartbeat is ``grace_period`` seconds old -- ``fail_stale_trials``, run by
  every worker before each trial and while it waits -- and Optuna's ``RetryHeartbeatStaleTrialCallback``
  enqueues the same grid point again (same parameters, so the same folder): the next free worker resumes it.
* A worker stopped by SIGTERM/SIGUSR1 checkpoints (the loop does that), puts its trial back in the queue and
  exits with status 75; one stopped by anything else leaves a failed trial that the next start of the command
  puts back. Re-running the command keeps every finished trial.
* Rare races (a worker asking while another takes the last queued trial) can make Optuna create a trial for
  a grid point that is already taken; such a trial is pruned before it trains (``duplicate_of``) and the
  report ignores it.

A trial whose training stops with an error of the run itself (a diverged loss) is a result, not an
interruption: it is kept as failed (``error``) and counted as a failed run. When no trial is left, each
worker writes ``sweep.md``, ``sweep.json`` and ``sweep.png`` (the same content whoever writes it).
"""

from __future__ import annotations

import contextlib
import dataclasses
import itertools
import json
import math
import os
import socket
import statistics
import time
import warnings
from dataclasses import dataclass, field
from pathlib import Path
from typing import Optional

from train_mrpc.checkpointing import OutputDirLock
from train_mrpc.config import (
    MAX_INT,
    MAX_INT_TEXT,
    IntRange,
    TrainConfig,
    check_seeds,
    check_types,
    check_value,
    is_finite,
)
from train_mrpc.errors import UserError
from train_mrpc.reproduce import (
    PUBLISHED_BASELINES,
    draw_baselines,
    is_failed_run,
    model_display_name,
    published_baselines_for,
)
from train_mrpc.schema import ALL_RESULTS

# Devlin et al. (2019), appendix A.3: the fine-tuning learning rates searched on dev.
PAPER_LEARNING_RATES = [5e-5, 4e-5, 3e-5, 2e-5]
# The grid's axes: TrainConfig fields, in the order of folder names and reports.
GRID_FIELDS = ("learning_rate", "per_device_train_batch_size", "num_train_epochs", "seed")
STORAGE_FILE = "sweep.db"
STORAGE_LOCK = ".sweep-storage.lock"
# Settings that say where or how a worker runs, not what a trial computes: they may differ between workers.
NOT_IDENTITY = (
    "output_dir",
    "resume_from_checkpoint",
    "overwrite_output_dir",
    "report_to",
    "dataloader_num_workers",
    "logging_steps",
    "checkpointing_steps",
    "save_total_limit",
)
RESULT_KEYS = (
    "eval_accuracy",
    "eval_f1",
    "eval_loss",
    "eval_majority_accuracy",
    "train_loss",
    "train_runtime",
    "eval_runtime",
    "global_step",
    "epoch",
    "resumed_from",
)
TRIAL_EXTRAS = ("precision", "device", "global_batch_size")  # also kept with each trial's results
GRID_SEED = 0  # GridSampler's shuffle: the same in every worker, so trial number k is the same grid point everywhere


@dataclass
class SweepConfig:
    learning_rates: list[float] = field(
        default_factory=lambda: list(PAPER_LEARNING_RATES),
        metadata={
            "help": "Learning rates of the grid (sweep only; --learning_rate is not used). Default: the BERT "
            "paper's 5e-5 4e-5 3e-5 2e-5."
        },
    )
    num_seeds: int = field(default=5, metadata={"help": "Seeds per configuration: --seed, --seed + 1, ... (sweep)."})
    batch_sizes: Optional[list[int]] = field(
        default=None,
        metadata={
            "help": "Per-device train batch sizes of the grid, e.g. 16 32 (sweep; default: "
            "--per_device_train_batch_size only)."
        },
    )
    epochs: Optional[list[float]] = field(
        default=None,
        metadata={"help": "Epoch counts of the grid, e.g. 2 3 4 (sweep; default: --num_train_epochs only)."},
    )
    storage: Optional[str] = field(
        default=None,
        metadata={
            "help": "Optuna storage shared by the sweep's workers: a database URL such as "
            "postgresql://user:password@host/db for workers on many nodes (sweep; default: the SQLite "
            "file sweep.db in --output_dir, for workers on one machine)."
        },
    )
    study_name: Optional[str] = field(
        default=None, metadata={"help": "Name of the sweep in --storage (sweep; default: the name of --output_dir)."}
    )
    heartbeat_interval: int = field(
        default=30, metadata={"help": "Seconds between a running trial's heartbeats in the storage (sweep)."}
    )
    grace_period: int = field(
        default=120,
        metadata={
            "help": "Seconds without a heartbeat after which a running trial's worker counts as dead and "
            "another worker resumes the trial from its checkpoint (sweep)."
        },
    )
    wait_for_others: bool = field(
        default=True,
        metadata={
            "help": "When no trial is left to start, wait for the other workers' running trials (taking "
            "over those whose worker dies) and write the report; false: leave at once (sweep)."
        },
    )

    def __post_init__(self) -> None:
        seconds = "an integer number of seconds"
        check_types(
            self,
            {
                "num_seeds": IntRange(1),
                "heartbeat_interval": IntRange(1, seconds),
                "grace_period": IntRange(None, seconds),
            },
        )  # a config file's values too; lists below
        # Each value becomes a trial's TrainConfig value, so the same bounds (checked here, before any trial runs).
        lists = {
            "learning_rates": (self.learning_rates, float, math.inf, "numbers > 0"),
            "batch_sizes": (self.batch_sizes, int, MAX_INT, f"integers from 1 to {MAX_INT_TEXT}"),
            "epochs": (self.epochs, float, MAX_INT, f"numbers > 0 and at most {MAX_INT_TEXT}"),
        }
        for name, (values, kind, maximum, what) in lists.items():
            if values is None and name != "learning_rates":
                continue
            ok = (
                isinstance(values, list)
                and len(values) > 0
                and all(
                    isinstance(v, (int, float))
                    and not isinstance(v, bool)
                    and (kind is float or isinstance(v, int))
                    and is_finite(v)
                    and 0 < v <= maximum
                    for v in values
                )
                and len(set(values)) == len(values)
            )
            check_value(ok, name, values, f"a list of {what} without repeats")
        # A trial's folder names its learning rate and epochs to 6 significant digits (configuration_name): two
        # values that agree that far shared one folder, and the second read the first's finished run as its own.
        for name, prefix in (("learning_rates", "lr"), ("epochs", "ep")):
            shown = {}
            for value in getattr(self, name) or []:
                other = shown.setdefault(f"{value:g}", value)
                check_value(
                    other == value,
                    name,
                    getattr(self, name),
                    f"values that name different trial folders: {other!r} and {value!r} are both "
                    f"{prefix}{value:g} (6 significant digits)",
                )
        check_value(
            self.grace_period > self.heartbeat_interval,
            "grace_period",
            self.grace_period,
            f"an integer number of seconds > --heartbeat_interval ({self.heartbeat_interval})",
        )
        if self.study_name is not None:
            check_value(self.study_name.strip() != "", "study_name", self.study_name, "a non-empty name")


# --- the grid ------------------------------------------------------------------------------------


def build_grid(config: TrainConfig, options: SweepConfig) -> dict[str, list]:
    """The grid's axes, in GRID_FIELDS order (lists, as the storage keeps them)."""
    if options.epochs and config.max_train_steps:
        raise UserError("--epochs has no effect with --max_train_steps (which overrides every epoch count); pass one")
    seeds = check_seeds(config.seed, options.num_seeds)
    return {
        "learning_rate": [float(v) for v in options.learning_rates],
        "per_device_train_batch_size": [int(v) for v in options.batch_sizes or [config.per_device_train_batch_size]],
        "num_train_epochs": [float(v) for v in options.epochs or [config.num_train_epochs]],
        "seed": seeds,
    }


def grid_points(grid: dict[str, list]) -> list[tuple]:
    return list(itertools.product(*(grid[name] for name in GRID_FIELDS)))


def configuration_name(lr: float, batch: int, epochs: float) -> str:
    return f"lr{lr:g}_bs{batch}_ep{epochs:g}"


def trial_dir(root: Path, point: tuple) -> Path:
    """The trial's folder: a function of its grid point, so a retried trial continues the same run."""
    lr, batch, epochs, seed = point
    return root / configuration_name(lr, batch, epochs) / f"seed_{seed}"


def describe(point: tuple) -> str:
    lr, batch, epochs, seed = point
    return f"lr {lr:g}, batch {batch}, {epochs:g} epochs, seed {seed}"


# --- the storage ---------------------------------------------------------------------------------


def import_optuna():
    try:
        import optuna
    except ImportError:
        raise UserError(
            "train-mrpc sweep needs the optuna package, which is not installed: "
            "pip install 'train-mrpc[sweep]' (in a checkout: pip install -e '.[sweep]')"
        ) from None
    warnings.filterwarnings("ignore", category=optuna.exceptions.ExperimentalWarning)
    optuna.logging.set_verbosity(optuna.logging.WARNING)
    return optuna


def masked(url: str) -> str:
    """The storage URL without its password, for reports and messages."""
    try:
        from sqlalchemy.engine import make_url

        return make_url(url).render_as_string(hide_password=True)
    except Exception:  # not a URL sqlalchemy understands: say nothing of it beyond the scheme
        return url.split("://")[0] + "://..."


def storage_url(root: Path, options: SweepConfig) -> str:
    return options.storage or f"sqlite:///{(root / STORAGE_FILE).resolve()}"


def retry_callback(optuna):
    """Optuna's own retry of heartbeat-stale trials (renamed in optuna 4.9): a WAITING copy, same parameters."""
    retry = getattr(optuna.storages, "RetryHeartbeatStaleTrialCallback", None)
    if retry is None:
        retry = optuna.storages.RetryFailedTrialCallback
    return retry(max_retry=None)


def open_storage(optuna, url: str, options: SweepConfig, callback):
    import inspect

    import sqlalchemy.exc

    kwargs = {"heartbeat_interval": options.heartbeat_interval, "grace_period": options.grace_period}
    parameters = inspect.signature(optuna.storages.RDBStorage).parameters
    kwargs[
        "heartbeat_stale_trial_callback" if "heartbeat_stale_trial_callback" in parameters else "failed_trial_callback"
    ] = callback
    # SQLite: wait for a writer's lock instead of failing at once; servers: drop connections that died while training.
    engine_kwargs = {"connect_args": {"timeout": 120}} if url.startswith("sqlite") else {"pool_pre_ping": True}
    for attempt in range(6):
        try:
            return optuna.storages.RDBStorage(url, engine_kwargs=engine_kwargs, **kwargs)
        except ImportError as err:
            raise UserError(
                f"--storage {masked(url)}: its database driver is not installed ({err.__cause__ or err}); "
                "for PostgreSQL: pip install psycopg2-binary (or pip install -e '.[sweep]')"
            ) from None
        except sqlalchemy.exc.ArgumentError as err:
            raise UserError(
                f"--storage {masked(url)} is not a database URL ({err}); expected e.g. "
                "postgresql://user:password@host/database or sqlite:////path/to/sweep.db"
            ) from None
        except sqlalchemy.exc.SQLAlchemyError as err:
            # Workers creating the tables at the same moment can collide; the second try finds them made.
            if attempt == 5:
                reason = " ".join(str(err).split())[:300]
                raise UserError(f"--storage {masked(url)} cannot be opened: {reason}") from None
            time.sleep(0.5 + attempt)


def sweep_identity(config: TrainConfig, grid: dict) -> dict:
    """What every worker of one sweep must agree on: the grid and every result-deciding setting."""
    settings = {k: v for k, v in config.to_dict().items() if k not in NOT_IDENTITY and k not in GRID_FIELDS}
    return json.loads(json.dumps({"grid": grid, "config": settings}))


def open_study(optuna, config: TrainConfig, options: SweepConfig, grid: dict, root: Path, url: str):
    name = options.study_name or root.resolve().name
    direction = "maximize" if config.greater_is_better else "minimize"
    sampler = optuna.samplers.GridSampler(grid, seed=GRID_SEED)
    # Workers on one machine creating a SQLite file at once could collide on its tables: one at a time. (Servers:
    # open_storage retries instead.)
    # Workers started together take turns creating a local SQLite storage.
    with OutputDirLock(path=root / STORAGE_LOCK) if url.startswith("sqlite") else contextlib.nullcontext():
        storage = open_storage(optuna, url, options, retry_callback(optuna))
        study = optuna.create_study(
            storage=storage, study_name=name, direction=direction, sampler=sampler, load_if_exists=True
        )
        identity = sweep_identity(config, grid)
        stored = study.user_attrs.get("sweep")
        if stored is None:
            study.set_user_attr("sweep", identity)
        elif stored != identity:
            raise UserError(
                f"study {name!r} in {masked(url)} belongs to another sweep ({identity_difference(stored, identity)}); "
                "run every worker with the same flags, or start a new sweep with another --output_dir "
                "or --study_name"
            )
    return study, name


def identity_difference(stored: dict, current: dict) -> str:
    diffs = []
    if stored.get("grid") != current["grid"]:
        diffs.append(f"its grid is {stored.get('grid')}, this command's is {current['grid']}")
    old, new = stored.get("config", {}), current["config"]
    for key in sorted(set(old) | set(new)):
        if old.get(key) != new.get(key):
            diffs.append(f"--{key} {old.get(key)!r} there, {new.get(key)!r} here")
    return "; ".join(diffs[:6]) or "its settings differ"


# --- trials --------------------------------------------------------------------------------------


def point_of(trial) -> tuple | None:
    """A trial's grid point: its parameters, or those fixed for it while it waits in the queue."""
    params = trial.params or trial.system_attrs.get("fixed_params") or {}
    if all(name in params for name in GRID_FIELDS):
        return tuple(params[name] for name in GRID_FIELDS)
    return None


def is_errored(trial) -> bool:
    """Failed by the run itself (kept as a result), rather than interrupted (resumed by a worker)."""
    return trial.state.name == "FAIL" and "error" in trial.user_attrs


def settles(trial) -> bool:
    return trial.state.name == "COMPLETE" or is_errored(trial)


def duplicate_of(trials, number: int, point: tuple) -> int | None:
    """Another trial that owns this grid point: a finished one, or an earlier queued or running one."""
    for other in trials:
        if other.number == number or point_of(other) != point:
            continue
        if settles(other) or (other.state.name in ("RUNNING", "WAITING") and other.number < number):
            return other.number
    return None


def worker_name() -> str:
    return f"{socket.gethostname()}:{os.getpid()}"


def wait_for_folder(folder: Path) -> None:
    """Wait until no live process holds the run's folder lock (a worker whose heartbeat was late, not dead)."""
    if (folder / ".lock").exists():
        with OutputDirLock(folder):  # waits while the holder lives; released at once
            pass


def run_trial(config: TrainConfig, point: tuple, folder: Path) -> dict:
    """One trial: a normal run in its folder, resumed from its latest checkpoint if one is there."""
    results_file = folder / ALL_RESULTS
    if not results_file.exists():
        wait_for_folder(folder)
    if results_file.exists():  # finished by a worker that died before telling the storage
        from train_mrpc.run_files import read_finished_run

        return read_finished_run(folder, f"trial {folder.parent.name}/{folder.name}")[0]
    from train_mrpc.train import train

    trial_config = dataclasses.replace(
        config,
        **dict(zip(GRID_FIELDS, point)),
        output_dir=str(folder),
        resume_from_checkpoint="latest",
        overwrite_output_dir=False,
    )
    return train(trial_config)


class Worker:
    """One process's part of a sweep: take trials from the storage until none is left."""

    def __init__(self, optuna, study, config: TrainConfig, grid: dict, root: Path, options: SweepConfig) -> None:
        self.optuna, self.study, self.config, self.grid, self.root, self.options = (
            optuna,
            study,
            config,
            grid,
            root,
            options,
        )
        self.points = grid_points(grid)
        self.current: int | None = None  # number of the trial this worker is running
        self.retry = retry_callback(optuna)

    def objective(self, trial) -> float:
        point = tuple(trial.suggest_categorical(name, self.grid[name]) for name in GRID_FIELDS)
        self.current = trial.number
        owner = duplicate_of(self.study.get_trials(deepcopy=False), trial.number, point)
        if owner is not None:
            trial.set_user_attr("duplicate_of", owner)
            raise self.optuna.TrialPruned(f"grid point already taken by trial {owner}")
        folder = trial_dir(self.root, point)
        trial.set_user_attr("output_dir", str(folder.relative_to(self.root)))
        trial.set_user_attr("worker", worker_name())
        print(f"sweep: trial {trial.number}: {describe(point)} -> {folder}", flush=True)
        try:
            results = run_trial(self.config, point, folder)
        except UserError as err:  # the run's own failure (a diverged loss): a result, kept as failed
            trial.set_user_attr("error", str(err))
            raise
        kept = {k: results.get(k) for k in RESULT_KEYS}
        kept["precision"] = (results.get("speed") or {}).get("precision")
        launch = results.get("launch") or {}
        kept["device"] = f"{launch.get('num_processes', 1)} x {launch.get('device_type', '?')}"
        kept["global_batch_size"] = launch.get("global_batch_size")
        trial.set_user_attr("results", kept)
        value = results.get(f"eval_{self.config.metric_for_best_model}")
        if value is None or not math.isfinite(value):
            trial.set_user_attr("error", f"eval_{self.config.metric_for_best_model} is {value}")
            raise UserError(f"trial {trial.number}: eval_{self.config.metric_for_best_model} is {value}")
        print(
            f"sweep: trial {trial.number} finished: accuracy {results['eval_accuracy']:.4f}, "
            f"F1 {results['eval_f1']:.4f}",
            flush=True,
        )
        return value

    def requeue(self, trial) -> None:
        """Put an interrupted trial's grid point back in the queue (Optuna's retry: same parameters, same folder)."""
        self.retry(self.study, trial)

    def requeue_interrupted(self) -> None:
        """Grid points whose every trial was interrupted (killed, Ctrl-C, a crash) go back in the queue."""
        by_point: dict[tuple, list] = {}
        for trial in self.study.get_trials(deepcopy=False):
            point = point_of(trial)
            if point is not None and trial.state.name != "PRUNED":
                by_point.setdefault(point, []).append(trial)
        for trials in by_point.values():
            if all(t.state.name == "FAIL" and not is_errored(t) for t in trials):
                self.requeue(max(trials, key=lambda t: t.number))

    def stop_requested(self) -> str | None:
        from train_mrpc.checkpointing import PreemptionHandler

        early = getattr(PreemptionHandler, "early", None)
        return early[0] if early else None

    def run_one(self) -> None:
        from train_mrpc.checkpointing import Preempted

        self.current = None
        try:
            self.study.optimize(self.objective, n_trials=1, catch=(UserError,), gc_after_trial=True)
        except (Preempted, KeyboardInterrupt):
            if self.current is not None:  # Optuna has marked it failed: queue it again for whoever comes next
                trial = next(t for t in self.study.get_trials(deepcopy=False) if t.number == self.current)
                if trial.state.name == "FAIL":
                    self.requeue(trial)
            raise
        except Exception:
            if self.current is None or not self.taken_over(self.current):
                raise
            # This worker's heartbeat came too late (a stopped or starved process): its trial was failed and
            # re-queued, and the worker that took the grid point over waited for this run to end (the folder's
            # lock) and records its results. Nothing was trained twice and nothing is lost.
            print(
                f"sweep: trial {self.current} was taken over by another worker after a late heartbeat; that "
                "worker records this run's results",
                flush=True,
            )

    def taken_over(self, number: int) -> bool:
        """Whether trial ``number`` was failed as stale and re-queued by Optuna's retry callback."""
        for trial in self.study.get_trials(deepcopy=False):
            if trial.number == number and (trial.state.name != "FAIL" or is_errored(trial)):
                return False
            if trial.system_attrs.get("failed_trial") == number or number in trial.system_attrs.get(
                "retry_history", []
            ):
                return True
        return False

    def status(self) -> dict:
        trials = self.study.get_trials(deepcopy=False)
        covered = {point_of(t) for t in trials if t.state.name != "PRUNED"}
        return {
            "uncovered": [p for p in self.points if p not in covered],
            "waiting": [t.number for t in trials if t.state.name == "WAITING"],
            "running": [t.number for t in trials if t.state.name == "RUNNING"],
            "unsettled": [p for p in self.points if not any(settles(t) and point_of(t) == p for t in trials)],
        }

    def work(self) -> dict:
        from train_mrpc.checkpointing import Preempted

        self.requeue_interrupted()
        duplicates_in_a_row, poll = 0, min(self.options.heartbeat_interval, 10)
        while True:
            signal_name = self.stop_requested()
            if signal_name:
                raise Preempted(
                    f"stopped by {signal_name} between trials; no trial was running. Run the command "
                    "again to continue the sweep"
                )
            self.optuna.storages.fail_stale_trials(self.study)  # dead workers' trials: failed, then re-queued
            status = self.status()
            if status["uncovered"] or status["waiting"]:
                pruned_before = len([t for t in self.study.get_trials(deepcopy=False) if t.state.name == "PRUNED"])
                self.run_one()
                pruned_after = len([t for t in self.study.get_trials(deepcopy=False) if t.state.name == "PRUNED"])
                duplicates_in_a_row = duplicates_in_a_row + 1 if pruned_after > pruned_before else 0
                if duplicates_in_a_row > 2 * len(self.points) + 10:
                    raise RuntimeError(
                        f"the sampler keeps proposing grid points that are taken; storage state: {status}"
                    )
                continue
            if status["running"] and self.options.wait_for_others:
                time.sleep(poll)
                continue
            return status


# --- the command ---------------------------------------------------------------------------------


def sweep(config: TrainConfig, options: SweepConfig) -> dict | None:
    """Join (or start) the sweep, run trials until none is left, then write the report if the sweep is done."""
    if int(os.environ.get("WORLD_SIZE", "1")) > 1:
        raise UserError(
            "train-mrpc sweep runs one process per worker: start the command several times (one per GPU "
            "with CUDA_VISIBLE_DEVICES, or one per node) instead of under a multi-process launch"
        )
    if config.overwrite_output_dir:
        raise UserError("--overwrite_output_dir does not apply to a sweep (its trials resume); use a new --output_dir")
    if config.resume_from_checkpoint not in (None, "latest"):
        raise UserError(
            "--resume_from_checkpoint: a sweep resumes every trial from its own latest checkpoint; pass no path"
        )
    optuna = import_optuna()
    grid = build_grid(config, options)
    root = Path(config.output_dir)
    try:
        root.mkdir(parents=True, exist_ok=True)
    except OSError as err:
        raise UserError(f"--output_dir {root} cannot be created: {err.strerror or err}") from None
    url = storage_url(root, options)
    study, name = open_study(optuna, config, options, grid, root, url)
    n = len(grid_points(grid))
    print(
        f"sweep: worker {worker_name()} joins study {name!r} in {masked(url)}: {n} trials "
        f"({n // len(grid['seed'])} configurations x {len(grid['seed'])} seeds)",
        flush=True,
    )
    status = Worker(optuna, study, config, grid, root, options).work()
    if status["unsettled"]:
        print(
            f"sweep: {n - len(status['unsettled'])} of {n} trials finished; "
            + (f"trials {status['running']} are still running elsewhere; " if status["running"] else "")
            + "the report is written by the worker that ends last (or run the command again)",
            flush=True,
        )
        return None
    report = build_report(study, config, grid, name, url)
    write_report(report, root)
    return report


# --- the report ----------------------------------------------------------------------------------


def _stats(values: list[float]) -> dict:
    if not values:
        return {"mean": None, "std": None, "median": None, "min": None, "max": None, "n": 0}
    return {
        "mean": statistics.fmean(values),
        "std": statistics.stdev(values) if len(values) > 1 else 0.0,
        "median": statistics.median(values),
        "min": min(values),
        "max": max(values),
        "n": len(values),
    }


def collect_trials(trials, grid: dict) -> list[dict]:
    """One row per grid point: its result (a finished or errored trial) and the attempts it took."""
    by_point: dict[tuple, list] = {}
    for trial in trials:
        point = point_of(trial)
        if point is not None:
            by_point.setdefault(point, []).append(trial)
    rows = []
    for point in grid_points(grid):
        attempts = sorted(by_point.get(point, []), key=lambda t: t.number)
        complete = [t for t in attempts if t.state.name == "COMPLETE"]
        errored = [t for t in attempts if is_errored(t)]
        final = (complete or errored or [None])[0]
        results = final.user_attrs.get("results", {}) if final is not None else {}
        rows.append(
            {
                **dict(zip(GRID_FIELDS, point)),
                "trial": final.number if final is not None else None,
                "state": "complete" if complete else "error" if errored else "missing",
                "completed_trials": [t.number for t in complete],  # exactly one in a healthy sweep
                "interrupted_trials": [t.number for t in attempts if t.state.name == "FAIL" and not is_errored(t)],
                "error": final.user_attrs.get("error") if final is not None else None,
                "output_dir": final.user_attrs.get("output_dir") if final is not None else None,
                "worker": final.user_attrs.get("worker") if final is not None else None,
                **{k: results.get(k) for k in (*RESULT_KEYS, *TRIAL_EXTRAS)},
            }
        )
    for row in rows:
        ran = row["state"] == "complete"
        row["failed"] = is_failed_run(row["eval_accuracy"] if ran else None, row["eval_majority_accuracy"])
    return rows


def summarize_configurations(rows: list[dict], metric: str) -> tuple[list[dict], dict | None]:
    """Per configuration: statistics over seeds and its failed runs; then the one with the best mean ``metric``."""
    configurations: dict[tuple, dict] = {}
    for row in rows:
        key = (row["learning_rate"], row["per_device_train_batch_size"], row["num_train_epochs"])
        entry = configurations.setdefault(
            key,
            {
                "name": configuration_name(*key),
                "learning_rate": key[0],
                "per_device_train_batch_size": key[1],
                "num_train_epochs": key[2],
                "seeds": [],
                "values": {"accuracy": [], "f1": [], "loss": []},
                "completed_seeds": [],
                "failed_runs": [],
                "errored_runs": [],
            },
        )
        entry["seeds"].append(row["seed"])
        if row["state"] == "complete":
            for name in ("accuracy", "f1", "loss"):
                entry["values"][name].append(row[f"eval_{name}"])
            entry["completed_seeds"].append(row["seed"])
        elif row["state"] == "error":
            entry["errored_runs"].append({"seed": row["seed"], "error": row["error"]})
        if row["failed"]:
            entry["failed_runs"].append(
                {"seed": row["seed"], "eval_accuracy": row["eval_accuracy"] if row["state"] == "complete" else None}
            )
    result = []
    for entry in configurations.values():
        entry["stats"] = {name: _stats(values) for name, values in entry["values"].items()}
        result.append(entry)
    candidates = [c for c in result if c["stats"][metric]["n"]]
    chosen = None
    if candidates:
        sign = -1 if metric == "loss" else 1
        chosen = max(candidates, key=lambda c: sign * c["stats"][metric]["mean"])  # first best in grid order
    for entry in result:
        entry["chosen"] = entry is chosen
    return result, chosen


def build_report(study, config: TrainConfig, grid: dict, name: str, url: str) -> dict:
    from train_mrpc.environment import environment

    rows = collect_trials(study.get_trials(deepcopy=False), grid)
    metric = config.metric_for_best_model
    configurations, chosen = summarize_configurations(rows, metric)
    majorities = [r["eval_majority_accuracy"] for r in rows if r["eval_majority_accuracy"] is not None]
    workers = sorted({r["worker"] for r in rows if r["worker"]})
    return {
        "model": config.model_name_or_path,
        "model_name": model_display_name(config.model_name_or_path),
        "data_source": config.data_source,
        "metric": metric,
        "grid": grid,
        "study_name": name,
        "storage": masked(url),
        "num_trials": len(rows),
        "workers": workers,
        "majority_accuracy": majorities[0] if majorities else None,
        "chosen": None
        if chosen is None
        else {k: chosen[k] for k in ("name", "learning_rate", "per_device_train_batch_size", "num_train_epochs")},
        "configurations": configurations,
        "trials": rows,
        "failed_runs": [{k: r[k] for k in (*GRID_FIELDS, "eval_accuracy", "state")} for r in rows if r["failed"]],
        "published_baselines": PUBLISHED_BASELINES,
        "published_baselines_for_model": published_baselines_for(config.model_name_or_path),
        "config": {k: v for k, v in config.to_dict().items() if k not in GRID_FIELDS},
        "environment": environment(),
    }


def _pct(value: float | None) -> str:
    return "–" if value is None else f"{100 * value:.2f}"


def _spread(stats: dict) -> tuple[str, str, str]:
    if not stats["n"]:
        return "–", "–", "–"
    return (
        f"{_pct(stats['mean'])} ± {_pct(stats['std'])}",
        _pct(stats["median"]),
        f"{_pct(stats['min'])} – {_pct(stats['max'])}",
    )


def configuration_label(c: dict) -> str:
    return f"lr {c['learning_rate']:g}, batch {c['per_device_train_batch_size']}, {c['num_train_epochs']:g} epochs"


def markdown_report(report: dict) -> str:
    metric = report["metric"]
    chosen_entry = next((c for c in report["configurations"] if c["chosen"]), None)
    seeds = report["grid"]["seed"]
    lines = [
        f"# MRPC sweep: {report['model_name']}",
        "",
        f"Model: `{report['model']}`; data: {report['data_source']}; validation split. "
        f"{len(report['configurations'])} configurations x {len(seeds)} seeds ({', '.join(map(str, seeds))}) = "
        f"{report['num_trials']} trials, each a normal run in its own folder.",
        "",
    ]
    if chosen_entry is not None:
        stats = chosen_entry["stats"][metric]
        value = f"{stats['mean']:.4f}" if metric == "loss" else f"{_pct(stats['mean'])} %"
        lines += [
            f"**Chosen** (best mean dev {metric} over seeds): **{configuration_label(chosen_entry)}**, "
            f"mean {metric} {value}.",
            "",
        ]
    failed_total = len(report["failed_runs"])
    lines += [
        f"A **failed run** is one whose dev accuracy is no better than always answering the majority class "
        f"({_pct(report['majority_accuracy'])} %) -- or that stopped with an error. Failed runs: {failed_total} "
        f"of {report['num_trials']}.",
        "",
        "| | configuration | runs | accuracy % mean ± std | median | min – max | F1 % mean ± std | median | "
        "min – max | failed runs |",
        "|:--:|---|---:|---:|---:|---:|---:|---:|---:|---|",
    ]
    for c in report["configurations"]:
        acc, f1 = _spread(c["stats"]["accuracy"]), _spread(c["stats"]["f1"])
        failed = ", ".join(
            f"seed {f['seed']}" + (f" ({_pct(f['eval_accuracy'])} %)" if f["eval_accuracy"] is not None else " (error)")
            for f in c["failed_runs"]
        )
        mark = "**→**" if c["chosen"] else ""
        label = f"**{configuration_label(c)}**" if c["chosen"] else configuration_label(c)
        lines.append(
            f"| {mark} | {label} | {c['stats']['accuracy']['n']} | {acc[0]} | {acc[1]} | {acc[2]} | "
            f"{f1[0]} | {f1[1]} | {f1[2]} | {len(c['failed_runs'])}{': ' + failed if failed else ''} |"
        )
    lines += [
        "",
        "## Trials",
        "",
        "| configuration | seed | accuracy % | F1 % | eval loss | failed | train s | trial | attempts | worker | folder |",
        "|---|---:|---:|---:|---:|:--:|---:|---:|---|---|---|",
    ]
    for r in report["trials"]:
        attempts = (
            "resumed after interrupted trial(s) " + ", ".join(map(str, r["interrupted_trials"]))
            if r["interrupted_trials"]
            else ""
        )
        if r["state"] == "error":
            attempts = (attempts + "; " if attempts else "") + f"error: {r['error']}"
        loss = "–" if r["eval_loss"] is None else f"{r['eval_loss']:.4f}"
        runtime = "–" if r["train_runtime"] is None else f"{r['train_runtime']:.1f}"
        config_label = (
            f"lr {r['learning_rate']:g}, batch {r['per_device_train_batch_size']}, {r['num_train_epochs']:g} ep"
        )
        lines.append(
            f"| {config_label} | {r['seed']} | {_pct(r['eval_accuracy'])} | {_pct(r['eval_f1'])} | {loss} | "
            f"{'**yes**' if r['failed'] else ''} | {runtime} | {r['trial']} | {attempts} | {r['worker'] or ''} | "
            f"`{r['output_dir'] or ''}` |"
        )
    if report["published_baselines_for_model"]:
        lines += [
            "",
            "## Published MRPC validation baselines for this model (published figures, not run here)",
            "",
            "| setup | accuracy (%) | F1 (%) | source |",
            "|---|---:|---:|---|",
        ]
        for b in report["published_baselines_for_model"]:
            lines.append(f"| {b['setup']} | {_pct(b['accuracy'])} | {_pct(b['f1'])} | {b['source']} |")
    env, config = report["environment"], report["config"]
    versions = ", ".join(f"{k} {v}" for k, v in env["versions"].items() if v)
    lines += [
        "",
        "## How it ran",
        "",
        f"- shared settings: warmup ratio {config['warmup_ratio']:g}, weight decay {config['weight_decay']:g}, "
        f"max grad norm {config['max_grad_norm']:g}, precision flag {config['precision']}"
        + (f", recipe {config['recipe']}" if config.get("recipe") else "")
        + (f", max_train_steps {config['max_train_steps']}" if config.get("max_train_steps") else "")
        + "; all of them: `sweep.json` → `config`",
        f"- trials handed out by Optuna: study `{report['study_name']}` in `{report['storage']}`; "
        f"workers: {', '.join(report['workers']) or '–'}",
        f"- report written on: {env['device_name']}; versions: {versions}",
        f"- commit: {env['git']['commit']}{' (uncommitted changes)' if env['git']['dirty'] else ''}",
        "",
    ]
    return "\n".join(lines)


def plot_report(report: dict, path: Path) -> None:
    """Per configuration, the distribution of dev accuracy and F1 over seeds; the chosen one marked."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    configs = report["configurations"]
    fig, axes = plt.subplots(1, 2, figsize=(max(9.0, 2.2 * len(configs) + 3), 5))
    labels = [
        f"lr {c['learning_rate']:g}\nbatch {c['per_device_train_batch_size']}, {c['num_train_epochs']:g} ep"
        for c in configs
    ]
    for ax, metric in zip(axes, ("accuracy", "f1")):
        for i, c in enumerate(configs):
            if c["chosen"]:
                ax.axvspan(i - 0.45, i + 0.45, color="gold", alpha=0.3, label="chosen configuration")
            values = [100 * v for v in c["values"][metric]]
            if not values:
                continue
            if len(values) >= 3:
                ax.boxplot(values, positions=[i], widths=0.5, showfliers=False, manage_ticks=False)
            failed_seeds = {f["seed"] for f in c["failed_runs"]}
            offsets = [0.08 * (k - (len(values) - 1) / 2) for k in range(len(values))]
            colors = ["red" if seed in failed_seeds else "tab:blue" for seed in c["completed_seeds"]]
            ax.scatter([i + o for o in offsets], values, c=colors, zorder=3, s=28)
            stats = c["stats"][metric]
            ax.errorbar(
                [i + 0.3],
                [100 * stats["mean"]],
                yerr=[100 * stats["std"]],
                fmt="D",
                color="black",
                markersize=5,
                capsize=3,
                zorder=4,
                label="mean ± std",
            )
            if failed_seeds:
                ax.scatter([], [], c="red", s=28, label="failed run (no better than the majority class)")
        draw_baselines(ax, report, metric)
        ax.set_xticks(range(len(configs)), labels, fontsize="small")
        ax.set_xlim(-0.6, len(configs) - 0.4)
        ax.set(title=f"dev {metric}: one dot per seed", ylabel=f"{metric} (%)")
        handles, names = ax.get_legend_handles_labels()
        unique = dict(zip(names, handles))
        if unique:
            ax.legend(unique.values(), unique.keys(), fontsize="small", loc="lower left")
    chosen = report["chosen"]
    suffix = f"; chosen: {configuration_label(chosen)}" if chosen else ""
    seeds = len(report["grid"]["seed"])
    from train_mrpc.plots import literal  # a model name with "$...$" is not a formula

    fig.suptitle(
        literal(
            f"MRPC sweep: {report['model_name']}, {seeds} seed{'s' * (seeds > 1)} per configuration\n"
            f"{suffix.lstrip('; ')}"
        )
    )
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def print_report(report: dict) -> None:
    from rich.console import Console
    from rich.table import Table

    table = Table(title=f"MRPC sweep: {report['model_name']}", title_justify="left")
    for name in ("", "configuration", "runs", "accuracy %", "median", "F1 %", "failed"):
        table.add_column(name, justify="right")
    for c in report["configurations"]:
        acc, f1 = _spread(c["stats"]["accuracy"]), _spread(c["stats"]["f1"])
        table.add_row(
            "→" if c["chosen"] else "",
            configuration_label(c),
            str(c["stats"]["accuracy"]["n"]),
            acc[0],
            acc[1],
            f1[0],
            str(len(c["failed_runs"])),
            style="bold" if c["chosen"] else None,
        )
    console = Console()
    console.print(table)
    if report["chosen"]:
        console.print(f"chosen by mean dev {report['metric']}: {configuration_label(report['chosen'])}")
    console.print(
        f"failed runs (no better than the majority class, {_pct(report['majority_accuracy'])} %): "
        f"{len(report['failed_runs'])} of {report['num_trials']}"
    )


def write_report(report: dict, root: Path) -> None:
    """sweep.json, sweep.md, sweep.png: each written whole (temporary file, then rename), as workers may race."""
    from train_mrpc.reporting import finite_or_none

    pid = os.getpid()  # temporary names of this process: two workers may write at the same moment
    for name, write in (
        (
            "sweep.json",
            lambda tmp: tmp.write_text(json.dumps(finite_or_none(report), indent=2, allow_nan=False) + "\n"),
        ),
        ("sweep.md", lambda tmp: tmp.write_text(markdown_report(report))),
        ("sweep.png", lambda tmp: plot_report(report, tmp)),
    ):
        tmp = root / f".{pid}.{name}"  # keeps the suffix: matplotlib picks the format from it
        write(tmp)
        os.replace(tmp, root / name)
    print_report(report)
