"""Installs that do not drift: `make setup` installs the tested set in constraints.txt, and the report that
`make test-latest` prints says which packages differ from it."""

import subprocess
import sys
from pathlib import Path

import pytest

from conftest import ROOT

LOCK = ROOT / "constraints.txt"


def compare(lock: Path, *flags: str) -> str:
    return subprocess.run(
        [sys.executable, str(ROOT / "scripts" / "compare_lock.py"), *flags, str(lock)],
        capture_output=True,
        text=True,
        check=True,
    ).stdout


@pytest.mark.skipif(
    Path(sys.prefix).resolve() != (ROOT / ".venv").resolve(),
    reason="not the project's own environment (make setup's .venv)",
)
def test_the_project_environment_holds_the_locked_versions():
    assert compare(LOCK).endswith("the same versions, every package\n"), compare(LOCK)
    # Nothing to remove prints nothing at all (an empty line once read as a package named '').
    assert compare(LOCK, "--unlocked") == ""


def test_the_report_names_each_package_that_differs_from_the_lock(tmp_path):
    from importlib import metadata

    lock = tmp_path / "constraints.txt"
    pytest_version = metadata.version("pytest")
    lock.write_text(f"# comment\npytest==0.0.1  # older\nrich=={metadata.version('rich')}\nno-such-package==1.0\n")
    report = compare(lock).splitlines()
    assert f"  pytest: 0.0.1 -> {pytest_version}" in report
    assert "  no-such-package: 1.0 -> not installed" in report
    assert not any(line.startswith("  rich:") for line in report)
    assert "  torch: not locked -> " + metadata.version("torch") in report
    assert "differ" in report[0]


def test_every_direct_dependency_is_locked():
    """A dependency added to pyproject.toml without re-locking would install its newest release in CI."""
    import re

    import tomllib

    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    wanted = project["dependencies"] + project["optional-dependencies"]["dev"]
    names = {re.split(r"[<>=!~ \[;]", r, maxsplit=1)[0].lower().replace("_", "-") for r in wanted}
    locked = {
        line.split("==")[0].strip().lower().replace("_", "-")
        for line in LOCK.read_text().splitlines()
        if "==" in line and not line.startswith("#")
    }
    assert names <= locked, f"not in constraints.txt: {sorted(names - locked)}"


def test_packages_the_lock_does_not_list_are_named_for_removal(tmp_path):
    """scripts/setup.sh removes what `--unlocked` names after installing the lock: a package an earlier lock held
    (evaluate, once) would otherwise stay importable in an existing .venv, where a fresh clone has none."""
    from importlib import metadata

    lock = tmp_path / "constraints.txt"
    lock.write_text(f"rich=={metadata.version('rich')}\n")
    names = compare(lock, "--unlocked").split()
    assert "pytest" in names and "torch" in names
    assert "rich" not in names and "train-mrpc" not in names and "pip" not in names
