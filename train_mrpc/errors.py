"""The exceptions that reach the user as a one-line message instead of a traceback."""

from __future__ import annotations

import re


class UserError(Exception):
    """Bad input from the user: a flag, a file, a column, a value.

    The message must name the offending thing and say what was expected; the CLI prints it as
    ``train-mrpc: error: <message>`` and exits with status 2.
    """


class JobFailure(Exception):
    """Another process of a multi-process job died, stalled or lost its connection, so this one cannot go on.

    Not bad input: the CLI prints it as one line (once per job, and only when no process of the job has
    already said what went wrong) and exits with status 1.
    """


class OneLineArgumentErrors:
    """Mixed into an argparse parser (the training one, each benchmark's): argparse prints its whole usage
    (~40 lines) before an error and exits; here a bad flag is one UserError, which the CLI prints as its line."""

    def error(self, message: str):
        raise UserError(f"{message} (see {self.prog} --help)")


def os_reason(err: OSError) -> str:
    """An OSError's cause in lower case, for the middle of a message: "permission denied"."""
    return (err.strerror or str(err)).lower()


def check_readable_file(path, name: str, expected: str) -> None:
    """A missing, folder, special or unreadable file the user named ends here with one UserError,
    ``{name}: <what is wrong>; expected {expected}``. Permissions are checked by opening; a pipe or device is
    refused unopened (reading one blocks until a writer comes, and the open is retried after SIGTERM)."""
    import stat
    from pathlib import Path

    try:
        mode = Path(path).stat().st_mode
        if stat.S_ISREG(mode):
            with open(path, "rb"):
                pass
    except FileNotFoundError:
        raise UserError(f"{name}: file not found") from None
    except OSError as err:  # PermissionError, or a folder on the way that cannot be entered
        raise UserError(f"{name}: cannot read ({os_reason(err)})") from None
    if stat.S_ISDIR(mode):
        raise UserError(f"{name}: is a folder; expected {expected}")
    if not stat.S_ISREG(mode):
        raise UserError(f"{name}: is not a regular file (a pipe or device); expected {expected}")


def read_text_file(path, name: str, expected: str) -> str:
    """The UTF-8 text of a file the user named (its byte-order marks dropped), or one UserError naming it: what
    ``check_readable_file`` refuses, or the line of the first byte that is not UTF-8."""
    from pathlib import Path

    check_readable_file(path, name, expected)
    try:
        data = Path(path).read_bytes()
    except OSError as err:
        raise UserError(f"{name}: cannot read ({os_reason(err)})") from None
    try:
        # GLUE's files start with a byte-order mark. A second one comes from a BOM file read as plain UTF-8 (which
        # keeps the mark as a character) and saved again with one: it would stick to the first column's name.
        return data.decode("utf-8-sig").lstrip("\ufeff")
    except UnicodeDecodeError as err:
        offset = err.start + (3 if data.startswith(b"\xef\xbb\xbf") else 0)  # utf-8-sig counts after the BOM
        line = data[:offset].count(b"\n") + 1
        raise UserError(
            f"{name}: line {line} is not valid UTF-8 (byte 0x{data[offset]:02x} at offset {offset}); "
            "expected a UTF-8 text file"
        ) from None


def json_kind(value) -> str:
    """What a parsed JSON value is, for an error line: "a list", "null", ..."""
    kinds = {dict: "an object", list: "a list", str: "a string", bool: "true or false", type(None): "null"}
    return kinds.get(type(value), "a number")


def parse_json(text: str, name: str, expected: str, first_line: int = 1, object_pairs_hook=None):
    """``text`` parsed as JSON, or one UserError: ``name``, the line (counted from ``first_line``), what is wrong
    and ``expected``. Arrays or objects nested thousands deep (RecursionError in the parser) are refused too.
    ``object_pairs_hook``: json.loads's, which builds each object from its (key, value) pairs."""
    import json

    try:
        return json.loads(text, object_pairs_hook=object_pairs_hook)
    except ValueError as err:  # json.JSONDecodeError; or, without a line, an integer of over 4,300 digits
        line = first_line + getattr(err, "lineno", 1) - 1
        raise UserError(
            f"{name}: line {line} is not valid JSON ({getattr(err, 'msg', err)}); expected {expected}"
        ) from None
    except RecursionError:
        raise UserError(f"{name}: line {first_line} is nested too deeply; expected {expected}") from None


def read_json_object(path, name: str, expected: str) -> dict:
    """The JSON object in a file the user named, or one UserError naming it (``name``) and ``expected``."""
    value = parse_json(read_text_file(path, name, expected), name, expected)
    if not isinstance(value, dict):
        raise UserError(f"{name}: holds {json_kind(value)}, not a JSON object; expected {expected}")
    return value


# What gloo (and NCCL) say when the other end of a collective is gone: the process was killed or crashed, its
# host went down, or it closed the process group early. Matched, lower-cased, on RuntimeErrors that come from
# the communication library (the message names gloo or NCCL, or torch.distributed raised a DistError).
_LOST_PEER = (
    "connection closed by peer",
    "connection reset by peer",
    "broken pipe",
    "socket closed",
    "connection refused",
    "read error",
    "write error",
    "no route to host",
    "ncclremoteerror",
    "communicator was aborted",
)
# What a collective says when another process did not arrive within the process group's timeout.
_TIMED_OUT = ("timed out waiting", "wait timeout", "watchdog caught collective operation timeout")


def distributed_failure(err: BaseException | None) -> tuple[str, RuntimeError] | None:
    """``("lost" | "timeout", the collective's error)`` when ``err``, or an error it wraps, is a collective that
    failed because of another process (dead, disconnected, or silent past --ddp_timeout); None otherwise."""
    import sys

    distributed = sys.modules.get("torch.distributed")  # not imported yet: no collective can have failed
    dist_error = getattr(distributed, "DistError", ())
    seen = set()
    while err is not None and id(err) not in seen:
        seen.add(id(err))
        text = str(err).lower() if isinstance(err, RuntimeError) else ""
        if isinstance(err, dist_error) or "gloo" in text or "nccl" in text:
            if any(s in text for s in _TIMED_OUT):
                return "timeout", err
            if any(s in text for s in _LOST_PEER):
                return "lost", err
        # A wrapper (a failed checkpoint save turned into a UserError) keeps the collective's error as its
        # cause or, raised "from None", as its context.
        err = err.__cause__ or err.__context__
    return None


def named_processes(failed) -> str:
    """ "rank 1 (pid 1234 on host a)", or "rank 1 (pid 1234 on host a) and rank 3 (pid 99 on host b)"."""
    return " and ".join(f"rank {p.rank} (pid {p.pid} on host {p.host})" for p in failed)


def job_failure(
    err: BaseException,
    ddp_timeout: int | None,
    latest_checkpoint=None,
    restart: int = 0,
    max_restarts: int = 0,
    failed=None,
) -> JobFailure:
    """The one line for ``err``, a collective that failed because of another process (see distributed_failure).

    ``restart`` and ``max_restarts``: torchrun's TORCHELASTIC_RESTART_COUNT and TORCHELASTIC_MAX_RESTARTS.
    ``failed``: the processes that are gone or stopped (faults.FailedProcess); None looks them up in the
    launcher's store (faults.failed_processes), and where nothing is known the line says "another process".
    """
    kind, collective = distributed_failure(err) or ("lost", err)
    if failed is None:
        from train_mrpc.faults import failed_processes

        failed = failed_processes(kind)
    if kind == "timeout":
        limit = f"--ddp_timeout {ddp_timeout} s" if ddp_timeout else "--ddp_timeout"
        stopped = [p for p in failed if p.how == "stopped"]
        if stopped:
            verb = "is" if len(stopped) == 1 else "are"
            what = (
                f"{named_processes(stopped)} of this job {verb} stopped (SIGSTOP or a debugger) and took no part "
                f"in a collective for {limit}"
            )
        else:
            what = (
                f"another process of this job took no part in a collective for {limit} (stalled, stopped or far slower)"
            )
        advice = " (raise --ddp_timeout if a process is legitimately that slow)"
    else:
        # gloo's message: "[.../pair.cc:553] Connection closed by peer [127.0.0.1]:63184. This is typically ..."
        said = re.sub(r"^\[[^\]]*\]\s*", "", " ".join(str(collective).split())).split(". ")[0][:160]
        died = [p for p in failed if p.how == "died"]
        reported = [p for p in failed if p.how == "reported its own error"]
        if died:
            what = f"{named_processes(died)} of this job died ({said})"
        elif reported:
            what = f"{named_processes(reported)} of this job stopped on an error it reported ({said})"
        else:
            what = f"another process of this job died or lost its connection ({said})"
        advice = ""
    kept = (
        f"the last good checkpoint, {latest_checkpoint}, is kept"
        if latest_checkpoint
        else "no checkpoint was saved yet"
    )
    if restart < max_restarts:
        then = (
            f"the launcher restarts the job (restart {restart + 1} of {max_restarts}), which continues from it "
            "with --resume_from_checkpoint latest"
        )
    else:
        then = "--resume_from_checkpoint latest continues the run" if latest_checkpoint else "start the run again"
    return JobFailure(f"{what}; {kept}: {then}{advice}")
