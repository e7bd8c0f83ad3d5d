"""The largest per-device batch whose training step fits in GPU memory, by doubling until out of memory.

    python gpu_check/max_batch.py --model_config .gpu_carry/bert-base-uncased --precision fp32 --length 128

Each candidate runs two of the training loop's own steps (train_mrpc.step.training_step under an Accelerator
in the chosen precision: forward, backward, clipping, fused AdamW; the second step has the optimizer state) on batches padded to ``--length``, the worst case of the project's batches
(max_length 128; MRPC's longest pair is 103 tokens). The default precision is fp32, whose activations take
the most memory, so the size found also fits bf16 and fp16. A size counts as fitting when its peak stays
under ``--headroom`` of the GPU's memory, leaving room for the allocator state of a longer benchmark run.
Prints one JSON line: max_batch, and per candidate whether it fit and its peak memory.
"""

from __future__ import annotations

import argparse
import gc
import json
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # train_mrpc from a plain checkout


def build(model_config: str, precision: str, device):
    """The model, optimizer and schedule prepared by an Accelerator as the training loop prepares them."""
    import torch
    from accelerate import Accelerator
    from transformers import AutoConfig, AutoModelForSequenceClassification

    from train_mrpc.synthetic import build_tiny_model

    if model_config == "tiny":
        config = build_tiny_model(0)[1].config
    else:
        config = AutoConfig.from_pretrained(model_config, num_labels=2)
    config.problem_type = "single_label_classification"
    torch.manual_seed(0)
    model = AutoModelForSequenceClassification.from_config(config, attn_implementation="sdpa")
    accelerator = Accelerator(cpu=device.type == "cpu", mixed_precision={"fp32": "no"}.get(precision, precision))
    optimizer = torch.optim.AdamW(model.parameters(), lr=2e-5, fused=True)
    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, lambda step: 1.0)
    model, optimizer, scheduler = accelerator.prepare(model, optimizer, scheduler)
    return config, accelerator, model, optimizer, scheduler


def try_batch(accelerator, model, optimizer, scheduler, config, batch: int, length: int, device) -> None:
    """Two of the loop's own training steps (train_mrpc.step.training_step): the second has the AdamW state."""
    import torch

    from train_mrpc.step import training_step

    inputs = {
        "input_ids": torch.randint(0, config.vocab_size, (batch, length), device=device),
        "token_type_ids": torch.zeros(batch, length, dtype=torch.long, device=device),
        "attention_mask": torch.ones(batch, length, dtype=torch.long, device=device),
        "labels": torch.randint(0, 2, (batch,), device=device),
    }
    for _ in range(2):
        training_step(accelerator, model, optimizer, scheduler, inputs, max_grad_norm=1.0)
    if device.type == "cuda":
        torch.cuda.synchronize()


def main(argv=None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model_config", required=True, help="A folder with config.json, or 'tiny'.")
    parser.add_argument("--precision", choices=("fp32", "bf16", "fp16"), default="fp32")
    parser.add_argument(
        "--length", type=int, default=128, help="Tokens per pair (default 128, the project's max_length)."
    )
    parser.add_argument(
        "--candidates",
        type=int,
        nargs="+",
        default=[64, 128, 256, 512, 1024],
        help="Batch sizes to try in order; stops at the first that does not fit (default 64 ... 1024).",
    )
    parser.add_argument(
        "--headroom",
        type=float,
        default=0.9,
        help="A size fits when its peak is at most this fraction of GPU memory (default 0.9).",
    )
    args = parser.parse_args(argv)

    import torch

    cuda = torch.cuda.is_available()
    device = torch.device("cuda" if cuda else "cpu")
    total = torch.cuda.get_device_properties(0).total_memory if cuda else None
    config, accelerator, model, optimizer, scheduler = build(args.model_config, args.precision, device)
    tried, best = [], None
    for batch in args.candidates:
        start = time.perf_counter()
        if cuda:
            torch.cuda.empty_cache()
            torch.cuda.reset_peak_memory_stats()
        entry = {"batch": batch}
        try:
            try_batch(accelerator, model, optimizer, scheduler, config, batch, args.length, device)
            peak = torch.cuda.max_memory_allocated() if cuda else None
            entry.update(fits=peak is None or peak <= args.headroom * total, peak_bytes=peak)
            if peak is not None and not entry["fits"]:
                entry["why_not"] = f"peak above {args.headroom:g} of {total / 2**30:.1f} GiB"
        except torch.OutOfMemoryError as err:
            entry.update(fits=False, why_not="torch.OutOfMemoryError: " + str(err).split("\n")[0][:200])
        optimizer.zero_grad(set_to_none=True)
        gc.collect()
        if cuda:
            torch.cuda.empty_cache()
        entry["seconds"] = round(time.perf_counter() - start, 3)
        tried.append(entry)
        print(json.dumps(entry), file=sys.stderr, flush=True)
        if not entry["fits"]:
            break
        best = batch
    result = {
        "max_batch": best,
        "precision": args.precision,
        "length": args.length,
        "tried": tried,
        "device": torch.cuda.get_device_name(0) if cuda else "cpu",
        "total_memory_bytes": total,
        "headroom": args.headroom,
        "capped": best == args.candidates[-1],
    }
    print(json.dumps(result), flush=True)
    return result


if __name__ == "__main__":
    main()
