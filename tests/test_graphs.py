"""--cuda_graphs: its refusals, the tensor learning rate, and the warm-up that leaves no trace (CPU; the captured
graphs themselves run only on a GPU: tests/test_gpu.py)."""

from __future__ import annotations

import pytest
import torch

from tests.conftest import assert_one_line_error, run_cli, tiny_args
from train_mrpc.errors import UserError
from train_mrpc.graphs import GraphedTrainingStep, learning_rates_as_tensors, resolve_cuda_graphs

GRAPHABLE = {
    "static_shapes": "auto",
    "mixed_precision": "bf16",
    "torch_compile": False,
    "gradient_accumulation_steps": 1,
    "distributed_type": "NO",
    "num_processes": 1,
    "device_type": "cuda",
}


def test_auto_and_off_leave_graphs_off_and_a_graphable_launch_turns_them_on():
    assert resolve_cuda_graphs("on", **GRAPHABLE)
    assert not resolve_cuda_graphs("auto", **GRAPHABLE)  # auto stays off until a GPU run shows the win
    assert not resolve_cuda_graphs("off", **GRAPHABLE)


@pytest.mark.parametrize(
    "change, message",
    [
        ({"static_shapes": "off"}, "--cuda_graphs on replays fixed batch shapes: drop --static_shapes off"),
        ({"mixed_precision": "fp16"}, "cannot graph fp16: its GradScaler"),
        ({"torch_compile": True}, "--cuda_graphs on and --torch_compile both take over the step"),
        ({"gradient_accumulation_steps": 4}, "not the micro-steps of --gradient_accumulation_steps 4"),
        ({"distributed_type": "FSDP", "num_processes": 2}, "cannot graph FSDP"),
        ({"distributed_type": "DEEPSPEED"}, "cannot graph DEEPSPEED"),
        ({"distributed_type": "MULTI_GPU", "num_processes": 2}, "runs one process; this launch has 2"),
        ({"device_type": "cpu"}, "--cuda_graphs on needs a CUDA GPU; this run trains on cpu"),
    ],
)
def test_what_cannot_be_graphed_is_refused(change, message):
    with pytest.raises(UserError) as refused:
        resolve_cuda_graphs("on", **{**GRAPHABLE, **change})
    text = str(refused.value)
    assert text.startswith("--cuda_graphs on ") and message in text and "\n" not in text
    assert not resolve_cuda_graphs("off", **{**GRAPHABLE, **change})  # off is always allowed


def test_the_cli_refuses_graphs_on_a_cpu_in_one_line(tiny_model_dir, tmp_path):
    proc = run_cli(tiny_args(tiny_model_dir, tmp_path / "run", "--cuda_graphs", "on"))
    assert_one_line_error(proc.returncode, proc.stderr, "--cuda_graphs on needs a CUDA GPU", "--cuda_graphs off")
    assert not (tmp_path / "run" / "all_results.json").exists()


def tiny_bert(seed: int = 0):
    from transformers import BertConfig, BertForSequenceClassification

    torch.manual_seed(seed)
    config = BertConfig(
        vocab_size=64,
        hidden_size=16,
        num_hidden_layers=1,
        num_attention_heads=2,
        intermediate_size=32,
        max_position_embeddings=32,
        hidden_dropout_prob=0.0,
        attention_probs_dropout_prob=0.0,
    )
    return BertForSequenceClassification(config)


def adamw(model, lr):
    return torch.optim.AdamW(model.parameters(), lr=lr, weight_decay=0.01, fused=True)


def static_inputs(lengths=(8, 16), rows=4, seed=1):
    generator = torch.Generator().manual_seed(seed)
    return {
        length: {
            "input_ids": torch.randint(1, 64, (rows, length), generator=generator),
            "token_type_ids": torch.zeros(rows, length, dtype=torch.long),
            "attention_mask": torch.ones(rows, length, dtype=torch.long),
            "labels": torch.randint(0, 2, (rows,), generator=generator),
        }
        for length in lengths
    }


def test_a_tensor_learning_rate_follows_the_float_schedule_step_for_step():
    """The graph reads the learning rate from a tensor the scheduler fills in place: the same schedule, and the same
    weights, as the float learning rate the eager loop uses (to float32 rounding of the rate)."""
    from transformers import get_scheduler

    batch = static_inputs()[8]
    runs = {}
    for kind in ("float", "tensor"):
        model = tiny_bert()
        optimizer = adamw(model, 1e-3)
        if kind == "tensor":
            learning_rates_as_tensors(optimizer, "cpu")
            tensor = optimizer.param_groups[0]["lr"]
        scheduler = get_scheduler("linear", optimizer, num_warmup_steps=3, num_training_steps=10)
        rates = []
        for _ in range(10):
            model(**batch).loss.backward()
            optimizer.step()
            scheduler.step()
            optimizer.zero_grad()
            rates.append(float(optimizer.param_groups[0]["lr"]))
        if kind == "tensor":  # filled in place: the tensor a graph recorded is the one that changes
            assert optimizer.param_groups[0]["lr"] is tensor
        runs[kind] = rates, [p.detach().clone() for p in model.parameters()]
    assert runs["tensor"][0] == pytest.approx(runs["float"][0], rel=1e-6)
    assert runs["float"][0][-1] == 0.0 and max(runs["float"][0]) == pytest.approx(1e-3)
    for a, b in zip(runs["tensor"][1], runs["float"][1]):
        torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("first_steps", [0, 2])
def test_the_warm_up_steps_leave_no_trace(first_steps):
    """Warm-up runs real optimizer steps on every length before capture; afterwards the weights and AdamW's state
    are as before (a fresh AdamW's, or a resumed one's), so the run has exactly its scheduled steps."""
    from accelerate import Accelerator

    accelerator = Accelerator(cpu=True)
    model, reference = tiny_bert(), tiny_bert()
    optimizer, reference_optimizer = adamw(model, 1e-2), adamw(reference, 1e-2)
    inputs = static_inputs()
    for m, o in ((model, optimizer), (reference, reference_optimizer)):  # a resumed run has AdamW state already
        for _ in range(first_steps):
            m(**inputs[16]).loss.backward()
            o.step()
            o.zero_grad()
    model, optimizer = accelerator.prepare(model, optimizer)
    before = [p.detach().clone() for p in model.parameters()]
    step = GraphedTrainingStep(accelerator, model, optimizer, inputs, max_grad_norm=1.0, capture=False)
    for p, q in zip(model.parameters(), before):
        assert torch.equal(p, q)
    # The next step from here equals the reference's next step: same moments, same step count.
    fresh = static_inputs(seed=2)
    for length in inputs:
        for key in inputs[length]:
            inputs[length][key].copy_(fresh[length][key])
    loss, grad_norm = step(inputs[8])
    reference_loss = reference(**fresh[8]).loss
    reference_loss.backward()
    reference_norm = torch.nn.utils.clip_grad_norm_(reference.parameters(), 1.0)
    reference_optimizer.step()
    torch.testing.assert_close(loss, reference_loss.detach())
    torch.testing.assert_close(grad_norm, reference_norm)
    for p, q in zip(model.parameters(), reference.parameters()):
        torch.testing.assert_close(p, q, rtol=1e-6, atol=1e-7)
    steps = {float(s["step"]) for s in optimizer.state.values()}
    assert steps == {float(first_steps + 1)}


def test_a_batch_outside_the_static_buffers_is_refused():
    from accelerate import Accelerator

    accelerator = Accelerator(cpu=True)
    model = tiny_bert()
    optimizer = adamw(model, 1e-3)
    inputs = static_inputs()
    step = GraphedTrainingStep(accelerator, model, optimizer, inputs, max_grad_norm=1.0, warmup_steps=1, capture=False)
    with pytest.raises(RuntimeError, match="not in the static buffers"):
        step(static_inputs()[8])
