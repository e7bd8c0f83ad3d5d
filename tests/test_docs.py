"""The README and docs/ say only what exists: every command's flags, config files, make targets and links, and the
cheap commands run (with the tiny model, on generated pairs, in a temporary folder)."""

from __future__ import annotations

import re
import shlex
from pathlib import Path

import pytest

from conftest import ROOT

README = ROOT / "README.md"
DOCS = [README, *sorted((ROOT / "docs").glob("*.md")), ROOT / "benchmarks" / "README.md"]
SUBCOMMANDS = ("prefetch", "plot", "reproduce", "sweep", "bench")


# --- extracting commands ---------------------------------------------------------------------------------


def fenced_commands(text: str) -> list[str]:
    """Each shell command of the ```bash blocks: continuation lines joined, comments dropped."""
    commands = []
    for block in re.findall(r"```bash\n(.*?)```", text, re.S):
        joined = re.sub(r"\\\n\s*", " ", block)
        for line in joined.splitlines():
            line = line.strip()
            if line and not line.startswith("#"):
                commands.append(line)
    return commands


def inline_commands(text: str) -> list[str]:
    """Commands written in `code spans` of prose and tables (checked, not run)."""
    spans = re.findall(r"`([^`\n]+)`", re.sub(r"```.*?```", "", text, flags=re.S))
    starts = ("train-mrpc ", "python -m train_mrpc ", "accelerate launch ", "make ", "sbatch ")
    return [s for s in spans if s.startswith(starts) or re.match(r"[A-Z_]+=\S+ (accelerate|train-mrpc|make) ", s)]


def split_commands(line: str) -> list[list[str]]:
    """A shell line as simple commands (split at ; & && | ||), each without its leading VAR=value words."""
    lexer = shlex.shlex(line, posix=True, punctuation_chars=";&|")
    lexer.whitespace_split = True
    lexer.commenters = "#"
    try:
        tokens = list(lexer)
    except ValueError:  # prose such as `train-mrpc prefetch [the run's flags]`: its words as they are
        tokens = line.split()
    commands, current = [], []
    for token in tokens:
        if token and set(token) <= set(";&|"):
            commands.append(current)
            current = []
        else:
            current.append(token)
    commands.append(current)
    out = []
    for words in commands:
        while words and (re.match(r"^[A-Za-z_][A-Za-z0-9_]*=", words[0]) or words[0] in ("do", "then")):
            words = words[1:]
        if words:
            out.append(words)
    return out


# --- asking the parsers which flags exist ---------------------------------------------------------------


class _Captured(Exception):
    def __init__(self, parser):
        self.parser = parser


def _captured_parser(call) -> "argparse.ArgumentParser":  # noqa: F821
    """The argparse parser a command builds, caught as it starts parsing (nothing runs)."""
    import argparse

    original = argparse.ArgumentParser.parse_args

    def capture(self, *args, **kwargs):
        raise _Captured(self)

    argparse.ArgumentParser.parse_args = capture
    try:
        call()
    except _Captured as caught:
        return caught.parser
    finally:
        argparse.ArgumentParser.parse_args = original
    raise AssertionError(f"{call} built no parser")


def train_options(subcommand: str | None) -> set[str]:
    from train_mrpc.config import build_parser

    extra = ()
    if subcommand == "reproduce":
        from train_mrpc.reproduce import ReproduceConfig

        extra = (ReproduceConfig,)
    elif subcommand == "sweep":
        from train_mrpc.sweep import SweepConfig

        extra = (SweepConfig,)
    return set(build_parser(extra_types=extra)._option_string_actions)


def bench_options(command: str) -> set[str]:
    import importlib

    from train_mrpc.bench import COMMANDS

    module = importlib.import_module(COMMANDS[command][0])
    return set(_captured_parser(lambda: module.main([]))._option_string_actions)


def launch_options() -> set[str]:
    from accelerate.commands.launch import launch_command_parser

    return set(launch_command_parser()._option_string_actions)


def gpu_check_options() -> set[str]:
    import importlib.util

    spec = importlib.util.spec_from_file_location("gpu_check_check", ROOT / "gpu_check" / "check.py")
    module = importlib.util.module_from_spec(spec)
    import sys

    sys.path.insert(0, str(ROOT / "gpu_check"))
    try:
        spec.loader.exec_module(module)
    finally:
        sys.path.remove(str(ROOT / "gpu_check"))
    return set(_captured_parser(lambda: module.parse_args([]))._option_string_actions)


def _flags(words: list[str]) -> list[str]:
    return [w.split("=", 1)[0] for w in words if w.startswith("--")]


def _unknown(words: list[str], known: set[str], what: str) -> list[str]:
    return [f"{what}: {flag} does not exist" for flag in _flags(words) if flag not in known]


def check_train_mrpc(args: list[str]) -> list[str]:
    """Problems with the arguments of train-mrpc / python -m train_mrpc."""
    sub = args[0] if args and args[0] in SUBCOMMANDS else None
    rest = args[1:] if sub else args
    if sub == "plot":
        return (
            [] if len(rest) == 1 and not rest[0].startswith("-") else [f"train-mrpc plot takes one folder, got {rest}"]
        )
    if sub == "bench":
        from train_mrpc.bench import COMMANDS

        if not rest or rest[0] in ("--help", "-h") or rest[0].isupper() or rest[0] == "...":
            return []
        if rest[0] not in COMMANDS:
            return [f"train-mrpc bench {rest[0]}: no such command"]
        return _unknown(rest[1:], bench_options(rest[0]), f"train-mrpc bench {rest[0]}")
    problems = _unknown(rest, train_options(sub), f"train-mrpc {sub or ''}".strip())
    for i, word in enumerate(rest[:-1]):
        if word == "--recipe":
            from train_mrpc.recipes import RECIPES

            if rest[i + 1] not in RECIPES:
                problems.append(f"--recipe {rest[i + 1]}: no such recipe")
    return problems


def makefile_names() -> tuple[set[str], set[str]]:
    text = (ROOT / "Makefile").read_text()
    targets = set(re.findall(r"^([A-Za-z][\w-]*):", text, re.M))
    variables = set(re.findall(r"^([A-Z_]+)\s*[?:]?=", text, re.M))
    return targets, variables


def check_command(words: list[str]) -> list[str]:
    """Problems with one simple command; commands of other tools (pytest, pip install torch, ...) pass."""
    if words[:1] == ["train-mrpc"]:
        return check_train_mrpc(words[1:])
    if words[:3] in (["python", "-m", "train_mrpc"], ["python3", "-m", "train_mrpc"]):
        return check_train_mrpc(words[3:])
    if words[:2] == ["accelerate", "launch"]:
        if "-m" not in words:
            return [f"accelerate launch without -m train_mrpc: {words}"]
        at = words.index("-m")
        launch, train = words[2:at], words[at + 2 :]
        problems = _unknown(launch, launch_options(), "accelerate launch")
        for i, word in enumerate(launch[:-1]):
            if word == "--config_file" and not (ROOT / launch[i + 1]).is_file():
                problems.append(f"--config_file {launch[i + 1]}: no such file")
        if words[at + 1] != "train_mrpc":
            problems.append(f"accelerate launch -m {words[at + 1]}: expected train_mrpc")
        return problems + check_train_mrpc(train)
    if words[:1] == ["make"]:
        targets, variables = makefile_names()
        problems = []
        for word in words[1:]:
            if "=" in word:
                name, value = word.split("=", 1)
                if name not in variables:
                    problems.append(f"make: variable {name} is not in the Makefile")
                if name == "ARGS":
                    problems += check_train_mrpc(shlex.split(value))
            elif not word.startswith("-") and word not in targets:
                problems.append(f"make: no target {word}")
        return problems
    if words[:1] == ["sbatch"]:
        scripts = [i for i, w in enumerate(words) if w.endswith(".sbatch")]
        if not scripts:
            return [f"sbatch without a script: {words}"]
        script = words[scripts[0]]
        if not (ROOT / script).is_file():
            return [f"sbatch {script}: no such file"]
        sub = ["sweep"] if "sweep" in Path(script).name else []
        return check_train_mrpc(sub + words[scripts[0] + 1 :])
    if words[:2] == ["bash", "gpu_check/run.sh"]:
        return _unknown(words[2:], gpu_check_options(), "gpu_check/run.sh")
    if words[:3] == ["pip", "install", "-e"] and len(words) > 3:
        import tomllib

        extras = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["optional-dependencies"]
        wanted = re.findall(r"\[([^\]]+)\]", words[3])
        return [f"pip install: no extra {e}" for group in wanted for e in group.split(",") if e not in extras]
    return []


def check_doc(path: Path) -> list[str]:
    """Every problem with the commands of one Markdown file (fenced and inline)."""
    text = path.read_text()
    problems = []
    for line in fenced_commands(text) + inline_commands(text):
        for words in split_commands(line):
            problems += [f"{path.name}: `{line}`: {p}" for p in check_command(words)]
    return problems


# --- tests -------------------------------------------------------------------------------------------------


def test_readme_is_a_front_door():
    lines = README.read_text().splitlines()
    assert len(lines) <= 200, len(lines)
    for page in (
        "docs/launch.md",
        "docs/checkpoints.md",
        "docs/speed.md",
        "docs/reproduce-and-sweeps.md",
        "docs/offline.md",
        "docs/gpu-check.md",
        "benchmarks/README.md",
    ):
        assert f"]({page}" in README.read_text(), f"README links no {page}"


@pytest.mark.parametrize("path", DOCS, ids=lambda p: str(p.relative_to(ROOT)))
def test_every_command_names_only_what_exists(path):
    commands = fenced_commands(path.read_text()) + inline_commands(path.read_text())
    assert commands or path.name != "README.md"
    assert check_doc(path) == []


def test_a_bogus_flag_in_a_doc_is_caught(tmp_path):
    """The checker itself: a copy of the README with one made-up flag (or config file, or target) fails."""
    text = README.read_text()
    assert check_doc(README) == []
    cases = {
        "train-mrpc --dataset synthetic --no_such_flag 3": "--no_such_flag does not exist",
        "train-mrpc sweep --learning_rates 1e-4 --num_seedz 2": "--num_seedz does not exist",
        "accelerate launch --config_file accelerate_configs/cpu.yaml --num_procs 2 -m train_mrpc": "--num_procs",
        "accelerate launch --config_file accelerate_configs/tpu.yaml -m train_mrpc": "tpu.yaml: no such file",
        "make demoo": "no target demoo",
        'make demo ARGS="--num_train_epoch 1"': "--num_train_epoch does not exist",
        "train-mrpc bench steps --quik": "--quik does not exist",
        "train-mrpc reproduce --recipe google-bart": "no such recipe",
    }
    for command, expected in cases.items():
        bogus = tmp_path / "README.md"
        bogus.write_text(text.replace("```bash\n", f"```bash\n{command}\n", 1))
        problems = check_doc(bogus)
        assert len(problems) == 1 and expected in problems[0], (command, problems)
    inline = tmp_path / "inline.md"
    inline.write_text("Run `train-mrpc ... --resume_from_checkpoint latest --bogus_flag 1` to go on.\n")
    assert ["--bogus_flag does not exist" in p for p in check_doc(inline)] == [True]


def _slug(heading: str) -> str:
    """GitHub's anchor for a heading."""
    text = re.sub(r"[^\w\- ]", "", heading.strip().lower().replace("`", ""))
    return text.replace(" ", "-")


def anchors(path: Path) -> set[str]:
    seen, out = {}, set()
    text = re.sub(r"```.*?```", "", path.read_text(), flags=re.S)
    for heading in re.findall(r"^#+ (.+)$", text, re.M):
        slug = _slug(heading)
        out.add(slug if slug not in seen else f"{slug}-{seen[slug]}")
        seen[slug] = seen.get(slug, 0) + 1
    return out


@pytest.mark.parametrize("path", DOCS, ids=lambda p: str(p.relative_to(ROOT)))
def test_every_relative_link_points_at_something_that_exists(path):
    text = re.sub(r"```.*?```", "", path.read_text(), flags=re.S)
    broken = []
    for target in re.findall(r"\]\(([^)\s]+)\)", text):
        if re.match(r"[a-z]+://", target):
            continue
        file, _, anchor = target.partition("#")
        linked = (path.parent / file).resolve() if file else path
        if not linked.exists():
            broken.append(target)
        elif anchor and linked.suffix == ".md" and anchor not in anchors(linked):
            broken.append(target)
    assert broken == []


# --- running the cheap commands ----------------------------------------------------------------------------

QUICK = [
    "--max_train_samples",
    "64",
    "--max_eval_samples",
    "32",
    "--num_train_epochs",
    "1",
    "--per_device_train_batch_size",
    "16",
    "--logging_steps",
    "2",
]


def runnable(words: list[str]) -> list[str] | None:
    """train-mrpc's arguments of a command cheap enough to run here (training, plot, --help), else None."""
    if words[:1] == ["train-mrpc"]:
        args = words[1:]
    elif words[:3] == ["python", "-m", "train_mrpc"]:
        args = words[3:]
    else:
        return None
    if args[:1] and args[0] in SUBCOMMANDS and args[0] != "plot":
        return None
    return args


def substituted(args: list[str], tmp_path: Path, tiny_model_dir: Path) -> list[str]:
    """A doc's command made cheap: the tiny model, generated pairs, a few steps, folders under tmp_path."""
    if args[:1] == ["plot"]:
        return ["plot", str(tmp_path / args[1])]
    if args == ["--help"]:
        return args
    out, i = [], 0
    while i < len(args):
        word = args[i]
        value = args[i + 1] if i + 1 < len(args) else None
        if word == "...":
            i += 1
            continue
        if word in ("--model_name_or_path", "--data_dir", "--dataset", "--output_dir", "--config"):
            i += 2
            if word == "--output_dir":
                out += ["--output_dir", str(tmp_path / value)]
            elif word == "--config":
                config = tmp_path / value
                config.write_text("learning_rate: 3.0e-3\nlogging_steps: 2\n")
                out += ["--config", str(config)]
            continue
        out.append(word)
        i += 1
    if "--output_dir" not in out:
        out += ["--output_dir", str(tmp_path / "runs" / "mrpc")]
    return ["--model_name_or_path", str(tiny_model_dir), "--dataset", "synthetic", *QUICK, *out]


@pytest.mark.parametrize(
    "path",
    [README, ROOT / "docs" / "checkpoints.md", ROOT / "docs" / "setup.md"],
    ids=lambda p: str(p.relative_to(ROOT)),
)
def test_the_cheap_commands_run(path, tmp_path, tiny_model_dir, capsys):
    """Each train-mrpc command of the page's ```bash blocks, in order, in this process: training runs (a resume
    after them continues their folder), `train-mrpc plot` on a folder an earlier command wrote, --help."""
    import json

    from train_mrpc.cli import main

    ran = []
    for line in fenced_commands(path.read_text()):
        for words in split_commands(line):
            args = runnable(words)
            if args is None:
                continue
            command = substituted(args, tmp_path, tiny_model_dir)
            if command == ["--help"]:
                with pytest.raises(SystemExit) as exited:
                    main(command)
                assert exited.value.code == 0
                assert "--learning_rate" in capsys.readouterr().out
            else:
                main(command)
            ran.append(command)
            if command[0] == "plot":
                assert Path(command[1], "training_curves.png").is_file()
            elif "--output_dir" in command:
                results = Path(command[command.index("--output_dir") + 1]) / "all_results.json"
                assert "eval_accuracy" in json.loads(results.read_text()), command
    assert ran, f"{path.name} has no command to run"
    if path == README:  # the quickstart: train, plot, resume
        assert any(c[0] == "plot" for c in ran) and any("--resume_from_checkpoint" in c for c in ran)
