"""`train-mrpc bench end-to-end`: the speed comparison runs and writes a complete record (never asserting a speed)."""

import json
import subprocess
from pathlib import Path

import pytest

from train_mrpc.recipes import recipe_values

from conftest import run_in_process


def check_end_to_end(proc: subprocess.CompletedProcess, out: Path) -> dict:
    """A quick end-to-end run's output in ``out`` is complete and well formed; returns its record."""
    assert proc.returncode == 0, proc.stderr[-3000:]
    record = json.loads((out / "end_to_end.json").read_text())
    assert [(r["variant"], r["seed"]) for r in record["runs"]] == [("reference", 42), ("defaults", 42), ("fast", 42)]
    for run in record["runs"]:
        assert run["wall_s"] > run["train_runtime_s"] > 0 and 0 <= run["eval_accuracy"] <= 1
    reference, defaults, _ = (r["speed"] for r in record["runs"])
    assert (reference["precision"], reference["batching"]) == ("fp32", "random")
    assert defaults["batching"] == "length-grouped" and defaults["precision_reason"].startswith("auto")
    assert record["runs"][0]["launch"]["per_device_train_batch_size"] == 16
    fast = json.loads((out / "runs" / "fast-seed42" / "train_config.json").read_text())
    assert fast["recipe"] == "fast" and fast["freeze_word_embeddings"] and fast["eval_strategy"] == "end"
    assert len((out / "runs" / "fast-seed42" / "eval_results.jsonl").read_text().splitlines()) == 1
    versus = record["summary"]["versus_reference"]
    assert set(versus) == {"defaults", "fast"} and all(v["speedup_wall"] > 0 for v in versus.values())
    assert all(set(v["targets_met"]) == {"speedup", "accuracy"} for v in versus.values())
    assert record["environment"]["versions"]["torch"]
    assert (out / "end_to_end.png").read_bytes()[:4] == b"\x89PNG"
    last = json.loads(proc.stdout.strip().splitlines()[-1])
    assert last["benchmark"] == "end_to_end" and "speedup_wall" in last["fast"] and "f1_delta_points" in last["fast"]
    return record


def test_quick_end_to_end_comparison_is_complete(tmp_path):
    """The command in this process (conftest.run_in_process: its stdout, stderr and exit status captured); its
    training runs are `python -m train_mrpc` children all the same, as they are for a user."""
    command = ["bench", "end-to-end", "--quick", "--out", str(tmp_path)]
    first = check_end_to_end(run_in_process(command), tmp_path)

    # --previous keeps the earlier runs, except those --rerun names (variant:seed), which are measured again.
    previous = tmp_path / "previous.json"
    (tmp_path / "end_to_end.json").rename(previous)
    proc = run_in_process([*command, "--previous", str(previous), "--rerun", "defaults:42"])
    kept, measured, kept_fast = check_end_to_end(proc, tmp_path)["runs"]
    assert kept == {**first["runs"][0], "kept_from": str(previous)} and "kept_from" not in measured
    assert kept_fast == {**first["runs"][2], "kept_from": str(previous)}


FAKE_RUN = {
    "wall_s": 2.0,
    "train_runtime_s": 1.0,
    "eval_accuracy": 0.5,
    "eval_f1": 0.5,
    "train_tokens_per_second": 10.0,
}


@pytest.fixture
def fake_runs(monkeypatch) -> list[list[str]]:
    """The training runs replaced (a second instead of minutes): the flags each would have had are collected."""
    from train_mrpc.bench import end_to_end

    commands = []

    def fake_run(variant, seed, flags, out):
        commands.append(flags)
        return {"variant": variant, "seed": seed, **FAKE_RUN}

    monkeypatch.setattr(end_to_end, "run_once", fake_run)
    return commands


def test_quick_honours_model(tmp_path, fake_runs, tiny_model_dir, capsys):
    """--quick picks the tiny model only when --model is left out: it trained tiny-random-bert whatever --model
    named. The runs themselves are replaced (the flags they get are what is checked), so this takes a second."""
    from train_mrpc.cli import main

    commands = fake_runs
    main(["bench", "end-to-end", "--quick", "--model", str(tiny_model_dir), "--out", str(tmp_path / "named")])
    record = json.loads((tmp_path / "named" / "end_to_end.json").read_text())
    assert [c[c.index("--model_name_or_path") + 1] for c in commands] == [str(tiny_model_dir.resolve())] * 3
    assert record["model_label"] == tiny_model_dir.name and record["quick"] is True

    commands.clear()  # left out: the tiny model, as before
    main(["bench", "end-to-end", "--quick", "--out", str(tmp_path / "default")])
    assert [c[c.index("--model_name_or_path") + 1] for c in commands] == ["tiny-random-bert"] * 3
    assert json.loads((tmp_path / "default" / "end_to_end.json").read_text())["model_label"] == "tiny-random-bert"
    capsys.readouterr()


def previous_record(tmp_path, runs: list[dict], **setup) -> Path:
    """An end_to_end.json of a quick run (as --quick writes it, with ``setup`` changed) holding ``runs``."""
    from train_mrpc.bench.end_to_end import VARIANTS

    record = {
        "benchmark": "end_to_end",
        "quick": True,
        "model_label": "tiny-random-bert",
        "data": "synthetic (128 pairs)",
        "epochs": 1.0,
        "learning_rate": 1e-4,
        "variants": VARIANTS,
        "fast_recipe": recipe_values("fast"),
        **setup,
        "runs": runs,
    }
    path = tmp_path / "previous.json"
    path.write_text(json.dumps(record))
    return path


def run_record(variant: str = "defaults", seed: int = 42, **figures) -> dict:
    return {"variant": variant, "seed": seed, **FAKE_RUN, **figures}


@pytest.mark.parametrize(
    "runs, setup, extra, fragments",
    [
        ([run_record(wall_s=float("nan"))], {}, [], ["runs[0].wall_s is nan; expected a number > 0"]),
        ([run_record(wall_s=0)], {}, [], ["runs[0].wall_s is 0; expected a number > 0"]),
        (
            [run_record(), run_record("reference", eval_accuracy=1.5)],
            {},
            [],
            ["runs[1].eval_accuracy is 1.5; expected a number from 0 to 1"],
        ),
        (
            [run_record()],
            {"model_label": "all-MiniLM-L6-v2"},
            [],
            ["its runs measured another setup (model_label 'all-MiniLM-L6-v2', this run 'tiny-random-bert')"],
        ),
        ([run_record()], {"epochs": 3.0, "learning_rate": 2e-5}, [], ["epochs 3.0, this run 1.0; learning_rate 2e-05"]),
        (
            [run_record()],
            {"variants": {"reference": ["--precision", "fp32"], "defaults": []}},
            [],
            ["variants {'reference'"],
        ),
        (
            [run_record()],
            {},
            ["--rerun", "defaults:43"],
            ["--rerun defaults:43: seed 43 is not one of this run's seeds (42)"],
        ),
        (
            [run_record(), run_record("fast")],
            {"fast_recipe": {**recipe_values("fast"), "learning_rate": 2e-4}},
            [],
            [
                "its fast runs trained another --recipe fast "
                f"(learning_rate 0.0002, this run {recipe_values('fast')['learning_rate']})",
                "--rerun fast:42",
            ],
        ),
    ],
    ids=[
        "nan",
        "zero-seconds",
        "accuracy-above-1",
        "other-model",
        "other-epochs-and-lr",
        "other-reference-flags",
        "rerun-of-no-run",
        "fast-runs-of-another-recipe",
    ],
)
def test_previous_runs_that_cannot_be_kept_are_refused_before_any_run(
    tmp_path, fake_runs, capsys, runs, setup, extra, fragments
):
    """A kept run's NaN (or 0 s) stopped the command with a ValueError (ZeroDivisionError) after every new run; runs of
    another model, epochs or reference flags were mixed into the comparison without a word; and --rerun of a
    seed this command does not run was ignored."""
    from train_mrpc.cli import main

    from conftest import assert_one_line_error

    previous = previous_record(tmp_path, runs, **setup)
    with pytest.raises(SystemExit) as info:
        main(["bench", "end-to-end", "--quick", "--previous", str(previous), *extra, "--out", str(tmp_path / "out")])
    captured = capsys.readouterr()
    assert_one_line_error(info.value.code, captured.err, *fragments)
    assert fake_runs == [] and captured.out == "" and not (tmp_path / "out").exists()


def test_previous_of_the_same_setup_elsewhere_is_kept(tmp_path, fake_runs, capsys):
    """The same data in another folder (the machine that measured --previous) is the same setup."""
    from train_mrpc.cli import main

    previous = previous_record(tmp_path, [run_record(wall_s=3.0)], data="synthetic (elsewhere)")
    main(["bench", "end-to-end", "--quick", "--previous", str(previous), "--out", str(tmp_path / "out")])
    runs = json.loads((tmp_path / "out" / "end_to_end.json").read_text())["runs"]
    assert [(r["variant"], r["wall_s"], r.get("kept_from")) for r in runs] == [
        ("reference", 2.0, None),
        ("defaults", 3.0, str(previous)),
        ("fast", 2.0, None),
    ]
    capsys.readouterr()


def test_fast_runs_of_another_recipe_are_measured_again_and_the_others_kept(tmp_path, fake_runs, capsys):
    """After --recipe fast changed, --rerun fast:SEED measures its runs again while the reference and defaults runs
    of the same setup are kept (a 5-seed record grows from a 3-seed one without the reference's hours again)."""
    from train_mrpc.cli import main

    runs = [run_record("reference", wall_s=8.0), run_record(wall_s=3.0), run_record("fast", wall_s=9.0)]
    previous = previous_record(tmp_path, runs, fast_recipe={**recipe_values("fast"), "learning_rate": 2e-4})
    main(
        [
            "bench",
            "end-to-end",
            "--quick",
            "--previous",
            str(previous),
            "--rerun",
            "fast:42",
            "--out",
            str(tmp_path / "o"),
        ]
    )
    runs = json.loads((tmp_path / "o" / "end_to_end.json").read_text())["runs"]
    assert [(r["variant"], r["wall_s"], r.get("kept_from")) for r in runs] == [
        ("reference", 8.0, str(previous)),
        ("defaults", 3.0, str(previous)),
        ("fast", 2.0, None),
    ]
    capsys.readouterr()


def test_bad_input_a_training_run_finds_is_this_commands_one_line(tmp_path, capsys):
    """--model a folder without a model: the first training run said so in one line and exit status 2, and the
    benchmark turned that into "reference seed 42 failed:" and the child's stderr, with exit status 1."""
    from train_mrpc.cli import main

    from conftest import assert_one_line_error

    (tmp_path / "not-a-model").mkdir()
    with pytest.raises(SystemExit) as info:
        main(
            [
                "bench",
                "end-to-end",
                "--model",
                str(tmp_path / "not-a-model"),
                "--data_dir",
                "synthetic",
                "--seeds",
                "1",
                "--out",
                str(tmp_path / "out"),
            ]
        )
    line = assert_one_line_error(info.value.code, capsys.readouterr().err, "not-a-model", "config.json")
    assert line.startswith("train-mrpc: error: reference seed 42: ")


def test_fast_trains_with_its_recipe_and_the_others_with_the_benchs_schedule(
    tmp_path, fake_runs, tiny_model_dir, capsys
):
    """The bench's --learning_rate and --num_train_epochs are the reference setup's: given to "fast" too, they
    would have overridden the recipe being measured (explicit flags win over a recipe)."""
    from train_mrpc.cli import main

    out = tmp_path / "out"
    main(
        [
            "bench",
            "end-to-end",
            "--model",
            str(tiny_model_dir),
            "--data_dir",
            "synthetic",
            "--seeds",
            "1",
            "--out",
            str(out),
        ]
    )
    reference, defaults, fast = fake_runs
    for flags in (reference, defaults):
        assert (
            flags[flags.index("--learning_rate") + 1] == "0.0001"
            and flags[flags.index("--num_train_epochs") + 1] == "3.0"
        )
    assert "--learning_rate" not in fast and "--num_train_epochs" not in fast and fast[-2:] == ["--recipe", "fast"]
    capsys.readouterr()


def test_a_variant_meets_the_accuracy_target_only_if_accuracy_and_f1_both_hold():
    """Issue 28: mean dev accuracy and F1 each at least the reference's minus 0.5 points, and 4x its wall time."""
    from train_mrpc.bench.end_to_end import summarize

    def run(variant, seed, wall, accuracy, f1):
        return {
            **run_record(variant, seed, wall_s=wall, train_runtime_s=wall - 1),
            "eval_accuracy": accuracy,
            "eval_f1": f1,
        }

    runs = [
        run("reference", 42, 401.0, 0.80, 0.86),
        run("reference", 43, 399.0, 0.81, 0.87),
        run("defaults", 42, 130.0, 0.805, 0.865),
        run("defaults", 43, 130.0, 0.805, 0.865),
        run("fast", 42, 99.0, 0.81, 0.858),  # accuracy +0.5 points, F1 -0.7: not as good as the reference
        run("fast", 43, 101.0, 0.81, 0.858),
    ]
    versus = summarize(runs)["versus_reference"]
    assert versus["defaults"]["speedup_wall"] == pytest.approx(400 / 130)
    assert versus["defaults"]["targets_met"] == {"speedup": False, "accuracy": True}
    assert versus["fast"]["speedup_wall"] == pytest.approx(4.0)
    assert versus["fast"]["f1_delta_points"] == pytest.approx(-0.7)
    assert versus["fast"]["targets_met"] == {"speedup": True, "accuracy": False}
