"""Shared fixtures: small image trees written with PIL in tmp_path."""
from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from PIL import Image

SHARED_PETIMAGES = Path(__file__).resolve().parents[2] / "shared" / "data" / "cats-vs-dogs" / "PetImages"


def write_image(path: Path, seed: int, size=(40, 30), mode="RGB", format=None) -> Path:
    """A random image of `size` (width, height) saved at `path`."""
    rng = np.random.default_rng(seed)
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(rng.integers(0, 256, (size[1], size[0], 3), dtype=np.uint8)).convert(mode).save(path, format=format)
    return path


@pytest.fixture
def class_tree(tmp_path) -> Path:
    """PetImages-style tree: 3 classes (to check nothing assumes two) x 20 JPEGs, plus clutter to ignore."""
    root = tmp_path / "PetImages"
    for c, name in enumerate(["Cat", "Dog", "Fox"]):
        for i in range(20):
            write_image(root / name / f"{i}.jpg", seed=100 * c + i)
    (root / "Cat" / "Thumbs.db").write_bytes(b"\0" * 64)
    (root / "Dog" / ".hidden.jpg").write_bytes(b"not an image")
    return root


@pytest.fixture
def cache_dir(tmp_path) -> Path:
    return tmp_path / "cache"
