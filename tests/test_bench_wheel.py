"""`train-mrpc bench` for installed users: the project's wheel, installed outside the source tree, runs the
benchmarks offline from a directory that is not the repository, with no ../shared, and writes the same output.

The wheel is built from a copy of the working tree (pyproject.toml, README.md, train_mrpc/), so the build writes
nothing into the checkout; `pip install --target` puts it in a folder of its own, which PYTHONPATH puts ahead of
the virtual environment's editable install of this checkout. Never asserts a speed.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import zipfile
from pathlib import Path

import pytest
from conftest import ROOT, TEST_ENV
from test_benchmarks import OFFLINE, check_tokenization, check_train_step, run_bench
from test_end_to_end_benchmark import check_end_to_end

WHEEL_FILES = [  # what `train-mrpc bench` needs from the wheel besides the rest of the package
    "train_mrpc/__main__.py", "train_mrpc/cli.py", "train_mrpc/bench/__init__.py", "train_mrpc/bench/common.py",
    "train_mrpc/bench/tokenization.py", "train_mrpc/bench/steps.py", "train_mrpc/bench/end_to_end.py",
    "train_mrpc/bench/tables.py", "train_mrpc/step.py", "train_mrpc/synthetic.py", "train_mrpc/metrics/mrpc/mrpc.py",
]  # fmt: skip


def run(command: list, **kwargs) -> subprocess.CompletedProcess:
    result = subprocess.run([str(c) for c in command], capture_output=True, text=True, timeout=300, **kwargs)
    assert result.returncode == 0, f"{command}: exit {result.returncode}\n{result.stdout[-2000:]}\n{result.stderr[-2000:]}"
    return result


@pytest.fixture(scope="module")
def installed(tmp_path_factory) -> dict:
    """The wheel built and installed into <tmp>/site; a working directory outside the repository; the
    environment that runs Python there (PYTHONPATH=<tmp>/site, offline, no $TRAIN_MRPC_SHARED)."""
    tmp = tmp_path_factory.mktemp("bench-wheel")
    src, dist, site, work = tmp / "src", tmp / "dist", tmp / "site", tmp / "work"
    src.mkdir()
    work.mkdir()
    for name in ("pyproject.toml", "README.md"):
        shutil.copy2(ROOT / name, src / name)
    shutil.copytree(ROOT / "train_mrpc", src / "train_mrpc", ignore=shutil.ignore_patterns("__pycache__", "*.pyc"))
    pip = [sys.executable, "-m", "pip", "--disable-pip-version-check", "--no-input"]
    run([*pip, "wheel", "--no-deps", "--no-build-isolation", "--no-index", "-q", "-w", dist, src])
    wheels = list(dist.glob("train_mrpc-*.whl"))
    assert len(wheels) == 1, wheels
    names = set(zipfile.ZipFile(wheels[0]).namelist())
    assert not [f for f in WHEEL_FILES if f not in names], sorted(names)
    assert any(n.endswith(".dist-info/entry_points.txt") for n in names)
    run([*pip, "install", "--no-deps", "--no-index", "--target", site, wheels[0]])

    env = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "TRAIN_MRPC_SHARED")}
    env.update({**TEST_ENV, **OFFLINE, "PYTHONPATH": str(site)})
    probe = run([sys.executable, "-c", "import train_mrpc, train_mrpc.bench.common as c; "
                 "print(train_mrpc.__file__); print(c.source_checkout()); print(c.default_out())"],
                cwd=work, env=env).stdout.splitlines()  # fmt: skip
    package = Path(probe[0]).resolve()
    assert package.is_relative_to(site.resolve()), f"train_mrpc imported from {package}, not from {site}"
    assert not package.is_relative_to(ROOT)
    assert probe[1:] == ["None", "bench-results"], probe  # installed: no checkout, results in ./bench-results
    return {"site": site, "work": work, "env": env}


def checkout_head() -> str:
    return subprocess.run(["git", "rev-parse", "HEAD"], cwd=ROOT, capture_output=True, text=True).stdout.strip()


def test_installed_tokenization_defaults(installed):
    """No --out, no ../shared: ./bench-results/, generated pairs and the built-in tiny tokenizer."""
    work = installed["work"]
    result, summary = run_bench("tokenization", "--quick", cwd=work, env=installed["env"])
    record = check_tokenization(result, summary, work / "bench-results", cwd=work)
    assert record["settings"]["data_source"].startswith("generated"), record["settings"]["data_source"]
    assert record["settings"]["tokenizer"].startswith("tiny"), record["settings"]["tokenizer"]
    assert record["environment"]["git"]["commit"] != checkout_head()  # not this checkout's commit


def test_installed_steps(installed):
    work = installed["work"]
    out = work / "steps-out"
    result, summary = run_bench("steps", "--quick", "--out", "steps-out", cwd=work, env=installed["env"])
    record = check_train_step(result, summary, out, cwd=work)
    assert record["settings"]["data_source"].startswith("generated") and record["settings"]["tokenizer"].startswith("tiny")


@pytest.mark.slow  # ~40 s: two more training processes, on top of tests/test_end_to_end_benchmark.py's
def test_installed_end_to_end(installed):
    """Its training runs are `python -m train_mrpc` children, which must find the installed package too."""
    work = installed["work"]
    proc = subprocess.run([sys.executable, "-m", "train_mrpc", "bench", "end-to-end", "--quick", "--out", "e2e"],
                          cwd=work, env=installed["env"], capture_output=True, text=True, timeout=600)  # fmt: skip
    record = check_end_to_end(proc, work / "e2e")
    assert record["data"].startswith("synthetic")
    assert sorted(p.name for p in (work / "e2e" / "runs").iterdir()) == ["defaults-seed42", "reference-seed42"]
