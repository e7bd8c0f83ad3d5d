"""``output_dir/training_curves.png``: a run's loss, learning rate, gradient norm, validation metrics, throughput
and where its time went.

Drawn from the run's own JSON-lines logs, so it can be drawn again at any time: ``train-mrpc plot DIR``.
"""

from __future__ import annotations

from pathlib import Path

from train_mrpc.errors import UserError
from train_mrpc.hub import model_display_name
from train_mrpc.run_files import (
    ALL_RESULTS_FIELDS,
    EVAL_LOG_FIELDS,
    TRAIN_CONFIG_FIELDS,
    TRAIN_LOG_FIELDS,
    read_run_file,
)
from train_mrpc.schema import ALL_RESULTS, EVAL_LOG, TRAIN_CONFIG, TRAIN_LOG, TRAINING_CURVES


def literal(text: str) -> str:
    """``text`` drawn as written: matplotlib reads "$...$" as math, so a model folder or a model card's title with
    two dollar signs was typeset as a formula, or stopped the plot with a ParseSyntaxException ("$\\frac$")."""
    return str(text).replace("$", r"\$")


def _series(rows: list[dict], key: str) -> tuple[list, list]:
    """(steps, values) of the rows that logged ``key``."""
    logged = [r for r in rows if r.get(key) is not None]
    return [r["step"] for r in logged], [r[key] for r in logged]


def plot_training_curves(output_dir: str | Path) -> Path:
    """Write ``training_curves.png`` in ``output_dir`` from its logs; returns its path."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    output_dir = Path(output_dir)
    train_log = read_run_file(output_dir / TRAIN_LOG, TRAIN_LOG_FIELDS, lines=True, increasing=True)
    eval_log = read_run_file(output_dir / EVAL_LOG, EVAL_LOG_FIELDS, lines=True, increasing=True)
    if not train_log and not eval_log:
        raise UserError(
            f"{output_dir} holds no {TRAIN_LOG} or {EVAL_LOG}: not a train-mrpc output folder (or nothing logged yet)"
        )
    results = read_run_file(output_dir / ALL_RESULTS, ALL_RESULTS_FIELDS)
    threshold = read_run_file(output_dir / TRAIN_CONFIG, TRAIN_CONFIG_FIELDS).get("max_grad_norm")
    steps = [r["step"] for r in train_log]
    fig, axes = plt.subplots(2, 3, figsize=(15, 7))
    (loss_ax, lr_ax, norm_ax), (eval_ax, speed_ax, time_ax) = axes
    loss_ax.plot(steps, [r["loss"] for r in train_log], color="#4c72b0", label="training (mean since last log)")
    if eval_log:
        loss_ax.plot(
            [r["step"] for r in eval_log], [r["eval_loss"] for r in eval_log], "o-", color="#dd8452", label="validation"
        )
    loss_ax.set(title="Loss", ylabel="cross-entropy")
    loss_ax.legend(fontsize="small")
    lr_ax.plot(*_series(train_log, "learning_rate"), color="#55a868")
    lr_ax.set(title="Learning rate", ylabel="lr")
    lr_ax.ticklabel_format(axis="y", style="sci", scilimits=(0, 0))
    plot_grad_norm(norm_ax, train_log, threshold)
    for key, marker in (("eval_accuracy", "o-"), ("eval_f1", "s-")):
        eval_steps, values = _series(eval_log, key)
        eval_ax.plot(eval_steps, [100 * v for v in values], marker, label=key.removeprefix("eval_"))
    if results.get("eval_majority_accuracy"):
        eval_ax.axhline(
            100 * results["eval_majority_accuracy"], color="grey", linestyle="--", linewidth=1, label="majority class"
        )
    eval_ax.set(title="Validation", xlabel="optimizer step", ylabel="%")
    eval_ax.legend(fontsize="small")
    speed_ax.plot(*_series(train_log, "samples_per_second"), color="#8172b3", label="samples/s")
    speed_ax.set(title="Throughput", xlabel="optimizer step", ylabel="samples/s")
    if any("mfu" in r for r in train_log):
        mfu_ax = speed_ax.twinx()
        mfu_ax.plot(steps, [100 * (r.get("mfu") or 0) for r in train_log], color="#c44e52", linewidth=1, alpha=0.7)
        mfu_ax.set_ylabel("MFU % (red)")
    plot_time_breakdown(time_ax, results.get("time_breakdown_s"))
    # The name people know, not the folder the weights sit in (all_results.json keeps that path).
    model = model_display_name(results["model"]) if results.get("model") else output_dir.name
    fig.suptitle(literal(f"MRPC fine-tune: {model}"))
    fig.tight_layout()
    path = output_dir / TRAINING_CURVES
    fig.savefig(path, dpi=100)
    plt.close(fig)
    return path


def plot_grad_norm(ax, train_log: list[dict], threshold: float | None) -> None:
    """The pre-clip global gradient norm (window mean and max) against the clipping threshold (--max_grad_norm)."""
    logged = [r for r in train_log if r.get("grad_norm") is not None]
    ax.set(title="Gradient norm (before clipping)", ylabel="L2 norm")
    if not logged:
        ax.text(
            0.5,
            0.5,
            "no gradient norm in the log\n(--max_grad_norm 0 computes none)",
            ha="center",
            va="center",
            transform=ax.transAxes,
            color="grey",
        )
        return
    steps = [r["step"] for r in logged]
    ax.plot(steps, [r["grad_norm"] for r in logged], color="#937860", label="mean since last log")
    ax.plot(*_series(logged, "grad_norm_max"), color="#937860", linewidth=0.8, alpha=0.5, label="max")
    if threshold:
        ax.axhline(threshold, color="grey", linestyle="--", linewidth=1, label=f"--max_grad_norm {threshold:g}")
    ax.legend(fontsize="small")


def plot_time_breakdown(ax, breakdown: dict | None) -> None:
    """Where the run's wall-clock time went (all_results.json's time_breakdown_s), as horizontal bars."""
    ax.set(title="Where the time went")
    if not breakdown:
        ax.text(0.5, 0.5, f"no {ALL_RESULTS} yet", ha="center", va="center", transform=ax.transAxes, color="grey")
        return
    names = list(breakdown)
    ax.barh([name.replace("_", " ") for name in names], [breakdown[name] for name in names], color="#64b5cd")
    ax.invert_yaxis()
    ax.set_xlabel("seconds")
    ax.set_xlim(0, 1.2 * max(max(breakdown.values()), 1e-9))  # room for the labels
    for y, name in enumerate(names):
        ax.annotate(f" {breakdown[name]:.1f} s", (breakdown[name], y), va="center", fontsize="small")
