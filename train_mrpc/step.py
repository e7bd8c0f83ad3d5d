"""One optimizer step and the padding rule: shared by the training loop and the step benchmark.

The benchmark imports these two, so a benchmark cell labelled like the loop runs the loop's own code.
"""

from __future__ import annotations


def padding_multiple(
    requested: int | None, *, torch_compile: bool, device_type: str, mixed_precision: str
) -> int | None:
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
    """Forward, backward, clipping, AdamW and schedule for one micro-batch.

    Returns the detached loss and the global gradient norm before clipping (a device tensor, read only at
    logging steps; None inside a gradient accumulation, with clipping off, or where DeepSpeed gives none).
    Under gradient accumulation Accelerate's ``accumulate`` skips the gradient sync, and its prepared
    optimizer and scheduler skip their steps, until the last micro-batch of the optimizer step.
    """
    grad_norm = None
    with accelerator.accumulate(model):
        loss = model(**batch).loss
        accelerator.backward(loss)
        if accelerator.sync_gradients and max_grad_norm > 0:
            grad_norm = accelerator.clip_grad_norm_(model.parameters(), max_grad_norm)
            if hasattr(grad_norm, "full_tensor"):  # FSDP2: a DTensor (replicated), whose value every process holds
                grad_norm = grad_norm.full_tensor()
        optimizer.step()
        scheduler.step()
        optimizer.zero_grad(set_to_none=True)
    return loss.detach(), grad_norm


def compile_model(model, backend: str = "inductor", mode: str = "default"):
    """``torch.compile`` as the loop applies it: after ``accelerator.prepare``, default (automatic) dynamic shapes."""
    import torch

    return torch.compile(model, backend=backend, mode=None if mode == "default" else mode)
