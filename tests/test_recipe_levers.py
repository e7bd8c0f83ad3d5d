"""The levers of a fast recipe, each doing what it says: --freeze_word_embeddings keeps the table as loaded (and the
rest trains, and resumes exactly), --freeze_lower_layers keeps the embeddings and the lowest layers as loaded,
--eval_strategy end trains the very same model and scores it once."""

import json
import shutil
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from train_mrpc.errors import UserError
from train_mrpc.model import freeze_parameters, set_dropout

from conftest import assert_one_line_error, read_log, resume_args, run_cli

WORD_EMBEDDINGS = "bert.embeddings.word_embeddings.weight"


def frozen_args(model_dir, out, *extra):
    return resume_args(model_dir, out, "--freeze_word_embeddings", "true", *extra)


def finished(args: list[str]):
    """The output folder of a run of ``args`` (its --output_dir), which must succeed."""
    proc = run_cli(args)
    assert proc.returncode == 0, proc.stderr[-3000:]
    return Path(args[args.index("--output_dir") + 1])


def resumed_at_step_30(run, out, args: list[str]) -> None:
    """Train ``args`` (output ``out``) from a copy of ``run``'s step-30 checkpoint: it must end as ``run`` did."""
    checkpoint = run / "checkpoints" / "step_000030"
    shutil.copytree(checkpoint, out / "checkpoints" / checkpoint.name)
    proc = run_cli([*args, "--resume_from_checkpoint", "latest"])
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert (out / "model.safetensors").read_bytes() == (run / "model.safetensors").read_bytes()
    assert read_log(out) == [r for r in read_log(run) if r["step"] > 30]


@pytest.fixture(scope="module")
def frozen_run(tmp_path_factory, tiny_model_dir):
    """resume_args (60 steps, a checkpoint every 10) with the word embeddings frozen."""
    return finished(frozen_args(tiny_model_dir, tmp_path_factory.mktemp("frozen") / "run"))


def test_frozen_word_embeddings_keep_their_values_while_everything_else_learns(frozen_run, tiny_model_dir):
    loaded, trained = load_file(tiny_model_dir / "model.safetensors"), load_file(frozen_run / "model.safetensors")
    assert torch.equal(loaded[WORD_EMBEDDINGS], trained[WORD_EMBEDDINGS])
    unchanged = [name for name in loaded if torch.equal(loaded[name], trained[name])]
    assert unchanged == [WORD_EMBEDDINGS]  # position/token-type embeddings, LayerNorms, layers, classifier train
    losses = [record["loss"] for record in read_log(frozen_run)]
    assert sum(losses[-10:]) < sum(losses[:10])


def test_the_optimizer_keeps_no_state_for_the_frozen_table(frozen_run, tiny_model_dir):
    optimizer = torch.load(frozen_run / "checkpoints" / "step_000060" / "optimizer.bin", weights_only=True)
    shapes = sorted(tuple(s["exp_avg"].shape) for s in optimizer["state"].values())
    loaded = load_file(tiny_model_dir / "model.safetensors")
    trainable = sorted(tuple(t.shape) for name, t in loaded.items() if name != WORD_EMBEDDINGS)
    assert shapes == trainable  # AdamW's moments for every parameter but the table


def test_a_frozen_run_resumes_exactly(tmp_path, frozen_run, tiny_model_dir):
    resumed_at_step_30(frozen_run, tmp_path / "resumed", frozen_args(tiny_model_dir, tmp_path / "resumed"))


def test_resuming_a_frozen_checkpoint_unfrozen_is_refused(tmp_path, frozen_run, tiny_model_dir):
    out = tmp_path / "unfrozen"
    checkpoint = frozen_run / "checkpoints" / "step_000030"
    shutil.copytree(checkpoint, out / "checkpoints" / checkpoint.name)
    proc = run_cli(resume_args(tiny_model_dir, out, "--resume_from_checkpoint", "latest"))
    assert proc.returncode == 2
    assert "freeze_word_embeddings" in proc.stderr.strip().splitlines()[-1]


@pytest.mark.parametrize("distributed_type", ["FSDP", "DEEPSPEED"])
@pytest.mark.parametrize(
    "flag, word_embeddings, lower_layers", [("word_embeddings", True, 0), ("lower_layers", False, 1)]
)
def test_freezing_under_sharding_is_refused(tiny_model_dir, distributed_type, flag, word_embeddings, lower_layers):
    from transformers import AutoModelForSequenceClassification

    model = AutoModelForSequenceClassification.from_pretrained(tiny_model_dir)
    with pytest.raises(UserError, match=f"--freeze_{flag} .* not under {distributed_type}"):
        freeze_parameters(model, word_embeddings, lower_layers, distributed_type)
    assert all(p.requires_grad for p in model.parameters())


@pytest.fixture(scope="module")
def lower_frozen_run(tmp_path_factory, tiny_model_dir):
    """resume_args with the embeddings and the lowest of the tiny model's two layers frozen."""
    return finished(
        resume_args(tiny_model_dir, tmp_path_factory.mktemp("lower-frozen") / "run", "--freeze_lower_layers", "1")
    )


def is_below_layer_1(name: str) -> bool:
    return name.startswith(("bert.embeddings.", "bert.encoder.layer.0."))


def test_frozen_lower_layers_keep_their_values_while_the_layers_above_learn(lower_frozen_run, tiny_model_dir):
    loaded = load_file(tiny_model_dir / "model.safetensors")
    trained = load_file(lower_frozen_run / "model.safetensors")
    unchanged = sorted(name for name in loaded if torch.equal(loaded[name], trained[name]))
    assert unchanged == sorted(filter(is_below_layer_1, loaded))  # word, position, type embeddings, LayerNorm, layer 0
    assert len(unchanged) > 4  # (the embeddings alone are 5 tensors)
    losses = [record["loss"] for record in read_log(lower_frozen_run)]
    assert sum(losses[-10:]) < sum(losses[:10])
    optimizer = torch.load(lower_frozen_run / "checkpoints" / "step_000060" / "optimizer.bin", weights_only=True)
    shapes = sorted(tuple(s["exp_avg"].shape) for s in optimizer["state"].values())
    assert shapes == sorted(tuple(t.shape) for name, t in loaded.items() if not is_below_layer_1(name))


def test_a_run_with_frozen_lower_layers_resumes_exactly(tmp_path, lower_frozen_run, tiny_model_dir):
    out = tmp_path / "resumed"
    resumed_at_step_30(lower_frozen_run, out, resume_args(tiny_model_dir, out, "--freeze_lower_layers", "1"))


def test_freezing_more_layers_than_the_model_has_is_refused(tmp_path, tiny_model_dir):
    proc = run_cli(resume_args(tiny_model_dir, tmp_path / "run", "--freeze_lower_layers", "3"))
    assert proc.returncode == 2  # after the model loaded (its progress bars above): the run ends with the one line
    assert proc.stderr.strip().splitlines()[-1] == (
        "train-mrpc: error: --freeze_lower_layers 3 is more than the model's 2 encoder layers; expected 0 to 2"
    )


def test_dropout_zero_makes_training_mode_the_evaluation_model(tiny_model_dir):
    from transformers import AutoModelForSequenceClassification

    model = AutoModelForSequenceClassification.from_pretrained(tiny_model_dir).train()
    batch = {"input_ids": torch.randint(5, 100, (4, 12)), "attention_mask": torch.ones(4, 12, dtype=torch.long)}
    assert not torch.equal(model(**batch).logits, model(**batch).logits)  # dropout at the model's 0.1
    set_dropout(model, 0.0, "tiny")
    assert torch.equal(model(**batch).logits, model.eval()(**batch).logits)
    assert model.config.hidden_dropout_prob == model.config.attention_probs_dropout_prob == 0.0


def test_dropout_on_a_model_without_dropout_layers_is_refused():
    model = torch.nn.Sequential(torch.nn.Linear(4, 2))
    with pytest.raises(UserError, match=r"--dropout 0.0: model m has no torch.nn.Dropout layers to set \(Sequential\)"):
        set_dropout(model, 0.0, "m")


def test_dropout_is_saved_with_the_model_and_a_checkpoint_resumes_only_with_it(tmp_path, tiny_model_dir):
    run = finished(resume_args(tiny_model_dir, tmp_path / "run", "--dropout", "0", "--max_train_samples", "64"))
    saved = json.loads((run / "config.json").read_text())
    assert saved["hidden_dropout_prob"] == saved["attention_probs_dropout_prob"] == 0.0
    out = tmp_path / "resumed"
    checkpoint = run / "checkpoints" / "step_000010"
    shutil.copytree(checkpoint, out / "checkpoints" / checkpoint.name)
    proc = run_cli(resume_args(tiny_model_dir, out, "--max_train_samples", "64", "--resume_from_checkpoint", "latest"))
    assert proc.returncode == 2
    assert "dropout 0.0 -> None" in proc.stderr.strip().splitlines()[-1]


def test_eval_strategy_end_trains_the_same_model_and_scores_it_once(tmp_path, tiny_model_dir, one_process_reference):
    out = tmp_path / "end"
    proc = run_cli(resume_args(tiny_model_dir, out, "--eval_strategy", "end"))
    assert proc.returncode == 0, proc.stderr[-3000:]
    # Evaluating after every epoch draws no random numbers and changes no weight: the same model either way.
    assert (out / "model.safetensors").read_bytes() == (one_process_reference / "model.safetensors").read_bytes()
    assert read_log(out) == read_log(one_process_reference)
    evaluations = [json.loads(line) for line in (out / "eval_results.jsonl").read_text().splitlines()]
    every_epoch = [json.loads(line) for line in (one_process_reference / "eval_results.jsonl").read_text().splitlines()]
    assert len(every_epoch) == 3 and evaluations == every_epoch[-1:]
    results = json.loads((out / "all_results.json").read_text())
    assert results["eval_accuracy"] == every_epoch[-1]["eval_accuracy"] and results["best_step"] == 60
    assert (out / "best_model" / "model.safetensors").read_bytes() == (out / "model.safetensors").read_bytes()


def test_eval_strategy_end_with_early_stopping_is_refused(tmp_path):
    proc = run_cli(["--eval_strategy", "end", "--early_stopping_patience", "2", "--output_dir", tmp_path / "run"])
    assert_one_line_error(proc.returncode, proc.stderr, "--early_stopping_patience", "--eval_strategy epoch")
