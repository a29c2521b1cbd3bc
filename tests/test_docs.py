"""The commands in README.md and docs/ are ones a user can paste: every `python SCRIPT ...` line of their bash
blocks is accepted by that script's own parser, flags and values alike, and the README's CPU-sized chain runs as
written, from a folder holding data/PetImages (the shared 4,000-photo set, where present)."""
from __future__ import annotations

import importlib
import os
import re
import shlex
import subprocess
import sys
from pathlib import Path

import pytest
from conftest import SHARED_PETIMAGES

REPOSITORY = Path(__file__).resolve().parents[1]
DOCUMENTS = [REPOSITORY / "README.md", *sorted((REPOSITORY / "docs").glob("*.md"))]
SCRIPTS = {"train.py": "train", "classifier.py": "classifier", "plot.py": "plot", "pictures.py": "pictures",
           "predict.py": "predict", "bench.py": "bench"}


def bash_commands(path: Path) -> list[str]:
    """The commands of the ```bash blocks of a markdown file, continuation lines joined, comments dropped."""
    commands = []
    for block in re.findall(r"```bash\n(.*?)```", path.read_text(), flags=re.S):
        for line in block.replace("\\\n", " ").splitlines():
            line = re.sub(r"\s+#.*$", "", line).strip()
            if line and not line.startswith("#"):
                commands.append(line)
    return commands


def python_commands() -> list[tuple[str, str, list[str]]]:
    """(document, module, arguments) of every documented command that runs one of the repository's scripts."""
    found = []
    for path in DOCUMENTS:
        for command in bash_commands(path):
            words = shlex.split(command)
            for start, word in enumerate(words):
                if word.endswith("python") or word.endswith("python3"):
                    rest = words[start + 1:]
                    if rest[:1] == ["-m"] and rest[1].startswith("experiments."):
                        found.append((path.name, rest[1], rest[2:]))
                    elif rest and rest[0] in SCRIPTS:
                        found.append((path.name, SCRIPTS[rest[0]], rest[1:]))
                    break
                if word in ("torchrun",):
                    script = next(w for w in words[start:] if w in SCRIPTS)
                    found.append((path.name, SCRIPTS[script], words[words.index(script) + 1:]))
                    break
    return found


COMMANDS = python_commands()


def test_the_documents_hold_commands():
    """The parse test below sees the documented commands (a regex that found none would test nothing)."""
    modules = {module for _, module, _ in COMMANDS}
    assert len(COMMANDS) > 30 and {"train", "classifier", "plot", "pictures", "predict"} <= modules


@pytest.mark.parametrize("document, module, arguments", COMMANDS,
                         ids=[f"{d}:{m} {' '.join(a)}"[:90] for d, m, a in COMMANDS])
def test_every_documented_command_parses(document, module, arguments):
    """Each documented command's flags are the script's own: its parse_args accepts them."""
    try:
        importlib.import_module(module).parse_args(arguments)
    except SystemExit as exit_info:
        pytest.fail(f"{document}: `{module} {' '.join(arguments)}` is refused by its parser ({exit_info.code})")


CPU_CHAIN = "CPU-sized runs of the same chain"


@pytest.mark.slow
@pytest.mark.skipif(not SHARED_PETIMAGES.is_dir(), reason="needs the shared 4,000-photo PetImages folder")
def test_the_readme_cpu_chain_runs_as_written(tmp_path):
    """The README's CPU-sized commands, pasted into a shell in a folder that holds data/PetImages, all succeed."""
    readme = (REPOSITORY / "README.md").read_text()
    block = re.search(r"```bash\n(.*?)```", readme[readme.index(CPU_CHAIN):], flags=re.S).group(1)
    (tmp_path / "data").mkdir()
    (tmp_path / "data" / "PetImages").symlink_to(SHARED_PETIMAGES)
    environment = {**os.environ, "XDG_CACHE_HOME": str(tmp_path / "cache"), "PYTHONPATH": str(REPOSITORY)}
    for command in bash_commands_of(block):
        words = shlex.split(command)
        assert words[0] == "python" and words[1] in SCRIPTS, command
        finished = subprocess.run([sys.executable, str(REPOSITORY / words[1]), *words[2:]], cwd=tmp_path,
                                  env=environment, capture_output=True, text=True, timeout=600)
        assert finished.returncode == 0, f"{command}\n{finished.stderr[-2000:]}"


def bash_commands_of(block: str) -> list[str]:
    return [re.sub(r"\s+#.*$", "", line).strip() for line in block.splitlines() if line.strip()]
