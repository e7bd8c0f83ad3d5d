"""Clusters for real on one machine: a 2-node job over loopback, the SLURM script driven by an `srun` that
really starts each node's launch, SLURM's preemption signal to every process, requeue and resume; and
prefetch for offline compute nodes."""

import json
import os
import random
import shutil
import signal
import socket
import stat
import subprocess
import sys
import time
from pathlib import Path

import pytest
from test_launch import assert_same_run

from conftest import (
    ROOT,
    TEST_ENV,
    accelerate_launch,
    equivalence_args,
    run_cli,
    table_text,
    tiny_args,
    wait_for_log_lines,
)

SBATCH = ROOT / "examples" / "slurm" / "train_mrpc.sbatch"


def free_port() -> int:
    """A free port in 20000-39999: the SLURM script derives its port from the job id in that range."""
    while True:
        port = random.randint(20000, 39999)
        with socket.socket() as sock:
            try:
                sock.bind(("127.0.0.1", port))
            except OSError:
                continue
            return port


def test_two_node_job_over_loopback_equals_one_node_with_two_processes(
    tmp_path, tiny_model_no_dropout, two_process_equivalence_run
):
    """Two launches (machine ranks 0 and 1, one process each) form one job: same weights, losses and metrics
    as the same two processes on one node (multi_cpu.yaml: conftest's run, which tests/test_launch.py also
    compares with one process). The nodes launch with multi_gpu.yaml as shipped (without GPUs it trains CPU
    processes over gloo), so that config runs here too."""
    one_node, _ = two_process_equivalence_run
    two_nodes, port = tmp_path / "two-nodes", free_port()
    nodes = [
        subprocess.Popen(
            accelerate_launch(
                "multi_gpu.yaml",
                "--num_machines",
                "2",
                "--num_processes",
                "2",
                "--machine_rank",
                str(rank),
                "--main_process_ip",
                "127.0.0.1",
                "--main_process_port",
                str(port),
            )
            + equivalence_args(tiny_model_no_dropout, two_nodes, 8),
            cwd=ROOT,
            env={**os.environ, **TEST_ENV},
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
        for rank in (0, 1)
    ]
    finished = [node.communicate(timeout=600) for node in nodes]
    assert [node.returncode for node in nodes] == [0, 0], [err[-3000:] for _, err in finished]
    _, results = assert_same_run(one_node, two_nodes)
    assert results["launch"]["num_processes"] == 2
    assert results["launch"]["device_type"] == "cpu"  # multi_gpu.yaml on a machine without GPUs
    # One job, one set of outputs: only the main process of machine 0 printed the summary.
    assert finished[0][0].count("MRPC fine-tune") == 1 and "MRPC fine-tune" not in finished[1][0]


# --- SLURM ---------------------------------------------------------------------------------------------


def stub(bin_dir: Path, name: str, body: str) -> None:
    path = bin_dir / name
    path.write_text("#!/bin/bash\n" + body + "\n")
    path.chmod(path.stat().st_mode | stat.S_IEXEC)


# srun: one task per node, started here with that node's SLURM environment, each marked with the job id in
# its environment (inherited by every process it starts, as SLURM's cgroup holds every process of a step).
SRUN = """while [[ "$1" == --* ]]; do shift; done
pids=()
for ((node = 0; node < SLURM_NNODES; node++)); do
  FAKE_SLURM_STEP_OF="$SLURM_JOB_ID" SLURM_NODEID=$node SLURM_PROCID=$node SLURM_LOCALID=0 "$@" \\
    > "$NODE_LOGS/node$node.log" 2>&1 &
  pids+=($!)
done
status=0
for pid in "${pids[@]}"; do wait "$pid" || status=$?; done
exit $status"""

# scancel --signal=SIG JOB: the signal to every process of the job's steps (launchers, torchrun agents,
# training processes alike), found by the mark srun gave them.
SCANCEL = """echo "scancel $*" >> "$SLURM_CALLS"
sig=${1#--signal=}; job=$2
for dir in /proc/[0-9]*; do
  if tr '\\0' '\\n' < "$dir/environ" 2>/dev/null | grep -qx "FAKE_SLURM_STEP_OF=$job"; then
    kill -s "$sig" "${dir#/proc/}" 2>/dev/null
  fi
done"""


def slurm_job(tmp_path: Path, output_dir: Path, train_args: list[str], nodes: int = 2) -> tuple[list[str], dict]:
    """The command and environment of `sbatch examples/slurm/train_mrpc.sbatch` on `nodes` CPU nodes of this
    machine (one process each), with SLURM's commands replaced by local ones."""
    bin_dir, logs = tmp_path / "bin", tmp_path / "node-logs"
    bin_dir.mkdir(exist_ok=True)
    logs.mkdir(exist_ok=True)
    stub(bin_dir, "srun", SRUN)
    stub(bin_dir, "scancel", SCANCEL)
    stub(
        bin_dir,
        "scontrol",
        'if [ "$1" = requeue ]; then echo "requeue $2" >> "$SLURM_CALLS"; '
        "else for ((i = 0; i < SLURM_NNODES; i++)); do echo 127.0.0.1; done; fi",
    )
    job_id = free_port() - 20000  # the script's port is 20000 + job id % 20000
    env = {
        **os.environ,
        **TEST_ENV,
        "PATH": f"{bin_dir}:{Path(sys.executable).parent}:{os.environ['PATH']}",
        "SLURM_JOB_ID": str(job_id),
        "SLURM_JOB_NODELIST": "node[0-1]",
        "SLURM_NNODES": str(nodes),
        "SLURM_JOB_NAME": "mrpc-test",
        "GPUS_PER_NODE": "1",
        "OUTPUT_DIR": str(output_dir),
        "NODE_LOGS": str(logs),
        "SLURM_CALLS": str(tmp_path / "slurm-calls"),
    }
    return ["bash", str(SBATCH), *train_args], env


def slurm_train_args(model_dir: Path) -> list[str]:
    """The tiny run's flags (the script adds --output_dir $OUTPUT_DIR and --resume_from_checkpoint latest)."""
    args = tiny_args(model_dir, "-", "--max_train_samples", "384", "--logging_steps", "2", "--checkpointing_steps", "4")
    at = args.index("--output_dir")
    return args[:at] + args[at + 2 :]


def node_logs(tmp_path: Path) -> str:
    return "\n".join(f"--- {log.name}\n{log.read_text()[-3000:]}" for log in sorted((tmp_path / "node-logs").glob("*")))


@pytest.fixture(scope="module")
def slurm_uninterrupted(tmp_path_factory, tiny_model_dir) -> Path:
    tmp = tmp_path_factory.mktemp("slurm-uninterrupted")
    out = tmp / "run"
    command, env = slurm_job(tmp, out, slurm_train_args(tiny_model_dir))
    proc = subprocess.run(command, cwd=ROOT, env=env, capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stderr[-2000:] + node_logs(tmp)
    assert not (tmp / "slurm-calls").exists()  # no preemption: no scancel, no requeue
    return out


def test_slurm_script_runs_a_two_node_job(slurm_uninterrupted):
    """The script's rank, address and port wiring forms one 2-process job out of the two nodes' launches."""
    results = json.loads((slurm_uninterrupted / "all_results.json").read_text())
    assert results["launch"]["num_processes"] == 2 and results["launch"]["device_type"] == "cpu"
    assert results["global_step"] == 24  # 384 pairs / (16 x 2 processes) x 2 epochs


@pytest.mark.slow
def test_slurm_preemption_checkpoints_every_rank_requeues_and_resumes_to_the_same_weights(
    tmp_path, tiny_model_dir, slurm_uninterrupted
):
    """SLURM's warning (USR1 to the batch shell) -> scancel --signal=USR1 reaches every process of the step,
    launchers and torchrun agents included -> every rank checkpoints -> requeue -> the next run resumes to
    the uninterrupted run's weights."""

    from safetensors.torch import load_file

    out = tmp_path / "run"
    command, env = slurm_job(tmp_path, out, slurm_train_args(tiny_model_dir))
    job = subprocess.Popen(command, cwd=ROOT, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        wait_for_log_lines(out, 3)
        job.send_signal(signal.SIGUSR1)  # what --signal=B:USR1@180 does
        stdout, stderr = job.communicate(timeout=300)
    finally:
        job.kill()
    assert job.returncode == 0, stderr[-2000:] + node_logs(tmp_path)
    assert "preemption warning" in stdout
    calls = (tmp_path / "slurm-calls").read_text().splitlines()
    assert calls == [f"scancel --signal=USR1 {env['SLURM_JOB_ID']}", f"requeue {env['SLURM_JOB_ID']}"]
    preempted = json.loads((out / "preempted.json").read_text())
    assert preempted["signal"] == "SIGUSR1" and 0 < preempted["step"] < 24
    checkpoint = Path(preempted["checkpoint"])
    assert sorted(p.name for p in checkpoint.glob("random_states_*")) == ["random_states_0.pkl", "random_states_1.pkl"]
    time.sleep(0.5)
    leftover = subprocess.run(["pgrep", "-f", str(out)], capture_output=True, text=True).stdout.split()
    assert not leftover, "processes of the preempted job are still running"

    requeued = subprocess.run(command, cwd=ROOT, env=env, capture_output=True, text=True, timeout=600)
    assert requeued.returncode == 0, requeued.stderr[-2000:] + node_logs(tmp_path)
    assert not (out / "preempted.json").exists()
    resumed, uninterrupted = load_file(out / "model.safetensors"), load_file(slurm_uninterrupted / "model.safetensors")
    for name, tensor in uninterrupted.items():
        assert resumed[name].equal(tensor), name
    log = [json.loads(line) for line in (out / "train_log.jsonl").read_text().splitlines()]
    assert [r["step"] for r in log] == list(range(2, 25, 2))  # every step logged once across both runs


def test_usr1_to_the_launchers_process_group_still_checkpoints_every_rank(tmp_path, tiny_model_dir):
    """`kill -USR1 -PGID` of `accelerate launch` kills torchrun's agent (its default action for SIGUSR1), while
    the workers, in sessions of their own, do not get it. They get SIGTERM when their launcher dies, so
    they checkpoint and exit instead of training on unwatched."""

    from train_mrpc.checkpointing import validate_checkpoint

    from conftest import training_workers

    out = tmp_path / "run"
    args = tiny_args(
        tiny_model_dir, out, "--max_train_samples", "2000", "--per_device_train_batch_size", "8", "--logging_steps", "2"
    )
    launcher = subprocess.Popen(
        accelerate_launch("multi_cpu.yaml") + args,
        cwd=ROOT,
        env={**os.environ, **TEST_ENV},
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
        text=True,
        start_new_session=True,
    )
    try:
        wait_for_log_lines(out, 2)
        workers = training_workers(out)
        assert len(workers) == 2
        os.killpg(launcher.pid, signal.SIGUSR1)
        launcher.communicate(timeout=60)
        deadline = time.monotonic() + 60
        while training_workers(out) and time.monotonic() < deadline:
            time.sleep(0.2)
        assert not training_workers(out), "the training processes outlived their launcher"
    finally:
        for pid in training_workers(out):
            os.kill(pid, signal.SIGKILL)
    preempted = json.loads((out / "preempted.json").read_text())
    assert preempted["signal"] == "SIGTERM"
    assert validate_checkpoint(Path(preempted["checkpoint"]))["step"] == preempted["step"]


def write_hub_cache(cache: Path, repo: str, model_dir: Path) -> None:
    """What `train-mrpc prefetch` leaves in HF_HOME for a Hub model (the huggingface_hub cache layout)."""
    repo_dir = cache / "hub" / f"models--{repo.replace('/', '--')}"
    shutil.copytree(model_dir, repo_dir / "snapshots" / ("0" * 40))
    (repo_dir / "refs").mkdir(parents=True)
    (repo_dir / "refs" / "main").write_text("0" * 40)


def test_prefetched_hub_model_runs_offline(tmp_path, tiny_model_dir):
    cache = tmp_path / "hf"
    write_hub_cache(cache, "acme/tiny-bert", tiny_model_dir)
    env = {"HF_HOME": str(cache), "HF_HUB_OFFLINE": "1"}  # huggingface_hub reads HF_HOME at import: own processes
    proc = run_cli(
        ["prefetch", "--model_name_or_path", "acme/tiny-bert", "--dataset", "synthetic"], env=env, own_process=True
    )
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert "Ready for HF_HUB_OFFLINE=1" in proc.stdout and "acme/tiny-bert" in proc.stdout
    args = tiny_args("acme/tiny-bert", tmp_path / "run", "--max_train_steps", "2")
    proc = run_cli(args, env=env, own_process=True)
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert (tmp_path / "run" / "model.safetensors").exists()


def test_prefetch_of_a_local_directory_checks_it_loads_offline(tmp_path, tiny_model_dir):
    proc = run_cli(["prefetch", "--model_name_or_path", tiny_model_dir, "--dataset", "synthetic"])
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert "12,786 parameters" in table_text(proc.stdout)  # rich wraps a long model path's row at 80 columns


def test_prefetch_offline_without_cache_says_what_to_do(tmp_path):
    proc = run_cli(
        ["prefetch", "--model_name_or_path", "acme/not-cached", "--dataset", "synthetic"],
        env={"HF_HOME": str(tmp_path / "empty")},
        own_process=True,
    )
    assert proc.returncode == 2
    assert "cannot load tokenizer of model 'acme/not-cached'" in proc.stderr and "offline" in proc.stderr
