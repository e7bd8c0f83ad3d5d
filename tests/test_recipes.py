"""--recipe: published recipes by name, expanded into the normal flags; explicit flags and config files win."""

import dataclasses
import json
import re

import pytest

from train_mrpc.config import TrainConfig, parse_config
from train_mrpc.errors import UserError
from train_mrpc.recipes import RECIPES

from conftest import assert_one_line_error, run_cli, tiny_args

FIELDS = {f.name for f in dataclasses.fields(TrainConfig)}


@pytest.mark.parametrize("name", sorted(RECIPES))
def test_every_recipe_is_valid_flags_with_a_source(name):
    recipe = RECIPES[name]
    assert set(recipe.values) <= FIELDS
    assert "http" not in recipe.source and len(recipe.source) > 80  # cites where, not just a link
    config = parse_config(["--recipe", name])
    assert config.recipe == name
    for key, value in recipe.values.items():
        assert getattr(config, key) == value, key


def test_mosbach_recipe_is_the_stable_recipe():
    config = parse_config(["--recipe", "mosbach-stable"])
    assert (config.learning_rate, config.num_train_epochs, config.per_device_train_batch_size) == (2e-5, 20.0, 16)
    assert (config.warmup_ratio, config.num_warmup_steps, config.lr_scheduler_type) == (0.1, None, "linear")
    assert (config.max_grad_norm, config.weight_decay, config.adam_epsilon) == (1.0, 0.01, 1e-6)
    assert "Mosbach" in RECIPES["mosbach-stable"].source and "ICLR 2021" in RECIPES["mosbach-stable"].source


def test_google_recipe_is_the_bert_readme_recipe():
    config = parse_config(["--recipe", "google-bert"])
    assert (config.learning_rate, config.num_train_epochs, config.per_device_train_batch_size) == (2e-5, 3.0, 32)
    assert (config.max_length, config.warmup_ratio, config.adam_epsilon, config.max_grad_norm) == (128, 0.1, 1e-6, 1.0)
    assert "google-research/bert" in RECIPES["google-bert"].source


def test_explicit_flags_and_config_files_win_over_the_recipe(tmp_path):
    config = parse_config(["--recipe", "mosbach-stable", "--num_train_epochs", "5", "--learning_rate", "3e-5"])
    assert (config.num_train_epochs, config.learning_rate, config.per_device_train_batch_size) == (5.0, 3e-5, 16)
    # A recipe named in a file: the file's other values win over it, the command line over both.
    file = tmp_path / "run.yaml"
    file.write_text("recipe: mosbach-stable\nper_device_train_batch_size: 8\nnum_train_epochs: 4\n")
    config = parse_config(["--config", str(file), "--num_train_epochs", "2"])
    assert config.recipe == "mosbach-stable" and config.adam_epsilon == 1e-6
    assert (config.per_device_train_batch_size, config.num_train_epochs) == (8, 2.0)
    # The recipe flag wins over a recipe in the file.
    config = parse_config(["--config", str(file), "--recipe", "google-bert"])
    assert config.recipe == "google-bert" and config.per_device_train_batch_size == 8 and config.num_train_epochs == 4.0
    # Without a recipe nothing changes.
    assert parse_config([]) == TrainConfig()


def test_recipe_is_recorded_in_train_config_and_repeats_the_run(tmp_path, tiny_model_dir):
    out = tmp_path / "run"
    proc = run_cli(tiny_args(tiny_model_dir, out, "--recipe", "google-bert", "--max_train_steps", "2"))
    assert proc.returncode == 0, proc.stderr[-3000:]
    saved = json.loads((out / "train_config.json").read_text())
    assert saved["recipe"] == "google-bert"
    assert saved["adam_epsilon"] == 1e-6 and saved["max_length"] == 128 and saved["warmup_ratio"] == 0.1  # the recipe's
    assert saved["per_device_train_batch_size"] == 16 and saved["learning_rate"] == 1e-3  # tiny_args' explicit flags
    assert parse_config(["--config", str(out / "train_config.json")]).to_dict() == saved


def test_unknown_recipe_is_one_line_error(tmp_path):
    proc = run_cli(["--recipe", "bert-paper", "--output_dir", tmp_path])
    assert_one_line_error(proc.returncode, proc.stderr, "--recipe", "invalid choice: 'bert-paper'", "google-bert")


@pytest.mark.parametrize(
    "value, shown",
    [("nope", "'nope'"), ("5", "5"), ("[1]", "[1]"), ("{a: 1}", "{'a': 1}"), ("false", "False"), ("''", "''")],
)
def test_recipe_in_a_config_file_is_checked_like_the_flag(tmp_path, value, shown):
    """The --recipe flag is checked by argparse; a config file's recipe (KeyError, unhashable TypeError) too."""
    path = tmp_path / "run.yaml"
    path.write_text(f"recipe: {value}\n")
    with pytest.raises(
        UserError,
        match=rf"^config file {re.escape(str(path))}: --recipe {re.escape(shown)} is invalid: "
        "expected one of google-bert, mosbach-stable, fast$",
    ):
        parse_config(["--config", str(path)])
    # A valid recipe on the command line replaces the file's, as it replaces any file value.
    assert parse_config(["--config", str(path), "--recipe", "google-bert"]).recipe == "google-bert"
