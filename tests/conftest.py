"""Shared fixtures: small image trees written with PIL in tmp_path, and the uninterrupted train.py run that the
interrupted and resumed ones are compared with."""
from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

REPOSITORY = Path(__file__).resolve().parents[1]
SHARED_PETIMAGES = REPOSITORY.parent / "shared" / "data" / "cats-vs-dogs" / "PetImages"
ONE_THREAD = {**os.environ, "OMP_NUM_THREADS": "1"}  # the same threads in every compared run: the same sums


def write_image(path: Path, seed: int, size=(40, 30), mode="RGB", format=None) -> Path:
    """A random image of `size` (width, height) saved at `path`."""
    rng = np.random.default_rng(seed)
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(rng.integers(0, 256, (size[1], size[0], 3), dtype=np.uint8)).convert(mode).save(path, format=format)
    return path


def write_class_tree(root: Path) -> Path:
    """root/Cat, root/Dog and root/Fox, 20 random JPEGs each (3 classes, to check nothing assumes two)."""
    for c, name in enumerate(["Cat", "Dog", "Fox"]):
        for i in range(20):
            write_image(root / name / f"{i}.jpg", seed=100 * c + i)
    return root


@pytest.fixture(scope="module")
def module_folder(tmp_path_factory, request) -> Path:
    """A folder for the runs that one module's tests share, deleted when they end, as a passing test's tmp_path
    is (pyproject.toml): each run holds ResNet18 checkpoints of ~300 MB, and a CI disk may be small."""
    folder = tmp_path_factory.mktemp(request.module.__name__.rpartition(".")[2])
    yield folder
    shutil.rmtree(folder, ignore_errors=True)


@pytest.fixture(autouse=True)
def no_fsync(monkeypatch):
    """In-process runs write their checkpoints without os.fsync: it guards a checkpoint against power loss, which
    no test simulates, and costs about half a second per tiny run. The atomic write itself (temporary file, then
    os.replace) is unchanged, and runs in subprocesses (kill -9, signals, the experiments) still sync."""
    monkeypatch.setattr(os, "fsync", lambda descriptor: None)


@pytest.fixture
def class_tree(tmp_path) -> Path:
    """PetImages-style tree: 3 classes (to check nothing assumes two) x 20 JPEGs, plus clutter to ignore."""
    root = write_class_tree(tmp_path / "PetImages")
    (root / "Cat" / "Thumbs.db").write_bytes(b"\0" * 64)
    (root / "Dog" / ".hidden.jpg").write_bytes(b"not an image")
    return root


@pytest.fixture
def cache_dir(tmp_path) -> Path:
    return tmp_path / "cache"


def train_command(data: Path, folder: Path, out: str, *extra: str) -> list[str]:
    """A train.py process of 2 epochs of 24 steps (batch 2) that saves only at its end (`extra` may change that)."""
    return [sys.executable, str(REPOSITORY / "train.py"), "--data", str(data), "--cache-dir", str(folder / "cache"),
            "--out", str(folder / out), "--epochs", "2", "--batch-size", "2", "--image-size", "16",
            "--labels", "6", "--test-fraction", "0.2", "--device", "cpu", "--save-every", "10", *extra]


@pytest.fixture(scope="session")
def uninterrupted(tmp_path_factory) -> tuple[Path, Path]:
    """(a class tree, the folder of an uninterrupted train_command run on it, with ONE_THREAD): the reference of
    every stopped, killed and resumed run."""
    folder = tmp_path_factory.mktemp("uninterrupted")
    tree = write_class_tree(folder / "PetImages")
    subprocess.run(train_command(tree, folder, "whole"), check=True, env=ONE_THREAD, capture_output=True)
    return tree, folder / "whole"
