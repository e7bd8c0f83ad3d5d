"""Training-step throughput: forward + backward + AdamW step over a grid of settings, with a bare baseline.

    train-mrpc bench steps            # full grid for this device (CPU: 7-10 minutes)
    train-mrpc bench steps --quick    # smoke test: tiny model, every strategy, seconds

The model of a cell is AutoModelForSequenceClassification.from_config(config, attn_implementation=...)
with random weights (they time exactly like pretrained ones). Each cell runs the step exactly as the
project's training loop does (Accelerator.prepare, accumulate, backward, clip_grad_norm_, AdamW, linear
schedule) and, as a baseline on the same batches, a bare PyTorch loop doing the identical work without
Accelerate; the CUDA-graph step (train_mrpc/graphs.py) is a third variant where it can run (VARIANTS).
A cell builds and warms up every variant, then times them interleaved step by step over the same batches
(A B, B A, A B, ...), so a slow spell of the machine or a first run's costs hit all of them alike; each
variant reports its median and minimum step, and its ratios to the bare loop's from both. Batches hold real
MRPC pair lengths (or generated ones with MRPC's distribution), padded by one of three strategies. See
benchmarks/README.md for what each figure means.
"""

from __future__ import annotations

import copy
import os
import random
import statistics
import sys
import tempfile
import time
from contextlib import nullcontext
from pathlib import Path

from train_mrpc import hub
from train_mrpc.bench import common
from train_mrpc.errors import UserError, read_json_object
from train_mrpc.flops import count_parameters, training_flops  # one implementation: the loop's

PRECISIONS = ("fp32", "bf16", "fp16")
PADDINGS = ("fixed", "dynamic", "grouped")
ATTENTIONS = ("eager", "sdpa")
MIXED_PRECISION = {"fp32": "no", "bf16": "bf16", "fp16": "fp16"}
# bert-base-uncased's architecture, used when the shared models/bert-base-uncased/config.json is absent.
BERT_BASE = {
    "model_type": "bert",
    "vocab_size": 30522,
    "hidden_size": 768,
    "num_hidden_layers": 12,
    "num_attention_heads": 12,
    "intermediate_size": 3072,
    "hidden_act": "gelu",
    "hidden_dropout_prob": 0.1,
    "attention_probs_dropout_prob": 0.1,
    "max_position_embeddings": 512,
    "type_vocab_size": 2,
    "initializer_range": 0.02,
    "layer_norm_eps": 1e-12,
    "pad_token_id": 0,
}
# all-MiniLM-L6-v2's shape: BERT with 6 layers, 384 hidden, 12 heads, bert-base-uncased's vocabulary.
MINILM_L6 = {**BERT_BASE, "hidden_size": 384, "num_hidden_layers": 6, "intermediate_size": 1536}
LR_WARMUP, LR_TOTAL = 100, 1000  # a linear schedule, as the project's loop uses; only its cost matters


# --- plan ------------------------------------------------------------------------------------------


def parse_args(argv=None):
    parser = common.base_parser(__doc__, prog="train-mrpc bench steps")
    parser.add_argument(
        "--model_config",
        nargs="+",
        default=None,
        help="Model architecture(s): 'bert-base' (models/bert-base-uncased/config.json of the shared assets, "
        "found as for --tokenizer, or the same numbers built in), 'minilm-l6' (6 layers, 384 hidden, 12 heads, "
        "1536 intermediate, vocab 30522), "
        "'tiny' (the project's 2-layer test model), or a folder/config.json. Default: CPU bert-base at batch 8 "
        "and minilm-l6 at batch 32; GPU both at batch 32 and 128; --quick: tiny at batch 8.",
    )
    parser.add_argument(
        "--batch_size",
        type=common.positive_int,
        nargs="+",
        default=None,
        help="Per-device batch size(s); every model runs every size (default: per model, above).",
    )
    parser.add_argument(
        "--precision",
        nargs="+",
        choices=PRECISIONS,
        default=None,
        help="Precisions: fp32, bf16 (mixed, autocast), fp16 (mixed + loss scaling; CUDA only). "
        "Default: fp32 bf16 on CPU, all three on GPU.",
    )
    parser.add_argument(
        "--padding",
        nargs="+",
        choices=PADDINGS,
        default=list(PADDINGS),
        help="Padding strategies: fixed (every batch to 128, run_glue's default), dynamic "
        "(random batches, each padded to its longest pair, Accelerate's example), grouped "
        "(the project's length-grouped batches, --group_by_length). Default: all three.",
    )
    parser.add_argument(
        "--attn",
        nargs="+",
        choices=ATTENTIONS,
        default=list(ATTENTIONS),
        help="Attention implementations (default: eager sdpa).",
    )
    parser.add_argument(
        "--compile",
        choices=("auto", "on", "off"),
        default="auto",
        help="torch.compile twins of cells. auto (default): for the smallest model, its fixed-padding sdpa "
        "cells in every precision (a CPU compile takes 20-60 s); with --quick, one cell on the 'eager' "
        "backend (no code generation). on: every cell. off: none.",
    )
    parser.add_argument(
        "--compile_backend", default=None, help="torch.compile backend (default: inductor; --quick: eager)."
    )
    parser.add_argument(
        "--bare_baseline",
        choices=("all", "sdpa", "none"),
        default=None,
        help="Which cells also run the bare PyTorch loop for Accelerate's overhead ratio: all; sdpa (cells "
        "with sdpa attention and no compile: the overhead does not depend on the attention kernel); none. "
        "Default: all on GPU and with --quick, sdpa on a full CPU run.",
    )
    parser.add_argument(
        "--steps",
        type=common.positive_int,
        default=None,
        help="Timed steps per run (default: CPU 5, GPU 20, --quick 3).",
    )
    parser.add_argument(
        "--warmup",
        type=common.non_negative_int,
        default=None,
        help="Untimed warm-up steps per run (default 2, --quick 1; +1 for compiled cells with "
        "varying batch shapes). The first step of a compiled cell compiles.",
    )
    parser.add_argument(
        "--threads",
        type=common.positive_int,
        default=None,
        help="torch intra-op threads (default: torch's choice, one per core; --quick: 1, since "
        "a tiny model's small ops stall in OpenMP barriers when other work shares the cores).",
    )
    parser.add_argument(
        "--matmul_size",
        type=common.positive_int,
        default=None,
        help="Side of the square matmul whose speed is the MFU peak (default: CPU 2048, GPU 8192, --quick 512).",
    )
    return parser.parse_args(argv)


def default_batch(model: str, cuda: bool, quick: bool) -> list[int]:
    if quick:
        return [8]
    if cuda:
        return [32, 128]
    return {"bert-base": [8], "minilm-l6": [32]}.get(model, [8])


def plan_models(args) -> list[str]:
    """The --model_config names of this run (the defaults when none is given)."""
    if args.model_config is not None:
        return args.model_config
    return ["tiny"] if args.quick else ["bert-base", "minilm-l6"]


def build_plan(args, cuda: bool) -> dict:
    models = plan_models(args)
    precisions = args.precision or (["fp32", "bf16", "fp16"] if cuda else ["fp32", "bf16"])
    if "fp16" in precisions and not cuda:
        raise UserError("--precision fp16 needs a CUDA GPU: on CPU, Accelerate would silently run fp32")
    runs = [(m, b) for m in models for b in (args.batch_size or default_batch(m, cuda, args.quick))]
    return {
        "quick": args.quick,
        "runs": runs,
        "precisions": precisions,
        "paddings": args.padding,
        "attentions": args.attn,
        "compile": args.compile,
        "compile_backend": args.compile_backend or ("eager" if args.quick else "inductor"),
        "bare_baseline": args.bare_baseline or ("all" if cuda or args.quick else "sdpa"),
        "steps": args.steps if args.steps is not None else (3 if args.quick else 20 if cuda else 5),
        "warmup": args.warmup if args.warmup is not None else (1 if args.quick else 2),
        "matmul_size": args.matmul_size
        if args.matmul_size is not None
        else 512
        if args.quick
        else 8192
        if cuda
        else 2048,
        "matmul_repeats": 3 if args.quick else 10,
    }


# --- models and FLOPs ------------------------------------------------------------------------------


def load_model_config(name: str):
    """(transformers config with 2 labels, description); a --model_config that is none of the kinds, or that
    transformers cannot build, is one UserError."""
    from transformers import AutoConfig

    if name == "tiny":
        from train_mrpc.synthetic import build_tiny_model

        return copy.deepcopy(
            build_tiny_model(0)[1].config
        ), "tiny: the project's 2-layer test BERT (train_mrpc.synthetic)"
    if name == "bert-base":
        shared = common.shared_asset(common.SHARED_BERT, "config.json")
        if shared is not None:
            return AutoConfig.from_pretrained(
                shared, num_labels=2
            ), f"bert-base-uncased architecture ({shared}/config.json)"
        return AutoConfig.for_model(**BERT_BASE, num_labels=2), "bert-base-uncased architecture (built-in numbers)"
    if name == "minilm-l6":
        return AutoConfig.for_model(
            **MINILM_L6, num_labels=2
        ), "MiniLM-L6 shape (6 layers, 384 hidden, 12 heads, 1536 FFN)"
    path, flag = Path(name), f"--model_config {name}"
    expected = "a model's config.json (a JSON object with its model_type)"
    if path.is_file():
        values = read_json_object(path, flag, expected)
        if not isinstance(values.get("model_type"), str):
            raise UserError(f"{flag}: has no 'model_type'; expected {expected}")
        try:
            return AutoConfig.for_model(**{**values, "num_labels": 2}), str(path)
        except Exception as err:  # the user's file is at fault: an unknown model_type, a value of the wrong kind
            raise UserError(
                f"{flag}: transformers cannot build a model config from it ({common.reason(err)})"
            ) from None
    if path.is_dir():
        if not (path / "config.json").is_file():
            raise UserError(
                f"{flag}: a folder without config.json; expected a preset (bert-base, minilm-l6, tiny), "
                "a model folder or a config.json"
            )
        try:
            return AutoConfig.from_pretrained(path, num_labels=2), str(path)
        except Exception as err:  # as above
            raise UserError(f"{flag}: transformers cannot read its config.json ({common.reason(err)})") from None
    raise UserError(f"{flag}: not a preset (bert-base, minilm-l6, tiny), a folder or a config.json")


def build_model(config, attn: str, seed: int):
    import torch
    from transformers import AutoModelForSequenceClassification

    config = copy.deepcopy(config)
    # What BERT's forward sets on its first call anyway; set up front, it spares torch.compile a recompile.
    config.problem_type = "single_label_classification"
    torch.manual_seed(seed)
    return AutoModelForSequenceClassification.from_config(config, attn_implementation=attn)


def matmul_peak(device, precision: str, size: int, repeats: int, guard: dict) -> dict:
    """FLOP/s of a large square matmul in this precision: the denominator of MFU, measured in this run."""
    import torch

    dtype = {"fp32": torch.float32, "bf16": torch.bfloat16, "fp16": torch.float16}[precision]
    a = torch.randn(size, size, device=device, dtype=dtype)
    b = torch.randn(size, size, device=device, dtype=dtype)

    def measure():
        with common.OtherCpu() as other:
            timed = common.time_calls(lambda: torch.mm(a, b), warmup=2, repeats=repeats)[0]
        return timed, other.cores

    timed, guarded = common.run_guarded(measure, **guard)
    stats = common.summarize(timed)
    return {
        "size": size,
        "dtype": str(dtype),
        "seconds": stats,
        "flops_per_s": 2 * size**3 / stats["median"],
        "guard": guarded,
    }


# --- batches ---------------------------------------------------------------------------------------


def encode_examples(tokenizer, columns: dict) -> list[dict]:
    """Token ids of every pair, by the project's own encoder (train_mrpc.data.tokenize_pairs)."""
    from train_mrpc.data import pair_encoder, tokenize_pairs

    out = tokenize_pairs(columns, pair_encoder(tokenizer, common.MAX_LENGTH))
    return [
        {"input_ids": ids, "token_type_ids": types, "labels": max(label, 0)}
        for ids, types, label in zip(out["input_ids"], out["token_type_ids"], columns["label"])
    ]


def epoch_batches(lengths: list[int], strategy: str, batch_size: int, rng: random.Random) -> list[list[int]]:
    """One epoch's batches as index lists: shuffled (fixed, dynamic) or in the order of the project's
    length-grouped sampler (grouped: random megabatches of 50 batches, each sorted by length)."""
    if strategy == "grouped":
        from train_mrpc.data import LengthGroupedSampler

        order = list(LengthGroupedSampler(lengths, batch_size, seed=rng.randrange(2**31)))
    else:
        order = list(range(len(lengths)))
        rng.shuffle(order)
    batches = [order[i : i + batch_size] for i in range(0, len(order), batch_size)]
    return [b for b in batches if len(b) == batch_size]  # drop the short last batch


def collator_for(tokenizer, strategy: str, multiple: int | None):
    """The project's collator: each batch padded to its longest pair (up to ``multiple``), or all to 128."""
    from transformers import DataCollatorWithPadding

    if strategy == "fixed":  # run_glue's default: every batch padded to --max_seq_length
        return DataCollatorWithPadding(tokenizer, padding="max_length", max_length=common.MAX_LENGTH)
    return DataCollatorWithPadding(tokenizer, pad_to_multiple_of=multiple)


def select_batches(
    examples, tokenizer, config, strategy: str, batch_size: int, multiple, warmup: int, steps: int, seed: int
):
    """Warm-up and timed batches, collated as the loop collates them, plus their real lengths.

    The timed batches are a stratified sample of one epoch: the batches at evenly spaced quantiles of padded
    length, in shuffled order, so a few steps see the epoch's mix of short and long batches. Warm-up
    batches are random others. Token ids above the model's vocabulary wrap around (only shapes matter).
    """
    rng = random.Random(f"{seed}-{strategy}-{batch_size}")
    lengths = [len(e["input_ids"]) for e in examples]
    batches = epoch_batches(lengths, strategy, batch_size, rng)
    by_length = sorted(range(len(batches)), key=lambda b: max(lengths[i] for i in batches[b]))
    timed = [by_length[min(len(by_length) - 1, int((k + 0.5) * len(by_length) / steps))] for k in range(steps)]
    rng.shuffle(timed)
    others = [b for b in range(len(batches)) if b not in set(timed)]
    # A large batch leaves fewer batches in an epoch than steps to time (MRPC has 7 of 512): the quantiles
    # above then repeat batches, and warm-up draws from all of them.
    warm = rng.sample(others, warmup) if len(others) >= warmup else rng.choices(range(len(batches)), k=warmup)
    chosen = warm + timed
    collate = collator_for(tokenizer, strategy, multiple)
    out = []
    for b in chosen:
        rows = [examples[i] for i in batches[b]]
        tensors = dict(collate(rows))
        tensors["input_ids"] %= config.vocab_size
        tensors["token_type_ids"].clamp_(max=config.type_vocab_size - 1)
        out.append((tensors, [len(r["input_ids"]) for r in rows], tensors["input_ids"].shape[1]))
    return out[:warmup], out[warmup:]


# --- the two ways of running a step ----------------------------------------------------------------


def reset_accelerate() -> None:
    """AcceleratorState is a process-wide singleton: forget it so the next cell can pick its own precision."""
    from accelerate.state import AcceleratorState, GradientState

    AcceleratorState._reset_state(True)
    GradientState._reset_state()


def bench_train_config():
    """The project's defaults (AdamW lr 2e-5, decay 0.01, clipping 1.0, linear schedule), 1000 steps, 100 warm-up."""
    from train_mrpc.config import TrainConfig
    from train_mrpc.train import Schedule

    return TrainConfig(), Schedule(steps_per_epoch=LR_TOTAL, max_steps=LR_TOTAL, num_epochs=1, warmup_steps=LR_WARMUP)


def accelerate_step_fn(cell: dict, model, device, train_config=None, schedule=None):
    """The project's loop itself: its Accelerator set-up, optimizer, scheduler, compile call, training step
    (train_mrpc.step.training_step) and loss meter, on batches moved to the device as a prepared loader does."""
    from accelerate import Accelerator

    from train_mrpc.meters import Meters
    from train_mrpc.model import build_optimizer
    from train_mrpc.step import compile_model, training_step
    from train_mrpc.train import build_scheduler

    if train_config is None:
        train_config, schedule = bench_train_config()
    reset_accelerate()
    accelerator = Accelerator(
        cpu=device.type == "cpu",
        mixed_precision=MIXED_PRECISION[cell["precision"]],
        gradient_accumulation_steps=train_config.gradient_accumulation_steps,
    )
    # Fused AdamW on CPU and CUDA, as the loop builds it.
    optimizer = build_optimizer(model, train_config, fused=device.type in ("cuda", "cpu"))
    model, optimizer = accelerator.prepare(model, optimizer)
    scheduler = build_scheduler(accelerator, optimizer, train_config, schedule)
    if cell["compile"]:
        model = compile_model(model, backend=cell["compile_backend"])
    model.train()
    meters = Meters(device, samples=0)

    def step(batch):
        batch = {k: v.to(device, non_blocking=True) for k, v in batch.items()}
        loss, _ = training_step(accelerator, model, optimizer, scheduler, batch, train_config.max_grad_norm)
        meters.add(loss, batch)
        return loss

    return step, (accelerator, model, optimizer, scheduler)


def bare_step_fn(cell: dict, model, device):
    """The identical work in plain PyTorch: torch.autocast for bf16/fp16, GradScaler for fp16, no Accelerate."""
    import torch
    from transformers import get_scheduler

    from train_mrpc.model import build_optimizer
    from train_mrpc.step import compile_model

    train_config, schedule = bench_train_config()
    model = model.to(device)
    optimizer = build_optimizer(model, train_config, fused=True)
    scheduler = get_scheduler(
        "linear", optimizer, num_warmup_steps=schedule.warmup_steps, num_training_steps=schedule.max_steps
    )
    if cell["compile"]:
        model = compile_model(model, backend=cell["compile_backend"])
    model.train()
    dtype = {"bf16": torch.bfloat16, "fp16": torch.float16}.get(cell["precision"])
    scaler = torch.amp.GradScaler(device.type) if cell["precision"] == "fp16" else None
    running_loss = torch.zeros((), device=device)

    def step(batch):
        batch = {k: v.to(device, non_blocking=True) for k, v in batch.items()}
        with torch.autocast(device.type, dtype=dtype) if dtype else nullcontext():
            loss = model(**batch).loss
        if scaler is not None:
            scaler.scale(loss).backward()
            scaler.unscale_(optimizer)
            torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
            scaler.step(optimizer)
            scaler.update()
        else:
            loss.backward()
            torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
            optimizer.step()
        scheduler.step()
        optimizer.zero_grad(set_to_none=True)
        running_loss.add_(loss.detach())
        return loss

    return step, (model, optimizer, scheduler)


def graphs_compiled() -> int:
    try:
        from torch._dynamo.utils import counters

        return int(counters["stats"]["unique_graphs"])
    except Exception:  # counters are internal; a missing key is not an error here
        return 0


# --- the variants of a cell, timed interleaved ------------------------------------------------------


class VariantUnavailable(Exception):
    """A variant that cannot run in this cell; the message says why (printed, and kept in the record)."""


def build_accelerate(cell: dict, model, device):
    """The project's loop (train_mrpc.step.training_step under its Accelerator): (step, the model it runs)."""
    step, (_, prepared, _, _) = accelerate_step_fn(cell, model, device)
    return step, prepared


def build_bare(cell: dict, model, device):
    """The identical work in plain PyTorch, the baseline of every ratio."""
    if not cell["bare_baseline"]:
        raise VariantUnavailable("not run in this cell (--bare_baseline)")
    step, (bare_model, _, _) = bare_step_fn(cell, model, device)
    return step, bare_model


def build_graphs(cell: dict, model, device):
    """The CUDA-graph step (train_mrpc/graphs.py, --cuda_graphs): the loop's Accelerator set-up, optimizer and
    scheduler (accelerate_step_fn's), with the step captured once per batch length and replayed.

    The harness's batches arrive as collated CPU tensors; each is copied into the static buffers of its length
    (as the loop's static-shape loader fills them on the device). A length seen for the first time is warmed up
    and captured then, which the harness's warm-up batches (one per timed shape) do before timing starts.
    """
    if device.type != "cuda":
        raise VariantUnavailable("needs CUDA")
    if cell["precision"] == "fp16":
        raise VariantUnavailable("fp32 and bf16 only (--cuda_graphs)")
    if cell["compile"]:
        raise VariantUnavailable("not with torch.compile")
    from train_mrpc.graphs import GraphedTrainingStep
    from train_mrpc.meters import Meters

    train_config, schedule = bench_train_config()
    _, (accelerator, prepared, optimizer, scheduler) = accelerate_step_fn(cell, model, device, train_config, schedule)
    graphed = GraphedTrainingStep(accelerator, prepared, optimizer, {}, train_config.max_grad_norm)
    meters = Meters(device, samples=0)

    def step(batch):
        length = batch["input_ids"].shape[1]
        if length not in graphed.static_inputs:
            graphed.add_lengths({length: {k: v.to(device).clone() for k, v in batch.items()}})
        inputs = graphed.static_inputs[length]
        for key, value in batch.items():
            inputs[key].copy_(value, non_blocking=True)
        loss, _ = graphed(inputs)
        scheduler.step()
        meters.add(loss, inputs)
        return loss

    return step, prepared


# Every variant of a cell, by name: a builder (cell, model, device) -> (step, model) or VariantUnavailable.
# A cell builds all of them (each its own model, same weights, its own optimizer), warms each up, then times
# them interleaved over the same batches. The ratios are to BASELINE's step time.
VARIANTS = {"accelerate": build_accelerate, "bare": build_bare, "graphs": build_graphs}
BASELINE = "bare"


def rng_states(device) -> dict:
    import torch

    states = {"cpu": torch.get_rng_state()}
    if device.type == "cuda":
        states["cuda"] = torch.cuda.get_rng_state(device)
    return states


def set_rng_states(states: dict, device) -> None:
    import torch

    torch.set_rng_state(states["cpu"])
    if "cuda" in states:
        torch.cuda.set_rng_state(states["cuda"], device)


def memory_in_use(device) -> int:
    import torch

    return torch.cuda.memory_allocated(device) if device.type == "cuda" else common.rss_bytes()


def batch_fingerprint(batch: dict) -> str:
    """Rows x length and a CRC of the token ids and labels: which batch a variant was given."""
    import zlib

    ids = batch["input_ids"]
    crc = zlib.crc32(batch["labels"].numpy().tobytes(), zlib.crc32(ids.numpy().tobytes()))
    return f"{ids.shape[0]}x{ids.shape[1]}:{crc:08x}"


def round_order(names: list[str], index: int) -> list[str]:
    """The order of the variants in timed round ``index``: rotated by one each round (A B, B A, A B, ...; with
    three A B C, B C A, C A B), so that each variant runs first in turn."""
    shift = index % len(names)
    return names[shift:] + names[:shift]


def run_cell(names: list[str], cell: dict, config, device, warm_batches, timed_batches, seed: int) -> dict:
    """Build every variant and warm it up (outside the clock, one after the other), then time them interleaved:
    round k runs timed batch k through every variant, the first one rotating, each step synchronised and timed
    on its own. Returns {"variants": {name: raw figures}, "skipped": {name: why}, "order": [[names], ...],
    "other_cpu_cores": of the timed rounds}."""
    import torch

    from train_mrpc.cpu_speed import resolve_cpu_speedups, use_cpu_speedups

    common.release_memory()
    if device.type == "cuda":
        torch.cuda.empty_cache()
    if cell["compile"]:
        torch._dynamo.reset()
    speedups = resolve_cpu_speedups("auto", device.type, cell["compile"])[0]
    torch.manual_seed(seed + 1)
    start_rng = rng_states(device)  # every variant's dropout stream starts here: identical masks in all
    in_use_at_start, rss_at_start = memory_in_use(device), common.rss_bytes()
    built, skipped = {}, {}
    for name in names:
        # Memory of this variant as if alone: peak over its build and warm-up (the others idle), and the RSS
        # before its build, each less what the variants built before it hold.
        held_by_others = memory_in_use(device) - in_use_at_start
        rss_before = min(rss_at_start, common.rss_bytes())
        if device.type == "cuda":
            torch.cuda.reset_peak_memory_stats(device)
        with common.PeakRSS() as rss:
            model = build_model(config, cell["attn"], seed)  # the same seed: the same weights in every variant
            if speedups:
                use_cpu_speedups(model)  # as the loop does by default, in every variant
            try:
                step, used = VARIANTS[name](cell, model, device)
            except VariantUnavailable as why:
                skipped[name] = str(why)
                del model
                continue
            del model  # the variant holds what it needs
            rng, warm = start_rng, []
            for batch, _, _ in [*warm_batches, *shape_warmups(timed_batches, device)]:
                set_rng_states(rng, device)
                common.synchronize()
                start = time.perf_counter()
                step(batch)
                common.synchronize()
                warm.append(time.perf_counter() - start)
                rng = rng_states(device)
        peak = torch.cuda.max_memory_allocated(device) if device.type == "cuda" else rss.peak
        built[name] = {
            "step": step,
            "model": used,
            "rng": rng,
            "warm": warm,
            "timed": [],
            "batches": [],
            "recompiles": 0,
            "loss": None,
            "peak_memory_bytes": peak - held_by_others,
            "memory_kind": "cuda_max_allocated" if device.type == "cuda" else "process_rss_peak",
            "rss_before_bytes": rss_before,
        }
        del step, used
    order = []
    running = list(built)
    with common.OtherCpu() as other:
        for index, (batch, _, _) in enumerate(timed_batches):
            order.append(round_order(running, index))
            for name in order[-1]:
                v = built[name]
                set_rng_states(v["rng"], device)
                v["batches"].append(batch_fingerprint(batch))
                graphs_before = graphs_compiled()
                common.synchronize()
                start = time.perf_counter()
                v["loss"] = v["step"](batch)
                common.synchronize()
                v["timed"].append(time.perf_counter() - start)
                v["recompiles"] += graphs_compiled() - graphs_before
                v["rng"] = rng_states(device)
    variants = {}
    for name, v in built.items():
        variants[name] = {
            "timed": v["timed"],
            "warm": v["warm"],
            "batches": v["batches"],
            "last_loss": float(v["loss"].detach().float().item()),
            "peak_memory_bytes": v["peak_memory_bytes"],
            "memory_kind": v["memory_kind"],
            "rss_before_bytes": v["rss_before_bytes"],
            "graphs_compiled_during_timing": v["recompiles"],
            "attn_implementation_used": getattr(getattr(v["model"], "config", None), "_attn_implementation", None),
            "cpu_speedups": speedups,
        }
    built.clear()
    reset_accelerate()
    return {"variants": variants, "skipped": skipped, "order": order, "other_cpu_cores": other.cores}


def shape_warmups(timed_batches, device) -> list:
    """Extra untimed steps: on a GPU, one batch of each shape the clock will see.

    The first step of each new shape loads kernels and picks cuBLAS algorithms: up to ~1 s per shape (H100,
    bf16, measured), 20x a step. Steady state is what is timed here (the fine-tune's train_runtime counts
    those first uses), so each timed shape is seen once before the clock starts.
    """
    return list({b[2]: b for b in timed_batches}.values()) if device.type == "cuda" else []


def variant_figures(raw: dict, cell: dict, work: dict, peak_flops: float) -> dict:
    stats = common.summarize(raw["timed"])
    total = sum(raw["timed"])
    steps = len(raw["timed"])
    figures = {
        "step_seconds": stats,
        "timed_seconds": raw["timed"],  # in the order timed (interleaved with the cell's other variants)
        "batches": raw["batches"],  # each timed batch's batch_fingerprint, in the same order
        "warmup_seconds": raw["warm"],
        "samples_per_s": steps * cell["batch_size"] / total,
        "real_tokens_per_s": work["real_tokens"] / total,
        "padded_tokens_per_s": work["padded_tokens"] / total,
        "achieved_flops_per_s": work["flops"] / total,
        "mfu": work["flops"] / total / peak_flops,
        "useful_mfu": work["useful_flops"] / total / peak_flops,
        "peak_memory_bytes": raw["peak_memory_bytes"],
        "memory_kind": raw["memory_kind"],
        "rss_before_bytes": raw["rss_before_bytes"],
        "last_loss": raw["last_loss"],
        "attn_implementation_used": raw["attn_implementation_used"],
        "cpu_speedups": raw["cpu_speedups"],  # train_mrpc.cpu_speed: its attention function stands in for sdpa
    }
    if cell["compile"]:
        # The first warm-up step traces and compiles; a plain step's cost is taken off to leave compile time.
        figures["compile_seconds"] = max(0.0, raw["warm"][0] - stats["median"]) if raw["warm"] else None
        figures["graphs_compiled_during_timing"] = raw["graphs_compiled_during_timing"]
    return figures


# --- main ------------------------------------------------------------------------------------------


def upper_median(values: list) -> float | None:
    """The median as the summary has always taken it (the upper one of an even count); None without values."""
    values = [v for v in values if v is not None]
    return statistics.median_high(values) if values else None


def add_ratios(cell: dict) -> None:
    """Each variant's step time over the bare loop's, from medians and from minimums (timed interleaved, over
    the same batches); ``accelerate_overhead_ratio`` (medians) and ``accelerate_overhead_ratio_of_mins`` are
    Accelerate's, ``last_loss_abs_diff`` its last loss against the bare loop's (identical work: expected ~0)."""
    base = cell.get(BASELINE)
    for name in VARIANTS:
        if name != BASELINE and cell.get(name):
            cell[name]["ratio_to_bare"] = base and {
                stat: cell[name]["step_seconds"][stat] / base["step_seconds"][stat] for stat in ("median", "min")
            }
            cell[name]["last_loss_abs_diff_to_bare"] = base and abs(cell[name]["last_loss"] - base["last_loss"])
    ratio = cell["accelerate"]["ratio_to_bare"]
    cell["accelerate_overhead_ratio"] = ratio and ratio["median"]
    cell["accelerate_overhead_ratio_of_mins"] = ratio and ratio["min"]
    cell["last_loss_abs_diff"] = cell["accelerate"]["last_loss_abs_diff_to_bare"]


def cell_key(cell: dict) -> str:
    compiled = f"compile-{cell['compile_backend']}" if cell["compile"] else "eager-mode"
    return f"{cell['model']}/b{cell['batch_size']}/{cell['precision']}/{cell['padding']}/{cell['attn']}/{compiled}"


def plan_cells(plan: dict, model_sizes: dict) -> list[dict]:
    cells = []
    smallest = min(model_sizes, key=model_sizes.get)
    for model, batch_size in plan["runs"]:
        for precision in plan["precisions"]:
            for padding in plan["paddings"]:
                for attn in plan["attentions"]:
                    base = {
                        "model": model,
                        "batch_size": batch_size,
                        "precision": precision,
                        "padding": padding,
                        "attn": attn,
                        "compile": False,
                        "compile_backend": None,
                    }
                    cells.append(base)
                    if plan["compile"] == "on":
                        twin = True
                    elif plan["compile"] == "auto":
                        first_precision_only = plan["quick"]  # --quick: one compiled cell
                        twin = (
                            model == smallest
                            and padding == plan["paddings"][0]
                            and attn == plan["attentions"][-1]
                            and batch_size == min(b for m, b in plan["runs"] if m == model)
                            and (precision == plan["precisions"][0] or not first_precision_only)
                        )
                    else:
                        twin = False
                    if twin:
                        cells.append({**base, "compile": True, "compile_backend": plan["compile_backend"]})
    for cell in cells:
        bare = plan["bare_baseline"]
        cell["bare_baseline"] = bare == "all" or (bare == "sdpa" and cell["attn"] == "sdpa" and not cell["compile"])
        cell["key"] = cell_key(cell)
    return cells


def main(argv=None) -> dict | None:
    if argv is None:  # run as a script
        return common.run_as_command("steps")
    args = parse_args(argv)
    args.out = common.resolve_out(args.out)
    # Every architecture first: a --model_config that cannot be built is refused before any work starts.
    loaded = {model: load_model_config(model) for model in plan_models(args)}
    # A fresh inductor cache per run: compile times are what a first run pays, not a previous run's cache hit.
    inductor_cache = tempfile.TemporaryDirectory(prefix="bench-inductor-")
    os.environ.setdefault("TORCHINDUCTOR_CACHE_DIR", inductor_cache.name)
    import torch
    import transformers

    from train_mrpc.step import padding_multiple

    transformers.utils.logging.set_verbosity_error()
    threads = args.threads if args.threads is not None else (1 if args.quick else None)
    if threads:
        torch.set_num_threads(threads)
    cuda = torch.cuda.is_available()
    device = torch.device("cuda" if cuda else "cpu")
    plan = build_plan(args, cuda)
    guard = common.guard_settings(args)
    env = common.environment()
    started = time.perf_counter()

    # --- inputs (outside every clock) ---------------------------------------------------------------
    splits, source = common.load_pairs(args.data_dir, args.seed)
    tokenizer, _, tokenizer_name = common.load_tokenizer(args.tokenizer)
    examples = encode_examples(tokenizer, splits["train"])
    lengths = sorted(len(e["input_ids"]) for e in examples)
    configs, model_info = {}, {}
    for model, (config, description) in loaded.items():
        configs[model] = config
        params = count_parameters(build_model(config, "sdpa", args.seed))  # train_mrpc.flops, as the loop
        model_info[model] = {
            "description": description,
            "parameters": params,
            "layers": config.num_hidden_layers,
            "hidden": config.hidden_size,
            "heads": config.num_attention_heads,
            "intermediate": config.intermediate_size,
            "vocab": config.vocab_size,
        }
    cells = plan_cells(plan, {m: info["parameters"]["total"] for m, info in model_info.items()})
    peaks = {p: matmul_peak(device, p, plan["matmul_size"], plan["matmul_repeats"], guard) for p in plan["precisions"]}

    # --- the grid ---------------------------------------------------------------------------------------
    skip_reasons = {}  # variant -> why it did not run, each reason once
    with common.frozen_heap():
        batch_cache = {}
        for number, cell in enumerate(cells, start=1):
            config = configs[cell["model"]]
            # The loop's own padding rule (train_mrpc.step.padding_multiple) for this device and precision.
            multiple = padding_multiple(
                None,
                torch_compile=cell["compile"],
                device_type=device.type,
                mixed_precision=MIXED_PRECISION[cell["precision"]],
            )
            # Compiled cells with varying batch shapes: one more warm-up step (a second shape can recompile).
            warmup = plan["warmup"] + (1 if cell["compile"] and cell["padding"] != "fixed" else 0)
            key = (cell["model"], cell["batch_size"], cell["padding"], multiple, warmup)
            if key not in batch_cache:
                batch_cache[key] = select_batches(
                    examples,
                    tokenizer,
                    config,
                    cell["padding"],
                    cell["batch_size"],
                    multiple,
                    warmup,
                    plan["steps"],
                    args.seed,
                )
            warm_batches, timed_batches = batch_cache[key]
            params = model_info[cell["model"]]["parameters"]
            real = [t for _, lens, _ in timed_batches for t in lens]
            padded = [width for _, lens, width in timed_batches for _ in lens]
            work = {
                "real_tokens": sum(real),
                "padded_tokens": sum(padded),
                "flops": training_flops(params, config, padded),
                "useful_flops": training_flops(params, config, real),
            }
            steps = len(timed_batches)
            cell.update(
                {
                    "padding_fraction": 1 - work["real_tokens"] / work["padded_tokens"],
                    "mean_padded_length": work["padded_tokens"] / (steps * cell["batch_size"]),
                    "mean_real_length": work["real_tokens"] / (steps * cell["batch_size"]),
                    "flops_per_step": work["flops"] / steps,
                    "useful_flops_per_step": work["useful_flops"] / steps,
                    "warmup_steps": len(warm_batches) + len(shape_warmups(timed_batches, device)),
                    "timed_steps": steps,
                }
            )
            cell["load_average_1m_at_start"] = common.load_average()  # other work on the machine skews a cell
            print(f"[{number}/{len(cells)}] {cell['key']}", file=sys.stderr, flush=True)
            peak = peaks[cell["precision"]]["flops_per_s"]

            def measure(cell=cell, config=config, warm_batches=warm_batches, timed_batches=timed_batches):
                raw = run_cell(list(VARIANTS), cell, config, device, warm_batches, timed_batches, args.seed)
                return raw, raw["other_cpu_cores"]

            raw, guarded = common.run_guarded(measure, **guard)
            for name, why in raw["skipped"].items():
                if why not in skip_reasons.setdefault(name, []):
                    skip_reasons[name].append(why)
                    print(f"  {name}: {why}", file=sys.stderr, flush=True)
            cell.update({"variants": list(raw["variants"]), "timed_order": raw["order"], "guard": guarded})
            cell["skipped_variants"] = raw["skipped"]
            for name in VARIANTS:
                figures = raw["variants"].get(name)
                cell[name] = figures and {**variant_figures(figures, cell, work, peak), "guard": guarded}
            add_ratios(cell)
    common.release_memory()

    ratios = [c["accelerate_overhead_ratio"] for c in cells if c["accelerate_overhead_ratio"] is not None]
    record = {
        "benchmark": "train_step",
        "quick": args.quick,
        "environment": env,
        "settings": {
            **{k: v for k, v in plan.items() if k != "runs"},
            "runs": [{"model": m, "batch_size": b} for m, b in plan["runs"]],
            "guard": guard,
            "data_source": source,
            "tokenizer": tokenizer_name,
            "train_pairs": len(examples),
            "max_length": common.MAX_LENGTH,
            "step": "train_mrpc.step.training_step under the loop's Accelerator, optimizer "
            "(train_mrpc.model.build_optimizer: fused AdamW, lr 2e-5, decay 0.01), scheduler "
            "(train_mrpc.train.build_scheduler: linear) and compile call (train_mrpc.step.compile_model)",
            "grouped_batches": "train_mrpc.data.LengthGroupedSampler",
            "collator": "transformers DataCollatorWithPadding, as train_mrpc.data.build_dataloaders (fixed: max_length 128)",
            "pad_to_multiple_of": "train_mrpc.step.padding_multiple: 32 under compile, 8 under mixed precision on "
            "CUDA, else none (the loop's rule)",
            "timing": "per-step wall time with device synchronisation; warm-up steps reported, not counted",
            "interleaving": "a cell builds and warms up every variant (each its own model, same weights, its own "
            "optimizer), then times them over the same batches interleaved step by step: round k runs timed batch "
            "k through every variant, the first rotating each round (timed_order); each variant keeps its own "
            "dropout RNG stream",
            "variants": list(VARIANTS),
            "baseline": BASELINE,
            "flops": "6 x (per-token parameters x tokens + per-sequence parameters x sequences) + 12 x layers "
            "x hidden x length^2 per sequence; embedding lookups not counted",
        },
        "pair_lengths": {
            "mean": sum(lengths) / len(lengths),
            "median": common.percentile(lengths, 50),
            "p95": common.percentile(lengths, 95),
            "max": lengths[-1],
        },
        "models": model_info,
        "matmul_peak": peaks,
        "cells": cells,
        "summary": {
            "cells": len(cells),
            "contended_runs": [
                f"{c['key']}:{kind}"
                for c in cells
                for kind in VARIANTS
                if c.get(kind) and c[kind]["guard"]["contended"]
            ],
            "accelerate_overhead_ratio_median": sorted(ratios)[len(ratios) // 2] if ratios else None,
            "accelerate_overhead_ratio_min": min(ratios) if ratios else None,
            "accelerate_overhead_ratio_max": max(ratios) if ratios else None,
            "accelerate_overhead_ratio_of_mins_median": upper_median(
                [c["accelerate_overhead_ratio_of_mins"] for c in cells]
            ),
            "ratios_to_bare": {
                name: {
                    "cells": sum(1 for c in cells if c.get(name) and c[name]["ratio_to_bare"]),
                    "median_of_medians": upper_median(
                        [c[name]["ratio_to_bare"]["median"] for c in cells if c.get(name) and c[name]["ratio_to_bare"]]
                    ),
                    "median_of_mins": upper_median(
                        [c[name]["ratio_to_bare"]["min"] for c in cells if c.get(name) and c[name]["ratio_to_bare"]]
                    ),
                }
                for name in VARIANTS
                if name != BASELINE
            },
            "variants_skipped": skip_reasons,
        },
        "environment_end": {"load_average_1m": common.load_average()},
        "wall_seconds": time.perf_counter() - started,
    }
    inductor_cache.cleanup()
    write_outputs(args, record)
    return record


# --- output ----------------------------------------------------------------------------------------

PRECISION_COLORS = {"fp32": "#4c72b0", "bf16": "#dd8452", "fp16": "#55a868"}


def cell_label(cell: dict, with_model: bool = False) -> str:
    parts = [cell["precision"], cell["padding"], cell["attn"]] + (["compiled"] if cell["compile"] else [])
    return (f"{cell['model']} b{cell['batch_size']} " if with_model else "") + " · ".join(parts)


def model_title(model: str) -> str:
    """A --model_config as a chart names it: a preset as given, a folder or its config.json by the model's name."""
    return hub.model_name(str(Path(model).parent) if model.endswith(".json") else model)


def contended(cell: dict) -> bool:
    """Whether other processes used the CPU during a run of this cell despite the guard's retries."""
    return any(cell.get(k) and cell[k]["guard"]["contended"] for k in VARIANTS)


def human_count(n: int) -> str:
    return f"{n / 1e6:.1f}M" if n >= 1e5 else f"{n / 1e3:.1f}k"


def ratio_text(figures: dict | None) -> str:
    """A variant's step time over the bare loop's: 'from medians (from minimums)', or '–' without either."""
    ratio = figures and figures.get("ratio_to_bare")
    return f"{ratio['median']:.3f} ({ratio['min']:.3f})" if ratio else "–"


def skipped_text(record: dict) -> str:
    """Variants that did not run, with why: 'graphs: needs CUDA'."""
    return "; ".join(f"{name}: {', '.join(why)}" for name, why in record["summary"]["variants_skipped"].items())


def write_outputs(args, record: dict) -> None:
    env, cells = record["environment"], record["cells"]
    gib = 2**30
    extra = [n for n in VARIANTS if n not in ("accelerate", BASELINE) and any(c.get(n) for c in cells)]
    rows = []
    for c in cells:
        a = c["accelerate"]
        s = a["step_seconds"]
        rows.append(
            [
                f"{c['model']} b{c['batch_size']}",
                c["precision"],
                c["padding"],
                c["attn"],
                "yes" if c["compile"] else "",
                f"{s['median']:.3f} ({s['min']:.3f}–{s['max']:.3f})",
                f"{a['samples_per_s']:,.1f}",
                f"{a['real_tokens_per_s']:,.0f}",
                f"{100 * c['padding_fraction']:.0f}%",
                f"{a['peak_memory_bytes'] / gib:.2f}",
                f"{a['achieved_flops_per_s'] / 1e9:,.1f}",
                f"{100 * a['mfu']:.1f} ({100 * a['useful_mfu']:.1f})",
                ratio_text(a),
                *[ratio_text(c.get(n)) for n in extra],
                f"{a['compile_seconds']:.1f}" if c["compile"] else "",
                "yes" if contended(c) else "",
            ]
        )
    peaks = ", ".join(f"{p} {v['flops_per_s'] / 1e9:,.0f} GFLOP/s" for p, v in record["matmul_peak"].items())
    memory = "CUDA max allocated" if env["device"] == "cuda" else "process RSS peak"
    common.print_table(
        f"Training step (forward + backward + AdamW) on {env['device_name']}: Accelerate, as the project's loop",
        [
            ("model", "left"),
            ("prec", "left"),
            ("padding", "left"),
            ("attn", "left"),
            ("compile", "left"),
            ("step s median (min–max)", "right"),
            ("samples/s", "right"),
            ("real tok/s", "right"),
            ("pad", "right"),
            (f"peak GiB ({memory})", "right"),
            ("GFLOP/s", "right"),
            ("MFU % (useful)", "right"),
            ("Accelerate / bare: medians (mins)", "right"),
            *[(f"{n} / bare", "right") for n in extra],
            ("compile s", "right"),
            ("contended", "left"),
        ],
        rows,
        caption=f"matmul peak ({record['matmul_peak'][next(iter(record['matmul_peak']))]['size']}²): {peaks}; "
        f"{record['settings']['steps']} timed steps after {record['settings']['warmup']} warm-up, the variants "
        "(Accelerate, bare"
        + "".join(f", {n}" for n in extra)
        + ") interleaved step by step; "
        + (f"not run: {skipped_text(record)}; " if record["summary"]["variants_skipped"] else "")
        + common.short_env(env),
    )

    panels = []
    for model, batch_size in [(r["model"], r["batch_size"]) for r in record["settings"]["runs"]]:
        group = [c for c in cells if c["model"] == model and c["batch_size"] == batch_size]
        params = record["models"][model]["parameters"]["total"]
        panels.append(
            {
                "title": f"{model_title(model)} ({human_count(params)} parameters), batch {batch_size}"
                + (" — quick: not a speed claim" if record["quick"] else ""),
                "labels": [cell_label(c) for c in group],
                "values": [c["accelerate"]["samples_per_s"] for c in group],
                "markers": [c["bare"]["samples_per_s"] if c["bare"] else None for c in group],
                "colors": [PRECISION_COLORS[c["precision"]] for c in group],
                "texts": [
                    f"{c['accelerate']['samples_per_s']:,.1f}/s · MFU {100 * c['accelerate']['mfu']:.0f}% "
                    f"· pad {100 * c['padding_fraction']:.0f}%" + (" · CONTENDED" if contended(c) else "")
                    for c in group
                ],
                "xlabel": "samples/s through Accelerate (bar); bare PyTorch loop on the same batches (black tick)",
                "legend": [(p, PRECISION_COLORS[p]) for p in record["settings"]["precisions"]],
            }
        )
    plot = common.barh_panels(
        args.out / "train_step.png",
        panels,
        title="Training-step throughput per cell (higher is better)",
        footnote=common.short_env(env),
    )
    record["plots"] = [plot.name]
    path = common.write_json(args.out / "train_step.json", record)
    best = max(cells, key=lambda c: c["accelerate"]["samples_per_s"])
    common.print_summary_line(
        {
            "benchmark": "train_step",
            "quick": record["quick"],
            "json": common.display_path(path),
            "plots": [common.display_path(plot)],
            "device": env["device_name"],
            "cells": len(cells),
            "best_cell": best["key"],
            "best_samples_per_s": round(best["accelerate"]["samples_per_s"], 3),
            "accelerate_overhead_ratio_median": (
                round(record["summary"]["accelerate_overhead_ratio_median"], 4)
                if record["summary"]["accelerate_overhead_ratio_median"]
                else None
            ),
            "accelerate_overhead_ratio_of_mins_median": (
                round(record["summary"]["accelerate_overhead_ratio_of_mins_median"], 4)
                if record["summary"]["accelerate_overhead_ratio_of_mins_median"]
                else None
            ),
            "variants_skipped": record["summary"]["variants_skipped"],
            "wall_seconds": round(record["wall_seconds"], 2),
        }
    )


if __name__ == "__main__":
    main()
