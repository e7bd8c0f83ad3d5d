"""Output for people (a rich progress bar, a summary table) and for machines (JSON and JSON lines)."""

from __future__ import annotations

import json
import math
import os
from pathlib import Path

from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn, TimeRemainingColumn
from rich.table import Table

from train_mrpc.hub import model_display_name


def training_progress(enabled: bool) -> Progress:
    """A progress bar over optimizer steps; disabled (silent) on every process but the main one."""
    return Progress(
        TextColumn("[bold blue]epoch {task.fields[epoch]}"),
        BarColumn(),
        MofNCompleteColumn(),
        TextColumn("loss {task.fields[loss]:.4f}"),
        TextColumn("lr {task.fields[lr]:.2e}"),
        TextColumn("{task.fields[samples_per_s]:.1f} samples/s"),
        TimeElapsedColumn(),
        TimeRemainingColumn(),
        disable=not enabled,
    )


def finite_or_none(value):
    """``value`` with every NaN/inf float replaced by None: JSON has no NaN, and strict parsers reject it."""
    if isinstance(value, dict):
        return {k: finite_or_none(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [finite_or_none(v) for v in value]
    if isinstance(value, float) and not math.isfinite(value):
        return None
    return value


def write_json(path: str | Path, record: dict) -> Path:
    """The one JSON writer (package and benchmarks): valid JSON (non-finite numbers as null), written whole.

    Written to a temporary file and renamed, so a reader (or a kill mid-write) never sees half a file.
    """
    import tempfile

    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    # A temporary name of its own: two writers of one file (processes sharing a cache) never write into each other's.
    handle, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(handle, "w") as f:
            f.write(json.dumps(finite_or_none(record), indent=2, allow_nan=False) + "\n")
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    return path


def append_jsonl(path: str | Path, record: dict) -> None:
    with open(path, "a") as f:
        f.write(json.dumps(finite_or_none(record), allow_nan=False) + "\n")


def trim_jsonl(path: str | Path, max_step: int) -> None:
    """Drop records logged after ``max_step`` (by a run that stopped after its last checkpoint), and blank or
    half-written lines (a kill or a full disk during an append leaves one at the end)."""
    path = Path(path)
    if path.exists():
        kept = []
        for line in path.read_text(errors="replace").splitlines():
            try:
                record = json.loads(line)
            except ValueError:
                continue
            if isinstance(record, dict) and isinstance(record.get("step"), int) and record["step"] <= max_step:
                kept.append(line)
        path.write_text("".join(line + "\n" for line in kept))


def padding_text(multiple: int | None) -> str:
    return f"padded to multiples of {multiple}" if multiple else "padded to each batch's longest pair"


def parallelism_text(distributed_type: str, sharding: dict | str | None) -> str:
    """How the processes share the work, as the run did it (not as the launch config asked)."""
    if isinstance(sharding, dict) and sharding.get("kind") == "FSDP":
        reshard = sharding.get("reshard_after_forward")
        return (
            f"FSDP{sharding.get('fsdp_version', '')} (parameters, gradients and optimizer state sharded"
            f"{', resharded after forward' if reshard is True else ''})"
        )
    if isinstance(sharding, dict) and sharding.get("kind") == "DeepSpeed ZeRO":
        return f"DeepSpeed ZeRO-{sharding.get('zero_stage')} (optimizer state{' and gradients' if sharding.get('zero_stage', 0) >= 2 else ''} sharded)"
    return "one process" if distributed_type == "NO" else "DDP (every process holds the whole model)"


def print_summary(results: dict, console: Console | None = None) -> None:
    launch, speed = results["launch"], results["speed"]
    # The name people know; the path it was loaded from stays in all_results.json and train_config.json.
    table = Table(
        title=f"MRPC fine-tune: {model_display_name(results['model'])}", show_header=False, title_justify="left"
    )
    table.add_column(style="bold")
    table.add_column(justify="right")
    rows = [
        ("data", results["data_source"]),
        (
            "launch",
            f"{launch['num_processes']} x {launch['device_type']}, "
            f"{parallelism_text(launch['distributed_type'], results.get('sharding'))}, "
            f"{'fp32' if launch['mixed_precision'] == 'no' else launch['mixed_precision']} precision",
        ),
        (
            "global batch",
            f"{launch['global_batch_size']} ({launch['per_device_train_batch_size']}/device x "
            f"{launch['num_processes']} x {launch['gradient_accumulation_steps']} accumulation)",
        ),
        (
            "speed choices",
            f"{speed['precision']} ({speed['precision_reason']}), {speed['batching']} batches, "
            + (
                f"static shapes (lengths {', '.join(map(str, speed['static_shapes']))})"
                if speed.get("static_shapes")
                else padding_text(speed["pad_to_multiple_of"])
            )
            + (f", CUDA graphs (captured in {speed['graph_capture_s']:.1f} s)" if speed.get("cuda_graphs") else "")
            + f", compile {'on' if speed['torch_compile'] else 'off'}"
            + (f", CPU speed-ups ({speed['cpu_speedups_reason']})" if speed.get("cpu_speedups") else ""),
        ),
        ("epochs / steps", f"{results['epoch']:g} / {results['global_step']}"),
        ("train loss", f"{results['train_loss']:.4f}"),
        (
            "eval accuracy",
            f"{results['eval_accuracy']:.4f} (always answering the majority class: "
            f"{results['eval_majority_accuracy']:.4f})",
        ),
        ("eval F1", f"{results['eval_f1']:.4f}"),
        ("eval loss", f"{results['eval_loss']:.4f}"),
        ("train time", f"{results['train_runtime']:.1f} s (evaluation {results['eval_runtime']:.1f} s)"),
        (
            "throughput",
            f"{results['train_samples_per_second']:.1f} samples/s, "
            f"{results['train_tokens_per_second']:.0f} tokens/s (real tokens)",
        ),
        (
            "where the time went",
            ", ".join(
                f"{name.replace('_', ' ')} {seconds:.1f} s" for name, seconds in results["time_breakdown_s"].items()
            ),
        ),
        (
            "model FLOP/s, MFU",
            f"{results['achieved_tflops']:.3g} TFLOP/s per device, "
            + (
                f"MFU {100 * results['mfu']:.1f} % of {results['peak_flops_source']}"
                if results["mfu"] is not None
                else f"MFU unknown ({results['peak_flops_source']})"
            ),
        ),
        (
            "peak memory",
            f"{results['peak_memory_bytes'] / 2**30:.2f} GiB ({results['peak_memory_kind'].replace('_', ' ')})",
        ),
        ("saved to", results["output_dir"]),
    ]
    for name, value in rows:
        table.add_row(name, str(value))
    (console or Console()).print(table)
