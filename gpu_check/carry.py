"""The folder carried to an offline GPU machine, and the model conversions both ends need.

``.gpu_carry/`` (git-ignored, built by ``gpu_check/prepare.py`` on a CPU machine) holds:

    wheels/                  what the GPU image lacks (datasets and its small dependencies),
                             requirements.txt (the pins to install) and manifest of what was left out
    mrpc/                    GLUE MRPC train.tsv, dev.tsv, test.tsv (from ../shared/data/mrpc)
    minilm-bf16/             all-MiniLM-L6-v2 with its floating weights in bf16 (45 MB instead of 91 MB),
                             config and tokenizer files; ``upcast`` turns it back into an fp32 model folder
    bert-base-uncased/       bert-base-uncased's config.json and tokenizer files (no weights exist offline)
    manifest.json            sizes, checksums, versions, when and from what it was built

Subcommands (used by check.py in subprocesses, so its own process never imports torch):

    python gpu_check/carry.py upcast SRC DST              bf16 safetensors folder -> fp32 model folder
    python gpu_check/carry.py random-init CONFIG_DIR DST  random-weight model folder from a config + tokenizer
    python gpu_check/carry.py unpack-wheels WHEELS DST    last resort without pip: unzip missing wheels into DST
"""

from __future__ import annotations

import argparse
import hashlib
import json
import shutil
import sys
from pathlib import Path

GPU_CHECK_DIR = Path(__file__).resolve().parent
REPO_ROOT = GPU_CHECK_DIR.parent
CARRY_DIR = REPO_ROOT / ".gpu_carry"
SHARED_DIR = REPO_ROOT.parent / "shared"  # developer machines and CI only; never on the GPU machine
SHARED_MRPC = SHARED_DIR / "data" / "mrpc"
SHARED_BERT = SHARED_DIR / "models" / "bert-base-uncased"

WHEELS, MRPC, MINILM, BERT_BASE = "wheels", "mrpc", "minilm-bf16", "bert-base-uncased"
MANIFEST = "manifest.json"
REQUIREMENTS = "requirements.txt"
MRPC_FILES = ("train.tsv", "dev.tsv", "test.tsv")
WEIGHTS = "model.safetensors"
# Everything of a model folder but its weights: what from_pretrained and AutoTokenizer read.
MODEL_FILES = ("config.json", "tokenizer.json", "tokenizer_config.json", "special_tokens_map.json", "vocab.txt")
BERT_FILES = ("config.json", "tokenizer.json", "tokenizer_config.json", "vocab.txt")


def sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()


def folder_bytes(path: Path) -> int:
    return sum(p.stat().st_size for p in Path(path).rglob("*") if p.is_file() and not p.is_symlink())


def copy_model_files(src: Path, dst: Path, names=MODEL_FILES) -> list[str]:
    """Copy the config/tokenizer files of a model folder that exist; returns their names."""
    dst.mkdir(parents=True, exist_ok=True)
    copied = []
    for name in names:
        if (src / name).is_file():
            shutil.copyfile(src / name, dst / name)
            copied.append(name)
    return copied


def _convert(src: Path, dst: Path, source_dtype, target_dtype) -> dict:
    """Every ``source_dtype`` tensor of SRC/model.safetensors cast to ``target_dtype`` (others unchanged)."""
    import torch
    from safetensors import safe_open
    from safetensors.torch import save_file

    src, dst = Path(src), Path(dst)
    tensors, converted, kept = {}, 0, 0
    with safe_open(str(src / WEIGHTS), framework="pt") as f:
        metadata = f.metadata() or {}
        for key in f.keys():  # noqa: SIM118 (a safetensors file handle, not a dict)
            tensor = f.get_tensor(key)
            if tensor.dtype == source_dtype or (source_dtype is None and tensor.is_floating_point()):
                tensor, converted = tensor.to(target_dtype), converted + 1
            else:
                kept += 1
            tensors[key] = tensor.contiguous()
    if not converted:
        raise SystemExit(f"{src / WEIGHTS}: no {source_dtype or 'floating'} tensors to convert")
    dst.mkdir(parents=True, exist_ok=True)
    save_file(tensors, str(dst / WEIGHTS), metadata={**metadata, "format": "pt"})
    files = copy_model_files(src, dst)
    if "config.json" not in files:
        raise SystemExit(f"{src}: no config.json beside {WEIGHTS}")
    return {
        "tensors_converted": converted,
        "tensors_kept": kept,
        "parameters": sum(t.numel() for t in tensors.values()),
        "weights_bytes": (dst / WEIGHTS).stat().st_size,
        "files": [WEIGHTS, *files],
        "dtype": str(target_dtype),
        "torch": torch.__version__,
    }


def convert_to_bf16(src: Path, dst: Path) -> dict:
    """A model folder with every floating tensor in bf16: half the bytes; ``upcast_to_fp32`` undoes the cast
    exactly up to bf16 rounding (8 bits of mantissa: relative error at most 2^-9 per weight)."""
    import torch

    return _convert(src, dst, None, torch.bfloat16)


def upcast_to_fp32(src: Path, dst: Path) -> dict:
    """The bf16 folder back as fp32, the dtype the project trains in (transformers would otherwise load the
    bf16 file as a bf16 model, which trains in pure bf16 rather than mixed precision)."""
    import torch

    return _convert(src, dst, torch.bfloat16, torch.float32)


def random_init_model(config_dir: Path, dst: Path, seed: int = 0) -> dict:
    """A model folder with random weights from ``config_dir/config.json`` (2 labels) plus its tokenizer files:
    random weights train exactly as fast as pretrained ones."""
    import torch
    from transformers import AutoConfig, AutoModelForSequenceClassification

    config = AutoConfig.from_pretrained(str(config_dir), num_labels=2)
    torch.manual_seed(seed)
    model = AutoModelForSequenceClassification.from_config(config)
    dst = Path(dst)
    model.save_pretrained(str(dst))
    files = copy_model_files(Path(config_dir), dst, names=tuple(n for n in MODEL_FILES if n != "config.json"))
    return {
        "parameters": sum(p.numel() for p in model.parameters()),
        "seed": seed,
        "files": files,
        "weights_bytes": folder_bytes(dst),
    }


def unpack_wheels(wheels: Path, dst: Path) -> list[str]:
    """Unzip every carried wheel whose distribution is not installed into ``dst`` (to put on PYTHONPATH).

    A last resort for an image without a working pip: versions are not resolved, only what is missing added.
    """
    import zipfile
    from importlib import metadata

    dst.mkdir(parents=True, exist_ok=True)
    added = []
    for wheel in sorted(Path(wheels).glob("*.whl")):
        name = wheel.name.split("-")[0]
        try:
            metadata.version(name)
            continue
        except metadata.PackageNotFoundError:
            pass
        with zipfile.ZipFile(wheel) as z:
            z.extractall(dst)
        added.append(wheel.name)
    return added


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = parser.add_subparsers(dest="command", required=True)
    for name in ("upcast", "random-init", "unpack-wheels"):
        p = sub.add_parser(name)
        p.add_argument("src", type=Path)
        p.add_argument("dst", type=Path)
        if name == "random-init":
            p.add_argument("--seed", type=int, default=0)
    args = parser.parse_args(argv)
    if args.command == "upcast":
        result = upcast_to_fp32(args.src, args.dst)
    elif args.command == "random-init":
        result = random_init_model(args.src, args.dst, args.seed)
    else:
        result = {"added": unpack_wheels(args.src, args.dst)}
    print(json.dumps(result), flush=True)


if __name__ == "__main__":
    sys.exit(main())
