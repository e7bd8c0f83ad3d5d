"""`train-mrpc bench` for installed users: the project's wheel, installed outside the source tree, runs the
benchmarks offline from a directory that is not the repository, with no ../shared, and writes the same output.

The wheel is built from a copy of the working tree (pyproject.toml, README.md, train_mrpc/), so the build writes
nothing into the checkout; `pip install --target` puts it in a folder of its own, which PYTHONPATH puts ahead of
the virtual environment's editable install of this checkout. Never asserts a speed.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import zipfile
from pathlib import Path

import pytest
from test_benchmarks import OFFLINE, check_tokenization, check_train_step, run_bench
from test_end_to_end_benchmark import check_end_to_end

from conftest import ROOT, TEST_ENV

WHEEL_FILES = [  # what `train-mrpc bench` needs from the wheel besides the rest of the package
    "train_mrpc/__main__.py",
    "train_mrpc/cli.py",
    "train_mrpc/bench/__init__.py",
    "train_mrpc/bench/common.py",
    "train_mrpc/bench/tokenization.py",
    "train_mrpc/bench/steps.py",
    "train_mrpc/bench/end_to_end.py",
    "train_mrpc/bench/tables.py",
    "train_mrpc/step.py",
    "train_mrpc/synthetic.py",
    "train_mrpc/graphs.py",
    "train_mrpc/evaluation.py",
]


def run(command: list, **kwargs) -> subprocess.CompletedProcess:
    result = subprocess.run([str(c) for c in command], capture_output=True, text=True, timeout=300, **kwargs)
    assert result.returncode == 0, (
        f"{command}: exit {result.returncode}\n{result.stdout[-2000:]}\n{result.stderr[-2000:]}"
    )
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
    probe = run(
        [
            sys.executable,
            "-c",
            "import train_mrpc, train_mrpc.bench.common as c; "
            "print(train_mrpc.__file__); print(c.source_checkout()); print(c.default_out())",
        ],
        cwd=work,
        env=env,
    ).stdout.splitlines()
    package = Path(probe[0]).resolve()
    assert package.is_relative_to(site.resolve()), f"train_mrpc imported from {package}, not from {site}"
    assert not package.is_relative_to(ROOT)
    assert probe[1:] == ["None", "bench-results"], probe  # installed: no checkout, results in ./bench-results
    return {"site": site, "work": work, "env": env}


def test_installed_tokenization_defaults(installed):
    """No --out, no ../shared: ./bench-results/, generated pairs and the built-in tiny tokenizer."""
    work = installed["work"]
    result, summary = run_bench("tokenization", "--quick", cwd=work, env=installed["env"])
    record = check_tokenization(result, summary, work / "bench-results", cwd=work)
    assert record["settings"]["data_source"].startswith("generated"), record["settings"]["data_source"]
    assert record["settings"]["tokenizer"].startswith("tiny"), record["settings"]["tokenizer"]
    assert record["environment"]["git"] == {"commit": None, "dirty": None}  # an installed package has no commit


def test_installed_steps(installed):
    work = installed["work"]
    out = work / "steps-out"
    result, summary = run_bench("steps", "--quick", "--out", "steps-out", cwd=work, env=installed["env"])
    record = check_train_step(result, summary, out, cwd=work)
    assert record["settings"]["data_source"].startswith("generated") and record["settings"]["tokenizer"].startswith(
        "tiny"
    )


@pytest.mark.slow  # ~40 s: three more training processes, on top of tests/test_end_to_end_benchmark.py's
def test_installed_end_to_end(installed):
    """Its training runs are `python -m train_mrpc` children, which must find the installed package too."""
    work = installed["work"]
    proc = subprocess.run(
        [sys.executable, "-m", "train_mrpc", "bench", "end-to-end", "--quick", "--out", "e2e"],
        cwd=work,
        env=installed["env"],
        capture_output=True,
        text=True,
        timeout=600,
    )
    record = check_end_to_end(proc, work / "e2e")
    assert record["data"].startswith("synthetic")
    assert sorted(p.name for p in (work / "e2e" / "runs").iterdir()) == [
        "defaults-seed42",
        "fast-seed42",
        "reference-seed42",
    ]


def git_repo(folder: Path) -> str:
    """``folder`` made a git repository with one commit; returns its commit."""
    folder.mkdir(parents=True, exist_ok=True)
    git = ["git", "-c", "user.name=t", "-c", "user.email=t@example.com", "-c", "init.defaultBranch=main"]
    run([*git, "init", "-q", folder])
    run([*git, "-C", folder, "commit", "-q", "--allow-empty", "-m", "someone else's project"])
    return run(["git", "-C", folder, "rev-parse", "HEAD"]).stdout.strip()


def recorded_git(package_parent: Path) -> dict:
    """The git record train_mrpc.environment makes when the package is imported from ``package_parent``."""
    shutil.copytree(ROOT / "train_mrpc", package_parent / "train_mrpc", ignore=shutil.ignore_patterns("__pycache__"))
    env = {k: v for k, v in os.environ.items() if not k.startswith("GIT_")}
    code = "import json, train_mrpc.environment as e; print(e.__file__); print(json.dumps(e.git_commit()))"
    lines = run([sys.executable, "-c", code], cwd=package_parent, env={**env, "PYTHONPATH": str(package_parent)}).stdout
    module, record = lines.splitlines()
    assert Path(module).resolve().is_relative_to(package_parent.resolve()), module  # the copy, not this checkout
    return json.loads(record)


@pytest.mark.parametrize("layout", ["site-packages", "other-project", "below-the-top"])
def test_environment_records_no_commit_of_another_repository(tmp_path, layout):
    """A package installed inside someone else's repository (a virtual environment or --target folder in their
    project) recorded that repository's commit as the benchmark's: git answered from the package's folder."""
    repo = tmp_path / "their-project"
    git_repo(repo)
    if layout == "site-packages":
        parent = repo / ".venv" / "lib" / "python3" / "site-packages"
    elif layout == "other-project":  # the package at the top of a repository whose pyproject.toml is another's
        parent = repo
        (repo / "pyproject.toml").write_text('[project]\nname = "their-project"\n')
    else:  # this project's files, but in a sub-folder of the repository, not at the top of a checkout
        parent = repo / "vendored"
        parent.mkdir()
        shutil.copy2(ROOT / "pyproject.toml", parent / "pyproject.toml")
    assert recorded_git(parent) == {"commit": None, "dirty": None}


def test_environment_records_the_commit_of_its_own_checkout(tmp_path):
    """At the top of a git checkout of this project (pyproject.toml names train-mrpc), its commit is recorded."""
    checkout = tmp_path / "checkout"
    commit = git_repo(checkout)
    shutil.copy2(ROOT / "pyproject.toml", checkout / "pyproject.toml")
    record = recorded_git(checkout)
    assert record["commit"] == commit and record["dirty"] is True  # the copied files are not committed
