"""``train-mrpc reproduce``: one recipe over several seeds, then a report you can trust.

Seeds run one after another in this process tree, each in ``output_dir/seed_N`` with checkpoints, so an
interrupted reproduce picks up where it stopped: finished seeds are kept, an unfinished one resumes from its
latest checkpoint. The report (``results.md``, ``results.json``, ``results.png``) gives per-seed metrics,
mean ± standard deviation, the configuration, hardware and versions, and published baselines for comparison.
"""

from __future__ import annotations

import dataclasses
import json
import statistics
from dataclasses import dataclass, field
from pathlib import Path

from train_mrpc.config import TrainConfig
from train_mrpc.schema import ALL_RESULTS, EVAL_LOG

# MRPC validation results as published (not run here); accuracy and F1 as fractions.
PUBLISHED_BASELINES = [
    {"model": "bert-base-uncased", "setup": "batch 32, lr 2e-5, 3 epochs", "accuracy": 0.8455, "f1": None,
     "source": "Google's BERT README (github.com/google-research/bert)"},
    {"model": "bert-base-uncased", "setup": "Trainer defaults: batch 8, lr 5e-5, 3 epochs", "accuracy": 0.8578, "f1": 0.8997,
     "source": "Hugging Face course, chapter 3"},
    {"model": "bert-base-cased", "setup": "run_glue.py: batch 32, lr 2e-5, 3 epochs", "accuracy": 0.8407, "f1": 0.8885,
     "source": "transformers examples/pytorch/text-classification README"},
]  # fmt: skip
METRICS = ("eval_accuracy", "eval_f1", "eval_loss", "train_runtime")


@dataclass
class ReproduceConfig:
    num_seeds: int = field(default=5, metadata={"help": "Seeds to run: --seed, --seed + 1, ... (reproduce only)."})

    def __post_init__(self) -> None:
        from train_mrpc.config import check_value

        check_value(self.num_seeds >= 1, "num_seeds", self.num_seeds, "an integer >= 1")


def run_seed(config: TrainConfig, seed: int) -> dict:
    from train_mrpc.train import train

    out = Path(config.output_dir) / f"seed_{seed}"
    results_file = out / ALL_RESULTS
    if results_file.exists():  # finished by an earlier, interrupted reproduce
        results = json.loads(results_file.read_text())
    else:
        results = train(dataclasses.replace(config, seed=seed, output_dir=str(out), resume_from_checkpoint="latest"))
    curve = [json.loads(line) for line in (out / EVAL_LOG).read_text().splitlines()]
    return {"seed": seed, **{k: results[k] for k in METRICS}, "curve": curve, "launch": results["launch"],
            "speed": results["speed"]}  # fmt: skip


def summarize(runs: list[dict]) -> dict:
    summary = {}
    for key in METRICS:
        values = [r[key] for r in runs]
        summary[key] = {"mean": statistics.fmean(values), "std": statistics.stdev(values) if len(values) > 1 else 0.0}
    return summary


def reproduce(config: TrainConfig, num_seeds: int) -> dict:
    from accelerate import PartialState

    from train_mrpc.environment import environment
    from train_mrpc.reporting import write_json

    root = Path(config.output_dir)
    runs = [run_seed(config, config.seed + i) for i in range(num_seeds)]
    report = {
        "model": config.model_name_or_path,
        "data_source": config.data_source,
        "seeds": [r["seed"] for r in runs],
        "runs": runs,
        "summary": summarize(runs),
        "published_baselines": PUBLISHED_BASELINES,
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


def markdown_report(report: dict) -> str:
    summary, launch, speed, env = report["summary"], report["launch"], report["speed"], report["environment"]
    config = report["config"]
    lines = [
        f"# MRPC reproduction: {report['model']}",
        "",
        f"{len(report['runs'])} seeds ({', '.join(map(str, report['seeds']))}) on {report['data_source']}; "
        f"validation split. Recipe: lr {config['learning_rate']:g}, {config['num_train_epochs']:g} epochs, "
        f"global batch {launch['global_batch_size']}, warmup ratio {config['warmup_ratio']:g}, weight decay "
        f"{config['weight_decay']:g}, {speed['precision']} ({speed['batching']} batches).",
        "",
        "| seed | accuracy (%) | F1 (%) | eval loss | train time (s) |",
        "|---:|---:|---:|---:|---:|",
    ]
    for run in report["runs"]:
        lines.append(f"| {run['seed']} | {_pct(run['eval_accuracy'])} | {_pct(run['eval_f1'])} | "
                     f"{run['eval_loss']:.4f} | {run['train_runtime']:.1f} |")  # fmt: skip
    lines.append(
        f"| **mean ± std** | **{_pct(summary['eval_accuracy']['mean'])} ± {_pct(summary['eval_accuracy']['std'])}** | "
        f"**{_pct(summary['eval_f1']['mean'])} ± {_pct(summary['eval_f1']['std'])}** | "
        f"{summary['eval_loss']['mean']:.4f} ± {summary['eval_loss']['std']:.4f} | "
        f"{summary['train_runtime']['mean']:.1f} ± {summary['train_runtime']['std']:.1f} |"
    )
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


def plot_report(report: dict, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, (left, right) = plt.subplots(1, 2, figsize=(11, 4))
    seeds = report["seeds"]
    for key, marker in (("eval_accuracy", "o"), ("eval_f1", "s")):
        values = [100 * r[key] for r in report["runs"]]
        line = left.plot(seeds, values, marker, label=key.removeprefix("eval_"))[0]
        left.axhline(100 * report["summary"][key]["mean"], color=line.get_color(), linestyle="--", linewidth=1)
    left.set(title="Validation metrics per seed (dashed: mean)", xlabel="seed", ylabel="%", xticks=seeds)
    left.legend()
    for run in report["runs"]:
        right.plot([p["epoch"] for p in run["curve"]], [100 * p["eval_accuracy"] for p in run["curve"]],
                   marker="o", label=f"seed {run['seed']}")  # fmt: skip
    right.set(title="Validation accuracy per epoch", xlabel="epoch", ylabel="accuracy (%)")
    right.legend(fontsize="small")
    fig.suptitle(f"MRPC: {report['model'].split('/')[-1]}")
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def print_report(report: dict) -> None:
    from rich.console import Console
    from rich.table import Table

    table = Table(title=f"MRPC reproduction: {report['model']}", title_justify="left")
    for name in ("seed", "accuracy %", "F1 %", "eval loss", "train s"):
        table.add_column(name, justify="right")
    for run in report["runs"]:
        table.add_row(str(run["seed"]), _pct(run["eval_accuracy"]), _pct(run["eval_f1"]),
                      f"{run['eval_loss']:.4f}", f"{run['train_runtime']:.1f}")  # fmt: skip
    s = report["summary"]
    table.add_row("mean ± std", f"{_pct(s['eval_accuracy']['mean'])} ± {_pct(s['eval_accuracy']['std'])}",
                  f"{_pct(s['eval_f1']['mean'])} ± {_pct(s['eval_f1']['std'])}",
                  f"{s['eval_loss']['mean']:.4f}", f"{s['train_runtime']['mean']:.1f}", style="bold")  # fmt: skip
    Console().print(table)
