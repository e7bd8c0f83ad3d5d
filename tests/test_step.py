"""The one training step and padding rule: the step benchmark runs exactly what the training loop runs."""

from __future__ import annotations

import sys
from itertools import islice

import pytest
import torch

from train_mrpc.step import padding_multiple

from conftest import ROOT, tiny_args


@pytest.mark.parametrize(
    "requested, compiled, device, precision, expected",
    [
        (None, False, "cpu", "no", None),
        (None, False, "cpu", "bf16", None),  # CPUs: extra tokens cost more than alignment gains (8-9 % measured)
        (None, False, "cuda", "no", None),  # fp32 on a GPU: no tensor-core alignment to gain
        (None, False, "cuda", "bf16", 8),
        (None, False, "cuda", "fp16", 8),
        (None, True, "cpu", "no", 32),  # compiled: 32-token buckets bound the recompiles
        (None, True, "cuda", "bf16", 32),
        (64, True, "cuda", "bf16", 64),  # an explicit --pad_to_multiple_of always wins
        (16, False, "cpu", "no", 16),
    ],
)
def test_padding_multiple(requested, compiled, device, precision, expected):
    assert (
        padding_multiple(requested, torch_compile=compiled, device_type=device, mixed_precision=precision) == expected
    )


@pytest.fixture(scope="module")
def bench_train_step():
    sys.path.insert(0, str(ROOT / "benchmarks"))
    import bench_train_step

    return bench_train_step


@pytest.mark.parametrize("precision", ["fp32", "bf16"])
def test_benchmark_step_is_the_loops_step(tmp_path, tiny_model_no_dropout, bench_train_step, precision):
    """The loop's final weights after 4 steps equal those of the benchmark's step on the loop's own batches."""
    from accelerate.state import AcceleratorState, GradientState
    from safetensors.torch import load_file
    from transformers import AutoModelForSequenceClassification

    from train_mrpc.config import parse_config
    from train_mrpc.cpu_speed import use_cpu_speedups
    from train_mrpc.data import build_dataloaders, load_raw_splits, tokenize_dataset
    from train_mrpc.model import load_tokenizer_and_model
    from train_mrpc.train import schedule_for, train

    steps = 4
    config = parse_config(
        tiny_args(
            tiny_model_no_dropout,
            tmp_path / "loop",
            "--max_train_steps",
            str(steps),
            "--precision",
            precision,
            "--checkpointing_steps",
            "no",
        )
    )
    train(config)
    loop_weights = load_file(tmp_path / "loop" / "model.safetensors")
    AcceleratorState._reset_state(True)
    GradientState._reset_state()

    # The same batches the loop drew (its loaders, its length-grouped sampler at epoch 0), fed to the benchmark.
    tokenizer, _ = load_tokenizer_and_model(config)
    tokenized = tokenize_dataset(load_raw_splits(config), tokenizer, config.max_length)
    train_loader = build_dataloaders(tokenized, tokenizer, config, pad_to_multiple_of=None)[0]
    model = AutoModelForSequenceClassification.from_pretrained(tiny_model_no_dropout)
    use_cpu_speedups(model)  # as the loop (CPU training) and the benchmark's cells do: its attention in bf16
    cell = {"precision": precision, "compile": False, "compile_backend": None}
    step, (_, bench_model, _, _) = bench_train_step.accelerate_step_fn(
        cell, model, torch.device("cpu"), config, schedule_for(len(train_loader), config)
    )
    for batch in islice(train_loader, steps):
        step(batch)
    bench_weights = bench_model.state_dict()
    for name, value in loop_weights.items():
        assert torch.equal(bench_weights[name], value), name
    initial = AutoModelForSequenceClassification.from_pretrained(tiny_model_no_dropout).state_dict()
    assert any(not torch.equal(initial[n], loop_weights[n]) for n in loop_weights), "the loop trained nothing"


@pytest.mark.parametrize("accumulation", [1, 2])
def test_the_step_returns_the_global_gradient_norm_before_clipping(tmp_path, tiny_model_no_dropout, accumulation):
    """What train_log.jsonl's grad_norm reports: the norm clipping saw (not the clipped one), once per optimizer step."""
    import copy

    from train_mrpc.config import parse_config
    from train_mrpc.step import training_step
    from train_mrpc.train import setup

    run = setup(
        parse_config(
            tiny_args(
                tiny_model_no_dropout,
                tmp_path / "run",
                "--precision",
                "fp32",
                "--gradient_accumulation_steps",
                str(accumulation),
            )
        )
    )
    batches = list(islice(iter(run.train_loader), accumulation))
    reference = copy.deepcopy(run.accelerator.unwrap_model(run.model))
    for batch in batches:
        (reference(**batch).loss / accumulation).backward()
    expected = torch.linalg.vector_norm(
        torch.stack([p.grad.norm() for p in reference.parameters() if p.grad is not None])
    )
    max_norm = float(expected) / 10  # so that it clips
    norms = [
        training_step(run.accelerator, run.model, run.optimizer, run.scheduler, batch, max_norm)[1] for batch in batches
    ]
    assert norms[:-1] == [None] * (accumulation - 1)  # inside an accumulation: no optimizer step, no norm
    assert float(norms[-1]) == pytest.approx(float(expected), rel=1e-5)
    off = [training_step(run.accelerator, run.model, run.optimizer, run.scheduler, batch, 0.0)[1] for batch in batches]
    assert off == [None] * accumulation  # clipping off: no norm is computed


class _Toy(torch.nn.Module):
    """A model with the loop's interface (``model(**batch).loss``) whose loss is infinite on demand."""

    def __init__(self):
        super().__init__()
        self.linear = torch.nn.Linear(4, 1)

    def forward(self, x, overflow=False):
        from types import SimpleNamespace

        loss = self.linear(x).square().mean()
        return SimpleNamespace(loss=loss * float("inf") if overflow else loss)


def test_a_step_the_grad_scaler_skips_does_not_advance_the_schedule():
    """fp16 with the loop's fused AdamW: GradScaler always calls a fused optimizer's step (the kernel skips an
    inf/NaN step itself), so Accelerate's ``step_was_skipped`` stays False and its scheduler would step anyway.
    The loop's step must leave the learning rate where it was on a skipped step, and advance it on clean ones.

    Accelerate gives a CPU Accelerator no GradScaler (fp16 is refused there), so a real CPU GradScaler is set on
    the Accelerator before ``prepare``, which wraps optimizer and scheduler in its own AcceleratedOptimizer (holding
    the scaler) and AcceleratedScheduler, as it does on a GPU; ``accelerator.backward`` then scales the loss."""
    from accelerate import Accelerator
    from accelerate.optimizer import AcceleratedOptimizer
    from accelerate.scheduler import AcceleratedScheduler

    from train_mrpc.step import training_step

    accelerator = Accelerator(cpu=True)
    accelerator.scaler = torch.amp.GradScaler("cpu", init_scale=2.0**16)
    torch.manual_seed(0)
    model = _Toy()
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-2, fused=True)
    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, lambda step: (step + 1) / 10)  # a warm-up
    model, optimizer, scheduler = accelerator.prepare(model, optimizer, scheduler)
    assert isinstance(optimizer, AcceleratedOptimizer) and optimizer.scaler is accelerator.scaler
    assert isinstance(scheduler, AcceleratedScheduler)

    x = torch.ones(2, 4)
    seen = []  # (overflow, lr before, lr after, scale after, weights changed)
    for overflow in (False, True, False):
        lr, weight = scheduler.get_last_lr()[0], model.linear.weight.detach().clone()
        training_step(accelerator, model, optimizer, scheduler, {"x": x, "overflow": overflow}, max_grad_norm=1.0)
        changed = not torch.equal(weight, model.linear.weight)
        seen.append((overflow, lr, scheduler.get_last_lr()[0], accelerator.scaler.get_scale(), changed))

    (_, lr0, lr1, scale1, moved1), (_, _, lr2, scale2, moved2), (_, _, lr3, scale3, moved3) = seen
    assert moved1 and lr1 > lr0 and scale1 == 2.0**16, seen  # a clean step: weights and schedule move
    assert not moved2 and scale2 == scale1 / 2, seen  # the overflow: the fused kernel skipped, the scale halved
    assert not optimizer.step_was_skipped  # what Accelerate's scheduler goes by: it cannot tell (the bug)
    assert lr2 == lr1, f"the schedule advanced on the step the scaler skipped: {seen}"
    assert moved3 and lr3 > lr2 and scale3 == scale2, seen  # clean again: the schedule moves on from where it was
    assert scheduler.scheduler.last_epoch == 2  # two clean optimizer steps, two schedule steps
