"""The documents can be trusted: every command in the bash blocks of README.md and docs/*.md that runs one of the
repository's scripts is accepted by that script's own parse_args, the links lead somewhere, and the README is a
short front door that speaks of the project only."""
from __future__ import annotations

import functools
import importlib
import importlib.util
import re
import shlex
import subprocess
import sys

import pytest
from conftest import ONE_THREAD, PYTHON, REPOSITORY, SHARED_PETIMAGES, write_image

README = REPOSITORY / "README.md"
DOCUMENTS = [README, *sorted((REPOSITORY / "docs").glob("*.md"))]
SCRIPTS = ("train.py", "classifier.py", "plot.py", "pictures.py", "predict.py", "bench.py", "embed.py")
PLACEHOLDER = re.compile(r"\$|<[^>]*>|\.\.\.|\b[A-Z]{3,}\b")  # $VAR, <dir>, ..., FLAGS: not meant to be pasted


def bash_commands(text: str) -> list[str]:
    """The commands of a markdown text's ```bash blocks: continuation lines joined, comments dropped, `&&`, `;` and
    `|` chains split."""
    commands = []
    for block in re.findall(r"```bash\n(.*?)```", text, flags=re.S):
        for line in block.replace("\\\n", " ").splitlines():
            line = re.sub(r"(^|\s)#.*$", "", line)
            commands += [part.strip() for part in re.split(r"&&|;|\|", line) if part.strip()]
    return commands


def script_call(command: str) -> tuple[str, list[str]] | None:
    """(target, arguments) when `command` runs a script (`python train.py ...`, `torchrun ... train.py ...`) or an
    experiment (`python -m experiments.X ...`); the target is the script's file name or the module's name."""
    words = shlex.split(command)
    for start, word in enumerate(words):
        if word.rpartition("/")[2] in ("python", "python3"):
            rest = words[start + 1:]
            if rest[:1] == ["-m"] and rest[1].startswith("experiments."):
                return rest[1], rest[2:]
            if rest and rest[0] in SCRIPTS:
                return rest[0], rest[1:]
            return None
        if word == "torchrun":
            script = next(index for index in range(start, len(words)) if words[index] in SCRIPTS)
            return words[script], words[script + 1:]
    return None


def documented_calls() -> list[tuple[str, str, list[str]]]:
    calls = []
    for path in DOCUMENTS:
        for command in bash_commands(path.read_text()):
            call = script_call(command)
            if call and not PLACEHOLDER.search(command):
                calls.append((path.name, *call))
    return calls


CALLS = documented_calls()


@functools.cache
def load(target: str):
    """The script's module, imported from its file (an experiment: as the package module it runs as)."""
    if target.startswith("experiments."):
        return importlib.import_module(target)
    name = target.removesuffix(".py")
    if name in sys.modules and sys.modules[name].__file__ == str(REPOSITORY / target):
        return sys.modules[name]
    spec = importlib.util.spec_from_file_location(name, REPOSITORY / target)
    module = importlib.util.module_from_spec(spec)
    sys.modules[name] = module  # as a plain import would: dataclasses and pickling look their module up there
    spec.loader.exec_module(module)
    return module


def test_the_parser_of_the_documents_finds_the_commands():
    """The command finder sees what a reader sees: chains, continuations, torchrun, comments and placeholders."""
    text = ("```bash\ncd x && python train.py --demo \\\n    --epochs 2   # a comment\n"
            "torchrun --standalone --nproc_per_node=2 train.py --demo\n"
            "python -m experiments.headline --tiny; .venv/bin/python -m pytest\n"
            "python predict.py $HOME/photos\n```\nprose: python plot.py --nope\n")
    calls = [script_call(command) for command in bash_commands(text)]
    assert [call for call in calls if call] == [("train.py", ["--demo", "--epochs", "2"]),
                                                ("train.py", ["--demo"]), ("experiments.headline", ["--tiny"]),
                                                ("predict.py", ["$HOME/photos"])]
    assert PLACEHOLDER.search("python predict.py $HOME/photos") and not PLACEHOLDER.search(
        "python train.py --data data/PetImages --out runs/mine")


def test_the_documents_hold_commands_for_every_script():
    """The parse test below has something to check: commands for every script and every experiment."""
    targets = {target for _, target, _ in CALLS}
    assert set(SCRIPTS) <= targets
    assert {f"experiments.{name}" for name in ("cpu_result", "headline", "check_machine")} <= targets


@pytest.mark.parametrize("document, target, arguments", CALLS,
                         ids=[f"{d}:{t} {' '.join(a)}"[:100] for d, t, a in CALLS])
def test_every_documented_command_parses(document, target, arguments):
    """Each documented command's flags and values are the script's own: its parse_args accepts them."""
    try:
        load(target).parse_args(arguments)
    except SystemExit as stop:
        pytest.fail(f"{document}: `{target} {shlex.join(arguments)}` is refused by its parser (exit {stop.code})")


def anchor(heading: str) -> str:
    """GitHub's anchor of a markdown heading."""
    return re.sub(r"[^\w\- ]", "", heading.strip().lower()).replace(" ", "-")


@pytest.mark.parametrize("path", DOCUMENTS, ids=[path.name for path in DOCUMENTS])
def test_every_link_leads_somewhere(path):
    """Each relative link of a document names a file of the repository, and its #anchor a heading there."""
    broken = []
    for link in re.findall(r"\]\(([^)\s]+)\)", path.read_text()):
        if re.match(r"\w+:", link):
            continue
        file, _, fragment = link.partition("#")
        target = (path.parent / file).resolve() if file else path
        if not target.exists():
            broken.append(link)
        elif fragment and target.suffix == ".md":
            prose = re.sub(r"```.*?```", "", target.read_text(), flags=re.S)
            headings = re.findall(r"^#+ (.+)$", prose, flags=re.M)
            if fragment not in {anchor(heading) for heading in headings}:
                broken.append(link)
    assert not broken, f"{path.name}: links to nothing: {broken}"


def test_the_readme_is_short_and_speaks_of_the_project_only():
    """README.md is at most 130 lines, names no path outside the repository and no issue number."""
    text = README.read_text()
    assert len(text.splitlines()) <= 130
    assert "../shared" not in text
    assert not re.search(r"(?i)\bissues?\s*#?\s*\d+|(?<![\w/&])#\d+\b", text)


# appended to each README command, so that it runs in seconds; the README's own flags, folders and order are kept
QUICK = {"train.py": ["--epochs", "1", "--image-size", "16", "--precision", "auto", "--limit", "300", "--labels", "20",
                      "--device", "cpu"],
         "classifier.py": ["--epochs", "1", "--limit", "300", "--labels", "20", "--device", "cpu"],
         "pictures.py": ["--limit", "300", "--labels", "20", "--device", "cpu"], "embed.py": [], "plot.py": [],
         "predict.py": []}


@pytest.mark.slow
@pytest.mark.skipif(not SHARED_PETIMAGES.is_dir(), reason="the 4,000 shared photos are absent")
def test_the_readme_commands_run_in_order_on_a_fresh_clone(tmp_path):
    """The README's commands of the scripts, in its order, in a fresh folder holding the scripts, data/PetImages (the
    4,000 photos), 200 loose photos in myphotos/ and 3 in photos/: each runs (fewer epochs, pixels and images) and
    none collides with another's run folder. Not run: the experiments (their own tests), --init imagenet (offline)."""
    for path in [*REPOSITORY.glob("*.py"), REPOSITORY / "results"]:
        (tmp_path / path.name).symlink_to(path)
    (tmp_path / "data").mkdir()
    (tmp_path / "data" / "PetImages").symlink_to(SHARED_PETIMAGES)
    for i in range(200):
        write_image(tmp_path / "myphotos" / f"IMG_{i:04d}.jpg", seed=i, size=(48, 36))
    for i in range(3):
        write_image(tmp_path / "photos" / f"{i}.jpg", seed=500 + i)
    environment = {**ONE_THREAD, "XDG_CACHE_HOME": str(tmp_path / "cache"), "TQDM_DISABLE": "1"}
    ran = []
    for command in bash_commands(README.read_text()):
        call = script_call(command)
        if call is None or call[0] not in QUICK or "imagenet" in command:
            continue
        result = subprocess.run([PYTHON, call[0], *call[1], *QUICK[call[0]]], cwd=tmp_path, env=environment,
                                capture_output=True, text=True, timeout=300)
        assert result.returncode == 0, f"README: `{command}` failed: {result.stderr.strip().splitlines()[-1:]}"
        ran.append(call[0])
    assert {"train.py", "classifier.py", "plot.py", "pictures.py", "predict.py", "embed.py"} <= set(ran)

