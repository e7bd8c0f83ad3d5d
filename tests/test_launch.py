"""Every launch mode does what it says: configs load, 2 processes = 1 process with twice the batch, traps refused."""

import json
import os
import re
import subprocess
import sys
import types
from pathlib import Path

import pytest
import torch
from test_cpu_peak import assert_mfu_over_kept_peak

from conftest import ROOT, TEST_ENV, accelerate_launch, equivalence_args, launch, run_cli, table_text, tiny_args

CONFIGS = sorted((ROOT / "accelerate_configs").glob("*.yaml"))
EXPECTED = {  # file -> (distributed_type, mixed_precision, use_cpu)
    "cpu.yaml": ("NO", "no", True),
    "multi_cpu.yaml": ("MULTI_GPU", "no", False),
    "single_gpu.yaml": ("NO", "no", False),
    "multi_gpu.yaml": ("MULTI_GPU", "bf16", False),
    "bf16.yaml": ("NO", "bf16", False),
    "fp16.yaml": ("NO", "fp16", False),
    "multi_node.yaml": ("MULTI_GPU", "bf16", False),
    "fsdp.yaml": ("FSDP", "bf16", False),
    "deepspeed_zero2.yaml": ("DEEPSPEED", "bf16", False),
}


# equivalence_args: in conftest, which makes the 2-process run (two_process_equivalence_run) once for this file
# and tests/test_cluster.py.


def outputs(out: Path):
    from safetensors.torch import load_file

    log = [json.loads(line) for line in (out / "train_log.jsonl").read_text().splitlines()]
    return load_file(out / "model.safetensors"), log, json.loads((out / "all_results.json").read_text())


def assert_same_run(a: Path, b: Path):
    weights_a, log_a, results_a = outputs(a)
    weights_b, log_b, results_b = outputs(b)
    assert weights_a.keys() == weights_b.keys()
    for name in weights_a:  # tolerance: float reduction order only
        torch.testing.assert_close(weights_a[name], weights_b[name], rtol=1e-4, atol=2e-6, msg=name)
    assert [r["step"] for r in log_a] == [r["step"] for r in log_b]
    assert [r["learning_rate"] for r in log_a] == pytest.approx([r["learning_rate"] for r in log_b], rel=1e-9)
    assert [r["loss"] for r in log_a] == pytest.approx([r["loss"] for r in log_b], rel=1e-4)
    for key in ("eval_accuracy", "eval_f1", "eval_examples"):
        assert results_a[key] == results_b[key], key
    assert results_a["eval_loss"] == pytest.approx(results_b["eval_loss"], rel=1e-4)
    return results_a, results_b


def run_in_one_process(args: list[str]) -> None:
    """A 1-process run needs no launcher (cpu.yaml launches one plain process): the CLI in this process."""
    proc = run_cli(args)
    assert proc.returncode == 0, proc.stderr[-4000:]


@pytest.fixture(scope="module")
def one_process_batch16(tmp_path_factory, tiny_model_no_dropout):
    out = tmp_path_factory.mktemp("one-process") / "run"
    run_in_one_process(equivalence_args(tiny_model_no_dropout, out, 16))
    return out


def test_two_processes_match_one_process_with_twice_the_batch(one_process_batch16, two_process_equivalence_run):
    out, proc = two_process_equivalence_run  # launch("multi_cpu.yaml", equivalence_args(..., 8)), made in conftest
    one, two = assert_same_run(one_process_batch16, out)
    # Learning-rate schedule in optimizer steps: a prepared scheduler steps once per process per step.
    _, log, _ = outputs(out)
    assert log[0]["learning_rate"] == pytest.approx(1e-3 / 4)  # 16 steps, 4 of warmup: step 1 = 1/4 of peak
    assert two["launch"] == {
        "num_processes": 2,
        "distributed_type": "MULTI_CPU",
        "device_type": "cpu",
        "mixed_precision": "no",
        "per_device_train_batch_size": 8,
        "gradient_accumulation_steps": 1,
        "global_batch_size": 16,
    }
    assert one["launch"]["num_processes"] == 1 and one["launch"]["global_batch_size"] == 16
    # MFU is over the best fp32 matmul measured on this CPU, which a measurement under load (a sibling process,
    # another job on the machine) can only raise, never lower.
    assert_mfu_over_kept_peak(two, "fp32")
    # The uneven validation split (101 on 2 processes) is counted exactly once.
    assert two["eval_examples"] == 101
    # Logging, progress, saving and the summary happen once.
    assert proc.stdout.count("MRPC fine-tune") == 1
    assert "2 x cpu, DDP (every process holds the whole model), fp32 precision" in table_text(proc.stdout)
    assert len(re.findall(r"epoch 1: eval accuracy", proc.stdout)) == 1
    assert len(log) == len({r["step"] for r in log}) == 16


def test_gradient_accumulation_matches_the_larger_batch(tmp_path, tiny_model_no_dropout, one_process_batch16):
    out = tmp_path / "accumulated"
    run_in_one_process(equivalence_args(tiny_model_no_dropout, out, 8, "--gradient_accumulation_steps", "2"))
    _, accumulated = assert_same_run(one_process_batch16, out)
    assert accumulated["global_step"] == 16
    assert accumulated["launch"]["global_batch_size"] == 16


def test_bf16_runs_with_real_autocast_on_cpu(tmp_path, tiny_model_dir):
    """bf16.yaml trains end to end, and its results differ from the same run in fp32 (real bf16 arithmetic; the
    fp32 run, one plain process, in this process)."""
    runs = {}
    launch("bf16.yaml", tiny_args(tiny_model_dir, tmp_path / "bf16", "--max_train_steps", "4"))
    run_in_one_process(tiny_args(tiny_model_dir, tmp_path / "fp32", "--max_train_steps", "4", "--precision", "fp32"))
    for name in ("bf16", "fp32"):
        runs[name] = json.loads((tmp_path / name / "all_results.json").read_text())
    assert runs["bf16"]["launch"]["mixed_precision"] == "bf16" and runs["fp32"]["launch"]["mixed_precision"] == "no"
    assert runs["bf16"]["eval_loss"] == pytest.approx(runs["fp32"]["eval_loss"], rel=0.05)  # the same run...
    assert runs["bf16"]["eval_loss"] != runs["fp32"]["eval_loss"]  # ...in other arithmetic


@pytest.mark.parametrize("precision, dtype", [("bf16", torch.bfloat16), ("fp32", torch.float32)])
def test_the_loops_model_computes_in_the_precision_asked(tmp_path, tiny_model_dir, precision, dtype):
    """Inside the loop's prepared model, the encoder's linear layers output bf16 under bf16 autocast."""
    from train_mrpc.config import parse_config
    from train_mrpc.step import training_step
    from train_mrpc.train import setup

    run = setup(parse_config(tiny_args(tiny_model_dir, tmp_path / "run", "--precision", precision)))
    seen = []
    layer = run.accelerator.unwrap_model(run.model).bert.encoder.layer[0].attention.self.query
    layer.register_forward_hook(lambda module, inputs, output: seen.append(output.dtype))
    loss, _ = training_step(run.accelerator, run.model, run.optimizer, run.scheduler, next(iter(run.train_loader)), 1.0)
    assert seen == [dtype] and torch.isfinite(loss)


# --- traps ------------------------------------------------------------------------------------


def test_multi_cpu_mode_that_starts_one_process_is_refused(tmp_path, tiny_model_dir):
    trap = tmp_path / "accelerate_multi_cpu.yaml"
    trap.write_text(
        "distributed_type: MULTI_CPU\nnum_processes: 2\nnum_machines: 1\nmachine_rank: 0\n"
        "mixed_precision: 'no'\nuse_cpu: true\n"
    )
    for launcher in (
        ["--config_file", trap],
        ["--config_file", ROOT / "accelerate_configs" / "cpu.yaml", "--cpu", "--num_processes", "2"],
    ):
        import sys

        command = [sys.executable, "-m", "accelerate.commands.launch", *map(str, launcher), "-m", "train_mrpc"]
        proc = run_cli(tiny_args(tiny_model_dir, tmp_path / "out"), launcher=command)
        assert proc.returncode != 0
        assert "starts only one without mpirun" in proc.stderr and "multi_cpu.yaml" in proc.stderr


def test_world_size_mismatch_is_refused(monkeypatch):
    from train_mrpc.errors import UserError
    from train_mrpc.launch import check_launch

    # What a plain Accelerator() reports inside a 2-process torchrun launch on a CPU-only machine.
    unsynchronised = types.SimpleNamespace(num_processes=1, device=torch.device("cpu"), mixed_precision="no")
    monkeypatch.setenv("WORLD_SIZE", "2")
    with pytest.raises(UserError, match="started 2 processes .* but Accelerate joined 1"):
        check_launch(unsynchronised)
    monkeypatch.setenv("WORLD_SIZE", "1")
    check_launch(unsynchronised)


def test_fp16_on_cpu_is_refused_with_bf16_suggested(tmp_path, tiny_model_dir):
    proc = run_cli(tiny_args(tiny_model_dir, tmp_path), launcher=accelerate_launch("fp16.yaml"))
    assert proc.returncode != 0
    assert "train-mrpc: error: mixed precision fp16 on CPU" in proc.stderr and "bf16" in proc.stderr


def test_a_gpu_config_on_a_machine_without_gpus_is_refused(tmp_path, tiny_model_dir):
    """single_gpu.yaml names GPU 0 (gpu_ids): without one, the run stops instead of training on the CPU."""
    import torch

    if torch.cuda.is_available():
        pytest.skip("this machine has a GPU")
    proc = run_cli(tiny_args(tiny_model_dir, tmp_path), launcher=accelerate_launch("single_gpu.yaml"))
    assert proc.returncode != 0
    assert (
        "train-mrpc: error: the launch config asks for GPU 0 (gpu_ids), but this machine has no CUDA GPU" in proc.stderr
    )


def test_gpu_ids_on_the_launch_command_line_are_refused_without_gpus(tmp_path, tiny_model_dir):
    """The `accelerate` command itself, a config named relative to where it runs, --gpu_ids as a flag: the
    request is read from the launch (accelerate 1.16 no longer exports it to the worker on a CPU machine)."""
    import torch

    if torch.cuda.is_available():
        pytest.skip("this machine has a GPU")
    accelerate = [
        str(Path(sys.executable).parent / "accelerate"),
        "launch",
        "--config_file",
        "accelerate_configs/bf16.yaml",
    ]
    proc = run_cli(tiny_args(tiny_model_dir, tmp_path), launcher=[*accelerate, "--gpu_ids", "1", "-m", "train_mrpc"])
    assert proc.returncode != 0
    assert (
        "train-mrpc: error: the launch config asks for GPU 1 (gpu_ids), but this machine has no CUDA GPU" in proc.stderr
    )


@pytest.mark.parametrize(
    "launch_args, expected",
    [
        (["--config_file", "accelerate_configs/single_gpu.yaml"], "0"),
        (["--config_file", "accelerate_configs/single_gpu.yaml", "--cpu"], None),  # --cpu wins, as in the launcher
        (["--config_file", "accelerate_configs/single_gpu.yaml", "--gpu_ids", "2,3"], "2,3"),
        (["--config_file", "accelerate_configs/cpu.yaml", "--gpu_ids", "0"], None),  # use_cpu: true
        (["--config_file", "accelerate_configs/bf16.yaml"], None),  # no gpu_ids: trains where it can
        (["--config_file", "accelerate_configs/multi_gpu.yaml"], None),  # gpu_ids: all (CPU processes here)
        (
            ["--config_file", "accelerate_configs/fp16.yaml", "-m", "x", "--gpu_ids", "9"],
            "0",
        ),  # the script's flags are not the launcher's
    ],
)
def test_the_gpus_a_launch_asks_for_are_read_from_its_arguments_and_config(
    launch_args, expected, monkeypatch, tmp_path
):
    from train_mrpc.launch import gpu_ids_of_launch

    monkeypatch.setenv("HF_HOME", str(tmp_path))  # no default config file of the user's
    assert gpu_ids_of_launch([*launch_args, "-m", "train_mrpc"], cwd=str(ROOT)) == expected


def test_the_launcher_of_this_process_is_found_in_proc(tmp_path):
    """A child of `python -m accelerate.commands.launch ...` finds that command's arguments and folder."""
    code = "import json; from train_mrpc.launch import accelerate_launcher; print(json.dumps(accelerate_launcher()))"
    script = tmp_path / "probe.py"
    script.write_text(code)
    proc = subprocess.run(
        [sys.executable, "-m", "accelerate.commands.launch", "--cpu", "--num_processes", "1", str(script)],
        cwd=tmp_path,
        capture_output=True,
        text=True,
        env={**os.environ, **TEST_ENV},
        timeout=300,
    )
    assert proc.returncode == 0, proc.stderr
    argv, cwd = json.loads(proc.stdout.strip().splitlines()[-1])
    assert argv == ["--cpu", "--num_processes", "1", str(script)] and cwd == str(tmp_path)


def test_deepspeed_without_deepspeed_says_how_to_install(tmp_path, tiny_model_dir):
    import importlib.util

    if importlib.util.find_spec("deepspeed") is not None:
        pytest.skip("deepspeed is installed")
    proc = run_cli(tiny_args(tiny_model_dir, tmp_path), env={"ACCELERATE_USE_DEEPSPEED": "true"})
    assert proc.returncode == 2
    assert "asks for DeepSpeed, which is not installed: pip install deepspeed" in proc.stderr
    proc = run_cli(
        tiny_args(tiny_model_dir, tmp_path), launcher=accelerate_launch("deepspeed_zero2.yaml", "--num_processes", "2")
    )
    assert proc.returncode != 0 and "DeepSpeed is not installed" in proc.stderr


# --- the shipped configs ----------------------------------------------------------------------


def test_every_config_is_shipped_and_loads_with_accelerate():
    from accelerate.commands.config.config_args import load_config_from_file

    assert {c.name for c in CONFIGS} == set(EXPECTED)
    for path in CONFIGS:
        config = load_config_from_file(str(path))
        distributed_type, mixed_precision, use_cpu = EXPECTED[path.name]
        assert config.distributed_type.value == distributed_type, path.name
        assert config.mixed_precision == mixed_precision, path.name
        assert bool(config.use_cpu) == use_cpu, path.name
    multi_node = load_config_from_file(str(ROOT / "accelerate_configs" / "multi_node.yaml"))
    assert multi_node.num_machines == 2 and multi_node.num_processes % 2 == 0
    assert load_config_from_file(str(ROOT / "accelerate_configs" / "multi_cpu.yaml")).num_processes == 2
    assert (
        load_config_from_file(str(ROOT / "accelerate_configs" / "deepspeed_zero2.yaml")).deepspeed_config["zero_stage"]
        == 2
    )
    assert (
        load_config_from_file(str(ROOT / "accelerate_configs" / "fsdp.yaml")).fsdp_config[
            "fsdp_transformer_layer_cls_to_wrap"
        ]
        == "BertLayer"
    )


@pytest.mark.parametrize("path", CONFIGS, ids=lambda p: p.name)
def test_config_has_launch_command_comments_and_no_hyperparameters(path):
    import dataclasses

    import yaml

    from train_mrpc.config import TrainConfig

    lines = path.read_text().splitlines()
    header = "\n".join(line for line in lines if line.startswith("#"))
    assert f"accelerate launch --config_file accelerate_configs/{path.name}" in header
    for line in lines:
        if line.strip() and not line.lstrip().startswith("#"):
            assert " # " in line or line.rstrip().endswith(":"), f"{path.name}: no comment on {line!r}"

    def keys(mapping):
        for key, value in mapping.items():
            yield key
            if isinstance(value, dict):
                yield from keys(value)

    hyperparameters = {f.name for f in dataclasses.fields(TrainConfig)} | {
        "gradient_clipping",
        "gradient_accumulation_steps",
    }
    assert not set(keys(yaml.safe_load(path.read_text()))) & hyperparameters
