"""Shared helpers of the benchmarks (``train-mrpc bench ...``): inputs, timing, environment record, table,
JSON, plots.

Timing discipline (as in airbench): warm-up calls are run and reported but never counted, CUDA is
synchronised before every clock read, set-up work (building inputs, fresh cache folders, models) stays
outside the clock, and every result file records the versions and hardware it was measured on.
Output style (as in nanochat): a rich table on the terminal, the full record in a JSON file, and one
JSON line summarising the run as the last line of stdout.
"""

from __future__ import annotations

import argparse
import contextlib
import ctypes
import io
import json
import math
import os
import statistics
import sys
import tempfile
import threading
import time
from pathlib import Path

from train_mrpc.errors import OneLineArgumentErrors, UserError

MAX_LENGTH = 128  # run_glue's default --max_seq_length, and the project's --max_length
SHARED_ENV = "TRAIN_MRPC_SHARED"  # a folder laid out as ../shared: data/mrpc/*.tsv, models/bert-base-uncased/
SHARED_MRPC = Path("data") / "mrpc"  # inside a shared folder
SHARED_BERT = Path("models") / "bert-base-uncased"


# --- where things are: a source checkout, or an installed package ----------------------------------


def source_checkout() -> Path | None:
    """The repository this package is imported from (a plain or editable checkout: the folder above
    ``train_mrpc`` holds pyproject.toml and benchmarks/README.md), or None for an installed package."""
    root = Path(__file__).resolve().parents[2]
    if (root / "pyproject.toml").is_file() and (root / "benchmarks" / "README.md").is_file():
        return root
    return None


def shared_candidates() -> list[Path]:
    """Folders that may hold the real assets, in the order they are tried. ``$TRAIN_MRPC_SHARED`` alone when set;
    else ``../shared`` beside the checkout this package runs from, then ``./shared`` and ``../shared`` relative
    to the current directory (an installed package has no checkout). Never required."""
    if os.environ.get(SHARED_ENV):
        folder = Path(os.environ[SHARED_ENV]).expanduser()
        if not folder.is_dir():
            raise UserError(
                f"${SHARED_ENV}={folder}: not a folder; expected a folder laid out as ../shared "
                f"({SHARED_MRPC}/, {SHARED_BERT}/), or unset it"
            )
        return [folder]
    checkout = source_checkout()
    found = [checkout.parent / "shared"] if checkout else []
    found += [Path.cwd() / "shared", Path.cwd().parent / "shared"]
    unique = []
    for folder in found:
        if folder.resolve() not in [u.resolve() for u in unique]:
            unique.append(folder)
    return unique


def shared_asset(relative: Path, marker: str) -> Path | None:
    """The first candidate's ``relative`` folder that holds ``marker`` (e.g. data/mrpc with train.tsv), or None."""
    for folder in shared_candidates():
        if (folder / relative / marker).is_file():
            return (folder / relative).resolve()
    return None


def default_out() -> Path:
    """benchmarks/results/ of the checkout this package runs from (git-ignored there, except the published
    runs); ./bench-results/ in the current directory for an installed package."""
    checkout = source_checkout()
    return checkout / "benchmarks" / "results" if checkout else Path("bench-results")


def display_default_out() -> str:
    out = default_out()
    try:
        return str(out.relative_to(Path.cwd()))
    except ValueError:
        return str(out)


# --- command line --------------------------------------------------------------------------------


class Parser(OneLineArgumentErrors, argparse.ArgumentParser):
    """Every bench command's parser: a bad flag is the CLI's one line ``train-mrpc: error: ...`` with exit status
    2, as for training; no abbreviations (a typo such as --step must fail, not silently match --steps)."""

    def __init__(self, prog: str, description: str | None = None):
        super().__init__(
            prog=prog, description=description, formatter_class=argparse.RawDescriptionHelpFormatter, allow_abbrev=False
        )


def bounded(kind: type, low: float, above: bool = False):
    """An argparse ``type=`` for flags that take an int or a finite float of at least ``low`` (more than ``low``
    with ``above``); anything else is refused with what was expected."""
    expected = f"{'an integer' if kind is int else 'a number'} {'>' if above else '>='} {low:g}"

    def convert(text: str):
        try:
            value = kind(text)
        except ValueError:
            value = None
        if value is None or (kind is float and not math.isfinite(value)) or value < low or (above and value == low):
            raise argparse.ArgumentTypeError(f"{text!r} is invalid: expected {expected}")
        return value

    return convert


positive_int, non_negative_int = bounded(int, 1), bounded(int, 0)
positive_float, non_negative_float = bounded(float, 0, above=True), bounded(float, 0)


def tokenizer_arg(text: str) -> str:
    """--tokenizer: 'auto', 'tiny' or a folder holding tokenizer.json (checked before any work starts)."""
    if text not in ("auto", "tiny"):
        expected = "a tokenizer folder (with tokenizer.json), 'auto' or 'tiny'"
        if not Path(text).is_dir():
            raise argparse.ArgumentTypeError(f"{text}: not a folder; expected {expected}")
        if not (Path(text) / "tokenizer.json").is_file():
            raise argparse.ArgumentTypeError(f"{text}: holds no tokenizer.json; expected {expected}")
    return text


def run_as_command(command: str) -> None:
    """A benchmark run as a script (benchmarks/*.py, ``python -m train_mrpc.bench.X``) with this process's flags,
    as ``train-mrpc bench COMMAND``: bad input ends as the CLI's one line ``train-mrpc: error: ...`` and exit
    status 2 there too."""
    from train_mrpc.bench import main
    from train_mrpc.cli import _print_error

    try:
        main([command, *sys.argv[1:]])
    except UserError as err:
        _print_error(str(err))
        sys.exit(2)


def reason(err: BaseException, limit: int = 200) -> str:
    """An exception as a short phrase for the middle of an error line (one line, cut at about ``limit``)."""
    text = f"{type(err).__name__}: {' '.join(str(err).split())}"
    return text if len(text) <= limit else text[: limit - 3] + "..."


def base_parser(description: str, prog: str) -> argparse.ArgumentParser:
    """The flags the tokenization and step benchmarks share: --quick, --out, --data_dir, --tokenizer, --seed."""
    parser = Parser(prog, description)
    parser.add_argument(
        "--quick",
        action="store_true",
        help="Smoke test: small data, few repeats, tiny model; the whole suite runs in well under a minute "
        "on 2 CPU cores. The output is complete, but its numbers are not speed claims.",
    )
    parser.add_argument(
        "--out",
        type=Path,
        default=None,
        help="Folder for the JSON record and PNG plots (default: benchmarks/results/ of the source checkout "
        "this package runs from, else ./bench-results/).",
    )
    parser.add_argument(
        "--data_dir",
        default="auto",
        help="GLUE MRPC folder (train.tsv, dev.tsv[, test.tsv]); 'auto' (default) = data/mrpc of the shared "
        f"assets when present (${SHARED_ENV}, else ../shared beside the checkout, ./shared, ../shared), else "
        "generated pairs with MRPC's length distribution; 'synthetic' = always generated.",
    )
    parser.add_argument(
        "--tokenizer",
        default="auto",
        type=tokenizer_arg,
        help="Tokenizer folder (with tokenizer.json, and vocab.txt for the legacy Python tokenizer); 'auto' "
        "(default) = models/bert-base-uncased of the shared assets when present (as --data_dir), else the "
        "project's tiny tokenizer; 'tiny' = always the tiny one.",
    )
    parser.add_argument("--seed", type=int, default=0, help="Seed of generated data, sampling and model init.")
    add_guard_args(parser)
    return parser


def resolve_out(out: Path | None) -> Path:
    """--out as given, else the default (:func:`default_out`); absolute, so subprocesses agree on it."""
    return (out if out is not None else default_out()).resolve()


# --- inputs ----------------------------------------------------------------------------------------


def load_pairs(data_dir: str, seed: int = 0) -> tuple[dict[str, dict[str, list]], str]:
    """Sentence pairs by split (columns sentence1, sentence2, label, idx) and a description of the source."""
    from train_mrpc.data import read_glue_dir
    from train_mrpc.synthetic import SPLIT_SIZES, generate_pairs

    if data_dir == "auto":
        found = shared_asset(SHARED_MRPC, "train.tsv")
        data_dir = str(found) if found else "synthetic"
    if data_dir == "synthetic":
        return {
            split: generate_pairs(split, seed) for split in SPLIT_SIZES
        }, f"generated (train_mrpc.synthetic, seed {seed})"
    return read_glue_dir(data_dir), f"GLUE MRPC TSV files in {data_dir}"


def load_tokenizer(name: str):
    """(fast tokenizer, folder or None, description). 'tiny' folder is None: see :func:`legacy_tokenizer`."""
    if name == "auto":
        found = shared_asset(SHARED_BERT, "tokenizer.json")
        name = str(found) if found else "tiny"
    if name == "tiny":
        from train_mrpc.synthetic import build_tiny_model

        return build_tiny_model(0)[0], None, "tiny (train_mrpc.synthetic, WordPiece over the generator's words)"
    from transformers import AutoTokenizer

    try:
        tokenizer = AutoTokenizer.from_pretrained(name)
    except Exception as err:  # a folder the user named (tokenizer_arg checked that it is one): its files are at fault
        raise UserError(
            f"--tokenizer {name}: cannot load a tokenizer from it ({reason(err)}); expected a "
            "tokenizer folder (with tokenizer.json)"
        ) from None
    return tokenizer, Path(name), f"{name}"


def legacy_tokenizer(folder: Path | None):
    """transformers 5's pure-Python BERT tokenizer with the same vocabulary, or None where there is no vocab.txt."""
    from transformers import BertTokenizerLegacy

    if folder is None:
        from train_mrpc.synthetic import tiny_vocabulary

        with tempfile.TemporaryDirectory() as tmp:
            vocab = Path(tmp) / "vocab.txt"
            vocab.write_text("\n".join(tiny_vocabulary()) + "\n")
            return BertTokenizerLegacy(vocab_file=str(vocab), model_max_length=MAX_LENGTH)
    if not (folder / "vocab.txt").is_file():
        return None
    return BertTokenizerLegacy.from_pretrained(str(folder))


# --- timing ----------------------------------------------------------------------------------------


def synchronize() -> None:
    """Wait for queued GPU work, so the clock measures the work and not its launch."""
    import torch

    if torch.cuda.is_available() and torch.cuda.is_initialized():
        torch.cuda.synchronize()


def time_calls(fn, *, warmup: int, repeats: int, setup=None):
    """Run ``fn`` warmup + repeats times; return (timed seconds, warm-up seconds, last result).

    ``setup`` (if given) runs before every call, outside the clock.
    """
    timed, warm, result = [], [], None
    for i in range(warmup + repeats):
        if setup is not None:
            setup()
        synchronize()
        start = time.perf_counter()
        result = fn()
        synchronize()
        (warm if i < warmup else timed).append(time.perf_counter() - start)
    return timed, warm, result


def percentile(values, q: float) -> float:
    """Linear-interpolation percentile (q in [0, 100]) of a non-empty sequence."""
    ordered = sorted(values)
    position = (len(ordered) - 1) * q / 100
    low, high = math.floor(position), math.ceil(position)
    return ordered[low] + (ordered[high] - ordered[low]) * (position - low)


def summarize(seconds: list[float]) -> dict:
    """Median and spread of repeated timings."""
    median = statistics.median(seconds)
    return {
        "n": len(seconds),
        "median": median,
        "mean": statistics.fmean(seconds),
        "min": min(seconds),
        "max": max(seconds),
        "p25": percentile(seconds, 25),
        "p75": percentile(seconds, 75),
        "stdev": statistics.stdev(seconds) if len(seconds) > 1 else 0.0,
        "iqr_pct": 100 * (percentile(seconds, 75) - percentile(seconds, 25)) / median if median > 0 else 0.0,
    }


def rss_bytes() -> int:
    import psutil  # an Accelerate dependency

    return psutil.Process().memory_info().rss


def release_memory() -> None:
    """Collect garbage and hand freed heap pages back to the OS, so the next RSS peak is this cell's own."""
    import gc

    gc.collect()
    try:
        ctypes.CDLL("libc.so.6").malloc_trim(0)
    except (OSError, AttributeError):  # not glibc
        pass


@contextlib.contextmanager
def frozen_heap():
    """One full collection, then what exists now (the millions of objects torch and transformers create at import,
    the data, the tokenizer) left out of later ones until the block ends: release_memory's collection before each
    measurement then walks only what the cells made (their models, optimizers, compiled graphs), not the whole
    heap again (~0.2-0.5 s a call on 2 cores, 27 calls in a quick step grid)."""
    import gc

    gc.collect()
    gc.freeze()
    try:
        yield
    finally:
        gc.unfreeze()


class PeakRSS:
    """Samples the process RSS every ``interval`` seconds in a thread; ``.peak`` after the block."""

    def __init__(self, interval: float = 0.005):
        self.interval, self.peak, self._stop = interval, 0, threading.Event()

    def _run(self) -> None:
        while not self._stop.is_set():
            self.peak = max(self.peak, rss_bytes())
            self._stop.wait(self.interval)

    def __enter__(self):
        self.peak = rss_bytes()
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self._stop.set()
        self._thread.join()
        self.peak = max(self.peak, rss_bytes())


# --- a shared machine: measure only when nobody else is using the CPU -----------------------------


def wait_until_quiet(max_other: float, max_wait: float, sample: float = 1.0) -> float:
    """Sleep until other processes use at most ``max_other`` cores over a ``sample``-second window, or until
    ``max_wait`` seconds have passed; returns the seconds waited."""
    start = time.perf_counter()
    while time.perf_counter() - start < max_wait:
        with OtherCpu() as other:
            time.sleep(sample)
        if other.cores is None or other.cores <= max_other:
            break
    return time.perf_counter() - start


def run_guarded(measure, *, max_other: float, retries: int, max_wait: float):
    """Run ``measure()`` (returning (result, other_cpu_cores of its timed part)) once the CPU is quiet, and
    again (up to ``retries`` times) if another process used more than ``max_other`` cores meanwhile: on a
    small shared machine other work turns a step into many times its time (threads wait in OpenMP barriers
    for a core). Returns (result, guard record)."""
    waited, attempts = 0.0, 0
    while True:
        attempts += 1
        waited += wait_until_quiet(max_other, max_wait) if max_wait > 0 else 0.0
        result, other = measure()
        if other is None or other <= max_other or attempts > retries:
            break
        print(f"  other processes used {other:.2f} cores: measuring again", file=sys.stderr, flush=True)
    contended = other is not None and other > max_other
    return result, {"other_cpu_cores": other, "attempts": attempts, "waited_seconds": waited, "contended": contended}


def add_guard_args(parser: argparse.ArgumentParser) -> None:
    group = parser.add_argument_group("shared-machine guard (CPU time used by other processes)")
    group.add_argument(
        "--max_other_cpu",
        type=non_negative_float,
        default=0.2,
        help="A measurement during which other processes used more than this many cores (averaged) "
        "is repeated (default 0.2).",
    )
    group.add_argument(
        "--retries",
        type=non_negative_int,
        default=None,
        help="Repeats of a contended measurement (default 2; --quick 0).",
    )
    group.add_argument(
        "--max_wait",
        type=non_negative_float,
        default=None,
        help="Seconds to wait for a quiet CPU before each measurement (default 120; --quick 0).",
    )


def guard_settings(args) -> dict:
    return {
        "max_other": args.max_other_cpu,
        "retries": args.retries if args.retries is not None else (0 if args.quick else 2),
        "max_wait": args.max_wait if args.max_wait is not None else (0.0 if args.quick else 120.0),
    }


# --- environment -----------------------------------------------------------------------------------
# One record of hardware, versions and commit for every result the project writes (train_mrpc/environment.py):
# device name, CPU model and SIMD flags, GPU model/capability/memory/CUDA/cuDNN/TF32, torch threads,
# library versions, git commit and dirty flag, command line, start time, load average.
from train_mrpc import reporting  # noqa: E402
from train_mrpc.environment import OtherCpu, environment, load_average  # noqa: E402, F401  (re-exported: common.environment)

# --- output ----------------------------------------------------------------------------------------


def console():
    """A rich console; wide when stdout is not a terminal, so tables in logs are not squeezed to 80 columns."""
    from rich.console import Console

    return Console(width=None if sys.stdout.isatty() else 200)


def print_table(title: str, columns: list[tuple[str, str]], rows: list[list[str]], caption: str | None = None) -> None:
    """``columns``: (header, justify) pairs; ``rows``: already formatted cells."""
    from rich.table import Table

    table = Table(title=title, caption=caption, title_justify="left", caption_justify="left")
    for header, justify in columns:
        table.add_column(header, justify=justify)
    for row in rows:
        table.add_row(*row)
    console().print(table)


def check_finite(record, where: str = "record") -> None:
    """Refuse to write NaN or infinity: every figure in a result file is a real number (or null)."""
    if isinstance(record, dict):
        for key, value in record.items():
            check_finite(value, f"{where}.{key}")
    elif isinstance(record, (list, tuple)):
        for i, value in enumerate(record):
            check_finite(value, f"{where}[{i}]")
    elif isinstance(record, float) and not math.isfinite(record):
        raise ValueError(f"{where} is {record}: not a finite number")
    elif isinstance(record, int) and not isinstance(record, bool) and abs(record) > sys.float_info.max:
        raise ValueError(f"{where} is {str(record)[:12]}... ({len(str(record))} digits): beyond a float's range")


def write_json(path: Path, record: dict) -> Path:
    """Benchmark figures must all be measured numbers: refuse NaN/inf, then the package's JSON writer."""
    check_finite(record)
    return reporting.write_json(path, record)


def print_summary_line(summary: dict) -> None:
    """The last line of stdout: one JSON object summarising the run (the full record is in the file)."""
    sys.stdout.flush()
    print(json.dumps(summary, allow_nan=False), flush=True)


def display_path(path: Path) -> str:
    path = Path(path).resolve()
    try:
        return str(path.relative_to(Path.cwd()))
    except ValueError:
        return str(path)


def barh_panels(
    path: Path,
    panels: list[dict],
    title: str,
    footnote: str | None = None,
    columns: int = 1,
) -> Path:
    """Horizontal bar charts, one panel per dict: title, labels, values, xlabel, and optionally colors,
    texts (annotation per bar), markers (a black tick per bar, None for none), log (log x axis),
    ref (a vertical reference line), legend ([(label, color)])."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    import matplotlib.ticker

    from train_mrpc.plots import literal  # a --model folder named "$x$" is a name, not a formula

    title, footnote = literal(title), literal(footnote) if footnote else footnote
    panels = [
        {
            **p,
            "title": literal(p["title"]),
            "labels": [literal(x) for x in p["labels"]],
            "texts": [literal(x) for x in p.get("texts") or []],
            "legend": [(literal(label), color) for label, color in p.get("legend") or []],
        }
        for p in panels
    ]
    rows = math.ceil(len(panels) / columns)
    heights = [max(len(p["labels"]) for p in panels[r * columns : (r + 1) * columns]) for r in range(rows)]
    fig, axes = plt.subplots(
        rows,
        columns,
        squeeze=False,
        figsize=(9.0 * columns, 1.0 + sum(0.26 * h + 0.8 for h in heights)),
        gridspec_kw={"height_ratios": [h + 3 for h in heights]},
    )
    for ax in axes.flat[len(panels) :]:
        ax.set_visible(False)
    for ax, panel in zip(axes.flat, panels):
        labels, values = panel["labels"], panel["values"]
        y = list(range(len(labels)))[::-1]
        bars = ax.barh(y, values, color=panel.get("colors") or "#4c72b0", height=0.7)
        ax.set_yticks(y, labels, fontsize=8)
        ax.set_title(panel["title"], fontsize=10, loc="left")
        ax.set_xlabel(panel["xlabel"], fontsize=9)
        ax.tick_params(axis="x", labelsize=8)
        if panel.get("log"):
            ax.set_xscale("log")
        if panel.get("ref") is not None:
            ax.axvline(panel["ref"], color="0.3", linewidth=0.8, linestyle="--")
        markers = panel.get("markers") or [None] * len(values)
        ends = [max(v, m or 0) for v, m in zip(values, markers)]
        top = max(ends) if ends else 1
        if panel.get("log"):
            ax.set_xlim(right=top * 3.5)
            ticks = [t * 10**e for e in range(-4, 5) for t in (1, 2, 5)]
            low = min(v for v in values if v > 0)
            ax.set_xticks([t for t in ticks if low / 2 <= t <= top * 3.5], minor=False)
            ax.xaxis.set_major_formatter(matplotlib.ticker.FuncFormatter(lambda v, _: f"{v:g}"))
            ax.xaxis.set_minor_formatter(matplotlib.ticker.NullFormatter())
        else:
            ax.set_xlim(right=top * 1.45)
        for bar, end, text in zip(bars, ends, panel.get("texts") or []):
            x = end * 1.04 if panel.get("log") else end + top * 0.015
            ax.text(x, bar.get_y() + bar.get_height() / 2, text, va="center", fontsize=7)
        for y_pos, marker in zip(y, markers):
            if marker is not None:
                ax.plot([marker], [y_pos], marker="|", color="black", markersize=11, markeredgewidth=2)
        if panel.get("legend"):
            from matplotlib.patches import Patch

            handles = [Patch(color=color, label=label) for label, color in panel["legend"]]
            ax.legend(handles=handles, fontsize=7, loc="upper left", bbox_to_anchor=(1.005, 1.0), frameon=False)
        ax.grid(axis="x", alpha=0.3)
    fig.suptitle(title, fontsize=11, x=0.01, ha="left")
    if footnote:
        import textwrap

        footnote = textwrap.fill(footnote, width=int(150 * columns))
        fig.text(0.01, 0.005, footnote, fontsize=7, color="0.35", va="bottom")
    fig.tight_layout(
        rect=(0, (0.012 * (footnote.count(chr(10)) + 1) * 10 / fig.get_figheight()) if footnote else 0, 1, 1)
    )
    path.parent.mkdir(parents=True, exist_ok=True)
    buffer = io.BytesIO()
    fig.savefig(buffer, dpi=90, format="png")
    plt.close(fig)
    from PIL import Image  # a matplotlib dependency

    # A 64-colour palette: the same picture at a third of the bytes, small enough to commit.
    Image.open(buffer).convert("RGB").quantize(colors=64).save(path, optimize=True)
    return path


def short_env(env: dict) -> str:
    """One line naming the machine and versions, for plot footnotes and table captions."""
    v = env["versions"]
    commit = (env["git"]["commit"] or "unknown")[:10] + ("+dirty" if env["git"]["dirty"] else "")
    return (
        f"{env['device_name']} · torch {v['torch']} · transformers {v['transformers']} · "
        f"accelerate {v['accelerate']} · tokenizers {v['tokenizers']} · commit {commit} · {env['started_utc']}"
    )
