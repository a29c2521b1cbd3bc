"""Shared fixtures: small image trees written with PIL in tmp_path, and small SimSiam heads for the chain tests."""
from __future__ import annotations

import os
import shutil
import sys
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

REPOSITORY = Path(__file__).resolve().parents[1]
SHARED_PETIMAGES = REPOSITORY.parent / "shared" / "data" / "cats-vs-dogs" / "PetImages"
ONE_THREAD = {**os.environ, "OMP_NUM_THREADS": "1"}  # the same threads in every compared run: the same sums
PYTHON = sys.executable


def write_image(path: Path, seed: int, size=(40, 30), mode="RGB", format=None) -> Path:
    """A random image of `size` (width, height) saved at `path`."""
    rng = np.random.default_rng(seed)
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(rng.integers(0, 256, (size[1], size[0], 3), dtype=np.uint8)).convert(mode).save(path, format=format)
    return path


def write_class_tree(root: Path, per_class: int = 20, classes=("Cat", "Dog", "Fox")) -> Path:
    """root/<class>/<i>.jpg, random JPEGs (3 classes by default, to check nothing assumes two)."""
    for c, name in enumerate(classes):
        for i in range(per_class):
            write_image(root / name / f"{i}.jpg", seed=100 * c + i)
    return root


@pytest.fixture
def class_tree(tmp_path) -> Path:
    """PetImages-style tree: 3 classes x 20 JPEGs, plus clutter to ignore."""
    root = write_class_tree(tmp_path / "PetImages")
    (root / "Cat" / "Thumbs.db").write_bytes(b"\0" * 64)
    (root / "Dog" / ".hidden.jpg").write_bytes(b"not an image")
    return root


@pytest.fixture
def cache_dir(tmp_path) -> Path:
    return tmp_path / "cache"


@pytest.fixture(scope="module")
def module_folder(tmp_path_factory, request) -> Path:
    """A folder for the runs that one module's tests share, deleted when they end (checkpoints are large)."""
    folder = tmp_path_factory.mktemp(request.module.__name__.rpartition(".")[2])
    yield folder
    shutil.rmtree(folder, ignore_errors=True)


@pytest.fixture(autouse=True)
def no_fsync(monkeypatch):
    """In-process runs write checkpoints without os.fsync (it guards against power loss, which no test simulates);
    the atomic write itself is unchanged, and runs in subprocesses still sync."""
    monkeypatch.setattr(os, "fsync", lambda descriptor: None)


@pytest.fixture
def small_heads(monkeypatch):
    """SimSiam with 64-d projector and predictor instead of 2048-d ones: a tenth of the checkpoint, for chain tests
    that check plumbing, not the model (in-process only; the real sizes are tested in test_model.py)."""
    import model
    monkeypatch.setattr(model, "PROJECTION_DIM", 64)
    monkeypatch.setattr(model, "PREDICTION_HIDDEN_DIM", 16)
