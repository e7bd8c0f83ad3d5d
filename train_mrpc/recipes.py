"""Published MRPC fine-tuning recipes by name: ``--recipe google-bert`` or ``--recipe mosbach-stable``.

A recipe is a set of flag values. ``parse_config`` puts them under everything the user gives: a value from
``--config`` or from an explicit flag wins over the recipe's (``--recipe mosbach-stable --num_train_epochs 5``
is the stable recipe with 5 epochs). The recipe's name is recorded in ``train_config.json`` (``recipe``),
beside every resolved value.

Batch sizes are the papers' global batches; they are set here as ``--per_device_train_batch_size``, which is
the global batch for a one-process run (with N processes, divide it by N to keep the recipe).
"""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class Recipe:
    name: str
    values: dict  # flag name -> value
    source: str
    notes: str = ""


# What both recipes share: BERT's optimisation (length 128, 10 % linear warm-up then linear decay, AdamW with
# weight decay 0.01, betas 0.9/0.999, epsilon 1e-6, global-norm clipping 1.0).
BERT_OPTIMIZATION = {
    "max_length": 128,
    "warmup_ratio": 0.1,
    "num_warmup_steps": None,
    "lr_scheduler_type": "linear",
    "weight_decay": 0.01,
    "adam_beta1": 0.9,
    "adam_beta2": 0.999,
    "adam_epsilon": 1e-6,
    "max_grad_norm": 1.0,
}

RECIPES = {
    recipe.name: recipe
    for recipe in (
        Recipe(
            name="google-bert",
            values={
                "per_device_train_batch_size": 32,
                "learning_rate": 2e-5,
                "num_train_epochs": 3.0,
                **BERT_OPTIMIZATION,
            },
            source="Google's BERT README, MRPC example (github.com/google-research/bert, README.md: "
            "run_classifier.py --max_seq_length=128 --train_batch_size=32 --learning_rate=2e-5 "
            "--num_train_epochs=3.0), with run_classifier.py's warmup_proportion 0.1 and optimization.py's "
            "AdamWeightDecayOptimizer (weight decay 0.01, betas 0.9/0.999, epsilon 1e-6, global-norm clipping 1.0, "
            "linear decay to 0). Reported: 84.55 % dev accuracy for bert-base-uncased, reruns 84-88 %.",
            notes="BERT's optimizer has no Adam bias correction; torch.optim.AdamW always corrects, so this is "
            "the recipe with bias correction (Mosbach et al. find the correction makes runs more stable).",
        ),
        Recipe(
            name="mosbach-stable",
            values={
                "per_device_train_batch_size": 16,
                "learning_rate": 2e-5,
                "num_train_epochs": 20.0,
                **BERT_OPTIMIZATION,
            },
            source="Mosbach, Andriushchenko and Klakow, 'On the Stability of Fine-tuning BERT: Misconceptions, "
            "Explanations, and Strong Baselines', ICLR 2021 (arXiv 2006.04884), section 6: bias-corrected AdamW, "
            "lr 2e-5, 20 epochs, linear warmup over 10 % of the steps then linear decay, batch 16, clipping 1.0; "
            "weight decay 0.01 and epsilon 1e-6 as in their released MRPC config "
            "(github.com/uds-lsv/bert-stable-fine-tuning, examples/bert_stable_fine_tuning/configs/mrpc/"
            "pooler-bert-large-uncased_bsz_16_lr_2e-05_adamW_bias-correct_early-stopping_20.yaml). "
            "Reported for BERT-large on MRPC over 25 seeds: std 0.8 points, against 5.9 with the original recipe.",
            notes="torch.optim.AdamW is bias-corrected. Their released config also evaluates 3 times per epoch and "
            "keeps the best checkpoint by accuracy + F1; here the final model is scored (best_model/ keeps the best "
            "by --metric_for_best_model at each epoch).",
        ),
        Recipe(
            name="fast",
            values={
                "per_device_train_batch_size": 32,
                "learning_rate": 1.5e-4,
                "num_train_epochs": 2.0,
                "dropout": 0.0,
                "freeze_word_embeddings": True,
                "eval_strategy": "end",
                "checkpointing_steps": "no",
            },
            source="This project's measurements for all-MiniLM-L6-v2 on MRPC on a 2-core AMD EPYC (2026-12-06, "
            "benchmarks/results/cpu-2core/fast-recipe/): over 5 seeds end to end, 4.56x the reference's wall time at "
            "0.05 points less dev accuracy and 0.18 less F1 (end_to_end.json). Every configuration tried (batch 16, "
            "32, 64; 2 or 3 epochs; lr 1e-4 to 2e-4; dropout; frozen table; frozen lower layers), what each "
            "measured and why it is in or out: docs/speed.md (--recipe fast) and benchmarks/README.md.",
            notes="What it gives up: no learning curve or best model by epoch (one evaluation, at the end; "
            "best_model/ is the final model) and no resumable checkpoint unless the run is stopped by "
            "SIGTERM/SIGUSR1/Ctrl-C (which still save one): a killed or crashed run starts over. The word-embedding "
            "table keeps its pretrained values, and nothing is dropped out: measured for 2 and 3 epochs (give --dropout 0.1 "
            "back for longer runs). Tuned for all-MiniLM-L6-v2 (lr 1.5e-4); for bert-base give --learning_rate 2e-5.",
        ),
    )
}
RECIPE_NAMES = tuple(RECIPES)


def recipe_values(name: str) -> dict:
    """The flag values of recipe ``name`` (a copy)."""
    return dict(RECIPES[name].values)
