"""A photo is known by its pixels, not its bytes: re-encoded, resized or renamed copies of test images are
recognised (decode.perceptual_hash, decode.near), kept out of pretraining and labels, refused in a checkpoint,
left out of a --test-data folder a classifier trains on; a cache never serves the pixels of a replaced photo."""
from __future__ import annotations

import json
import os
import re
import zipfile
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

import classifier
import train
from simsiam import dataset, decode, pretrained, runs
from simsiam.model import CheckpointError, SimSiam, load_checkpoint, save_checkpoint

SHARED = Path(__file__).resolve().parents[2] / "shared" / "data"
SMALL = ["--image-size", "32", "--device", "cpu", "--workers", "2"]


def write_photo(path: Path, seed: int, size=(120, 90)) -> Path:
    """A photo-like picture: random colour fields at four scales, the finer the fainter (as a photo's spectrum
    falls with frequency), so that its low frequencies are clear of the re-encodings' noise."""
    rng = np.random.default_rng(seed)
    total = np.zeros((size[1], size[0], 3))
    for cells, weight in (((3, 2), 1.0), ((6, 4), 0.5), ((12, 9), 0.25), ((24, 18), 0.125)):
        field = Image.fromarray(rng.integers(0, 256, (cells[1], cells[0], 3), dtype=np.uint8))
        total += weight * (np.asarray(field.resize(size, Image.Resampling.BICUBIC), dtype=np.float64) - 128)
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray((128 + total / 1.875).clip(0, 255).astype(np.uint8)).save(path)
    return path


def reencode(source: Path, target: Path, scale: float, **options) -> Path:
    """`source` resized by `scale` and saved as `target` (its suffix the format), as a copy made elsewhere is."""
    with Image.open(source) as image:
        size = (round(image.width * scale), round(image.height * scale))
        target.parent.mkdir(parents=True, exist_ok=True)
        image.convert("RGB").resize(size, Image.Resampling.LANCZOS).save(target, **options)
    return target


def identity(path: Path) -> torch.Tensor:
    return torch.tensor([decode.square(path, 36)[2]])


def photo_tree(root: Path, per_class: int = 16) -> Path:
    for c, name in enumerate(["Cat", "Dog"]):
        for i in range(per_class):
            write_photo(root / name / f"{i}.png", seed=1000 * c + i)
    return root


def test_reencoded_copies_are_the_same_photo_and_others_are_not(tmp_path):
    """The rule: the same picture resized and saved as WebP, JPEG or PNG is one photo; another picture, even one
    of the same layout in other colours, is not."""
    originals = [write_photo(tmp_path / f"{i}.png", seed=i) for i in range(20)]
    known = torch.cat([identity(path) for path in originals])
    for i, path in enumerate(originals):
        for target, scale, options in ((f"{i}.webp", 0.8, {"quality": 90}), (f"{i}.jpg", 1.5, {"quality": 85}),
                                       (f"{i}-copy.png", 1.0, {})):
            copy = identity(reencode(path, tmp_path / "copies" / target, scale, **options))
            assert decode.near(copy, known[i:i + 1]).item(), target
            assert not decode.near(copy, torch.cat([known[:i], known[i + 1:]])).item(), target
    with Image.open(originals[0]) as image:  # the same layout in other colours
        Image.fromarray(255 - np.asarray(image)).save(tmp_path / "negative.png")
    assert not decode.near(identity(tmp_path / "negative.png"), known).item()


@pytest.mark.skipif(not (SHARED / "cats-vs-dogs-112px-webp.zip").is_file(), reason="needs ../shared/data")
def test_real_reencodings_are_the_same_photo(tmp_path):
    """On real photos: 100 of the 200 px JPEGs against the same photos among the 112 px WebP files, as a user
    pretraining on one and testing on the other would: every pair is one photo, and no JPEG is another's WebP."""
    jpegs = sorted((SHARED / "cats-vs-dogs" / "PetImages" / "Cat").glob("*.jpg"))[:50] + sorted(
        (SHARED / "cats-vs-dogs" / "PetImages" / "Dog").glob("*.jpg"))[:50]
    with zipfile.ZipFile(SHARED / "cats-vs-dogs-112px-webp.zip") as pack:
        for path in jpegs:
            name = f"PetImages/{path.parent.name}/{path.stem}.webp"
            (tmp_path / name).parent.mkdir(parents=True, exist_ok=True)
            (tmp_path / name).write_bytes(pack.read(name))
    jpeg = torch.cat([identity(path) for path in jpegs])
    webp = torch.cat([identity(tmp_path / "PetImages" / p.parent.name / f"{p.stem}.webp") for p in jpegs])
    assert all(decode.near(jpeg[i:i + 1], webp[i:i + 1]).item() for i in range(len(jpegs)))
    assert not any(decode.near(jpeg[i:i + 1], torch.cat([webp[:i], webp[i + 1:]])).item() for i in range(len(jpegs)))


def test_reencoded_copies_of_held_out_photos_are_neither_pretrained_nor_labelled(tmp_path):
    """A folder that holds each cat twice, once as PNG and once resized as JPEG under another name: whichever copy
    is held out, the other is in no other split."""
    root = photo_tree(tmp_path / "Pets", per_class=20)
    for path in sorted((root / "Cat").glob("*.png")):
        reencode(path, root / "Cat" / f"copy-{path.stem}.jpg", 0.8, quality=85)
    data, splits = dataset.open_data(dataset.DataOptions(root, tmp_path / "cache", 32, labels=4, test_fraction=0.2),
                                     verbose=False)
    held_out = {Path(data.files[i]).stem.removeprefix("copy-") for i in torch.cat([splits.test, splits.validation])
                if data.files[i].startswith("Cat")}
    trained = {Path(data.files[i]).stem.removeprefix("copy-") for i in torch.cat([splits.pretrain, splits.labelled])
               if data.files[i].startswith("Cat")}
    assert held_out and not held_out & trained


def fake_checkpoint(path: Path, identities: torch.Tensor, **changes) -> Path:
    """A SimSiam checkpoint as train.py writes it, pretrained (it says) on the photos `identities`."""
    entries = {"args": {"image_size": 32, "batch_size": 8, "cache_size": None, "seed": 0},
               "split": {"test_fingerprint": "x"}, "pretraining_hashes": identities,
               "hash_kind": decode.HASH_KIND, "protocol": runs.PROTOCOL, **changes}
    save_checkpoint(path, "simsiam", SimSiam(), **{k: v for k, v in entries.items()
                                                                        if v is not None})
    return path


def test_a_checkpoint_whose_identities_cannot_be_compared_is_refused(tmp_path):
    """A checkpoint that identifies its photos by the bytes of their files (written before this rule), or that
    records none, would let any test image through the leak check: refused, naming why."""
    known = torch.tensor([[1, 2]])
    pretrained.read(fake_checkpoint(tmp_path / "good.pt", known))
    with pytest.raises(CheckpointError, match="by the bytes of their files"):
        pretrained.read(fake_checkpoint(tmp_path / "bytes.pt", torch.tensor([1, 2, 3]).reshape(-1, 1).repeat(1, 2),
                                        hash_kind=None))
    with pytest.raises(CheckpointError, match="pretraining_hashes"):
        pretrained.read(fake_checkpoint(tmp_path / "emptied.pt", torch.zeros((0, 2), dtype=torch.int64)))


def test_pretrained_photos_are_found_by_their_pixels(tmp_path):
    """check_unseen compares by identity: the test set's re-encoded copies of pretraining photos are counted."""
    originals = [write_photo(tmp_path / f"{i}.png", seed=i) for i in range(6)]
    copies = [reencode(path, tmp_path / f"{i}.jpg", 1.5, quality=85) for i, path in enumerate(originals)]
    checkpoint = load_checkpoint(fake_checkpoint(tmp_path / "siam.pt", torch.cat([identity(p) for p in originals])),
                                 "simsiam")
    test = torch.cat([identity(p) for p in copies[:2]] + [identity(write_photo(tmp_path / "new.png", seed=99))])
    with pytest.raises(CheckpointError, match="2 of the 3 test images"):
        pretrained.check_unseen(checkpoint, tmp_path / "siam.pt", test)


@pytest.mark.slow
def test_pretraining_on_one_format_and_testing_on_another_is_refused(tmp_path, capsys):
    """The example: pretrained on PNG photos, evaluated on a folder of the same photos as smaller JPEGs (as on the
    112 px WebP pack and the 200 px JPEG folder): refused in one line with the count."""
    pets = photo_tree(tmp_path / "Pets")
    for path in pets.rglob("*.png"):
        reencode(path, tmp_path / "PetsJPEG" / path.parent.name / f"{path.stem}.jpg", 0.8, quality=85)
    train.main(["--data", str(pets), "--cache-dir", str(tmp_path / "cache"), "--out", str(tmp_path / "simsiam"),
                "--epochs", "1", "--batch-size", "8", "--labels", "4", "--test-fraction", "0.25", *SMALL])
    capsys.readouterr()
    with pytest.raises(SystemExit) as stop:
        classifier.main(["--data", str(pets), "--cache-dir", str(tmp_path / "cache"), "--labels", "4",
                         "--test-fraction", "0.25", "--checkpoint", str(tmp_path / "simsiam" / "siam.pt"),
                         "--test-data", str(tmp_path / "PetsJPEG"), "--out", str(tmp_path / "probe"),
                         "--epochs", "1", *SMALL])
    error = capsys.readouterr().err
    assert stop.value.code == 2 and re.search(r"[1-9]\d* of the 28 test images were among the", error)  # 4 labelled
    assert not (tmp_path / "probe" / "classifier.pt").exists()


@pytest.mark.slow
@pytest.mark.parametrize("all_labels", [False, True])
def test_a_random_init_classifier_leaves_its_training_photos_out_of_test_data(tmp_path, capsys, all_labels):
    """classifier.py --random --test-data naming its own training folder: the photos it trains on (the labels, or
    with --all-labels every pretraining photo) are left out of the test set, and it says how many."""
    pets = photo_tree(tmp_path / "Pets")
    flags = ["--data", str(pets), "--cache-dir", str(tmp_path / "cache"), "--random", "--labels", "4",
             "--test-fraction", "0.25", "--test-data", str(pets), "--out", str(tmp_path / "probe"), "--epochs", "1",
             "--batch-size", "4", *SMALL, *(["--all-labels"] if all_labels else [])]
    classifier.main(flags)
    trained = set(json.loads((tmp_path / "probe" / "labelled.json").read_text())["files"])
    tested = set(runs.read_predictions(tmp_path / "probe")["files"])
    assert trained and not trained & tested and len(tested) == 32 - len(trained)
    assert f"{len(trained)} of the 32 images of --test-data" in capsys.readouterr().out


def test_a_photo_replaced_with_its_time_restored_is_decoded_again(tmp_path):
    """A photo replaced by another of the same byte size, its modification time put back (cp -p, rsync -t): the
    cache is rebuilt and serves the new pixels."""
    root = tmp_path / "Pets"
    for c, name in enumerate(["Cat", "Dog"]):
        for i in range(6):
            write_photo(root / name / f"{i}.bmp", seed=10 * c + i, size=(40, 40))
    options = dataset.DataOptions(root, tmp_path / "cache", 32, labels=2, test_fraction=0.2, val_fraction=0.0)
    before, _ = dataset.open_data(options, verbose=False)
    photo = root / "Cat" / "0.bmp"
    stat = photo.stat()
    write_photo(tmp_path / "other.bmp", seed=777, size=(40, 40))
    os.replace(tmp_path / "other.bmp", photo)
    os.utime(photo, ns=(stat.st_atime_ns, stat.st_mtime_ns))
    assert photo.stat().st_size == stat.st_size and photo.stat().st_mtime_ns == stat.st_mtime_ns
    after, _ = dataset.open_data(options, verbose=False)
    row = after.files.index("Cat/0.bmp")
    expected = decode.decode_image(photo, after.images.shape[-1]).transpose(2, 0, 1)
    assert np.array_equal(after.images[row].numpy(), expected)
    assert not np.array_equal(before.images[row].numpy(), expected)
