"""The repository's top holds scripts only; the shared modules are the package simsiam, so that an installed
package named like one of them (evaluate, dataset, runs, ...) is the one imported from the repository's root."""
from __future__ import annotations

import re
import subprocess
import sys
import tomllib
from pathlib import Path

import pytest

REPOSITORY = Path(__file__).resolve().parents[1]
SCRIPTS = {"train", "classifier", "plot", "pictures", "predict", "bench"}


def test_the_top_holds_scripts_only():
    """Every .py file at the top is one of the scripts; each shared module is in simsiam/."""
    assert {path.stem for path in REPOSITORY.glob("*.py")} == SCRIPTS
    modules = {path.stem for path in (REPOSITORY / "simsiam").glob("*.py")} - {"__init__"}
    assert {"model", "dataset", "evaluate", "runs", "recipe", "augment"} <= modules


@pytest.mark.slow
def test_installed_namesakes_are_imported_from_the_repository_root(tmp_path):
    """Packages named like the shared modules, installed beside the repository (here on PYTHONPATH), are the ones
    `import NAME` finds from the repository's root, where a script's folder comes first on sys.path; the scripts
    still import."""
    names = sorted(path.stem for path in (REPOSITORY / "simsiam").glob("*.py") if path.stem != "__init__")
    for name in names:
        (tmp_path / name).mkdir()
        (tmp_path / name / "__init__.py").write_text("INSTALLED = True\n")
    check = "; ".join(f"import {name}; assert {name}.INSTALLED, {name}.__file__" for name in names)
    subprocess.run([sys.executable, "-c", check + "; import train, classifier, plot, pictures, predict, bench"],
                   cwd=REPOSITORY, env={"PYTHONPATH": str(tmp_path), "PATH": ""}, check=True, timeout=120)


def test_pyproject_claims_the_ranges_requirements_installs():
    """pyproject.toml's dependencies and extras are requirements.txt's lines, the same ranges: one set of claims."""
    project = tomllib.loads((REPOSITORY / "pyproject.toml").read_text())["project"]
    lines = [re.sub(r"#.*", "", line).strip() for line in (REPOSITORY / "requirements.txt").read_text().splitlines()]
    required = {line for line in lines if line}
    claimed = set(project["dependencies"]) | {spec for extra in project["optional-dependencies"].values()
                                             for spec in extra}
    assert claimed == required
