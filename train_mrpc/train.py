"""The training loop, read top to bottom: ``train`` calls ``setup``, then ``train_epoch`` and ``validate``
once per epoch, then ``finish``. The step itself (``training_step``) is shared with the step benchmark.
"""

from __future__ import annotations

import math
import time
from dataclasses import dataclass
from pathlib import Path

from train_mrpc.checkpointing import (
    INTERRUPTED_EXIT_CODE,
    PREEMPTED_EXIT_CODE,
    OutputDirLock,
    Preempted,
    PreemptionHandler,
    TrainState,
    checkpoint_root,
    find_latest,
    load_checkpoint,
    resolve_resume,
    rotate_checkpoints,
    save_checkpoint,
)
from train_mrpc.config import TrainConfig
from train_mrpc.errors import UserError
from train_mrpc.faults import elastic_restarts, failures_of_other_processes_named
from train_mrpc.flops import batch_flops
from train_mrpc.meters import Meters, peak_memory
from train_mrpc.profiling import NoProfiler, check_profile_window, step_profiler
from train_mrpc.schema import ALL_RESULTS, BEST_MODEL_DIR, CHECKPOINTS_DIR, EVAL_LOG, PREEMPTED, TRAIN_CONFIG, TRAIN_LOG
from train_mrpc.static_batches import epoch_batches, static_shapes_identity
from train_mrpc.step import training_step


def train(config: TrainConfig) -> dict:
    """Fine-tune, evaluating after every epoch; returns (and writes) the run's results."""
    # From the start: a SIGTERM during set-up stops the run too, and so does another process's failure.
    with failures_of_other_processes_named(config), PreemptionHandler() as preemption:
        run = setup(config)
        try:
            state, meters, eval_metrics = resume(run)
            if run.cuda_graphs:  # after resume: a loaded checkpoint replaces the optimizer state tensors
                capture_graphs(run)
            check_profile_window(run.config, run.schedule.max_steps - state.step)
            if preemption.received:
                raise preempted(run, state, preemption.received, find_latest(run.output_dir), "before training began")
            with run.progress, step_profiler(run.config, run.accelerator, run.output_dir) as profiler:
                preemption.training = True  # a first Ctrl-C from here on checkpoints and stops
                eval_metrics = fit(run, state, meters, eval_metrics, preemption, profiler)
                preemption.training = False
            if run.accelerator.is_main_process and (table := profiler.report()):
                # Plain print: the table is wider than a terminal, and rich would wrap every row.
                print(
                    f"Top operators by self time, {run.config.profile_steps} profiled steps (trace in "
                    f"{run.output_dir / 'profile'}):\n{table}",
                    flush=True,
                )
            elif run.config.profile:  # early stopping or a preemption stop came before the window ended
                run.accelerator.print("--profile: the run stopped before its profiled steps were recorded; no trace")
            if not eval_metrics:  # resumed from the final step's checkpoint: nothing was left to train
                eval_metrics = evaluate_now(run)
            return finish(run, state, meters, eval_metrics)
        finally:
            if run.lock is not None:
                run.lock.release()


def fit(
    run: Run, state: TrainState, meters: Meters, eval_metrics: dict, preemption: PreemptionHandler, profiler: NoProfiler
) -> dict:
    """Epochs of training, each followed by an evaluation (every epoch, or the last only: --eval_strategy) and a
    checkpoint; returns the last evaluation."""
    while not run.schedule.finished(state):
        train_epoch(run, state, meters, preemption, profiler)
        if run.config.eval_strategy == "epoch" or run.schedule.finished(state):
            eval_metrics = validate(run, state, meters)
        if run.config.checkpointing_steps != "no":  # after every evaluation: it carries the metric for "best"
            checkpoint(run, state, meters, eval_metrics)
        if should_stop_early(state, run.config.early_stopping_patience):
            run.accelerator.print(
                f"early stopping: {run.config.metric_for_best_model} has not improved for "
                f"{state.evals_without_improvement} evaluations (best at step {state.best_step})"
            )
            break
    return eval_metrics


# --- set-up ------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Schedule:
    """The run's length in optimizer steps: the learning-rate schedule and the loop both count these."""

    steps_per_epoch: int
    max_steps: int
    num_epochs: int
    warmup_steps: int

    def finished(self, state: TrainState) -> bool:
        """Every epoch trained, or every step taken (--max_train_steps can end a run inside an epoch)."""
        return state.epoch >= self.num_epochs or state.step >= self.max_steps


def schedule_for(num_batches: int, config: TrainConfig) -> Schedule:
    """Optimizer steps of a run whose train loader yields ``num_batches`` micro-batches per epoch and process."""
    steps_per_epoch = math.ceil(num_batches / config.gradient_accumulation_steps)
    max_steps = config.max_train_steps or math.ceil(config.num_train_epochs * steps_per_epoch)
    if config.num_warmup_steps is not None:
        warmup = config.num_warmup_steps
    else:
        warmup = math.ceil(config.warmup_ratio * max_steps)
    return Schedule(steps_per_epoch, max_steps, math.ceil(max_steps / steps_per_epoch), warmup)


def build_scheduler(accelerator, optimizer, config: TrainConfig, schedule: Schedule):
    """The --lr_scheduler_type schedule over the run's optimizer steps, prepared."""
    from transformers import get_scheduler

    # A prepared scheduler steps once per process for every optimizer step, so lengths scale with processes.
    # Under DeepSpeed, prepare() returns a scheduler prepared apart from the model as it is (stepped once per
    # step, left out of checkpoints); prepare_scheduler wraps and registers it as prepare() does elsewhere.
    prepare = accelerator.prepare_scheduler if accelerator.distributed_type == "DEEPSPEED" else accelerator.prepare
    return prepare(
        get_scheduler(
            config.lr_scheduler_type,
            optimizer,
            num_warmup_steps=schedule.warmup_steps * accelerator.num_processes,
            num_training_steps=schedule.max_steps * accelerator.num_processes,
        )
    )


@dataclass
class Run:
    """The parts of a run, built once by ``setup``."""

    config: TrainConfig
    accelerator: object
    model: object
    optimizer: object
    scheduler: object
    train_loader: object  # a prepared DataLoader, or static_batches.StaticShapeBatches with --static_shapes
    eval_loader: object
    test_loader: object | None
    tokenizer: object
    metric: object
    raw: object  # the untokenized splits (test ids and labels for predictions)
    schedule: Schedule
    pad_to: int | None
    output_dir: Path
    resume_path: Path | None
    progress: object
    lock: OutputDirLock | None  # held by the main process while the run lives
    flop_counts: dict  # parameters by how often their matmuls run (train_mrpc.flops)
    peak_flops: float | None  # the device's peak in the run's precision: MFU's denominator
    peak_source: str
    task: object = None
    cpu_speedups: tuple[bool, str] = (False, "")  # train_mrpc.cpu_speed in use, and why
    cuda_graphs: bool = False  # --cuda_graphs resolved: the step is captured (capture_graphs) after resume
    graphed_step: object = None  # graphs.GraphedTrainingStep once captured
    graph_capture_seconds: float | None = None


def setup(config: TrainConfig) -> Run:
    """Accelerator, data, model, optimizer and schedule, all prepared; output folder and trackers ready."""
    from accelerate.utils import set_seed

    from train_mrpc.batch_size import with_batch_size_that_fits
    from train_mrpc.cpu_speed import resolve_cpu_speedups, use_cpu_speedups
    from train_mrpc.data import build_dataloaders, load_raw_splits, tokenize_dataset
    from train_mrpc.evaluation import load_metric
    from train_mrpc.flops import compute_precision, count_parameters, device_peak
    from train_mrpc.graphs import resolve_cuda_graphs
    from train_mrpc.launch import create_accelerator
    from train_mrpc.model import (
        build_optimizer,
        check_padded_length,
        freeze_parameters,
        load_tokenizer_and_model,
        set_dropout,
    )
    from train_mrpc.reporting import training_progress
    from train_mrpc.static_batches import (
        StaticShapeBatches,
        check_static_shapes,
        resolve_static_shapes,
        row_index_loader,
    )
    from train_mrpc.step import compile_model, padding_multiple

    accelerator = create_accelerator(config)
    cuda_graphs = resolve_cuda_graphs(
        config.cuda_graphs,
        static_shapes=config.static_shapes,
        mixed_precision=accelerator.mixed_precision,
        torch_compile=config.torch_compile,
        gradient_accumulation_steps=config.gradient_accumulation_steps,
        distributed_type=accelerator.distributed_type.value,
        num_processes=accelerator.num_processes,
        device_type=accelerator.device.type,
    )
    static_shapes = resolve_static_shapes(config.static_shapes, graphs_on=cuda_graphs)
    check_static_shapes(config, static_shapes)
    restart, max_restarts = elastic_restarts()
    if restart:  # accelerate launch --max_restarts N restarted every process after one failed
        accelerator.print(
            f"restart {restart} of at most {max_restarts} (accelerate launch --max_restarts) after a "
            "process of this job failed"
        )
    output_dir = Path(config.output_dir)
    lock = prepare_output_dir(output_dir, config.overwrite_output_dir) if accelerator.is_main_process else None
    accelerator.wait_for_everyone()
    resume_path = resolve_resume(config.resume_from_checkpoint, output_dir)
    model_dir = Path(config.model_name_or_path).expanduser()
    if model_dir.is_dir() and model_dir.resolve() == output_dir.resolve():
        raise UserError(
            f"--output_dir {output_dir} is the folder of --model_name_or_path: the run would overwrite "
            "the model it starts from; choose another --output_dir"
        )
    if (
        config.resume_from_checkpoint is None
        and checkpoint_root(output_dir).is_dir()
        and any(checkpoint_root(output_dir).iterdir())
    ):
        if restart:
            raise UserError(
                f"restart {restart} of this job found the checkpoints its first attempt saved in --output_dir "
                f"{output_dir}, but without --resume_from_checkpoint it would start over: launch with "
                "--resume_from_checkpoint latest so that a restart continues the run"
            )
        raise UserError(
            f"--output_dir {output_dir} holds another run's checkpoints: pass --resume_from_checkpoint "
            "latest to continue it, --overwrite_output_dir true to start fresh there, or another folder"
        )
    if accelerator.is_main_process:
        if resume_path is None:  # a fresh run starts fresh logs; a resumed one keeps them (trimmed to the checkpoint)
            for stale in (TRAIN_LOG, EVAL_LOG):
                (output_dir / stale).unlink(missing_ok=True)
        config.save(output_dir)
    set_seed(config.seed)

    with accelerator.main_process_first():  # the main process tokenizes and caches; the others load
        raw = load_raw_splits(config)
        if config.do_predict and "test" not in raw:
            raise UserError(
                "--do_predict true, but the data has no test split: give --test_file, or a --data_dir "
                "that holds test.tsv"
            )
        tokenizer, model = load_tokenizer_and_model(config)
        tokenized = tokenize_dataset(raw, tokenizer, config.max_length)
    device = accelerator.device.type
    if config.dropout is not None:  # before the CPU speed-ups, which copy each dropout layer's rate
        set_dropout(model, config.dropout, config.model_name_or_path)
    cpu_speedups = resolve_cpu_speedups(config.cpu_speedups, device, config.torch_compile)
    if cpu_speedups[0]:
        use_cpu_speedups(model)
    if config.freeze_word_embeddings or config.freeze_lower_layers:  # before the optimizer: it takes what trains
        freeze_parameters(
            model, config.freeze_word_embeddings, config.freeze_lower_layers, accelerator.distributed_type.value
        )
    if config.auto_find_batch_size:  # the batch that fits, same global batch: the config from here on
        config = with_batch_size_that_fits(accelerator, model, config)
    pad_to = padding_multiple(
        config.pad_to_multiple_of,
        torch_compile=config.torch_compile,
        device_type=device,
        mixed_precision=accelerator.mixed_precision,
    )
    check_padded_length(
        config.max_length,
        pad_to,
        model,
        tokenizer,
        config.model_name_or_path,
        why=f"--pad_to_multiple_of {pad_to}"
        if config.pad_to_multiple_of
        else f"--torch_compile's bucketing to multiples of {pad_to}"
        if config.torch_compile
        else f"padding to multiples of {pad_to} (for tensor cores)",
    )
    train_loader, eval_loader, test_loader = build_dataloaders(
        tokenized, tokenizer, config, pad_to, accelerator.num_processes, pin_memory=device == "cuda"
    )
    if static_shapes:  # the same order over row indices, prepared alike; the rows themselves go to the device
        train_loader = row_index_loader(train_loader)
    # Fused AdamW: one kernel over all parameters; for MiniLM's 22.7M on a 2-core Xeon 13.3 ms a step, foreach 66.5.
    optimizer = build_optimizer(model, config, fused=device in ("cuda", "cpu"))
    model, optimizer, train_loader, eval_loader = accelerator.prepare(model, optimizer, train_loader, eval_loader)
    if test_loader is not None:
        test_loader = accelerator.prepare(test_loader)
    if static_shapes:
        train_loader = StaticShapeBatches(
            train_loader, tokenized["train"], tokenizer, accelerator, config.max_length, pad_to
        )
        accelerator.print(train_loader.describe(pad_to))
    if config.torch_compile:
        model = compile_model(model, mode=config.torch_compile_mode)

    schedule = schedule_for(len(train_loader), config)
    if schedule.warmup_steps >= schedule.max_steps > 1:
        raise UserError(
            f"the warm-up ({schedule.warmup_steps} steps) is as long as the whole run ({schedule.max_steps} "
            "optimizer steps): the learning rate would never reach its peak; lower --num_warmup_steps"
        )
    scheduler = build_scheduler(accelerator, optimizer, config, schedule)
    precision = compute_precision(device, accelerator.mixed_precision, config.tf32)
    # One process per machine measures a CPU's peak, alone (a sibling measuring at once would read as a busy
    # machine); the others then find it cached.
    with accelerator.local_main_process_first():
        peak_flops, peak_source = device_peak(accelerator.device, precision, config.peak_tflops)
    accelerator.init_trackers(
        "train_mrpc", config={k: v for k, v in config.to_dict().items() if isinstance(v, (int, float, str, bool))}
    )
    return Run(
        config,
        accelerator,
        model,
        optimizer,
        scheduler,
        train_loader,
        eval_loader,
        test_loader,
        tokenizer,
        load_metric(),
        raw,
        schedule,
        pad_to,
        output_dir,
        resume_path,
        progress=training_progress(accelerator.is_main_process),
        lock=lock,
        flop_counts=count_parameters(accelerator.unwrap_model(model), config.freeze_lower_layers),
        peak_flops=peak_flops,
        peak_source=peak_source,
        cpu_speedups=cpu_speedups,
        cuda_graphs=cuda_graphs,
    )


def prepare_output_dir(path: Path, overwrite: bool) -> OutputDirLock:
    """Create and lock --output_dir (one run at a time); with --overwrite_output_dir, clear an earlier run."""
    import shutil

    try:
        path.mkdir(parents=True, exist_ok=True)
        probe = path / ".write_test"
        probe.write_text("")
        probe.unlink()
    except OSError as err:
        raise UserError(f"--output_dir {path} cannot be written: {err.strerror or err}") from None
    lock = OutputDirLock(path).acquire()
    if (path / "trainer_state.json").exists() or path.parent.name == CHECKPOINTS_DIR:
        raise UserError(f"--output_dir {path} is a checkpoint folder of another run; choose a folder of its own")
    (path / PREEMPTED).unlink(missing_ok=True)  # this run is not (yet) preempted
    if overwrite:
        shutil.rmtree(checkpoint_root(path), ignore_errors=True)
        shutil.rmtree(path / BEST_MODEL_DIR, ignore_errors=True)
        for stale in (TRAIN_LOG, EVAL_LOG, ALL_RESULTS, TRAIN_CONFIG):
            (path / stale).unlink(missing_ok=True)
    return lock


def run_identity(run: Run) -> dict:
    """The settings that decide a run's result: a checkpoint records them, and a resume must match them."""
    from train_mrpc.data import split_fingerprint

    config, accelerator = run.config, run.accelerator
    keys = (
        "model_name_or_path",
        "seed",
        "per_device_train_batch_size",
        "gradient_accumulation_steps",
        "learning_rate",
        "freeze_word_embeddings",
        "freeze_lower_layers",
        "dropout",
        "weight_decay",
        "adam_beta1",
        "adam_beta2",
        "adam_epsilon",
        "max_grad_norm",
        "lr_scheduler_type",
        "max_length",
        "group_by_length",
    )
    return {
        **{k: getattr(config, k) for k in keys},
        "train_data": split_fingerprint(run.raw["train"]),
        "num_processes": accelerator.num_processes,
        "mixed_precision": accelerator.mixed_precision,
        "max_steps": run.schedule.max_steps,
        "warmup_steps": run.schedule.warmup_steps,
        "cpu_speedups": run.cpu_speedups[0],  # another dropout random stream
        "static_shapes": static_shapes_identity(run.train_loader),  # so are other padded shapes (bucket lengths)
        "cuda_graphs": run.cuda_graphs,  # a replayed graph draws dropout's random numbers in its own order
    }


def resume(run: Run) -> tuple[TrainState, Meters, dict]:
    """The run's state, meters and last evaluation: fresh, or restored from ``run.resume_path``."""
    from train_mrpc.reporting import trim_jsonl

    state, meter_record, eval_metrics = TrainState(), {}, {}
    if run.resume_path is not None:
        state, meter_record, eval_metrics = load_checkpoint(
            run.accelerator, run.resume_path, run_identity(run), run.config.resume_with_changed_settings
        )
        if state.batches_in_epoch > len(run.train_loader):  # possible only with --resume_with_changed_settings
            raise UserError(
                f"checkpoint {run.resume_path} was saved {state.batches_in_epoch} batches into an epoch, "
                f"but this run's epochs have {len(run.train_loader)}: its data or batch size differ; "
                "resume with the settings it was saved with"
            )
        if run.accelerator.is_main_process:  # drop what the stopped run logged after its checkpoint
            trim_jsonl(run.output_dir / TRAIN_LOG, max_step=state.step)
            # An evaluation logged after a checkpoint of the same step (the save after it was killed) runs again.
            trim_jsonl(run.output_dir / EVAL_LOG, max_step=state.last_eval_step)
        run.accelerator.print(f"resumed from {run.resume_path} at step {state.step} (epoch {state.epoch + 1})")
    run.task = run.progress.add_task(
        "train",
        total=run.schedule.max_steps,
        completed=state.step,
        epoch=state.epoch + 1,
        loss=float("nan"),
        lr=run.scheduler.get_last_lr()[0],
        samples_per_s=0.0,
    )
    meters = Meters(
        run.accelerator.device,
        state.samples,
        meter_record,
        rank=run.accelerator.process_index,
        prior_train_seconds=state.train_seconds,
        prior_eval_seconds=state.eval_seconds,
    )
    return state, meters, dict(eval_metrics)


# --- training ----------------------------------------------------------------------------------------


def train_epoch(
    run: Run, state: TrainState, meters: Meters, preemption: PreemptionHandler, profiler: NoProfiler
) -> None:
    """Optimizer steps until the epoch (or the run) ends; logs, checkpoints and preemption stops on the way."""
    accelerator, config, schedule = run.accelerator, run.config, run.schedule
    # Dynamic padding or static shapes alike; resumed mid-epoch, the batches already trained are left out.
    batches = epoch_batches(run.train_loader, accelerator, state.epoch, skip=state.batches_in_epoch)
    run.model.train()
    model_config = accelerator.unwrap_model(run.model).config
    for batch in meters.timed(batches):  # counts the time spent waiting for each batch
        loss, grad_norm = take_step(run, batch.inputs)
        # FLOPs of the padded shape (what the hardware computed); tokens and samples of the real rows only.
        flops = batch_flops(run.flop_counts, model_config, *batch.inputs["input_ids"].shape)
        meters.add(loss, batch.inputs, flops, tokens=batch.tokens)
        if grad_norm is not None:
            meters.add_grad_norm(grad_norm)
        state.batches_in_epoch += 1
        state.samples += batch.rows * accelerator.num_processes
        if not accelerator.sync_gradients:  # inside an accumulation
            continue
        state.step += 1
        profiler.step()
        stop = preemption.received is not None
        if state.step % config.logging_steps == 0 or state.step == schedule.max_steps:
            stop = log_training(run, state, meters, stop)
        elif accelerator.num_processes > 1:
            stop = False  # processes agree on a stop only at logging steps, where they synchronise anyway
        run.progress.update(run.task, advance=1, epoch=state.epoch + 1, lr=run.scheduler.get_last_lr()[0])
        if stop:
            path = checkpoint(run, state, meters, eval_metrics=None)
            raise preempted(
                run, state, preemption.received or "a signal to another process", path, f"at step {state.step}"
            )
        if config.checkpoint_every and state.step % config.checkpoint_every == 0:
            checkpoint(run, state, meters, eval_metrics=None)
        if state.step >= schedule.max_steps:
            break
    if state.batches_in_epoch >= len(run.train_loader):  # the epoch ran to its end
        state.epoch, state.batches_in_epoch = state.epoch + 1, 0


def take_step(run: Run, inputs: dict):
    """One micro-step: the captured graph of the batch's length replayed (then the schedule, eagerly, which
    writes the next learning rate into the tensor the graph reads), or the eager ``training_step``."""
    if run.graphed_step is None:
        return training_step(run.accelerator, run.model, run.optimizer, run.scheduler, inputs, run.config.max_grad_norm)
    loss, grad_norm = run.graphed_step(inputs)
    run.scheduler.step()
    return loss, grad_norm


def capture_graphs(run: Run) -> None:
    """Warm up and capture one CUDA graph of the whole step per static batch length (train_mrpc/graphs.py)."""
    from train_mrpc.graphs import GraphedTrainingStep

    start = time.perf_counter()
    buffers = {length: run.train_loader.buffers(length) for length in run.train_loader.buckets}
    run.graphed_step = GraphedTrainingStep(run.accelerator, run.model, run.optimizer, buffers, run.config.max_grad_norm)
    run.graph_capture_seconds = time.perf_counter() - start
    run.accelerator.print(
        f"CUDA graphs: the step captured for lengths {', '.join(map(str, buffers))} in "
        f"{run.graph_capture_seconds:.1f} s (counted in the training time)"
    )


def log_training(run: Run, state: TrainState, meters: Meters, stop: bool) -> bool:
    """One collective: the mean loss since the last log, and whether any process was asked to stop."""
    from train_mrpc.reporting import append_jsonl

    loss, stop = meters.synchronise(run.accelerator, stop)
    if not math.isfinite(loss):
        raise diverged(run, state, loss)
    window = meters.window_figures(state.samples, run.peak_flops)
    rate = window["samples_per_second"]
    record = {
        "step": state.step,
        "epoch": round(state.step / run.schedule.steps_per_epoch, 4),
        "loss": loss,
        "learning_rate": run.scheduler.get_last_lr()[0],
        **meters.grad_norm_figures(),
        **window,
        "peak_memory_gb": peak_memory(run.accelerator.device)[0] / 2**30,
    }
    if run.accelerator.is_main_process:
        append_jsonl(run.output_dir / TRAIN_LOG, record)
    run.accelerator.log({f"train/{k}": v for k, v in record.items() if k != "step" and v is not None}, step=state.step)
    meters.start_window(state.samples)
    run.progress.update(run.task, loss=loss, samples_per_s=rate)
    return stop


def checkpoint(run: Run, state: TrainState, meters: Meters, eval_metrics: dict | None) -> Path:
    """Save a resumable checkpoint (never from a diverged model) and rotate old ones."""
    start = time.perf_counter()
    meter_record = meters.state_dict(run.accelerator)
    if not math.isfinite(meter_record["loss_sum_all_processes"]):
        raise diverged(run, state, meter_record["loss_sum_all_processes"])
    state.train_seconds, state.eval_seconds = meters.train_seconds(), meters.eval_seconds()
    path = save_checkpoint(run.accelerator, run.output_dir, state, meter_record, eval_metrics, run_identity(run))
    meters.checkpointed(time.perf_counter() - start)  # counted from the next checkpoint on (this one is saved)
    if run.accelerator.is_main_process:
        rotate_checkpoints(
            run.output_dir, run.config.save_total_limit, run.config.metric_for_best_model, run.config.greater_is_better
        )
    return path


def preempted(run: Run, state: TrainState, signal_name: str, checkpoint_path: Path | None, when: str) -> Preempted:
    """The stop after SIGTERM/SIGUSR1, also left as output_dir/preempted.json: `accelerate launch` turns the
    exit status 75 into its own 1, so a requeue script can look for the file instead. A Ctrl-C's stop
    (exit 130) is the user's, not the cluster's: it leaves no such file, so a requeue script does not rerun it."""
    from train_mrpc.reporting import write_json

    saved = (
        f"checkpoint saved to {checkpoint_path}"
        if when.startswith("at step")
        else f"nothing new to save (latest checkpoint: {checkpoint_path or 'none'})"
    )
    exit_status = INTERRUPTED_EXIT_CODE if signal_name == "SIGINT" else PREEMPTED_EXIT_CODE
    if run.accelerator.is_main_process and exit_status == PREEMPTED_EXIT_CODE:
        write_json(
            run.output_dir / PREEMPTED,
            {
                "signal": signal_name,
                "step": state.step,
                "checkpoint": str(checkpoint_path) if checkpoint_path else None,
                "exit_status": 75,
            },
        )
    return Preempted(
        f"stopped by {signal_name} {when}; {saved}. Resume with --resume_from_checkpoint latest", exit_status
    )


def diverged(run: Run, state: TrainState, loss: float) -> UserError:
    latest = find_latest(run.output_dir)
    kept = f"the last good checkpoint, {latest}, is kept" if latest else "no checkpoint had been saved yet"
    return UserError(
        f"the training loss became non-finite ({loss}) by step {state.step}, so training stopped; "
        f"{kept}. Lower --learning_rate (or use bf16 rather than fp16) and resume with "
        "--resume_from_checkpoint latest"
    )


# --- evaluation --------------------------------------------------------------------------------------


def evaluate_now(run: Run) -> dict:
    """The validation scores of the weights that are saved (under DeepSpeed bf16, the fp32 master weights)."""
    from train_mrpc.evaluation import evaluate_model
    from train_mrpc.model import weights_as_saved

    with weights_as_saved(run.accelerator, run.model) as model:
        return evaluate_model(model, run.eval_loader, run.accelerator, run.metric)


def validate(run: Run, state: TrainState, meters: Meters) -> dict:
    """Evaluate, log, and keep the best model so far in ``output_dir/best_model``."""
    from train_mrpc.model import save_model
    from train_mrpc.reporting import append_jsonl

    with meters.paused():  # evaluation time counts neither in training throughput nor in train_runtime
        metrics = evaluate_now(run)
    if run.accelerator.is_main_process:
        append_jsonl(
            run.output_dir / EVAL_LOG,
            {"epoch": state.epoch, "step": state.step, **{f"eval_{k}": v for k, v in metrics.items()}},
        )
        run.progress.console.print(
            f"epoch {state.epoch}: eval accuracy {metrics['accuracy']:.4f}, "
            f"F1 {metrics['f1']:.4f}, loss {metrics['loss']:.4f}"
        )
    run.accelerator.log({f"eval/{k}": v for k, v in metrics.items()}, step=state.step)
    state.last_eval_step = state.step
    value = metrics[run.config.metric_for_best_model]
    if is_improvement(value, state.best_metric, run.config.greater_is_better):
        state.best_metric, state.best_step, state.evals_without_improvement = value, state.step, 0
        save_model(run.accelerator, run.model, run.tokenizer, run.output_dir / BEST_MODEL_DIR)
    else:
        state.evals_without_improvement += 1
    return metrics


def is_improvement(value: float, best: float | None, greater_is_better: bool) -> bool:
    if best is None:
        return True
    return value > best if greater_is_better else value < best


def should_stop_early(state: TrainState, patience: int | None) -> bool:
    return bool(patience) and state.evals_without_improvement >= patience


# --- results -----------------------------------------------------------------------------------------


def majority_accuracy(labels: list[int]) -> float:
    """Accuracy of always predicting the most common label (MRPC dev: 279 / 408 = 0.6838)."""
    return max(labels.count(0), labels.count(1)) / len(labels) if labels else 0.0


def finish(run: Run, state: TrainState, meters: Meters, eval_metrics: dict) -> dict:
    """Save the final model, predict the test split if asked, write all_results.json, print the summary."""
    import torch

    from train_mrpc.evaluation import predict_logits, score, write_predictions
    from train_mrpc.launch import describe_launch, describe_sharding, describe_speed_choices
    from train_mrpc.model import save_model, scored_weights, weights_as_saved
    from train_mrpc.plots import plot_training_curves
    from train_mrpc.reporting import print_summary, write_json

    accelerator, config = run.accelerator, run.config
    train_time, eval_time = max(meters.train_seconds(), 1e-9), meters.eval_seconds()  # every segment of the run
    save_model(accelerator, run.model, run.tokenizer, run.output_dir)
    test_metrics = {}
    if run.test_loader is not None:
        with weights_as_saved(accelerator, run.model) as model:  # the saved model's predictions
            test_logits = predict_logits(model, run.test_loader, accelerator)
        labels = torch.tensor(run.raw["test"]["label"])
        if accelerator.is_main_process:
            write_predictions(run.output_dir, run.raw["test"]["idx"], test_logits)
        if (labels >= 0).all():  # generated or user-labelled test sets; GLUE's hides its labels
            test_metrics = {f"test_{k}": v for k, v in score(test_logits, labels, run.metric).items()}
    results = {
        "model": config.model_name_or_path,
        "data_source": config.data_source,
        "train_examples": len(run.raw["train"]),
        "eval_examples": eval_metrics["num_examples"],
        "epoch": round(state.step / run.schedule.steps_per_epoch, 4),
        "global_step": state.step,
        "train_loss": meters.last_loss,
        **{f"eval_{k}": v for k, v in eval_metrics.items() if k != "num_examples"},
        "eval_weights": scored_weights(accelerator, run.model),  # the saved ones, but for DeepSpeed ZeRO-3 in bf16/fp16
        # What always answering the validation set's most common label scores: learning must beat it.
        "eval_majority_accuracy": majority_accuracy(list(run.raw["validation"]["label"])),
        "train_runtime": train_time + eval_time,
        "eval_runtime": eval_time,
        "train_samples": state.samples,
        "train_samples_per_second": state.samples / train_time,
        "train_tokens_per_second": meters.tokens_all_processes(accelerator) / train_time,
        f"best_{config.metric_for_best_model}": state.best_metric,
        "best_step": state.best_step,
        **test_metrics,
        "resumed_from": str(run.resume_path) if run.resume_path else None,
        "elastic_restarts": elastic_restarts()[0],  # times accelerate launch --max_restarts restarted this job
        **meters.run_figures(run.peak_flops, train_time),
        "peak_flops_source": run.peak_source,
        **dict(zip(("peak_memory_bytes", "peak_memory_kind"), peak_memory(accelerator.device))),
        "launch": describe_launch(accelerator, config),
        "sharding": describe_sharding(accelerator),
        "speed": {
            **describe_speed_choices(accelerator, config, run.pad_to, run.cpu_speedups),
            "static_shapes": static_shapes_identity(run.train_loader),
            "cuda_graphs": run.cuda_graphs,
            "graph_capture_s": run.graph_capture_seconds,
        },
        "output_dir": str(run.output_dir),
    }
    if accelerator.is_main_process:
        write_json(run.output_dir / ALL_RESULTS, results)
        plot_training_curves(run.output_dir)
        print_summary(results, run.progress.console)
        if results["eval_weights"].startswith("not saved"):
            run.progress.console.print(f"The evaluation scored weights that are {results['eval_weights']}")
    accelerator.wait_for_everyone()  # every rank ends this run (and starts a next seed's) together
    # The trackers end with the run; the process group outlives it (reproduce trains every seed on it), so
    # this is end_training without its destroy_process_group, which the command does once at the end.
    for tracker in accelerator.trackers:
        tracker.finish()
    return results
