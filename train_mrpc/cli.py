"""Command line: ``train-mrpc``, ``python -m train_mrpc`` and ``accelerate launch -m train_mrpc`` all land here."""

from __future__ import annotations

import logging
import os
import sys
from pathlib import Path

from train_mrpc.checkpointing import Preempted, PreemptionHandler
from train_mrpc.errors import JobFailure, UserError, distributed_failure, job_failure

# How a process's error relates to the rest of the job, which decides who prints it (see _print_error).
TOGETHER = "together"  # every process stops at the same point for the same cause (an agreed stop, Ctrl-C)
OWN = "own"  # this process's own finding (bad input): maybe every process's, maybe only this one's
CONSEQUENCE = "consequence"  # another process died or stalled; that one (if it could) said why


def _print_error(message: str, kind: str = OWN) -> None:
    """Print ``train-mrpc: error: <message>`` once per job, however many of its processes fail.

    The rule: TOGETHER lines come from the main process, which speaks for all. An OWN line is printed by the
    first process that reports it: a bad flag every process finds appears once, and a problem only rank 1
    finds appears too. A CONSEQUENCE line is printed only when no process of the job has printed anything:
    a process that failed on bad input said so before it exited (its exit is what the others then see as a
    lost connection), while a SIGKILLed or stalled one could not, and then the first survivor says it. The
    launcher's store (torchrun's agent store, alive as long as the job) counts the reports; where there is
    none (a single process, another launcher, the store gone) each process decides alone, and a repeated
    line beats a lost one.
    """
    if os.environ.get("WORLD_SIZE", "1") == "1":
        first = True
    elif kind == TOGETHER:
        first = os.environ.get("RANK", "0") == "0"
    else:
        first = _first_report(message if kind == OWN else None)
    if first:  # one line, whatever the message holds (a path from the user may contain a newline)
        print(f"train-mrpc: error: {one_line(message)}", file=sys.stderr, flush=True)


# Every character str.splitlines() breaks a line at (a file named "a\x0cb" split the error line in two for any
# reader of the log), written as its escape; everything else as it is.
_LINE_BREAKS = {ord(c): c.encode("unicode_escape").decode() for c in "\n\r\x0b\x0c\x1c\x1d\x1e\x85\u2028\u2029"}


def one_line(message: str) -> str:
    return message.translate(_LINE_BREAKS)


def _first_report(line: str | None) -> bool:
    """Whether this process is the first of its job to report ``line`` (None: to report anything at all).

    A process reporting its own line also marks itself in the store as one that said why it stops, so that a
    survivor does not call it dead without a word (faults.failed_processes).
    """
    import hashlib

    from train_mrpc.faults import agent_store, job_key, mark_reported

    try:
        # The launcher's own store, which outlives every process of the job.
        store = agent_store(timeout_s=3)
        if store is None:
            return True
        if line is not None:
            mark_reported(store)
        # One namespace per job and restart: a restarted job reports its own failures again.
        prefix = job_key("errors")
        if line is not None and store.add(f"{prefix}/line/{hashlib.sha256(line.encode()).hexdigest()}", 1) > 1:
            return False
        return store.add(f"{prefix}/printed", 1) == 1 or line is not None
    except Exception:  # no store to ask (the launcher is gone): better a repeated line than none
        return True


class _StderrHandler(logging.StreamHandler):
    """A log handler that writes to whatever sys.stderr is when it writes, not to the one it was made with: the
    CLI called in-process (a caller's script, the tests) may redirect stderr for each call."""

    @property
    def stream(self):
        return sys.stderr

    @stream.setter
    def stream(self, value) -> None:
        pass


def _leave_broken_job(message: str) -> None:
    """Exit with status 1 after another process of the job died or stalled (see errors.JobFailure)."""
    import signal

    _print_error(message, CONSEQUENCE)
    # torchrun's agent SIGTERMs the survivors as soon as one process dies: this one is leaving anyway.
    signal.signal(signal.SIGTERM, signal.SIG_IGN)
    # The exit handlers run (logging, trackers), then the process ends without the interpreter's teardown:
    # tearing down a broken process group took 1-2 s here, and can abort ("terminate called ...").
    import atexit

    try:
        atexit._run_exitfuncs()
    finally:
        sys.stdout.flush()
        sys.stderr.flush()
        os._exit(1)


def parse_for_run(argv: list[str], prog: str, extra_types: tuple = ()):
    """Parse the flags, then go offline at once if the run needs the Hub and cannot reach it."""
    from train_mrpc.config import SYNTHETIC, parse_config
    from train_mrpc.hub import go_offline_if_unreachable, is_hub_name
    from train_mrpc.synthetic import TINY_MODEL

    parsed = parse_config(argv, prog=prog, extra_types=extra_types)
    config = parsed[0] if extra_types else parsed
    needs_hub = []
    if config.model_name_or_path != TINY_MODEL and is_hub_name(config.model_name_or_path):
        needs_hub.append(config.model_name_or_path)
    if not (config.data_dir or config.train_file or config.dataset == SYNTHETIC):
        needs_hub.append(config.dataset)
    go_offline_if_unreachable(needs_hub)
    return parsed


def run_prefetch(argv: list[str]) -> None:
    """train-mrpc prefetch [training flags]: cache the model, tokenizer and data of that run for offline nodes."""
    from rich.console import Console
    from rich.table import Table

    from train_mrpc.prefetch import prefetch

    config = parse_for_run(argv, prog="train-mrpc prefetch")
    table = Table(title="Ready for HF_HUB_OFFLINE=1", show_header=False, title_justify="left")
    for name, value in prefetch(config):
        table.add_row(name, value)
    Console().print(table)


def end_process_group() -> None:
    """Once per command, after its last run: every rank arrives, then the (gloo/NCCL) group is torn down.

    A rank tearing it down while another still writes its results can abort at exit ("terminate called
    without an active exception"), hence the barrier first.
    """
    from accelerate import PartialState

    state = PartialState()
    state.wait_for_everyone()
    state.destroy_process_group()


def run_reproduce(argv: list[str]) -> None:
    """train-mrpc reproduce [training flags] [--num_seeds N]: the recipe over N seeds, then a report."""
    from train_mrpc.reproduce import ReproduceConfig, reproduce

    config, options = parse_for_run(argv, prog="train-mrpc reproduce", extra_types=(ReproduceConfig,))
    reproduce(config, options.num_seeds)
    end_process_group()


def run_plot(argv: list[str]) -> None:
    """train-mrpc plot OUTPUT_DIR: draw output_dir/training_curves.png again from the run's logs."""
    from train_mrpc.plots import plot_training_curves

    if len(argv) != 1 or argv[0].startswith("-"):
        raise UserError("usage: train-mrpc plot OUTPUT_DIR (a folder a train-mrpc run wrote)")
    if not Path(argv[0]).is_dir():
        raise UserError(f"train-mrpc plot: {argv[0]} is not a folder")
    print(plot_training_curves(argv[0]))


def run_sweep(argv: list[str]) -> None:
    """train-mrpc sweep [training flags] [sweep flags]: a grid x seeds through Optuna's storage, then a report."""
    from train_mrpc.sweep import SweepConfig, sweep

    config, options = parse_for_run(argv, prog="train-mrpc sweep", extra_types=(SweepConfig,))
    sweep(config, options)
    end_process_group()


def run_training(argv: list[str]) -> None:
    from train_mrpc.train import train

    train(parse_for_run(argv, prog="train-mrpc"))
    end_process_group()


def main(argv: list[str] | None = None) -> None:
    if argv is not None:  # called in-process (tests, a caller's script): that process goes on
        return run_command(argv)
    try:
        run_command(sys.argv[1:])
    finally:
        # The process ends here. Its last garbage collection walks the millions of objects torch and
        # transformers created at import, ~0.5-1 s of a run's wall time (8.2-8.7 s against 7.2-7.8 s for a
        # one-step MiniLM run, 2-core Xeon); nothing left is ours to finalize (files, trackers and process
        # groups are closed above, atexit handlers still run), so it is skipped.
        import gc

        gc.freeze()


def run_command(argv: list[str]) -> None:
    logger = logging.getLogger("train_mrpc")
    if os.environ.get("RANK", "0") == "0" and not logger.handlers:  # our warnings (a skipped checkpoint), once
        handler = _StderrHandler()
        handler.setFormatter(logging.Formatter("train-mrpc: %(levelname)s: %(message)s"))
        logger.addHandler(handler)
    if argv[:1] not in (["prefetch"], ["plot"], ["bench"]):  # commands that train: they check for the signal
        PreemptionHandler.install_early()  # a SIGTERM during imports and set-up ends with status 75 too
    try:
        if argv[:1] == ["prefetch"]:
            run_prefetch(argv[1:])
        elif argv[:1] == ["plot"]:
            run_plot(argv[1:])
        elif argv[:1] == ["reproduce"]:
            run_reproduce(argv[1:])
        elif argv[:1] == ["sweep"]:
            run_sweep(argv[1:])
        elif argv[:1] == ["bench"]:  # train-mrpc bench tokenization|steps|end-to-end|tables [flags]
            from train_mrpc.bench import main as run_bench

            run_bench(argv[1:])
        else:
            run_training(argv)
    except JobFailure as err:
        _leave_broken_job(str(err))
    except UserError as err:
        if distributed_failure(err):  # a wrapper (a failed save) around another process's failure
            _leave_broken_job(str(job_failure(err, None)))
        _print_error(str(err))
        sys.exit(2)
    except Preempted as stop:
        _print_error(str(stop), TOGETHER)
        sys.exit(stop.exit_status)
    except KeyboardInterrupt:
        _print_error("interrupted", TOGETHER)
        sys.exit(130)
    except RuntimeError as err:
        # A collective outside a training run (between a reproduce's seeds, the last barrier) that failed
        # because another process died or stalled; any other RuntimeError is a bug to see whole.
        if distributed_failure(err) is None:
            raise
        _leave_broken_job(str(job_failure(err, None)))
    except OSError as err:
        # Last resort for a path from user input (--output_dir, data, model, caches) that no check turned into
        # a message: disk full, read-only, no permission, missing. One line naming the cause and the path; any
        # other OSError (no errno, a network error) is a bug to see whole, so it is raised again.
        import errno

        user_path_errors = {
            errno.ENOSPC,
            getattr(errno, "EDQUOT", errno.ENOSPC),
            errno.EROFS,
            errno.EACCES,
            errno.EPERM,
            errno.ENOENT,
            errno.ENOTDIR,
            errno.EISDIR,
            errno.ENAMETOOLONG,
            errno.ELOOP,
            errno.EIO,
            errno.EFBIG,
            errno.EEXIST,
        }
        if err.errno not in user_path_errors:
            raise
        cause = os.strerror(err.errno).lower()
        paths = [os.fsdecode(p) for p in (err.filename, err.filename2) if p is not None]
        where = " -> ".join(paths) or "a file of this run (--output_dir, the data, the model or the Hugging Face cache)"
        if err.errno == errno.EEXIST and paths and os.path.lexists(paths[0]) and not os.path.isdir(paths[0]):
            cause = "a file stands where a folder is needed (remove or rename it)"  # makedirs met a file
        _print_error(f"{cause}: {where}")
        sys.exit(2)
