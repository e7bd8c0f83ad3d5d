"""Data: four sources normalised to one schema, tokenized once (cached), batched with dynamic padding.

Every split comes out as a ``datasets.Dataset`` with columns ``sentence1``, ``sentence2``, ``label``
(ClassLabel ``not_equivalent``/``equivalent``; -1 where a test split has no labels) and ``idx``.
Local files are read and checked row by row in Python (MRPC is small), so a bad file ends with a message
that names the file, line and column instead of a parser traceback.
"""

from __future__ import annotations

import contextlib
import csv
import hashlib
import io
import json
import logging
import unicodedata
from pathlib import Path

from train_mrpc.config import SYNTHETIC, TrainConfig, shown_value
from train_mrpc.errors import UserError, check_readable_file, os_reason, parse_json, read_text_file
from train_mrpc.hub import offline_error
from train_mrpc.schema import LABEL_NAMES

logger = logging.getLogger(__name__)

GLUE_FILES = {"train": "train.tsv", "validation": "dev.tsv", "test": "test.tsv"}
GLUE_HEADER = "Quality\t#1 ID\t#2 ID\t#1 String\t#2 String"
GLUE_COLUMNS = {"sentence1": "#1 String", "sentence2": "#2 String", "label": "Quality", "idx": "index"}
TABLE_SUFFIXES = (".csv", ".tsv", ".json", ".jsonl", ".parquet")

Columns = dict[str, list]


# --- reading files ---------------------------------------------------------------------------------


def _read_text(path: Path) -> str:
    text = read_text_file(path, str(path), "a data file")
    if not text.strip():
        raise UserError(f"{path}: file is empty; expected a header line and at least one row")
    return text


def read_delimited(path: Path, delimiter: str) -> tuple[Columns, list[str]]:
    """Read a CSV/TSV file into columns, plus each row's location ("line N") for error messages.

    TSV is read with quoting off: MRPC sentences contain unbalanced double quotes, which default CSV
    quoting silently swallows (a field starting with '"' loses it) or rejects. CSV keeps standard quoting.
    """
    text = _read_text(path)
    quoting = csv.QUOTE_NONE if delimiter == "\t" else csv.QUOTE_MINIMAL
    reader = csv.reader(io.StringIO(text, newline=""), delimiter=delimiter, quoting=quoting, strict=True)
    # The csv module refuses a field over 131,072 characters as if the file were malformed; a long sentence is
    # not an error (tokenization truncates it to --max_length), so the whole text is the only bound.
    limit = csv.field_size_limit(max(csv.field_size_limit(), len(text)))
    try:
        header = next(reader)
        columns: Columns = {name: [] for name in header}
        locations = []
        for row in reader:
            line = reader.line_num
            if not row or row == [""]:
                continue
            if [row[0].lstrip("\ufeff"), *row[1:]] == header:
                # Files joined with cat (GLUE's own BOM ones too) keep each one's header: in a labelled file its
                # label cell was named as invalid, in a test file it became one more pair to predict.
                raise UserError(
                    f"{path}: line {line} repeats the header line ({', '.join(header)}); expected it "
                    "once, at the top (were files joined with cat?)"
                )
            if len(row) != len(header):
                raise UserError(
                    f"{path}: line {line} has {len(row)} fields, expected {len(header)} like the header "
                    f"({', '.join(header)})"
                )
            for name, value in zip(header, row):
                columns[name].append(value)
            locations.append(f"line {line}")
    except csv.Error as err:
        raise UserError(
            f"{path}: line {reader.line_num}: malformed {'TSV' if delimiter == chr(9) else 'CSV'} ({err})"
        ) from None
    finally:
        csv.field_size_limit(limit)
    if len(header) != len(set(header)):
        raise UserError(f"{path}: the header repeats a column name ({', '.join(header)})")
    return columns, locations


def _is_one_json_object(text: str) -> bool:
    try:
        return isinstance(json.loads(text), dict)
    except (ValueError, RecursionError):
        return False


class _Record(dict):
    """A parsed JSON object that remembers the first key it repeats (json.loads keeps the last value silently:
    a row written {"label": 1, ..., "label": 0} trained as 0)."""

    def __init__(self, pairs: list[tuple]) -> None:
        super().__init__(pairs)
        self.repeated = None
        if len(self) < len(pairs):
            seen = set()
            for key, _ in pairs:
                if key in seen:
                    self.repeated = key
                    break
                seen.add(key)


def read_json(path: Path) -> tuple[Columns, list[str]]:
    """JSON lines (one object per line), or a JSON list of objects."""
    text = _read_text(path)
    records, locations = [], []
    expected = "a JSON list of objects ([{...}, {...}]) or JSON lines (one object per line)"
    if path.suffix == ".jsonl" or not text.lstrip().startswith("["):
        # Lines end at "\n" only: str.splitlines also breaks at U+2028, U+2029 and U+0085, which JSON strings may
        # hold as they are (json.dumps(ensure_ascii=False) writes them so), and a valid line was refused. A "\r"
        # left by CRLF line ends is JSON whitespace.
        for number, line in enumerate(text.split("\n"), start=1):
            if line.strip():
                try:
                    records.append(parse_json(line, str(path), expected, first_line=number, object_pairs_hook=_Record))
                except UserError:
                    if number == 1 and _is_one_json_object(text):  # pretty-printed: valid JSON, not a table
                        raise UserError(f"{path}: holds one JSON object; expected {expected}") from None
                    raise
                locations.append(f"line {number}")
    else:
        records = parse_json(text, str(path), expected, object_pairs_hook=_Record)
        locations = [f"record {i}" for i in range(len(records))]
    columns: Columns = {}
    for record, where in zip(records, locations):
        if not isinstance(record, dict):
            raise UserError(f"{path}: {where} is not a JSON object with named fields")
        if record.repeated is not None:
            raise UserError(
                f"{path}: {where} repeats the key {shown_value(record.repeated)}; JSON readers keep the "
                "last value silently: keep one"
            )
        for name in record:
            columns.setdefault(name, [None] * len(locations))
    for i, record in enumerate(records):
        for name in columns:
            columns[name][i] = record.get(name)
    return columns, locations


def read_parquet(path: Path) -> tuple[Columns, list[str]]:
    import pyarrow.parquet as pq

    check_readable_file(path, str(path), "a data file")
    try:
        table = pq.read_table(path)
    except Exception as err:  # pyarrow raises several types for a bad file
        raise UserError(f"{path}: not a readable parquet file ({' '.join(str(err).split())[:200]})") from None
    return table.to_pydict(), [f"row {i}" for i in range(table.num_rows)]


def read_table(path: Path) -> tuple[Columns, list[str]]:
    suffix = path.suffix.lower()
    if suffix == ".csv":
        return read_delimited(path, ",")
    if suffix == ".tsv":
        return read_delimited(path, "\t")
    if suffix in (".json", ".jsonl"):
        return read_json(path)
    if suffix == ".parquet":
        return read_parquet(path)
    raise UserError(f"{path}: unsupported file type '{suffix}'; expected one of {', '.join(TABLE_SUFFIXES)}")


# --- normalising to one schema --------------------------------------------------------------------


INT32_RANGE = (-(2**31), 2**31 - 1)  # the idx column is stored as int32, like the Hub's GLUE MRPC


def _shown(value) -> str:
    """A cell as its file spells it (JSON, YAML and parquet write booleans true/false), cut short if long."""
    return str(value).lower() if isinstance(value, bool) else shown_value(value)


def _as_integer(value) -> int | None:
    """The integer a cell holds (an int, or an integer-valued number such as 1.0, written as a number or text), else None.

    Booleans are not numbers here: ``int(True)`` would silently make them 1.
    """
    if isinstance(value, bool) or value is None:
        return None
    if isinstance(value, str):  # CSV/TSV cells: "1", or "1.0" as pandas writes a float column
        # int() and float() also read "0_1" as 1 and other scripts' digits ("\u0663" is 3): a cell is ASCII.
        if not value.strip().isascii() or "_" in value:
            return None
        try:
            return int(value)
        except ValueError:
            try:
                value = float(value)
            except ValueError:
                return None
    try:
        number = int(value)
    except (TypeError, ValueError, OverflowError):  # other types, nan, inf
        return None
    return number if number == value else None  # 1.5 is not a label or row id


def _parse_label(value, path: Path, where: str, column: str) -> int:
    expected = f"expected 0 or 1 (or {LABEL_NAMES[0]}/{LABEL_NAMES[1]})"
    if isinstance(value, bool):
        raise UserError(
            f"{path}: {where}: label {_shown(value)} in column '{column}' is a boolean, not a label; {expected}"
        )
    if isinstance(value, str):
        value = value.strip()
        if value in LABEL_NAMES:
            return LABEL_NAMES.index(value)
    label = _as_integer(value)
    if label not in (0, 1):
        raise UserError(f"{path}: {where}: label {_shown(value)} in column '{column}' is invalid; {expected}")
    return label


VISIBLE_CATEGORIES = ("L", "N", "P", "S")  # letters, numbers, punctuation, symbols: what a tokenizer keeps


def _sentence_problem(value) -> str | None:
    """What is wrong with a sentence cell, as the end of "must be a non-empty string, got ...", or None."""
    if not isinstance(value, str) or not value:
        return _shown(value)
    if not value.strip():
        return "only whitespace"
    # Whitespace alone tokenizes to no word at all: the pair would train as [CLS] [SEP] [SEP]. So do zero-width
    # spaces, soft hyphens, NUL, U+FEFF and lone combining marks. (A lone surrogate is named before this.)
    if not any(unicodedata.category(c)[0] in VISIBLE_CATEGORIES for c in value):
        return f"no visible characters ({_shown(value)})"
    return None


def _lone_surrogate(value: str) -> str | None:
    """The first lone surrogate in a string, written as an escape, or None. JSON's \\ud800 escape makes one;
    no UTF-8 text can hold it (pyarrow fails on it later with UnicodeEncodeError)."""
    try:
        value.encode("utf-8")
    except UnicodeEncodeError as err:
        return f"'\\u{ord(value[err.start]):04x}' at character {err.start + 1}"
    return None


def normalise(columns: Columns, locations: list[str], path: Path, names: dict[str, str], labelled: bool) -> Columns:
    """Map source columns (``names``: our column -> theirs) to sentence1/sentence2/label/idx, checking each row."""
    if not columns and not locations:  # an empty JSON list, a parquet file without columns
        raise UserError(f"{path}: no rows; expected at least one example")
    missing = [names[c] for c in ("sentence1", "sentence2") if names[c] not in columns]
    if labelled and names["label"] not in columns:
        missing.append(names["label"])
    if missing:
        found = ", ".join(repr(c) for c in columns) or "no columns"
        raise UserError(f"{path}: missing column(s) {', '.join(repr(m) for m in missing)}; found {found}")
    if not locations:
        raise UserError(f"{path}: no rows after the header; expected at least one example")
    out: Columns = {"sentence1": [], "sentence2": [], "label": [], "idx": []}
    for key in ("sentence1", "sentence2"):
        for value, where in zip(columns[names[key]], locations):
            surrogate = _lone_surrogate(value) if isinstance(value, str) else None
            if surrogate:
                raise UserError(
                    f"{path}: {where}: column '{names[key]}' is not valid Unicode (a lone surrogate "
                    f"{surrogate}); expected text that UTF-8 can hold"
                )
            got = _sentence_problem(value)
            if got is not None:
                raise UserError(f"{path}: {where}: column '{names[key]}' must be a non-empty string, got {got}")
        out[key] = list(columns[names[key]])
    if names["label"] in columns:
        out["label"] = [_parse_label(v, path, w, names["label"]) for v, w in zip(columns[names["label"]], locations)]
    else:
        out["label"] = [-1] * len(locations)
    if names.get("idx") in columns:
        low, high = INT32_RANGE
        seen: dict[int, str] = {}  # row id -> where it was first
        for value, where in zip(columns[names["idx"]], locations):
            row_id = _as_integer(value)
            if row_id is None or not low <= row_id <= high:
                raise UserError(
                    f"{path}: {where}: row id {_shown(value)} in column '{names['idx']}' is invalid; expected an "
                    f"integer from {low} to {high}"
                )
            if not labelled and row_id in seen:  # the test split's predictions (MRPC.tsv): one line per row id
                raise UserError(
                    f"{path}: {where}: row id {_shown(value)} in column '{names['idx']}' repeats the one on "
                    f"{seen[row_id]}; expected each row id once"
                )
            seen[row_id] = where
            out["idx"].append(row_id)
    else:
        out["idx"] = list(range(len(locations)))
    return out


def to_dataset(columns: Columns):
    from datasets import ClassLabel, Dataset, Features, Value

    features = Features(
        sentence1=Value("string"),
        sentence2=Value("string"),
        label=ClassLabel(names=LABEL_NAMES),
        idx=Value("int32"),
    )
    return Dataset.from_dict(columns, features=features)


def _may_exist(path: Path) -> bool:
    """False only when the path is surely absent; when it cannot be checked (a folder that cannot be entered),
    True, so that reading it reports why."""
    try:
        return path.exists()
    except OSError:
        return True


def read_glue_dir(data_dir: str | Path) -> dict[str, Columns]:
    """Read a GLUE MRPC folder: train.tsv and dev.tsv required, test.tsv optional."""
    data_dir = Path(data_dir)
    try:
        is_dir = data_dir.is_dir()
    except OSError as err:  # a folder on the way cannot be entered
        raise UserError(f"--data_dir {data_dir}: cannot read ({os_reason(err)})") from None
    if not is_dir:
        raise UserError(f"--data_dir {data_dir}: not a directory; expected a folder with train.tsv and dev.tsv")
    splits = {}
    for split, name in GLUE_FILES.items():
        path = data_dir / name
        if split == "test" and not _may_exist(path):
            continue
        if not _may_exist(path):
            raise UserError(
                f"{path}: file not found; --data_dir must hold {GLUE_FILES['train']} and {GLUE_FILES['validation']}"
            )
        columns, locations = read_delimited(path, "\t")
        if "#1 String" not in columns:
            raise UserError(f"{path}: header is not GLUE MRPC's; expected '{GLUE_HEADER}'")
        splits[split] = normalise(columns, locations, path, GLUE_COLUMNS, labelled=split != "test")
    return splits


def read_files(config: TrainConfig) -> dict[str, Columns]:
    names = {
        "sentence1": config.sentence1_column,
        "sentence2": config.sentence2_column,
        "label": config.label_column,
        "idx": "idx",
    }
    files = {"train": config.train_file, "validation": config.validation_file, "test": config.test_file}
    splits = {}
    for split, file in files.items():
        if file:
            columns, locations = read_table(Path(file))
            splits[split] = normalise(columns, locations, Path(file), names, labelled=split != "test")
    return splits


def load_hub_dataset(config: TrainConfig):
    from datasets import load_dataset

    name = f"{config.dataset}/{config.dataset_config}"
    try:
        dataset = load_dataset(config.dataset, config.dataset_config)
    except Exception as err:  # ConnectionError offline; DatasetNotFoundError and others otherwise
        raise offline_error("dataset", name, err) from None
    for split in ("train", "validation"):
        if split not in dataset:
            raise UserError(f"Hub dataset {name} has no '{split}' split; found {', '.join(dataset)}")
    missing = {"sentence1", "sentence2", "label", "idx"} - set(dataset["train"].column_names)
    if missing:
        raise UserError(f"Hub dataset {name} lacks column(s) {', '.join(sorted(missing))}; expected GLUE MRPC's schema")
    return dataset


def load_raw_splits(config: TrainConfig):
    """All splits of the chosen source as a DatasetDict in the common schema."""
    from datasets import DatasetDict

    if config.data_dir:
        raw = DatasetDict({split: to_dataset(cols) for split, cols in read_glue_dir(config.data_dir).items()})
    elif config.train_file:
        raw = DatasetDict({split: to_dataset(cols) for split, cols in read_files(config).items()})
    elif config.dataset == SYNTHETIC:
        from train_mrpc.synthetic import SPLIT_SIZES, generate_pairs

        raw = DatasetDict({s: to_dataset(generate_pairs(s, config.synthetic_seed)) for s in SPLIT_SIZES})
    else:
        raw = load_hub_dataset(config)
    for split, limit in (("train", config.max_train_samples), ("validation", config.max_eval_samples)):
        if limit is not None and limit < len(raw[split]):
            raw[split] = raw[split].select(range(limit))
    return raw


# --- tokenization and batching --------------------------------------------------------------------


def _rust_backend(tokenizer):
    backend = getattr(tokenizer, "backend_tokenizer", None)
    if backend is None:
        raise UserError(
            f"tokenizer {type(tokenizer).__name__} has no Rust `tokenizers` backend; train_mrpc "
            "tokenizes with the backend's batch encoder (every BERT-family tokenizer has one)"
        )
    return backend


def pair_encoder(tokenizer, max_length: int):
    """A copy of the tokenizer's Rust backend, set to truncate pairs as ``tokenizer(..., truncation=True)`` does.

    A copy, so the caller's tokenizer is not left truncating (copying BERT's vocabulary takes ~12 ms).
    """
    import tokenizers

    encoder = tokenizers.Tokenizer.from_str(_rust_backend(tokenizer).to_str())
    encoder.no_padding()
    encoder.enable_truncation(max_length, strategy="longest_first", direction=tokenizer.truncation_side)
    return encoder


def tokenize_pairs(batch: dict, encoder, token_type_ids: bool = True) -> dict:
    """Tokenize sentence pairs without padding: batches are padded later, each to its own longest pair.

    Calls the Rust batch encoder directly: ``encode_batch_fast`` skips the character offsets nobody here
    reads, and no per-pair dicts are built. No attention mask is stored: padding builds it. ``token_type_ids``
    only for models that take them (BERT does, DistilBERT and RoBERTa do not).
    """
    encodings = encoder.encode_batch_fast(list(zip(batch["sentence1"], batch["sentence2"])))
    out = {"input_ids": [e.ids for e in encodings]}
    if token_type_ids:
        out["token_type_ids"] = [e.type_ids for e in encodings]
    return out


def _tokenizer_fingerprint(tokenizer, max_length: int, token_type_ids: bool) -> str:
    """Vocabulary, normaliser, special tokens and truncation: everything that decides the stored ids."""
    backend = _rust_backend(tokenizer)
    # Each transformers call leaves its truncation/padding settings on the Rust tokenizer (and sets them again
    # on the next call); they are not its identity, so clear them before serialising (~2 ms for BERT).
    backend.no_truncation()
    backend.no_padding()
    settings = f"{max_length}-{tokenizer.truncation_side}-{token_type_ids}"
    return hashlib.sha256(f"{backend.to_str()}{settings}".encode()).hexdigest()[:16]


def split_fingerprint(dataset) -> str:
    """A hash of the rows' contents, straight from their Arrow data (no conversion to Python objects)."""
    import pyarrow as pa

    table = dataset.select_columns(["sentence1", "sentence2", "label"]).with_format("arrow")[:]
    sink = pa.BufferOutputStream()
    with pa.ipc.new_stream(sink, table.schema) as writer:  # IPC writes only the visible rows of a slice
        writer.write_table(table)
    return hashlib.sha256(sink.getvalue()).hexdigest()[:16]


@contextlib.contextmanager
def _no_temp_files_left(cache_dir: Path):
    """datasets.map writes a cache through a temporary file beside it and leaves it behind when the write fails
    (a full disk: measured): remove the temporary files this step created, then let the error go on."""
    before = set(cache_dir.glob("tmp*"))
    try:
        yield
    except BaseException:
        for leftover in set(cache_dir.glob("tmp*")) - before:
            leftover.unlink(missing_ok=True)
        raise


def tokenize_dataset(raw, tokenizer, max_length: int, cache_dir: str | Path | None = None):
    """Tokenize every split with ``datasets.map(batched=True)``, cached on disk by content.

    The cache key covers the sentences, labels, tokenizer and its truncation, so any change re-tokenizes and
    an unchanged re-run loads the Arrow file instead (memory-mapped).
    """
    import datasets
    import pyarrow as pa
    from datasets import DatasetDict, Features, List, Value

    cache_dir = Path(cache_dir or Path(datasets.config.HF_DATASETS_CACHE) / "train_mrpc")
    cache_dir.mkdir(parents=True, exist_ok=True)
    with_type_ids = "token_type_ids" in tokenizer.model_input_names
    tokenizer_key = _tokenizer_fingerprint(tokenizer, max_length, with_type_ids)
    cache_files = {
        split: cache_dir / f"{split}-{split_fingerprint(dataset)}-{tokenizer_key}.arrow"
        for split, dataset in raw.items()
    }
    encoder = None if all(path.exists() for path in cache_files.values()) else pair_encoder(tokenizer, max_length)
    # Declared output types: without them datasets scans every token in Python to infer them (a third of the
    # cold time). Ids fit int32 for any vocabulary; type ids are 0/1.
    token_features = {"input_ids": List(Value("int32"))}
    if with_type_ids:
        token_features["token_type_ids"] = List(Value("int8"))
    tokenized = {}
    for split, dataset in raw.items():
        kept = {name: feature for name, feature in dataset.features.items() if name not in ("sentence1", "sentence2")}

        def tokenize(encoder):
            return dataset.map(
                tokenize_pairs,
                batched=True,
                batch_size=1000,
                fn_kwargs={"encoder": encoder, "token_type_ids": with_type_ids},
                remove_columns=["sentence1", "sentence2"],
                features=Features(kept | token_features),
                cache_file_name=str(cache_files[split]),
                load_from_cache_file=True,
                new_fingerprint=cache_files[
                    split
                ].stem,  # our key covers the inputs: spares datasets hashing the encoder
                desc=f"Tokenizing {split}",
            )

        cached = cache_files[split].exists()
        try:
            with _no_temp_files_left(cache_dir):
                try:
                    tokenized[split] = tokenize(encoder)
                except (OSError, pa.ArrowException) as err:
                    # A cache file cut short (a full disk, a copy interrupted) fails to load: it is only a
                    # cache, so it is rebuilt. Failing to write one is the user's to see (below).
                    if not cached:
                        raise
                    logger.warning(
                        "tokenization cache %s is unreadable (%s): tokenizing %s again",
                        cache_files[split],
                        " ".join(str(err).split()),
                        split,
                    )
                    cache_files[split].unlink()
                    encoder = encoder or pair_encoder(tokenizer, max_length)
                    tokenized[split] = tokenize(encoder)
        except OSError as err:
            if err.errno is None:
                raise
            raise UserError(
                f"cannot write the tokenization cache {cache_files[split]}: {os_reason(err)}; free space "
                "there, or set HF_DATASETS_CACHE to a folder with room"
            ) from None
        tokenized[split] = tokenized[split].rename_column("label", "labels")
    return DatasetDict(tokenized)


class LengthGroupedSampler:
    """Random megabatches, each sorted by length, cut into global batches: little padding, still shuffled.

    Grouping uses the global batch (per-device x processes x accumulation), so a run on N processes or with
    accumulation sees exactly the batches of one process with the whole batch. The order depends only on
    (seed, epoch): ``set_epoch`` is how Accelerate's loader, and a resumed run, select an epoch.
    """

    def __init__(self, lengths: list[int], global_batch_size: int, seed: int) -> None:
        self.lengths, self.global_batch_size, self.seed, self.epoch = lengths, global_batch_size, seed, 0

    def set_epoch(self, epoch: int) -> None:
        self.epoch = epoch

    def __len__(self) -> int:
        return len(self.lengths)

    def __iter__(self):
        import torch
        from transformers.trainer_pt_utils import get_length_grouped_indices

        generator = torch.Generator().manual_seed(self.seed + self.epoch)
        return iter(get_length_grouped_indices(self.lengths, self.global_batch_size, generator=generator))


def build_dataloaders(
    tokenized,
    tokenizer,
    config: TrainConfig,
    pad_to_multiple_of: int | None,
    num_processes: int = 1,
    pin_memory: bool = False,
):
    """Train, validation and (with --do_predict) test dataloaders; padding is dynamic, per batch."""
    import torch
    from torch.utils.data import DataLoader
    from transformers import DataCollatorWithPadding

    collator = DataCollatorWithPadding(tokenizer, pad_to_multiple_of=pad_to_multiple_of)
    train, validation = (tokenized[split].remove_columns("idx") for split in ("train", "validation"))
    if config.group_by_length:
        global_batch = config.per_device_train_batch_size * num_processes * config.gradient_accumulation_steps
        lengths = [len(ids) for ids in train["input_ids"]]
        order = {"sampler": LengthGroupedSampler(lengths, global_batch, config.seed)}
    else:  # Accelerate swaps this RandomSampler for its seedable one (order from seed and epoch)
        order = {"shuffle": True}
    common = {"collate_fn": collator, "num_workers": config.dataloader_num_workers, "pin_memory": pin_memory}
    # Each loader gets its own generator: without one, every new iterator draws its base seed from the
    # global RNG, so a resumed run (one extra iterator) would shift every dropout mask after it.
    train_loader = DataLoader(
        train,
        batch_size=config.per_device_train_batch_size,
        **order,
        **common,
        generator=torch.Generator().manual_seed(config.seed),
    )
    eval_loader = DataLoader(
        validation, batch_size=config.per_device_eval_batch_size, shuffle=False, **common, generator=torch.Generator()
    )
    test_loader = None
    if config.do_predict and "test" in tokenized:
        test = tokenized["test"].remove_columns(["idx", "labels"])  # GLUE's test labels are hidden (-1)
        test_loader = DataLoader(
            test, batch_size=config.per_device_eval_batch_size, shuffle=False, **common, generator=torch.Generator()
        )
    return train_loader, eval_loader, test_loader
