"""FSDP (fsdp.yaml) runs for real on CPUs: parameters sharded, the same weights as DDP, full-weight outputs
that load with from_pretrained and pipeline, sharded checkpoints that resume exactly, the settings recorded.

Accelerate alone would drop the FSDP settings on a machine without an accelerator and train DDP; see
train_mrpc.launch.join_cpu_processes_as_fsdp.
"""

import json
import shutil
import sys
import types
from pathlib import Path

import pytest
import torch

from train_mrpc.checkpointing import is_checkpoint_file_name, validate_checkpoint
from train_mrpc.errors import UserError

from conftest import ROOT, equivalence_args, launch, read_log, run_cli, table_text, tiny_args, weights

FSDP = ("fsdp.yaml", "--num_processes", "2")
STEPS = 16  # 128 pairs / (2 processes x 8) = 8 steps an epoch, 2 epochs
# AdamW's settings off their defaults: an optimizer that dropped them (DeepSpeed's CPU Adam under ZeRO-Offload,
# tests/test_deepspeed.py) would end elsewhere than the DDP run both modules compare against.
OPTIMIZER_SETTINGS = ("--adam_beta2", "0.98", "--adam_epsilon", "1e-6", "--weight_decay", "0.1")


def fsdp_args(model_dir, out, *extra):
    """Dropout-free tiny model in fp32 (so FSDP and DDP must agree up to float reduction order), a checkpoint
    every 4 steps, 101 validation pairs (uneven on 2 processes). The same flags as test_deepspeed's fp32 ZeRO-2
    run, so that one DDP run (ddp_reference) serves both."""
    return equivalence_args(model_dir, out, 8, "--checkpointing_steps", "4", *OPTIMIZER_SETTINGS, *extra)


def ddp_reference(tmp_path_factory, model_dir: Path) -> Path:
    """The 2-process DDP run (multi_cpu.yaml) with fsdp_args's flags, which FSDP here and ZeRO-2 in fp32
    (tests/test_deepspeed.py imports this) must match: launched once a session, by whichever module asks first,
    in the session's base folder. Tests only read it."""
    out = tmp_path_factory.getbasetemp() / "ddp-reference" / "run"
    done = out.parent / "launched-with"
    if not done.exists():
        shutil.rmtree(out.parent, ignore_errors=True)
        out.parent.mkdir(parents=True)
        launch("multi_cpu.yaml", fsdp_args(model_dir, out))
        done.write_text(str(model_dir))
    assert done.read_text() == str(model_dir), "the DDP reference was run with another model"
    return out


@pytest.fixture(scope="module")
def fsdp_run(tmp_path_factory, tiny_model_no_dropout) -> Path:
    out = tmp_path_factory.mktemp("fsdp") / "run"
    launch(FSDP[0], fsdp_args(tiny_model_no_dropout, out), *FSDP[1:])
    return out


# --- 1. really sharded ------------------------------------------------------------------------------

PROBE = """
import json, sys
import torch
from torch.distributed.tensor import DTensor
from train_mrpc.config import parse_config
from train_mrpc.launch import describe_sharding
from train_mrpc.step import training_step
from train_mrpc.train import setup

run = setup(parse_config(sys.argv[2:]))
params = dict(run.model.named_parameters())
query = run.accelerator.unwrap_model(run.model).bert.encoder.layer[0].attention.self.query
seen = []
query.register_forward_hook(lambda module, inputs, output: seen.append(str(output.dtype)))
loss, _ = training_step(run.accelerator, run.model, run.optimizer, run.scheduler, next(iter(run.train_loader)), 1.0)
state = [s for s in run.optimizer.optimizer.state.values() if "exp_avg" in s]
record = {
    "distributed_type": str(run.accelerator.distributed_type.value),
    "dtensors": sum(isinstance(p, DTensor) for p in params.values()), "parameters": len(params),
    "placements": sorted({str(p.placements) for p in params.values() if isinstance(p, DTensor)}),
    "local_numel": sum((p.to_local() if isinstance(p, DTensor) else p).numel() for p in params.values()),
    "global_numel": sum(p.numel() for p in params.values()),
    "param_dtypes": sorted({str(p.dtype) for p in params.values()}),
    "exp_avg_local_numel": sum((s["exp_avg"].to_local() if isinstance(s["exp_avg"], DTensor) else s["exp_avg"]).numel()
                               for s in state),
    "layer_output_dtypes": seen, "loss_finite": bool(torch.isfinite(loss)),
    "sharding": describe_sharding(run.accelerator),
}
with open(f"{sys.argv[1]}/rank{run.accelerator.process_index}.json", "w") as f:
    json.dump(record, f)
torch.distributed.destroy_process_group()
"""


def test_the_loops_model_and_optimizer_state_are_sharded_in_the_yamls_precision(tmp_path, tiny_model_dir):
    """The loop's own setup under fsdp.yaml on 2 CPU processes: every parameter a DTensor sharded on dim 0,
    each process holding half of them and half of AdamW's state (DDP: all of both), and the YAML's bf16 applied
    (no --precision): layers compute in bf16 from fp32 master shards."""
    probe = tmp_path / "probe.py"
    probe.write_text(PROBE)
    launcher = [
        sys.executable,
        "-m",
        "accelerate.commands.launch",
        "--config_file",
        str(ROOT / "accelerate_configs" / "fsdp.yaml"),
        "--num_processes",
        "2",
        str(probe),
        str(tmp_path),
    ]
    proc = run_cli(tiny_args(tiny_model_dir, tmp_path / "out"), launcher=launcher)
    assert proc.returncode == 0, proc.stderr[-4000:]
    ranks = [json.loads((tmp_path / f"rank{i}.json").read_text()) for i in (0, 1)]
    for rank in ranks:
        assert rank["distributed_type"] == "FSDP"
        assert rank["dtensors"] == rank["parameters"] > 0
        assert rank["placements"] == ["(Shard(dim=0),)"]
        assert rank["local_numel"] < 0.6 * rank["global_numel"]
        assert rank["param_dtypes"] == ["torch.float32"]  # master weights; bf16 copies are gathered for compute
        assert rank["layer_output_dtypes"] == ["torch.bfloat16"] and rank["loss_finite"]
        assert rank["sharding"]["param_dtype"] == rank["sharding"]["reduce_dtype"] == "bfloat16"
    # Between them the two processes hold each parameter and each optimizer moment exactly once.
    assert sum(r["local_numel"] for r in ranks) == ranks[0]["global_numel"]
    assert sum(r["exp_avg_local_numel"] for r in ranks) == ranks[0]["global_numel"]


def test_a_launch_for_fsdp_that_accelerate_set_up_otherwise_is_refused(monkeypatch):
    """The guard behind join_cpu_processes_as_fsdp: should a later Accelerate set a CPU run up as anything
    but FSDP, the run stops instead of training DDP under an FSDP config."""
    from accelerate.utils import DistributedType

    from train_mrpc.launch import check_fsdp_on_cpu

    ddp = types.SimpleNamespace(distributed_type=DistributedType.MULTI_CPU, device=torch.device("cpu"))
    with pytest.raises(
        UserError, match="asks for FSDP, but Accelerate set this CPU run up as MULTI_CPU.*multi_cpu.yaml"
    ):
        check_fsdp_on_cpu(ddp)
    check_fsdp_on_cpu(types.SimpleNamespace(distributed_type=DistributedType.FSDP, device=torch.device("cpu")))


# --- 2. the same weights as DDP; 5. the settings recorded ------------------------------------------


def test_fsdp_ends_with_the_weights_of_ddp_on_the_same_batches(tmp_path_factory, tiny_model_no_dropout, fsdp_run):
    ddp = ddp_reference(tmp_path_factory, tiny_model_no_dropout)
    for folder in (".", "best_model"):
        a, b = weights(fsdp_run / folder), weights(ddp / folder)
        assert a.keys() == b.keys()
        for name in a:  # float reduction order only (max abs difference seen: ~1e-7)
            torch.testing.assert_close(a[name], b[name], rtol=1e-4, atol=2e-6, msg=f"{folder}: {name}")
    assert [r["step"] for r in read_log(fsdp_run)] == [r["step"] for r in read_log(ddp)] == list(range(1, STEPS + 1))
    assert [r["loss"] for r in read_log(fsdp_run)] == pytest.approx([r["loss"] for r in read_log(ddp)], rel=1e-4)
    # The logged gradient norm is the whole model's, not one shard's.
    assert [r["grad_norm"] for r in read_log(fsdp_run)] == pytest.approx(
        [r["grad_norm"] for r in read_log(ddp)], rel=1e-4
    )
    fsdp_results = json.loads((fsdp_run / "all_results.json").read_text())
    ddp_results = json.loads((ddp / "all_results.json").read_text())
    assert fsdp_results["eval_examples"] == ddp_results["eval_examples"] == 101
    assert fsdp_results["eval_loss"] == pytest.approx(ddp_results["eval_loss"], rel=1e-4)
    assert (
        fsdp_results["launch"]["distributed_type"] == "FSDP"
        and ddp_results["launch"]["distributed_type"] == "MULTI_CPU"
    )
    assert fsdp_results["launch"]["global_batch_size"] == ddp_results["launch"]["global_batch_size"] == 16
    assert ddp_results["sharding"] == "none"
    assert fsdp_results["sharding"] == {
        "kind": "FSDP",
        "fsdp_version": 2,
        "reshard_after_forward": True,
        "state_dict_type": "SHARDED_STATE_DICT",
        "auto_wrap_policy": "transformer_auto_wrap_policy",
        "layers_wrapped": ["BertLayer"],
        "cpu_ram_efficient_loading": True,
        "offload_params": False,
        "param_dtype": "float32",
        "reduce_dtype": "float32",
        "backend": "gloo",  # --precision fp32 overrides bf16
    }


# --- 3. full weights that from_pretrained and pipeline load ----------------------------------------


def test_final_and_best_models_are_full_and_reload(fsdp_run, tiny_model_no_dropout):
    """Gathered, not shards: every tensor at its full shape, no key missing, and the reloaded final model
    reproduces the run's own final evaluation."""
    from transformers import AutoModelForSequenceClassification, AutoTokenizer, pipeline

    from train_mrpc.synthetic import generate_pairs

    original = weights(tiny_model_no_dropout)
    results = json.loads((fsdp_run / "all_results.json").read_text())
    for folder in (fsdp_run, fsdp_run / "best_model"):
        saved = weights(folder)
        assert {k: v.shape for k, v in saved.items()} == {k: v.shape for k, v in original.items()}
        assert not torch.equal(saved["classifier.weight"], original["classifier.weight"])  # trained
        model, info = AutoModelForSequenceClassification.from_pretrained(folder, output_loading_info=True)
        assert not info["missing_keys"] and not info["unexpected_keys"] and not info["mismatched_keys"], info
        classify = pipeline("text-classification", model=str(folder))
        assert classify("A dog runs.", text_pair="A dog is running.")[0]["label"] in {"equivalent", "not_equivalent"}
    reloaded = AutoModelForSequenceClassification.from_pretrained(fsdp_run).eval()
    tokenizer = AutoTokenizer.from_pretrained(fsdp_run)
    pairs = generate_pairs("validation", seed=0, size=None)
    batch = tokenizer(pairs["sentence1"][:101], pairs["sentence2"][:101], padding=True, return_tensors="pt")
    with torch.no_grad():
        logits = reloaded(**batch).logits
    loss = torch.nn.functional.cross_entropy(logits, torch.tensor(pairs["label"][:101])).item()
    assert loss == pytest.approx(results["eval_loss"], rel=1e-5)


# --- 4. sharded checkpoints ------------------------------------------------------------------------


def test_sharded_checkpoint_resumes_to_the_uninterrupted_weights(tmp_path, tiny_model_no_dropout, fsdp_run):
    """Stopped after step 4's checkpoint (mid-epoch): the resumed FSDP run ends exactly where the
    uninterrupted one did, losses after the resume point included."""
    out = tmp_path / "resumed"
    shutil.copytree(fsdp_run, out)
    for later in sorted((out / "checkpoints").iterdir()):
        if later.name != "step_000004":
            shutil.rmtree(later)
    kept = weights(out)  # the uninterrupted run's final weights are overwritten by the resumed run
    for name in ("model.safetensors", "best_model"):
        shutil.rmtree(out / name) if (out / name).is_dir() else (out / name).unlink()
    proc = launch(FSDP[0], fsdp_args(tiny_model_no_dropout, out, "--resume_from_checkpoint", "latest"), *FSDP[1:])
    assert "resumed from" in proc.stdout and "step_000004" in proc.stdout
    assert "2 x cpu, FSDP2 (parameters, gradients and optimizer state sharded" in table_text(proc.stdout)
    resumed = weights(out)
    assert resumed.keys() == kept.keys()
    for name in kept:
        assert torch.equal(resumed[name], kept[name]), name
    assert read_log(out) == read_log(fsdp_run)
    assert weights(out / "best_model").keys() == kept.keys()


def test_checkpoint_checksums_cover_the_sharded_folders(tmp_path, fsdp_run):
    """The per-process shards and metadata inside FSDP's checkpoint folders are listed with their checksums:
    a damaged or missing shard fails validation like any other file."""
    checkpoint = tmp_path / "step_000004"
    shutil.copytree(fsdp_run / "checkpoints" / "step_000004", checkpoint)
    files = set(validate_checkpoint(checkpoint)["files"])
    for folder in ("pytorch_model_fsdp_0", "optimizer_0"):
        assert {f"{folder}/__0_0.distcp", f"{folder}/__1_0.distcp", f"{folder}/.metadata"} <= files
    shard = checkpoint / "pytorch_model_fsdp_0" / "__1_0.distcp"
    data = bytearray(shard.read_bytes())
    data[len(data) // 2] ^= 0xFF  # same size, other content
    shard.write_bytes(bytes(data))
    with pytest.raises(UserError, match="content of pytorch_model_fsdp_0/__1_0.distcp differs"):
        validate_checkpoint(checkpoint)
    (checkpoint / "optimizer_0" / ".metadata").unlink()
    with pytest.raises(UserError, match="optimizer_0/.metadata is missing"):
        validate_checkpoint(checkpoint)


@pytest.mark.parametrize(
    "name, ok",
    [
        ("model.safetensors", True),
        ("optimizer_0/.metadata", True),
        ("pytorch_model_fsdp_0/__1_0.distcp", True),
        ("../model.safetensors", False),
        ("/etc/passwd", False),
        ("a/../../b", False),
        ("a//b", False),
        ("a/./b", False),
        (".tmp-step/x", False),
        ("", False),
    ],
)
def test_checkpoint_file_names_stay_inside_the_checkpoint(name, ok):
    assert is_checkpoint_file_name(name) is ok


def test_a_model_without_the_configs_layer_class_is_refused_in_one_line(tmp_path, tiny_model_dir, monkeypatch):
    """fsdp.yaml wraps BertLayer: a RoBERTa-style config naming another class stops before any training with
    what the model has, rather than with a traceback from inside accelerator.prepare."""
    from train_mrpc.config import parse_config
    from train_mrpc.model import load_tokenizer_and_model

    config = parse_config(tiny_args(tiny_model_dir, tmp_path))
    for key, value in {
        "ACCELERATE_USE_FSDP": "true",
        "FSDP_AUTO_WRAP_POLICY": "TRANSFORMER_BASED_WRAP",
        "FSDP_TRANSFORMER_CLS_TO_WRAP": "RobertaLayer",
    }.items():
        monkeypatch.setenv(key, value)
    with pytest.raises(UserError, match="wraps RobertaLayer, which model .* does not have \\(its layers: BertLayer\\)"):
        load_tokenizer_and_model(config)
    monkeypatch.setenv("FSDP_TRANSFORMER_CLS_TO_WRAP", "BertLayer")
    load_tokenizer_and_model(config)


def test_sharding_record_says_none_where_every_process_holds_the_whole_model():
    """One process, DDP on CPUs or GPUs (the DeepSpeed record is tested with DeepSpeed)."""
    from accelerate.utils import DistributedType

    from train_mrpc.launch import describe_sharding

    for kind in (DistributedType.NO, DistributedType.MULTI_CPU, DistributedType.MULTI_GPU):
        assert describe_sharding(types.SimpleNamespace(distributed_type=kind)) == "none"


def test_a_checkpoint_of_the_other_layout_is_refused_in_one_line(fsdp_run):
    """FSDP saves the model as pytorch_model_fsdp_0/, DDP as model.safetensors: resuming one kind with the other
    would fail deep inside torch.distributed.checkpoint (a BaseException, so a traceback); it is named instead.
    (Seen through the launcher too: multi_cpu.yaml resuming this FSDP run's checkpoints stops with this line.)"""
    from accelerate.utils import DistributedType

    from train_mrpc.checkpointing import check_same_layout

    checkpoint = fsdp_run / "checkpoints" / "step_000004"
    record = validate_checkpoint(checkpoint)
    ddp = types.SimpleNamespace(distributed_type=DistributedType.MULTI_CPU)
    fsdp = types.SimpleNamespace(distributed_type=DistributedType.FSDP)
    with pytest.raises(UserError, match="saved by an FSDP run and this run is MULTI_CPU: .* different layouts"):
        check_same_layout(checkpoint, record, ddp)
    check_same_layout(checkpoint, record, fsdp)
    ddp_record = {"files": {"model.safetensors": 1, "optimizer.bin": 1}}
    with pytest.raises(UserError, match="saved by a run without FSDP and this run is FSDP"):
        check_same_layout(checkpoint, ddp_record, fsdp)
    check_same_layout(checkpoint, ddp_record, ddp)
