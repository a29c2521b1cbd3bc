"""Finding images, the decoded cache, the splits and batches."""
from __future__ import annotations

import numpy as np
import pytest
import torch
from conftest import write_image
from PIL import Image

from simsiam import cache, dataset, decode


def test_class_folder_layout(class_tree):
    """One sub-folder per class: classes from folder names, labels from the folder, clutter ignored."""
    files, labels, classes = dataset.find_images(class_tree)
    assert classes == ["Cat", "Dog", "Fox"]
    assert len(files) == 60 and labels.count(0) == labels.count(1) == labels.count(2) == 20
    assert all(name.split("/")[0] == classes[label] for name, label in zip(files, labels))
    assert not any("Thumbs" in name or "/." in name for name in files)


def test_kaggle_flat_layout(tmp_path):
    """Kaggle's train/cat.0.jpg layout: the class is the file-name prefix."""
    root = tmp_path / "train"
    for i in range(5):
        write_image(root / f"cat.{i}.jpg", seed=i)
        write_image(root / f"dog.{i}.jpg", seed=10 + i)
    files, labels, classes = dataset.find_images(root)
    assert classes == ["cat", "dog"]
    assert all(name.startswith(classes[label] + ".") for name, label in zip(files, labels))
    assert labels.count(0) == labels.count(1) == 5


def test_missing_folder_names_download_and_demo(tmp_path):
    """A missing data folder is a DataError naming Microsoft's download and --demo."""
    with pytest.raises(dataset.DataError, match="--demo") as error:
        dataset.find_images(tmp_path / "nope")
    assert "kagglecatsanddogs" in str(error.value)


def test_cache_holds_decoded_images(class_tree, cache_dir):
    """The cache is (N, 3, S, S) uint8 and each row equals decode_image of its file."""
    data = dataset.load_images(class_tree, 24, cache_dir, workers=2)
    assert data.images.shape == (60, 3, 24, 24) and data.images.dtype == torch.uint8
    for row in (0, 31, 59):
        expected = decode.decode_image(class_tree / data.files[row], 24).transpose(2, 0, 1)
        assert np.array_equal(data.images[row].numpy(), expected)


def test_decode_crops_the_centre_square(tmp_path):
    """A wide image is resized by its shorter side and centre-cropped, not squashed."""
    pixels = np.zeros((20, 60, 3), dtype=np.uint8)
    pixels[:, :20] = 255  # a white left third, which the centre crop removes
    Image.fromarray(pixels).save(tmp_path / "wide.png")
    decoded = decode.decode_image(tmp_path / "wide.png", 10)
    assert decoded.shape == (10, 10, 3) and decoded.max() < 40  # squashed, a third would be 255


def test_cache_is_reused(class_tree, cache_dir, monkeypatch):
    """A second load with the same files and resolution decodes nothing."""
    dataset.load_images(class_tree, 24, cache_dir, workers=2)
    monkeypatch.setattr(cache, "build_cache", lambda *a, **k: pytest.fail("cache rebuilt"))
    assert len(dataset.load_images(class_tree, 24, cache_dir, workers=2).files) == 60


def test_cache_rebuilt_on_new_files_or_resolution(class_tree, cache_dir):
    """A new file or another resolution gives a new cache with the new contents."""
    first = dataset.load_images(class_tree, 24, cache_dir, workers=2)
    write_image(class_tree / "Cat" / "new.jpg", seed=999)
    second = dataset.load_images(class_tree, 24, cache_dir, workers=2)
    third = dataset.load_images(class_tree, 16, cache_dir, workers=2)
    assert len(second.files) == 61 and "Cat/new.jpg" in second.files
    assert len({first.cache_path, second.cache_path, third.cache_path}) == 3
    assert third.images.shape[-1] == 16


def test_undecodable_files_are_skipped_and_listed(class_tree, cache_dir):
    """Files that are not images are skipped, listed beside the cache, and the rest stay in order."""
    (class_tree / "Dog" / "empty.jpg").write_bytes(b"")
    (class_tree / "Fox" / "text.jpg").write_text("hello")
    data = dataset.load_images(class_tree, 24, cache_dir, workers=2)
    assert set(data.skipped) == {"Dog/empty.jpg", "Fox/text.jpg"}
    assert data.skipped["Dog/empty.jpg"] == "empty file" and data.skipped["Fox/text.jpg"] == "not an image"
    assert len(data.files) == 60 and "Dog/empty.jpg" in (data.cache_path / "skipped.txt").read_text()
    row = data.files.index("Fox/0.jpg")
    expected = decode.decode_image(class_tree / "Fox/0.jpg", 24).transpose(2, 0, 1)
    assert np.array_equal(data.images[row].numpy(), expected) and data.labels[row] == 2


def test_limit_is_a_seeded_subset(class_tree, cache_dir):
    """--limit picks the same images for the same seed and others for another seed."""
    a = dataset.load_images(class_tree, 16, cache_dir, limit=25, seed=1, workers=2)
    b = dataset.load_images(class_tree, 16, cache_dir, limit=25, seed=1, workers=2)
    c = dataset.load_images(class_tree, 16, cache_dir, limit=25, seed=2, workers=2)
    assert a.files == b.files and len(a.files) == 25 and a.files != c.files


def balanced_labels(per_class=(100, 100, 80)) -> torch.Tensor:
    return torch.cat([torch.full((n,), c) for c, n in enumerate(per_class)])


def test_splits_are_disjoint_and_cover_everything():
    """Test and labelled never overlap; pretraining is exactly the complement of test."""
    labels = balanced_labels()
    splits = dataset.make_splits(labels, 3, 0.1, 30, seed=0, label_seed=0)
    test, labelled, pretrain = (set(t.tolist()) for t in (splits.test, splits.labelled, splits.pretrain))
    assert not test & labelled and not test & pretrain and labelled <= pretrain
    assert test | pretrain == set(range(len(labels)))


def test_splits_are_stratified_and_balanced():
    """The test split takes the fraction of every class; the labelled subset is balanced per class."""
    labels = balanced_labels()
    splits = dataset.make_splits(labels, 3, 0.1, 30, seed=0, label_seed=0)
    assert torch.bincount(labels[splits.test]).tolist() == [10, 10, 8]
    assert torch.bincount(labels[splits.labelled]).tolist() == [10, 10, 10]
    odd = dataset.make_splits(labels, 3, 0.1, 31, seed=0, label_seed=0)
    assert sorted(torch.bincount(labels[odd.labelled]).tolist()) == [10, 10, 11]


def test_splits_are_seeded():
    """Same seeds, same splits; another label seed redraws the labels but keeps the test split."""
    labels = balanced_labels()
    a = dataset.make_splits(labels, 3, 0.1, 30, seed=0, label_seed=0)
    b = dataset.make_splits(labels, 3, 0.1, 30, seed=0, label_seed=0)
    c = dataset.make_splits(labels, 3, 0.1, 30, seed=0, label_seed=1)
    d = dataset.make_splits(labels, 3, 0.1, 30, seed=1, label_seed=0)
    assert torch.equal(a.test, b.test) and torch.equal(a.labelled, b.labelled)
    assert torch.equal(a.test, c.test) and not torch.equal(a.labelled, c.labelled)
    assert not torch.equal(a.test, d.test)


def test_too_few_images_for_the_splits():
    """A class too small for its test share and labels is a DataError naming the class."""
    with pytest.raises(dataset.DataError, match="'Dog'"):
        dataset.make_splits(balanced_labels((100, 5)), 2, 0.1, 20, 0, 0, ["Cat", "Dog"])


def test_epoch_batches_cover_each_index_once():
    """An epoch visits each index at most once, in full batches, in a seeded order."""
    indices = torch.arange(10, 53)
    batches = list(dataset.epoch_batches(indices, 8, torch.Generator().manual_seed(0)))
    again = list(dataset.epoch_batches(indices, 8, torch.Generator().manual_seed(0)))
    seen = torch.cat(batches)
    assert len(batches) == 5 and all(len(b) == 8 for b in batches)
    assert len(set(seen.tolist())) == 40 and set(seen.tolist()) <= set(indices.tolist())
    assert all(torch.equal(x, y) for x, y in zip(batches, again))


def test_demo_images_have_two_classes(tmp_path):
    """--demo's generated set is a readable two-class folder."""
    root = dataset.make_demo_images(tmp_path / "demo", per_class=6, size=32)
    files, labels, classes = dataset.find_images(root)
    assert classes == ["disc", "square"] and labels.count(0) == labels.count(1) == 6


def test_start_up_line_counts_upsampled_photos(class_tree, cache_dir):
    """Photos smaller than the cache resolution are counted in the start-up line with their median side and
    factor; a cache below every photo's side prints no such note."""
    enlarged = dataset.describe(dataset.load_images(class_tree, 45, cache_dir))  # the photos are 40 x 30 px
    assert "60 of the 60 photos are smaller than the cache's 45 px" in enlarged and "30 px, x1.50" in enlarged
    assert "upsampled" not in dataset.describe(dataset.load_images(class_tree, 24, cache_dir))


def test_demo_images_made_by_another_process_first_are_kept(tmp_path, monkeypatch):
    """Two runs making the demo set at once (an experiment's first parallel runs): the one that finishes second
    keeps the first one's folder, which the first may be reading already, and leaves no staging folder."""
    folder = tmp_path / "demo"
    real_staging_path = cache.staging_path

    def finished_meanwhile(target):
        (target / "disc").mkdir(parents=True)
        (target / "disc" / "theirs.png").write_bytes(b"")
        return real_staging_path(target)

    monkeypatch.setattr(cache, "staging_path", finished_meanwhile)
    assert dataset.make_demo_images(folder, per_class=3, size=16) == folder
    assert [path.name for path in (folder / "disc").iterdir()] == ["theirs.png"]
    assert [path.name for path in tmp_path.iterdir()] == ["demo"]
