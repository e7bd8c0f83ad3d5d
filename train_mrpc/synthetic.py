"""Generated sentence pairs with MRPC's shape, and a tiny random BERT that reads them; all offline.

The pairs copy what matters for training and timing: MRPC's split sizes (3668 / 408 / 1725), its label
balance (67.5 % "equivalent") and its length distribution (bert-base-uncased tokens per pair: mean ~53,
p95 ~74, max ~103). The signal is learnable: a paraphrase keeps most of the first sentence's words, with
some replaced by synonyms, a word dropped and clauses swapped; a non-paraphrase keeps only its opening
(the shared topic, as in MRPC's hard negatives) and continues differently. One seed gives one dataset.
"""

from __future__ import annotations

import random
from pathlib import Path

SPLIT_SIZES = {"train": 3668, "validation": 408, "test": 1725}
POSITIVES = {"train": 2474, "validation": 279, "test": 1147}
TINY_MODEL = "tiny-random-bert"

# Synonym pairs used by paraphrases; both sides are ordinary vocabulary words too.
SYNONYMS = {
    "said": "stated",
    "big": "large",
    "company": "firm",
    "buy": "purchase",
    "rose": "increased",
    "fell": "dropped",
    "shares": "stocks",
    "quick": "fast",
    "began": "started",
    "help": "assist",
    "chief": "head",
    "officials": "authorities",
    "police": "officers",
    "told": "informed",
    "month": "period",
    "plan": "proposal",
    "show": "reveal",
    "about": "roughly",
    "end": "finish",
    "court": "tribunal",
    "agreed": "accepted",
    "money": "funds",
    "deal": "agreement",
    "people": "persons",
    "near": "close",
    "cut": "reduced",
    "strong": "solid",
    "report": "statement",
    "yesterday": "earlier",
    "government": "administration",
    "attack": "assault",
    "killed": "slain",
    "judge": "justice",
    "profit": "earnings",
    "sales": "revenue",
    "announced": "declared",
    "new": "fresh",
    "charged": "accused",
}
WORDS = sorted(
    set(
        """
the a an of to in on for with at by from after before during over under about against between into
through while when where which that who whose this these those his her its their our he she it they we
company government court police officials market shares stock prices investors analysts executives
president minister senator judge jury lawyer director chairman spokesman spokeswoman chief board
bank fund group network computer software service product sales profit revenue loss deal merger
contract plan report statement agency office department state city country region nation border
year month week day quarter morning evening night season percent million billion dollars cents points
said told announced reported added noted confirmed denied charged accused rose fell gained dropped
climbed slipped jumped closed opened traded expected agreed refused asked wanted planned began ended
found killed arrested attacked filed signed approved rejected launched released sold bought paid cut
will would could should may might must can did does has have had was were is are be been being
new old big small large strong weak high low early late final first second third last next former
federal local national international public private major minor key top senior recent previous
washington london york california texas iraq china japan europe france germany britain canada
microsoft intel apple google oracle boeing amazon nasdaq dow reuters
not also only still just even more most less than very much many several few some all both each
time case issue problem question decision vote election campaign party law bill tax policy war
troops soldiers forces attack bombing security health hospital patients doctors school students
people workers members families children women men officers victims suspects witnesses
and or but so because although however meanwhile
""".split()
    )
    | set(SYNONYMS)
    | set(SYNONYMS.values())
)
NAMES = "smith johnson brown davis miller wilson moore taylor anderson thomas jackson white harris martin".split()


def _sentence(rng: random.Random, n_words: int, numbers: float = 0.06, names: float = 0.04) -> list[str]:
    words = []
    for i in range(n_words):
        roll = rng.random()
        if roll < numbers:
            words.append(str(rng.choice([rng.randint(2, 99), rng.randint(100, 9999)])))
        elif roll < numbers + names:
            words.append(rng.choice(NAMES).capitalize())
        else:
            word = rng.choice(WORDS)
            words.append(word.capitalize() if i == 0 else word)
        if 3 < i < n_words - 3 and rng.random() < 0.07:
            words.append(",")
    return words


def _detokenize(words: list[str]) -> str:
    text = " ".join(words) + " ."
    return text.replace(" , ", ", ").replace(" .", ".")


def _paraphrase(rng: random.Random, words: list[str]) -> list[str]:
    out = [SYNONYMS.get(w, w) if w in SYNONYMS and rng.random() < 0.6 else w for w in words]
    if len(out) > 8:
        del out[rng.randrange(1, len(out) - 1)]
    if "," in out[2:-2] and rng.random() < 0.5:  # swap the clauses around one comma
        cut = out.index(",", 2)
        out = out[cut + 1 :] + [","] + out[:cut]
    return out


def _non_paraphrase(rng: random.Random, words: list[str]) -> list[str]:
    keep = max(2, int(len(words) * rng.uniform(0.25, 0.45)))
    n_rest = max(3, len(words) - keep + rng.randint(-3, 3))
    # Changed facts, as in MRPC's non-paraphrases: the new part names other figures and people more often.
    return words[:keep] + [w.lower() for w in _sentence(rng, n_rest, numbers=0.2, names=0.15)]


def generate_pairs(split: str, seed: int = 0, size: int | None = None) -> dict[str, list]:
    """One split as columns: sentence1, sentence2, label (1 = equivalent), idx."""
    if split not in SPLIT_SIZES:
        raise ValueError(f"unknown split {split!r}; expected one of {sorted(SPLIT_SIZES)}")
    rng = random.Random(f"{seed}-{split}")
    size = SPLIT_SIZES[split] if size is None else size
    positives = round(size * POSITIVES[split] / SPLIT_SIZES[split])
    labels = [1] * positives + [0] * (size - positives)
    rng.shuffle(labels)
    columns: dict[str, list] = {"sentence1": [], "sentence2": [], "label": [], "idx": []}
    for idx, label in enumerate(labels):
        first = _sentence(rng, min(46, max(6, round(rng.gauss(22.3, 6.0)))))
        second = _paraphrase(rng, first) if label else _non_paraphrase(rng, first)
        columns["sentence1"].append(_detokenize(first))
        columns["sentence2"].append(_detokenize(second))
        columns["label"].append(label)
        columns["idx"].append(idx)
    return columns


def tiny_vocabulary() -> list[str]:
    """A WordPiece vocabulary that covers every generated sentence with no [UNK]."""
    specials = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]"]
    pieces = [str(d) for d in range(10)] + [f"##{d}" for d in range(10)] + [",", "."]
    return specials + pieces + sorted({w.lower() for w in WORDS + NAMES})


def build_tiny_model(seed: int = 0, num_labels: int = 2, dropout: float = 0.1):
    """A randomly initialised 2-layer BERT (~13k parameters) and its tokenizer, for tests and smoke runs.

    ``dropout=0`` makes training deterministic across process counts (each process draws its own masks).
    """
    import tempfile

    import torch
    from transformers import AutoModelForSequenceClassification, BertConfig, BertTokenizer

    with tempfile.TemporaryDirectory() as tmp:
        vocab_file = Path(tmp) / "vocab.txt"
        vocab_file.write_text("\n".join(tiny_vocabulary()) + "\n")
        # BertTokenizer(vocab=...) builds the right fast tokenizer; BertTokenizerFast(vocab_file=...)
        # silently builds a wrong one in transformers 5.
        tokenizer = BertTokenizer(vocab=str(vocab_file), model_max_length=128)
    config = BertConfig(
        vocab_size=len(tokenizer),
        hidden_size=16,
        num_hidden_layers=2,
        num_attention_heads=2,
        intermediate_size=32,
        max_position_embeddings=128,
        num_labels=num_labels,
        hidden_dropout_prob=dropout,
        attention_probs_dropout_prob=dropout,
    )
    torch.manual_seed(seed)
    model = AutoModelForSequenceClassification.from_config(config)
    return tokenizer, model


def write_tiny_model(path: str | Path, seed: int = 0, dropout: float = 0.1) -> Path:
    """Save :func:`build_tiny_model` as a model directory that ``from_pretrained`` loads."""
    tokenizer, model = build_tiny_model(seed, dropout=dropout)
    path = Path(path)
    model.save_pretrained(path)
    tokenizer.save_pretrained(path)
    return path
