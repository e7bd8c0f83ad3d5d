"""The shipped MRPC metric scores exactly as GLUE's (accuracy, and scikit-learn's F1 of the positive class)."""

from __future__ import annotations

import random

import pytest
from sklearn.metrics import f1_score

from train_mrpc.evaluation import load_metric


@pytest.mark.parametrize("seed", range(20))
def test_accuracy_and_f1_equal_glues(seed):
    rng = random.Random(seed)
    n = rng.randint(1, 60)
    references = [rng.randint(0, 1) for _ in range(n)]
    predictions = [rng.randint(0, 1) for _ in range(n)]
    scores = load_metric().compute(predictions=predictions, references=references)
    assert scores["accuracy"] == pytest.approx(sum(p == r for p, r in zip(predictions, references)) / n)
    assert scores["f1"] == pytest.approx(f1_score(references, predictions, zero_division=0.0))


@pytest.mark.parametrize(
    "predictions, references, f1",
    [([0, 0, 0], [0, 0, 0], 0.0), ([0, 0], [1, 1], 0.0), ([1, 1], [0, 0], 0.0), ([1, 0], [1, 0], 1.0)],
)
def test_f1_where_it_is_undefined_or_perfect(predictions, references, f1):
    assert load_metric().compute(predictions=predictions, references=references)["f1"] == f1
    assert f1_score(references, predictions, zero_division=0.0) == f1


def test_unequal_lengths_are_an_error():
    with pytest.raises(ValueError, match="3 predictions for 2 references"):
        load_metric().compute(predictions=[0, 1, 1], references=[0, 1])
