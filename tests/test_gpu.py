"""GPU code paths, each shown doing what it says: ``python -m pytest -m gpu tests/test_gpu.py`` on a CUDA machine.

Without CUDA every test here skips (the default suite collects them and skips). On a GPU they take about
two minutes, mostly process start-ups and one torch.compile: tiny random BERTs (``tiny-random-bert``'s
2 layers) on generated pairs (``--dataset synthetic``), driven through the CLI as a user runs it and through
the project's public functions. ``gpu_check/check.py`` runs this file as its first stage.

Some runs go through an instrumented launcher (``python -c`` running ``train_mrpc.cli.main`` after setting
up a global forward pre-hook that records the width of every batch the embeddings see, and optionally
``torch.use_deterministic_algorithms``): the same entry point as ``train-mrpc``, observed from inside.
"""

from __future__ import annotations

import itertools
import json
import math
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from conftest import OUTPUTS, ROOT, TEST_ENV, accelerate_launch, run_cli, tiny_args

torch = pytest.importorskip("torch")

CUDA = torch.cuda.is_available()
pytestmark = [
    pytest.mark.gpu,
    pytest.mark.skipif(not CUDA, reason="needs a CUDA GPU: run pytest -m gpu on a GPU machine"),
]

PREDICTIONS = ["MRPC.tsv", "test_probabilities.tsv"]

LAUNCHER = r"""
import atexit, json, os, sys
import torch
if os.environ.get("GPU_TEST_DETERMINISTIC") == "1":
    torch.use_deterministic_algorithms(True, warn_only=True)
widths_file = os.environ.get("GPU_TEST_WIDTHS")
if widths_file:
    widths = set()
    def record(module, args):
        if isinstance(module, torch.nn.Embedding) and args and args[0].dim() == 2:
            widths.add(int(args[0].shape[-1]))
    torch.nn.modules.module.register_module_forward_pre_hook(record)
    atexit.register(lambda: open(widths_file, "w").write(json.dumps(sorted(widths))))
from train_mrpc.cli import main
main()
"""
INSTRUMENTED = [sys.executable, "-c", LAUNCHER]  # argv after it reach main() as sys.argv[1:]
DETERMINISTIC = {"GPU_TEST_DETERMINISTIC": "1", "CUBLAS_WORKSPACE_CONFIG": ":4096:8"}


def native_bf16() -> bool:
    return torch.cuda.is_bf16_supported(including_emulation=False)


def results_of(out: Path) -> dict:
    return json.loads((out / "all_results.json").read_text())


def read_log(out: Path) -> list[dict]:
    return [json.loads(line) for line in (out / "train_log.jsonl").read_text().splitlines()]


def cuda_accelerator(tmp_path: Path, **overrides):
    """The project's Accelerator for a config with these overrides (as the training loop builds it)."""
    from train_mrpc.config import TrainConfig
    from train_mrpc.launch import create_accelerator

    config = TrainConfig(output_dir=str(tmp_path / "out"), **overrides)
    accelerator = create_accelerator(config)
    assert accelerator.device.type == "cuda"
    return accelerator, config


def tiny_batch(tokenizer, size: int = 16, seed: int = 0, multiple: int | None = 8) -> dict:
    from train_mrpc.synthetic import generate_pairs

    pairs = generate_pairs("train", seed=seed, size=size)
    batch = tokenizer(
        pairs["sentence1"],
        pairs["sentence2"],
        padding=True,
        pad_to_multiple_of=multiple,
        truncation=True,
        max_length=128,
        return_tensors="pt",
    )
    batch["labels"] = torch.tensor(pairs["label"])
    return {k: v.cuda() for k, v in batch.items()}


def reset_accelerate() -> None:
    from accelerate.state import AcceleratorState, GradientState

    AcceleratorState._reset_state(True)
    GradientState._reset_state()


# --- precision ---------------------------------------------------------------------------------------


def test_bf16_autocast_runs_activations_in_bf16(tmp_path):
    from train_mrpc.synthetic import build_tiny_model

    if not native_bf16():
        pytest.skip("this GPU has no native bf16")
    accelerator, _ = cuda_accelerator(tmp_path, precision="bf16")
    assert accelerator.mixed_precision == "bf16"
    tokenizer, model = build_tiny_model(0)
    model = accelerator.prepare(model)
    seen = {}

    def record(name):
        def hook(module, args, output):  # returns None: the output is left as it is
            seen[name] = output.dtype

        return hook

    for name, module in model.named_modules():
        if isinstance(module, torch.nn.Linear):
            module.register_forward_hook(record(name))
    output = model(**tiny_batch(tokenizer))
    assert len(seen) >= 12, sorted(seen)  # every projection, feed-forward, pooler and classifier layer ran
    assert set(seen.values()) == {torch.bfloat16}, seen
    assert all(p.dtype == torch.float32 for p in model.parameters())  # mixed precision: fp32 master weights
    assert output.logits.dtype == torch.float32 and torch.isfinite(output.loss)  # outputs cast back to fp32


def test_fp16_grad_scaler_scale_moves_and_no_nan(tmp_path):
    """fp16 training with the project's Accelerator and training step: the GradScaler skips steps whose
    gradients overflow and halves its scale, grows it again after clean steps, and nothing becomes NaN.

    The scaler is Accelerate's own GradScaler class, swapped before ``prepare`` for one that starts at 2**24
    and grows every 4 clean steps, so that 40 steps of a tiny model show both moves (the default starts at
    2**16 and grows every 2000 steps)."""
    from train_mrpc.model import build_optimizer
    from train_mrpc.step import training_step  # the loop's own step (train_mrpc/step.py)
    from train_mrpc.synthetic import build_tiny_model

    accelerator, config = cuda_accelerator(tmp_path, precision="fp16", learning_rate=1e-3)
    assert accelerator.mixed_precision == "fp16"
    assert isinstance(accelerator.scaler, torch.amp.GradScaler), "fp16 on CUDA must scale the loss"
    accelerator.scaler = torch.amp.GradScaler("cuda", init_scale=2.0**24, growth_interval=4)
    tokenizer, model = build_tiny_model(0)
    optimizer = build_optimizer(model, config, fused=True)
    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, lambda step: 1.0)
    model, optimizer, scheduler = accelerator.prepare(model, optimizer, scheduler)
    before = [p.detach().clone() for p in model.parameters()]
    scales, losses = [accelerator.scaler.get_scale()], []
    for step in range(40):
        loss, _ = training_step(
            accelerator, model, optimizer, scheduler, tiny_batch(tokenizer, seed=step), config.max_grad_norm
        )
        losses.append(loss.float().item())
        scales.append(accelerator.scaler.get_scale())
    # A skipped step is one whose scale was halved. (Accelerate's optimizer_step_was_skipped cannot tell with a
    # fused optimizer: GradScaler then always calls its step, and the fused kernel itself skips on inf/NaN.
    # Measured on an H100: always False while the scale fell from 2**23 to 2**18.)
    skipped = sum(b < a for a, b in itertools.pairwise(scales))
    assert skipped > 0, f"the scale never decreased: {scales}"
    assert any(b > a for a, b in itertools.pairwise(scales)), f"the scale never grew: {scales}"
    assert skipped < 30, f"{skipped} of 40 steps skipped; scales {scales}"
    assert all(math.isfinite(x) for x in losses), losses
    params = list(model.parameters())
    assert all(torch.isfinite(p).all() for p in params)
    assert any(not torch.equal(a, b) for a, b in zip(before, params)), "no step was taken"


def test_fused_adamw_on_cuda_matches_foreach():
    """The project's fused AdamW (one kernel for all parameters, what the loop builds on CUDA) takes the same
    steps as the multi-tensor foreach implementation, within float32 rounding."""
    import copy

    from train_mrpc.config import TrainConfig
    from train_mrpc.model import build_optimizer
    from train_mrpc.synthetic import build_tiny_model

    config = TrainConfig(learning_rate=1e-3)
    fused_model = build_tiny_model(0)[1].cuda()
    foreach_model = copy.deepcopy(fused_model)
    fused = build_optimizer(fused_model, config, fused=True)
    foreach = build_optimizer(foreach_model, config, fused=False)
    for group in foreach.param_groups:
        group["foreach"], group["fused"] = True, None
    assert all(g["fused"] for g in fused.param_groups)
    assert [g["weight_decay"] for g in fused.param_groups] == [g["weight_decay"] for g in foreach.param_groups]
    generator = torch.Generator(device="cuda").manual_seed(0)
    start = [p.detach().clone() for p in fused_model.parameters()]
    for _ in range(20):
        for a, b in zip(fused_model.parameters(), foreach_model.parameters()):
            a.grad = torch.randn(a.shape, device="cuda", generator=generator)
            b.grad = a.grad.clone()
        fused.step()
        foreach.step()
    for (name, a), b, s in zip(fused_model.named_parameters(), foreach_model.parameters(), start):
        torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-6, msg=lambda m, name=name: f"{name}: {m}")
        assert not torch.equal(a, s), name


@pytest.fixture
def restore_tf32():
    saved = torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32
    yield
    torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32 = saved


def matmul_relative_error() -> float:
    generator = torch.Generator(device="cuda").manual_seed(0)
    a, b = (torch.randn(2048, 2048, device="cuda", generator=generator) for _ in range(2))
    exact = a.double() @ b.double()
    return ((a @ b).double() - exact).abs().max().item() / exact.abs().max().item()


def test_tf32_flag_is_honoured(tmp_path, restore_tf32):
    """--tf32 true turns TF32 matmuls on for fp32 work (10-bit mantissa: errors ~100x fp32's); --tf32 false
    leaves fp32 matmuls exact to fp32 rounding."""
    torch.backends.cuda.matmul.allow_tf32 = False  # torch's default in a fresh process
    cuda_accelerator(tmp_path, precision="fp32", tf32=False)
    assert torch.backends.cuda.matmul.allow_tf32 is False
    ieee = matmul_relative_error()
    reset_accelerate()
    cuda_accelerator(tmp_path, precision="fp32", tf32=True)
    assert torch.backends.cuda.matmul.allow_tf32 is True and torch.backends.cudnn.allow_tf32 is True
    tf32 = matmul_relative_error()
    if torch.cuda.get_device_capability()[0] >= 8:  # TF32 exists from Ampere on
        assert tf32 > 10 * ieee, f"TF32 on gave relative error {tf32:.2e}, off {ieee:.2e}: TF32 was not used"
    assert ieee < 1e-5, f"fp32 matmul with TF32 off has relative error {ieee:.2e}"


# --- the CLI on one GPU --------------------------------------------------------------------------------


def test_cli_end_to_end_on_one_gpu_writes_every_output(tmp_path, tiny_model_dir):
    """The README's GPU launch (accelerate launch with single_gpu.yaml), default precision."""
    out = tmp_path / "run"
    proc = run_cli(
        tiny_args(tiny_model_dir, out, "--do_predict", "true"), launcher=accelerate_launch("single_gpu.yaml")
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    for name in OUTPUTS + PREDICTIONS:
        assert (out / name).is_file(), name
    assert (out / "best_model" / "model.safetensors").is_file()
    assert sorted(p.name for p in (out / "checkpoints").glob("step_*")), "no checkpoint written"
    results = results_of(out)
    launch, speed = results["launch"], results["speed"]
    assert launch["device_type"] == "cuda" and launch["num_processes"] == 1
    assert launch["mixed_precision"] == ("bf16" if native_bf16() else "no"), launch  # auto: bf16 where native
    assert speed["tf32"] is True and speed["pad_to_multiple_of"] == (8 if native_bf16() else None), speed
    for key in ("eval_accuracy", "eval_f1", "eval_loss", "train_loss", "train_runtime", "train_samples_per_second"):
        assert isinstance(results[key], (int, float)) and math.isfinite(results[key]), (key, results[key])
    assert results["eval_examples"] == 100 and results["train_samples"] == 2 * 256
    rows = (out / "MRPC.tsv").read_text().splitlines()
    assert rows[0] == "index\tprediction" and len(rows) == 1 + 1725


@pytest.fixture(scope="module")
def precision_runs(tmp_path_factory, tiny_model_dir):
    """One instrumented CLI run per precision, made on first use: outputs plus every batch width seen."""
    runs = {}

    def run(precision: str) -> tuple[Path, list[int]]:
        if precision not in runs:
            out = tmp_path_factory.mktemp(f"gpu-{precision}") / "run"
            widths = out.parent / "widths.json"
            args = tiny_args(tiny_model_dir, out, "--precision", precision, "--tf32", "false", "--do_predict", "true")
            proc = run_cli(args, launcher=INSTRUMENTED, env={"GPU_TEST_WIDTHS": str(widths)})
            assert proc.returncode == 0, proc.stderr[-3000:]
            runs[precision] = (out, json.loads(widths.read_text()))
        return runs[precision]

    return run


@pytest.mark.parametrize("precision", ["bf16", "fp16", "fp32"])
def test_mixed_precision_batches_are_padded_to_multiples_of_8(precision_runs, precision):
    """Under mixed precision on a GPU every batch the model sees (training, evaluation, prediction) is padded
    to a multiple of 8 for the tensor cores; in fp32 batches are padded only to their longest pair."""
    from train_mrpc.step import padding_multiple  # the loop's rule (train_mrpc/step.py)

    mixed = {"bf16": "bf16", "fp16": "fp16", "fp32": "no"}[precision]
    expected = 8 if mixed != "no" else None
    assert padding_multiple(None, torch_compile=False, device_type="cuda", mixed_precision=mixed) == expected
    if precision == "bf16" and not native_bf16():
        pytest.skip("this GPU has no native bf16")
    out, widths = precision_runs(precision)
    results = results_of(out)
    assert results["launch"]["mixed_precision"] == mixed and results["speed"]["pad_to_multiple_of"] == expected
    assert len(widths) >= 3, widths
    if expected:
        assert all(w % 8 == 0 for w in widths), widths
    else:
        assert any(w % 8 for w in widths), f"fp32 widths {widths} are all multiples of 8: padding rule not exercised"
    assert math.isfinite(results["train_loss"]) and math.isfinite(results["eval_loss"])
    if precision == "fp16":  # the grad scaler's state is part of every checkpoint
        checkpoint = max((out / "checkpoints").glob("step_*"))
        assert (checkpoint / "scaler.pt").is_file(), sorted(p.name for p in checkpoint.iterdir())


def test_saved_model_reloads_with_the_same_logits(precision_runs, restore_tf32):
    """The fp32 run's saved model, reloaded on the GPU, reproduces the run's own test-set probabilities and
    validation loss (fp32 with TF32 off on both sides, batches of 64 padded as the run padded them)."""
    from transformers import AutoModelForSequenceClassification, AutoTokenizer

    from train_mrpc.synthetic import generate_pairs

    out, _ = precision_runs("fp32")
    torch.backends.cuda.matmul.allow_tf32 = False
    model = AutoModelForSequenceClassification.from_pretrained(out).cuda().eval()
    tokenizer = AutoTokenizer.from_pretrained(out)

    def probabilities(split: str, limit: int | None = None):
        pairs = {k: v[:limit] for k, v in generate_pairs(split, seed=0).items()}  # as --max_eval_samples selects
        chunks = []
        with torch.inference_mode():
            for i in range(0, len(pairs["label"]), 64):
                batch = tokenizer(
                    pairs["sentence1"][i : i + 64],
                    pairs["sentence2"][i : i + 64],
                    padding=True,
                    truncation=True,
                    max_length=128,
                    return_tensors="pt",
                ).to("cuda")
                chunks.append(model(**batch).logits.float().cpu())
        return torch.cat(chunks), torch.tensor(pairs["label"])

    logits, _ = probabilities("test")
    rows = (out / "test_probabilities.tsv").read_text().splitlines()[1:]
    saved = torch.tensor([[float(x) for x in row.split("\t")[2:4]] for row in rows])
    assert saved.shape == logits.shape
    torch.testing.assert_close(logits.softmax(-1), saved, rtol=0, atol=2e-6)
    logits, labels = probabilities("validation", limit=100)
    loss = torch.nn.functional.cross_entropy(logits, labels).item()
    assert loss == pytest.approx(results_of(out)["eval_loss"], rel=1e-5)


# --- resume after SIGTERM ----------------------------------------------------------------------------


def resume_args(model_dir: Path, out: Path, *extra) -> list[str]:
    # 1600 pairs / batch 16 = 100 steps an epoch, 2 epochs, a checkpoint every 50 steps; fp16, so the grad
    # scaler's state must survive the resume too. Enough steps that a SIGTERM lands mid-run on a fast GPU.
    return tiny_args(
        model_dir,
        out,
        "--max_train_samples",
        "1600",
        "--max_eval_samples",
        "100",
        "--logging_steps",
        "1",
        "--checkpointing_steps",
        "50",
        "--precision",
        "fp16",
        *extra,
    )


def sigterm_after_log_lines(command: list, out: Path, env: dict | None = None, lines: int = 60) -> str:
    """Run ``command`` (a training run writing to ``out``), SIGTERM it once its log has ``lines`` lines, and
    check it stopped as preempted (exit 75); returns its stderr."""
    child = subprocess.Popen(
        command,
        cwd=ROOT,
        env={**os.environ, **TEST_ENV, **(env or {})},
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    log, deadline = out / "train_log.jsonl", time.monotonic() + 300
    while time.monotonic() < deadline and child.poll() is None:
        if log.exists() and len(log.read_text().splitlines()) >= lines:
            child.send_signal(signal.SIGTERM)
            break
        time.sleep(0.001)
    _, stderr = child.communicate(timeout=300)
    assert child.returncode == 75, (
        f"exit {child.returncode} (the run may have ended before the signal)\n{stderr[-2000:]}"
    )
    return stderr


def test_resume_after_sigterm_gives_the_same_final_weights(tmp_path, tiny_model_dir):
    """SIGTERM mid-epoch, then --resume_from_checkpoint latest: bit-identical final weights and losses.

    Decision: deterministic kernels and exact equality, not a tolerance. A resume restores every RNG state
    (CUDA's included), the data position, the optimizer and the grad scaler, so with deterministic kernels
    the resumed run must equal the uninterrupted one bit for bit, as it does on CPU (tests/test_checkpointing.py).
    Both runs use torch.use_deterministic_algorithms (through the instrumented launcher) with
    CUBLAS_WORKSPACE_CONFIG=:4096:8, which removes the GPU's only legitimate source of difference (reductions
    whose order depends on atomics or cuBLAS workspaces). A tolerance would hide small resume bugs, such as a
    grad scaler or dropout RNG state not restored, whose effect on a tiny model is itself small. warn_only=True:
    an op without a deterministic kernel warns instead of failing, and the failure message below says so."""
    reference = tmp_path / "uninterrupted"
    proc = run_cli(resume_args(tiny_model_dir, reference), launcher=INSTRUMENTED, env=DETERMINISTIC)
    assert proc.returncode == 0, proc.stderr[-3000:]
    steps = read_log(reference)[-1]["step"]
    assert steps == 200

    out = tmp_path / "preempted"
    stderr = sigterm_after_log_lines(INSTRUMENTED + resume_args(tiny_model_dir, out), out, DETERMINISTIC)
    stopped = max(int(p.name.split("_")[1]) for p in (out / "checkpoints").glob("step_*"))
    assert 60 <= stopped < steps and stopped % 50, f"checkpoint at step {stopped}: not written at the signal"

    resumed = run_cli(
        resume_args(tiny_model_dir, out, "--resume_from_checkpoint", "latest"), launcher=INSTRUMENTED, env=DETERMINISTIC
    )
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    assert f"step_{stopped:06d}" in resumed.stdout
    same_weights = (out / "model.safetensors").read_bytes() == (reference / "model.safetensors").read_bytes()
    if not same_weights:
        from safetensors.torch import load_file

        a, b = load_file(out / "model.safetensors"), load_file(reference / "model.safetensors")
        worst = max((a[k].float() - b[k].float()).abs().max().item() for k in a)
        warnings = [line for line in (proc.stderr + stderr + resumed.stderr).splitlines() if "deterministic" in line]
        pytest.fail(
            f"resumed weights differ from the uninterrupted run's (max abs difference {worst:.3e}); "
            f"non-deterministic ops reported: {warnings[:5] or 'none'}"
        )

    def losses(run):
        return [(r["step"], r["loss"]) for r in read_log(run)]

    assert losses(out) == losses(reference)


# --- torch.compile ----------------------------------------------------------------------------------------


def test_torch_compile_with_bucketed_lengths_recompiles_nothing_after_warm_up(tmp_path, tiny_model_dir):
    """--torch_compile true on the GPU: batch lengths in buckets of 32, and once epoch 1 has seen every shape
    (training and evaluation), epoch 2 compiles nothing (TORCH_LOGS=recompiles prints each recompilation,
    in order with the run's own output)."""
    out = tmp_path / "compiled"
    args = tiny_args(
        tiny_model_dir,
        out,
        "--torch_compile",
        "true",
        "--max_train_samples",
        "640",
        "--per_device_train_batch_size",
        "32",
        "--checkpointing_steps",
        "no",
        "--logging_steps",
        "5",
    )
    proc = subprocess.run(
        [sys.executable, "-m", "train_mrpc", *args],
        cwd=ROOT,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        timeout=900,
        check=False,
        env={**os.environ, **TEST_ENV, "TORCH_LOGS": "recompiles"},
    )
    text = proc.stdout
    assert proc.returncode == 0, text[-4000:]
    results = results_of(out)
    assert results["speed"]["torch_compile"] is True and results["speed"]["pad_to_multiple_of"] == 32
    assert math.isfinite(results["eval_loss"])
    lines = text.splitlines()
    epoch_ends = [i for i, line in enumerate(lines) if line.startswith("epoch ") and "eval accuracy" in line]
    assert len(epoch_ends) == 2, text[-3000:]
    recompiles = [i for i, line in enumerate(lines) if "Recompiling function" in line]
    after_warm_up = [lines[i] for i in recompiles if i > epoch_ends[0]]
    assert not after_warm_up, "recompiled after epoch 1:\n" + "\n".join(
        "\n".join(lines[i : i + 4]) for i in recompiles if i > epoch_ends[0]
    )
    assert len(recompiles) <= 8, f"{len(recompiles)} recompilations during warm-up (Dynamo's cache holds 8)"


def test_fp16_step_the_scaler_skips_does_not_advance_the_schedule(tmp_path):
    """fp16 with the loop's fused AdamW and ``training_step`` (train_mrpc/step.py): a step whose gradients
    overflow is skipped (weights unchanged, scale halved) and leaves the learning rate where it was; clean steps
    advance it. Accelerate's own check (``step_was_skipped``) cannot tell with a fused optimizer, so without the
    step's own check the schedule would advance on the skipped step. The overflow is forced by a gradient hook
    that makes one weight's gradient infinite on a chosen step, through the real unscale/clip path."""
    from train_mrpc.model import build_optimizer
    from train_mrpc.step import training_step
    from train_mrpc.synthetic import build_tiny_model

    accelerator, config = cuda_accelerator(tmp_path, precision="fp16", learning_rate=1e-3)
    assert isinstance(accelerator.scaler, torch.amp.GradScaler), "fp16 on CUDA must scale the loss"
    accelerator.scaler = torch.amp.GradScaler("cuda", init_scale=2.0**8)  # low: only the forced step overflows
    tokenizer, model = build_tiny_model(0)
    optimizer = build_optimizer(model, config, fused=True)
    assert all(g["fused"] for g in optimizer.param_groups)
    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, lambda step: (step + 1) / 10)
    model, optimizer, scheduler = accelerator.prepare(model, optimizer, scheduler)
    overflow = {"on": False}
    weight = accelerator.unwrap_model(model).classifier.weight
    weight.register_hook(lambda grad: grad * float("inf") if overflow["on"] else grad)
    seen = []  # (overflow, lr before, lr after, scale before, scale after, weight changed)
    for step, forced in enumerate([False, False, True, False]):
        overflow["on"] = forced
        lr, scale, before = scheduler.get_last_lr()[0], accelerator.scaler.get_scale(), weight.detach().clone()
        training_step(accelerator, model, optimizer, scheduler, tiny_batch(tokenizer, seed=step), config.max_grad_norm)
        after = (scheduler.get_last_lr()[0], accelerator.scaler.get_scale(), not torch.equal(before, weight))
        seen.append((forced, lr, scale, *after))
    for forced, lr, scale, lr_after, scale_after, moved in seen:
        if forced:
            assert not moved and scale_after == scale / 2, seen  # skipped by the fused kernel; the scale backs off
            assert lr_after == lr, f"the schedule advanced on the step the scaler skipped: {seen}"
        else:
            assert moved and scale_after == scale and lr_after > lr, seen
    assert scheduler.scheduler.last_epoch == 3, seen  # three clean steps, three schedule steps


# --- CUDA graphs (--cuda_graphs on, train_mrpc/graphs.py) --------------------------------------------------

GRAPHS = ["--static_shapes", "on", "--cuda_graphs", "on"]
EAGER_STATIC = ["--static_shapes", "on", "--cuda_graphs", "off"]


def optimizer_steps(checkpoint: Path) -> set[float]:
    """The step counts AdamW holds in a checkpoint (one per parameter)."""
    state = torch.load(checkpoint / "optimizer.bin", map_location="cpu", weights_only=False)
    return {float(s["step"]) for s in state["state"].values()}


@pytest.mark.parametrize("precision", ["fp32", "bf16"])
def test_cuda_graphs_train_as_the_eager_step_on_the_same_static_batches(tmp_path, tiny_model_no_dropout, precision):
    """Without dropout, the replayed graphs compute what the eager step computes on the same static batches:
    the same logged losses and final weights (fp32: to 1e-4; bf16: to 2e-2 relative, autocast's rounding), and
    exactly the scheduled optimizer steps (the warm-up steps before capture are undone: AdamW's step count in
    the final checkpoint equals the run's)."""
    if precision == "bf16" and not native_bf16():
        pytest.skip("no native bf16")
    runs = {}
    for name, flags in {"eager": EAGER_STATIC, "graphs": GRAPHS}.items():
        out = tmp_path / name
        proc = run_cli(tiny_args(tiny_model_no_dropout, out, "--precision", precision, *flags))
        assert proc.returncode == 0, proc.stderr[-3000:]
        runs[name] = out
    eager, graphs = read_log(runs["eager"]), read_log(runs["graphs"])
    assert [r["step"] for r in graphs] == [r["step"] for r in eager]
    tolerance = 1e-4 if precision == "fp32" else 2e-2
    for a, b in zip(graphs, eager):
        assert a["loss"] == pytest.approx(b["loss"], rel=tolerance), (a, b)
        assert a["learning_rate"] == pytest.approx(b["learning_rate"], rel=1e-6), (a, b)
    results = results_of(runs["graphs"])
    speed = results["speed"]
    assert speed["cuda_graphs"] is True and speed["static_shapes"] and speed["graph_capture_s"] > 0, speed
    assert results["global_step"] == read_log(runs["eager"])[-1]["step"] == 32  # 256 pairs / 16, 2 epochs
    final = sorted((runs["graphs"] / "checkpoints").glob("step_*"))[-1]
    assert optimizer_steps(final) == {32.0}
    from safetensors.torch import load_file

    a, b = load_file(runs["graphs"] / "model.safetensors"), load_file(runs["eager"] / "model.safetensors")
    for key in a:
        torch.testing.assert_close(a[key].float(), b[key].float(), rtol=tolerance, atol=tolerance)


def graphed_resume_args(model_dir: Path, out: Path, *extra) -> list[str]:
    """resume_args with graphs on, in bf16 where native (else fp32): graphs refuse fp16's GradScaler."""
    args = resume_args(model_dir, out, *GRAPHS, *extra)
    args[args.index("--precision") + 1] = "bf16" if native_bf16() else "fp32"
    return args


def test_cuda_graphs_resume_equals_the_uninterrupted_run(tmp_path, tiny_model_dir):
    """SIGTERM mid-epoch with graphs on, then --resume_from_checkpoint latest: the resumed run re-captures after
    loading the checkpoint (new optimizer state tensors) and ends where the uninterrupted graphed run ends. Stated
    tolerance: weights to 1e-5 and logged losses to 1e-5 relative (both runs replay the same graphs from the same
    states; the tolerance covers only a capture that picks other kernels)."""
    reference = tmp_path / "uninterrupted"
    proc = run_cli(graphed_resume_args(tiny_model_dir, reference))
    assert proc.returncode == 0, proc.stderr[-3000:]
    steps = read_log(reference)[-1]["step"]
    out = tmp_path / "preempted"
    sigterm_after_log_lines([sys.executable, "-m", "train_mrpc", *graphed_resume_args(tiny_model_dir, out)], out)
    resumed = run_cli(graphed_resume_args(tiny_model_dir, out, "--resume_from_checkpoint", "latest"))
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    assert read_log(out)[-1]["step"] == steps
    for a, b in zip(read_log(out), read_log(reference)):
        assert a["step"] == b["step"] and a["loss"] == pytest.approx(b["loss"], rel=1e-5), (a, b)
    from safetensors.torch import load_file

    a, b = load_file(out / "model.safetensors"), load_file(reference / "model.safetensors")
    for key in a:
        torch.testing.assert_close(a[key].float(), b[key].float(), rtol=1e-5, atol=1e-5)
