"""--static_shapes: fixed batch shapes gathered on the device train exactly what dynamic padding trains.

Runs that compare static shapes with dynamic padding use the dropout-free tiny model: dropout draws its masks over
the padded shape, so with dropout on the two would differ by their random streams, not by what they compute.
"""

import json
import random
import shutil
from pathlib import Path

import pytest
import torch

from train_mrpc.errors import UserError
from train_mrpc.static_batches import choose_buckets, padded_tokens, resolve_static_shapes

from conftest import (
    assert_error_after_loading,
    assert_one_line_error,
    equivalence_args,
    launch,
    read_log,
    run_cli,
    table_text,
    tiny_args,
    weights,
)

# 104 pairs in batches of 16: 6 full batches and a last one of 8 in every epoch (2 epochs).
PARTIAL = ("--max_train_samples", "104", "--logging_steps", "1", "--precision", "fp32")


def final_checkpoint(out: Path) -> dict:
    return json.loads((sorted((out / "checkpoints").glob("step_*"))[-1] / "trainer_state.json").read_text())


def assert_same_training(dynamic: Path, static: Path) -> None:
    """Same weights up to float summation order, the same logged steps and losses, the same samples and real tokens."""
    weights_d, weights_s = weights(dynamic), weights(static)
    assert weights_d.keys() == weights_s.keys()
    for name in weights_d:
        torch.testing.assert_close(weights_s[name], weights_d[name], rtol=1e-5, atol=1e-5, msg=name)
    log_d, log_s = read_log(dynamic), read_log(static)
    assert [r["step"] for r in log_s] == [r["step"] for r in log_d]
    assert [r["learning_rate"] for r in log_s] == [r["learning_rate"] for r in log_d]
    assert [r["loss"] for r in log_s] == pytest.approx([r["loss"] for r in log_d], rel=1e-5)
    assert [r["grad_norm"] for r in log_s] == pytest.approx([r["grad_norm"] for r in log_d], rel=1e-4)
    results_d, results_s = (json.loads((out / "all_results.json").read_text()) for out in (dynamic, static))
    for key in ("global_step", "train_samples", "eval_accuracy"):
        assert results_s[key] == results_d[key], key
    # Filler rows count neither as samples (above) nor as tokens; the checkpoints record which shapes ran.
    state_d, state_s = final_checkpoint(dynamic), final_checkpoint(static)
    assert state_s["meters"]["tokens"] == state_d["meters"]["tokens"]
    assert state_d["run"]["static_shapes"] is False and state_s["run"]["static_shapes"]


# --- bucket lengths ------------------------------------------------------------------------------------


def test_buckets_minimise_the_padding_of_the_batches_drawn():
    lengths = [20] * 40 + [60] * 24 + [100] * 16
    grouped = [list(range(80))]  # batches of 8 alike in length: 5 at 20 tokens, 3 at 60, 2 at 100
    # One bucket: 10 batches x 104 = 1040 tokens a row; (24, 104): 640; (24, 64, 104): 520, 19 % less again.
    assert choose_buckets(lengths, 8, grouped, max_length=128) == (24, 64, 104)
    assert padded_tokens((24, 64, 104), {20: 5, 60: 3, 100: 2}, 8) == 8 * 520
    assert choose_buckets(lengths, 8, grouped, max_length=128, max_buckets=2) == (24, 104)  # not (64, 104): 720
    assert choose_buckets(lengths, 8, grouped, max_length=128, min_gain=0.25) == (24, 104)
    # With a third of the rows at 100 tokens, random batches of 8 nearly all hold one ((2/3)^8 = 4 % do not): a
    # second bucket would save under 2 % of the tokens, not worth a graph. With a fifth, 17 % do not: 64 is worth it.
    rng = random.Random(0)
    thirds = [20] * 40 + [60] * 40 + [100] * 40
    assert choose_buckets(thirds, 8, [rng.sample(range(120), 120) for _ in range(3)], max_length=128) == (104,)
    assert choose_buckets(lengths, 8, [rng.sample(range(80), 80) for _ in range(3)], max_length=128) == (64, 104)
    # The top bucket holds the longest row and never exceeds --max_length; the multiple follows padding's.
    assert choose_buckets([10, 50, 127], 1, [[0, 1, 2]], max_length=127) == (16, 56, 127)
    assert choose_buckets([10, 50, 127], 1, [[0, 1, 2]], max_length=128, multiple=32) == (32, 64, 128)


def test_static_shapes_follow_cuda_graphs_unless_asked():
    assert resolve_static_shapes("auto", graphs_on=False) is False
    assert resolve_static_shapes("auto", graphs_on=True) is True
    assert resolve_static_shapes("on", graphs_on=False) is True
    assert resolve_static_shapes("off", graphs_on=False) is False
    with pytest.raises(UserError, match="^--static_shapes off, but --cuda_graphs replays fixed shapes"):
        resolve_static_shapes("off", graphs_on=True)


def test_loader_workers_are_refused_with_static_shapes(tmp_path, tiny_model_dir):
    proc = run_cli(tiny_args(tiny_model_dir, tmp_path, "--static_shapes", "on", "--dataloader_num_workers", "2"))
    assert_one_line_error(
        proc.returncode, proc.stderr, "--static_shapes on keeps the training data on the device", "workers 2"
    )


# --- the loader ----------------------------------------------------------------------------------------


def test_static_batches_hold_the_ordinary_loaders_rows_in_static_tensors(tmp_path, tiny_model_no_dropout):
    """Epoch 2 of each loader, batch by batch: the same rows, the static one padded to its bucket (in the same
    tensors at every step of that length) and its last batch filled up with rows the loss ignores."""
    from accelerate.state import AcceleratorState, GradientState

    from train_mrpc.config import parse_config
    from train_mrpc.static_batches import StaticShapeBatches, epoch_batches
    from train_mrpc.train import setup

    def epoch_of(mode: str) -> tuple[object, list]:
        run = setup(parse_config(tiny_args(tiny_model_no_dropout, tmp_path / mode, *PARTIAL, "--static_shapes", mode)))
        try:
            batches = [
                (b.rows, b.tokens, b.inputs, {k: v.clone() for k, v in b.inputs.items()})
                for b in epoch_batches(run.train_loader, run.accelerator, epoch=1)
            ]
        finally:
            run.lock.release()
            AcceleratorState._reset_state(True)
            GradientState._reset_state()
        return run.train_loader, batches

    loader, static = epoch_of("on")
    _, dynamic = epoch_of("off")
    assert isinstance(loader, StaticShapeBatches) and len(loader) == len(dynamic) == len(static) == 7
    assert loader.buckets[-1] >= max(loader.lengths) and len(loader.buckets) <= 3
    for (rows, tokens, inputs, copied), (real_rows, real_tokens, _, ordinary) in zip(static, dynamic):
        length = ordinary["input_ids"].shape[1]
        bucket = copied["input_ids"].shape[1]
        assert bucket == min(b for b in loader.buckets if b >= length)
        assert inputs is loader.buffers(bucket)  # the static tensors a CUDA graph reads
        assert rows == real_rows and tokens == real_tokens.item()
        assert set(copied) == set(ordinary)
        for name in ("input_ids", "attention_mask", "token_type_ids"):
            assert copied[name].shape == (16, bucket)
            assert torch.equal(copied[name][:rows, :length], ordinary[name]), name
        assert not copied["attention_mask"][:rows, length:].any()
        assert torch.equal(copied["labels"][:rows], ordinary["labels"])
        assert (copied["labels"][rows:] == -100).all() and copied["attention_mask"][rows:, 0].all()
    assert [batch[0] for batch in static][-1] == 8


# --- whole runs ----------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "flags",
    [("--group_by_length", "true"), ("--group_by_length", "false", "--gradient_accumulation_steps", "2")],
    ids=["length-grouped", "random-batches-accumulated"],
)
def test_static_shapes_train_what_dynamic_padding_trains(tmp_path, tiny_model_no_dropout, flags):
    """With a last batch of 8 of 16 rows; accumulated in pairs, each epoch ends on a step of one micro-batch."""
    runs = {}
    for mode in ("off", "on"):
        runs[mode] = tmp_path / mode
        proc = run_cli(tiny_args(tiny_model_no_dropout, runs[mode], *PARTIAL, *flags, "--static_shapes", mode))
        assert proc.returncode == 0, proc.stderr[-3000:]
    assert "static shapes: batches of 16 rows at lengths " in proc.stdout
    buckets = json.loads((runs["on"] / "all_results.json").read_text())["speed"]["static_shapes"]
    assert buckets and f"static shapes (lengths {', '.join(map(str, buckets))})" in table_text(proc.stdout)
    assert_same_training(runs["off"], runs["on"])
    steps_per_epoch = 7 if "2" not in flags else 4
    assert read_log(runs["on"])[-1]["step"] == 2 * steps_per_epoch


def test_two_processes_with_static_shapes_train_what_dynamic_padding_trains(
    tmp_path, tiny_model_no_dropout, two_process_equivalence_run
):
    """2 processes of 8 rows (gloo): the same shards of the same order as the session's dynamic-padding run."""
    reference, _ = two_process_equivalence_run  # equivalence_args(tiny_model_no_dropout, ..., 8), made in conftest
    out = tmp_path / "static"
    args = equivalence_args(tiny_model_no_dropout, out, 8, "--static_shapes", "on")
    proc = launch("multi_cpu.yaml", args, "--main_process_port", "0")
    assert proc.stdout.count("static shapes: batches of 8 rows") == 1
    assert_same_training(reference, out)
    assert len(final_checkpoint(out)["meters"]["tokens"]) == 2


def test_a_static_shapes_run_resumed_mid_epoch_is_the_uninterrupted_one(tmp_path, tiny_model_dir):
    """Dropout on: the resumed run must also restore every random state. Resumed 3 batches into epoch 2, it skips
    them and still ends that epoch on its filled-up last batch. Without static shapes it would draw other dropout
    masks: that resume is refused."""
    full, resumed, changed = tmp_path / "full", tmp_path / "resumed", tmp_path / "changed"
    args = (*PARTIAL, "--static_shapes", "on", "--checkpointing_steps", "5")
    proc = run_cli(tiny_args(tiny_model_dir, full, *args))
    assert proc.returncode == 0, proc.stderr[-3000:]
    shutil.copytree(full / "checkpoints" / "step_000010", resumed / "checkpoints" / "step_000010")
    proc = run_cli(tiny_args(tiny_model_dir, resumed, *args, "--resume_from_checkpoint", "latest"))
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert "step_000010" in proc.stdout
    assert (resumed / "model.safetensors").read_bytes() == (full / "model.safetensors").read_bytes()
    assert read_log(resumed) == [r for r in read_log(full) if r["step"] > 10]
    assert read_log(full)[-1]["step"] == 14

    shutil.copytree(full / "checkpoints" / "step_000010", changed / "checkpoints" / "step_000010")
    resume = ("--resume_from_checkpoint", "latest")
    proc = run_cli(tiny_args(tiny_model_dir, changed, *args, *resume, "--static_shapes", "off"))
    assert_error_after_loading(proc.returncode, proc.stderr, "(static_shapes [", "] -> False)")
