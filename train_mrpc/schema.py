"""Names shared across the package: the task's labels and the files a run writes into ``--output_dir``.

Defined once here (and imported by data, model, training, reporting and reproduce) so that a renamed
file or label cannot drift between the writer and its readers.
"""

from __future__ import annotations

# MRPC's classes, in label-id order: 0 = not a paraphrase, 1 = paraphrase (GLUE's "Quality" column).
LABEL_NAMES = ["not_equivalent", "equivalent"]

# Files in a run's --output_dir.
TRAIN_CONFIG = "train_config.json"
ALL_RESULTS = "all_results.json"
TRAIN_LOG = "train_log.jsonl"
EVAL_LOG = "eval_results.jsonl"
BEST_MODEL_DIR = "best_model"
CHECKPOINTS_DIR = "checkpoints"
GLUE_PREDICTIONS = "MRPC.tsv"
TEST_PROBABILITIES = "test_probabilities.tsv"
TRAINING_CURVES = "training_curves.png"
PREEMPTED = "preempted.json"  # left by a run stopped by SIGTERM/SIGUSR1: launchers report exit 1, not 75
