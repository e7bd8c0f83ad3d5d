"""Reading the JSON files a run leaves in ``--output_dir``, checked field by field.

The plot, ``reproduce`` (a seed an earlier, interrupted reproduce finished) and ``sweep`` (a trial a worker
finished before it died) read files a user may have edited or a crash may have cut; every flaw ends as one
UserError naming the file, the line and what was expected.
"""

from __future__ import annotations

import sys
from pathlib import Path

from train_mrpc.errors import UserError, json_kind, parse_json, read_text_file
from train_mrpc.schema import ALL_RESULTS, EVAL_LOG


def _number(value) -> bool:
    """A JSON number that matplotlib and the reports can take: an integer beyond a float's range (JSON has no
    limit; "1" and 400 zeros) made the plot stop with an OverflowError."""
    if isinstance(value, float):
        return True
    return isinstance(value, int) and not isinstance(value, bool) and abs(value) <= sys.float_info.max


def _step(value) -> bool:
    """An optimizer step as the run logs it: an integer >= 0."""
    return isinstance(value, int) and not isinstance(value, bool) and 0 <= value <= sys.float_info.max


def _seconds_by_name(value) -> bool:
    """all_results.json's time_breakdown_s: finite numbers by name (a non-finite one cannot set the axis)."""

    from train_mrpc.config import is_finite  # overflow-safe: an int too large for a float is not finite

    return isinstance(value, dict) and all(_number(v) and is_finite(v) for v in value.values())


def _text(value) -> bool:
    return isinstance(value, str)


def _object(value) -> bool:
    return isinstance(value, dict)


EXPECTED = {
    _number: "a number",
    _step: "a step number (an integer >= 0)",
    _seconds_by_name: "an object of finite numbers (seconds by name)",
    _text: "a string",
    _object: "a JSON object",
}

# What the plot reads of each file: (required fields, optional fields), each field with its check. An optional
# field may be absent or null (older logs lack some: grad_norm, grad_norm_max, mfu); what is missing is not drawn.
TRAIN_LOG_FIELDS = (
    {"step": _step, "loss": _number},
    {
        "learning_rate": _number,
        "samples_per_second": _number,
        "grad_norm": _number,
        "grad_norm_max": _number,
        "mfu": _number,
    },
)
EVAL_LOG_FIELDS = ({"step": _step, "eval_loss": _number}, {"eval_accuracy": _number, "eval_f1": _number})
# What reproduce's report draws of each evaluation (accuracy after each epoch): the run always logs both.
CURVE_FIELDS = ({**EVAL_LOG_FIELDS[0], "epoch": _number, "eval_accuracy": _number}, {"eval_f1": _number})
ALL_RESULTS_FIELDS = ({}, {"model": _text, "eval_majority_accuracy": _number, "time_breakdown_s": _seconds_by_name})
TRAIN_CONFIG_FIELDS = ({}, {"max_grad_norm": _number})
# What reproduce's report and sweep's table take from a finished run's all_results.json.
FINISHED_RUN_FIELDS = (
    {
        "eval_accuracy": _number,
        "eval_f1": _number,
        "eval_loss": _number,
        "train_runtime": _number,
        "launch": _object,
        "speed": _object,
    },
    {"eval_majority_accuracy": _number, "train_loss": _number},
)


def _checked(value, where: str, fields: tuple[dict, dict]):
    """``value`` when it is a JSON object whose fields pass their checks; else one UserError naming ``where``."""
    from train_mrpc.config import shown_value

    required, optional = fields
    expected = "a JSON object" + (f" with {' and '.join(map(repr, required))}" if required else "")
    if not isinstance(value, dict):
        raise UserError(f"{where}: expected {expected}, got {json_kind(value)}")
    missing = [key for key in required if key not in value]
    if missing:
        raise UserError(
            f"{where}: expected {expected}; {' and '.join(map(repr, missing))} "
            f"{'is' if len(missing) == 1 else 'are'} missing"
        )
    for key, check in (*required.items(), *optional.items()):
        if key in value and not check(value[key]) and not (key in optional and value[key] is None):
            raise UserError(
                f"{where}: {key!r} is {shown_value(value[key])}; expected {EXPECTED[check]}"
                + (" or null" if key in optional else "")
            )
    return value


def read_run_file(path: Path, fields: tuple[dict, dict], lines: bool = False, increasing: bool = False):
    """A run's JSON file (``lines``: JSON-lines log, one object per line), checked against ``fields`` (required,
    optional); every flaw ends as one UserError naming the file, the line and what was expected. An absent file
    reads as no lines, or as an empty object. ``increasing``: each line's step must be above the one before."""
    if not path.exists():
        return [] if lines else {}
    text = read_text_file(path, str(path), "a JSON-lines log" if lines else "a JSON file")
    if not lines:
        return _checked(parse_json(text, str(path), "a JSON object"), str(path), fields)
    expected = f"a JSON object with {' and '.join(map(repr, fields[0]))}"
    rows, previous = [], None
    for number, line in enumerate(text.split("\n"), start=1):
        if not line.strip():
            continue
        rows.append(_checked(parse_json(line, str(path), expected, first_line=number), f"{path} line {number}", fields))
        # A run logs each step once, in order (a resume trims its logs to the checkpoint first): a step that goes
        # back or repeats is two runs' logs joined or an edit, and its curve would be drawn doubling back on itself.
        if increasing and previous is not None and rows[-1]["step"] <= previous:
            raise UserError(
                f"{path} line {number}: step {rows[-1]['step']} after step {previous}; expected "
                "increasing steps (one line per logged step, as the run writes them)"
            )
        previous = rows[-1]["step"] if increasing else None
    return rows


def read_finished_run(folder: Path, what: str) -> tuple[dict, list[dict]]:
    """(all_results.json, eval_results.jsonl's records) of a run in ``folder`` that an earlier, interrupted
    command finished (``what``: "seed 42"); a damaged or incomplete folder is one UserError that says how to
    run it again."""
    again = f"it holds {what}, finished by an earlier run of this command: delete {folder} to run {what} again"
    try:
        results = read_run_file(folder / ALL_RESULTS, FINISHED_RUN_FIELDS)
        if not (folder / EVAL_LOG).is_file():
            raise UserError(f"{folder / EVAL_LOG}: missing beside {ALL_RESULTS}")
        return results, read_run_file(folder / EVAL_LOG, CURVE_FIELDS, lines=True)
    except UserError as err:
        raise UserError(f"{err}; {again}") from None
