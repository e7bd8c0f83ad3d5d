"""The training loop: set-up, data, model, then AdamW steps with evaluation after every epoch."""

from __future__ import annotations

import math
import time
from pathlib import Path

from train_mrpc.config import TrainConfig
from train_mrpc.errors import UserError


def prepare_output_dir(output_dir: str) -> Path:
    path = Path(output_dir)
    try:
        path.mkdir(parents=True, exist_ok=True)
        probe = path / ".write_test"
        probe.write_text("")
        probe.unlink()
    except OSError as err:
        raise UserError(f"--output_dir {output_dir} cannot be written: {err.strerror or err}") from None
    for stale in ("train_log.jsonl", "eval_results.jsonl"):
        (path / stale).unlink(missing_ok=True)
    return path


def train(config: TrainConfig) -> dict:
    import torch
    from accelerate.utils import set_seed
    from transformers import get_scheduler

    from train_mrpc.data import build_dataloaders, load_raw_splits, tokenize_dataset
    from train_mrpc.evaluation import evaluate_model, load_metric
    from train_mrpc.launch import create_accelerator, describe_launch
    from train_mrpc.model import build_optimizer, load_tokenizer_and_model, save_model
    from train_mrpc.reporting import append_jsonl, print_summary, training_progress, write_json

    accelerator = create_accelerator(config)
    output_dir = Path(config.output_dir)
    if accelerator.is_main_process:
        prepare_output_dir(config.output_dir)
        config.save(output_dir)
    set_seed(config.seed)

    # --- data and model -----------------------------------------------------------------------
    with accelerator.main_process_first():  # the main process tokenizes and caches; the others load
        raw = load_raw_splits(config)
        tokenizer, model = load_tokenizer_and_model(config)
        tokenized = tokenize_dataset(raw, tokenizer, config.max_length)
    pad_to = config.pad_to_multiple_of or (8 if accelerator.mixed_precision != "no" else None)
    train_loader, eval_loader = build_dataloaders(tokenized, tokenizer, config, pad_to)
    optimizer = build_optimizer(model, config, fused=accelerator.device.type == "cuda")
    model, optimizer, train_loader, eval_loader = accelerator.prepare(model, optimizer, train_loader, eval_loader)
    metric = load_metric()

    # --- schedule, counted in optimizer steps ---------------------------------------------------
    steps_per_epoch = math.ceil(len(train_loader) / config.gradient_accumulation_steps)
    max_steps = config.max_train_steps or math.ceil(config.num_train_epochs * steps_per_epoch)
    num_epochs = math.ceil(max_steps / steps_per_epoch)
    warmup_steps = config.num_warmup_steps if config.num_warmup_steps is not None else math.ceil(config.warmup_ratio * max_steps)
    # A prepared scheduler steps once per process for every optimizer step, so lengths scale with processes.
    scheduler = get_scheduler(
        config.lr_scheduler_type, optimizer,
        num_warmup_steps=warmup_steps * accelerator.num_processes,
        num_training_steps=max_steps * accelerator.num_processes,
    )  # fmt: skip
    scheduler = accelerator.prepare(scheduler)

    # --- the loop -----------------------------------------------------------------------------
    step, samples, tokens = 0, 0, torch.zeros((), device=accelerator.device)
    running_loss, running_batches, last_loss = torch.zeros((), device=accelerator.device), 0, float("nan")
    eval_time, eval_metrics = 0.0, {}
    start = log_start = time.perf_counter()
    progress = training_progress(accelerator.is_main_process)
    with progress:
        task = progress.add_task("train", total=max_steps, epoch=1, loss=float("nan"), lr=0.0, samples_per_s=0.0)
        for epoch in range(num_epochs):
            model.train()
            for batch in train_loader:
                with accelerator.accumulate(model):
                    loss = model(**batch).loss
                    accelerator.backward(loss)
                    if accelerator.sync_gradients and config.max_grad_norm > 0:
                        accelerator.clip_grad_norm_(model.parameters(), config.max_grad_norm)
                    optimizer.step()
                    scheduler.step()
                    optimizer.zero_grad(set_to_none=True)
                # Device-side accumulation: no host synchronisation until a logging step.
                running_loss += loss.detach()
                running_batches += 1
                tokens += batch["attention_mask"].sum()
                samples += len(batch["labels"]) * accelerator.num_processes
                if not accelerator.sync_gradients:
                    continue
                step += 1
                if step % config.logging_steps == 0 or step == max_steps:
                    last_loss = accelerator.reduce(running_loss / running_batches, "mean").item()
                    now = time.perf_counter()
                    rate = running_batches * len(batch["labels"]) * accelerator.num_processes / (now - log_start)
                    record = {"step": step, "epoch": round(step / steps_per_epoch, 4), "loss": last_loss,
                              "learning_rate": scheduler.get_last_lr()[0], "samples_per_second": rate}  # fmt: skip
                    if accelerator.is_main_process:
                        append_jsonl(output_dir / "train_log.jsonl", record)
                    running_loss.zero_()
                    running_batches, log_start = 0, now
                    progress.update(task, loss=last_loss, samples_per_s=rate)
                progress.update(task, advance=1, epoch=epoch + 1, lr=scheduler.get_last_lr()[0])
                if step >= max_steps:
                    break

            eval_start = time.perf_counter()
            eval_metrics = evaluate_model(model, eval_loader, accelerator, metric)
            eval_time += time.perf_counter() - eval_start
            log_start += time.perf_counter() - eval_start
            if accelerator.is_main_process:
                record = {"epoch": epoch + 1, "step": step, **{f"eval_{k}": v for k, v in eval_metrics.items()}}
                append_jsonl(output_dir / "eval_results.jsonl", record)
                progress.console.print(
                    f"epoch {epoch + 1}: eval accuracy {eval_metrics['accuracy']:.4f}, "
                    f"F1 {eval_metrics['f1']:.4f}, loss {eval_metrics['loss']:.4f}"
                )
    runtime = time.perf_counter() - start

    # --- outputs ------------------------------------------------------------------------------
    save_model(accelerator, model, tokenizer, output_dir)
    total_tokens = accelerator.reduce(tokens, "sum").item()
    train_time = runtime - eval_time
    results = {
        "model": config.model_name_or_path,
        "data_source": config.data_source,
        "train_examples": len(raw["train"]),
        "eval_examples": eval_metrics["num_examples"],
        "epoch": round(step / steps_per_epoch, 4),
        "global_step": step,
        "train_loss": last_loss,
        **{f"eval_{k}": v for k, v in eval_metrics.items() if k != "num_examples"},
        "train_runtime": runtime,
        "eval_runtime": eval_time,
        "train_samples": samples,
        "train_samples_per_second": samples / train_time,
        "train_tokens_per_second": total_tokens / train_time,
        "launch": describe_launch(accelerator, config),
        "output_dir": str(output_dir),
    }
    if accelerator.is_main_process:
        write_json(output_dir / "all_results.json", results)
        print_summary(results, progress.console)
    accelerator.end_training()
    return results
