"""One optimizer step and the padding rule: shared by the training loop and the step benchmark.

The benchmark imports these two, so a benchmark cell labelled like the loop runs the loop's own code.
"""

from __future__ import annotations


def padding_multiple(requested: int | None, *, torch_compile: bool, device_type: str, mixed_precision: str) -> int | None:
    """The multiple each batch's length is padded up to (None: to its longest pair only).

    Compiled graphs specialise on shapes: buckets of 32 tokens bound the recompiles to max_length / 32.
    Multiples of 8 feed GPU tensor cores under mixed precision; on a CPU they are only extra tokens
    (8-9 % slower for MiniLM in bf16, measured on the 2-core development CPU), so none there.
    """
    if requested:
        return requested
    if torch_compile:
        return 32
    if device_type == "cuda" and mixed_precision != "no":
        return 8
    return None


def training_step(accelerator, model, optimizer, scheduler, batch: dict, max_grad_norm: float):
    """Forward, backward, clipping, AdamW and schedule for one micro-batch; returns the detached loss.

    Under gradient accumulation Accelerate's ``accumulate`` skips the gradient sync, and its prepared
    optimizer and scheduler skip their steps, until the last micro-batch of the optimizer step.
    """
    with accelerator.accumulate(model):
        loss = model(**batch).loss
        accelerator.backward(loss)
        if accelerator.sync_gradients and max_grad_norm > 0:
            accelerator.clip_grad_norm_(model.parameters(), max_grad_norm)
        optimizer.step()
        scheduler.step()
        optimizer.zero_grad(set_to_none=True)
    return loss.detach()


def compile_model(model, backend: str = "inductor", mode: str = "default"):
    """``torch.compile`` as the loop applies it: after ``accelerator.prepare``, default (automatic) dynamic shapes."""
    import torch

    return torch.compile(model, backend=backend, mode=None if mode == "default" else mode)
