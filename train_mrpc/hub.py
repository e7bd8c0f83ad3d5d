"""Fail fast when the Hugging Face Hub cannot be reached.

Without a network, ``from_pretrained`` and ``load_dataset`` retry for 20-50 s before failing. We probe
the Hub once (a few seconds at most); if it is unreachable we switch the libraries to offline mode, so
cached files still load and everything else fails at once, and then turn their errors into a message
that says how to run from local files.
"""

from __future__ import annotations

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


def is_hub_name(name: str) -> bool:
    """A model or dataset name that is not a local path would be fetched from the Hub."""
    return not Path(name).expanduser().exists()


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
