"""Faults of multi-process jobs: another process's failure as one line, and elastic restarts that resume."""

from __future__ import annotations

import os
from contextlib import contextmanager

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
        _restart_store = TCPStore("0.0.0.0", 0, is_master=True, wait_for_workers=False,
                                  timeout=timedelta(seconds=timeout_s))  # fmt: skip
        agent.set(key, str(_restart_store.port))
    port = int(agent.get(key))  # waits for rank 0
    env["TRAIN_MRPC_AGENT_STORE"] = f"{host}:{agent_port}"
    env["MASTER_PORT"] = str(port)
