"""Model FLOPs of a training step, and the device's peak: the two halves of MFU (model FLOPs utilisation).

One implementation, used by the training loop (train_log.jsonl, all_results.json) and the step benchmark.
"""

from __future__ import annotations

import contextlib
import json
import math
import os
import time
from dataclasses import dataclass
from pathlib import Path

# Dense (no sparsity) tensor-core peaks from the vendors' datasheets, in TFLOP/s, for the precisions a run
# computes its matmuls in: bf16/fp16 autocast, fp32 with TF32 allowed, plain fp32.
GPU_PEAK_TFLOPS = {
    "H200": {"bf16": 989, "fp16": 989, "tf32": 495, "fp32": 67},
    "H100 SXM": {"bf16": 989, "fp16": 989, "tf32": 495, "fp32": 67},
    "H100 80GB HBM3": {"bf16": 989, "fp16": 989, "tf32": 495, "fp32": 67},  # the SXM part's name in nvidia-smi
    "H100 PCIe": {"bf16": 756, "fp16": 756, "tf32": 378, "fp32": 51},
    "A100": {"bf16": 312, "fp16": 312, "tf32": 156, "fp32": 19.5},
    "L40S": {"bf16": 362, "fp16": 362, "tf32": 183, "fp32": 91.6},
    "L4": {"bf16": 121, "fp16": 121, "tf32": 60, "fp32": 30.3},
    "A10": {"bf16": 125, "fp16": 125, "tf32": 62.5, "fp32": 31.2},
    "RTX 4090": {"bf16": 165, "fp16": 165, "tf32": 82.6, "fp32": 82.6},
    "V100": {"fp16": 125, "fp32": 15.7},
    "T4": {"fp16": 65, "fp32": 8.1},
}


def count_parameters(model, frozen_layers: int = 0) -> dict:
    """Parameters by how often their matmuls run: per token (encoder), per sequence (pooler, head), never
    (embedding tables: a lookup, not a matmul); and how much of the encoder is frozen (--freeze_lower_layers:
    those layers run forward only). Count after freezing: a parameter that requires no gradient is frozen."""
    import torch

    embedding = sum(p.numel() for m in model.modules() if isinstance(m, torch.nn.Embedding) for p in m.parameters())
    per_sequence = sum(
        p.numel()
        for name, m in model.named_modules()
        if name.split(".")[-1] in ("pooler", "classifier") and name.count(".") <= 1
        for p in m.parameters()
    )
    total = sum(p.numel() for p in model.parameters())
    frozen_embedding = sum(
        p.numel()
        for m in model.modules()
        if isinstance(m, torch.nn.Embedding)
        for p in m.parameters()
        if not p.requires_grad
    )
    frozen = sum(p.numel() for p in model.parameters() if not p.requires_grad)
    return {
        "total": total,
        "embedding": embedding,
        "per_sequence": per_sequence,
        "per_token": total - embedding - per_sequence,
        "frozen_per_token": frozen - frozen_embedding,  # the frozen layers' and the embeddings' LayerNorm
        "frozen_layers": frozen_layers,
    }


def sequence_flops(params: dict, config, length: int) -> float:
    """Forward + backward FLOPs of one sequence of ``length`` tokens: 6 x parameters x tokens for a trained weight
    (a multiply-add forward, two backward), 2 x for a frozen one (forward only: backward ends above it), plus
    attention's scores and weighted sum, 12 x hidden x T^2 a trained layer and 4 x a frozen one."""
    frozen, frozen_layers = params.get("frozen_per_token", 0), params.get("frozen_layers", 0)
    trained_layers = config.num_hidden_layers - frozen_layers
    return (
        6 * (params["per_token"] - frozen) * length
        + 2 * frozen * length
        + 6 * params["per_sequence"]
        + (12 * trained_layers + 4 * frozen_layers) * config.hidden_size * length * length
    )


def training_flops(params: dict, config, lengths: list[int]) -> float:
    """``sequence_flops`` of sequences of these lengths."""
    return sum(sequence_flops(params, config, t) for t in lengths)


def batch_flops(params: dict, config, batch_size: int, length: int) -> float:
    """``training_flops`` of one padded batch (the work the device does, padding included)."""
    return batch_size * sequence_flops(params, config, length)


def compute_precision(device_type: str, mixed_precision: str, tf32: bool) -> str:
    if mixed_precision in ("bf16", "fp16"):
        return mixed_precision
    return "tf32" if device_type == "cuda" and tf32 else "fp32"


def gpu_peak(name: str, precision: str) -> float | None:
    """The datasheet peak (FLOP/s) of the GPU whose name contains a table entry, or None."""
    for model in sorted(GPU_PEAK_TFLOPS, key=len, reverse=True):  # "H100 PCIe" before "H100"
        if model.lower() in name.lower():
            tflops = GPU_PEAK_TFLOPS[model].get(precision)
            return tflops * 1e12 if tflops else None
    return None


# MFU's denominator on a CPU: the best of several measurements of a square matmul, kept as a running maximum per
# CPU, torch, threads, precision and size in ~/.cache/train_mrpc/cpu_peak.json. Other work on the host only ever
# lowers a measurement, and a process cannot see all of it (three processes a minute apart on a 2-core Xeon
# measured bf16 at 1.41, 1.89 and 0.63 TFLOP/s), so no one figure is trusted: each raises the kept maximum or
# leaves it, never lowers it, and MFU is always over the kept maximum. A run measures (~0.5 s) until
# PEAK_MEASUREMENTS quiet measurements are kept; later runs use the maximum without measuring.
PEAK_MEASUREMENTS = 3
# Measurements count only at least this far apart: the host's load changes over minutes, so measurements seconds
# apart (a run's sibling processes, a sweep's back-to-back runs) sample the same load: one chance of a quiet
# moment, not three. A run that finds a measurement younger than this uses the kept figure without measuring.
PEAK_APART_S = 60.0
# Other processes using more than this many cores during a measurement: visible load. Such a figure still raises
# the kept maximum when it is higher (it can only be too low), but it does not count toward PEAK_MEASUREMENTS:
# three runs on a busy machine would otherwise stop the measuring at a figure known to be low, and every later
# MFU would read high (a busy 2-core machine's fp32 figure, 0.105 against 0.35 TFLOP/s, once gave an MFU of 143 %).
QUIET_OTHER_CORES = 0.25


@dataclass(frozen=True)
class CpuPeak:
    """The kept figure MFU is over, how it was reached, and what this run measured (if it measured)."""

    precision: str
    flops: float  # the kept maximum, FLOP/s: MFU's denominator
    measurements: int  # how many measurements it is the best of, this run's included
    quiet: int  # how many of them count toward PEAK_MEASUREMENTS (quiet, PEAK_APART_S apart)
    measured: float | None = None  # this run's measurement; None when it used the kept figure without measuring
    other_cores: float | None = None  # cores other processes used during this run's measurement (None: unknown)

    def source(self) -> str:
        """``peak_flops_source``: which figure MFU is over, and this run's measurement beside it."""
        n, matmuls = self.measurements, "matmul" if self.measurements == 1 else "matmuls"
        text = f"best of {n} measured {self.precision} {matmuls} on this CPU ({self.flops / 1e12:.3g} TFLOP/s"
        if self.measured is not None:
            text += f"; this run measured {self.measured / 1e12:.3g}"
            if self.other_cores is not None and self.other_cores > QUIET_OTHER_CORES:
                text += f" while other processes used {self.other_cores:.1f} cores"
        return text + ")"


def cpu_peak_cache(cache_dir: str | Path | None = None) -> Path:
    """The file the CPU peaks are kept in: CACHE_DIR, $XDG_CACHE_HOME or ~/.cache, then train_mrpc/cpu_peak.json."""
    return Path(cache_dir or os.environ.get("XDG_CACHE_HOME", Path.home() / ".cache")) / "train_mrpc" / "cpu_peak.json"


def cpu_peak_key(precision: str, size: int = 2048) -> str:
    """What a kept peak is filed under: a figure holds for one CPU model, torch, thread count, precision and size."""
    import torch

    from train_mrpc.environment import cpu_info

    return f"{cpu_info()['model']}|torch {torch.__version__}|{torch.get_num_threads()} threads|{precision}|{size}"


def cpu_peak(precision: str, cache_dir: str | Path | None = None, size: int = 2048) -> CpuPeak:
    """This CPU's matmul FLOP/s in this precision: the best of the measurements kept in the cache, measured
    (~0.5 s) once more when fewer than PEAK_MEASUREMENTS quiet ones are kept and none is younger than PEAK_APART_S.

    2048-square matmuls by default: at 1024, a 2-core Xeon's bf16 (AMX) reached only 1.1-1.27 of the 2.04 TFLOP/s
    it reaches at 2048. An unreadable or damaged cache is measured anew and rewritten; an unwritable one costs a
    measurement every run."""
    key, cache = cpu_peak_key(precision, size), cpu_peak_cache(cache_dir)
    # Locked while reading, measuring and writing: two runs never measure at once (each would be the other's load),
    # and one that waited finds the other's measurement fresh and uses the kept figure.
    with _locked(cache):
        kept = _read_peaks(cache).get(key)
        if kept is not None and (
            kept["quiet_measurements"] >= PEAK_MEASUREMENTS or abs(_now() - kept["last_measured_unix"]) < PEAK_APART_S
        ):
            return CpuPeak(precision, kept["best_flops"], kept["measurements"], kept["quiet_measurements"])
        measured, other_cores = _measure_matmul(precision, size)
        quiet = other_cores is None or other_cores <= QUIET_OTHER_CORES  # None: not Linux, load unknown
        # Read again: a process that could not take the lock may have written meanwhile; its figure stays too.
        known = _read_peaks(cache)
        kept = known.get(key) or {"best_flops": 0.0, "measurements": 0, "quiet_measurements": 0}
        kept = known[key] = {
            "best_flops": max(kept["best_flops"], measured),
            "measurements": kept["measurements"] + 1,
            "quiet_measurements": kept["quiet_measurements"] + quiet,
            "last_measured_unix": _now(),
        }
        _write_peaks(cache, known)
    return CpuPeak(
        precision, kept["best_flops"], kept["measurements"], kept["quiet_measurements"], measured, other_cores
    )


def _now() -> float:
    return time.time()  # wall-clock seconds: compared across processes and runs (tests replace it)


def _measure_matmul(precision: str, size: int) -> tuple[float, float | None]:
    """(FLOP/s of the fastest of SIZE-square matmuls over at least half a second, cores other processes used
    meanwhile or None where unknown)."""
    import torch

    from train_mrpc.environment import OtherCpu

    dtype = {"bf16": torch.bfloat16, "fp16": torch.float16}.get(precision, torch.float32)
    # A generator of its own: drawn from the global one, whether a run measured would shift its dropout masks.
    generator = torch.Generator().manual_seed(0)
    a, b = (torch.randn(size, size, generator=generator).to(dtype) for _ in range(2))
    torch.mm(a, b)
    best = float("inf")
    # At least half a second: the CPU counters that tell other processes' use tick every 10 ms.
    with OtherCpu() as other:
        began, repeats = time.perf_counter(), 0
        while repeats < 5 or time.perf_counter() - began < 0.5:
            start = time.perf_counter()
            torch.mm(a, b)
            best, repeats = min(best, time.perf_counter() - start), repeats + 1
    return 2 * size**3 / max(best, 1e-9), other.cores


def _positive(value) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool) and 0 < value < math.inf


def _count(value) -> bool:
    return isinstance(value, int) and not isinstance(value, bool) and value >= 0


def _time(value) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool) and 0 <= value < math.inf


def _kept_peak(value) -> dict | None:
    """A cache entry as cpu_peak writes it, or None for one that holds no usable figure (measured anew)."""
    if _positive(value):  # the format before the running maximum: one quiet measurement, taken some time ago
        return {"best_flops": float(value), "measurements": 1, "quiet_measurements": 1, "last_measured_unix": 0.0}
    if not isinstance(value, dict) or not _positive(value.get("best_flops")):
        return None
    n, quiet, last = value.get("measurements"), value.get("quiet_measurements"), value.get("last_measured_unix")
    if not (_count(n) and _count(quiet) and quiet <= n and n >= 1 and _time(last)):
        # A damaged count: the figure stands (damage is no measurement, so it cannot lower it), measured again
        # until enough.
        n, quiet, last = 1, 0, 0.0
    return {
        "best_flops": float(value["best_flops"]),
        "measurements": n,
        "quiet_measurements": quiet,
        "last_measured_unix": float(last),
    }


def _read_peaks(cache: Path) -> dict:
    """The cache's usable entries; nothing from a missing, unreadable or damaged file (a crash or an edit can
    leave anything in it: a list, cut or nested JSON, text, negative or NaN figures)."""
    try:
        known = json.loads(cache.read_text())
    except (OSError, ValueError, RecursionError):
        return {}
    if not isinstance(known, dict):
        return {}
    return {key: entry for key, value in known.items() if (entry := _kept_peak(value)) is not None}


def _write_peaks(cache: Path, known: dict) -> None:
    """Written whole (reporting.write_json), so a reader never sees half of it; unwritable: nothing kept."""
    from train_mrpc.reporting import write_json

    try:
        write_json(cache, known)
    except OSError:
        pass  # an unwritable cache only costs a measurement next time


@contextlib.contextmanager
def _locked(cache: Path, timeout: float = 15.0):
    """The block run holding an exclusive lock on CACHE.lock (flock: released when a holder dies). Where there is
    none to take (no fcntl, an unwritable folder, a file system without locks) or a holder keeps it past
    ``timeout`` (a stopped process), the block runs unlocked: cpu_peak's second read keeps others' figures."""
    try:
        import fcntl

        cache.parent.mkdir(parents=True, exist_ok=True)
        handle = open(cache.with_name(cache.name + ".lock"), "a")
    except (ImportError, OSError):
        handle = None
    if handle is None:
        yield
        return
    with handle:
        locked, deadline = False, time.monotonic() + timeout
        while not locked:
            try:
                fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
                locked = True
            except BlockingIOError:
                if time.monotonic() > deadline:
                    break
                time.sleep(0.05)
            except OSError:
                break
        try:
            yield
        finally:
            if locked:
                fcntl.flock(handle, fcntl.LOCK_UN)


def device_peak(device, precision: str, override_tflops: float | None = None) -> tuple[float | None, str]:
    """(peak FLOP/s, where the figure comes from) for MFU: a --peak_tflops override, the GPU table, or the best
    of the CPU matmuls measured on this machine (``cpu_peak``)."""
    import torch

    if override_tflops:
        return override_tflops * 1e12, "--peak_tflops"
    if device.type == "cuda":
        name = torch.cuda.get_device_name(device)
        peak = gpu_peak(name, precision)
        return peak, (
            f"datasheet {name} {precision}" if peak else f"{name} is not in the peak table: pass --peak_tflops"
        )
    if device.type == "cpu":
        peak = cpu_peak(precision)
        return peak.flops, peak.source()
    return None, f"no peak known for {device.type}: pass --peak_tflops"
