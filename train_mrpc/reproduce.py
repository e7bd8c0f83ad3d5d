"""``train-mrpc reproduce``: one recipe over several seeds, then a report you can trust.

Seeds run one after another in this process tree, each in ``output_dir/seed_N`` with checkpoints, so an
interrupted reproduce picks up where it stopped: finished seeds are kept, an unfinished one resumes from its
latest checkpoint. The report (``results.md``, ``results.json``, ``results.png``) gives per-seed metrics,
mean ± standard deviation and median, the failed runs (no better than always answering the majority class),
the configuration, hardware and versions, and published baselines for comparison.
"""

from __future__ import annotations

import dataclasses
import statistics
from dataclasses import dataclass, field
from pathlib import Path

from train_mrpc.config import TrainConfig, check_seeds
from train_mrpc.hub import model_display_name  # noqa: F401 (sweep and the tests import it from here too)
from train_mrpc.schema import ALL_RESULTS, EVAL_LOG

# MRPC validation results as published (not run here); accuracy and F1 as fractions.
PUBLISHED_BASELINES = [
    {
        "model": "bert-base-uncased",
        "setup": "batch 32, lr 2e-5, 3 epochs",
        "accuracy": 0.8455,
        "f1": None,
        "source": "Google's BERT README (github.com/google-research/bert)",
    },
    {
        "model": "bert-base-uncased",
        "setup": "Trainer defaults: batch 8, lr 5e-5, 3 epochs",
        "accuracy": 0.8578,
        "f1": 0.8997,
        "source": "Hugging Face course, chapter 3",
    },
    {
        "model": "bert-base-cased",
        "setup": "run_glue.py: batch 32, lr 2e-5, 3 epochs",
        "accuracy": 0.8407,
        "f1": 0.8885,
        "source": "transformers examples/pytorch/text-classification README",
    },
]
METRICS = ("eval_accuracy", "eval_f1", "eval_loss", "train_runtime")


def is_failed_run(accuracy: float | None, majority_accuracy: float | None) -> bool:
    """A failed run (Mosbach et al., ICLR 2021): dev accuracy no better than always predicting the majority class."""
    if accuracy is None or majority_accuracy is None:
        return accuracy is None  # no accuracy at all (the run errored) is a failure; no baseline, no verdict
    return accuracy <= majority_accuracy + 1e-9


def published_baselines_for(name_or_path: str) -> list[dict]:
    """The published baselines of this very model (a Hub id such as bert-base-uncased or google-bert/bert-base-uncased)."""
    name = name_or_path.rstrip("/")
    return [b for b in PUBLISHED_BASELINES if name == b["model"] or name.endswith("/" + b["model"])]


@dataclass
class ReproduceConfig:
    num_seeds: int = field(default=5, metadata={"help": "Seeds to run: --seed, --seed + 1, ... (reproduce only)."})

    def __post_init__(self) -> None:
        from train_mrpc.config import IntRange, check_types

        check_types(self, {"num_seeds": IntRange(1)})  # a config file's values too


def run_seed(config: TrainConfig, seed: int) -> dict:
    from train_mrpc.run_files import CURVE_FIELDS, read_finished_run, read_run_file
    from train_mrpc.train import train

    out = Path(config.output_dir) / f"seed_{seed}"
    results_file = out / ALL_RESULTS
    if results_file.exists():  # finished by an earlier, interrupted reproduce
        results, curve = read_finished_run(out, f"seed {seed}")
    else:
        results = train(dataclasses.replace(config, seed=seed, output_dir=str(out), resume_from_checkpoint="latest"))
        curve = read_run_file(out / EVAL_LOG, CURVE_FIELDS, lines=True)
    majority = results.get("eval_majority_accuracy")
    return {
        "seed": seed,
        **{k: results[k] for k in METRICS},
        "eval_majority_accuracy": majority,
        "failed": is_failed_run(results["eval_accuracy"], majority),
        "curve": curve,
        "launch": results["launch"],
        "speed": results["speed"],
    }


def summarize(runs: list[dict]) -> dict:
    summary = {}
    for key in METRICS:
        values = [r[key] for r in runs]
        summary[key] = {
            "mean": statistics.fmean(values),
            "std": statistics.stdev(values) if len(values) > 1 else 0.0,
            "median": statistics.median(values),
            "min": min(values),
            "max": max(values),
        }
    return summary


def reproduce(config: TrainConfig, num_seeds: int) -> dict:
    from accelerate import PartialState

    from train_mrpc.environment import environment
    from train_mrpc.reporting import write_json

    seeds = check_seeds(config.seed, num_seeds)  # all of them before the first trains
    root = Path(config.output_dir)
    runs = [run_seed(config, seed) for seed in seeds]
    majorities = [r["eval_majority_accuracy"] for r in runs if r["eval_majority_accuracy"] is not None]
    report = {
        "model": config.model_name_or_path,
        "model_name": model_display_name(config.model_name_or_path),
        "data_source": config.data_source,
        "seeds": [r["seed"] for r in runs],
        "runs": runs,
        "summary": summarize(runs),
        "majority_accuracy": majorities[0] if majorities else None,
        "failed_runs": [{"seed": r["seed"], "eval_accuracy": r["eval_accuracy"]} for r in runs if r["failed"]],
        "published_baselines": PUBLISHED_BASELINES,
        "published_baselines_for_model": published_baselines_for(config.model_name_or_path),
        "config": config.to_dict(),
        "launch": runs[0]["launch"],
        "speed": runs[0]["speed"],
        "environment": environment(),
    }
    if PartialState().is_main_process:
        write_json(root / "results.json", report)
        (root / "results.md").write_text(markdown_report(report))
        plot_report(report, root / "results.png")
        print_report(report)
    return report


def _pct(value: float | None) -> str:
    return "–" if value is None else f"{100 * value:.2f}"


def failed_runs_sentence(report: dict) -> str:
    """'Failed runs (...): 1 of 5: seed 44 (68.38 %).' -- named, with the baseline they did not beat."""
    failed, majority = report["failed_runs"], report.get("majority_accuracy")
    rule = f"dev accuracy no better than always answering the majority class, {_pct(majority)} %"
    named = ", ".join(f"seed {f['seed']} ({_pct(f['eval_accuracy'])} %)" for f in failed) or "none"
    return f"Failed runs ({rule}): {len(failed)} of {len(report['runs'])}: {named}."


def markdown_report(report: dict) -> str:
    summary, launch, speed, env = report["summary"], report["launch"], report["speed"], report["environment"]
    config = report["config"]
    lines = [
        f"# MRPC reproduction: {report.get('model_name', report['model'])}",
        "",
        f"Model: `{report['model']}`.",
        "",
        f"{len(report['runs'])} seeds ({', '.join(map(str, report['seeds']))}) on {report['data_source']}; "
        f"validation split. Recipe: lr {config['learning_rate']:g}, {config['num_train_epochs']:g} epochs, "
        f"global batch {launch['global_batch_size']}, warmup ratio {config['warmup_ratio']:g}, weight decay "
        f"{config['weight_decay']:g}, {speed['precision']} ({speed['batching']} batches).",
        "",
        "| seed | accuracy (%) | F1 (%) | eval loss | train time (s) | failed run |",
        "|---:|---:|---:|---:|---:|:---:|",
    ]
    for run in report["runs"]:
        lines.append(
            f"| {run['seed']} | {_pct(run['eval_accuracy'])} | {_pct(run['eval_f1'])} | "
            f"{run['eval_loss']:.4f} | {run['train_runtime']:.1f} | {'**yes**' if run.get('failed') else ''} |"
        )
    lines.append(
        f"| **mean ± std** | **{_pct(summary['eval_accuracy']['mean'])} ± {_pct(summary['eval_accuracy']['std'])}** | "
        f"**{_pct(summary['eval_f1']['mean'])} ± {_pct(summary['eval_f1']['std'])}** | "
        f"{summary['eval_loss']['mean']:.4f} ± {summary['eval_loss']['std']:.4f} | "
        f"{summary['train_runtime']['mean']:.1f} ± {summary['train_runtime']['std']:.1f} | |"
    )
    lines.append(
        f"| median | {_pct(summary['eval_accuracy']['median'])} | {_pct(summary['eval_f1']['median'])} | "
        f"{summary['eval_loss']['median']:.4f} | {summary['train_runtime']['median']:.1f} | |"
    )
    lines += ["", failed_runs_sentence(report)]
    lines += [
        "",
        "## Published MRPC validation baselines (published figures, not run here)",
        "",
        "| model | setup | accuracy (%) | F1 (%) | source |",
        "|---|---|---:|---:|---|",
    ]
    for b in report["published_baselines"]:
        lines.append(f"| {b['model']} | {b['setup']} | {_pct(b['accuracy'])} | {_pct(b['f1'])} | {b['source']} |")
    versions = ", ".join(f"{k} {v}" for k, v in env["versions"].items() if v)
    lines += [
        "",
        "## Where it ran",
        "",
        f"- hardware: {env['device_name']}; {launch['num_processes']} process(es) on {launch['device_type']}",
        f"- versions: {versions}",
        f"- commit: {env['git']['commit']}{' (uncommitted changes)' if env['git']['dirty'] else ''}",
        "- configuration: `results.json` → `config`; per-seed outputs in `seed_*/`",
        "",
    ]
    return "\n".join(lines)


def draw_baselines(ax, report: dict, metric: str = "accuracy") -> None:
    """Horizontal lines: the majority-class accuracy and the model's published baselines (percent)."""
    majority = report.get("majority_accuracy")
    if metric == "accuracy" and majority is not None:
        ax.axhline(
            100 * majority, color="grey", linestyle=":", linewidth=1.2, label=f"majority class {100 * majority:.2f} %"
        )
    for baseline in report.get("published_baselines_for_model", []):
        value = baseline.get(metric)
        if value is not None:
            ax.axhline(
                100 * value,
                color="black",
                linestyle="-.",
                linewidth=1,
                label=f"published {metric} {100 * value:.2f} % ({baseline['source'].split(' (')[0]})",
            )


def plot_report(report: dict, path: Path) -> None:
    import matplotlib.pyplot as plt

    fig = report_figure(report)
    fig.savefig(path, dpi=110)
    plt.close(fig)


def report_figure(report: dict):
    """Per-seed metrics and per-epoch accuracy, against the majority class and the model's published baselines."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from matplotlib.ticker import MaxNLocator

    fig, (left, right) = plt.subplots(1, 2, figsize=(12, 4.5))
    seeds = report["seeds"]
    for key, marker in (("eval_accuracy", "o"), ("eval_f1", "s")):
        values = [100 * r[key] for r in report["runs"]]
        line = left.plot(seeds, values, marker, label=key.removeprefix("eval_"))[0]
        left.axhline(100 * report["summary"][key]["mean"], color=line.get_color(), linestyle="--", linewidth=1)
    failed = [r for r in report["runs"] if r.get("failed")]
    if failed:
        left.plot(
            [r["seed"] for r in failed],
            [100 * r["eval_accuracy"] for r in failed],
            "x",
            color="red",
            markersize=10,
            label="failed run",
        )
    draw_baselines(left, report, "accuracy")
    draw_baselines(left, report, "f1")
    left.set(title="Validation metrics per seed (dashed: mean)", xlabel="seed", ylabel="%", xticks=seeds)
    left.legend(fontsize="small")
    for run in report["runs"]:
        right.plot(
            [p["epoch"] for p in run["curve"]],
            [100 * p["eval_accuracy"] for p in run["curve"]],
            marker="o",
            label=f"seed {run['seed']}",
        )
    draw_baselines(right, report, "accuracy")
    right.xaxis.set_major_locator(MaxNLocator(integer=True))  # whole epochs
    right.set(title="Validation accuracy after each epoch", xlabel="epoch", ylabel="accuracy (%)")
    right.legend(fontsize="small")
    published = "" if report.get("published_baselines_for_model") else " (no published MRPC baseline for this model)"
    from train_mrpc.plots import literal

    fig.suptitle(literal(f"MRPC: {report.get('model_name') or model_display_name(report['model'])}{published}"))
    fig.tight_layout()
    return fig


def print_report(report: dict) -> None:
    from rich.console import Console
    from rich.table import Table

    table = Table(title=f"MRPC reproduction: {report.get('model_name', report['model'])}", title_justify="left")
    for name in ("seed", "accuracy %", "F1 %", "eval loss", "train s"):
        table.add_column(name, justify="right")
    for run in report["runs"]:
        table.add_row(
            str(run["seed"]),
            _pct(run["eval_accuracy"]),
            _pct(run["eval_f1"]),
            f"{run['eval_loss']:.4f}",
            f"{run['train_runtime']:.1f}",
        )
    s = report["summary"]
    table.add_row(
        "mean ± std",
        f"{_pct(s['eval_accuracy']['mean'])} ± {_pct(s['eval_accuracy']['std'])}",
        f"{_pct(s['eval_f1']['mean'])} ± {_pct(s['eval_f1']['std'])}",
        f"{s['eval_loss']['mean']:.4f}",
        f"{s['train_runtime']['mean']:.1f}",
        style="bold",
    )
    table.add_row(
        "median",
        _pct(s["eval_accuracy"]["median"]),
        _pct(s["eval_f1"]["median"]),
        f"{s['eval_loss']['median']:.4f}",
        f"{s['train_runtime']['median']:.1f}",
    )
    console = Console()
    console.print(table)
    console.print(failed_runs_sentence(report))
