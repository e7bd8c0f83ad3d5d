"""Model FLOPs of a training step, and the device's peak: the two halves of MFU (model FLOPs utilisation).

One implementation, used by the training loop (train_log.jsonl, all_results.json) and the step benchmark.
"""

from __future__ import annotations

import json
import math
import os
import time
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


def count_parameters(model) -> dict:
    """Parameters by how often their matmuls run: per token (encoder), per sequence (pooler, head), never
    (embedding tables: a lookup, not a matmul)."""
    import torch

    embedding = sum(p.numel() for m in model.modules() if isinstance(m, torch.nn.Embedding) for p in m.parameters())
    per_sequence = sum(
        p.numel()
        for name, m in model.named_modules()
        if name.split(".")[-1] in ("pooler", "classifier") and name.count(".") <= 1
        for p in m.parameters()
    )
    total = sum(p.numel() for p in model.parameters())
    return {
        "total": total,
        "embedding": embedding,
        "per_sequence": per_sequence,
        "per_token": total - embedding - per_sequence,
    }


def training_flops(params: dict, config, lengths: list[int]) -> float:
    """Forward + backward FLOPs of sequences of these lengths: 6 x parameters x tokens (each weight: a
    multiply-add forward, two backward) plus attention's scores and weighted sum, 12 x layers x hidden x T^2."""
    layers, hidden = config.num_hidden_layers, config.hidden_size
    return sum(6 * params["per_token"] * t + 6 * params["per_sequence"] + 12 * layers * hidden * t * t for t in lengths)


def batch_flops(params: dict, config, batch_size: int, length: int) -> float:
    """``training_flops`` of one padded batch (the work the device does, padding included)."""
    return batch_size * (
        6 * params["per_token"] * length
        + 6 * params["per_sequence"]
        + 12 * config.num_hidden_layers * config.hidden_size * length * length
    )


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


# Other processes using more than this many cores while the CPU's peak is measured: the figure is kept for
# this run only (a cached fp32 figure taken on a busy 2-core machine, 0.105 against 0.35 TFLOP/s, once gave
# every later run an MFU of 143 %).
QUIET_OTHER_CORES = 0.25


def cpu_peak(precision: str, cache_dir: str | Path | None = None) -> tuple[float, float | None]:
    """This CPU's matmul FLOP/s in this precision, measured once (~1 s) and cached per CPU, torch and threads.

    Returns (FLOP/s, cores other processes used meanwhile: None when read from the cache or unknown). A figure
    measured while other processes used more than QUIET_OTHER_CORES is too low, so it is not cached: the next
    run measures again. The cache file is ~/.cache/train_mrpc/cpu_peak.json."""
    import torch

    from train_mrpc.environment import OtherCpu, cpu_info

    dtype = {"bf16": torch.bfloat16, "fp16": torch.float16}.get(precision, torch.float32)
    cpu = cpu_info()["model"]
    # 2048-square matmuls: at 1024, a 2-core Xeon's bf16 (AMX) reached only 1.1-1.27 of the 2.04 TFLOP/s it
    # reaches at 2048.
    size = 2048
    key = f"{cpu}|torch {torch.__version__}|{torch.get_num_threads()} threads|{precision}|{size}"
    cache = Path(cache_dir or os.environ.get("XDG_CACHE_HOME", Path.home() / ".cache")) / "train_mrpc" / "cpu_peak.json"
    try:
        known = json.loads(cache.read_text())
    except (OSError, ValueError, RecursionError):
        known = {}
    if not isinstance(known, dict):  # a damaged or edited cache is measured again, and rewritten
        known = {}
    cached = known.get(key)
    if isinstance(cached, float) and 0 < cached < math.inf:  # as written below; NaN, Infinity or text are not
        return cached, None
    a, b = torch.randn(size, size, dtype=dtype), torch.randn(size, size, dtype=dtype)
    torch.mm(a, b)
    best = float("inf")
    # At least half a second: the CPU counters that tell other processes' use tick every 10 ms.
    with OtherCpu() as other:
        began, repeats = time.perf_counter(), 0
        while repeats < 5 or time.perf_counter() - began < 0.5:
            start = time.perf_counter()
            torch.mm(a, b)
            best, repeats = min(best, time.perf_counter() - start), repeats + 1
    peak = 2 * size**3 / best
    if other.cores is not None and other.cores > QUIET_OTHER_CORES:
        return peak, other.cores
    known[key] = peak
    try:
        cache.parent.mkdir(parents=True, exist_ok=True)
        cache.write_text(json.dumps(known, indent=2))
    except OSError:
        pass  # an unwritable cache only costs the measurement next time
    return peak, other.cores


def device_peak(device, precision: str, override_tflops: float | None = None) -> tuple[float | None, str]:
    """(peak FLOP/s, where the figure comes from) for MFU: a --peak_tflops override, the GPU table, or a
    measured CPU matmul."""
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
        peak, other_cores = cpu_peak(precision)
        source = f"measured {precision} matmul on this CPU"
        if other_cores is not None and other_cores > QUIET_OTHER_CORES:
            source += f" while other processes used {other_cores:.1f} cores (too low, so not cached; MFU reads high)"
        return peak, source
    return None, f"no peak known for {device.type}: pass --peak_tflops"
