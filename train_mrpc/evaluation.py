"""Evaluation and prediction: logits gathered across processes (each example once, in dataset order)."""

from __future__ import annotations

import csv
from pathlib import Path

from train_mrpc.schema import GLUE_PREDICTIONS, TEST_PROBABILITIES

METRIC_DIR = Path(__file__).parent / "metrics" / "mrpc"


def load_metric():
    """The MRPC metric from inside the package: ``evaluate.load("glue", "mrpc")`` would need the Hub."""
    import evaluate

    # keep_in_memory: with the default on-disk cache, processes of one launch fight over a lock file.
    return evaluate.load(str(METRIC_DIR), keep_in_memory=True)


def predict_logits(model, dataloader, accelerator):
    """Logits for every example of ``dataloader``, in order, identical on every process (fp32, on CPU)."""
    import torch

    model.eval()
    logits = []
    with torch.inference_mode():
        for batch in dataloader:
            batch_logits = model(**{k: v for k, v in batch.items() if k != "labels"}).logits.float()
            # gather_for_metrics drops the samples that padded the last batch on uneven splits.
            logits.append(accelerator.gather_for_metrics(batch_logits).cpu())
    model.train()
    return torch.cat(logits)


def score(logits, labels, metric) -> dict[str, float]:
    """Accuracy, F1 and mean cross-entropy of ``logits`` against ``labels``."""
    import torch.nn.functional as F

    scores = metric.compute(predictions=logits.argmax(-1).tolist(), references=labels.tolist())
    return {**scores, "loss": F.cross_entropy(logits, labels).item(), "num_examples": len(labels)}


def evaluate_model(model, dataloader, accelerator, metric) -> dict[str, float]:
    """Accuracy, F1 and mean loss over the whole validation set, identical on every process."""
    import torch

    labels = torch.tensor(dataloader.dataset["labels"])
    return score(predict_logits(model, dataloader, accelerator), labels, metric)


def write_predictions(output_dir: Path, idx: list[int], logits) -> None:
    """GLUE's submission file ``MRPC.tsv`` (index, prediction) and the class probabilities beside it."""
    probabilities = logits.softmax(-1)
    predictions = logits.argmax(-1).tolist()
    with open(output_dir / GLUE_PREDICTIONS, "w", newline="") as f:
        writer = csv.writer(f, delimiter="\t", lineterminator="\n")
        writer.writerow(["index", "prediction"])
        writer.writerows(zip(idx, predictions))
    with open(output_dir / TEST_PROBABILITIES, "w", newline="") as f:
        writer = csv.writer(f, delimiter="\t", lineterminator="\n")
        writer.writerow(["index", "prediction", "p_not_equivalent", "p_equivalent"])
        for i, prediction, (p0, p1) in zip(idx, predictions, probabilities.tolist()):
            writer.writerow([i, prediction, f"{p0:.6f}", f"{p1:.6f}"])
