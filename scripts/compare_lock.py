"""Print how this environment's packages differ from a constraints file (the tested set): `make test-latest`.

    python scripts/compare_lock.py constraints.txt
    python scripts/compare_lock.py --unlocked constraints.txt    # only the names installed but not locked

One line per package whose installed version is not the locked one, or that only one side has; exit 0 either way
(the suite that follows is the verdict). ``--unlocked`` is what scripts/setup.sh removes after installing the lock:
a package the lock dropped (evaluate, once) would otherwise stay importable in an existing .venv and hide a
missing dependency that a fresh install would show.
"""

from __future__ import annotations

import re
import sys
from importlib import metadata


def canonical(name: str) -> str:
    return re.sub(r"[-_.]+", "-", name).lower()


def locked_versions(path: str) -> dict[str, str]:
    versions = {}
    for line in open(path, encoding="utf-8"):
        requirement = line.split("#", 1)[0].strip()
        if "==" in requirement:
            name, version = requirement.split("==", 1)
            versions[canonical(name)] = version.strip()
    return versions


def installed_versions() -> dict[str, str]:
    found = {canonical(d.metadata["Name"]): d.version for d in metadata.distributions() if d.metadata["Name"]}
    found.pop("train-mrpc", None)
    for name in ("pip", "setuptools", "wheel"):  # the environment's own tools, never locked
        found.pop(name, None)
    return found


def unlocked(path: str) -> list[str]:
    """Installed packages the lock does not list (the project and pip's own tools aside)."""
    locked = locked_versions(path)
    return sorted(name for name in installed_versions() if name not in locked)


def main(path: str) -> None:
    locked, installed = locked_versions(path), installed_versions()
    changed = []
    for name in sorted(set(locked) | set(installed)):
        old, new = locked.get(name), installed.get(name)
        if old is not None and new is not None and new.split("+")[0] == old.split("+")[0]:
            continue
        changed.append(f"  {name}: {old or 'not locked'} -> {new or 'not installed'}")
    if changed:
        print(f"{sys.prefix} against {path}: {len(changed)} differ", *changed, sep="\n")
    else:
        print(f"{sys.prefix} against {path}: the same versions, every package")


if __name__ == "__main__":
    args = sys.argv[1:]
    if args[:1] == ["--unlocked"]:
        for name in unlocked(args[1] if len(args) > 1 else "constraints.txt"):
            print(name)
    else:
        main(args[0] if args else "constraints.txt")
