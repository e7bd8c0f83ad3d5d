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
MODEL_WEIGHTS = ("model.safetensors", "model.safetensors.index.json", "pytorch_model.bin", "pytorch_model.bin.index.json")


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
            raise UserError(f"--model_name_or_path {name}: is a file; expected a model folder (config.json, weights, tokenizer files)")
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
            return ("it has no config.json; expected a folder saved with save_pretrained "
                    "(config.json, model.safetensors, tokenizer files)")  # fmt: skip
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
