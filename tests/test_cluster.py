"""Cluster helpers: the SLURM script's launch line, and prefetch for offline compute nodes."""

import os
import shutil
import stat
import subprocess
from pathlib import Path

from conftest import ROOT, run_cli, tiny_args

SBATCH = ROOT / "examples" / "slurm" / "train_mrpc.sbatch"


def stub(bin_dir: Path, name: str, body: str) -> None:
    path = bin_dir / name
    path.write_text("#!/bin/bash\n" + body + "\n")
    path.chmod(path.stat().st_mode | stat.S_IEXEC)


def fake_slurm(tmp_path: Path, srun: str, job_id: str, nodes: list[str]) -> tuple[dict, Path]:
    """Stub SLURM commands on PATH: scontrol lists the nodes and records requeues, scancel records signals."""
    bin_dir, calls = tmp_path / "bin", tmp_path / "calls"
    bin_dir.mkdir()
    hosts = "\\n".join(nodes)
    stub(bin_dir, "scontrol", f'if [ "$1" = requeue ]; then echo "requeue $2" >> {calls}; else printf "{hosts}\\n"; fi')
    stub(bin_dir, "scancel", f'echo "scancel $*" >> {calls}')
    stub(bin_dir, "srun", srun)
    stub(bin_dir, "accelerate", 'echo "accelerate $*"')
    env = {**os.environ, "PATH": f"{bin_dir}:{os.environ['PATH']}", "SLURM_JOB_NODELIST": f"{nodes[0]}..",
           "SLURM_JOB_ID": job_id, "SLURM_NNODES": str(len(nodes)), "SLURM_JOB_NAME": "mrpc-base"}  # fmt: skip
    return env, calls


def test_slurm_script_launches_every_node_with_rank_address_and_port_from_the_allocation(tmp_path):
    # srun runs the step once per node (dropping --kill-on-bad-exit); accelerate prints its command line.
    env, calls = fake_slurm(tmp_path, 'shift; for node in 0 1; do SLURM_NODEID=$node "$@"; done', "123456",
                            ["gpu-node-07", "gpu-node-08"])  # fmt: skip
    proc = subprocess.run(["bash", str(SBATCH), "--learning_rate", "3e-5"], env=env, cwd=ROOT, capture_output=True, text=True)
    assert proc.returncode == 0, proc.stderr
    lines = proc.stdout.strip().splitlines()
    assert len(lines) == 2
    for rank, line in enumerate(lines):
        assert line == (
            "accelerate launch --config_file accelerate_configs/multi_node.yaml --num_machines 2 --num_processes 16 "
            f"--machine_rank {rank} --main_process_ip gpu-node-07 --main_process_port {20000 + 123456 % 20000} "
            "-m train_mrpc --output_dir runs/mrpc-base --resume_from_checkpoint latest --learning_rate 3e-5"
        )
    assert not calls.exists()  # no preemption: no requeue


def test_slurm_script_forwards_the_preemption_warning_and_requeues(tmp_path):
    import signal
    import time

    env, calls = fake_slurm(tmp_path, "sleep 3", "42", ["gpu-node-07"])  # a step that outlives the warning
    proc = subprocess.Popen(["bash", str(SBATCH)], env=env, cwd=ROOT, stdout=subprocess.PIPE, text=True)
    time.sleep(1)
    proc.send_signal(signal.SIGUSR1)
    out, _ = proc.communicate(timeout=30)
    assert proc.returncode == 0
    assert "preemption warning" in out
    assert calls.read_text().splitlines() == ["scancel --signal=USR1 42", "requeue 42"]


def write_hub_cache(cache: Path, repo: str, model_dir: Path) -> None:
    """What `train-mrpc prefetch` leaves in HF_HOME for a Hub model (the huggingface_hub cache layout)."""
    repo_dir = cache / "hub" / f"models--{repo.replace('/', '--')}"
    shutil.copytree(model_dir, repo_dir / "snapshots" / ("0" * 40))
    (repo_dir / "refs").mkdir(parents=True)
    (repo_dir / "refs" / "main").write_text("0" * 40)


def test_prefetched_hub_model_runs_offline(tmp_path, tiny_model_dir):
    cache = tmp_path / "hf"
    write_hub_cache(cache, "acme/tiny-bert", tiny_model_dir)
    env = {"HF_HOME": str(cache), "HF_HUB_OFFLINE": "1"}
    proc = run_cli(["prefetch", "--model_name_or_path", "acme/tiny-bert", "--dataset", "synthetic"], env=env)
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert "Ready for HF_HUB_OFFLINE=1" in proc.stdout and "acme/tiny-bert" in proc.stdout
    args = tiny_args("acme/tiny-bert", tmp_path / "run", "--max_train_steps", "2")
    proc = run_cli(args, env=env)
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert (tmp_path / "run" / "model.safetensors").exists()


def test_prefetch_of_a_local_directory_checks_it_loads_offline(tmp_path, tiny_model_dir):
    proc = run_cli(["prefetch", "--model_name_or_path", tiny_model_dir, "--dataset", "synthetic"])
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert "12,786 parameters" in proc.stdout


def test_prefetch_offline_without_cache_says_what_to_do(tmp_path):
    proc = run_cli(["prefetch", "--model_name_or_path", "acme/not-cached", "--dataset", "synthetic"],
                   env={"HF_HOME": str(tmp_path / "empty")})  # fmt: skip
    assert proc.returncode == 2
    assert "cannot load tokenizer of model 'acme/not-cached'" in proc.stderr and "offline" in proc.stderr
