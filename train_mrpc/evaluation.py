"""Evaluation: predictions gathered across processes (each example once), scored by the shipped metric."""

from __future__ import annotations

from pathlib import Path

METRIC_DIR = Path(__file__).parent / "metrics" / "mrpc"


def load_metric():
    """The MRPC metric from inside the package: ``evaluate.load("glue", "mrpc")`` would need the Hub."""
    import evaluate

    # keep_in_memory: with the default on-disk cache, processes of one launch fight over a lock file.
    return evaluate.load(str(METRIC_DIR), keep_in_memory=True)


def evaluate_model(model, dataloader, accelerator, metric) -> dict[str, float]:
    """Accuracy, F1 and mean loss over the whole validation set, identical on every process."""
    import torch
    import torch.nn.functional as F

    model.eval()
    predictions, references, losses = [], [], []
    with torch.inference_mode():
        for batch in dataloader:
            logits = model(**{k: v for k, v in batch.items() if k != "labels"}).logits.float()
            loss = F.cross_entropy(logits, batch["labels"], reduction="none")
            # gather_for_metrics drops the samples that padded the last batch on uneven splits.
            preds, labels, loss = accelerator.gather_for_metrics((logits.argmax(-1), batch["labels"], loss))
            predictions.append(preds)
            references.append(labels)
            losses.append(loss)
    model.train()
    predictions, references = torch.cat(predictions).cpu(), torch.cat(references).cpu()
    scores = metric.compute(predictions=predictions.tolist(), references=references.tolist())
    return {**scores, "loss": torch.cat(losses).mean().item(), "num_examples": len(references)}
