"""``--profile``: a torch.profiler window over chosen optimizer steps, one trace per process.

The traces (``output_dir/profile/rank<N>.*.pt.trace.json``) open in TensorBoard's profiler plugin
(``tensorboard --logdir output_dir/profile``) and in ui.perfetto.dev; the top operators by self time are
printed at the end of the run and kept in ``profile/top_operators.txt``.
"""

from __future__ import annotations

from pathlib import Path

from train_mrpc.errors import UserError

PROFILE_DIR = "profile"


class NoProfiler:
    """What the loop steps when --profile is off: nothing."""

    def __enter__(self):
        return self

    def __exit__(self, *exc) -> None:
        pass

    def step(self) -> None:
        pass

    def report(self) -> str | None:
        return None


class StepProfiler(NoProfiler):
    """torch.profiler over optimizer steps skip+1 ... skip+warmup+active (warm-up steps recorded, not kept)."""

    def __init__(self, output_dir: Path, rank: int, cuda: bool, skip: int, warmup: int, active: int) -> None:
        import torch

        self.folder = Path(output_dir) / PROFILE_DIR
        self.folder.mkdir(parents=True, exist_ok=True)
        self.cuda = cuda
        activities = [torch.profiler.ProfilerActivity.CPU] + ([torch.profiler.ProfilerActivity.CUDA] if cuda else [])
        self.profiler = torch.profiler.profile(
            activities=activities,
            schedule=torch.profiler.schedule(skip_first=skip, wait=0, warmup=warmup, active=active, repeat=1),
            on_trace_ready=torch.profiler.tensorboard_trace_handler(str(self.folder), worker_name=f"rank{rank}"),
        )

    def __enter__(self):
        self.profiler.__enter__()
        return self

    def __exit__(self, *exc) -> None:
        self.profiler.__exit__(*exc)

    def step(self) -> None:
        self.profiler.step()

    def report(self, rows: int = 15) -> str | None:
        """The top operators by self time in the recorded window (CUDA time on a GPU), also written to a file."""
        try:
            averages = self.profiler.key_averages()
        except (AssertionError, RuntimeError):  # the run ended before the window was recorded
            return None
        if not len(averages):
            return None
        table = averages.table(sort_by="self_cuda_time_total" if self.cuda else "self_cpu_time_total", row_limit=rows)
        (self.folder / "top_operators.txt").write_text(table + "\n")
        return table


def step_profiler(config, accelerator, output_dir: Path) -> NoProfiler:
    if not config.profile:
        return NoProfiler()
    return StepProfiler(
        output_dir,
        accelerator.process_index,
        accelerator.device.type == "cuda",
        config.profile_skip_steps,
        config.profile_warmup_steps,
        config.profile_steps,
    )


def check_profile_window(config, steps_to_run: int) -> None:
    """Refuse a --profile window that ends after the run does (it left an empty profile folder and no table)."""
    needed = config.profile_skip_steps + config.profile_warmup_steps + config.profile_steps
    if config.profile and steps_to_run < needed:
        raise UserError(
            f"--profile records optimizer steps {needed - config.profile_steps + 1} to {needed} of this run "
            f"(--profile_skip_steps {config.profile_skip_steps}, --profile_warmup_steps "
            f"{config.profile_warmup_steps}, --profile_steps {config.profile_steps}), but it has "
            f"{steps_to_run} to run: lower them, or run longer"
        )
