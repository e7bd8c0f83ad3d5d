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
    Under fp16 loss scaling, a step the GradScaler skipped (inf/NaN gradients) does not advance the schedule.
    """
    grad_norm = None
    with accelerator.accumulate(model):
        loss = model(**batch).loss
        accelerator.backward(loss)
        if accelerator.sync_gradients and max_grad_norm > 0:
            grad_norm = accelerator.clip_grad_norm_(model.parameters(), max_grad_norm)
            if hasattr(grad_norm, "full_tensor"):  # FSDP2: a DTensor (replicated), whose value every process holds
                grad_norm = grad_norm.full_tensor()
        scale_before = _loss_scale(optimizer) if accelerator.sync_gradients else None
        optimizer.step()
        # fp16: Accelerate's scheduler does not step when the optimizer's ``step_was_skipped``, which it sets when
        # GradScaler.step did not call the optimizer's step. With a fused AdamW (the loop's on CPU and CUDA)
        # GradScaler always calls it and the fused kernel skips an inf/NaN step itself, so ``step_was_skipped``
        # stays False and the schedule would advance on skipped steps (accelerate/optimizer.py, ``step``).
        # GradScaler.update lowers the scale exactly when it found inf/NaN: a lowered scale is a skipped step.
        # One host read, on the fp16 path only; bf16 and fp32 have no scaler and no sync here.
        if scale_before is None or not bool(_loss_scale(optimizer) < scale_before):
            scheduler.step()
        optimizer.zero_grad(set_to_none=True)
    return loss.detach(), grad_norm


def _loss_scale(optimizer):
    """A copy of the prepared optimizer's GradScaler scale as a device tensor (no host sync), or None without
    loss scaling (bf16, fp32, DeepSpeed, whose engine scales and skips on its own and sets ``step_was_skipped``)."""
    scaler = getattr(optimizer, "scaler", None)
    if scaler is None or not scaler.is_enabled():
        return None
    scale = scaler._get_scale_async()  # GradScaler.get_scale() without its .item(); None before the first scale()
    return None if scale is None else scale.clone()


def compile_model(model, backend: str = "inductor", mode: str = "default"):
    """``torch.compile`` as the loop applies it: after ``accelerator.prepare``, default (automatic) dynamic shapes."""
    import torch

    return torch.compile(model, backend=backend, mode=None if mode == "default" else mode)
