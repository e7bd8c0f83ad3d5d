"""The hyperparameters: one dataclass, the single source of truth for flags, config files and --help.

Flag names follow transformers' ``run_glue.py`` where it has one. Defaults reproduce the published
bert-base-uncased MRPC recipe from Google's BERT README (batch 32, lr 2e-5, 3 epochs), with the
linear warmup/decay and weight decay of the Hugging Face examples.
"""

from __future__ import annotations

import dataclasses
import json
import math
import os
import re
import sys
import types
import typing
from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal, Optional

from train_mrpc.errors import OneLineArgumentErrors, UserError, read_text_file
from train_mrpc.recipes import RECIPE_NAMES
from train_mrpc.schema import TRAIN_CONFIG

SYNTHETIC = "synthetic"
# Accelerate's tracker name -> the module it needs.
TRACKERS = {
    "tensorboard": "tensorboard",
    "wandb": "wandb",
    "mlflow": "mlflow",
    "comet_ml": "comet_ml",
    "aim": "aim",
    "clearml": "clearml",
    "dvclive": "dvclive",
}
# numpy's legacy seeding, which accelerate.utils.set_seed calls, takes exactly this range.
MAX_SEED = 2**32 - 1
# The largest value of an integer setting that has no rule of its own (see check_types): a larger batch, step
# count, sample count or timeout is never meant and only fails deep inside a run (itertools.islice takes at most
# sys.maxsize, datetime.timedelta about 8.6e13 seconds).
MAX_INT = 2**31 - 1
MAX_INT_TEXT = f"{MAX_INT} (2**31 - 1)"
CHECKPOINTING_EXPECTED = f"a number of steps from 1 to {MAX_INT_TEXT}, 'epoch' or 'no'"
SCHEDULERS = ("linear", "cosine", "cosine_with_restarts", "polynomial", "constant", "constant_with_warmup")


def _help(text: str, **kwargs):
    return field(metadata={"help": text}, **kwargs)


@dataclass
class TrainConfig:
    # --- model --------------------------------------------------------------------------------
    model_name_or_path: str = _help(
        "Hub model id (e.g. bert-base-uncased) or a local directory with config, weights and tokenizer.",
        default="bert-base-uncased",
    )
    trust_remote_code: bool = _help(
        "Allow a Hub model to run its own Python code. Off unless you trust that repository.", default=False
    )
    ignore_mismatched_sizes: bool = _help(
        "Start from a model whose classification head has another number of labels (an MNLI model's 3): its "
        "head is replaced by a new 2-label one, trained from scratch. Off: such a model is refused.",
        default=False,
    )
    attn_implementation: Literal["sdpa", "eager"] = _help(
        "Attention kernel: 'sdpa' (PyTorch scaled_dot_product_attention; falls back to eager where the "
        "model has no SDPA path) or 'eager'.",
        default="sdpa",
    )
    # --- data ---------------------------------------------------------------------------------
    dataset: str = _help(
        "Where the data comes from when no --data_dir or --*_file is given: a Hub dataset id (loaded "
        "with config --dataset_config), or 'synthetic' for generated MRPC-shaped pairs (offline).",
        default="nyu-mll/glue",
    )
    dataset_config: str = _help("Config name of the Hub dataset.", default="mrpc")
    data_dir: Optional[str] = _help(
        "A folder of GLUE-format MRPC files: train.tsv, dev.tsv and optionally test.tsv.", default=None
    )
    train_file: Optional[str] = _help("Training file: .csv, .tsv, .json, .jsonl or .parquet.", default=None)
    validation_file: Optional[str] = _help("Validation file, same formats as --train_file.", default=None)
    test_file: Optional[str] = _help("Optional test file (labels may be absent).", default=None)
    sentence1_column: str = _help("Column of the first sentence in --*_file inputs.", default="sentence1")
    sentence2_column: str = _help("Column of the second sentence in --*_file inputs.", default="sentence2")
    label_column: str = _help(
        "Column of the label in --*_file inputs: 0/1 or not_equivalent/equivalent.", default="label"
    )
    max_train_samples: Optional[int] = _help("Use only the first N training examples.", default=None)
    max_eval_samples: Optional[int] = _help("Use only the first N validation examples.", default=None)
    synthetic_seed: int = _help("Seed of the generated data for --dataset synthetic.", default=0)
    max_length: int = _help(
        "Maximum tokens per pair; longer pairs are truncated. Batches are padded only to their longest pair.",
        default=128,
    )
    pad_to_multiple_of: Optional[int] = _help(
        "Pad batch lengths to a multiple of this (default: 32 with --torch_compile, 8 under mixed precision "
        "on a GPU, else none: on CPUs the extra tokens cost more than alignment gains).",
        default=None,
    )
    # --- optimisation -------------------------------------------------------------------------
    per_device_train_batch_size: int = _help("Training examples per process per micro-batch.", default=32)
    per_device_eval_batch_size: int = _help("Evaluation examples per process per batch.", default=64)
    gradient_accumulation_steps: int = _help(
        "Micro-batches per optimizer step (global batch = per-device batch x processes x this).", default=1
    )
    auto_find_batch_size: bool = _help(
        "Before training, halve the per-device batch while a worst-case batch (--max_length tokens per row) runs "
        "out of memory, doubling --gradient_accumulation_steps each time: the global batch and the recipe stay "
        "the same (unlike Trainer's, which shrinks the global batch).",
        default=False,
    )
    learning_rate: float = _help("Peak learning rate of AdamW.", default=2e-5)
    freeze_word_embeddings: bool = _help(
        "Keep the word-embedding table as loaded: no gradient and no AdamW state for it (all-MiniLM-L6-v2: "
        "11.7M of its 22.7M parameters; bert-base: 23.4M of 110M). Position and token-type embeddings, their "
        "LayerNorm and every layer above still train. One process or DDP.",
        default=False,
    )
    freeze_lower_layers: int = _help(
        "Keep the embeddings (word, position, token type and their LayerNorm) and the lowest N encoder layers as "
        "loaded: no gradient, no AdamW state, and backward stops above them (all-MiniLM-L6-v2 has 6 layers, "
        "bert-base 12). 0 trains them all. BERT-style encoders (model.base_model.encoder.layer); one process or DDP.",
        default=0,
    )
    dropout: Optional[float] = _help(
        "Dropout probability of every dropout layer of the model (BERT: hidden states, attention probabilities, "
        "classifier input), in place of the model config's own (BERT's 0.1); the saved config.json records it. "
        "Default: the model's own.",
        default=None,
    )
    weight_decay: float = _help("AdamW weight decay (not applied to biases and LayerNorm weights).", default=0.01)
    adam_beta1: float = _help("AdamW beta1.", default=0.9)
    adam_beta2: float = _help("AdamW beta2.", default=0.999)
    adam_epsilon: float = _help("AdamW epsilon.", default=1e-8)
    max_grad_norm: float = _help("Clip the global gradient norm to this; 0 turns clipping off.", default=1.0)
    num_train_epochs: float = _help("Passes over the training data (ignored if --max_train_steps is set).", default=3.0)
    max_train_steps: Optional[int] = _help(
        "Total optimizer steps; overrides --num_train_epochs when set.", default=None
    )
    lr_scheduler_type: Literal[SCHEDULERS] = _help(  # type: ignore[valid-type]
        "Learning-rate schedule after warmup (transformers.get_scheduler).", default="linear"
    )
    warmup_ratio: float = _help("Fraction of optimizer steps spent warming up linearly from 0.", default=0.1)
    num_warmup_steps: Optional[int] = _help(
        "Warmup length in optimizer steps; overrides --warmup_ratio when set.", default=None
    )
    seed: int = _help("Seed for model initialisation, data order and dropout.", default=42)
    recipe: Optional[Literal[RECIPE_NAMES]] = _help(  # type: ignore[valid-type]
        "A published recipe's hyperparameters (batch, lr, epochs, warmup, AdamW, clipping) under every flag "
        "you give: 'google-bert' (Google's BERT README: batch 32, lr 2e-5, 3 epochs) or 'mosbach-stable' "
        "(Mosbach et al., ICLR 2021: batch 16, lr 2e-5, 20 epochs, 10%% warmup, bias-corrected AdamW, clipping "
        "1.0), or 'fast' (measured here for all-MiniLM-L6-v2 on a 2-core CPU: lr 1.5e-4, batch 32, 2 epochs, no "
        "dropout, word embeddings frozen, one evaluation at the end, no checkpoints). Sources in "
        "train_mrpc/recipes.py; explicit flags and --config values win.",
        default=None,
    )
    # --- speed --------------------------------------------------------------------------------
    precision: Literal["auto", "fp32", "bf16", "fp16"] = _help(
        "Compute precision. 'auto': the launch config's mixed precision if it sets one, else bf16 autocast "
        "where the hardware runs it fast (CUDA with bf16; CPUs with avx512_bf16/AMX), fp16 with loss scaling on "
        "older GPUs, else fp32.",
        default="auto",
    )
    group_by_length: bool = _help(
        "Batch pairs of similar length (random megabatches sorted by length), so batches carry little "
        "padding; off gives randomly ordered batches.",
        default=True,
    )
    torch_compile: bool = _help(
        "torch.compile the model, with batch lengths bucketed to multiples of 32 to limit recompiles. "
        "Costs compile time up front; measured no gain on small CPUs.",
        default=False,
    )
    torch_compile_mode: Literal["default", "reduce-overhead", "max-autotune", "max-autotune-no-cudagraphs"] = _help(
        "torch.compile mode with --torch_compile: 'reduce-overhead' replays CUDA graphs (one per bucketed "
        "batch shape), which removes kernel-launch overhead on GPUs; 'default' compiles without them.",
        default="default",
    )
    static_shapes: Literal["auto", "on", "off"] = _help(
        "Static training shapes: every batch has --per_device_train_batch_size rows and one of a few fixed lengths "
        "(buckets chosen from the data's lengths), gathered from token tensors kept on the device; a short last "
        "batch is filled with rows of loss weight zero, so results equal the dynamic-padding run. auto: on where "
        "--cuda_graphs is on (graphs replay fixed shapes), else off.",
        default="auto",
    )
    cuda_graphs: Literal["auto", "on", "off"] = _help(
        "Capture the whole training step (forward, backward, clipping, fused AdamW) as one CUDA graph per batch "
        "length and replay it: no Python or kernel launches per step. CUDA, one process, fp32 or bf16 only. "
        "auto: off (not yet measured on a GPU).",
        default="auto",
    )
    cpu_speedups: Literal["auto", "on", "off"] = _help(
        "CPU training speed-ups (train_mrpc/cpu_speed.py): dropout masks from 16-bit slices of 64-bit random words "
        "instead of torch's bernoulli, attention with dropout (or in bf16 training) as a CPU attention function that "
        "keeps the masks, and glibc keeping freed memory. auto: on for CPU training without --torch_compile. Same "
        "drop rate and scaling, another random stream, so a checkpoint resumes only with the same choice.",
        default="auto",
    )
    profile: bool = _help(
        "Record a torch.profiler trace over a few optimizer steps (per process, in output_dir/profile: opens in "
        "TensorBoard's profiler and ui.perfetto.dev) and print the top operators by self time at the end.",
        default=False,
    )
    profile_skip_steps: int = _help("With --profile: optimizer steps run before the profiler starts.", default=5)
    profile_warmup_steps: int = _help("With --profile: steps profiled but discarded (profiler warm-up).", default=2)
    profile_steps: int = _help("With --profile: steps recorded in the trace.", default=5)
    peak_tflops: Optional[float] = _help(
        "The device's peak TFLOP/s in the run's precision, for MFU (default: a datasheet table of common GPUs; "
        "on CPUs a short matmul, measured once and cached in ~/.cache/train_mrpc).",
        default=None,
    )
    tf32: bool = _help("Allow TF32 matmuls on CUDA GPUs (Ampere and newer) for fp32 work.", default=True)
    ddp_timeout: int = _help(
        "Seconds a collective (all-reduce, barrier) waits for the other processes before the run fails "
        "(Trainer's name and default). A dead process is found sooner: its peers see the closed connection.",
        default=1800,
    )
    # --- outputs ------------------------------------------------------------------------------
    output_dir: str = _help("Where the model, tokenizer, metrics and logs are written.", default="runs/mrpc")
    logging_steps: int = _help(
        "Log the training loss every N optimizer steps (multi-process runs also agree on a preemption stop there).",
        default=10,
    )
    do_predict: bool = _help(
        "After training, predict the test split: MRPC.tsv (GLUE submission: index, prediction) and "
        "test_probabilities.tsv; test accuracy/F1 too when the test split has labels.",
        default=False,
    )
    eval_strategy: Literal["epoch", "end"] = _help(
        "When to score the validation split: after every 'epoch' (learning curves, best_model/ and early stopping "
        "by epoch) or only at the 'end' of training (the final model's scores; best_model/ is the final model).",
        default="epoch",
    )
    early_stopping_patience: Optional[int] = _help(
        "Stop after this many evaluations without improvement of --metric_for_best_model.", default=None
    )
    report_to: str = _help(
        "Experiment trackers through Accelerate, comma-separated: tensorboard (offline), wandb, mlflow, "
        "comet_ml, aim, clearml, dvclive, all, or none.",
        default="none",
    )
    # --- checkpoints --------------------------------------------------------------------------
    checkpointing_steps: str = _help(
        "Save a resumable checkpoint every N optimizer steps, after every 'epoch', or 'no'.", default="epoch"
    )
    save_total_limit: Optional[int] = _help(
        "Keep the last K checkpoints plus the best by --metric_for_best_model; unset keeps all.", default=None
    )
    resume_from_checkpoint: Optional[str] = _help(
        "Resume from this checkpoint directory, or 'latest' in --output_dir (starts fresh when there is none).",
        default=None,
    )
    metric_for_best_model: Literal["accuracy", "f1", "loss"] = _help(
        "Validation metric that picks the best checkpoint and the model kept in output_dir/best_model "
        "(higher is better, except loss).",
        default="accuracy",
    )
    overwrite_output_dir: bool = _help(
        "Start fresh in an --output_dir that holds an earlier run: its checkpoints, best model and logs are deleted.",
        default=False,
    )
    resume_with_changed_settings: bool = _help(
        "Resume even from a checkpoint made with other result-deciding settings (model, data, seed, batch, "
        "schedule, precision ...), continuing with the new ones; without it such a resume is refused.",
        default=False,
    )
    dataloader_num_workers: int = _help("DataLoader worker processes (0 loads in the main process).", default=0)

    def __post_init__(self) -> None:
        self._normalise_checkpointing_steps()
        check_types(self, INT_RANGES)  # also refuses inf and nan for every float field, and bounds every integer
        for name in NAME_FIELDS:
            # An empty value is a shell variable that was not set (--train_file "$TRAIN"): --train_file '' and
            # --data_dir '' read as "not given", so the run trained on the Hub's data instead.
            value = getattr(self, name)
            check_value(value is None or value.strip() != "", name, value, f"{NAME_FIELDS[name]}, not an empty string")
        for name in PATH_FIELDS:
            # The shell expands ~ only at the start of a word: a config file's `output_dir: ~/runs` or a flag's
            # --output_dir=~/runs made a folder named "~" in the current one, and --train_file=~/x.csv was "not found".
            value = getattr(self, name)
            if value is not None and value.startswith("~") and value != "latest":
                setattr(self, name, os.path.expanduser(value))
        columns = {
            "sentence1_column": self.sentence1_column,
            "sentence2_column": self.sentence2_column,
            "label_column": self.label_column,
        }
        for name, column in columns.items():
            same = next(other for other in columns if columns[other] == column)
            if same != name:  # the same column twice trains every sentence paired with itself, or its text as labels
                raise UserError(
                    f"--{name} {shown_value(column)} names the same column as --{same}; expected three "
                    "different columns (first sentence, second sentence, label)"
                )
        check_value(0 <= self.seed <= MAX_SEED, "seed", self.seed, f"an integer from 0 to {MAX_SEED} (2**32 - 1)")
        try:
            self.output_dir.encode("utf-8")
        except UnicodeEncodeError:
            raise UserError(
                f"--output_dir {self.output_dir!r} holds bytes that are not UTF-8; choose another name"
            ) from None
        check_value(self.learning_rate > 0, "learning_rate", self.learning_rate, "a number > 0")
        if self.dropout is not None:
            check_value(0 <= self.dropout < 1, "dropout", self.dropout, "a number in [0, 1)")
        check_value(self.num_train_epochs > 0, "num_train_epochs", self.num_train_epochs, "a number > 0")
        # 1e308 epochs of a few steps each is inf steps, which math.ceil refuses while the run sets up.
        check_value(self.num_train_epochs <= MAX_INT, "num_train_epochs", self.num_train_epochs, EPOCHS_EXPECTED)
        check_value(self.weight_decay >= 0, "weight_decay", self.weight_decay, "a number >= 0")
        check_value(self.max_grad_norm >= 0, "max_grad_norm", self.max_grad_norm, "a number >= 0 (0 = no clipping)")
        check_value(0 <= self.warmup_ratio < 1, "warmup_ratio", self.warmup_ratio, "a number in [0, 1)")
        for name in ("adam_beta1", "adam_beta2"):
            check_value(0 <= getattr(self, name) < 1, name, getattr(self, name), "a number in [0, 1)")
        check_value(self.adam_epsilon > 0, "adam_epsilon", self.adam_epsilon, "a number > 0")
        if self.cpu_speedups == "on" and self.torch_compile:
            raise UserError(
                "--cpu_speedups on is for eager CPU training, and --torch_compile generates its own "
                "dropout kernels: use one of them (--cpu_speedups auto chooses)"
            )
        if self.peak_tflops is not None:
            check_value(self.peak_tflops > 0, "peak_tflops", self.peak_tflops, "a number > 0 (TFLOP/s)")
        check_value(
            self.checkpointing_steps in ("epoch", "no") or _step_count(self.checkpointing_steps) is not None,
            "checkpointing_steps",
            self.checkpointing_steps,
            CHECKPOINTING_EXPECTED,
        )
        unknown = set(self.trackers) - set(TRACKERS)
        check_value(
            not unknown, "report_to", self.report_to, f"a comma-separated list of {', '.join(TRACKERS)}, all or none"
        )
        if self.early_stopping_patience and self.eval_strategy == "end":
            raise UserError(
                "--early_stopping_patience counts evaluations, and --eval_strategy end evaluates once, after "
                "training: use --eval_strategy epoch with it, or leave --early_stopping_patience out"
            )
        files = [f for f in ("train_file", "validation_file", "test_file") if getattr(self, f)]
        if self.data_dir and files:
            raise UserError(f"--data_dir and --{files[0]} both name training data; pass one source, not both")
        if files and not (self.train_file and self.validation_file):
            raise UserError("--train_file and --validation_file must be given together")

    def _normalise_checkpointing_steps(self) -> None:
        """Config files give numbers as numbers (``checkpointing_steps: 5``), and YAML 1.1 reads ``no`` as false."""
        steps = self.checkpointing_steps
        if steps is False:
            self.checkpointing_steps = "no"
        elif isinstance(steps, int) and not isinstance(steps, bool):
            self.checkpointing_steps = str(steps)
        elif not isinstance(steps, str):
            check_value(False, "checkpointing_steps", steps, CHECKPOINTING_EXPECTED)

    @property
    def trackers(self) -> list[str]:
        names = [n.strip() for n in self.report_to.split(",") if n.strip()]
        return list(TRACKERS) if names == ["all"] else [n for n in names if n != "none"]

    @property
    def checkpoint_every(self) -> int | None:
        """N of ``--checkpointing_steps N``; None for 'epoch' and 'no'."""
        return _step_count(str(self.checkpointing_steps))

    @property
    def greater_is_better(self) -> bool:
        """Whether a larger --metric_for_best_model is better (accuracy, F1) or worse (loss)."""
        return self.metric_for_best_model != "loss"

    @property
    def data_source(self) -> str:
        """A short description of where the examples come from, for logs and results."""
        if self.data_dir:
            return f"glue-dir:{self.data_dir}"
        if self.train_file:
            return f"files:{self.train_file}"
        return self.dataset if self.dataset == SYNTHETIC else f"hub:{self.dataset}/{self.dataset_config}"

    def to_dict(self) -> dict:
        return dataclasses.asdict(self)

    def save(self, output_dir: str | os.PathLike) -> Path:
        """Write the resolved configuration; ``train-mrpc --config <that file>`` repeats the run."""
        path = Path(output_dir) / TRAIN_CONFIG
        path.write_text(json.dumps(self.to_dict(), indent=2) + "\n")
        return path


# The settings that name a file, folder, column or Hub entry, and what each expects: none may be empty.
NAME_FIELDS = {
    "model_name_or_path": "a Hub model id or a model folder",
    "dataset": "a Hub dataset id or 'synthetic'",
    "dataset_config": "a Hub dataset config name",
    "data_dir": "a folder",
    "train_file": "a file path",
    "validation_file": "a file path",
    "test_file": "a file path",
    "sentence1_column": "a column name",
    "sentence2_column": "a column name",
    "label_column": "a column name",
    "output_dir": "a folder path",
    "resume_from_checkpoint": "a checkpoint folder or 'latest'",
}
# The settings that are local paths, where a leading ~ means the home folder (model_name_or_path: hub.py).
PATH_FIELDS = ("data_dir", "train_file", "validation_file", "test_file", "output_dir", "resume_from_checkpoint")


class IntRange(typing.NamedTuple):
    """The values of an integer setting: ``minimum`` (None: no minimum) to MAX_INT, called ``kind`` in messages."""

    minimum: int | None
    kind: str = "an integer"


# The range of each of TrainConfig's integer fields, checked by check_types: a field missing here takes any integer
# up to MAX_INT; one named with None has a rule of its own.
INT_RANGES = {
    **dict.fromkeys(
        (
            "max_length",
            "per_device_train_batch_size",
            "per_device_eval_batch_size",
            "gradient_accumulation_steps",
            "logging_steps",
            "max_train_steps",
            "max_train_samples",
            "max_eval_samples",
            "pad_to_multiple_of",
            "profile_steps",
            "save_total_limit",
            "early_stopping_patience",
        ),
        IntRange(1),
    ),
    **dict.fromkeys(
        (
            "num_warmup_steps",
            "freeze_lower_layers",
            "profile_skip_steps",
            "profile_warmup_steps",
            "dataloader_num_workers",
        ),
        IntRange(0),
    ),
    "ddp_timeout": IntRange(1, "an integer number of seconds"),  # launch.py: timedelta(seconds=...)
    "seed": None,  # 0 to MAX_SEED, checked in __post_init__
    "synthetic_seed": None,  # any integer: random.Random takes it as text
}
EPOCHS_EXPECTED = f"a number > 0 and at most {MAX_INT_TEXT}"


def _step_count(text: str) -> int | None:
    """N of a step count written as ASCII digits, from 1 to MAX_INT; None for anything else. (str.isdigit alone
    takes '²', which int() refuses, and '٣', which int() reads as 3.)"""
    if not (text.isascii() and text.isdigit()) or len(text.lstrip("0")) > len(str(MAX_INT)):
        return None  # the length first: int() refuses more than 4300 digits
    steps = int(text)
    return steps if 1 <= steps <= MAX_INT else None


def check_seeds(seed: int, num_seeds: int) -> list[int]:
    """The seeds --seed, --seed + 1, ... of a run over ``num_seeds`` seeds, every one checked before the first runs."""
    check_value(
        seed + num_seeds - 1 <= MAX_SEED, "num_seeds", num_seeds, f"at most {MAX_SEED - seed + 1} from --seed {seed}"
    )
    return list(range(seed, seed + num_seeds))


def shown_value(value, limit: int = 120) -> str:
    """A value for an error line, cut to about ``limit`` characters: a config file's YAML aliases can nest a
    312-byte file into a list whose repr is 254 MB (measured), which must not become the one-line message."""
    import reprlib

    short = reprlib.Repr()
    short.maxlevel, short.maxlist, short.maxtuple, short.maxdict, short.maxset = 3, 6, 6, 6, 6
    short.maxstring, short.maxother, short.maxlong = limit, limit, 40
    text = short.repr(value)
    return text if len(text) <= limit else text[: limit - 3] + "..."


def check_value(ok: bool, name: str, value, expected: str) -> None:
    if not ok:
        raise UserError(f"--{name} {shown_value(value)} is invalid: expected {expected}")


def is_finite(value: float) -> bool:
    try:
        return math.isfinite(value)
    except OverflowError:  # an int too large for a float (a config file can hold one)
        return False


def check_types(config, int_ranges: dict[str, IntRange | None]) -> None:
    """Config files bypass argparse's conversions, so check every value of a dataclass of settings (TrainConfig,
    or a subcommand's own) against its annotation; integers also against ``int_ranges`` (see INT_RANGES)."""
    hints = typing.get_type_hints(type(config))
    for f in dataclasses.fields(config):
        value, hint = getattr(config, f.name), hints[f.name]
        if typing.get_origin(hint) in (typing.Union, types.UnionType):  # Optional[X]
            if value is None:
                continue
            hint = next(a for a in typing.get_args(hint) if a is not type(None))
        if typing.get_origin(hint) is Literal:
            choices = typing.get_args(hint)
            check_value(value in choices, f.name, value, f"one of {', '.join(choices)}")
        elif hint is bool:
            check_value(isinstance(value, bool), f.name, value, "true or false")
        elif hint is float:
            check_value(isinstance(value, (int, float)) and not isinstance(value, bool), f.name, value, "a number")
            check_value(is_finite(value), f.name, value, "a finite number")
        elif hint is int:
            check_value(isinstance(value, int) and not isinstance(value, bool), f.name, value, "an integer")
            rule = int_ranges.get(f.name, IntRange(None))
            if rule is not None:
                _check_int_range(f.name, value, rule)
        elif hint is str:
            check_value(isinstance(value, str), f.name, value, "a string")


def _check_int_range(name: str, value: int, rule: IntRange) -> None:
    if rule.minimum is not None:
        check_value(value >= rule.minimum, name, value, f"{rule.kind} >= {rule.minimum}")
    check_value(
        value <= MAX_INT,
        name,
        value,
        f"{rule.kind} {'<=' if rule.minimum is None else f'from {rule.minimum} to'} {MAX_INT_TEXT}",
    )


def build_parser(prog: str = "train-mrpc", extra_types: tuple = ()):
    from transformers import HfArgumentParser

    class Parser(OneLineArgumentErrors, HfArgumentParser):
        pass

    parser = Parser(
        [TrainConfig, *extra_types],
        prog=prog,
        allow_abbrev=False,  # a typo like --learning_rat must fail, not silently match --learning_rate
        description="Fine-tune a BERT-style model on GLUE MRPC. Every flag can also be set in a YAML or "
        "JSON file given with --config; flags on the command line win over the file. "
        "Subcommands: `train-mrpc prefetch [flags]` caches the model, tokenizer and data of a run for offline "
        "nodes; `train-mrpc reproduce [flags] [--num_seeds N]` runs the recipe over N seeds and writes a report; "
        "`train-mrpc sweep [flags] [--learning_rates ...]` runs a grid x seeds through Optuna's storage (several "
        "workers may share it); `train-mrpc plot OUTPUT_DIR` redraws a run's training_curves.png; "
        "`train-mrpc bench tokenization|steps|end-to-end|tables [flags]` runs the benchmark suite (offline; "
        "--quick for a smoke test).",
    )
    # Appended, so that a second --config is seen (argparse keeps the last: the first file was dropped silently).
    parser.add_argument("--config", action="append", help="YAML or JSON file of the flags below (keys = flag names).")
    return parser


def load_config_file(path: str, types: tuple = (TrainConfig,)) -> dict:
    """Read a YAML/JSON config file into a dict, with errors that name the file."""
    file = Path(path)
    text = read_text_file(file, f"config file {path}", "a YAML or JSON file")
    try:
        if file.suffix == ".json":
            values = json.loads(text, object_pairs_hook=_json_object_without_repeats(path))
        else:
            values = _yaml_without_repeated_keys(path, text)
    except UserError:
        raise
    except Exception as err:  # json.JSONDecodeError or yaml.YAMLError
        kind = "JSON" if file.suffix == ".json" else "YAML"
        reason = " ".join(str(err).split())
        raise UserError(f"config file {path} is not valid {kind}: {reason}") from None
    if (
        values is None
    ):  # an empty file (cut short, or not saved yet) ran every default silently; `{}` says "none" on purpose
        raise UserError(
            f"config file {path} holds no settings (it is empty, or only comments or null); expected a "
            "mapping of flag names to values, such as 'learning_rate: 2.0e-5' ({} for none)"
        )
    if not isinstance(values, dict):
        raise UserError(f"config file {path} must hold a mapping of flag names to values, got {type(values).__name__}")
    for key in values:
        if not isinstance(key, str):  # YAML reads unquoted 1, null, true and dates as such
            kind = (
                "null"
                if key is None
                else "true/false"
                if isinstance(key, bool)
                else "a number"
                if isinstance(key, (int, float))
                else f"a {type(key).__name__}"
            )
            raise UserError(
                f"config file {path}: key {shown_value(key)} ({kind}, not text) is not a flag name; "
                "run train-mrpc --help for the valid names"
            )
    known = {f.name for t in types for f in dataclasses.fields(t)}
    unknown = sorted(set(values) - known)
    if unknown:
        raise UserError(
            f"config file {path}: unknown key(s) {', '.join(unknown)}; run train-mrpc --help for the valid names"
        )
    return values


def _repeated_key(path: str, key, line: int | None, first: int | None = None) -> UserError:
    where = f"line {line} " if line else ""
    before = f" (first on line {first})" if first else ""
    return UserError(
        f"config file {path}: {where}repeats the key {shown_value(key)}{before}; "
        "a later value would silently replace the earlier one: keep one"
    )


def _yaml_without_repeated_keys(path: str, text: str):
    """yaml.safe_load, except that a mapping that repeats a key is an error (PyYAML keeps the last silently)."""
    import yaml

    class Loader(yaml.SafeLoader):
        def construct_mapping(self, node, deep=False):
            if isinstance(node, yaml.MappingNode):
                seen = {}
                for key_node, _ in node.value:
                    if key_node.tag == "tag:yaml.org,2002:merge":  # `<<: *base`: its keys may be overridden
                        continue
                    key = self.construct_object(key_node, deep=True)
                    try:
                        if key in seen:
                            raise _repeated_key(path, key, key_node.start_mark.line + 1, seen[key])
                        seen[key] = key_node.start_mark.line + 1
                    except TypeError:  # an unhashable key: PyYAML's own message says so below
                        continue
            return super().construct_mapping(node, deep=deep)

    def number(self, node):
        """YAML 1.1 reads 010 as octal 8 and 1:30 as base 60 (90); nobody writing a seed or a step count means either."""
        value = (self.construct_yaml_int if node.tag.endswith(":int") else self.construct_yaml_float)(node)
        text = node.value.replace("_", "").lstrip("+-")
        kind = "base 60" if ":" in text else "octal" if re.fullmatch(r"0[0-7]+", text) else None
        if kind:
            raise UserError(
                f"config file {path}: line {node.start_mark.line + 1}: {node.value} is read by YAML as "
                f"{kind} ({shown_value(value)}); write the number as you mean it ('{node.value}' in quotes "
                "for text)"
            )
        return value

    Loader.add_constructor("tag:yaml.org,2002:int", number)
    Loader.add_constructor("tag:yaml.org,2002:float", number)
    return yaml.load(text, Loader=Loader)  # noqa: S506 -- a SafeLoader subclass


def _json_object_without_repeats(path: str):
    """An object_pairs_hook for json.loads that refuses an object repeating a key (json keeps the last)."""

    def hook(pairs):
        values = {}
        for key, value in pairs:
            if key in values:
                raise _repeated_key(path, key, None)
            values[key] = value
        return values

    return hook


def parse_config(argv: list[str] | None = None, prog: str = "train-mrpc", extra_types: tuple = ()):
    """Parse flags (and an optional --config file under them) into a validated TrainConfig.

    With ``extra_types`` (a subcommand's own dataclasses), returns a tuple: TrainConfig, then one of each.
    """
    argv = sys.argv[1:] if argv is None else argv
    parser = build_parser(prog, extra_types)
    config_paths = parser.parse_known_args(argv)[0].config or []
    if len(config_paths) > 1:
        raise UserError(
            f"--config is given {len(config_paths)} times ({', '.join(map(shown_value, config_paths))}); "
            "expected one file (a later one would silently replace the earlier): merge them into one"
        )
    config_path = config_paths[0] if config_paths else None
    if config_path is not None and not config_path.strip():  # an unset shell variable: the file was skipped silently
        raise UserError(
            f"--config {shown_value(config_path)} is invalid: expected a YAML or JSON file path, not an empty string"
        )
    file_values = load_config_file(config_path, (TrainConfig, *extra_types)) if config_path else {}
    if config_path:
        # File values become the parser's defaults, so flags on the command line override them.
        parser.set_defaults(**file_values)
    recipe = parser.parse_known_args(argv)[0].recipe  # from a flag or from the file
    if recipe is not None and not (isinstance(recipe, str) and recipe in RECIPE_NAMES):
        # argparse checks the flag's choices, never a default's: this one came from the file.
        raise UserError(
            f"config file {config_path}: --recipe {shown_value(recipe)} is invalid: "
            f"expected one of {', '.join(RECIPE_NAMES)}"
        )
    if recipe:
        from train_mrpc.recipes import recipe_values

        # A recipe's values go under the file's, which go under the flags: whatever is given explicitly wins.
        parser.set_defaults(**{**recipe_values(recipe), **file_values})
    namespace, remaining = parser.parse_known_args(argv)
    if remaining:
        parser.error(f"unrecognized arguments: {' '.join(remaining)}")
    values = vars(namespace)
    configs = tuple(t(**{f.name: values[f.name] for f in dataclasses.fields(t)}) for t in (TrainConfig, *extra_types))
    return configs if extra_types else configs[0]
