"""The hyperparameter dataclass: defaults, --help, config files, and one clear message per bad value."""

import dataclasses
import json

import pytest

from train_mrpc.cli import main
from train_mrpc.config import TrainConfig, parse_config
from train_mrpc.errors import UserError


def run_main(argv, capsys) -> tuple[int, str]:
    with pytest.raises(SystemExit) as exit_info:
        main(argv)
    return exit_info.value.code, capsys.readouterr().err


def test_defaults_are_the_published_bert_base_recipe():
    config = parse_config([])
    assert config.model_name_or_path == "bert-base-uncased"
    assert (config.per_device_train_batch_size, config.learning_rate, config.num_train_epochs) == (32, 2e-5, 3.0)
    assert config.max_length == 128 and config.lr_scheduler_type == "linear"


def test_help_lists_every_field_with_its_help_text_and_default(capsys):
    code, _ = run_main(["--help"], capsys)
    assert code == 0
    with pytest.raises(SystemExit):
        parse_config(["--help"])
    text = " ".join(capsys.readouterr().out.split())  # argparse wraps lines
    for f in dataclasses.fields(TrainConfig):
        assert f"--{f.name}" in text
        assert " ".join(f.metadata["help"].split())[:30] in text
    assert "(default: 2e-05)" in text


def test_flags_override_config_file(tmp_path):
    path = tmp_path / "run.yaml"
    path.write_text("learning_rate: 5.0e-5\nper_device_train_batch_size: 8\nseed: 7\n")
    config = parse_config(["--config", str(path), "--seed", "3"])
    assert (config.learning_rate, config.per_device_train_batch_size, config.seed) == (5e-5, 8, 3)


def test_yaml_merge_keys_may_be_overridden_in_config_files(tmp_path):
    """`<<: *base` is how YAML shares settings; a key it brings may be set again (only a key written twice is
    refused, test_bad_inputs)."""
    path = tmp_path / "run.yaml"
    path.write_text("<<: {learning_rate: 5.0e-5, seed: 7}\nseed: 3\n")
    config = parse_config(["--config", str(path)])
    assert (config.learning_rate, config.seed) == (5e-5, 3)


def test_saved_config_replays_the_run(tmp_path):
    config = parse_config(["--learning_rate", "3e-5", "--output_dir", str(tmp_path)])
    saved = config.save(tmp_path)
    assert parse_config(["--config", str(saved)]) == config
    assert json.loads(saved.read_text())["learning_rate"] == 3e-5


@pytest.mark.parametrize(
    "argv, message",
    [
        (["--learning_rate", "0"], "--learning_rate 0.0 is invalid: expected a number > 0"),
        (["--learning_rate=-1e-5"], "--learning_rate -1e-05 is invalid"),
        (["--per_device_train_batch_size", "0"], "--per_device_train_batch_size 0 is invalid: expected an integer >= 1"),
        (["--max_length", "0"], "--max_length 0 is invalid"),
        (["--warmup_ratio", "1.5"], "--warmup_ratio 1.5 is invalid: expected a number in [0, 1)"),
        (["--gradient_accumulation_steps", "0"], "--gradient_accumulation_steps 0 is invalid"),
        (["--data_dir", "x", "--train_file", "a.csv", "--validation_file", "b.csv"], "--data_dir and --train_file both"),
        (["--train_file", "a.csv"], "--train_file and --validation_file must be given together"),
    ],
)
def test_bad_values_name_the_flag(argv, message, capsys):
    code, err = run_main(argv, capsys)
    assert code == 2
    assert message in err
    assert len(err.strip().splitlines()) == 1


def test_unknown_flag_is_named(capsys):
    code, err = run_main(["--learning_rat", "1e-4"], capsys)
    assert code == 2
    assert "unrecognized arguments: --learning_rat" in err.strip().splitlines()[-1]


def test_bad_type_is_named(capsys):
    code, err = run_main(["--per_device_train_batch_size", "eight"], capsys)
    assert code == 2
    assert "--per_device_train_batch_size" in err and "'eight'" in err


@pytest.mark.parametrize(
    "text, suffix, message",
    [
        ("learning_rate: [oops\n", ".yaml", "is not valid YAML"),
        ('{"learning_rate": 1e-4,}', ".json", "is not valid JSON"),
        ("- just\n- a list\n", ".yaml", "must hold a mapping"),
        ("learning_rte: 1.0e-4\n", ".yaml", "unknown key(s) learning_rte"),
        ("learning_rate: fast\n", ".yaml", "--learning_rate"),
        ("lr_scheduler_type: sawtooth\n", ".yaml", "--lr_scheduler_type 'sawtooth' is invalid: expected one of linear"),
        ("per_device_train_batch_size: 2.5\n", ".yaml", "--per_device_train_batch_size 2.5 is invalid: expected an integer"),
    ],
)
def test_malformed_config_file_is_named(tmp_path, capsys, text, suffix, message):
    path = tmp_path / f"bad{suffix}"
    path.write_text(text)
    code, err = run_main(["--config", str(path)], capsys)
    assert code == 2
    assert message in err
    assert err.strip().splitlines()[-1].startswith(("train-mrpc: error:", "usage:", "train-mrpc"))


def test_missing_config_file_is_named(capsys):
    code, err = run_main(["--config", "nope.yaml"], capsys)
    assert code == 2 and "config file nope.yaml: file not found" in err


def test_config_validation_runs_without_the_parser():
    with pytest.raises(UserError, match="--num_train_epochs 0 is invalid"):
        TrainConfig(num_train_epochs=0)


@pytest.mark.parametrize("steps, every", [("200", 200), ("1", 1), ("epoch", None), ("no", None)])
def test_checkpoint_every_is_the_step_count_or_none(steps, every):
    assert TrainConfig(checkpointing_steps=steps).checkpoint_every == every


@pytest.mark.parametrize("metric, greater", [("accuracy", True), ("f1", True), ("loss", False)])
def test_greater_is_better_only_for_scores(metric, greater):
    assert TrainConfig(metric_for_best_model=metric).greater_is_better is greater
