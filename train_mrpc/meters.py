"""Loss and throughput meters of a training run, kept on the device: no host synchronisation per step.

They are read at logging steps (where processes synchronise anyway) and saved with each checkpoint, so
that a resumed run logs exactly the losses of an uninterrupted one.
"""

from __future__ import annotations

import math
import time
from contextlib import contextmanager


class Meters:
    """Loss since the last logging step, real tokens and samples trained on, and wall-clock time."""

    def __init__(self, device, samples: int, record: dict | None = None, rank: int = 0) -> None:
        import torch

        record = record or {}
        # Checkpoints hold every process's running sums (a list by rank): each process takes back its own.
        self.loss_sum = torch.tensor(_own(record.get("loss_sum"), rank, 0.0), device=device)
        self.batches = int(record.get("batches", 0))
        self.tokens = torch.tensor(_own(record.get("tokens"), rank, 0), device=device, dtype=torch.int64)
        self.last_loss = record.get("last_loss")
        self.last_loss = float("nan") if self.last_loss is None else float(self.last_loss)
        self.tokens_at_start, self.samples_at_start = self.tokens.clone(), samples  # this run's work only
        self.start = self.window_start = time.perf_counter()
        self.window_samples = samples
        self.paused_time = 0.0

    def add(self, loss, batch: dict) -> None:
        self.loss_sum += loss
        self.tokens += batch["attention_mask"].sum()
        self.batches += 1

    def synchronise(self, accelerator, stop: bool) -> tuple[float, bool]:
        """The mean loss over processes since the last log, and whether any process asked to stop."""
        import torch

        flag = torch.tensor(float(stop), device=self.loss_sum.device)
        synced = accelerator.reduce(torch.stack([self.loss_sum / self.batches, flag]), "mean")
        self.last_loss, any_stop = synced[0].item(), synced[1].item() > 0
        return self.last_loss, any_stop

    def samples_per_second(self, samples: int) -> float:
        return (samples - self.window_samples) / (time.perf_counter() - self.window_start)

    def start_window(self, samples: int) -> None:
        self.loss_sum.zero_()
        self.batches, self.window_start, self.window_samples = 0, time.perf_counter(), samples

    @contextmanager
    def paused(self):
        """Time spent inside (evaluation) counts neither in throughput windows nor in training time."""
        begin = time.perf_counter()
        try:
            yield
        finally:
            spent = time.perf_counter() - begin
            self.paused_time += spent
            self.window_start += spent

    def elapsed(self) -> float:
        return time.perf_counter() - self.start

    def samples_this_run(self, samples: int) -> int:
        return samples - self.samples_at_start

    def tokens_this_run(self, accelerator) -> int:
        return int(accelerator.reduce(self.tokens - self.tokens_at_start, "sum").item())

    def state_dict(self, accelerator) -> dict:
        """What a checkpoint keeps: every process's running sums (a collective: all processes call it)."""
        loss_sums = accelerator.gather(self.loss_sum.reshape(1).float()).tolist()
        tokens = accelerator.gather(self.tokens.reshape(1)).tolist()
        return {
            "loss_sum": loss_sums,
            "loss_sum_all_processes": math.fsum(loss_sums),
            "batches": self.batches,
            "tokens": [int(t) for t in tokens],
            "last_loss": self.last_loss if math.isfinite(self.last_loss) else None,
        }


def _own(values, rank: int, default):
    if values is None:
        return default
    return values[rank] if isinstance(values, list) else values
