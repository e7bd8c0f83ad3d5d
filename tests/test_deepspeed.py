"""DeepSpeed ZeRO-2 (deepspeed_zero2.yaml) runs for real on CPUs: optimizer state and gradients partitioned, the
same weights as DDP, fp32 full-weight outputs that load with from_pretrained and pipeline, DeepSpeed checkpoints
(sub-folders, one optimizer partition per process) that resume exactly, the settings recorded, and the YAML
valid under DeepSpeed's own config schema.

Accelerate alone would drop DeepSpeed on a machine without an accelerator (cpu=True) and train DDP, or count one
process (cpu=False without a backend); see train_mrpc.launch.create_accelerator and check_deepspeed.
"""

import dataclasses
import json
import shutil
import sys
import types
from pathlib import Path

import pytest
import torch
import yaml
from test_fsdp import OPTIMIZER_SETTINGS, ddp_reference

from train_mrpc.checkpointing import validate_checkpoint
from train_mrpc.errors import UserError

from conftest import ROOT, accelerate_launch, launch, paired_run_args, read_log, run_cli, tiny_args, weights

pytest.importorskip("deepspeed", reason="deepspeed is not installed (pip install -e '.[deepspeed]')")
# ~6.5 minutes in CI, most of it DeepSpeed building two C++ ops in a fresh environment (CPU Adam: 136 s; the
# shared-memory communication op its first launch builds: ~70 s): given to a worker first (tests/conftest.py).
pytestmark = pytest.mark.minutes(6.5)

YAML = ROOT / "accelerate_configs" / "deepspeed_zero2.yaml"
ZERO2 = ("deepspeed_zero2.yaml", "--num_processes", "2")
STEPS = 16  # 128 pairs / (2 processes x 8) = 8 steps an epoch, 2 epochs


def zero2_args(model_dir, out, *extra):
    """Dropout-free tiny model, a checkpoint every 4 steps, 101 validation pairs (uneven on 2 processes), in the
    launch's precision (the YAML's bf16 unless a test says fp32)."""
    return paired_run_args(model_dir, out, 8, "--checkpointing_steps", "4", *extra)


def zero2_fp32_args(model_dir, out, *extra):
    """zero2_args in fp32 with AdamW's settings off their defaults: test_fsdp's fsdp_args, so that its DDP run
    (ddp_reference) is this run's too, and so that ZeRO-Offload's CPU Adam is checked to keep them."""
    return zero2_args(model_dir, out, "--precision", "fp32", *OPTIMIZER_SETTINGS, *extra)


def results(out: Path) -> dict:
    return json.loads((out / "all_results.json").read_text())


@pytest.fixture(scope="module")
def zero2_fp32(tmp_path_factory, tiny_model_no_dropout) -> Path:
    """ZeRO-2 in fp32 (--precision fp32): DeepSpeed's bf16 computes with bf16 weights where DDP's bf16 autocasts
    fp32 weights, so only in fp32 must the two agree up to float reduction order. The optimizer stays on the
    device (the launch flag says so, as the YAML does): the reference of the ZeRO-Offload test."""
    out = tmp_path_factory.mktemp("zero2-fp32") / "run"
    launch(ZERO2[0], zero2_fp32_args(tiny_model_no_dropout, out), *ZERO2[1:], "--offload_optimizer_device", "none")
    return out


@pytest.fixture(scope="module")
def zero2_bf16(tmp_path_factory, tiny_model_no_dropout) -> Path:
    """ZeRO-2 as the YAML says: no --precision, so its mixed_precision bf16 applies."""
    out = tmp_path_factory.mktemp("zero2-bf16") / "run"
    launch(ZERO2[0], zero2_args(tiny_model_no_dropout, out), *ZERO2[1:])
    return out


def optimizer_partitions(checkpoint: Path) -> list[dict]:
    """What each process's ZeRO optimizer file holds (DeepSpeed's layout: pytorch_model/*zero_pp_rank_N_*)."""
    files = sorted((checkpoint / "pytorch_model").glob("*zero_pp_rank_*_mp_rank_00_optim_states.pt"))
    partitions = []
    for file in files:
        state = torch.load(file, map_location="cpu", weights_only=False)["optimizer_state_dict"]
        adam = state["base_optimizer_state"]["state"].values()
        partitions.append(
            {
                "file": file.name,
                "zero_stage": int(state["zero_stage"]),
                "partition_count": state["partition_count"],
                "fp32_numel": sum(t.numel() for t in state["single_partition_of_fp32_groups"]),
                "fp32_dtypes": {str(t.dtype) for t in state["single_partition_of_fp32_groups"]},
                "exp_avg_numel": sum(s["exp_avg"].numel() for s in adam),
            }
        )
    return partitions


# --- 1. really ZeRO-2: partitioned, in the YAML's precision; 5. the settings recorded ----------------------


def test_the_yamls_run_is_zero2_in_bf16_with_partitioned_optimizer_state(zero2_bf16, tiny_model_no_dropout):
    """Each process's checkpoint holds only its half of the fp32 master weights and of AdamW's moments
    (DDP: one optimizer file with all of them), the model computes with bf16 weights (DeepSpeed's bf16), and
    all_results.json records what ran."""
    total = sum(t.numel() for t in weights(tiny_model_no_dropout).values())
    checkpoint = zero2_bf16 / "checkpoints" / "step_000004"
    ranks = optimizer_partitions(checkpoint)
    assert [r["file"] for r in ranks] == [f"bf16_zero_pp_rank_{i}_mp_rank_00_optim_states.pt" for i in (0, 1)]
    for rank in ranks:
        assert rank["zero_stage"] == 2 and set(rank["partition_count"]) == {2}  # ZeroStageEnum.gradients
        assert rank["fp32_dtypes"] == {"torch.float32"}
        assert rank["fp32_numel"] < 0.6 * total and rank["exp_avg_numel"] < 0.6 * total
    assert sum(r["fp32_numel"] for r in ranks) == total  # between them, every parameter exactly once
    assert not (checkpoint / "optimizer.bin").exists()  # no unpartitioned optimizer state
    module = torch.load(
        checkpoint / "pytorch_model" / "mp_rank_00_model_states.pt", map_location="cpu", weights_only=False
    )
    assert {str(v.dtype) for v in module["module"].values() if v.is_floating_point()} == {"torch.bfloat16"}

    record = results(zero2_bf16)
    assert record["launch"] == {
        "num_processes": 2,
        "distributed_type": "DEEPSPEED",
        "device_type": "cpu",
        "mixed_precision": "bf16",
        "per_device_train_batch_size": 8,
        "gradient_accumulation_steps": 1,
        "global_batch_size": 16,
    }
    assert record["sharding"] == {
        "kind": "DeepSpeed ZeRO",
        "zero_stage": 2,
        "offload_optimizer": "none",
        "offload_param": "none",
        "precision": "bf16",
        "gradient_clipping": 1.0,
        "train_micro_batch_size_per_gpu": 8,
        "gradient_accumulation_steps": 1,
        "backend": "gloo",
    }
    assert record["speed"]["precision"] == "bf16" and record["speed"]["precision_reason"] == "launch config"


def test_the_saved_model_holds_the_fp32_master_weights(zero2_bf16):
    """Not the bf16 copies the engine computes with: fp32 tensors that bf16 cannot represent, dtype float32."""
    for folder in (zero2_bf16, zero2_bf16 / "best_model"):
        saved = weights(folder)
        assert {str(v.dtype) for v in saved.values()} == {"torch.float32"}
        trained = saved["bert.encoder.layer.0.attention.self.query.weight"]
        assert not torch.equal(trained.bfloat16().float(), trained)
        assert json.loads((folder / "config.json").read_text())["dtype"] == "float32"


def test_check_deepspeed_refuses_a_run_set_up_otherwise_and_fills_clipping():
    from accelerate.utils import DistributedType

    from train_mrpc.launch import check_deepspeed

    ddp = types.SimpleNamespace(distributed_type=DistributedType.MULTI_CPU)
    with pytest.raises(UserError, match="asks for DeepSpeed, but Accelerate set this run up as MULTI_CPU"):
        check_deepspeed(ddp, 1.0)

    def engine(ds_config):
        plugin = types.SimpleNamespace(deepspeed_config=ds_config)
        return types.SimpleNamespace(
            distributed_type=DistributedType.DEEPSPEED, state=types.SimpleNamespace(deepspeed_plugin=plugin)
        )

    auto = {"gradient_clipping": "auto"}
    check_deepspeed(engine(auto), 0.5)
    assert auto["gradient_clipping"] == 0.5  # Accelerate would fill 1.0 whatever --max_grad_norm says
    check_deepspeed(engine({"gradient_clipping": 0.5}), 0.5)
    with pytest.raises(UserError, match="clips gradients at 2.0, but --max_grad_norm is 1.0"):
        check_deepspeed(engine({"gradient_clipping": 2.0}), 1.0)


def test_deepspeed_env_without_a_launcher_is_refused(tmp_path, tiny_model_dir):
    """ACCELERATE_USE_DEEPSPEED without accelerate launch: one process, no DeepSpeed engine; refused, not DDP."""
    proc = run_cli(tiny_args(tiny_model_dir, tmp_path / "out"), env={"ACCELERATE_USE_DEEPSPEED": "true"})
    assert proc.returncode == 2, proc.stderr[-2000:]
    assert "asks for DeepSpeed, but Accelerate set this run up as NO" in proc.stderr
    assert "deepspeed_zero2.yaml" in proc.stderr


def test_without_deepspeed_installed_the_run_says_how_to_install(tmp_path, tiny_model_dir, monkeypatch):
    """deepspeed hidden from every process (sys.modules["deepspeed"] = None makes find_spec answer None): here
    in this process, and from the launcher and its processes by a sitecustomize read at their start-up."""
    with monkeypatch.context() as hidden:
        hidden.setitem(sys.modules, "deepspeed", None)
        proc = run_cli(tiny_args(tiny_model_dir, tmp_path / "a"), env={"ACCELERATE_USE_DEEPSPEED": "true"})
    assert proc.returncode == 2, proc.stderr[-2000:]
    assert "asks for DeepSpeed, which is not installed: pip install deepspeed" in proc.stderr
    hide = tmp_path / "hide"
    hide.mkdir()
    (hide / "sitecustomize.py").write_text('import sys\nsys.modules["deepspeed"] = None\n')
    env = {"PYTHONPATH": str(hide)}
    proc = run_cli(tiny_args(tiny_model_dir, tmp_path / "b"), launcher=accelerate_launch(*ZERO2), env=env)
    assert proc.returncode != 0 and "DeepSpeed is not installed" in proc.stderr


# --- 2. the same weights as DDP ------------------------------------------------------------------------


def test_zero2_ends_with_the_weights_of_ddp_on_the_same_batches(tmp_path_factory, tiny_model_no_dropout, zero2_fp32):
    ddp = ddp_reference(tmp_path_factory, tiny_model_no_dropout)  # shared with tests/test_fsdp.py
    flags = [json.loads((out / "train_config.json").read_text()) for out in (zero2_fp32, ddp)]
    for run_flags in flags:
        del run_flags["output_dir"]
    assert flags[0] == flags[1]  # the same flags: only the launch config differs
    for folder in (".", "best_model"):
        a, b = weights(zero2_fp32 / folder), weights(ddp / folder)
        assert a.keys() == b.keys()
        for name in a:  # float reduction order only (max abs difference seen: 1.2e-7)
            torch.testing.assert_close(a[name], b[name], rtol=1e-4, atol=2e-6, msg=f"{folder}: {name}")
    assert [r["step"] for r in read_log(zero2_fp32)] == [r["step"] for r in read_log(ddp)] == list(range(1, STEPS + 1))
    # The schedule steps as under DDP (a scheduler prepared apart from the model is wrapped under DeepSpeed too).
    assert [r["learning_rate"] for r in read_log(zero2_fp32)] == pytest.approx(
        [r["learning_rate"] for r in read_log(ddp)], rel=1e-9
    )
    assert [r["loss"] for r in read_log(zero2_fp32)] == pytest.approx([r["loss"] for r in read_log(ddp)], rel=1e-4)
    # The logged gradient norm (the engine's own) is the whole model's, not one partition's.
    assert [r["grad_norm"] for r in read_log(zero2_fp32)] == pytest.approx(
        [r["grad_norm"] for r in read_log(ddp)], rel=1e-4
    )
    zero2, plain = results(zero2_fp32), results(ddp)
    assert zero2["eval_examples"] == plain["eval_examples"] == 101
    assert zero2["eval_loss"] == pytest.approx(plain["eval_loss"], rel=1e-4)
    assert zero2["launch"]["distributed_type"] == "DEEPSPEED" and plain["launch"]["distributed_type"] == "MULTI_CPU"
    assert zero2["launch"]["mixed_precision"] == "no" and zero2["sharding"]["precision"] == "fp32"
    assert plain["sharding"] == "none"
    ranks = optimizer_partitions(zero2_fp32 / "checkpoints" / "step_000004")
    assert [r["file"] for r in ranks] == [f"zero_pp_rank_{i}_mp_rank_00_optim_states.pt" for i in (0, 1)]


def test_zero2_with_gradient_accumulation_ends_with_the_weights_of_the_larger_batch(
    tmp_path, tiny_model_no_dropout, zero2_fp32
):
    """Micro-batches of 4 accumulated twice on 2 processes: the same 16 pairs per optimizer step as batches of 8,
    so the same weights, losses, schedule and gradient norms (DeepSpeed's engine counts the micro-batches itself;
    a loss scaled twice, or a schedule stepped per micro-batch, would show here)."""
    out = tmp_path / "accumulated"
    launch(
        ZERO2[0],
        zero2_fp32_args(
            tiny_model_no_dropout,
            out,
            "--per_device_train_batch_size",
            "4",
            "--gradient_accumulation_steps",
            "2",
        ),
        *ZERO2[1:],
    )
    for folder in (".", "best_model"):
        a, b = weights(out / folder), weights(zero2_fp32 / folder)
        for name in a:
            torch.testing.assert_close(a[name], b[name], rtol=1e-4, atol=2e-6, msg=f"{folder}: {name}")
    accumulated, plain = read_log(out), read_log(zero2_fp32)
    assert [r["step"] for r in accumulated] == [r["step"] for r in plain] == list(range(1, STEPS + 1))
    assert [r["learning_rate"] for r in accumulated] == pytest.approx([r["learning_rate"] for r in plain], rel=1e-9)
    assert [r["loss"] for r in accumulated] == pytest.approx([r["loss"] for r in plain], rel=1e-4)
    assert [r["grad_norm"] for r in accumulated] == pytest.approx([r["grad_norm"] for r in plain], rel=1e-4)
    record = results(out)
    assert record["global_step"] == STEPS
    assert (
        record["launch"]["per_device_train_batch_size"],
        record["launch"]["gradient_accumulation_steps"],
        record["launch"]["global_batch_size"],
    ) == (4, 2, 16)
    assert (
        record["sharding"]["train_micro_batch_size_per_gpu"],
        record["sharding"]["gradient_accumulation_steps"],
    ) == (4, 2)


def test_zero2_with_the_optimizer_offloaded_to_the_cpu_ends_with_the_same_weights(
    tmp_path, tiny_model_no_dropout, zero2_fp32
):
    """ZeRO-Offload (offload_optimizer_device: cpu, a launch flag or the YAML key): Accelerate swaps our torch AdamW
    for DeepSpeed's CPU Adam, which must keep the run's settings (betas, epsilon, per-group weight decay; set off
    their defaults in zero2_fp32_args) and so end with the weights of the run whose optimizer stays on the device
    (zero2_fp32: the same flags, launched with --offload_optimizer_device none)."""
    if not (shutil.which("c++") and shutil.which("ninja")):
        pytest.skip("DeepSpeed builds its CPU Adam on first use: needs a C++ compiler and ninja")
    config = json.loads((zero2_fp32 / "train_config.json").read_text())
    assert (config["adam_beta2"], config["adam_epsilon"], config["weight_decay"]) == (0.98, 1e-6, 0.1)
    runs = {"device": zero2_fp32, "offload": tmp_path / "offload"}
    launch(
        ZERO2[0],
        zero2_fp32_args(tiny_model_no_dropout, runs["offload"]),
        *ZERO2[1:],
        "--offload_optimizer_device",
        "cpu",
    )
    for name, offload in (("device", "none"), ("offload", "cpu")):
        assert results(runs[name])["sharding"]["offload_optimizer"] == offload
    a, b = weights(runs["offload"]), weights(runs["device"])
    for name in a:
        torch.testing.assert_close(a[name], b[name], rtol=1e-4, atol=2e-6, msg=name)
    assert [r["loss"] for r in read_log(runs["offload"])] == pytest.approx(
        [r["loss"] for r in read_log(runs["device"])], rel=1e-4
    )


# --- 3. full weights that from_pretrained and pipeline load --------------------------------------------


@pytest.mark.parametrize("run", ["zero2_fp32", "zero2_bf16"])
def test_final_and_best_models_are_full_and_reload(request, run, tiny_model_no_dropout):
    from transformers import AutoModelForSequenceClassification, pipeline

    out = request.getfixturevalue(run)
    original = weights(tiny_model_no_dropout)
    for folder in (out, out / "best_model"):
        saved = weights(folder)
        assert {k: v.shape for k, v in saved.items()} == {k: v.shape for k, v in original.items()}
        assert not torch.equal(saved["classifier.weight"], original["classifier.weight"])  # trained
        model, info = AutoModelForSequenceClassification.from_pretrained(folder, output_loading_info=True)
        assert not info["missing_keys"] and not info["unexpected_keys"] and not info["mismatched_keys"], info
        assert model.dtype == torch.float32
        classify = pipeline("text-classification", model=str(folder))
        assert classify("A dog runs.", text_pair="A dog is running.")[0]["label"] in {"equivalent", "not_equivalent"}


def scores_of_saved_model(folder: Path, out: Path) -> dict:
    """Accuracy, F1 and mean loss of the model saved in ``folder``, reloaded with from_pretrained (fp32, as a
    user gets it), on the run's validation pairs one at a time (no padding)."""
    from transformers import AutoModelForSequenceClassification, AutoTokenizer

    from train_mrpc.config import parse_config
    from train_mrpc.data import load_raw_splits
    from train_mrpc.evaluation import load_metric, score

    config = parse_config(["--config", str(out / "train_config.json")])
    pairs = load_raw_splits(config)["validation"]
    tokenizer = AutoTokenizer.from_pretrained(folder)
    model = AutoModelForSequenceClassification.from_pretrained(folder).eval()
    assert model.dtype == torch.float32
    with torch.inference_mode():
        logits = torch.cat(
            [
                model(**tokenizer(a, b, truncation=True, max_length=config.max_length, return_tensors="pt")).logits
                for a, b in zip(pairs["sentence1"], pairs["sentence2"])
            ]
        )
    return score(logits, torch.tensor(pairs["label"]), load_metric())


def test_reported_scores_are_those_of_the_saved_bf16_model(zero2_bf16):
    """Under DeepSpeed bf16 the engine computes with bf16 copies, while output_dir and best_model hold the fp32
    master weights: the evaluation that picks the best model and fills all_results.json must score the saved
    weights. Each saved model, reloaded and evaluated here, scores what the run reported for it: accuracy and F1
    exactly, the loss to float reduction order (padding and batching differ; measured equal). Scoring the bf16
    copies reported a final loss of 0.666469 for a saved model that scores 0.666434 (5e-5 off; the accuracy and
    F1 of this tiny, barely trained model happened to agree)."""
    record = results(zero2_bf16)
    evals = [json.loads(line) for line in (zero2_bf16 / "eval_results.jsonl").read_text().splitlines()]
    assert record["launch"]["mixed_precision"] == "bf16" and len(evals) == 2
    assert record["eval_weights"] == "saved (the fp32 master weights; DeepSpeed trains with 16-bit copies of them)"
    final = scores_of_saved_model(zero2_bf16, zero2_bf16)
    assert final["num_examples"] == record["eval_examples"] == 101
    assert (final["accuracy"], final["f1"]) == (record["eval_accuracy"], record["eval_f1"])
    assert final["loss"] == pytest.approx(record["eval_loss"], rel=1e-6)
    assert evals[-1]["step"] == record["global_step"] == STEPS
    assert (evals[-1]["eval_accuracy"], evals[-1]["eval_f1"], evals[-1]["eval_loss"]) == (
        record["eval_accuracy"],
        record["eval_f1"],
        record["eval_loss"],
    )
    best = scores_of_saved_model(zero2_bf16 / "best_model", zero2_bf16)
    logged = next(e for e in evals if e["step"] == record["best_step"])
    assert best["accuracy"] == logged["eval_accuracy"] == record["best_accuracy"]
    assert best["f1"] == logged["eval_f1"]
    assert best["loss"] == pytest.approx(logged["eval_loss"], rel=1e-6)


# --- 4. DeepSpeed checkpoints ---------------------------------------------------------------------------


def test_zero2_checkpoint_resumes_to_the_uninterrupted_weights(tmp_path, tiny_model_no_dropout, zero2_fp32):
    """Stopped after step 4's checkpoint (mid-epoch): the resumed ZeRO-2 run ends exactly where the
    uninterrupted one did, losses and learning rates after the resume point included."""
    out = tmp_path / "resumed"
    shutil.copytree(zero2_fp32, out)
    for later in sorted((out / "checkpoints").iterdir()):
        if later.name != "step_000004":
            shutil.rmtree(later)
    kept = weights(out)
    for name in ("model.safetensors", "best_model"):
        shutil.rmtree(out / name) if (out / name).is_dir() else (out / name).unlink()
    proc = launch(
        ZERO2[0],
        zero2_fp32_args(tiny_model_no_dropout, out, "--resume_from_checkpoint", "latest"),
        *ZERO2[1:],
    )
    assert "resumed from" in proc.stdout and "step_000004" in proc.stdout
    resumed = weights(out)
    assert resumed.keys() == kept.keys()
    for name in kept:
        assert torch.equal(resumed[name], kept[name]), name
    assert read_log(out) == read_log(zero2_fp32)


def test_checkpoint_checksums_cover_deepspeeds_folder(tmp_path, zero2_fp32):
    """DeepSpeed's per-process optimizer partitions in pytorch_model/ are listed with their checksums, and so
    is the scheduler (saved by Accelerate beside them): a damaged partition fails validation."""
    checkpoint = tmp_path / "step_000004"
    shutil.copytree(zero2_fp32 / "checkpoints" / "step_000004", checkpoint)
    files = set(validate_checkpoint(checkpoint)["files"])
    assert {
        "latest",
        "scheduler.bin",
        "pytorch_model/mp_rank_00_model_states.pt",
        "pytorch_model/zero_pp_rank_0_mp_rank_00_optim_states.pt",
        "pytorch_model/zero_pp_rank_1_mp_rank_00_optim_states.pt",
    } <= files
    shard = checkpoint / "pytorch_model" / "zero_pp_rank_1_mp_rank_00_optim_states.pt"
    data = bytearray(shard.read_bytes())
    data[len(data) // 2] ^= 0xFF
    shard.write_bytes(bytes(data))
    with pytest.raises(UserError, match="content of pytorch_model/zero_pp_rank_1_mp_rank_00_optim_states.pt differs"):
        validate_checkpoint(checkpoint)


# --- the YAML against DeepSpeed's own schema ------------------------------------------------------------


def deepspeed_config_of(path: Path):
    """The DeepSpeed config Accelerate would build from this launch YAML, checked by DeepSpeed's own schema
    (its pydantic models: no process group, no accelerator). Raises on unknown keys or bad values."""
    from accelerate.commands.launch import launch_command_parser
    from accelerate.utils import DeepSpeedPlugin
    from deepspeed.runtime.config import DeepSpeedConfig

    launch = yaml.safe_load(path.read_text())
    ds = launch.get("deepspeed_config", {})
    known = {action.dest for action in launch_command_parser()._actions}  # accelerate setattr()s unknown keys silently
    if unknown := set(ds) - known:
        raise ValueError(f"unknown deepspeed_config keys: {sorted(unknown)}")
    fields = {f.name for f in dataclasses.fields(DeepSpeedPlugin)}
    plugin = DeepSpeedPlugin(
        **{k: v for k, v in ds.items() if k in fields}, hf_ds_config=ds.get("deepspeed_config_file")
    )
    plugin.set_mixed_precision(launch.get("mixed_precision", "no"))  # the bf16/fp16 sections, as Accelerator adds them
    config = plugin.deepspeed_config
    # The "auto" values Accelerate fills at prepare() time (one process offline).
    config.update(train_micro_batch_size_per_gpu=8, gradient_accumulation_steps=1, train_batch_size=8)
    if config.get("gradient_clipping", "auto") == "auto":
        config["gradient_clipping"] = 1.0
    return DeepSpeedConfig(config)


def test_the_yaml_is_a_valid_deepspeed_config():
    config = deepspeed_config_of(YAML)
    assert config.zero_optimization_stage == 2
    assert config.bfloat16_config.enabled
    assert config.zero_config.offload_optimizer is None or config.zero_config.offload_optimizer.device == "none"


@pytest.mark.parametrize(
    "key, value, message",
    [
        ("zero_stage", 5, "stage Input should be 0, 1, 2, 3"),
        ("offload_optimizer_device", "gpu", "offload_optimizer.device Input should be 'none', 'cpu' or 'nvme'"),
        ("zero_stag", 2, "unknown deepspeed_config keys: ['zero_stag']"),
    ],
)
def test_an_invalid_deepspeed_setting_fails_validation(tmp_path, key, value, message):
    launch = yaml.safe_load(YAML.read_text())
    launch["deepspeed_config"][key] = value
    broken = tmp_path / "broken.yaml"
    broken.write_text(yaml.safe_dump(launch))
    with pytest.raises(Exception) as failure:  # pydantic's ValidationError, or ValueError for an unknown key
        deepspeed_config_of(broken)
    assert message in " ".join(str(failure.value).split())
