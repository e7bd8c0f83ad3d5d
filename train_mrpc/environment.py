"""What a result was measured on: hardware, library versions and the code's commit."""

from __future__ import annotations

import datetime
import os
import platform
import subprocess
import sys
import time
from pathlib import Path

REPO_ROOT = Path(__file__).resolve().parents[1]
CPU_FLAGS_OF_INTEREST = (
    "avx",
    "avx2",
    "fma",
    "f16c",
    "avx512f",
    "avx512bw",
    "avx512vl",
    "avx512_vnni",
    "avx512_bf16",
    "avx512_fp16",
    "avx_vnni",
    "amx_tile",
    "amx_bf16",
    "amx_int8",
    "amx_fp16",
    "asimd",
    "sve",
    "sve2",
)


def cpu_info() -> dict:
    model, flags = platform.processor() or platform.machine(), []
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            key, _, value = line.partition(":")
            key = key.strip()
            if key in ("model name", "Model name") and model in ("", platform.machine(), platform.processor()):
                model = value.strip()
            elif key in ("flags", "Features") and not flags:
                flags = value.split()
    except OSError:  # not Linux
        pass
    try:
        usable = len(os.sched_getaffinity(0))
    except AttributeError:
        usable = os.cpu_count()
    return {
        "model": model,
        "logical_cpus": os.cpu_count(),
        "usable_cpus": usable,
        "flags_of_interest": [f for f in CPU_FLAGS_OF_INTEREST if f in flags],
        "load_average_1m": load_average(),
    }


def load_average() -> float | None:
    """The 1-minute load average: above the core count, other work shared the CPU during the measurement."""
    return os.getloadavg()[0] if hasattr(os, "getloadavg") else None


def _busy_seconds() -> float | None:
    """CPU seconds all processes have spent busy since boot (Linux /proc/stat), or None elsewhere."""
    try:
        fields = Path("/proc/stat").read_text().split("\n", 1)[0].split()[1:]
    except OSError:
        return None
    user, nice, system, _idle, _iowait, irq, softirq, steal = (int(x) for x in fields[:8])
    return (user + nice + system + irq + softirq + steal) / os.sysconf("SC_CLK_TCK")


def _own_seconds() -> float:
    t = os.times()
    return t.user + t.system + t.children_user + t.children_system


class OtherCpu:
    """CPU used by other processes while the block runs, in cores (0: this process was alone; 1: another
    process kept one core busy). ``.cores`` is None where /proc/stat is unavailable."""

    def __enter__(self):
        self._busy, self._own, self._wall = _busy_seconds(), _own_seconds(), time.perf_counter()
        return self

    def __exit__(self, *exc) -> None:
        busy, wall = _busy_seconds(), time.perf_counter() - self._wall
        if busy is None or self._busy is None or wall <= 0:
            self.cores = None
        else:
            self.cores = round(max(0.0, (busy - self._busy - (_own_seconds() - self._own)) / wall), 4)


def own_checkout() -> Path | None:
    """The git checkout of this project that the package is imported from, or None.

    Only the folder above ``train_mrpc`` counts, and only when it is the top of a git work tree and its
    pyproject.toml names this project: an installed wheel lives in site-packages, which may sit inside some
    other repository (a user's project with its virtual environment, a --target folder under a checkout), and
    git, asked from there, answers with that repository's commit, which says nothing about this code.
    """
    root = REPO_ROOT
    try:
        text = (root / "pyproject.toml").read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError):
        return None
    try:
        import tomllib

        name = tomllib.loads(text).get("project", {}).get("name")
    except ImportError:  # Python 3.10: the name line of the [project] table is enough here
        import re

        match = re.search(r'^\[project\][^\[]*?^name\s*=\s*"([^"]*)"', text, re.MULTILINE | re.DOTALL)
        name = match.group(1) if match else None
    except ValueError:  # tomllib.TOMLDecodeError: not this project's file
        return None
    if name != "train-mrpc" or not (root / "train_mrpc").is_dir():
        return None
    top = _git(root, "rev-parse", "--show-toplevel")
    try:
        return root if top is not None and Path(top).resolve() == root.resolve() else None
    except OSError:
        return None


def _git(cwd: Path, *args) -> str | None:
    """``git ARGS`` run in ``cwd``: its output, or None when git is missing, fails or hangs."""
    # GIT_DIR, GIT_WORK_TREE and the like (set by a hook or a caller's shell) point git at another repository.
    env = {k: v for k, v in os.environ.items() if not k.startswith("GIT_")}
    try:
        out = subprocess.run(["git", *args], cwd=cwd, capture_output=True, text=True, timeout=10, env=env)
    except (OSError, subprocess.TimeoutExpired):
        return None
    return out.stdout.strip() if out.returncode == 0 else None


def git_commit() -> dict:
    """The commit (and dirty flag) of this project's own checkout; both None for an installed package."""
    root = own_checkout()
    if root is None:
        return {"commit": None, "dirty": None}
    commit, status = _git(root, "rev-parse", "HEAD"), _git(root, "status", "--porcelain")
    return {"commit": commit, "dirty": bool(status) if status is not None else None}


def environment() -> dict:
    """Everything a reader needs to compare one record with another: hardware, versions, commit."""
    import importlib.metadata as metadata

    import torch

    versions = {"python": platform.python_version(), "torch": torch.__version__}
    for package in ("transformers", "accelerate", "datasets", "tokenizers", "evaluate", "numpy", "train-mrpc"):
        try:
            versions[package] = metadata.version(package)
        except metadata.PackageNotFoundError:
            versions[package] = None
    cuda = torch.cuda.is_available()
    gpu = None
    if cuda:
        props = torch.cuda.get_device_properties(0)
        gpu = {
            "name": props.name,
            "count": torch.cuda.device_count(),
            "capability": f"{props.major}.{props.minor}",
            "memory_gib": round(props.total_memory / 2**30, 1),
            "cuda": torch.version.cuda,
            "cudnn": torch.backends.cudnn.version(),
            "tf32_matmul": torch.backends.cuda.matmul.allow_tf32,
        }
    cpu = cpu_info()
    return {
        "device": "cuda" if cuda else "cpu",
        "device_name": gpu["name"] if gpu else f"{cpu['model']} ({cpu['usable_cpus']} CPUs)",
        "cpu": cpu,
        "gpu": gpu,
        "torch_threads": torch.get_num_threads(),
        "tokenizers_parallelism": os.environ.get("TOKENIZERS_PARALLELISM"),
        "platform": platform.platform(),
        "versions": versions,
        "git": git_commit(),
        "command": [Path(sys.argv[0]).name, *sys.argv[1:]],
        "started_utc": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
    }
