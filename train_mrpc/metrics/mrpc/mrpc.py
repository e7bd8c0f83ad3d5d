"""GLUE MRPC metric (accuracy and binary F1), shipped with train_mrpc so evaluation needs no network.

Same computation as the Hub's ``evaluate.load("glue", "mrpc")``: accuracy, and scikit-learn's F1 of
the positive ("equivalent", 1) class.
"""

import datasets
import evaluate
from sklearn.metrics import f1_score

_DESCRIPTION = "Accuracy and F1 of the 'equivalent' class on GLUE MRPC."
_KWARGS_DESCRIPTION = """
Args:
    predictions: predicted labels, 0 (not_equivalent) or 1 (equivalent).
    references: true labels, 0 or 1.
Returns:
    accuracy: fraction of predictions equal to the references.
    f1: F1 score of class 1.
Example:
    >>> metric = evaluate.load("path/to/train_mrpc/metrics/mrpc")
    >>> metric.compute(predictions=[0, 1, 1], references=[0, 1, 0])
    {'accuracy': 0.6666666666666666, 'f1': 0.6666666666666666}
"""


class Mrpc(evaluate.Metric):
    def _info(self):
        return evaluate.MetricInfo(
            description=_DESCRIPTION,
            citation="Wang et al., GLUE: A Multi-Task Benchmark and Analysis Platform for NLU, 2019.",
            inputs_description=_KWARGS_DESCRIPTION,
            features=datasets.Features({"predictions": datasets.Value("int64"), "references": datasets.Value("int64")}),
        )

    def _compute(self, predictions, references):
        correct = sum(int(p == r) for p, r in zip(predictions, references))
        return {
            "accuracy": correct / len(references),
            "f1": float(f1_score(y_true=references, y_pred=predictions, zero_division=0.0)),
        }
