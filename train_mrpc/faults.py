"""Faults of multi-process jobs: another process's failure as one line, and elastic restarts that resume."""

from __future__ import annotations

import os
from contextlib import contextmanager
from dataclasses import dataclass

from train_mrpc.config import TrainConfig
from train_mrpc.errors import distributed_failure, job_failure


@contextmanager
def failures_of_other_processes_named(config: TrainConfig):
    """A collective that fails because another process died, disconnected or stalled past --ddp_timeout (gloo
    raises on the closed connection at once) becomes one JobFailure naming the checkpoint a resume starts from.

    Nothing here checkpoints: the job is already broken, and any save in flight failed at its barrier and was
    removed (saves are atomic), so the last complete checkpoint stands. torchrun's agent also SIGTERMs the
    survivors when a process dies; the PreemptionHandler only notes it, and the next collective (at the
    latest the next logging step's) raises the failure handled here.
    """
    register_this_process()  # before any collective: a survivor can then name this process if it dies
    try:
        yield
    except Exception as err:
        if distributed_failure(err) is None:
            raise
        import logging

        from train_mrpc.checkpointing import find_latest

        checkpoint_log = logging.getLogger("train_mrpc.checkpointing")  # damaged checkpoints were named at start
        was_disabled = checkpoint_log.disabled
        checkpoint_log.disabled = True
        try:
            latest = find_latest(config.output_dir)
        except Exception:  # the folder is unreadable: the message still says what happened
            latest = None
        finally:
            checkpoint_log.disabled = was_disabled
        restart, max_restarts = elastic_restarts()
        raise job_failure(err, config.ddp_timeout, latest, restart, max_restarts) from None


# --- which process failed ---------------------------------------------------------------------------------
#
# gloo tells a survivor only that a connection closed (and the peer's address); torchrun's agent knows which
# local rank exited and how (its pcontext.wait() results), but keeps that to itself until every worker has
# stopped, then prints it in its ChildFailedError report, and the error file (TORCHELASTIC_ERROR_FILE) is
# written only by a worker that raised, never by a SIGKILLed one. So each process registers itself in the
# agent's store at set-up (rank -> host and pid), and a survivor looks there for the one that is gone.


@dataclass(frozen=True)
class FailedProcess:
    rank: int
    host: str
    pid: int
    how: str  # "died", "stopped" (SIGSTOP) or "reported its own error"


def agent_store(timeout_s: float):
    """A client of torchrun's agent store, which outlives every process of the job; None where there is none
    (one process, another launcher). faults.fresh_store_after_restart points MASTER_PORT elsewhere after a
    restart, and keeps the agent's address in TRAIN_MRPC_AGENT_STORE."""
    from datetime import timedelta

    env = os.environ
    if env.get("TORCHELASTIC_USE_AGENT_STORE") != "True":
        return None
    from torch.distributed import TCPStore

    host, port = env.get("TRAIN_MRPC_AGENT_STORE", f"{env['MASTER_ADDR']}:{env['MASTER_PORT']}").rsplit(":", 1)
    return TCPStore(host, int(port), is_master=False, timeout=timedelta(seconds=timeout_s))


def job_key(kind: str) -> str:
    """A store key prefix of this job and restart: a restarted job's processes register and report afresh."""
    env = os.environ
    return f"train_mrpc/{kind}/{env.get('TORCHELASTIC_RUN_ID', '')}/{env.get('TORCHELASTIC_RESTART_COUNT', '0')}"


_registered = None  # the job_key this process registered under


def register_this_process() -> None:
    """Put ``rank -> (host, pid)`` in the agent's store, for a survivor to name this process if it dies. Never
    fails the run: without a store (or with one that does not answer) the failure line says "another process"."""
    global _registered
    import json
    import socket

    env = os.environ
    if int(env.get("WORLD_SIZE", "1")) < 2 or _registered == job_key("processes"):
        return
    try:
        store = agent_store(timeout_s=10)
        if store is None:
            return
        store.set(
            f"{job_key('processes')}/{env.get('RANK', '0')}",
            json.dumps({"host": socket.gethostname(), "pid": os.getpid()}),
        )
        _registered = job_key("processes")
    except Exception:
        pass


def mark_reported(store) -> None:
    """This process is about to exit on an error it reported itself: not a death without a word."""
    store.set(f"{job_key('processes')}/{os.environ.get('RANK', '0')}/reported", "1")


def process_state(pid: int) -> str | None:
    """The state letter of a process of this host (R, S, D, T for stopped, Z for dead but not yet reaped, ...);
    None once it is gone."""
    try:
        with open(f"/proc/{pid}/stat") as stat:
            return stat.read().rsplit(")", 1)[1].split()[0]
    except (OSError, IndexError):
        try:  # no /proc (not Linux): signal 0 says only whether it exists
            os.kill(pid, 0)
            return "?"
        except ProcessLookupError:
            return None
        except OSError:
            return "?"


def failed_processes(kind: str = "lost", wait_s: float = 1.0) -> list[FailedProcess]:
    """The registered processes of this job that are gone (``kind`` "lost") or stopped ("timeout"), as far as
    this process can tell: [] where it cannot (no store, or none of those it can check is gone).

    A process of this host is checked by its pid (a SIGKILLed one can still be a zombie for a moment, until
    torchrun reaps it: that counts as gone); one on another host through the marks survivors there leave for
    the processes they found gone. The first look comes at once (the closed connection that brought this
    process here means its peer is exiting); later ones every 20 ms, up to ``wait_s`` seconds, for a process
    still in its exit or a mark from another host.
    """
    import json
    import socket
    import time

    env = os.environ
    try:
        world, me = int(env.get("WORLD_SIZE", "1")), int(env.get("RANK", "0"))
        store = agent_store(timeout_s=3) if world > 1 else None
        if store is None:
            return []
        prefix, here = job_key("processes"), socket.gethostname()
        keys = {rank: f"{prefix}/{rank}" for rank in range(world) if rank != me}
        found = {rank: json.loads(store.get(key)) for rank, key in keys.items() if store.check([key])}
        if not found:  # none registered (a launch before this code, a store that lost them): nothing to wait for
            return []
        deadline = time.monotonic() + wait_s
        while True:
            failed = []
            for rank, where in sorted(found.items()):
                if where["host"] == here:
                    state = process_state(where["pid"])
                    gone = state in (None, "Z", "X")
                    if gone and store.check([f"{keys[rank]}/reported"]):
                        how = "reported its own error"
                    elif gone:
                        how = "died"
                        store.set(f"{keys[rank]}/gone", here)  # for survivors on other hosts
                    elif kind == "timeout" and state in ("T", "t"):
                        how = "stopped"
                    else:
                        continue
                elif store.check([f"{keys[rank]}/gone"]):
                    how = "died"
                else:
                    continue
                failed.append(FailedProcess(rank, where["host"], where["pid"], how))
            if failed or kind == "timeout" or time.monotonic() >= deadline:
                return failed
            time.sleep(0.02)
    except Exception:  # the store or /proc would not say: the line says "another process" as before
        return []


def elastic_restarts() -> tuple[int, int]:
    """(this restart's number, the most allowed): torchrun's TORCHELASTIC_RESTART_COUNT and _MAX_RESTARTS."""
    env = os.environ
    return int(env.get("TORCHELASTIC_RESTART_COUNT", "0")), int(env.get("TORCHELASTIC_MAX_RESTARTS", "0"))


_restart_store = None  # rank 0's store server for a restarted job; lives as long as the process


def fresh_store_after_restart(timeout_s: int) -> None:
    """Give a restarted job (accelerate launch --max_restarts) a key-value store of its own to join in.

    With the static rendezvous (multi_cpu.yaml and the other configs), torchrun's agent keeps one store for
    all attempts, and the process group's keys are the same each time (default_pg/0/...): a restarted
    process read the dead attempt's addresses and failed to connect ("Gloo connectFullMesh failed ...
    Connection refused"), so every restart failed. Here rank 0 starts a new store server on a free port and
    publishes the port in the agent's store under a key of this restart; every process then points
    MASTER_PORT at it before Accelerate builds the process group (the agent's store stays in
    TRAIN_MRPC_AGENT_STORE for the error reports, see cli._first_report). Before any restart, nothing changes.
    """
    global _restart_store
    from datetime import timedelta

    env = os.environ
    restart = elastic_restarts()[0]
    if restart == 0 or env.get("TORCHELASTIC_USE_AGENT_STORE") != "True" or "TRAIN_MRPC_AGENT_STORE" in env:
        return
    from torch.distributed import TCPStore

    host, agent_port = env["MASTER_ADDR"], int(env["MASTER_PORT"])
    agent = TCPStore(host, agent_port, is_master=False, timeout=timedelta(seconds=timeout_s))
    key = f"train_mrpc/{env.get('TORCHELASTIC_RUN_ID', '')}/restart_{restart}/store_port"
    if env.get("RANK", "0") == "0":
        _restart_store = TCPStore(
            "0.0.0.0", 0, is_master=True, wait_for_workers=False, timeout=timedelta(seconds=timeout_s)
        )
        agent.set(key, str(_restart_store.port))
    port = int(agent.get(key))  # waits for rank 0
    env["TRAIN_MRPC_AGENT_STORE"] = f"{host}:{agent_port}"
    env["MASTER_PORT"] = str(port)
