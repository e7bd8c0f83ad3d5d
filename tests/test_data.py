"""Data sources, the GLUE reader, bad-file messages, generated pairs, and cached tokenization."""

import json
from pathlib import Path

import pytest

from train_mrpc.config import TrainConfig
from train_mrpc.data import (
    load_raw_splits,
    normalise,
    pair_encoder,
    read_delimited,
    read_glue_dir,
    read_table,
    tokenize_dataset,
    tokenize_pairs,
)
from train_mrpc.errors import UserError
from train_mrpc.synthetic import SPLIT_SIZES, generate_pairs

from conftest import SHARED_MRPC, SHARED_TOKENIZER, requires_shared, small_tmpfs, write_glue_dir

# --- real assets ------------------------------------------------------------------------------


@requires_shared
def test_course_example_pair_tokenizes_like_bert_base_uncased():
    from transformers import AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(SHARED_TOKENIZER)
    encoded = tokenizer("This is the first sentence.", "This is the second one.")
    assert encoded["input_ids"] == [
        101,
        2023,
        2003,
        1996,
        2034,
        6251,
        1012,
        102,
        2023,
        2003,
        1996,
        2117,
        2028,
        1012,
        102,
    ]
    assert encoded["token_type_ids"] == [0] * 8 + [1] * 7


@requires_shared
@pytest.mark.parametrize("max_length,side", [(128, "right"), (40, "right"), (40, "left")])
def test_pair_encoder_matches_the_transformers_call_on_real_mrpc(max_length, side):
    """The fast path (Rust batch encoder, no offsets) gives exactly what ``tokenizer(a, b, truncation=True)``
    gives, also when pairs are truncated (max_length 40 cuts most MRPC pairs) and from the left."""
    from transformers import AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(SHARED_TOKENIZER, truncation_side=side)
    train = read_glue_dir(SHARED_MRPC)["train"]
    batch = {"sentence1": train["sentence1"][:500], "sentence2": train["sentence2"][:500]}
    expected = tokenizer(batch["sentence1"], batch["sentence2"], truncation=True, max_length=max_length)
    got = tokenize_pairs(batch, pair_encoder(tokenizer, max_length))
    assert got["input_ids"] == expected["input_ids"]
    assert got["token_type_ids"] == expected["token_type_ids"]
    assert (max_length < 128) == any(len(ids) == max_length for ids in got["input_ids"])


@requires_shared
def test_glue_reader_on_real_mrpc_keeps_every_row_and_byte():
    splits = read_glue_dir(SHARED_MRPC)
    assert {s: len(c["label"]) for s, c in splits.items()} == {"train": 3668, "validation": 408, "test": 1725}
    assert sum(splits["train"]["label"]) == 2474 and sum(splits["validation"]["label"]) == 279
    assert set(splits["test"]["label"]) == {-1}
    assert splits["train"]["label"][0] == 1
    assert splits["train"]["sentence1"][0].startswith('Amrozi accused his brother, whom he called "the witness"')
    for split, name in (("train", "train.tsv"), ("validation", "dev.tsv"), ("test", "test.tsv")):
        lines = (SHARED_MRPC / name).read_bytes().removeprefix(b"\xef\xbb\xbf").rstrip(b"\n").split(b"\n")[1:]
        fields = [line.split(b"\t") for line in lines]
        assert [f[3] for f in fields] == [s.encode() for s in splits[split]["sentence1"]]
        assert [f[4] for f in fields] == [s.encode() for s in splits[split]["sentence2"]]
    assert splits["test"]["idx"][:3] == [0, 1, 2]


# --- GLUE reader: quoting and bad files ---------------------------------------------------------


def test_unbalanced_quotes_survive_unchanged(tmp_path):
    rows = ['1\t1\t2\t"Quoted start, no end.\tHe said "hi".', '0\t3\t4\tAn unclosed " quote.\t"Both" ends "']
    splits = read_glue_dir(write_glue_dir(tmp_path, rows))
    assert splits["train"]["sentence1"] == ['"Quoted start, no end.', 'An unclosed " quote.']
    assert splits["train"]["sentence2"] == ['He said "hi".', '"Both" ends "']


@pytest.mark.parametrize(
    "rows, message",
    [
        (["1\t1\t2\tOnly four fields."], "train.tsv: line 2 has 4 fields, expected 5"),
        (
            ["1\t1\t2\tA.\tB.", "2\t3\t4\tC.\tD."],
            "train.tsv: line 3: label '2' in column 'Quality' is invalid; expected 0 or 1",
        ),
        (["yes\t1\t2\tA.\tB."], "label 'yes' in column 'Quality' is invalid"),
        (["1\t1\t2\t\tB."], "train.tsv: line 2: column '#1 String' must be a non-empty string"),
        (["1\t1\t2\tA.\tB.", "0\t3\t4\tC.\t \t "], "train.tsv: line 3 has 6 fields"),
        (
            ["1\t1\t2\tA.\tB.", "0\t3\t4\tC.\t  "],
            "train.tsv: line 3: column '#2 String' must be a non-empty string, got only whitespace",
        ),
        (
            ["1\t1\t2\tA.\tB.", "0\t3\t4\t\u200b\tD."],
            "train.tsv: line 3: column '#1 String' must be a non-empty string, got no visible characters",
        ),
        (["1\t1\t2\tA.\tB.", "0_1\t3\t4\tC.\tD."], "train.tsv: line 3: label '0_1' in column 'Quality' is invalid"),
        ([], "train.tsv: no rows after the header"),
    ],
)
def test_bad_glue_rows_are_named(tmp_path, rows, message):
    with pytest.raises(UserError, match=None) as err:
        read_glue_dir(write_glue_dir(tmp_path, rows))
    assert message in str(err.value)


def test_a_sentence_longer_than_the_csv_modules_field_limit_is_read(tmp_path):
    """Python's csv refuses fields over 131,072 characters as malformed; tokenization truncates long pairs."""
    import csv

    long_sentence = "word " * 40_000  # 200,000 characters
    path = tmp_path / "train.csv"
    path.write_text(f'sentence1,sentence2,label\n"{long_sentence}",Short.,1\nA.,B.,0\n')
    limit = csv.field_size_limit()
    columns, locations = read_delimited(path, ",")
    assert columns["sentence1"][0] == long_sentence and locations == ["line 2", "line 3"]
    assert csv.field_size_limit() == limit  # the process-wide limit is put back


def test_missing_and_empty_glue_files_are_named(tmp_path):
    with pytest.raises(UserError, match="not a directory"):
        read_glue_dir(tmp_path / "nowhere")
    write_glue_dir(tmp_path, ["1\t1\t2\tA.\tB."])
    (tmp_path / "dev.tsv").unlink()
    with pytest.raises(UserError, match=r"dev.tsv: file not found; --data_dir must hold train.tsv and dev.tsv"):
        read_glue_dir(tmp_path)
    (tmp_path / "dev.tsv").write_text("")
    with pytest.raises(UserError, match=r"dev.tsv: file is empty"):
        read_glue_dir(tmp_path)


def test_non_utf8_bytes_are_located(tmp_path):
    write_glue_dir(tmp_path, ["1\t1\t2\tA.\tB."])
    with open(tmp_path / "train.tsv", "ab") as f:
        f.write(b"0\t3\t4\tCaf\xe9 au lait.\tCoffee.\n")
    with pytest.raises(UserError, match=r"train.tsv: line 3 is not valid UTF-8 \(byte 0xe9"):
        read_glue_dir(tmp_path)


def test_repeated_index_in_a_glue_test_file_is_named(tmp_path):
    """MRPC.tsv writes one prediction per test index: a repeated index would repeat a line of the submission."""
    write_glue_dir(tmp_path, ["1\t1\t2\tA.\tB."])
    header = "index\t#1 ID\t#2 ID\t#1 String\t#2 String\n"
    (tmp_path / "test.tsv").write_text(header + "0\t1\t2\tA.\tB.\n1\t3\t4\tC.\tD.\n0\t5\t6\tE.\tF.\n")
    with pytest.raises(UserError) as err:
        read_glue_dir(tmp_path)
    assert "test.tsv: line 4: row id '0' in column 'index' repeats the one on line 2" in str(err.value)
    (tmp_path / "test.tsv").write_text(header + "0\t1\t2\tA.\tB.\n1\t3\t4\tC.\tD.\n")
    assert read_glue_dir(tmp_path)["test"]["idx"] == [0, 1]


def test_wrong_header_is_named(tmp_path):
    write_glue_dir(tmp_path, ["1\t1\t2\tA.\tB."])
    (tmp_path / "train.tsv").write_text("label\ta\tb\n1\tx\ty\n")
    with pytest.raises(UserError, match="header is not GLUE MRPC's; expected 'Quality"):
        read_glue_dir(tmp_path)


# --- generic files ----------------------------------------------------------------------------


def file_config(tmp_path, train: Path, validation: Path, **kw) -> TrainConfig:
    return TrainConfig(train_file=str(train), validation_file=str(validation), output_dir=str(tmp_path), **kw)


@pytest.mark.parametrize("suffix", [".csv", ".tsv", ".json", ".jsonl", ".parquet"])
def test_every_file_format_reads_to_the_same_schema(tmp_path, suffix):
    import pandas as pd

    frame = pd.DataFrame({"q1": ['"Hi," he said.', "Cats purr."], "q2": ["Hello.", "Dogs bark."], "y": [1, 0]})
    path = tmp_path / f"train{suffix}"
    if suffix == ".csv":
        frame.to_csv(path, index=False)
    elif suffix == ".tsv":
        path.write_text("q1\tq2\ty\n" + "".join(f"{a}\t{b}\t{c}\n" for a, b, c in frame.itertuples(index=False)))
    elif suffix == ".json":
        path.write_text(json.dumps(frame.to_dict(orient="records")))
    elif suffix == ".jsonl":
        frame.to_json(path, orient="records", lines=True)
    else:
        frame.to_parquet(path)
    config = file_config(tmp_path, path, path, sentence1_column="q1", sentence2_column="q2", label_column="y")
    raw = load_raw_splits(config)
    assert raw["train"]["sentence1"] == ['"Hi," he said.', "Cats purr."]
    assert raw["validation"]["label"] == [1, 0] and raw["train"]["idx"] == [0, 1]
    assert raw["train"].features["label"].names == ["not_equivalent", "equivalent"]


PAIRS = [('"Hi," he said.', "Hello, he said.", 1), ("Café crème.", "Dogs bark.", 0), ("Cats purr.", "A cat purrs.", 1)]


def write_pairs(folder: Path, fmt: str, bom: str, newline: str) -> Path:
    """PAIRS as a file of format ``fmt`` (or a GLUE folder), starting with ``bom``, lines ending with ``newline``."""
    folder.mkdir()
    records = [{"sentence1": a, "sentence2": b, "label": y} for a, b, y in PAIRS]
    if fmt == "glue":
        rows = "".join(f"{y}\t{i}\t{i + 1}\t{a}\t{b}\n" for i, (a, b, y) in enumerate(PAIRS))
        texts = {name: "Quality\t#1 ID\t#2 ID\t#1 String\t#2 String\n" + rows for name in ("train.tsv", "dev.tsv")}
    elif fmt == "csv":
        texts = {
            "t.csv": 'sentence1,sentence2,label\n"""Hi,"" he said.","Hello, he said.",1\nCafé crème.,Dogs bark.,0\n'
            "Cats purr.,A cat purrs.,1\n"
        }
    elif fmt == "tsv":
        texts = {"t.tsv": "sentence1\tsentence2\tlabel\n" + "".join(f"{a}\t{b}\t{y}\n" for a, b, y in PAIRS)}
    elif fmt == "json":
        texts = {"t.json": json.dumps(records, indent=2, ensure_ascii=False) + "\n"}
    else:
        texts = {"t.jsonl": "".join(json.dumps(r, ensure_ascii=False) + "\n" for r in records)}
    for name, text in texts.items():
        (folder / name).write_bytes((bom + text.replace("\n", newline)).encode("utf-8"))
    return folder if fmt == "glue" else folder / name


@pytest.mark.parametrize("fmt", ["tsv", "csv", "json", "jsonl", "glue"])
@pytest.mark.parametrize("bom", ["\ufeff", "\ufeff\ufeff"], ids=["bom", "bom-twice"])
def test_a_file_with_byte_order_marks_and_crlf_reads_like_one_without(tmp_path, fmt, bom):
    """Excel and Notepad save UTF-8 with a BOM and CRLF line ends; a BOM file read as plain UTF-8 (the mark kept as
    a character) and saved again with one has two, and the second stuck to the first column's name: "missing
    column(s) 'Quality'; found '\ufeffQuality', ..." or "Unexpected UTF-8 BOM"."""

    def rows(path: Path) -> dict:
        source = {"data_dir": str(path)} if fmt == "glue" else {"train_file": str(path), "validation_file": str(path)}
        raw = load_raw_splits(TrainConfig(output_dir=str(tmp_path / "run"), **source))
        return {split: raw[split].to_dict() for split in raw}

    plain = rows(write_pairs(tmp_path / "plain", fmt, "", "\n"))
    assert plain["train"]["sentence1"] == [a for a, _, _ in PAIRS] and plain["train"]["label"] == [1, 0, 1]
    assert rows(write_pairs(tmp_path / "marked", fmt, bom, "\r\n")) == plain


def test_a_glue_file_with_two_byte_order_marks_trains_through_the_cli(tmp_path, capsys):
    """The issue's case: a GLUE TSV given with --train_file after a round trip through a tool that kept the BOM."""
    from train_mrpc.cli import main

    data = write_pairs(tmp_path / "data", "glue", "\ufeff\ufeff", "\r\n") / "train.tsv"
    main(
        [
            "--model_name_or_path",
            "tiny-random-bert",
            "--train_file",
            str(data),
            "--validation_file",
            str(data),
            "--sentence1_column",
            "#1 String",
            "--sentence2_column",
            "#2 String",
            "--label_column",
            "Quality",
            "--output_dir",
            str(tmp_path / "run"),
            "--max_train_steps",
            "1",
            "--per_device_train_batch_size",
            "2",
        ]
    )
    assert json.loads((tmp_path / "run" / "all_results.json").read_text())["eval_accuracy"] >= 0


def test_label_names_are_accepted(tmp_path):
    path = tmp_path / "train.jsonl"
    path.write_text(
        '{"sentence1": "a.", "sentence2": "b.", "label": "equivalent"}\n'
        '{"sentence1": "c.", "sentence2": "d.", "label": "not_equivalent"}\n'
    )
    assert load_raw_splits(file_config(tmp_path, path, path))["train"]["label"] == [1, 0]


@pytest.mark.parametrize(
    "name, text, message",
    [
        ("t.csv", "sentence1,sentence2\na,b\n", "t.csv: missing column(s) 'label'; found 'sentence1', 'sentence2'"),
        ("t.csv", "sentence1,sentence2,label\na,b,1\nc,d\n", "t.csv: line 3 has 2 fields, expected 3"),
        ("t.csv", "sentence1,sentence2,label\na,b,3\n", "t.csv: line 2: label '3' in column 'label' is invalid"),
        (
            "t.jsonl",
            '{"sentence1": "a", "sentence2": "b", "label": 1}\n{"sentence1": "a",\n',
            "t.jsonl: line 2 is not valid JSON",
        ),
        (
            "t.jsonl",
            '{"sentence1": "a", "sentence2": "b", "label": -1}\n',
            "t.jsonl: line 1: label -1 in column 'label' is invalid",
        ),
        ("t.json", '[{"sentence1": "a", "sentence2": "b", "label": 1},\n', "t.json: line 2 is not valid JSON"),
        ("t.json", "[" * 100_000, "t.json: line 1 is nested too deeply; expected a JSON list of objects"),
        ("t.json", "[" + "1" * 5000 + "]", "t.json: line 1 is not valid JSON (Exceeds the limit (4300 digits)"),
        (
            "t.jsonl",
            '{"sentence1": "a", "sentence2": "b", "label": 1}\n' + "[" * 100_000,
            "t.jsonl: line 2 is nested too deeply",
        ),
        (
            "t.json",
            '[{"sentence1": "a", "sentence2": 5, "label": 1}]',
            "t.json: record 0: column 'sentence2' must be a non-empty string, got 5",
        ),
        ("t.parquet", "not parquet at all", "t.parquet: not a readable parquet file"),
        ("t.xlsx", "x", "unsupported file type '.xlsx'; expected one of .csv, .tsv, .json, .jsonl, .parquet"),
        ("t.csv", "", "t.csv: file is empty"),
        ("t.json", "[]", "t.json: no rows; expected at least one example"),
        ("t.json", "[\n]\n", "t.json: no rows; expected at least one example"),
        ("t.jsonl", "{}\n", "t.jsonl: missing column(s) 'sentence1', 'sentence2', 'label'; found no columns"),
    ],
)
def test_bad_files_are_named(tmp_path, name, text, message):
    path = tmp_path / name
    path.write_text(text)
    with pytest.raises(UserError) as err:
        load_raw_splits(file_config(tmp_path, path, path))
    assert message in str(err.value)


def test_missing_file_is_named(tmp_path):
    with pytest.raises(UserError, match=r"nope.csv: file not found"):
        load_raw_splits(file_config(tmp_path, tmp_path / "nope.csv", tmp_path / "nope.csv"))


def test_configurable_column_name_is_used_in_messages(tmp_path):
    path = tmp_path / "t.csv"
    path.write_text("a,b,label\nx,y,1\n")
    with pytest.raises(UserError, match="missing column\\(s\\) 'question1', 'question2'"):
        load_raw_splits(file_config(tmp_path, path, path, sentence1_column="question1", sentence2_column="question2"))


COLUMNS = {"sentence1": "sentence1", "sentence2": "sentence2", "label": "label", "idx": "idx"}


def read_rows(path: Path, text: str, labelled: bool = True) -> dict:
    """Write ``text`` to ``path`` and read it as the table reader and normaliser do (no dataset built)."""
    path.write_text(text, encoding="utf-8")
    columns, locations = read_table(path)
    return normalise(columns, locations, path, COLUMNS, labelled=labelled)


def jsonl(*rows: dict) -> str:
    return "".join(json.dumps(row) + "\n" for row in rows)  # json.dumps writes non-ASCII as \uXXXX escapes


@pytest.mark.parametrize(
    "sentence",
    ["\u200b", "\u00ad", "\x00", "\ufeff", "\u0301", "\u2060\u200d", " \u200b\t\u00ad ", "\u202e", "\ue000"],
    ids=[
        "zero-width-space",
        "soft-hyphen",
        "nul",
        "bom",
        "combining-acute",
        "joiners",
        "with-whitespace",
        "bidi",
        "private-use",
    ],
)
def test_sentences_without_visible_characters_are_refused(tmp_path, sentence):
    """They tokenize to no word at all, like whitespace: the pair would train as [CLS] [SEP] [SEP]."""
    text = jsonl(
        {"sentence1": "a.", "sentence2": "b.", "label": 1}, {"sentence1": "c.", "sentence2": sentence, "label": 0}
    )
    with pytest.raises(UserError) as err:
        read_rows(tmp_path / "t.jsonl", text)
    assert "t.jsonl: line 2: column 'sentence2' must be a non-empty string, got no visible characters" in str(err.value)
    str(err.value).encode("utf-8")  # printable as the one error line


def test_sentences_in_any_script_are_kept(tmp_path):
    sentences = [
        "Café crème, s'il vous plaît.",
        "Cafe\u0301 with a combining accent.",
        "我们明天去北京。",
        "東京は晴れです",
        "مرحبا بالعالم",
        "Привет, мир!",
        "नमस्ते दुनिया",
        "🙂",
        "?",
        "42",
        "€",
        "\u200bleading zero-width space",
    ]
    text = jsonl(*({"sentence1": s, "sentence2": s, "label": i % 2} for i, s in enumerate(sentences)))
    out = read_rows(tmp_path / "t.jsonl", text)
    assert out["sentence1"] == out["sentence2"] == sentences
    tsv = "sentence1\tsentence2\tlabel\n" + "".join(f"{s}\t{s}\t1\n" for s in sentences)
    assert read_rows(tmp_path / "t.tsv", tsv)["sentence1"] == sentences


@pytest.mark.parametrize("name, where", [("t.jsonl", "line 2"), ("t.json", "record 1")])
@pytest.mark.parametrize("column, value", [("sentence1", r"\ud800"), ("sentence2", r"a \udc00 b")])
def test_a_lone_surrogate_in_json_is_refused(tmp_path, name, where, column, value):
    """JSON may escape a lone surrogate (\\ud800) that no UTF-8 text can hold: pyarrow failed on it later with
    UnicodeEncodeError."""
    rows = ['{"sentence1": "a.", "sentence2": "b.", "label": 1}', '{"sentence1": "c.", "sentence2": "d.", "label": 0}']
    rows[1] = rows[1].replace('"c."' if column == "sentence1" else '"d."', f'"{value}"')
    text = "".join(r + "\n" for r in rows) if name.endswith("l") else "[" + ",\n".join(rows) + "]"
    with pytest.raises(UserError) as err:
        read_rows(tmp_path / name, text)
    message = str(err.value)
    assert f"{name}: {where}: column '{column}' is not valid Unicode (a lone surrogate '\\u" in message
    message.encode("utf-8")  # printable as the one error line


@pytest.mark.parametrize("field", ["label", "idx"])
def test_a_lone_surrogate_in_a_label_or_row_id_is_shown_escaped(tmp_path, field):
    text = '{"sentence1": "a.", "sentence2": "b.", "label": 1, "idx": 0}\n'
    text += '{"sentence1": "c.", "sentence2": "d.", "label": 0, "idx": 1}\n'.replace(
        f'"{field}": ', f'"{field}": "\\ud800", "x": '
    )
    with pytest.raises(UserError) as err:
        read_rows(tmp_path / "t.jsonl", text)
    assert "t.jsonl: line 2: " in str(err.value) and "'\\ud800'" in str(err.value)
    str(err.value).encode("utf-8")


@pytest.mark.parametrize(
    "label", ["0_1", "1_0", "1_0.0", "\u0663", "\u0661", "\uff11", "1\u0660", "0x1", "nan", "1.5", "true"]
)
def test_labels_that_python_int_would_stretch_are_refused(tmp_path, label):
    """int() reads 0_1 as 1 and Arabic-Indic or full-width digits as numbers: a label file is plain ASCII."""
    with pytest.raises(UserError) as err:
        read_rows(tmp_path / "t.csv", f"sentence1,sentence2,label\na.,b.,1\nc.,d.,{label}\n")
    assert f"t.csv: line 3: label '{label}' in column 'label' is invalid; expected 0 or 1" in str(err.value)


def test_plain_integer_labels_with_surrounding_spaces_are_kept(tmp_path):
    labels = ["1", "0", " 1", "0 ", "+1", "-0", "1.0", "0.0", " 1.0 ", "equivalent", " not_equivalent "]
    text = "sentence1,sentence2,label\n" + "".join(f"a.,b.,{label}\n" for label in labels)
    assert read_rows(tmp_path / "t.csv", text)["label"] == [1, 0, 1, 0, 1, 0, 1, 0, 1, 1, 0]


def test_row_ids_are_plain_ascii_integers(tmp_path):
    text = "sentence1,sentence2,label,idx\na.,b.,1, 7\nc.,d.,0,-3\ne.,f.,1,+4\ng.,h.,0,5.0\n"
    assert read_rows(tmp_path / "t.csv", text)["idx"] == [7, -3, 4, 5]
    for bad in ("1_000", "\u0663", "\uff17"):
        with pytest.raises(UserError, match=f"t.csv: line 3: row id '{bad}' in column 'idx' is invalid"):
            read_rows(tmp_path / "t.csv", f"sentence1,sentence2,label,idx\na.,b.,1,7\nc.,d.,0,{bad}\n")


@pytest.mark.parametrize(
    "name, text, message",
    [
        (
            "t.jsonl",
            jsonl(*({"sentence1": "a.", "sentence2": "b.", "idx": i} for i in (4, 5, 4))),
            "t.jsonl: line 3: row id 4 in column 'idx' repeats the one on line 1",
        ),
        (
            "t.json",
            json.dumps([{"sentence1": "a.", "sentence2": "b.", "idx": i} for i in (4, 5, 6, 5)]),
            "t.json: record 3: row id 5 in column 'idx' repeats the one on record 1",
        ),
        (
            "t.csv",
            "sentence1,sentence2,idx\na.,b.,1\nc.,d.,2\ne.,f.,1.0\n",
            "t.csv: line 4: row id '1.0' in column 'idx' repeats the one on line 2",
        ),
    ],
)
def test_repeated_row_ids_are_named(tmp_path, name, text, message):
    """The test split's row ids index MRPC.tsv: a repeated one would repeat a line of the submission file."""
    with pytest.raises(UserError) as err:
        read_rows(tmp_path / name, text, labelled=False)
    assert message in str(err.value)
    assert "expected each row id once" in str(err.value)


def test_distinct_row_ids_in_any_order_are_kept(tmp_path):
    text = jsonl(*({"sentence1": "a.", "sentence2": "b.", "idx": i} for i in (9, -1, 0, 3)))
    out = read_rows(tmp_path / "t.jsonl", text, labelled=False)
    assert out["idx"] == [9, -1, 0, 3] and out["label"] == [-1] * 4


# --- generated pairs --------------------------------------------------------------------------


def test_synthetic_pairs_have_mrpc_shape_and_are_seeded():
    train = generate_pairs("train", seed=0)
    assert len(train["label"]) == SPLIT_SIZES["train"] == 3668 and sum(train["label"]) == 2474
    validation = generate_pairs("validation", seed=0)
    assert len(validation["label"]) == 408 and sum(validation["label"]) == 279
    assert generate_pairs("validation", seed=0) == validation
    assert generate_pairs("validation", seed=1) != validation
    # Words per pair as a proxy for MRPC's ~53 WordPiece tokens per pair (mean 43 words, with punctuation).
    words = [len(a.split()) + len(b.split()) for a, b in zip(train["sentence1"], train["sentence2"])]
    assert 35 < sum(words) / len(words) < 50


def test_synthetic_paraphrases_share_more_words_than_non_paraphrases():
    pairs = generate_pairs("train", seed=3)

    def overlap(a, b):
        a, b = set(a.lower().split()), set(b.lower().split())
        return len(a & b) / len(a | b)

    by_label = {0: [], 1: []}
    for a, b, label in zip(pairs["sentence1"], pairs["sentence2"], pairs["label"]):
        by_label[label].append(overlap(a, b))
    assert sum(by_label[1]) / len(by_label[1]) > 0.55 > 0.35 > sum(by_label[0]) / len(by_label[0])


# --- tokenization -----------------------------------------------------------------------------


def test_tokenization_is_cached_by_content(tmp_path):
    from train_mrpc.synthetic import build_tiny_model

    tokenizer, _ = build_tiny_model()
    config = TrainConfig(dataset="synthetic", max_train_samples=200, max_eval_samples=50)
    raw = load_raw_splits(config)
    first = tokenize_dataset(raw, tokenizer, max_length=64, cache_dir=tmp_path)
    cached = sorted(p.name for p in tmp_path.glob("*.arrow"))
    assert len(cached) == 3
    second = tokenize_dataset(raw, tokenizer, max_length=64, cache_dir=tmp_path)
    assert second["train"].cache_files[0]["filename"] == first["train"].cache_files[0]["filename"]
    assert second["train"]["input_ids"] == first["train"]["input_ids"]
    assert max(len(ids) for ids in first["train"]["input_ids"]) <= 64
    assert set(first["train"].column_names) == {"input_ids", "token_type_ids", "labels", "idx"}  # mask made by padding
    tokenize_dataset(raw, tokenizer, max_length=32, cache_dir=tmp_path)  # another max_length: new entries
    assert len(list(tmp_path.glob("*.arrow"))) == 6


def test_a_cut_short_tokenization_cache_is_rebuilt(tmp_path, caplog):
    """A cache file cut short (full disk, interrupted copy) made pyarrow raise from datasets.map: it is a cache,
    so the split is tokenized again, with a warning naming the file."""
    from train_mrpc.synthetic import build_tiny_model

    tokenizer, _ = build_tiny_model()
    raw = load_raw_splits(TrainConfig(dataset="synthetic", max_train_samples=200, max_eval_samples=50))
    first = tokenize_dataset(raw, tokenizer, max_length=64, cache_dir=tmp_path)
    expected = {split: first[split]["input_ids"] for split in ("train", "validation")}
    damaged = Path(first["train"].cache_files[0]["filename"])
    del first  # it memory-maps the file: cutting a mapped file short would end this process with SIGBUS
    data = damaged.read_bytes()
    cut = damaged.with_suffix(".cut")
    cut.write_bytes(data[: len(data) // 2])
    cut.replace(damaged)
    with caplog.at_level("WARNING", logger="train_mrpc.data"):
        again = tokenize_dataset(raw, tokenizer, max_length=64, cache_dir=tmp_path)
    assert {split: again[split]["input_ids"] for split in ("train", "validation")} == expected
    assert f"tokenization cache {damaged} is unreadable" in caplog.text and "tokenizing train again" in caplog.text
    assert damaged.stat().st_size == len(data)  # rewritten whole


def test_a_full_disk_while_caching_tokenization_is_one_message_and_leaves_no_temporary_file(tmp_path):
    """datasets.map left its temporary cache file behind on ENOSPC (filling the disk for good) and raised a bare
    OSError; the run now says which file could not be written and what to do, and the folder holds nothing."""
    from train_mrpc.synthetic import build_tiny_model

    tokenizer, _ = build_tiny_model()
    raw = load_raw_splits(TrainConfig(dataset="synthetic", max_train_samples=2000, max_eval_samples=200))
    with small_tmpfs(tmp_path / "disk", "16k") as disk:
        with pytest.raises(
            UserError, match="cannot write the tokenization cache .*/cache/train-.*: no space left on device"
        ) as err:
            tokenize_dataset(raw, tokenizer, max_length=64, cache_dir=disk / "cache")
        assert "HF_DATASETS_CACHE" in str(err.value)
        assert list((disk / "cache").iterdir()) == []


def test_tokenization_leaves_out_token_type_ids_for_models_without_them(tmp_path):
    """DistilBERT/RoBERTa-style tokenizers do not list token_type_ids; passing them would break the model."""
    from train_mrpc.synthetic import build_tiny_model

    tokenizer, _ = build_tiny_model()
    tokenizer.model_input_names = ["input_ids", "attention_mask"]
    raw = load_raw_splits(TrainConfig(dataset="synthetic", max_train_samples=20, max_eval_samples=10))
    tokenized = tokenize_dataset(raw, tokenizer, max_length=64, cache_dir=tmp_path)
    assert set(tokenized["train"].column_names) == {"input_ids", "labels", "idx"}
    expected = tokenizer(
        list(raw["train"]["sentence1"]), list(raw["train"]["sentence2"]), truncation=True, max_length=64
    )
    assert tokenized["train"]["input_ids"] == expected["input_ids"]


def test_tokenizer_without_rust_backend_is_named():
    class PythonOnlyTokenizer:
        truncation_side = "right"

    with pytest.raises(UserError, match="PythonOnlyTokenizer has no Rust `tokenizers` backend"):
        pair_encoder(PythonOnlyTokenizer(), 128)
