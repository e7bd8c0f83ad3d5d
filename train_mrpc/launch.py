"""Set-up: the Accelerator for the launch at hand, refusing launches that would silently do the wrong thing."""

from __future__ import annotations

import os
from pathlib import Path

from train_mrpc.config import TrainConfig
from train_mrpc.errors import UserError
from train_mrpc.faults import fresh_store_after_restart


def create_accelerator(config: TrainConfig):
    from datetime import timedelta

    import torch
    from accelerate import Accelerator, DataLoaderConfiguration, InitProcessGroupKwargs

    check_launch_environment()
    fresh_store_after_restart(config.ddp_timeout)  # before any process group exists
    check_trackers(config.trackers)
    use_cpu = not torch.accelerator.is_available()
    if use_cpu:  # what DeepSpeed finds anyway; said here, it does not warn so in every run (Accelerate imports it)
        os.environ.setdefault("DS_ACCELERATOR", "cpu")
    mixed_precision, _ = resolve_precision(config.precision, cuda=torch.cuda.is_available())
    init_kwargs = InitProcessGroupKwargs(timeout=timedelta(seconds=config.ddp_timeout))
    fsdp_on_cpu = use_cpu and os.environ.get("ACCELERATE_USE_FSDP", "").lower() == "true"
    if fsdp_on_cpu:
        join_cpu_processes_as_fsdp(init_kwargs)
    use_deepspeed = os.environ.get("ACCELERATE_USE_DEEPSPEED", "").lower() == "true"
    if use_deepspeed and use_cpu and "LOCAL_RANK" in os.environ:
        # cpu=True would drop DeepSpeed (AcceleratorState turns it on only for cpu=False) and train plain DDP;
        # cpu=False with no backend counts one process (DeepSpeed's batch-size check then fails). So:
        # DeepSpeed's init_distributed joins the launched CPU processes over gloo; the device stays cpu.
        init_kwargs.backend, use_cpu = "gloo", False
    accelerator = Accelerator(
        # On a machine without an accelerator, cpu=True is what turns a multi-process launch into real
        # gloo data parallelism; without it each process trains its own copy on all the data.
        cpu=use_cpu,
        mixed_precision=mixed_precision,
        gradient_accumulation_steps=config.gradient_accumulation_steps,
        # Seeded sampler: the data order depends on (seed, epoch) only, so resumed and multi-process
        # runs see the same order as an uninterrupted single-process run.
        dataloader_config=DataLoaderConfiguration(use_seedable_sampler=True),
        project_dir=config.output_dir,
        log_with=config.trackers or None,
        kwargs_handlers=[init_kwargs],
    )
    if fsdp_on_cpu:
        check_fsdp_on_cpu(accelerator)
    if use_deepspeed:
        check_deepspeed(accelerator, config.max_grad_norm)
    check_launch(accelerator)
    quiet_other_processes(accelerator)
    if accelerator.device.type == "cuda":  # both ways: cuDNN's default is on, and an earlier run may have set it
        torch.backends.cuda.matmul.allow_tf32 = torch.backends.cudnn.allow_tf32 = config.tf32
    return accelerator


def join_cpu_processes_as_fsdp(init_kwargs) -> None:
    """Let a launch that asks for FSDP (fsdp.yaml) shard on a machine without an accelerator.

    Accelerate joins CPU processes as MULTI_CPU (gloo), and AcceleratorState turns a launch into FSDP only
    when the processes were joined as MULTI_GPU (or another accelerator's type): on CPUs the FSDP settings
    were dropped and the run trained plain DDP (accelerate/state.py, AcceleratorState.__init__). FSDP2
    itself (fully_shard) runs on gloo. So the processes are joined here as Accelerate joins CPU processes
    (PartialState(cpu=True): gloo, device cpu), and labelled with the multi-device type for the moment the
    Accelerator is built, so that Accelerate's own FSDP set-up runs: the FullyShardedDataParallelPlugin read
    from the launch's FSDP_* variables, its mixed-precision policy, and distributed type FSDP, which
    replaces the label in the shared state. check_fsdp_on_cpu then refuses the run if that did not happen.
    """
    from accelerate.state import PartialState
    from accelerate.utils import DistributedType

    state = PartialState(cpu=True, **init_kwargs.to_kwargs())
    if state.distributed_type == DistributedType.MULTI_CPU:
        PartialState._shared_state["distributed_type"] = DistributedType.MULTI_GPU


def check_fsdp_on_cpu(accelerator) -> None:
    """The launch asked for FSDP: run it, or stop (never plain DDP instead)."""
    from accelerate.utils import DistributedType

    if accelerator.distributed_type != DistributedType.FSDP or accelerator.device.type != "cpu":
        raise UserError(
            f"the launch config asks for FSDP, but Accelerate set this CPU run up as "
            f"{accelerator.distributed_type.value} on {accelerator.device.type}: it would not shard. Use "
            "accelerate_configs/multi_cpu.yaml for data parallelism on CPUs"
        )


def check_deepspeed(accelerator, max_grad_norm: float) -> None:
    """The launch asked for DeepSpeed: run it (never DDP instead), clipping at --max_grad_norm.

    DeepSpeed clips inside its engine (Accelerate's clip_grad_norm_ only reads the norm back), at the config's
    gradient_clipping, which Accelerate fills with 1.0 when the launch leaves it "auto": set it from the flag.
    """
    from accelerate.utils import DistributedType

    if accelerator.distributed_type != DistributedType.DEEPSPEED:
        raise UserError(
            f"the launch config asks for DeepSpeed, but Accelerate set this run up as "
            f"{accelerator.distributed_type.value}: it would not shard. Launch it with accelerate launch "
            "--config_file accelerate_configs/deepspeed_zero2.yaml --num_processes N"
        )
    ds_config = accelerator.state.deepspeed_plugin.deepspeed_config
    clipping = ds_config.get("gradient_clipping", "auto")
    if clipping == "auto":
        ds_config["gradient_clipping"] = max_grad_norm
    elif float(clipping) != max_grad_norm:
        raise UserError(
            f"the DeepSpeed config clips gradients at {clipping}, but --max_grad_norm is {max_grad_norm}: "
            'leave gradient_clipping out of the DeepSpeed config (or "auto") and set --max_grad_norm'
        )


def has_fast_bf16(cuda: bool) -> bool:
    """bf16 matmuls faster than fp32: Ampere+ GPUs, or CPUs with avx512_bf16 / AMX (measured 1.7x here)."""
    import torch

    from train_mrpc.environment import cpu_info

    if cuda:  # emulated bf16 (pre-Ampere GPUs) is slower than fp32, so it does not count
        return torch.cuda.is_bf16_supported(including_emulation=False)
    flags = cpu_info()["flags_of_interest"]  # empty off Linux: stay with fp32 there
    return "avx512_bf16" in flags or "amx_bf16" in flags


def resolve_precision(requested: str, cuda: bool) -> tuple[str, str]:
    """Accelerate's mixed_precision value for --precision, and why it was chosen."""
    if requested != "auto":
        return ("no" if requested == "fp32" else requested), f"--precision {requested}"
    launched = os.environ.get("ACCELERATE_MIXED_PRECISION", "no")
    if launched != "no":
        return launched, "launch config"
    if has_fast_bf16(cuda):
        return "bf16", f"auto: {'GPU' if cuda else 'CPU'} has fast bf16"
    if cuda:  # V100, T4: tensor cores run fp16 (with loss scaling) several times faster than fp32
        return "fp16", "auto: GPU without fast bf16 (pre-Ampere): fp16 with loss scaling"
    return "no", "auto: no fast bf16 on this CPU"


def check_launch_environment() -> None:
    """Launches that are wrong before any process group exists."""
    env = os.environ
    # accelerate's simple launcher sets MASTER_ADDR only when asked for several processes; with the
    # CPU flag it then starts just one (its MULTI_CPU mode needs mpirun) and sets no WORLD_SIZE.
    if env.get("ACCELERATE_USE_CPU", "").lower() == "true" and "MASTER_ADDR" in env and "WORLD_SIZE" not in env:
        raise UserError(
            "this launch asked for several CPU processes, but Accelerate's MULTI_CPU mode (or --cpu "
            "--num_processes N) starts only one without mpirun. For real data parallelism on CPUs use "
            "accelerate_configs/multi_cpu.yaml"
        )
    if env.get("ACCELERATE_USE_DEEPSPEED", "").lower() == "true":
        import importlib.util

        if importlib.util.find_spec("deepspeed") is None:
            raise UserError("the launch config asks for DeepSpeed, which is not installed: pip install deepspeed")


def check_trackers(trackers: list[str]) -> None:
    import importlib.util

    from train_mrpc.config import TRACKERS

    for name in trackers:
        if importlib.util.find_spec(TRACKERS[name]) is None:
            raise UserError(
                f"--report_to {name} needs the {TRACKERS[name]} package, which is not installed: pip install {TRACKERS[name]}"
            )


def check_launch(accelerator) -> None:
    """Stop on launches where Accelerate would run, but not as asked."""
    launched = int(os.environ.get("WORLD_SIZE", "1"))
    if launched != accelerator.num_processes:
        raise UserError(
            f"the launcher started {launched} processes (WORLD_SIZE={launched}) but Accelerate joined "
            f"{accelerator.num_processes}: each process would train its own copy on all the data. "
            "On CPU, launch with accelerate_configs/multi_cpu.yaml"
        )
    if accelerator.device.type == "cpu" and accelerator.mixed_precision == "fp16":
        raise UserError(
            "mixed precision fp16 on CPU: Accelerate would silently run fp32 without loss scaling, and "
            "fp16 matmuls are far slower than fp32 on CPUs. Use bf16: launch with accelerate_configs/bf16.yaml, or "
            "pass --precision bf16 to train-mrpc"
        )
    gpus = requested_gpu_ids() if accelerator.device.type == "cpu" else None
    if gpus:  # without a GPU the run would quietly train on the CPU
        raise UserError(
            f"the launch config asks for GPU {gpus} (gpu_ids), but this machine has no CUDA GPU: on CPUs launch "
            "with accelerate_configs/cpu.yaml, bf16.yaml or multi_cpu.yaml"
        )


def requested_gpu_ids() -> str | None:
    """The GPUs an ``accelerate launch`` asked for by index (its config's or flag's gpu_ids), else None.

    Read from the launch itself: the launcher's command line (its --gpu_ids, --cpu and --config_file, or the
    default config it reads when none is named), parsed with Accelerate's own parser. The worker's environment
    is not enough: accelerate 1.15 exported gpu_ids as CUDA_VISIBLE_DEVICES, 1.16 does so only when torch
    reports a CUDA backend, so on a CPU machine the request left no trace and single_gpu.yaml trained on the
    CPU. Where the launcher's command line cannot be read (not Linux, another launcher), CUDA_VISIBLE_DEVICES
    set under an accelerate launch that did not ask for the CPU still counts.
    """
    env = os.environ
    if "ACCELERATE_MIXED_PRECISION" not in env:  # not started by accelerate launch (a plain or torchrun run)
        return None
    launcher = accelerate_launcher()
    if launcher is not None:
        try:
            return gpu_ids_of_launch(*launcher)
        except Exception:  # a launcher whose flags this accelerate does not parse: fall back to the environment
            pass
    if env.get("ACCELERATE_USE_CPU", "").lower() == "true":
        return None
    return env.get("CUDA_VISIBLE_DEVICES") or None


def gpu_ids_of_launch(launch_args: list[str], cwd: str = ".") -> str | None:
    """gpu_ids as ``accelerate launch`` with these arguments resolves them (flag, then config file); None when
    the launch asks for the CPU or for every GPU there is ("all": on a machine without GPUs, CPU processes)."""
    from accelerate.commands.config import default_config_file, load_config_from_file
    from accelerate.commands.launch import launch_command_parser

    try:
        args, _ = launch_command_parser().parse_known_args(launch_args)
    except SystemExit:  # argparse's way to fail: it printed a usage line about the launcher's flags
        raise ValueError(f"accelerate launch's arguments do not parse: {launch_args}") from None
    config = None
    if args.config_file is not None or (os.path.isfile(default_config_file) and not args.cpu):
        config = load_config_from_file(args.config_file and os.path.join(cwd, args.config_file))
    use_cpu = bool(args.cpu or (config is not None and config.use_cpu))
    gpu_ids = args.gpu_ids if args.gpu_ids is not None else (config.gpu_ids if config is not None else None)
    if use_cpu or gpu_ids is None or str(gpu_ids).strip().lower() == "all":
        return None
    return str(gpu_ids)


def accelerate_launcher() -> tuple[list[str], str] | None:
    """(the arguments after ``launch``, the folder it ran in) of the ``accelerate launch`` process that started
    this one (its parent, or a grandparent under a wrapper), from /proc; None where there is none to read."""
    pid = os.getppid()
    for _ in range(3):
        try:
            argv = Path(f"/proc/{pid}/cmdline").read_bytes().decode(errors="replace").split("\0")[:-1]
            stat = Path(f"/proc/{pid}/stat").read_text()
            cwd = os.readlink(f"/proc/{pid}/cwd")
        except OSError:
            return None
        for i, word in enumerate(argv):
            name = os.path.basename(word)
            if name == "accelerate" and argv[i + 1 : i + 2] == ["launch"]:
                return argv[i + 2 :], cwd
            if name == "accelerate-launch" or (word == "-m" and argv[i + 1 : i + 2] == ["accelerate.commands.launch"]):
                return argv[i + (1 if name == "accelerate-launch" else 2) :], cwd
        pid = int(stat.rsplit(")", 1)[1].split()[1])  # the field after the command name: the parent's pid
        if pid <= 1:
            return None
    return None


def quiet_other_processes(accelerator) -> None:
    """Library warnings and progress bars once per run, from the main process only."""
    import datasets
    import transformers

    if accelerator.is_main_process:
        datasets.utils.logging.set_verbosity_warning()
        transformers.utils.logging.set_verbosity_warning()
    else:
        datasets.utils.logging.set_verbosity_error()
        datasets.disable_progress_bars()
        transformers.utils.logging.set_verbosity_error()
        import warnings

        warnings.filterwarnings("ignore")


def describe_launch(accelerator, config: TrainConfig) -> dict:
    """How this run was launched, recorded in all_results.json so runs can be compared."""
    per_device = config.per_device_train_batch_size
    return {
        "num_processes": accelerator.num_processes,
        "distributed_type": str(accelerator.distributed_type.value),
        "device_type": accelerator.device.type,
        "mixed_precision": accelerator.mixed_precision,
        "per_device_train_batch_size": per_device,
        "gradient_accumulation_steps": config.gradient_accumulation_steps,
        "global_batch_size": per_device * accelerator.num_processes * config.gradient_accumulation_steps,
    }


def describe_deepspeed(ds_config: dict) -> dict:
    """The DeepSpeed settings the engine ran with (the config after Accelerate filled its "auto" values)."""
    import torch

    zero = ds_config.get("zero_optimization", {})
    precision = (
        "bf16"
        if ds_config.get("bf16", {}).get("enabled")
        else "fp16"
        if ds_config.get("fp16", {}).get("enabled")
        else "fp32"
    )
    return {
        "kind": "DeepSpeed ZeRO",
        "zero_stage": zero.get("stage", 0),
        "offload_optimizer": zero.get("offload_optimizer", {}).get("device", "none"),
        "offload_param": zero.get("offload_param", {}).get("device", "none"),
        # bf16/fp16: the model computes with 16-bit weights, the optimizer keeps the fp32 master weights
        "precision": precision,
        "gradient_clipping": ds_config.get("gradient_clipping"),
        "train_micro_batch_size_per_gpu": ds_config.get("train_micro_batch_size_per_gpu"),
        # the engine's own count: it scales the loss and steps at its boundaries, beside Accelerate's accumulate()
        "gradient_accumulation_steps": ds_config.get("gradient_accumulation_steps"),
        "backend": torch.distributed.get_backend() if torch.distributed.is_initialized() else None,
    }


def describe_sharding(accelerator) -> dict | str:
    """What each process holds of the model, recorded in all_results.json: "none" where every process keeps
    all parameters, gradients and optimizer state (one process, DDP); the FSDP (or ZeRO) settings that ran
    otherwise, read from the plugin Accelerate applied rather than from the launch config."""
    import torch
    from accelerate.utils import DistributedType

    if accelerator.distributed_type == DistributedType.DEEPSPEED:
        return describe_deepspeed(accelerator.state.deepspeed_plugin.deepspeed_config)
    if accelerator.distributed_type != DistributedType.FSDP:
        return "none"
    plugin = accelerator.state.fsdp_plugin
    # No policy, or a dtype left None, keeps the parameters' own dtype (float32 here); a None reduce dtype
    # follows the parameter dtype.
    policy = plugin.mixed_precision_policy
    param_dtype = getattr(policy, "param_dtype", None) or torch.float32
    reduce_dtype = getattr(policy, "reduce_dtype", None) or param_dtype
    # A function until the model is prepared, a functools.partial of it afterwards.
    wrap = getattr(getattr(plugin.auto_wrap_policy, "func", plugin.auto_wrap_policy), "__name__", None)
    reshard = plugin.reshard_after_forward
    offload = plugin.cpu_offload  # FSDP2: OffloadPolicy (none) or CPUOffloadPolicy; FSDP1: CPUOffload(offload_params)
    return {
        "kind": "FSDP",
        "fsdp_version": plugin.fsdp_version,
        # FSDP2: True frees each layer's gathered parameters after its forward (ZeRO-3-like); False keeps
        # them until the backward (ZeRO-2-like). FSDP1 names a ShardingStrategy instead.
        "reshard_after_forward": reshard if isinstance(reshard, bool) else getattr(reshard, "name", str(reshard)),
        "state_dict_type": getattr(plugin.state_dict_type, "name", str(plugin.state_dict_type)),
        "auto_wrap_policy": wrap,
        "layers_wrapped": plugin.transformer_cls_names_to_wrap if wrap == "transformer_auto_wrap_policy" else None,
        "cpu_ram_efficient_loading": bool(plugin.cpu_ram_efficient_loading),
        "offload_params": type(offload).__name__ == "CPUOffloadPolicy"
        or getattr(offload, "offload_params", False) is True,
        "param_dtype": str(param_dtype).removeprefix("torch."),
        "reduce_dtype": str(reduce_dtype).removeprefix("torch."),
        "backend": torch.distributed.get_backend() if torch.distributed.is_initialized() else None,
    }


def describe_speed_choices(
    accelerator, config: TrainConfig, pad_to: int | None, cpu_speedups: tuple[bool, str] = (False, "")
) -> dict:
    """The choices that set this run's speed, so the summary can say what made it fast or slow."""
    return {
        "cpu_speedups": cpu_speedups[0],
        "cpu_speedups_reason": cpu_speedups[1],
        "precision": "fp32" if accelerator.mixed_precision == "no" else accelerator.mixed_precision,
        "precision_reason": resolve_precision(config.precision, cuda=accelerator.device.type == "cuda")[1],
        "batching": "length-grouped" if config.group_by_length else "random",
        "pad_to_multiple_of": pad_to,
        "torch_compile": config.torch_compile,
        "torch_compile_mode": config.torch_compile_mode if config.torch_compile else None,
        "attention": config.attn_implementation,
        "tf32": accelerator.device.type == "cuda" and config.tf32,
    }
