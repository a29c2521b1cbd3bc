"""pictures.py: its three PNGs for a SimSiam checkpoint and for --random (class and backbone names that matplotlib
would read as TeX included), its refusals in one line, the neighbours' agreement and the PCA map."""
from __future__ import annotations

import argparse
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F
from matplotlib.figure import Figure
from matplotlib.text import Text
from PIL import Image

import dataset
import model
import pictures
import runs
from conftest import write_class_tree

CLASSES = ("Cat", "a$b^$c", "_Fox")  # $...^$ would be broken mathtext; a leading _ hides a legend entry
TINY = ["--labels", "12", "--test-fraction", "0.2", "--val-fraction", "0", "--device", "cpu", "--workers", "1"]


@pytest.fixture(scope="module")
def pretrained(module_folder):
    """(data flags, siam.pt): 3 classes x 10 photos cached at 32 px, and a checkpoint as train.py writes it,
    pretrained (it says) on the pretraining split of these flags."""
    root = write_class_tree(module_folder / "photos", per_class=10, classes=CLASSES)
    flags = ["--data", str(root), "--cache-dir", str(module_folder / "cache"), *TINY]
    options = argparse.Namespace(**{**vars(pictures.parse_args(flags)), "image_size": 32})
    data, splits = dataset.open_data(options, verbose=False)
    path = module_folder / "siam.pt"
    model.save_checkpoint(path, "simsiam", model.SimSiam(), epoch=1, args={"image_size": 32, "cache_size": None},
                          split={}, pretraining_hashes=data.hashes[splits.pretrain], protocol=runs.PROTOCOL)
    return flags, path


@pytest.mark.slow
@pytest.mark.parametrize("backbone", ["checkpoint", "random"])
def test_pictures_writes_three_readable_pngs(pretrained, tmp_path, capsys, backbone):
    """views.png, neighbours.png and features.png, each a PNG of a readable size, one printed line each; with
    --random no checkpoint is read and the random-init backbone alone is pictured."""
    flags, path = pretrained
    source = ["--checkpoint", str(path)] if backbone == "checkpoint" else ["--random"]
    pictures.main([*flags, *source, "--out", str(tmp_path / "plots")])
    out = capsys.readouterr().out
    assert ("SimSiam" in out) == (backbone == "checkpoint") and "random-init" in out
    written = [line for line in out.splitlines() if line.startswith("wrote ")]
    assert len(written) == 3
    for name in ("views.png", "neighbours.png", "features.png"):
        assert any(line.startswith(f"wrote {tmp_path / 'plots' / name}:") for line in written)
        with Image.open(tmp_path / "plots" / name) as image:
            assert image.format == "PNG" and image.width >= 600 and image.height >= 500


@pytest.mark.slow
def test_names_in_tex_are_drawn_as_written(pretrained, tmp_path, monkeypatch):
    """A backbone file named like TeX ($\\foo$.pt: mathtext cannot parse it) beside class names with $: the three
    PNGs are written, the backbone's name in its panels' titles as written, and no text is read as mathtext."""
    flags, weights = pretrained[0], tmp_path / "$\\foo$.pt"
    torch.save(model.resnet18_backbone().state_dict(), weights)
    figures, savefig = [], Figure.savefig  # each figure saved, still written to its file
    monkeypatch.setattr(Figure, "savefig", lambda *args, **kwargs: figures.append(args[0]) or savefig(*args, **kwargs))
    pictures.main([*flags, "--init-weights", str(weights), "--image-size", "32", "--out", str(tmp_path / "plots")])
    texts = [text for figure in figures for text in figure.findobj(Text)]
    assert len(figures) == 3 and not any(text.get_parse_math() for text in texts)
    assert {"$\\foo$.pt #1", "a$b^$c"} <= {text.get_text() for text in texts}


@pytest.mark.parametrize("extra, fragment", [
    (["--split-seed", "1"], " test images were among the "),  # another test split: some were pretrained on
    (["--out", "PHOTOS/Cat/plots"], "lies inside --data"),
    (["--checkpoint", "absent.pt"], "cannot use --checkpoint: absent.pt: no such checkpoint file (or pass --init "
                                    "random)"),
    (["--image-size", "8"], "argument --image-size: must be"),
])
def test_a_refusal_is_one_line_and_writes_nothing(pretrained, tmp_path, capsys, monkeypatch, extra, fragment):
    """Exit 2, the reason on the last line of stderr (argparse's usage lines above it, nothing else), no PNG."""
    flags, path = pretrained
    monkeypatch.chdir(tmp_path)
    with pytest.raises(SystemExit) as stop:
        pictures.main([*flags, "--checkpoint", str(path), "--out", str(tmp_path / "plots"),
                       *[argument.replace("PHOTOS", flags[1]) for argument in extra]])
    lines = capsys.readouterr().err.strip().splitlines()
    assert stop.value.code == 2 and fragment in lines[-1] and (len(lines) == 1 or lines[0].startswith("usage:"))
    assert not list(tmp_path.rglob("*.png")) and not list(Path(flags[1]).rglob("*.png"))


def test_agreement_counts_neighbours_of_the_query_class():
    """The share of all (query, neighbour) pairs whose labels match: 4 of 6 here."""
    neighbours = torch.tensor([[0, 1, 2], [2, 3, 0]])  # query 0 (class 0): 2 agree; query 1 (class 1): 2 agree
    assert pictures.agreement(neighbours, torch.tensor([0, 0, 1, 1]), torch.tensor([0, 1])) == pytest.approx(4 / 6)


def test_pca_puts_the_dominant_direction_on_the_first_component():
    """Features spread mostly along one direction u (std 10, against 0.1 elsewhere, far from the origin): the first
    coordinate is the centred position along u (up to sign), explaining over 95% of the variance."""
    generator = torch.Generator().manual_seed(4)
    u = F.normalize(torch.randn(64, generator=generator), dim=0)
    t = 10 * torch.randn(200, generator=generator)  # (200,) position along u
    features = 50 + t[:, None] * u + 0.1 * torch.randn(200, 64, generator=generator)  # (200, 64)
    coordinates, shares = pictures.pca_2d(features)
    first = coordinates[:, 0] * torch.sign(coordinates[:, 0] @ t)  # the component's sign is arbitrary
    assert coordinates.shape == (200, 2) and torch.allclose(first, t - t.mean(), atol=1.0)
    assert shares[0] > 0.95 and shares.sum() <= 1 + 1e-6


def test_pca_of_planar_data_explains_all_the_variance():
    """Features in a 2-D plane of a 32-D space: the two components explain all of the variance."""
    generator = torch.Generator().manual_seed(5)
    plane = torch.linalg.qr(torch.randn(32, 2, generator=generator)).Q  # (32, 2) orthonormal
    _, shares = pictures.pca_2d(torch.randn(100, 2, generator=generator) @ plane.T + 3)  # (100, 32)
    assert shares.sum().item() == pytest.approx(1, abs=1e-4)
