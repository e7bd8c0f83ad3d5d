"""Loss and throughput meters of a training run, kept on the device: no host synchronisation per step.

They are read at logging steps (where processes synchronise anyway) and saved with each checkpoint, so
that a resumed run logs exactly the losses of an uninterrupted one.
"""

from __future__ import annotations

import math
import time
from contextlib import contextmanager


class Meters:
    """Loss and gradient norms since the last logging step, real tokens and samples trained on, model FLOPs,
    and where the wall-clock time went (waiting for data, saving checkpoints, evaluating, the steps themselves)."""

    def __init__(
        self,
        device,
        samples: int,
        record: dict | None = None,
        rank: int = 0,
        prior_train_seconds: float = 0.0,
        prior_eval_seconds: float = 0.0,
    ) -> None:
        import torch

        record = record or {}
        # Checkpoints hold every process's running sums (a list by rank): each process takes back its own.
        self.loss_sum = torch.tensor(_own(record.get("loss_sum"), rank, 0.0), device=device)
        self.batches = int(record.get("batches", 0))
        self.tokens = torch.tensor(_own(record.get("tokens"), rank, 0), device=device, dtype=torch.int64)
        self.last_loss = record.get("last_loss")
        self.last_loss = float("nan") if self.last_loss is None else float(self.last_loss)
        # The window's pre-clip gradient norms: [sum of the finite ones, their count, their max, non-finite count].
        # Every process holds the same global norm, so one list serves all of them.
        self.grad_norms = torch.tensor(
            record.get("grad_norms", [0.0, 0.0, 0.0, 0.0]), device=device, dtype=torch.float32
        )
        # Per-process totals of the whole run (earlier segments included), and the same since the last log.
        self.flops = float(_own(record.get("flops"), rank, 0.0))
        self.data_wait = float(_own(record.get("data_wait_s"), rank, 0.0))
        self.checkpointing = float(_own(record.get("checkpoint_s"), rank, 0.0))
        self.window_flops = self.window_data_wait = self.window_checkpointing = 0.0
        self.start = self.window_start = time.perf_counter()
        self.window_samples = samples
        self.paused_time = 0.0
        # Time of the run's earlier segments (before a resume): results describe the whole run.
        self.prior_train_seconds, self.prior_eval_seconds = prior_train_seconds, prior_eval_seconds

    def timed(self, batches):
        """The batches of ``batches``, counting the time spent waiting for each (loading, collating, copying)."""
        iterator = iter(batches)
        while True:
            start = time.perf_counter()
            try:
                batch = next(iterator)
            except StopIteration:
                return
            waited = time.perf_counter() - start
            self.data_wait += waited
            self.window_data_wait += waited
            yield batch

    def add(self, loss, batch: dict, flops: float = 0.0, tokens=None) -> None:
        """Count one micro-batch: its loss, its real tokens (``tokens``, a host int or a device tensor; by default
        its attention mask's sum, which static shapes' filler rows would inflate) and its FLOPs."""
        self.loss_sum += loss
        self.tokens += batch["attention_mask"].sum() if tokens is None else tokens
        self.batches += 1
        self.flops += flops
        self.window_flops += flops

    def add_grad_norm(self, grad_norm) -> None:
        """Count one optimizer step's global gradient norm (a tensor or float; on the device, no host sync)."""
        import torch

        norm = torch.as_tensor(grad_norm, device=self.grad_norms.device).to(torch.float32).reshape(())
        finite = torch.isfinite(norm)
        kept = torch.where(finite, norm, 0.0)
        self.grad_norms += torch.stack([kept, finite.float(), torch.zeros_like(kept), (~finite).float()])
        self.grad_norms[2] = torch.maximum(self.grad_norms[2], kept)

    def grad_norm_figures(self) -> dict:
        """The window's pre-clip gradient norm: mean and max over finite steps, and how many were not finite
        (fp16 overflows, which the scaler skips). None where no norm was measured (clipping off)."""
        total, finite, largest, nonfinite = self.grad_norms.tolist()
        if finite + nonfinite == 0:
            return {"grad_norm": None, "grad_norm_max": None, "nonfinite_grad_norm_steps": 0}
        return {
            "grad_norm": total / finite if finite else None,
            "grad_norm_max": largest if finite else None,
            "nonfinite_grad_norm_steps": int(nonfinite),
        }

    def checkpointed(self, seconds: float) -> None:
        self.checkpointing += seconds
        self.window_checkpointing += seconds

    def window_figures(self, samples: int, peak_flops: float | None) -> dict:
        """Throughput and time breakdown since the last log (this process), for train_log.jsonl."""
        seconds = time.perf_counter() - self.window_start
        achieved = self.window_flops / seconds
        return {
            "samples_per_second": (samples - self.window_samples) / seconds,
            "data_wait_s": self.window_data_wait,
            "checkpoint_s": self.window_checkpointing,
            "tflops": achieved / 1e12,
            "mfu": achieved / peak_flops if peak_flops else None,
        }

    def run_figures(self, peak_flops: float | None, train_seconds: float) -> dict:
        """The whole run's time breakdown and utilisation (this process), for all_results.json."""
        train = max(train_seconds, 1e-9)
        achieved = self.flops / train
        return {
            "time_breakdown_s": {
                "training_steps": max(train - self.data_wait - self.checkpointing, 0.0),
                "data_wait": self.data_wait,
                "checkpoint_saving": self.checkpointing,
                "evaluation": self.eval_seconds(),
            },
            "achieved_tflops": achieved / 1e12,
            "mfu": achieved / peak_flops if peak_flops else None,
        }

    def synchronise(self, accelerator, stop: bool) -> tuple[float, bool]:
        """The mean loss over processes since the last log, and whether any process asked to stop."""
        import torch

        flag = torch.tensor(float(stop), device=self.loss_sum.device)
        synced = accelerator.reduce(torch.stack([self.loss_sum / self.batches, flag]), "mean")
        self.last_loss, any_stop = synced[0].item(), synced[1].item() > 0
        return self.last_loss, any_stop

    def start_window(self, samples: int) -> None:
        self.loss_sum.zero_()
        self.grad_norms.zero_()
        self.batches, self.window_start, self.window_samples = 0, time.perf_counter(), samples
        self.window_flops = self.window_data_wait = self.window_checkpointing = 0.0

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

    def train_seconds(self) -> float:
        """Training time of the whole run so far, every segment, evaluation excluded."""
        return self.prior_train_seconds + self.elapsed() - self.paused_time

    def eval_seconds(self) -> float:
        return self.prior_eval_seconds + self.paused_time

    def tokens_all_processes(self, accelerator) -> int:
        """Real tokens trained on by every process over the whole run (a collective)."""
        return int(accelerator.reduce(self.tokens.clone(), "sum").item())

    def state_dict(self, accelerator) -> dict:
        """What a checkpoint keeps: every process's running sums (a collective: all processes call it)."""
        import torch

        loss_sums = accelerator.gather(self.loss_sum.reshape(1).float()).tolist()
        tokens = accelerator.gather(self.tokens.reshape(1)).tolist()
        extra = accelerator.gather(
            torch.tensor(
                [[self.flops, self.data_wait, self.checkpointing]], device=self.loss_sum.device, dtype=torch.float64
            )
        ).tolist()
        return {
            "flops": [row[0] for row in extra],
            "data_wait_s": [row[1] for row in extra],
            "checkpoint_s": [row[2] for row in extra],
            "loss_sum": loss_sums,
            "loss_sum_all_processes": math.fsum(loss_sums),
            "batches": self.batches,
            "grad_norms": self.grad_norms.tolist(),
            "tokens": [int(t) for t in tokens],
            "last_loss": self.last_loss if math.isfinite(self.last_loss) else None,
        }


def peak_memory(device) -> tuple[int, str]:
    """(bytes, what was measured): the CUDA allocator's peak on a GPU, the process's peak RSS elsewhere."""
    if device.type == "cuda":
        import torch

        return int(torch.cuda.max_memory_allocated(device)), "cuda_max_allocated"
    import resource

    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024, "process_peak_rss"  # Linux: KiB


def _own(values, rank: int, default):
    if values is None:
        return default
    return values[rank] if isinstance(values, list) else values
