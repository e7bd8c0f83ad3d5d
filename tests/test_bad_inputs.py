"""Hostile and careless inputs (issue 14): each ends with one line ``train-mrpc: error: ...`` and exit 2.

Most cases run the CLI in a subprocess, as a user meets them; value checks that have many variants run
``cli.main`` in-process (the same entry point, the same stderr).
"""

from __future__ import annotations

import dataclasses
import json
import math
import os
import typing
from pathlib import Path
from types import SimpleNamespace

import pytest

from train_mrpc.cli import main
from train_mrpc.config import TrainConfig, parse_config
from train_mrpc.data import load_raw_splits
from train_mrpc.errors import UserError

from conftest import assert_error_after_loading, assert_one_line_error, non_root_launcher, run_cli

TINY = ["--model_name_or_path", "tiny-random-bert", "--dataset", "synthetic"]
OFFLINE_CACHE_MESSAGE = "not in the local Hugging Face cache"


def cli_error(cwd: Path, *args, env=None, launcher=None, fragments=()) -> str:
    proc = run_cli(list(args), cwd=cwd, env=env, launcher=launcher, timeout=300)
    return assert_one_line_error(proc.returncode, proc.stderr, *fragments)


def main_error(argv, capsys, *fragments) -> str:
    with pytest.raises(SystemExit) as info:
        main([str(a) for a in argv])
    return assert_one_line_error(info.value.code, capsys.readouterr().err, *fragments)


def pair_file(path: Path, records: list[dict]) -> Path:
    path.write_text("".join(json.dumps(r) + "\n" for r in records))
    return path


def file_config(tmp_path: Path, train: Path) -> TrainConfig:
    return TrainConfig(train_file=str(train), validation_file=str(train), output_dir=str(tmp_path / "run"))


# --- item 5: tracebacks where one line was promised ------------------------------------------------


@pytest.mark.parametrize("seed", ["-1", "4294967296"])
def test_seed_outside_what_set_seed_takes_is_refused(tmp_path, seed):
    cli_error(
        tmp_path,
        *TINY,
        "--output_dir",
        tmp_path / "run",
        "--seed",
        seed,
        fragments=(f"--seed {seed} is invalid", "0 to 4294967295"),
    )
    assert not (tmp_path / "run").exists()  # refused before anything is written


@pytest.mark.parametrize("name", ["no\x0cfile.tsv", "no\u2028file.tsv", "no\x85file.tsv", "no\nfile.tsv"])
def test_a_line_break_of_any_kind_in_a_named_path_stays_on_the_one_line(tmp_path, capsys, name):
    """str.splitlines() breaks at form feeds, U+2028, NEL and more, not only at \\n: each is written escaped."""
    line = main_error(
        [
            *TINY[:2],
            "--train_file",
            tmp_path / name,
            "--validation_file",
            tmp_path / name,
            "--output_dir",
            tmp_path / "run",
        ],
        capsys,
        "file not found",
    )
    assert name.encode("unicode_escape").decode() in line


def test_seed_bounds_are_accepted():
    assert TrainConfig(seed=0).seed == 0 and TrainConfig(seed=2**32 - 1).seed == 2**32 - 1


def test_infinite_epochs_are_refused(tmp_path):
    cli_error(
        tmp_path,
        *TINY,
        "--output_dir",
        tmp_path / "run",
        "--num_train_epochs",
        "inf",
        fragments=("--num_train_epochs inf is invalid", "finite"),
    )


def test_json_row_id_beyond_int32_is_named(tmp_path):
    path = pair_file(
        tmp_path / "train.jsonl",
        [
            {"sentence1": "a b.", "sentence2": "c d.", "label": 1, "idx": 0},
            {"sentence1": "e f.", "sentence2": "g h.", "label": 0, "idx": 3000000000},
        ],
    )
    cli_error(
        tmp_path,
        "--model_name_or_path",
        "tiny-random-bert",
        "--train_file",
        path,
        "--validation_file",
        path,
        "--output_dir",
        tmp_path / "run",
        fragments=(f"{path}: line 2", "3000000000", "'idx'", "2147483647"),
    )


@pytest.mark.parametrize("bad, message", [(1.5, "1.5"), (True, "true"), (None, "None"), ("x7", "'x7'")])
def test_bad_row_ids_are_located(tmp_path, bad, message):
    path = pair_file(
        tmp_path / "train.jsonl",
        [
            {"sentence1": "a.", "sentence2": "b.", "label": 1, "idx": 1},
            {"sentence1": "c.", "sentence2": "d.", "label": 0, "idx": bad},
        ],
    )
    with pytest.raises(UserError, match=f"train.jsonl: line 2: row id {message} in column 'idx' is invalid"):
        load_raw_splits(file_config(tmp_path, path))


def test_integer_row_ids_from_any_format_are_kept(tmp_path):
    path = tmp_path / "t.csv"
    path.write_text("sentence1,sentence2,label,idx\na.,b.,1,7\nc.,d.,0,2147483647\n")
    assert load_raw_splits(file_config(tmp_path, path))["train"]["idx"] == [7, 2147483647]


@pytest.mark.parametrize("name", ["train.csv", "train.parquet", "train.jsonl"])
def test_unreadable_data_file_is_named(tmp_path, name):
    import pandas as pd

    launcher = non_root_launcher(tmp_path)
    path = tmp_path / name
    frame = pd.DataFrame({"sentence1": ["a b."], "sentence2": ["c d."], "label": [1]})
    {
        ".csv": lambda: frame.to_csv(path, index=False),
        ".parquet": lambda: frame.to_parquet(path),
        ".jsonl": lambda: frame.to_json(path, orient="records", lines=True),
    }[path.suffix]()
    path.chmod(0)
    cli_error(
        tmp_path,
        "--model_name_or_path",
        "tiny-random-bert",
        "--train_file",
        path,
        "--validation_file",
        path,
        "--output_dir",
        tmp_path / "run",
        launcher=launcher,
        fragments=(f"{path}: cannot read", "permission denied"),
    )


def test_glue_folder_that_cannot_be_entered_is_named(tmp_path):
    launcher = non_root_launcher(tmp_path)
    data = tmp_path / "glue"
    data.mkdir()
    (data / "train.tsv").write_text("x")
    (data / "dev.tsv").write_text("x")
    data.chmod(0o600)  # listed, but its files cannot be reached
    try:
        cli_error(
            tmp_path,
            "--model_name_or_path",
            "tiny-random-bert",
            "--data_dir",
            data,
            "--output_dir",
            tmp_path / "run",
            launcher=launcher,
            fragments=(f"{data / 'train.tsv'}: cannot read", "permission denied"),
        )
    finally:
        data.chmod(0o700)


def test_latin1_config_file_is_located(tmp_path, capsys):
    path = tmp_path / "run.yaml"
    path.write_bytes(b"seed: 3\noutput_dir: runs/caf\xe9\n")
    main_error(["--config", path], capsys, f"config file {path}: line 2 is not valid UTF-8", "expected a UTF-8")


def test_config_file_that_is_a_pipe_is_refused_without_waiting(tmp_path):
    """Reading a FIFO blocks until a writer comes (and Python retries the open after SIGTERM): refuse it."""
    path = tmp_path / "run.yaml"
    os.mkfifo(path)
    cli_error(
        tmp_path,
        *TINY,
        "--config",
        path,
        fragments=(f"config file {path}: is not a regular file (a pipe or device)", "YAML or JSON"),
    )


@pytest.mark.parametrize(
    ("name", "text", "fragments"),
    [
        (
            "run.yaml",
            "seed: 3\nlearning_rate: 1e-4\nlearning_rate: 2e-5\n",
            ("line 3 repeats the key 'learning_rate' (first on line 2)",),
        ),
        ("run.yml", "seed: 3\nlr_scheduler_type: {a: 1, a: 2}\n", ("line 2 repeats the key 'a'",)),
        ("run.json", '{"learning_rate": 1e-4, "seed": 3, "learning_rate": 2e-5}', ("repeats the key 'learning_rate'",)),
    ],
)
def test_config_file_repeating_a_key_is_refused(tmp_path, capsys, name, text, fragments):
    """YAML and JSON loaders keep the last of two equal keys silently: the run would use a value nobody chose."""
    path = tmp_path / name
    path.write_text(text)
    main_error(["--config", path], capsys, f"config file {path}: ", *fragments, "keep one")


def test_config_value_built_from_yaml_aliases_is_shown_short(tmp_path, capsys):
    """Nine levels of YAML aliases make a 300-byte file hold a 43-million-element list (a 254 MB repr)."""
    lines = ["learning_rate:", '  - &a ["x", "x", "x", "x", "x", "x", "x", "x", "x"]']
    for name, prev in zip("bcdefgh", "abcdefg"):
        lines.append(f"  - &{name} [" + ", ".join([f"*{prev}"] * 9) + "]")
    path = tmp_path / "run.yaml"
    path.write_text("\n".join(lines) + "\n")
    assert path.stat().st_size < 400
    line = main_error(["--config", path], capsys, "--learning_rate [['x', 'x'", "is invalid: expected a number")
    assert len(line) < 300


def test_unreadable_config_file_is_named(tmp_path):
    launcher = non_root_launcher(tmp_path)
    path = tmp_path / "run.yaml"
    path.write_text("seed: 3\n")
    path.chmod(0)
    cli_error(
        tmp_path,
        *TINY,
        "--config",
        path,
        launcher=launcher,
        fragments=(f"config file {path}: cannot read (permission denied)",),
    )


def test_os_error_from_a_user_path_is_one_line(tmp_path):
    """Last resort in cli.main: an OSError that no reader turned into a message still names its path."""
    launcher = non_root_launcher(tmp_path)
    read_only = tmp_path / "read-only"
    read_only.mkdir()
    read_only.chmod(0o555)
    cache = read_only / "datasets"  # the tokenization cache cannot be created there
    try:
        cli_error(
            tmp_path,
            *TINY,
            "--output_dir",
            tmp_path / "run",
            "--max_train_steps",
            "1",
            env={"HF_DATASETS_CACHE": str(cache)},
            launcher=launcher,
            fragments=(f"permission denied: {cache}",),
        )
    finally:
        read_only.chmod(0o755)


def test_a_file_where_a_folder_is_needed_is_named(tmp_path):
    """TensorBoard's folder (output_dir/train_mrpc) is a file: the line says a folder was needed, not "file exists"."""
    out = tmp_path / "run"
    out.mkdir()
    (out / "train_mrpc").write_text("not a folder")
    proc = run_cli([*TINY, "--output_dir", out, "--max_train_steps", "1", "--report_to", "tensorboard"], cwd=tmp_path)
    assert_error_after_loading(
        proc.returncode,
        proc.stderr,
        f"a file stands where a folder is needed (remove or rename it): {out / 'train_mrpc'}",
    )


def test_last_resort_handler_takes_only_os_errors_with_a_known_cause(monkeypatch, capsys):
    import errno

    from train_mrpc import cli

    def disk_full(argv):
        raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC), "/runs/x/model.safetensors")

    monkeypatch.setattr(cli, "run_training", disk_full)
    main_error(["--seed", "1"], capsys, "no space left on device: /runs/x/model.safetensors")

    def bug(argv):
        raise OSError("some library bug")

    monkeypatch.setattr(cli, "run_training", bug)
    with pytest.raises(OSError, match="some library bug"):  # not hidden as a user error
        main(["--seed", "1"])


# --- item 6: --max_length too short for a pair -------------------------------------------------------


@pytest.mark.parametrize("max_length", ["1", "2"])
def test_max_length_too_short_for_a_pair_is_refused(tmp_path, max_length):
    cli_error(
        tmp_path,
        *TINY,
        "--output_dir",
        tmp_path / "run",
        "--max_length",
        max_length,
        "--max_train_samples",
        "8",
        fragments=(f"--max_length {max_length} is too short", "3 special tokens", "at least 5"),
    )


def test_max_length_floor_counts_the_tokenizers_special_tokens():
    from train_mrpc.model import check_max_length
    from train_mrpc.synthetic import build_tiny_model

    tokenizer, model = build_tiny_model()
    for too_short in (1, 2, 3, 4):  # 3 and 4 leave no token of one sentence or both
        with pytest.raises(UserError, match=f"--max_length {too_short} is too short"):
            check_max_length(too_short, tokenizer, model, "tiny")
    check_max_length(5, tokenizer, model, "tiny")


# --- item 7: non-finite floats -----------------------------------------------------------------------

HINTS = typing.get_type_hints(TrainConfig)
FLOAT_FIELDS = [f.name for f in dataclasses.fields(TrainConfig) if HINTS[f.name] in (float, typing.Optional[float])]


def test_float_fields_are_found():
    assert {"learning_rate", "weight_decay", "adam_epsilon", "max_grad_norm", "num_train_epochs"} <= set(FLOAT_FIELDS)


@pytest.mark.parametrize("name", FLOAT_FIELDS)
@pytest.mark.parametrize("value", [math.inf, -math.inf, math.nan])
def test_every_float_flag_refuses_non_finite_values(name, value):
    with pytest.raises(UserError, match=f"--{name} {value!r} is invalid: expected a finite number"):
        TrainConfig(**{name: value})


@pytest.mark.parametrize("flag", ["--learning_rate", "--weight_decay", "--adam_epsilon", "--max_grad_norm"])
def test_non_finite_flag_is_refused_on_the_command_line(flag, capsys, tmp_path):
    main_error([*TINY, "--output_dir", tmp_path / "run", flag, "inf"], capsys, f"{flag} inf is invalid", "finite")


def test_non_finite_value_in_a_config_file_is_refused(tmp_path, capsys):
    path = tmp_path / "run.json"
    path.write_text('{"learning_rate": Infinity}')
    main_error(["--config", path], capsys, "--learning_rate inf is invalid: expected a finite number")


# --- item 8: labels ----------------------------------------------------------------------------------


def test_integer_valued_numeric_labels_are_accepted(tmp_path):
    path = tmp_path / "t.json"
    path.write_text(
        json.dumps(
            [{"sentence1": "a.", "sentence2": "b.", "label": 1.0}, {"sentence1": "c.", "sentence2": "d.", "label": 0}]
        )
    )
    assert load_raw_splits(file_config(tmp_path, path))["train"]["label"] == [1, 0]
    path = tmp_path / "t.csv"  # pandas writes a float label column as 1.0/0.0
    path.write_text("sentence1,sentence2,label\na.,b.,1.0\nc.,d.,0\n")
    assert load_raw_splits(file_config(tmp_path, path))["train"]["label"] == [1, 0]
    path.write_text("sentence1,sentence2,label\na.,b.,1.5\n")
    with pytest.raises(UserError, match="t.csv: line 2: label '1.5' in column 'label' is invalid"):
        load_raw_splits(file_config(tmp_path, path))


@pytest.mark.parametrize("value, shown", [(True, "true"), (False, "false")])
def test_boolean_json_labels_are_refused(tmp_path, value, shown):
    path = pair_file(
        tmp_path / "t.jsonl",
        [{"sentence1": "a.", "sentence2": "b.", "label": 1}, {"sentence1": "c.", "sentence2": "d.", "label": value}],
    )
    cli_error(
        tmp_path,
        "--model_name_or_path",
        "tiny-random-bert",
        "--train_file",
        path,
        "--validation_file",
        path,
        "--output_dir",
        tmp_path / "run",
        fragments=(f"{path}: line 2: label {shown} in column 'label' is a boolean", "expected 0 or 1"),
    )


def test_boolean_parquet_labels_are_refused(tmp_path):
    import pandas as pd

    path = tmp_path / "t.parquet"
    pd.DataFrame({"sentence1": ["a.", "b."], "sentence2": ["c.", "d."], "label": [False, True]}).to_parquet(path)
    with pytest.raises(UserError, match=r"t.parquet: row 0: label false in column 'label' is a boolean"):
        load_raw_splits(file_config(tmp_path, path))


@pytest.mark.parametrize("text, shown", [("Infinity", "inf"), ("NaN", "nan"), ("0.5", "0.5")])
def test_non_integer_numeric_labels_are_refused(tmp_path, text, shown):
    path = tmp_path / "t.jsonl"
    path.write_text(f'{{"sentence1": "a.", "sentence2": "b.", "label": {text}}}\n')
    with pytest.raises(UserError, match=f"t.jsonl: line 1: label {shown} in column 'label' is invalid"):
        load_raw_splits(file_config(tmp_path, path))


# --- item 9: empty --output_dir ------------------------------------------------------------------------


@pytest.mark.parametrize("value", ["", "   "])
def test_empty_output_dir_is_refused(tmp_path, value):
    cli_error(tmp_path, *TINY, "--output_dir", value, fragments=("--output_dir", "expected a folder path"))
    assert list(tmp_path.iterdir()) == []  # nothing written into the current directory


# --- item 12: local model folders under HF_HUB_OFFLINE=1 --------------------------------------------


@pytest.mark.parametrize(
    "name", ["./no-such-model", "../no-such-model", "/no/such/model", "~/no-such-model-dir", "runs/mrpc/no-such-model"]
)
def test_missing_local_model_folder_is_named(tmp_path, name):
    line = cli_error(
        tmp_path,
        "--model_name_or_path",
        name,
        "--dataset",
        "synthetic",
        "--output_dir",
        tmp_path / "run",
        fragments=(f"--model_name_or_path {name}: no such folder",),
    )
    assert OFFLINE_CACHE_MESSAGE not in line


def test_hub_names_are_still_hub_names():
    from train_mrpc.hub import is_hub_name

    assert is_hub_name("bert-base-uncased") and is_hub_name("sentence-transformers/all-MiniLM-L6-v2")
    assert not any(is_hub_name(n) for n in ("./m", "../m", "/m", "~/m", "a/b/c", "."))


def _break_config(d: Path) -> None:
    (d / "config.json").write_text("{not json")


def _custom_code(d: Path) -> None:
    config = json.loads((d / "config.json").read_text())
    config.update(
        model_type="my-bert",
        auto_map={
            "AutoConfig": "configuration_my.MyConfig",
            "AutoModelForSequenceClassification": "modeling_my.MyModel",
        },
    )
    (d / "config.json").write_text(json.dumps(config))


@pytest.mark.parametrize(
    "damage, fragments",
    [
        (_break_config, ("config.json is not valid JSON",)),
        (lambda d: (d / "config.json").unlink(), ("has no config.json", "save_pretrained")),
        (lambda d: (d / "model.safetensors").unlink(), ("has no model weights", "model.safetensors")),
        (
            lambda d: (d / "tokenizer.json").unlink() or (d / "tokenizer_config.json").unlink(),
            ("tokenizer of model directory", "has no tokenizer files"),
        ),
        (_custom_code, ("custom code", "--trust_remote_code")),
    ],
    ids=["broken-config", "no-config", "no-weights", "no-tokenizer", "custom-code"],
)
def test_local_model_folder_problems_name_the_real_cause(tmp_path, tiny_model_dir, damage, fragments):
    import shutil

    model = shutil.copytree(tiny_model_dir, tmp_path / "model")
    damage(model)
    line = cli_error(
        tmp_path,
        "--model_name_or_path",
        model,
        "--dataset",
        "synthetic",
        "--output_dir",
        tmp_path / "run",
        "--max_train_samples",
        "8",
        fragments=(f"model directory '{model}'", *fragments),
    )
    assert OFFLINE_CACHE_MESSAGE not in line


def test_model_path_that_is_a_file_is_named(tmp_path):
    path = tmp_path / "model.bin"
    path.write_text("x")
    cli_error(
        tmp_path,
        "--model_name_or_path",
        path,
        "--dataset",
        "synthetic",
        "--output_dir",
        tmp_path / "run",
        fragments=(f"--model_name_or_path {path}: is a file", "expected a model folder"),
    )


def test_a_tokenizer_larger_than_the_models_embedding_is_refused(tmp_path, tiny_model_dir):
    """A tokenizer of another model (more ids than embedding rows) failed with an IndexError at the first step."""
    import shutil

    from transformers import AutoTokenizer

    model = shutil.copytree(tiny_model_dir, tmp_path / "model")
    tokenizer = AutoTokenizer.from_pretrained(model)
    rows = len(tokenizer)
    tokenizer.add_tokens(["zyxwv", "qwertz"])
    tokenizer.save_pretrained(model)
    proc = run_cli(
        [
            "--model_name_or_path",
            model,
            "--dataset",
            "synthetic",
            "--output_dir",
            tmp_path / "run",
            "--max_train_samples",
            "8",
        ],
        cwd=tmp_path,
    )
    assert_error_after_loading(
        proc.returncode, proc.stderr, f"has {rows + 2} tokens, but the model's embedding has {rows} rows"
    )


def test_a_head_for_another_label_count_is_refused_unless_replacing_it_is_asked(tmp_path, tiny_model_dir):
    """An MNLI-style 3-label checkpoint: refused in one line naming the flag; with it, the head is a new 2-label one
    and the encoder the checkpoint's."""
    import torch
    from safetensors.torch import load_file
    from transformers import AutoModelForSequenceClassification

    from train_mrpc.synthetic import build_tiny_model

    model_dir = tmp_path / "three-labels"
    tokenizer, model = build_tiny_model(seed=1, num_labels=3)
    model.save_pretrained(model_dir)
    tokenizer.save_pretrained(model_dir)
    args = [
        "--model_name_or_path",
        model_dir,
        "--dataset",
        "synthetic",
        "--output_dir",
        tmp_path / "run",
        "--max_train_samples",
        "16",
        "--max_eval_samples",
        "8",
        "--max_train_steps",
        "1",
        "--learning_rate",
        "1e-9",
    ]
    proc = run_cli(args, cwd=tmp_path)
    assert_error_after_loading(
        proc.returncode,
        proc.stderr,
        "has a classification head for 3 labels, MRPC has 2",
        "--ignore_mismatched_sizes true",
    )
    proc = run_cli([*args, "--ignore_mismatched_sizes", "true"], cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr[-3000:]
    trained, start = load_file(tmp_path / "run" / "model.safetensors"), load_file(model_dir / "model.safetensors")
    assert trained["classifier.weight"].shape == (2, 16)
    assert torch.allclose(
        trained["bert.embeddings.word_embeddings.weight"], start["bert.embeddings.word_embeddings.weight"], atol=1e-6
    )
    assert AutoModelForSequenceClassification.from_pretrained(tmp_path / "run").config.num_labels == 2


def tiny_gpt2(path: Path, tiny_model_dir: Path, pad_token: bool) -> Path:
    """A 1-layer GPT-2 classifier whose config leaves pad_token_id unset (as GPT-2's does), with the tiny
    tokenizer, with or without its padding token."""
    from transformers import AutoTokenizer, GPT2Config, GPT2ForSequenceClassification

    tokenizer = AutoTokenizer.from_pretrained(tiny_model_dir)
    if not pad_token:
        tokenizer.pad_token = None
    config = GPT2Config(
        vocab_size=len(tokenizer), n_positions=128, n_embd=16, n_layer=1, n_head=2, num_labels=2, pad_token_id=None
    )
    GPT2ForSequenceClassification(config).save_pretrained(path)
    tokenizer.save_pretrained(path)
    return path


def test_a_decoder_whose_config_has_no_pad_token_id_trains_with_the_tokenizers(tmp_path, tiny_model_dir):
    """GPT-2's classifier finds each pair's last token by pad_token_id; left unset it refused batches > 1."""
    model = tiny_gpt2(tmp_path / "gpt2", tiny_model_dir, pad_token=True)
    proc = run_cli(
        [
            "--model_name_or_path",
            model,
            "--dataset",
            "synthetic",
            "--output_dir",
            tmp_path / "run",
            "--max_train_samples",
            "16",
            "--max_eval_samples",
            "8",
            "--per_device_train_batch_size",
            "4",
            "--max_train_steps",
            "2",
        ],
        cwd=tmp_path,
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert json.loads((tmp_path / "run" / "config.json").read_text())["pad_token_id"] == 0  # the tokenizer's [PAD]


def test_a_tokenizer_without_a_padding_token_is_refused(tmp_path, tiny_model_dir):
    model = tiny_gpt2(tmp_path / "gpt2", tiny_model_dir, pad_token=False)
    proc = run_cli(
        [
            "--model_name_or_path",
            model,
            "--dataset",
            "synthetic",
            "--output_dir",
            tmp_path / "run",
            "--max_train_samples",
            "8",
        ],
        cwd=tmp_path,
    )
    assert_error_after_loading(
        proc.returncode, proc.stderr, "has no padding token", "tokenizer.pad_token = tokenizer.eos_token"
    )


@pytest.mark.parametrize("multiple", ["96", "129"])
def test_padding_to_a_multiple_beyond_the_models_positions_is_refused(tmp_path, tiny_model_dir, multiple):
    """The tiny model has 128 positions: --max_length 128 padded up to a multiple of 96 would be 192 tokens."""
    proc = run_cli(
        [
            "--model_name_or_path",
            tiny_model_dir,
            "--dataset",
            "synthetic",
            "--output_dir",
            tmp_path / "run",
            "--max_train_samples",
            "8",
            "--max_length",
            "128",
            "--pad_to_multiple_of",
            multiple,
        ],
        cwd=tmp_path,
    )
    padded = -(-128 // int(multiple)) * int(multiple)
    assert_error_after_loading(
        proc.returncode,
        proc.stderr,
        f"--pad_to_multiple_of {multiple} pads batches of up to "
        f"--max_length 128 tokens to {padded}, beyond the 128 positions",
    )


def test_do_predict_without_a_test_split_is_refused_before_training(tmp_path):
    train = pair_file(
        tmp_path / "pairs.jsonl", [{"sentence1": "A b.", "sentence2": "B a.", "label": i % 2} for i in range(8)]
    )
    cli_error(
        tmp_path,
        "--model_name_or_path",
        "tiny-random-bert",
        "--train_file",
        train,
        "--validation_file",
        train,
        "--output_dir",
        tmp_path / "run",
        "--do_predict",
        "true",
        fragments=("--do_predict true, but the data has no test split", "--test_file"),
    )
    assert not (tmp_path / "run" / "model.safetensors").exists()


def test_a_profile_window_beyond_the_end_of_the_run_is_refused(tmp_path):
    """Default window: steps 8-12 (5 skipped, 2 warm-up, 5 recorded); a 4-step run left an empty profile folder."""
    proc = run_cli(
        [
            *TINY,
            "--output_dir",
            tmp_path / "run",
            "--max_train_samples",
            "64",
            "--max_train_steps",
            "4",
            "--profile",
            "true",
        ],
        cwd=tmp_path,
    )
    assert_error_after_loading(
        proc.returncode, proc.stderr, "--profile records optimizer steps 8 to 12 of this run", "but it has 4 to run"
    )
    assert not (tmp_path / "run" / "model.safetensors").exists()


def test_a_path_with_a_newline_still_gives_one_line(tmp_path):
    missing = tmp_path / "no\nsuch.csv"
    cli_error(
        tmp_path,
        *TINY[:2],
        "--train_file",
        missing,
        "--validation_file",
        missing,
        "--output_dir",
        tmp_path / "run",
        fragments=("no\\nsuch.csv",),
    )


def test_a_pipe_where_the_run_keeps_its_lock_file_is_named(tmp_path):
    (tmp_path / "run").mkdir()
    os.mkfifo(tmp_path / "run" / ".lock")
    cli_error(
        tmp_path,
        *TINY,
        "--output_dir",
        tmp_path / "run",
        "--max_train_samples",
        "8",
        fragments=(f"{tmp_path / 'run' / '.lock'} is not a regular file", "remove it"),
    )


def test_resuming_from_a_file_says_a_checkpoint_folder_is_expected(tmp_path):
    file = tmp_path / "step_000010"
    file.write_text("x")
    cli_error(
        tmp_path,
        *TINY,
        "--output_dir",
        tmp_path / "run",
        "--resume_from_checkpoint",
        file,
        fragments=(f"checkpoint {file} is a file; expected a checkpoint folder",),
    )


# --- item 13: the fp16-on-CPU refusal names real options ---------------------------------------------


def test_fp16_on_cpu_suggests_options_train_mrpc_has(monkeypatch):
    from train_mrpc.launch import check_launch

    monkeypatch.delenv("WORLD_SIZE", raising=False)
    accelerator = SimpleNamespace(num_processes=1, device=SimpleNamespace(type="cpu"), mixed_precision="fp16")
    with pytest.raises(UserError) as err:
        check_launch(accelerator)
    assert "--precision bf16" in str(err.value) and "accelerate_configs/bf16.yaml" in str(err.value)
    assert "--mixed_precision" not in str(err.value)


# --- item 14: integer checkpointing_steps in config files ---------------------------------------------


@pytest.mark.parametrize(
    "name, text, expected",
    [
        ("run.yaml", "checkpointing_steps: 5\n", "5"),
        ("run.json", '{"checkpointing_steps": 200}', "200"),
        ("run.yaml", "checkpointing_steps: no\n", "no"),  # YAML 1.1 reads the documented `no` as false
        ("run.yaml", "checkpointing_steps: epoch\n", "epoch"),
    ],
)
def test_checkpointing_steps_accepts_integers_in_config_files(tmp_path, name, text, expected):
    path = tmp_path / name
    path.write_text(text)
    config = parse_config(["--config", str(path)])
    assert config.checkpointing_steps == expected
    assert parse_config(["--config", str(config.save(tmp_path))]) == config  # and it replays


@pytest.mark.parametrize(
    "text, shown",
    [
        ("checkpointing_steps: 0\n", "'0'"),
        ("checkpointing_steps: yes\n", "True"),
        ("checkpointing_steps: 2.5\n", "2.5"),
    ],
)
def test_bad_checkpointing_steps_in_config_files_are_named(tmp_path, capsys, text, shown):
    path = tmp_path / "run.yaml"
    path.write_text(text)
    main_error(["--config", path], capsys, f"--checkpointing_steps {shown} is invalid", "'epoch' or 'no'")


# --- item 15: a JSON object where a list was expected ---------------------------------------------------


def test_pretty_printed_json_object_says_what_was_expected(tmp_path):
    path = tmp_path / "train.json"
    path.write_text(json.dumps({"sentence1": "a.", "sentence2": "b.", "label": 1}, indent=2))
    with pytest.raises(UserError) as err:
        load_raw_splits(file_config(tmp_path, path))
    message = str(err.value)
    assert f"{path}: holds one JSON object" in message and "a JSON list of objects" in message
    assert "JSON lines" in message and "not valid JSON" not in message


def test_broken_json_lines_say_what_was_expected(tmp_path):
    path = tmp_path / "train.json"
    path.write_text('{"sentence1": "a.",\n "sentence2": "b.", "label": 1\n')  # neither one object nor JSON lines
    with pytest.raises(UserError, match=r"train.json: line 1 is not valid JSON .*expected a JSON list of objects"):
        load_raw_splits(file_config(tmp_path, path))


# --- item 16: argparse errors in one line ------------------------------------------------------------


@pytest.mark.parametrize(
    "args, fragments",
    [
        (["--learning_rat", "1e-4"], ("unrecognized arguments: --learning_rat 1e-4", "train-mrpc --help")),
        (["--per_device_train_batch_size", "eight"], ("--per_device_train_batch_size", "'eight'", "train-mrpc --help")),
        (["--lr_scheduler_type", "sawtooth"], ("--lr_scheduler_type", "'sawtooth'", "train-mrpc --help")),
        (["reproduce", "--num_seeds", "x"], ("--num_seeds", "'x'", "train-mrpc reproduce --help")),
    ],
)
def test_argparse_errors_are_one_line_with_a_pointer_to_help(tmp_path, args, fragments):
    line = cli_error(tmp_path, *args, fragments=fragments)
    assert "usage:" not in line


def test_help_still_prints_the_usage(capsys):
    with pytest.raises(SystemExit) as info:
        main(["--help"])
    assert info.value.code == 0 and "usage: train-mrpc" in capsys.readouterr().out


# --- item 17: --config given a folder ------------------------------------------------------------------


def test_config_folder_is_named(tmp_path, capsys):
    main_error(["--config", tmp_path], capsys, f"config file {tmp_path}: is a folder", "expected a YAML or JSON file")


@pytest.mark.parametrize("kind", ["folder", "fifo"])
def test_data_path_that_is_not_a_file_is_named(tmp_path, kind):
    path = tmp_path / "train.csv"
    path.mkdir() if kind == "folder" else os.mkfifo(path)  # a FIFO without a writer would block a reader forever
    message = "is a folder; expected a data file" if kind == "folder" else "is not a regular file"
    with pytest.raises(UserError, match=f"train.csv: {message}"):
        load_raw_splits(file_config(tmp_path, path))


# --- hostile inputs, round 2: each ran silently wrong, or refused a good file ------------------------------------


def tiny_files(tmp_path: Path, name: str = "pairs.jsonl") -> list:
    """Flags for a one-step run of the tiny model on a small file of pairs (an old build trained on it quickly)."""
    path = pair_file(tmp_path / name, [{"sentence1": "A b.", "sentence2": "B a.", "label": i % 2} for i in range(4)])
    return [
        *TINY[:2],
        "--train_file",
        path,
        "--validation_file",
        path,
        "--output_dir",
        tmp_path / "run",
        "--max_train_steps",
        "1",
        "--per_device_train_batch_size",
        "2",
    ]


@pytest.mark.parametrize(
    "flags, flag",
    [
        (["--train_file", "", "--validation_file", ""], "--train_file"),  # trained on the Hub's GLUE MRPC instead
        (["--data_dir", ""], "--data_dir"),  # the same
        (["--data_dir", "  "], "--data_dir"),
        (["--test_file", ""], "--test_file"),  # ran without the test split
        (["--model_name_or_path", ""], "--model_name_or_path"),  # "cannot load tokenizer of model directory ''"
        (["--dataset", ""], "--dataset"),  # "cannot load dataset '/mrpc'"
    ],
    ids=["train_file", "data_dir", "data_dir-spaces", "test_file", "model", "dataset"],
)
def test_an_empty_path_or_name_flag_is_refused(tmp_path, capsys, flags, flag):
    """An unset shell variable (--train_file "$TRAIN") gives an empty value, which read as "not given"."""
    base = tiny_files(tmp_path)
    if flag in ("--train_file", "--data_dir"):
        base = base[:2] + base[6:]  # no data files of its own
    main_error([*base, *flags], capsys, f"{flag} '", "is invalid: expected", "not an empty string")


def test_an_empty_config_flag_is_refused(tmp_path, capsys):
    """--config "$CONFIG" with CONFIG unset: the file was skipped and the run took every default."""
    main_error(
        [*tiny_files(tmp_path), "--config", ""], capsys, "--config '' is invalid: expected a YAML or JSON file path"
    )


def test_a_second_config_file_is_refused(tmp_path, capsys):
    """argparse keeps the last --config: the first file's settings were dropped without a word."""
    first, second = tmp_path / "base.yaml", tmp_path / "lr.yaml"
    first.write_text("seed: 3\n")
    second.write_text("learning_rate: 1.0e-4\n")
    main_error(
        ["--config", first, "--config", second],
        capsys,
        f"--config is given 2 times ('{first}', '{second}'); expected one file",
    )


@pytest.mark.parametrize(
    "text",
    ["", "\n\n", "# learning_rate: 1.0e-4\n", "null\n", "---\n"],
    ids=["empty", "blank", "comments", "null", "document-marker"],
)
def test_a_config_file_without_settings_is_refused(tmp_path, capsys, text):
    """An empty file (cut short by a full disk, or not saved yet) ran every default: bert-base-uncased from the Hub."""
    path = tmp_path / "run.yaml"
    path.write_text(text)
    main_error(["--config", path], capsys, f"config file {path} holds no settings", "({} for none)")


def test_an_explicitly_empty_config_file_is_taken(tmp_path):
    path = tmp_path / "run.json"
    path.write_text("{}\n")
    assert parse_config(["--config", str(path)]) == TrainConfig()


@pytest.mark.parametrize(
    "text, fragment",
    [
        ("seed: 010\n", "line 1: 010 is read by YAML as octal (8)"),
        ("seed: 3\nmax_train_steps: 1:30\n", "line 2: 1:30 is read by YAML as base 60 (90)"),
        ("num_train_epochs: 1:30.0\n", "line 1: 1:30.0 is read by YAML as base 60 (90.0)"),
        ("seed: -0_17\n", "line 1: -0_17 is read by YAML as octal (-15)"),
    ],
)
def test_yaml_octal_and_base_60_numbers_are_refused(tmp_path, capsys, text, fragment):
    """YAML 1.1 (PyYAML) reads a leading zero as octal and a colon as base 60: `seed: 010` ran with seed 8."""
    path = tmp_path / "run.yaml"
    path.write_text(text)
    main_error(["--config", path], capsys, f"config file {path}: {fragment}", "in quotes for text")


def test_yaml_numbers_as_written_are_kept(tmp_path):
    path = tmp_path / "run.yaml"
    path.write_text(
        "seed: 0\nmax_train_steps: 1_000\nlearning_rate: 1.5e-5\nsynthetic_seed: -7\nnum_train_epochs: 0.5\n"
    )
    config = parse_config(["--config", str(path)])
    assert (config.seed, config.max_train_steps, config.learning_rate, config.synthetic_seed) == (0, 1000, 1.5e-5, -7)


@pytest.mark.parametrize(
    "flags, same",
    [
        (
            ["--sentence1_column", "text", "--sentence2_column", "text"],
            "--sentence2_column 'text' names the same column as --sentence1_column",
        ),
        (["--sentence2_column", "label"], "--label_column 'label' names the same column as --sentence2_column"),
    ],
)
def test_one_column_for_two_roles_is_refused(tmp_path, capsys, flags, same):
    """--sentence1_column text --sentence2_column text trained every sentence paired with itself, without a word."""
    path = pair_file(
        tmp_path / "pairs.jsonl", [{"text": "A b.", "sentence2": "B a.", "label": i % 2} for i in range(4)]
    )
    main_error(
        [
            *TINY[:2],
            "--train_file",
            path,
            "--validation_file",
            path,
            "--output_dir",
            tmp_path / "run",
            "--max_train_steps",
            "1",
            *flags,
        ],
        capsys,
        same,
        "expected three different columns",
    )


@pytest.mark.parametrize("name, where", [("pairs.jsonl", "line 2"), ("pairs.json", "record 1")])
def test_a_json_row_that_repeats_a_key_is_refused(tmp_path, capsys, name, where):
    """json.loads keeps the last of two equal keys: {"label": 1, ..., "label": 0} trained as 0."""
    rows = [
        '{"sentence1": "A b.", "sentence2": "B a.", "label": 0}',
        '{"sentence1": "C d.", "label": 1, "sentence2": "D c.", "label": 0}',
    ]
    path = tmp_path / name
    path.write_text("".join(r + "\n" for r in rows) if name.endswith("l") else "[" + ",\n".join(rows) + "]\n")
    main_error(
        [
            *TINY[:2],
            "--train_file",
            path,
            "--validation_file",
            path,
            "--output_dir",
            tmp_path / "run",
            "--max_train_steps",
            "1",
        ],
        capsys,
        f"{path}: {where} repeats the key 'label'",
        "keep one",
    )


@pytest.mark.parametrize(
    "separator", ["\u2028", "\u2029", "\x85"], ids=["line-separator", "paragraph-separator", "nel"]
)
def test_json_lines_whose_text_holds_a_unicode_line_separator_are_read(tmp_path, separator):
    """JSON strings may hold U+2028, U+2029 and U+0085 unescaped (json.dumps(ensure_ascii=False) writes them so), but
    str.splitlines broke the line there: a valid file was "not valid JSON", and later lines' numbers were off."""
    rows = [
        {"sentence1": f"First.{separator}Second.", "sentence2": "B a.", "label": 1},
        {"sentence1": "C d.", "sentence2": "D c.", "label": 0},
    ]
    path = tmp_path / "pairs.jsonl"
    path.write_text("".join(json.dumps(r, ensure_ascii=False) + "\r\n" for r in rows), encoding="utf-8")
    assert load_raw_splits(file_config(tmp_path, path))["train"]["sentence1"] == [f"First.{separator}Second.", "C d."]
    rows.append({"sentence1": "E f.", "sentence2": "F e.", "label": 7})
    path.write_text("".join(json.dumps(r, ensure_ascii=False) + "\n" for r in rows), encoding="utf-8")
    with pytest.raises(UserError, match="pairs.jsonl: line 3: label 7 in column 'label' is invalid"):
        load_raw_splits(file_config(tmp_path, path))


def test_a_header_repeated_inside_a_test_file_is_refused(tmp_path):
    """Two files joined with cat: in a test file (no labels) the second header was one more pair to predict, a line
    of MRPC.tsv for a sentence pair nobody wrote."""
    train = pair_file(
        tmp_path / "train.jsonl", [{"sentence1": "A b.", "sentence2": "B a.", "label": i % 2} for i in range(4)]
    )
    test = tmp_path / "test.csv"
    test.write_text("sentence1,sentence2\nA b.,B a.\nsentence1,sentence2\nC d.,D c.\n")
    config = TrainConfig(
        train_file=str(train), validation_file=str(train), test_file=str(test), output_dir=str(tmp_path)
    )
    with pytest.raises(
        UserError,
        match=r"test.csv: line 3 repeats the header line \(sentence1, sentence2\); expected "
        r"it once, at the top \(were files joined with cat\?\)",
    ):
        load_raw_splits(config)


def test_glue_files_joined_with_cat_are_named_so(tmp_path, capsys):
    """`cat train.tsv dev.tsv`: GLUE's second header (with its byte-order mark) was "label '\\ufeffQuality' is invalid"."""
    from conftest import write_glue_dir

    data = write_glue_dir(tmp_path / "glue", ["1\t1\t2\tA b.\tB a.", "0\t3\t4\tC d.\tD c."])
    (data / "train.tsv").write_bytes((data / "train.tsv").read_bytes() + (data / "dev.tsv").read_bytes())
    main_error(
        [*TINY[:2], "--data_dir", data, "--output_dir", tmp_path / "run", "--max_train_steps", "1"],
        capsys,
        f"{data / 'train.tsv'}: line 4 repeats the header line (Quality, #1 ID",
    )


def test_a_leading_tilde_in_a_path_means_the_home_folder(tmp_path, monkeypatch):
    """The shell expands ~ only at the start of a word: a config file's `output_dir: ~/runs/mrpc` (or
    --output_dir=~/runs/mrpc) wrote the run into a folder named "~" in the current one, and a data file named so
    was "file not found"."""
    home = tmp_path / "home"
    monkeypatch.setenv("HOME", str(home))
    path = pair_file(
        (home / "data").mkdir(parents=True) or home / "data" / "pairs.jsonl",
        [{"sentence1": "A b.", "sentence2": "B a.", "label": i % 2} for i in range(4)],
    )
    config_file = tmp_path / "run.yaml"
    config_file.write_text("output_dir: ~/runs/mrpc\ntrain_file: ~/data/pairs.jsonl\n")
    config = parse_config(["--config", str(config_file), "--validation_file=~/data/pairs.jsonl"])
    assert config.output_dir == str(home / "runs" / "mrpc")
    assert config.train_file == config.validation_file == str(path)
    assert load_raw_splits(config)["train"]["label"] == [0, 1, 0, 1]
    assert parse_config(["--resume_from_checkpoint", "latest"]).resume_from_checkpoint == "latest"
