"""pictures.py: its three PNGs, the neighbour search (evaluate.nearest) on cases whose answer is known, the PCA map,
the resolution it takes from the checkpoint, and its refusal of a checkpoint pretrained with another test split."""
from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from PIL import Image

import pictures
import train
from simsiam import evaluate, pretrained

TINY = ["--image-size", "32", "--labels", "12", "--test-fraction", "0.2", "--device", "cpu", "--workers", "2"]


def run_train(tmp_path, data) -> None:
    train.main(["--data", str(data), "--cache-dir", str(tmp_path / "cache"), "--out", str(tmp_path / "simsiam"),
                "--epochs", "1", "--batch-size", "16", *TINY])


def run_pictures(tmp_path, data, *extra) -> None:
    pictures.main(["--data", str(data), "--cache-dir", str(tmp_path / "cache"), "--out", str(tmp_path / "plots"),
                   "--checkpoint", str(tmp_path / "simsiam" / "siam.pt"), *TINY[2:], *extra])


# ---------------------------------------------------------------- the script


@pytest.mark.slow
def test_pictures_writes_three_readable_pngs(class_tree, tmp_path, capsys):
    """After a tiny train.py run, pictures.py writes views.png, neighbours.png and features.png, each a PNG that
    PIL opens at a readable size, and prints one line per PNG."""
    run_train(tmp_path, class_tree)
    capsys.readouterr()
    run_pictures(tmp_path, class_tree)
    written = [line for line in capsys.readouterr().out.splitlines() if line.startswith("wrote ")]
    assert len(written) == 3
    for name in ("views.png", "neighbours.png", "features.png"):
        assert any(str(tmp_path / "plots" / name) in line for line in written)
        with Image.open(tmp_path / "plots" / name) as image:
            assert image.format == "PNG" and image.width >= 800 and image.height >= 500


def test_checkpoint_with_another_test_split_is_refused(class_tree, tmp_path, capsys):
    """A checkpoint pretrained with another test split (here --split-seed 1) pretrained on some of these test
    images: refused in one line giving their count, exit 2, and no picture is written."""
    run_train(tmp_path, class_tree)
    capsys.readouterr()
    with pytest.raises(SystemExit) as exit_info:
        run_pictures(tmp_path, class_tree, "--split-seed", "1")
    error = capsys.readouterr().err.strip()
    assert exit_info.value.code == 2 and len(error.splitlines()) == 1 and " test images were among the " in error
    assert not list((tmp_path / "plots").glob("*.png"))


@pytest.mark.slow
def test_bank_size_limits_the_images_searched(class_tree, tmp_path, capsys):
    """--bank-size 20 searches the neighbours among 20 of the 48 pretraining images, and says so."""
    run_train(tmp_path, class_tree)
    capsys.readouterr()
    run_pictures(tmp_path, class_tree, "--bank-size", "20")
    assert "20 pretraining images searched" in capsys.readouterr().out


def test_resolution_follows_the_checkpoint_unless_a_flag_says_otherwise():
    """Image and cache size come from the checkpoint's arguments (a None cache size meaning 8/7 of the image
    size); an explicit --image-size wins and takes 8/7 of itself as cache, an explicit --cache-size wins too."""
    def resolve(image_size=None, cache_size=None, pretrained_cache=44):
        return pretrained.resolution(image_size, cache_size, {"image_size": 32, "cache_size": pretrained_cache},
                                     fallback_image_size=150)

    assert resolve() == (32, 44)
    assert resolve(pretrained_cache=None) == (32, 37)
    assert resolve(image_size=64) == (64, 74)
    assert resolve(cache_size=40) == (32, 40)


# ---------------------------------------------------------------- the neighbour search


def test_nearest_finds_the_noisy_copies():
    """Bank: a permutation of the 16 one-hot vectors in 16-D; queries: noisy copies of shuffled bank rows. Each
    query's first neighbour is the row it was copied from."""
    generator = torch.Generator().manual_seed(0)
    bank = torch.eye(16)[torch.randperm(16, generator=generator)]  # (16, 16)
    source = torch.randperm(16, generator=generator)[:10]  # (10,) the row each query copies
    queries = 3.0 * bank[source] + 0.1 * torch.randn(10, 16, generator=generator)  # scaled: cosine ignores it
    similarities, indices = evaluate.nearest(queries, bank, k=3)
    assert indices.shape == similarities.shape == (10, 3)
    assert torch.equal(indices[:, 0], source)
    assert (similarities[:, 0] > 0.95).all()


def test_nearest_orders_by_similarity_and_reports_it():
    """On random features, each row of similarities is non-increasing, equals the cosine similarity of the query
    with the returned bank rows, and no other bank row is more similar than the k-th returned."""
    generator = torch.Generator().manual_seed(1)
    queries, bank = torch.randn(7, 32, generator=generator), torch.randn(50, 32, generator=generator)
    similarities, indices = evaluate.nearest(queries, bank, k=5)
    assert (similarities[:, :-1] >= similarities[:, 1:]).all()
    cosine = F.cosine_similarity(queries[:, None], bank[None], dim=2)  # (7, 50)
    assert torch.allclose(similarities, cosine.gather(1, indices), atol=1e-6)
    others = cosine.scatter(1, indices, float("-inf"))
    assert (others.max(dim=1).values <= similarities[:, -1]).all()


def test_nearest_returns_tied_rows_together():
    """Two identical bank rows are equally similar to every query: a query nearest to them gets both as its
    first two neighbours, with the same similarity, before the third."""
    bank = torch.tensor([[1.0, 0.0, 0.0], [0.0, 1.0, 0.0], [0.0, 1.0, 0.0], [0.0, 0.0, 1.0]])
    similarities, indices = evaluate.nearest(torch.tensor([[0.2, 1.0, 0.1]]), bank, k=3)
    assert set(indices[0, :2].tolist()) == {1, 2} and indices[0, 2] == 0
    assert similarities[0, 0] == similarities[0, 1] > similarities[0, 2]


def test_nearest_with_k_above_the_bank_returns_the_whole_bank():
    """k larger than the bank gives every bank row once per query, most similar first."""
    generator = torch.Generator().manual_seed(2)
    similarities, indices = evaluate.nearest(torch.randn(4, 8, generator=generator),
                                             torch.randn(6, 8, generator=generator), k=10)
    assert indices.shape == (4, 6)
    assert all(sorted(row) == list(range(6)) for row in indices.tolist())
    assert (similarities[:, :-1] >= similarities[:, 1:]).all()


def test_knn_accuracy_classifies_separated_clusters():
    """knn_accuracy (which votes over evaluate.nearest's neighbours) is 1 on three clusters around orthogonal
    directions, and 0 when every query carries another cluster's label."""
    generator = torch.Generator().manual_seed(3)
    centres = 5 * torch.eye(3, 16)  # (3, 16)
    bank_labels, query_labels = torch.arange(60) % 3, torch.arange(30) % 3
    bank = centres[bank_labels] + 0.3 * torch.randn(60, 16, generator=generator)
    queries = centres[query_labels] + 0.3 * torch.randn(30, 16, generator=generator)
    assert evaluate.knn_accuracy(bank, bank_labels, queries, query_labels, num_classes=3, k=5) == 1
    assert evaluate.knn_accuracy(bank, bank_labels, queries, (query_labels + 1) % 3, num_classes=3, k=5) == 0


def test_agreement_counts_neighbours_of_the_query_class():
    """The agreement is the share of all (query, neighbour) pairs whose labels match: 4 of 6 here."""
    bank_labels = torch.tensor([0, 0, 1, 1])
    neighbours = torch.tensor([[0, 1, 2], [2, 3, 0]])  # query 0 (class 0): 2 agree; query 1 (class 1): 2 agree
    assert pictures.agreement(neighbours, bank_labels, torch.tensor([0, 1])) == pytest.approx(4 / 6)


# ---------------------------------------------------------------- the feature map


def test_pca_puts_the_dominant_direction_on_the_first_component():
    """Features spread mostly along one direction u (std 10, against 0.1 elsewhere, and far from the origin):
    the first coordinate is the centred position along u (up to sign), and it explains over 95% of the variance."""
    generator = torch.Generator().manual_seed(4)
    u = F.normalize(torch.randn(64, generator=generator), dim=0)
    t = 10 * torch.randn(200, generator=generator)  # (200,) position along u
    features = 50 + t[:, None] * u + 0.1 * torch.randn(200, 64, generator=generator)  # (200, 64)
    coordinates, shares = pictures.pca_2d(features)
    assert coordinates.shape == (200, 2)
    first = coordinates[:, 0] * torch.sign(coordinates[:, 0] @ t)  # the component's sign is arbitrary
    assert torch.allclose(first, t - t.mean(), atol=1.0)
    assert shares[0] > 0.95 and shares.sum() <= 1 + 1e-6


def test_pca_of_planar_data_explains_all_the_variance():
    """Features lying in a 2-D plane of a 32-D space: the two components explain all of the variance."""
    generator = torch.Generator().manual_seed(5)
    plane = torch.linalg.qr(torch.randn(32, 2, generator=generator)).Q  # (32, 2) orthonormal
    features = torch.randn(100, 2, generator=generator) @ plane.T + 3  # (100, 32)
    _, shares = pictures.pca_2d(features)
    assert shares.sum().item() == pytest.approx(1, abs=1e-4)
