"""--auto_find_batch_size: the batch that fits, with the global batch (and so the result) unchanged."""

import json

import pytest
import torch

from train_mrpc.config import parse_config

from conftest import tiny_args

FITS_UP_TO = 8  # the pretend device's memory: training batches above this many rows run out of memory


def reset_accelerate():
    from accelerate.state import AcceleratorState, GradientState

    AcceleratorState._reset_state(True)
    GradientState._reset_state()


@pytest.fixture
def small_memory(monkeypatch):
    """Models that raise torch.OutOfMemoryError when a training forward gets more than FITS_UP_TO rows (as a
    GPU does when activations for backward do not fit; evaluation keeps no activations)."""
    import train_mrpc.model as model_module

    real_load = model_module.load_tokenizer_and_model
    batches_tried = []

    def load(config):
        tokenizer, model = real_load(config)

        def check(module, args, kwargs):
            rows = kwargs["input_ids"].shape[0]
            if torch.is_grad_enabled():
                batches_tried.append(rows)
                if rows > FITS_UP_TO:
                    raise torch.OutOfMemoryError(f"CUDA out of memory. Tried to allocate {rows} rows")

        model.register_forward_pre_hook(check, with_kwargs=True)
        return tokenizer, model

    monkeypatch.setattr(model_module, "load_tokenizer_and_model", load)
    return batches_tried


def run(tmp_path, model_dir, name, *flags):
    from train_mrpc.train import train

    out = tmp_path / name
    reset_accelerate()
    train(
        parse_config(
            tiny_args(
                model_dir, out, "--max_train_samples", "128", "--num_train_epochs", "1", "--max_length", "64", *flags
            )
        )
    )
    from safetensors.torch import load_file

    return load_file(out / "model.safetensors"), json.loads((out / "all_results.json").read_text())


def test_the_found_batch_keeps_the_global_batch_and_ends_like_the_run_that_fit(
    tmp_path, tiny_model_dir, small_memory, capsys
):
    found, results = run(
        tmp_path, tiny_model_dir, "auto", "--per_device_train_batch_size", "32", "--auto_find_batch_size", "true"
    )
    assert small_memory[:3] == [32, 16, 8]  # halved until it fit; every training batch after that fits
    assert max(small_memory[3:]) <= FITS_UP_TO
    assert "per-device batch 8 x 4 accumulation steps" in capsys.readouterr().out
    launch = results["launch"]
    assert (
        launch["per_device_train_batch_size"],
        launch["gradient_accumulation_steps"],
        launch["global_batch_size"],
    ) == (8, 4, 32)
    assert results["global_step"] == 4  # 128 pairs / 32: the recipe's optimizer steps

    small_memory.clear()
    fit_at_once, _ = run(
        tmp_path, tiny_model_dir, "asked", "--per_device_train_batch_size", "8", "--gradient_accumulation_steps", "4"
    )
    assert found.keys() == fit_at_once.keys()
    for name in found:  # the search leaves weights and random streams (dropout) untouched: the same run exactly
        assert torch.equal(found[name], fit_at_once[name]), name


def test_a_batch_that_cannot_be_halved_says_so(tmp_path, tiny_model_dir, small_memory):
    from train_mrpc.errors import UserError

    with pytest.raises(UserError, match="a batch of 9 does not fit and cannot be halved"):
        run(tmp_path, tiny_model_dir, "odd", "--per_device_train_batch_size", "18", "--auto_find_batch_size", "true")


def test_without_the_flag_an_out_of_memory_error_is_not_hidden(tmp_path, tiny_model_dir, small_memory):
    with pytest.raises(torch.OutOfMemoryError):
        run(tmp_path, tiny_model_dir, "plain", "--per_device_train_batch_size", "16")
