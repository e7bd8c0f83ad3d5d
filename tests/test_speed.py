"""Fast defaults: precision chosen for the hardware, length-grouped batches, choices reported; compile works."""

import json

import pytest

from train_mrpc.data import LengthGroupedSampler
from train_mrpc.launch import resolve_precision
from train_mrpc.synthetic import build_tiny_model, generate_pairs

from conftest import run_cli, table_text, tiny_args


@pytest.fixture(scope="module")
def pair_lengths():
    tokenizer, _ = build_tiny_model()
    pairs = generate_pairs("train", seed=0)
    return [len(ids) for ids in tokenizer(pairs["sentence1"], pairs["sentence2"])["input_ids"]]


def padded_tokens(lengths, order, batch_size):
    batches = [order[i : i + batch_size] for i in range(0, len(order), batch_size)]
    return sum(max(lengths[j] for j in b) * len(b) for b in batches)


def test_length_grouped_batches_carry_less_padding_and_stay_shuffled(pair_lengths):
    import torch

    sampler = LengthGroupedSampler(pair_lengths, global_batch_size=32, seed=0)
    grouped = list(sampler)
    assert sorted(grouped) == list(range(len(pair_lengths)))  # every pair once per epoch
    random_order = torch.randperm(len(pair_lengths), generator=torch.Generator().manual_seed(0)).tolist()
    real = sum(pair_lengths)
    grouped_pad = padded_tokens(pair_lengths, grouped, 32) / real - 1
    random_pad = padded_tokens(pair_lengths, random_order, 32) / real - 1
    assert grouped_pad < 0.05 < 0.3 < random_pad, (grouped_pad, random_pad)
    # Sorted within random megabatches (as Trainer's group_by_length), not one sorted run over the epoch.
    batch_max = [max(pair_lengths[j] for j in grouped[i : i + 32]) for i in range(0, len(grouped), 32)]
    assert batch_max != sorted(batch_max, reverse=True)


def test_grouped_loader_batches_carry_less_padding_than_random_ones(tmp_path, tiny_model_dir):
    """The loader the loop trains from: --group_by_length true pads far less than false, same pairs."""
    from train_mrpc.config import parse_config
    from train_mrpc.data import build_dataloaders, load_raw_splits, tokenize_dataset
    from train_mrpc.model import load_tokenizer_and_model

    padding, pairs = {}, {}
    for grouped in ("true", "false"):
        config = parse_config(
            tiny_args(
                tiny_model_dir,
                tmp_path,
                "--max_train_samples",
                "1024",
                "--per_device_train_batch_size",
                "32",
                "--group_by_length",
                grouped,
            )
        )
        tokenizer, _ = load_tokenizer_and_model(config)
        tokenized = tokenize_dataset(load_raw_splits(config), tokenizer, config.max_length)
        batches = list(build_dataloaders(tokenized, tokenizer, config, pad_to_multiple_of=None)[0])
        mask = [b["attention_mask"] for b in batches]
        padding[grouped] = sum((m == 0).sum().item() for m in mask) / sum(m.numel() for m in mask)
        pairs[grouped] = sum(len(b["labels"]) for b in batches)
    assert pairs["true"] == pairs["false"] == 1024
    assert padding["true"] < 0.15 < 0.3 < padding["false"], padding  # measured: 0.09 vs 0.37


def test_length_grouped_order_depends_on_seed_and_epoch_only(pair_lengths):
    first = LengthGroupedSampler(pair_lengths, 32, seed=3)
    again = LengthGroupedSampler(pair_lengths, 32, seed=3)
    assert list(first) == list(again)
    first.set_epoch(1)
    assert list(first) != list(again)
    again.set_epoch(1)
    assert list(first) == list(again)
    assert list(LengthGroupedSampler(pair_lengths, 32, seed=4)) != list(LengthGroupedSampler(pair_lengths, 32, seed=3))


def test_precision_choice(monkeypatch):
    import train_mrpc.launch as launch

    monkeypatch.delenv("ACCELERATE_MIXED_PRECISION", raising=False)
    monkeypatch.setattr(launch, "has_fast_bf16", lambda cuda: True)
    assert resolve_precision("auto", cuda=False) == ("bf16", "auto: CPU has fast bf16")
    assert resolve_precision("fp32", cuda=False) == ("no", "--precision fp32")
    monkeypatch.setattr(launch, "has_fast_bf16", lambda cuda: False)
    assert resolve_precision("auto", cuda=False) == ("no", "auto: no fast bf16 on this CPU")
    assert resolve_precision("auto", cuda=True)[0] == "fp16"  # a V100 or T4: fp16 tensor cores, loss scaling
    monkeypatch.setenv("ACCELERATE_MIXED_PRECISION", "fp16")
    assert resolve_precision("auto", cuda=True) == ("fp16", "launch config")
    assert resolve_precision("bf16", cuda=True) == ("bf16", "--precision bf16")


def test_run_reports_its_speed_choices(tmp_path, tiny_model_dir):
    out = tmp_path / "run"
    proc = run_cli(tiny_args(tiny_model_dir, out, "--max_train_steps", "3"))
    assert proc.returncode == 0, proc.stderr[-3000:]
    speed = json.loads((out / "all_results.json").read_text())["speed"]
    assert speed["batching"] == "length-grouped" and speed["torch_compile"] is False
    assert speed["precision_reason"].startswith("auto")
    assert speed["pad_to_multiple_of"] is None  # multiples of 8 only for GPU tensor cores
    assert "speed choices" in proc.stdout and "length-grouped batches" in table_text(proc.stdout)

    out = tmp_path / "reference"
    proc = run_cli(
        tiny_args(tiny_model_dir, out, "--max_train_steps", "3", "--precision", "fp32", "--group_by_length", "false")
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    speed = json.loads((out / "all_results.json").read_text())["speed"]
    assert (speed["precision"], speed["batching"], speed["pad_to_multiple_of"]) == ("fp32", "random", None)


@pytest.mark.slow
def test_torch_compile_trains_like_eager(tmp_path, tiny_model_no_dropout):
    results = {}
    for name, extra in (("eager", []), ("compiled", ["--torch_compile", "true"])):
        out = tmp_path / name
        args = tiny_args(
            tiny_model_no_dropout,
            out,
            "--max_train_steps",
            "6",
            "--precision",
            "fp32",
            "--pad_to_multiple_of",
            "32",
            *extra,
        )
        proc = run_cli(args, timeout=1200)
        assert proc.returncode == 0, proc.stderr[-3000:]
        results[name] = json.loads((out / "all_results.json").read_text())
    assert results["compiled"]["speed"]["torch_compile"] is True
    assert results["compiled"]["eval_loss"] == pytest.approx(results["eager"]["eval_loss"], rel=1e-3)
