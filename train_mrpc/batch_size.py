"""``--auto_find_batch_size``: the largest per-device batch that fits, with the global batch unchanged.

Trainer's ``auto_find_batch_size`` (Accelerate's ``find_executable_batch_size``) halves the batch on an
out-of-memory error and so changes the recipe: a run asked for at 32 trains at 16. Here every halving of the
per-device batch doubles gradient accumulation, so the global batch, the schedule and the result stay those
of the recipe. The search runs before training, on the worst batch the run can meet (``--max_length``
tokens in every row): a batch that fits there fits at every step, and no step is trained twice.
"""

from __future__ import annotations

from train_mrpc.errors import UserError


def is_out_of_memory(err: BaseException) -> bool:
    import torch
    from accelerate.utils.memory import should_reduce_batch_size

    return isinstance(err, torch.OutOfMemoryError) or should_reduce_batch_size(err)


def fits(accelerator, model, batch_size: int, max_length: int) -> bool:
    """One forward and backward pass of a worst-case batch under the run's autocast; the model's weights,
    gradients and the random number generators are left as they were."""
    import torch
    from accelerate.utils.memory import clear_device_cache

    device = accelerator.device
    vocab_size = model.config.vocab_size
    generator = torch.Generator().manual_seed(0)  # not the global RNG: the run's random stream is untouched
    batch = {
        "input_ids": torch.randint(vocab_size, (batch_size, max_length), generator=generator).to(device),
        "attention_mask": torch.ones(batch_size, max_length, dtype=torch.long, device=device),
        "labels": torch.zeros(batch_size, dtype=torch.long, device=device),
    }
    cpu_rng = torch.get_rng_state()
    cuda_rng = torch.cuda.get_rng_state_all() if device.type == "cuda" else None
    try:
        with accelerator.autocast():
            model(**batch).loss.backward()
        return True
    except Exception as err:
        if not is_out_of_memory(err):
            raise
        return False
    finally:
        model.zero_grad(set_to_none=True)
        del batch
        torch.set_rng_state(cpu_rng)
        if cuda_rng is not None:
            torch.cuda.set_rng_state_all(cuda_rng)
        clear_device_cache(garbage_collection=True)


def find_batch_size(accelerator, model, per_device: int, accumulation: int, max_length: int) -> tuple[int, int]:
    """(per-device batch, accumulation steps) with the same product as asked, the largest per-device batch
    that fits on every process; a UserError when not even a batch of one fits or the batch cannot be halved."""
    import torch

    model.to(accelerator.device)
    was_training = model.training
    model.train()
    try:
        while True:
            ok = fits(accelerator, model, per_device, max_length)
            # Every process trains with the same batch: the smallest answer wins.
            ok = bool(
                accelerator.reduce(torch.tensor(int(ok), device=accelerator.device), reduction="sum").item()
                == accelerator.num_processes
            )
            if ok:
                return per_device, accumulation
            if per_device == 1:
                raise UserError(
                    f"--auto_find_batch_size: not even a batch of 1 x {max_length} tokens fits in the "
                    f"{accelerator.device.type} memory; lower --max_length or use a smaller model"
                )
            if per_device % 2:
                raise UserError(
                    f"--auto_find_batch_size: a batch of {per_device} does not fit and cannot be halved "
                    "without changing the global batch; pass an even --per_device_train_batch_size "
                    "(a power of two halves down to 1)"
                )
            per_device, accumulation = per_device // 2, accumulation * 2
    finally:
        model.train(was_training)


def with_batch_size_that_fits(accelerator, model, config):
    """``config`` with the per-device batch and accumulation that fit (same global batch), said in one line."""
    import dataclasses

    from accelerate.utils import DistributedType

    if accelerator.distributed_type in (DistributedType.FSDP, DistributedType.DEEPSPEED):
        raise UserError(
            "--auto_find_batch_size probes the memory of an unsharded model; under FSDP or DeepSpeed set "
            "--per_device_train_batch_size (and --gradient_accumulation_steps) yourself"
        )
    asked = config.per_device_train_batch_size, config.gradient_accumulation_steps
    per_device, accumulation = find_batch_size(accelerator, model, *asked, config.max_length)
    accelerator.gradient_accumulation_steps = accumulation
    global_batch = per_device * accumulation * accelerator.num_processes
    accelerator.print(
        f"--auto_find_batch_size: per-device batch {per_device} x {accumulation} accumulation steps "
        f"(global batch {global_batch}, as asked{'' if (per_device, accumulation) == asked else '; ' + str(asked[0]) + ' did not fit'})"
    )
    return dataclasses.replace(config, per_device_train_batch_size=per_device, gradient_accumulation_steps=accumulation)
