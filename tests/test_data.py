"""Data sources, the GLUE reader, bad-file messages, generated pairs, and cached tokenization."""

import json
from pathlib import Path

import pytest
from conftest import SHARED_MRPC, SHARED_TOKENIZER, requires_shared, small_tmpfs, write_glue_dir

from train_mrpc.config import TrainConfig
from train_mrpc.data import (
    load_raw_splits,
    pair_encoder,
    read_delimited,
    read_glue_dir,
    tokenize_dataset,
    tokenize_pairs,
)
from train_mrpc.errors import UserError
from train_mrpc.synthetic import SPLIT_SIZES, generate_pairs

# --- real assets ------------------------------------------------------------------------------


@requires_shared
def test_course_example_pair_tokenizes_like_bert_base_uncased():
    from transformers import AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(SHARED_TOKENIZER)
    encoded = tokenizer("This is the first sentence.", "This is the second one.")
    assert encoded["input_ids"] == [101, 2023, 2003, 1996, 2034, 6251, 1012, 102, 2023, 2003, 1996, 2117, 2028, 1012, 102]
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
        (["1\t1\t2\tA.\tB.", "2\t3\t4\tC.\tD."], "train.tsv: line 3: label '2' in column 'Quality' is invalid; expected 0 or 1"),
        (["yes\t1\t2\tA.\tB."], "label 'yes' in column 'Quality' is invalid"),
        (["1\t1\t2\t\tB."], "train.tsv: line 2: column '#1 String' must be a non-empty string"),
        (["1\t1\t2\tA.\tB.", "0\t3\t4\tC.\t \t "], "train.tsv: line 3 has 6 fields"),
        (["1\t1\t2\tA.\tB.", "0\t3\t4\tC.\t  "], "train.tsv: line 3: column '#2 String' must be a non-empty string, got only whitespace"),
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


def test_label_names_are_accepted(tmp_path):
    path = tmp_path / "train.jsonl"
    path.write_text('{"sentence1": "a.", "sentence2": "b.", "label": "equivalent"}\n'
                    '{"sentence1": "c.", "sentence2": "d.", "label": "not_equivalent"}\n')  # fmt: skip
    assert load_raw_splits(file_config(tmp_path, path, path))["train"]["label"] == [1, 0]


@pytest.mark.parametrize(
    "name, text, message",
    [
        ("t.csv", "sentence1,sentence2\na,b\n", "t.csv: missing column(s) 'label'; found 'sentence1', 'sentence2'"),
        ("t.csv", "sentence1,sentence2,label\na,b,1\nc,d\n", "t.csv: line 3 has 2 fields, expected 3"),
        ("t.csv", "sentence1,sentence2,label\na,b,3\n", "t.csv: line 2: label '3' in column 'label' is invalid"),
        ("t.jsonl", '{"sentence1": "a", "sentence2": "b", "label": 1}\n{"sentence1": "a",\n', "t.jsonl: line 2 is not valid JSON"),
        ("t.jsonl", '{"sentence1": "a", "sentence2": "b", "label": -1}\n', "t.jsonl: line 1: label -1 in column 'label' is invalid"),
        ("t.json", '[{"sentence1": "a", "sentence2": 5, "label": 1}]', "t.json: record 0: column 'sentence2' must be a non-empty string, got 5"),
        ("t.parquet", "not parquet at all", "t.parquet: not a readable parquet file"),
        ("t.xlsx", "x", "unsupported file type '.xlsx'; expected one of .csv, .tsv, .json, .jsonl, .parquet"),
        ("t.csv", "", "t.csv: file is empty"),
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
        with pytest.raises(UserError, match="cannot write the tokenization cache .*/cache/train-.*: no space left on device") as err:
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
    expected = tokenizer(list(raw["train"]["sentence1"]), list(raw["train"]["sentence2"]), truncation=True, max_length=64)
    assert tokenized["train"]["input_ids"] == expected["input_ids"]


def test_tokenizer_without_rust_backend_is_named():
    class PythonOnlyTokenizer:
        truncation_side = "right"

    with pytest.raises(UserError, match="PythonOnlyTokenizer has no Rust `tokenizers` backend"):
        pair_encoder(PythonOnlyTokenizer(), 128)
