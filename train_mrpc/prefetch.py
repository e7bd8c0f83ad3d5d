"""``train-mrpc prefetch``: fill the Hugging Face cache with what a run needs, for offline compute nodes."""

from __future__ import annotations

from train_mrpc.data import load_raw_splits
from train_mrpc.evaluation import load_metric
from train_mrpc.hub import go_offline, is_offline
from train_mrpc.model import load_tokenizer_and_model


def prefetch(config) -> list[tuple[str, str]]:
    """Fill the Hugging Face cache with what a run of ``config`` needs, then load it all with the network off.

    Run it on a node with internet (a login node); compute nodes sharing that cache (HF_HOME) then run with
    HF_HUB_OFFLINE=1. The second, offline pass is the proof: it is exactly what the training run will load.
    """
    if not is_offline():
        load_tokenizer_and_model(config)
        load_raw_splits(config)
    go_offline()
    tokenizer, model = load_tokenizer_and_model(config)
    raw = load_raw_splits(config)
    load_metric()
    sizes = ", ".join(f"{split} {len(ds)}" for split, ds in raw.items())
    return [
        ("model", f"{config.model_name_or_path} ({model.num_parameters():,} parameters)"),
        ("tokenizer", f"{type(tokenizer).__name__}, vocabulary {len(tokenizer)}"),
        ("data", f"{config.data_source}: {sizes}"),
        ("metric", "MRPC accuracy/F1 (shipped with train_mrpc)"),
    ]
