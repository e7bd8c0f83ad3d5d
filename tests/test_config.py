"""The hyperparameter dataclass: defaults, --help, config files, and one clear message per bad value."""

import dataclasses
import json
import re

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
        (
            ["--per_device_train_batch_size", "0"],
            "--per_device_train_batch_size 0 is invalid: expected an integer >= 1",
        ),
        (["--max_length", "0"], "--max_length 0 is invalid"),
        (["--warmup_ratio", "1.5"], "--warmup_ratio 1.5 is invalid: expected a number in [0, 1)"),
        (["--dropout", "1"], "--dropout 1.0 is invalid: expected a number in [0, 1)"),
        (["--gradient_accumulation_steps", "0"], "--gradient_accumulation_steps 0 is invalid"),
        (
            ["--data_dir", "x", "--train_file", "a.csv", "--validation_file", "b.csv"],
            "--data_dir and --train_file both",
        ),
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
        (
            "per_device_train_batch_size: 2.5\n",
            ".yaml",
            "--per_device_train_batch_size 2.5 is invalid: expected an integer",
        ),
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


# --- values that used to crash instead of being refused -----------------------------------------------------


@pytest.mark.parametrize(
    "text, key",
    [
        ("1: 2\n", "1"),
        ("null: 3\n", "None"),
        ("True: 3\n", "True"),
        ("learning_rate: 1.0e-4\n2020-01-01: x\n", "datetime.date(2020, 1, 1)"),
    ],
)
def test_config_file_keys_that_are_not_text_are_named(tmp_path, capsys, text, key):
    """YAML reads unquoted 1, null, true and dates as such, not as text: no flag has that name."""
    path = tmp_path / "run.yaml"
    path.write_text(text)
    with pytest.raises(UserError, match=rf"^config file {path}: key {re.escape(key)} \(.+\) is not a flag name"):
        parse_config(["--config", str(path)])
    code, err = run_main(["--config", str(path)], capsys)
    assert code == 2 and len(err.strip().splitlines()) == 1 and err.startswith("train-mrpc: error: config file ")


@pytest.mark.parametrize("steps", ["²", "٣", "+5", " 5", "99999999999", "1" * 5000])
def test_checkpointing_steps_are_ascii_digits_in_range(steps):
    """str.isdigit() takes '²' (which int() refuses) and '٣' (which int() reads as 3); a step count is ASCII digits."""
    with pytest.raises(
        UserError,
        match=r"^--checkpointing_steps .+ is invalid: expected a number of steps from 1 to "
        r"2147483647 \(2\*\*31 - 1\), 'epoch' or 'no'$",
    ):
        parse_config(["--checkpointing_steps", steps])
    assert parse_config(["--checkpointing_steps", "2147483647"]).checkpoint_every == 2**31 - 1


def test_ddp_timeout_is_bounded_below_what_timedelta_takes():
    from datetime import timedelta

    with pytest.raises(
        UserError,
        match=r"^--ddp_timeout 100000000000000 is invalid: expected an integer number of "
        r"seconds from 1 to 2147483647 \(2\*\*31 - 1\)$",
    ):
        parse_config(["--ddp_timeout", "100000000000000"])
    largest = parse_config(["--ddp_timeout", "2147483647"]).ddp_timeout
    assert timedelta(seconds=largest)  # what launch.create_accelerator makes of it
    with pytest.raises(UserError, match=r"^--ddp_timeout 0 is invalid: expected an integer number of seconds >= 1$"):
        parse_config(["--ddp_timeout", "0"])


HUGE = "1000000000000000000000"  # > sys.maxsize: itertools.islice raised ValueError on such a batch size


@pytest.mark.parametrize(
    "flag, minimum",
    [
        ("per_device_train_batch_size", 1),
        ("per_device_eval_batch_size", 1),
        ("gradient_accumulation_steps", 1),
        ("max_length", 1),
        ("logging_steps", 1),
        ("max_train_steps", 1),
        ("max_train_samples", 1),
        ("max_eval_samples", 1),
        ("num_warmup_steps", 0),
        ("pad_to_multiple_of", 1),
        ("save_total_limit", 1),
        ("early_stopping_patience", 1),
        ("profile_skip_steps", 0),
        ("profile_warmup_steps", 0),
        ("profile_steps", 1),
        ("dataloader_num_workers", 0),
    ],
)
def test_huge_integers_are_refused_with_the_accepted_range(tmp_path, flag, minimum):
    message = rf"^--{flag} {HUGE} is invalid: expected an integer from {minimum} to 2147483647 \(2\*\*31 - 1\)$"
    with pytest.raises(UserError, match=message):
        parse_config([f"--{flag}", HUGE])
    path = tmp_path / "run.yaml"  # the same from a config file
    path.write_text(f"{flag}: {HUGE}\n")
    with pytest.raises(UserError, match=message):
        parse_config(["--config", str(path)])
    assert getattr(parse_config([f"--{flag}", "2147483647"]), flag) == 2**31 - 1  # the largest is taken
    with pytest.raises(UserError, match=rf"^--{flag} {minimum - 1} is invalid: expected an integer >= {minimum}$"):
        parse_config([f"--{flag}={minimum - 1}"])


def test_seeds_keep_their_own_ranges():
    assert parse_config(["--seed", "4294967295"]).seed == 2**32 - 1  # numpy's range, above 2**31 - 1
    assert parse_config(["--synthetic_seed", HUGE]).synthetic_seed == int(HUGE)  # any integer seeds random.Random


def test_huge_epoch_counts_are_refused():
    """1e308 epochs x a few steps per epoch is inf steps: math.ceil raised OverflowError in the middle of setup."""
    with pytest.raises(
        UserError,
        match=r"^--num_train_epochs 1e\+308 is invalid: expected a number > 0 and at most "
        r"2147483647 \(2\*\*31 - 1\)$",
    ):
        parse_config(["--num_train_epochs", "1e308"])
    assert parse_config(["--num_train_epochs", "2147483647"]).num_train_epochs == 2**31 - 1


@pytest.mark.parametrize(
    "suffix, text",
    [(".yaml", "seed: 7\nlearning_rate: 5.0e-5\n"), (".json", '{\n  "seed": 7,\n  "learning_rate": 5e-5\n}\n')],
)
@pytest.mark.parametrize("bom", ["\ufeff", "\ufeff\ufeff"], ids=["bom", "bom-twice"])
def test_config_files_with_byte_order_marks_and_crlf_read_like_others(tmp_path, suffix, text, bom):
    """Notepad saves UTF-8 with a BOM and CRLF; a BOM file read as plain UTF-8 and saved again with one has two, and
    JSON refused it ("Unexpected UTF-8 BOM")."""
    path = tmp_path / f"run{suffix}"
    path.write_bytes((bom + text.replace("\n", "\r\n")).encode("utf-8"))
    config = parse_config(["--config", str(path)])
    assert (config.seed, config.learning_rate) == (7, 5e-5)
