"""dataset.py: layouts, decoding and bad files, photo identity, the cache, splits and the leak rule, batches, the demo
set and the download (against a local HTTP server, no internet)."""
import argparse
import functools
import io
import os
import signal
import threading
import zipfile
from concurrent.futures.process import BrokenProcessPool
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import numpy as np
import pytest
import torch
from conftest import SHARED_PETIMAGES, write_class_tree, write_image
from emulated_cuda import emulated_cuda
from PIL import Image, ImageOps

import dataset
from model import UserError

CUDA = torch.device("cuda", 0)
NOT_UTF8 = os.fsdecode(b"caf\xe9.jpg")  # a name Linux allows that is not valid UTF-8


def rows_match_files(data: dataset.ImageSet) -> bool:
    size = data.images.shape[-1]
    return all(np.array_equal(data.images[row].numpy(), dataset.decode_file(data.root / name, size)[0].transpose(2, 0, 1))
               for row, name in enumerate(data.files))


def load(root: Path, cache_dir: Path, size: int = 16, **kwargs) -> dataset.ImageSet:
    return dataset.load_images(root, size, cache_dir, workers=2, **kwargs)


# ---- finding images


def kaggle(root: Path) -> Path:
    for i in range(3):
        write_image(root / f"cat.{i}.jpg", seed=i)
        write_image(root / f"dog.{i}.jpg", seed=10 + i)
    return root


def nested(root: Path) -> Path:
    write_class_tree(root, per_class=2, classes=("Cat", "Dog"))
    write_image(root / "Dog" / "album" / "2019" / "x.jpg", seed=50)  # a class's own sub-folders are read
    write_image(root / "Cat" / "a.jfif", seed=52, format="JPEG")
    write_image(root / "Cat" / "b.JPE", seed=53, format="JPEG")
    write_image(root / "Cat" / ".thumbnails" / "0.jpg", seed=51)  # hidden: not
    (root / "Cat" / "Thumbs.db").write_bytes(b"\0" * 64)
    (root / "Dog" / ".hidden.jpg").write_bytes(b"not an image")
    (root / "Dog" / "notes.txt").write_text("")
    return root


def loose(root: Path) -> Path:
    for i in range(2):
        write_image(root / f"IMG_{i}.jpg", seed=i)
    return root


def years(root: Path) -> Path:  # photos beside folders: with --unlabelled, every photo at any depth
    write_image(root / "2019" / "a" / "x.jpg", seed=1)
    write_image(root / "2020" / "y.png", seed=2, format="PNG")
    write_image(root / "IMG_1.jpg", seed=3)
    return root


LAYOUTS = {  # builder, find_images keyword arguments, (files, labels, classes)
    "class folders, nested, clutter": (nested, {}, (["Cat/0.jpg", "Cat/1.jpg", "Cat/a.jfif", "Cat/b.JPE", "Dog/0.jpg",
                                                      "Dog/1.jpg", "Dog/album/2019/x.jpg"], [0, 0, 0, 0, 1, 1, 1],
                                                     ["Cat", "Dog"])),
    "Kaggle flat": (kaggle, {}, (["cat.0.jpg", "cat.1.jpg", "cat.2.jpg", "dog.0.jpg", "dog.1.jpg", "dog.2.jpg"],
                                 [0, 0, 0, 1, 1, 1], ["cat", "dog"])),
    "loose photos, detected": (loose, {"unlabelled": None}, (["IMG_0.jpg", "IMG_1.jpg"], [0, 0], [])),
    "--unlabelled, recursive": (years, {"unlabelled": True}, (["2019/a/x.jpg", "2020/y.png", "IMG_1.jpg"], [0] * 3,
                                                              [])),
    "one class, min_classes=1": (lambda root: write_class_tree(root, 2, ["Cat"]), {"min_classes": 1},
                                 (["Cat/0.jpg", "Cat/1.jpg"], [0, 0], ["Cat"])),
}


@pytest.mark.parametrize("build, kwargs, expected", LAYOUTS.values(), ids=LAYOUTS.keys())
def test_layouts_give_files_labels_and_classes(tmp_path, build, kwargs, expected):
    """Each layout gives its files (relative, sorted), labels and classes; hidden files, Thumbs.db and other
    suffixes are left out."""
    assert dataset.find_images(build(tmp_path / "data"), **kwargs) == expected


def test_linked_folders_are_read_once_and_a_link_loop_ends(tmp_path):
    """A linked sub-folder is read; a second link to it and a link back to an ancestor (a loop) add nothing."""
    write_image(tmp_path / "elsewhere" / "far.jpg", seed=1)
    write_image(tmp_path / "Cat" / "near.jpg", seed=2)
    os.symlink(tmp_path / "elsewhere", tmp_path / "Cat" / "linked")
    os.symlink(tmp_path / "elsewhere", tmp_path / "Cat" / "linked-again")
    os.symlink(tmp_path / "Cat", tmp_path / "Cat" / "loop")
    assert sorted(Path(name).name for name in dataset.image_tree(tmp_path / "Cat")) == ["far.jpg", "near.jpg"]


def one_class_inside(root: Path) -> Path:
    write_class_tree(root / "PetImages", 2, ["Cat", "Dog"])
    return root


REFUSED = {  # builder (None: nothing made), message fragment
    "missing folder": (None, "not found: run with --download to fetch Microsoft's Cats and Dogs, or with --demo"),
    "empty folder": (lambda root: root.mkdir(), "no images in {root}: run with --download"),
    "a file": (lambda root: write_image(root, seed=1, format="PNG"), "is a file, not a folder"),
    "photos beside class folders": (years, "beside its class folders: move them into one, or pass --unlabelled"),
    "loose photos, labels wanted": (loose, "2 of its 2 images are not named <class>.<n>.<ext> (e.g. 'IMG_0.jpg')"),
    "the folder above the classes": (one_class_inside, "found 1 class(es) in {root} ('PetImages'), 2 or more are "
                                                       "needed: did you mean --data {root}/PetImages?"),
    "Kaggle names of one class": (lambda root: write_image(root / "cat.0.jpg", seed=1).parent, "found 1 class(es)"),
}


@pytest.mark.parametrize("build, fragment", REFUSED.values(), ids=REFUSED.keys())
def test_folders_that_fit_no_layout_are_refused_in_one_line(tmp_path, build, fragment):
    """A folder that fits no layout, or holds fewer than two classes: one line saying what was found and what to do."""
    root = tmp_path / "data"
    if build:
        build(root)
    with pytest.raises(UserError) as refused:
        dataset.find_images(root)
    assert fragment.format(root=root) in str(refused.value) and "\n" not in str(refused.value)


# ---- decoding


def upright_with_exif_rotation(path: Path) -> Path:
    """A JPEG stored turned a quarter left with EXIF orientation 6: upright, its top half red, its bottom blue."""
    upright = np.zeros((40, 40, 3), dtype=np.uint8)
    upright[:20, :, 0] = upright[20:, :, 2] = 255
    exif = Image.Exif()
    exif[0x0112] = 6
    Image.fromarray(upright).transpose(Image.Transpose.ROTATE_90).save(path, exif=exif.tobytes(), quality=95)
    return path


def test_every_mode_decodes_to_an_upright_rgb_square(tmp_path):
    """L, CMYK, LA, P with transparency, 16-bit and RGBA decode to (S, S, 3) uint8: 16-bit white stays white,
    transparency becomes white, EXIF rotation is applied, and a wide image is centre-cropped, not squashed."""
    paths = [write_image(tmp_path / name, seed, mode=mode) for seed, (name, mode) in
             enumerate([("l.jpg", "L"), ("cmyk.jpg", "CMYK"), ("la.png", "LA")])]
    palette = Image.new("P", (30, 30), 0)
    palette.putpalette([0, 0, 0, 255, 0, 0] + [0] * 762)
    palette.save(tmp_path / "palette.png", transparency=0)
    Image.fromarray(np.full((20, 20), 65535, dtype=np.uint16)).save(tmp_path / "white16.png")
    Image.new("RGBA", (20, 20), (255, 0, 0, 0)).save(tmp_path / "clear.png")
    wide = np.zeros((20, 60, 3), dtype=np.uint8)
    wide[:, :20] = 255  # a white left third, which the centre crop removes
    Image.fromarray(wide).save(tmp_path / "wide.png")
    for path in [*paths, *(tmp_path / name for name in ("palette.png", "white16.png", "clear.png", "wide.png"))]:
        decoded = dataset.decode_file(path, 16)[0]
        assert decoded.shape == (16, 16, 3) and decoded.dtype == np.uint8, path
    for name in ("white16.png", "clear.png", "palette.png"):
        assert dataset.decode_file(tmp_path / name, 16)[0].min() == 255, name
    assert dataset.decode_file(tmp_path / "wide.png", 10)[0].max() < 40
    rotated = dataset.decode_file(upright_with_exif_rotation(tmp_path / "rotated.jpg"), 20)[0].astype(int)
    assert rotated[:8, :, 0].mean() > 200 and rotated[:8, :, 2].mean() < 50
    assert rotated[-8:, :, 2].mean() > 200 and rotated[-8:, :, 0].mean() < 50


def test_bad_files_are_skipped_and_listed_with_why(class_tree, cache_dir, monkeypatch):
    """Every bad file (empty, truncated, not an image, too many pixels, HEIC without a decoder, deleted during the
    build, a dangling link or a loop, an unreadable folder, a name not UTF-8 or with a newline) is skipped and listed
    in skipped.txt with why, a line each; every
    decodable image is kept, in order, its row its decoded pixels."""
    cat, dog, fox = (class_tree / name for name in ("Cat", "Dog", "Fox"))
    (cat / "empty.jpg").write_bytes(b"")
    good = io.BytesIO()
    Image.new("RGB", (64, 64), (10, 200, 30)).save(good, "JPEG")
    (cat / "truncated.jpg").write_bytes(good.getvalue()[: len(good.getvalue()) // 2])
    (cat / "text.jpg").write_text("<html>not found</html>")
    write_image(cat / "png.jpg", seed=1, format="PNG")  # another format under .jpg: kept
    write_image(dog / "bomb.png", seed=9, size=(120, 120))
    (dog / "photo.heic").write_bytes(b"\x00\x00\x00\x18ftypheic" + bytes(64))
    write_image(fox / "private" / "0.jpg", seed=9)
    (fox / NOT_UTF8).write_bytes(b"")
    (fox / "two\nlines.jpg").write_bytes(b"")
    (dog / "gone.jpg").symlink_to(dog / "absent.jpg")
    (dog / "loop.jpg").symlink_to(dog / "loop.jpg")
    monkeypatch.setattr(Image, "MAX_IMAGE_PIXELS", 5000)  # 14,400 px is over twice it; the forked workers inherit it
    listing, real_decode = os.scandir, dataset.decode_file
    monkeypatch.setattr(os, "scandir", lambda path=".": (_ for _ in ()).throw(PermissionError(13, "denied", path))
                        if not isinstance(path, int) and Path(path).name == "private" else listing(path))
    monkeypatch.setattr(dataset, "decode_file", lambda path, size: (path.unlink() if path.name == "3.jpg" and
                        path.parent.name == "Dog" else None) or real_decode(path, size))
    data = load(class_tree, cache_dir)
    assert data.skipped == {"Cat/empty.jpg": "empty file", "Cat/text.jpg": "not an image",
                            "Cat/truncated.jpg": "truncated image", "Dog/3.jpg": "unreadable (FileNotFoundError)",
                            "Dog/bomb.png": "unreadable (DecompressionBombError)",
                            "Dog/photo.heic": "not an image this Pillow reads", "Fox/private/": "unreadable folder",
                            f"Fox/{NOT_UTF8}": "empty file", "Fox/two\nlines.jpg": "empty file",
                            "Dog/gone.jpg": "broken link", "Dog/loop.jpg": "broken link"}
    listed = (data.cache_path / "skipped.txt").read_bytes().splitlines()
    assert b"Fox/caf\xe9.jpg\tempty file" in listed and b"Fox/two\\nlines.jpg\tempty file" in listed
    assert len(data.files) == 60 - 1 + 1 and "Cat/png.jpg" in data.files
    monkeypatch.setattr(dataset, "decode_file", real_decode)
    assert rows_match_files(data) and data.labels.tolist() == [0] * 21 + [1] * 19 + [2] * 20
    assert "11 skipped (3 empty file, 2 broken link, 1 not an image, " in dataset.describe(data)


def test_a_class_whose_every_file_is_skipped_is_refused(class_tree, cache_dir):
    """Every file of a class undecodable: one line naming the class, how many files and why; a --limit that
    draws no image of a class says to raise --limit."""
    for path in (class_tree / "Fox").glob("*.jpg"):
        path.write_bytes(b"")
    with pytest.raises(UserError, match=r"no usable image of class 'Fox' .*: all 20 files were skipped \(20 empty "):
        load(class_tree, cache_dir)
    with pytest.raises(UserError, match="among the 2 that --limit drew: raise --limit"):
        load(class_tree, cache_dir, limit=2)


# ---- identity


def write_photo(path: Path, seed: int, size=(120, 90)) -> Path:
    """A photo-like picture: random colour fields at four scales, the finer the fainter (as a photo's spectrum)."""
    rng = np.random.default_rng(seed)
    total = np.zeros((size[1], size[0], 3))
    for cells, weight in (((3, 2), 1.0), ((6, 4), 0.5), ((12, 9), 0.25), ((24, 18), 0.125)):
        field = Image.fromarray(rng.integers(0, 256, (cells[1], cells[0], 3), dtype=np.uint8))
        total += weight * (np.asarray(field.resize(size, Image.Resampling.BICUBIC), dtype=np.float64) - 128)
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray((128 + total / 1.875).clip(0, 255).astype(np.uint8)).save(path)
    return path


def reencode(source: Path, target: Path, scale: float, change=lambda image: image, **options) -> Path:
    with Image.open(source) as image:
        target.parent.mkdir(parents=True, exist_ok=True)
        change(image.convert("RGB").resize((round(image.width * scale), round(image.height * scale)),
                                           Image.Resampling.LANCZOS)).save(target, **options)
    return target


COPIES = {"smaller": lambda image: image, "mirrored": ImageOps.mirror, "grey": lambda image: image.convert("L"),
          "centre 80%": lambda image: ImageOps.crop(image, (image.width // 10, image.height // 10))}


def identity(source) -> torch.Tensor:
    return torch.tensor([dataset.decode_file(source, 36)[1]])


def test_reencoded_copies_are_the_same_photo_and_others_are_not(tmp_path):
    """The same picture resized and saved as WebP, JPEG or PNG is one photo (near); another picture, even one of
    the same layout in other colours, is not."""
    originals = [write_photo(tmp_path / f"{i}.png", seed=i) for i in range(12)]
    known = torch.cat([identity(path) for path in originals])
    for i, path in enumerate(originals):
        for name, scale, options in ((f"{i}.webp", 0.8, {"quality": 90}), (f"{i}.jpg", 1.5, {"quality": 85}),
                                     (f"{i}-copy.png", 1.0, {})):
            copy = identity(reencode(path, tmp_path / "copies" / name, scale, **options))
            assert dataset.near(copy, known).tolist() == [True] and dataset.near(known, copy).sum() == 1, name
    with Image.open(originals[0]) as image:
        Image.fromarray(255 - np.asarray(image)).save(tmp_path / "negative.png")
    assert not dataset.near(identity(tmp_path / "negative.png"), known).item()
    assert dataset.near(known, known[:0]).tolist() == [False] * 12


@pytest.mark.skipif(not (SHARED_PETIMAGES.parent.parent / "cats-vs-dogs-112px-webp.zip").is_file(),
                    reason="needs ../shared/data")
def test_real_reencodings_are_the_same_photo():
    """Real photos: 200 px JPEGs against the same photos among the 112 px WebP pack: every pair is one photo, and no
    JPEG is another's WebP."""
    jpegs = [path for name in ("Cat", "Dog") for path in sorted((SHARED_PETIMAGES / name).glob("*.jpg"))[:12]]
    with zipfile.ZipFile(SHARED_PETIMAGES.parent.parent / "cats-vs-dogs-112px-webp.zip") as pack:
        webp = torch.cat([identity(io.BytesIO(pack.read(f"PetImages/{path.parent.name}/{path.stem}.webp")))
                          for path in jpegs])
    jpeg = torch.cat([identity(path) for path in jpegs])
    assert all(dataset.near(jpeg[i:i + 1], webp).tolist() == [True] for i in range(len(jpegs)))
    assert all(dataset.near(jpeg[i:i + 1], torch.cat([webp[:i], webp[i + 1:]])).tolist() == [False]
               for i in range(len(jpegs)))


# ---- the cache


def test_cache_is_decoded_once_and_reused(class_tree, cache_dir, monkeypatch):
    """The cache is (N, 3, S, S) uint8, each row its file decoded, a name that is not UTF-8 included; a second load
    decodes nothing, and no staging folder is left."""
    write_image(class_tree / "Cat" / NOT_UTF8, seed=7)
    first = load(class_tree, cache_dir)
    assert first.images.shape == (61, 3, 16, 16) and first.images.dtype == torch.uint8 and rows_match_files(first)
    assert first.hashes.shape == (61, 8) and first.labels.dtype == torch.int64 and f"Cat/{NOT_UTF8}" in first.files
    monkeypatch.setattr(dataset, "build_cache", lambda *a, **k: pytest.fail("cache rebuilt"))
    second = load(class_tree, cache_dir)
    assert second.files == first.files and torch.equal(second.hashes, first.hashes)
    assert os.listdir(cache_dir) == [first.cache_path.name]


def test_a_folder_with_a_long_name_and_a_dollar_sign_is_cached(tmp_path, cache_dir):
    """A data folder's name near the 255-byte limit (a $ in it) gives a cache folder name within the limit."""
    root = write_class_tree(tmp_path / ("$HOME-" + "x" * 234), per_class=1, classes=("Cat", "Dog"))
    data = load(root, cache_dir)
    assert len(data.files) == 2 and data.cache_path.name.startswith("$HOME-xxx")
    assert len(os.fsencode(data.cache_path.name)) < 120


def test_a_photo_replaced_with_its_size_and_time_is_decoded_again(tmp_path, cache_dir):
    """A photo replaced by another of the same byte size, its modification time put back (cp -p, rsync -t): the
    cache key changes (inode, change time) and the new pixels are served."""
    for c, name in enumerate(["Cat", "Dog"]):
        for i in range(3):
            write_photo(tmp_path / "Pets" / name / f"{i}.bmp", seed=10 * c + i, size=(24, 24))
    before = load(tmp_path / "Pets", cache_dir)
    photo, stat = tmp_path / "Pets" / "Cat" / "0.bmp", (tmp_path / "Pets" / "Cat" / "0.bmp").stat()
    os.replace(write_photo(tmp_path / "other.bmp", seed=777, size=(24, 24)), photo)
    os.utime(photo, ns=(stat.st_atime_ns, stat.st_mtime_ns))
    assert photo.stat().st_size == stat.st_size and photo.stat().st_mtime_ns == stat.st_mtime_ns
    after = load(tmp_path / "Pets", cache_dir)
    assert after.cache_path != before.cache_path and rows_match_files(after)
    assert not torch.equal(after.images[0], before.images[0])


@pytest.mark.parametrize("change", ["a new file", "another resolution", "another decode version",
                                    "another Pillow", "another --limit"])
def test_the_cache_key_covers_files_resolution_decoding_and_pillow(class_tree, cache_dir, monkeypatch, change):
    """A new file, another resolution, decoding version, Pillow version or --limit: another cache."""
    first = load(class_tree, cache_dir)
    size, kwargs = 16, {}
    if change == "a new file":
        write_image(class_tree / "Cat" / "new.jpg", seed=999)
    elif change == "another resolution":
        size = 20
    elif change == "another decode version":
        monkeypatch.setattr(dataset, "DECODE_VERSION", dataset.DECODE_VERSION + 1)
    elif change == "another Pillow":
        monkeypatch.setattr(dataset, "PILLOW_VERSION", "0.0.1")
    else:
        kwargs["limit"] = 50
    second = load(class_tree, cache_dir, size, **kwargs)
    assert second.cache_path != first.cache_path and second.images.shape[-1] == size and rows_match_files(second)


def overwrite_meta(folder: Path, keep: int) -> None:
    (folder / "meta.json").write_bytes((folder / "meta.json").read_bytes()[:keep])


DAMAGES = {
    "images.u8 cut short": lambda folder: os.truncate(folder / "images.u8", 1000),
    "images.u8 missing": lambda folder: (folder / "images.u8").unlink(),
    "meta.json empty": lambda folder: overwrite_meta(folder, 0),
    "meta.json cut short": lambda folder: overwrite_meta(folder, 99),
    "meta.json missing": lambda folder: (folder / "meta.json").unlink(),
}


@pytest.mark.parametrize("damage", DAMAGES.values(), ids=DAMAGES.keys())
def test_a_damaged_cache_is_rebuilt_with_one_warning(class_tree, cache_dir, capsys, damage):
    """A cache cut short or missing a file is named in one warning line on stderr and rebuilt whole."""
    folder = load(class_tree, cache_dir).cache_path
    damage(folder)
    capsys.readouterr()
    data = load(class_tree, cache_dir)
    assert [line for line in capsys.readouterr().err.splitlines() if "damaged" in line] == [
        f"cache {folder} is damaged: rebuilding"]
    assert data.cache_path == folder and len(data.files) == 60 and rows_match_files(data)


def test_an_interrupted_build_leaves_nothing(class_tree, cache_dir, monkeypatch):
    """Ctrl-C in the middle of decoding leaves no cache and no staging folder."""
    def interrupted(results, **_):
        yield next(iter(results))
        raise KeyboardInterrupt

    monkeypatch.setattr(dataset, "tqdm", interrupted)
    with pytest.raises(KeyboardInterrupt):
        load(class_tree, cache_dir)
    assert os.listdir(cache_dir) == []


def test_a_killed_decoding_process_ends_the_build(class_tree, cache_dir, monkeypatch):
    """A decoding process killed mid-build (as by the OOM killer) ends the build with an error, not a hang, and
    leaves no staging folder."""
    real_decode = dataset.decode_file
    monkeypatch.setattr(dataset, "decode_file", lambda path, size: os.kill(os.getpid(), signal.SIGKILL)
                        if path.name == "7.jpg" else real_decode(path, size))
    with pytest.raises(BrokenProcessPool):
        load(class_tree, cache_dir)
    assert os.listdir(cache_dir) == []


def test_limit_is_a_seeded_subset(class_tree, cache_dir):
    """--limit picks the same images for the same seed, others for another seed."""
    a, b, c = (load(class_tree, cache_dir, limit=25, seed=seed) for seed in (1, 1, 2))
    assert a.files == b.files and len(a.files) == 25 and a.files != c.files and set(a.files) <= set(
        dataset.find_images(class_tree)[0])


# ---- splits


LABELS = torch.arange(600) % 3  # 200 images per class


def splits_of(labels=LABELS, test_fraction=0.2, num_labels=30, seed=1, label_seed=2, **kwargs) -> dataset.Splits:
    return dataset.make_splits(labels, 3, test_fraction, num_labels, seed, label_seed, **kwargs)


def test_splits_are_stratified_balanced_disjoint_and_cover_everything():
    """Test and validation hold their fraction of each class, the labelled subset is balanced (the odd label to the
    first classes), no index is in two of test, validation and pretraining, which together cover every image, and
    the labelled images are pretraining images."""
    splits = splits_of(val_fraction=0.1, num_labels=31)
    assert torch.bincount(LABELS[splits.test]).tolist() == [40] * 3
    assert torch.bincount(LABELS[splits.validation]).tolist() == [20] * 3
    assert torch.bincount(LABELS[splits.labelled]).tolist() == [11, 10, 10]
    parts = [set(part.tolist()) for part in (splits.test, splits.validation, splits.pretrain)]
    assert sum(map(len, parts)) == 600 and set().union(*parts) == set(range(600))
    assert set(splits.labelled.tolist()) <= parts[2]
    assert all(torch.equal(part, part.sort().values) and part.dtype == torch.int64 for part in vars(splits).values())


def test_the_test_split_depends_on_its_seed_and_fraction_only():
    """Same seeds, same splits; another label seed or validation size keeps the test split; another split seed
    changes it."""
    a = splits_of(val_fraction=0.1)
    assert all(torch.equal(x, y) for x, y in zip(vars(a).values(), vars(splits_of(val_fraction=0.1)).values()))
    assert torch.equal(splits_of(label_seed=3).test, a.test) and not torch.equal(splits_of(label_seed=3).labelled,
                                                                                 splits_of().labelled)
    assert all(torch.equal(splits_of(val_fraction=f).test, a.test) for f in (0.0, 0.05, 0.2))
    assert len(splits_of().validation) == 0 and not torch.equal(splits_of(seed=5).test, a.test)


def test_copies_of_held_out_images_are_neither_pretrained_nor_labelled():
    """The leak rule: an image whose identity equals a test or validation image's (another index, another class)
    is left out of validation, pretraining and labels."""
    hashes = torch.randint(-2 ** 62, 2 ** 62, (600, 2), generator=torch.Generator().manual_seed(0))
    before = splits_of(val_fraction=0.1, hashes=hashes)
    copies = [int(before.pretrain[0]), int(before.pretrain[-1]), int(before.validation[-1])]
    one_bit = torch.tensor([1, 0])  # near, not identical: identical pixels under two classes are in no split
    hashes[copies[0]], hashes[copies[1]] = hashes[before.test[0]] ^ one_bit, hashes[before.validation[0]] ^ one_bit
    hashes[copies[2]] = hashes[before.test[1]] ^ one_bit
    after = splits_of(val_fraction=0.1, hashes=hashes)
    kept = set(torch.cat([after.pretrain, after.labelled, after.validation]).tolist())
    assert not kept & set(copies) and torch.equal(after.test, before.test)


@pytest.mark.parametrize("copy", COPIES)
def test_reencoded_copies_in_the_folder_are_held_out_together(tmp_path, cache_dir, copy):
    """A folder holding each cat twice, as PNG and as a smaller, mirrored, grey or cropped JPEG under another name:
    whichever copy is held out, the other is neither pretrained nor labelled."""
    root = tmp_path / "Pets"
    for c, name in enumerate(["Cat", "Dog"]):
        for i in range(10):
            path = write_photo(root / name / f"{i}.png", seed=1000 * c + i, size=(60, 45))
            if name == "Cat":
                reencode(path, root / "Cat" / f"copy-{i}.jpg", 0.8, COPIES[copy], quality=85)
    data = load(root, cache_dir, 32)
    splits = dataset.make_splits(data.labels, 2, 0.2, 4, 0, 0, data.classes, data.hashes, 0.1)
    stem = lambda i: Path(data.files[i]).stem.removeprefix("copy-") if data.files[i].startswith("Cat") else None
    held_out = {stem(i) for i in torch.cat([splits.test, splits.validation]).tolist()} - {None}
    trained = {stem(i) for i in torch.cat([splits.pretrain, splits.labelled]).tolist()} - {None}
    assert held_out and trained and not held_out & trained


def test_too_few_images_per_class_say_what_is_needed():
    """A class too small for its test and validation shares, its labels and one to pretrain on: one line naming the
    class and what it needs."""
    with pytest.raises(UserError, match=r"class 'Dog' has 5 images, too few for 1 test, 1 validation, 10 labelled "
                                        r"and one more to pretrain on: add images, or lower --labels"):
        dataset.make_splits(torch.tensor([0] * 100 + [1] * 5), 2, 0.1, 20, 0, 0, ["Cat", "Dog"], val_fraction=0.05)
    with pytest.raises(UserError, match=r"class 'Cat' has 4 images \(3 copies of held-out ones or under two classes\)"
                                        r", too few for 1 test, 0 validation, 1 labelled and one more to pretrain on: "
                                        r"add images$"):  # nothing left to lower
        hashes = torch.arange(8).repeat(2, 1).T.contiguous() * 1000003
        hashes[1:4] = hashes[0]
        dataset.make_splits(torch.tensor([0] * 4 + [1] * 4), 2, 0.25, 2, 0, 0, ["Cat", "Dog"], hashes)
    unlabelled = dataset.make_splits(torch.zeros(5, dtype=torch.int64), 0, 0.1, 250, 0, 0)
    assert unlabelled.pretrain.tolist() == list(range(5)) and len(unlabelled.test) == len(unlabelled.labelled) == 0


def test_split_differences_name_what_changed():
    """split_identity records the split; split_differences names the settings that changed, as their flags, and
    ignores the folder's path (moved photos are the same photos)."""
    files = [f"Cat/{i}.jpg" for i in range(10)]
    data = argparse.Namespace(root=Path("/a"), files=files, classes=["Cat"])
    splits = argparse.Namespace(test=torch.tensor([1, 2]))
    options = argparse.Namespace(split_seed=0, test_fraction=0.1, val_fraction=0.05, limit=None)
    recorded = dataset.split_identity(data, splits, options)
    moved = dataset.split_identity(argparse.Namespace(**{**vars(data), "root": Path("/b")}), splits, options)
    assert dataset.split_differences(recorded, moved) == []
    other = dataset.split_identity(data, argparse.Namespace(test=torch.tensor([1, 3])),
                                   argparse.Namespace(**{**vars(options), "split_seed": 4}))
    assert dataset.split_differences(recorded, other) == ["--split-seed (was 0, now 4)", "the test images"]
    assert dataset.fingerprint(files, torch.tensor([2, 1])) == recorded["the test images"]


def options(data: Path, cache_dir: Path, **changes) -> argparse.Namespace:
    return argparse.Namespace(**{"data": data, "cache_dir": cache_dir, "image_size": 16, "cache_size": None,
                                 "demo": False, "unlabelled": False, "download": False, "limit": None, "workers": 2,
                                 "split_seed": 0, "test_fraction": 0.2, "val_fraction": 0.1, "labels": 6,
                                 "label_seed": 0, **changes})


def test_open_data_reads_the_flags_and_prints_the_start_up_lines(class_tree, cache_dir, capsys, monkeypatch):
    """open_data decodes at 8/7 of --image-size, splits as make_splits does and prints the start-up lines; --demo
    reads the generated set; a --cache-size below --image-size is refused before any decoding."""
    data, splits = dataset.open_data(options(class_tree, cache_dir))
    out = capsys.readouterr().out
    assert data.images.shape[-1] == dataset.default_cache_size(16) == 19 and len(splits.labelled) == 6
    assert "60 images (Cat 20, Dog 20, Fox 20) at 19 px" in out and "6 labelled, 6 validation, 12 test" in out
    monkeypatch.setattr(dataset, "make_demo_images", functools.partial(dataset.make_demo_images, per_class=8))
    demo, _ = dataset.open_data(options(class_tree, cache_dir, demo=True, labels=2), verbose=False)
    assert demo.classes == ["disc", "square"] and demo.root == (cache_dir / dataset.DEMO_FOLDER).resolve()
    with pytest.raises(UserError, match="--cache-size 12 is below --image-size 16"):
        dataset.open_data(options(tmp := cache_dir / "none", tmp, cache_size=12))
    assert not tmp.exists()
    with pytest.raises(UserError, match=f"--cache-dir {class_tree / 'cache'} is inside --data {class_tree}: its files"):
        dataset.open_data(options(class_tree, class_tree / "cache"))


def test_photos_under_two_classes_are_counted_listed_and_in_no_split(class_tree, cache_dir, capsys):
    """The same photo in two class folders has no label: each copy is left out of every split, and a warning counts
    them and lists them in two-labels.txt."""
    for i in range(5):
        (class_tree / "Dog" / f"cat-{i}.jpg").write_bytes((class_tree / "Cat" / f"{i}.jpg").read_bytes())
    data, splits = dataset.open_data(options(class_tree, cache_dir))
    both = {f"Cat/{i}.jpg" for i in range(5)} | {f"Dog/cat-{i}.jpg" for i in range(5)}
    assert {data.files[i] for i in splits.two_labels} == both and "warning: 10 photos are under two classes" in \
        capsys.readouterr().out
    assert set((data.cache_path / "two-labels.txt").read_text().splitlines()) == both
    in_splits = torch.cat([splits.test, splits.validation, splits.labelled, splits.pretrain]).tolist()
    assert not {data.files[i] for i in in_splits} & both and len(set(in_splits)) == 65 - 10


# ---- batches


def test_epoch_batches_are_seeded_full_and_sliced_per_process():
    """An epoch visits each index at most once, in full batches, in a seeded order, after `skip` batches; the
    processes' slices of a batch make up the whole batch."""
    indices = torch.arange(10, 53)
    batches = list(dataset.epoch_batches(indices, 8, torch.Generator().manual_seed(0)))
    seen = torch.cat(batches).tolist()
    assert len(batches) == 5 and len(set(seen)) == 40 and set(seen) <= set(indices.tolist())
    assert all(torch.equal(x, y) for x, y in zip(batches, dataset.epoch_batches(indices, 8, torch.Generator()
                                                                                .manual_seed(0))))
    assert all(torch.equal(x, y) for x, y in zip(batches[2:], dataset.epoch_batches(
        indices, 8, torch.Generator().manual_seed(0), skip=2))) and len(list(dataset.epoch_batches(
            indices, 8, torch.Generator().manual_seed(0), skip=2))) == 3
    slices = [list(dataset.epoch_batches(indices, 8, torch.Generator().manual_seed(0), r, 2)) for r in range(2)]
    assert all(torch.equal(torch.cat([a, b]), whole) for a, b, whole in zip(*slices, batches))


def host_images(n: int = 24) -> torch.Tensor:
    return torch.randint(0, 256, (n, 3, 4, 4), dtype=torch.uint8, generator=torch.Generator().manual_seed(0))


def test_a_host_cache_reaches_cuda_through_pinned_prefetched_batches():
    """A host cache feeding CUDA (the order drawn on the GPU): one pin per batch, copied asynchronously from pinned
    memory only, the values the host's; a cache on the GPU is gathered there without pins; gather pins only
    host-to-GPU copies."""
    host, indices = host_images(), torch.arange(24)
    expected = list(dataset.device_batches(host, indices, 8, torch.Generator().manual_seed(3), torch.device("cpu")))
    with emulated_cuda() as gpu:
        batches = list(dataset.device_batches(host, indices, 8, torch.Generator(CUDA).manual_seed(3), CUDA))
        assert all(batch.device == CUDA for batch in batches) and gpu.pins == 3 and gpu.pageable_async_copies == 0
        assert all(torch.equal(batch.cpu(), want) for batch, want in zip(batches, expected))
        on_gpu = dataset.cache_on_device(host, CUDA)
        assert on_gpu.device == CUDA
        batches = list(dataset.device_batches(on_gpu, indices, 8, torch.Generator(CUDA).manual_seed(3), CUDA))
        assert all(batch.device == CUDA for batch in batches) and gpu.pins == 3
        rows = torch.tensor([3, 1, 4])
        assert torch.equal(dataset.gather(host, rows, CUDA).cpu(), host[rows]) and gpu.pins == 4
        assert torch.equal(dataset.gather(on_gpu, rows.to(CUDA), CUDA).cpu(), host[rows]) and gpu.pins == 4
    assert dataset.cache_on_device(host, torch.device("cpu")) is host


def test_a_prefetch_left_early_ends_its_thread(monkeypatch):
    """A consumer that stops after the first batch leaves no thread behind; a GPU too full for the cache keeps it
    on the host."""
    with emulated_cuda():
        before = set(threading.enumerate())
        batches = dataset.device_batches(host_images(40), torch.arange(40), 4, torch.Generator().manual_seed(3), CUDA,
                                         prefetch=1)
        next(batches)
        assert set(threading.enumerate()) - before
        batches.close()
        assert set(threading.enumerate()) - before == set()
        monkeypatch.setattr(torch.cuda, "mem_get_info", lambda device=None: (1 << 30, 80 << 30))
        assert dataset.cache_on_device(host_images(), CUDA).device.type == "cpu"


# ---- demo data


def test_demo_images_are_made_once_as_two_readable_classes(tmp_path, monkeypatch):
    """The demo set is a two-class folder, written once; when another process finished it first, theirs is kept
    and no staging folder is left."""
    root = dataset.make_demo_images(tmp_path / "demo", per_class=4, size=16)
    files, labels, classes = dataset.find_images(root)
    assert classes == ["disc", "square"] and labels == [0] * 4 + [1] * 4
    monkeypatch.setattr(dataset, "staging_folder", lambda *a: pytest.fail("made twice"))
    assert dataset.make_demo_images(root, per_class=4, size=16) == root
    monkeypatch.undo()
    theirs = tmp_path / "theirs"
    real_mkdtemp = dataset.tempfile.mkdtemp
    monkeypatch.setattr(dataset.tempfile, "mkdtemp", lambda **kw: (theirs / "disc").mkdir(parents=True) or
                        real_mkdtemp(**kw))
    assert dataset.make_demo_images(theirs, per_class=2, size=16) == theirs
    assert os.listdir(theirs) == ["disc"] and sorted(os.listdir(tmp_path)) == ["demo", "theirs"]


# ---- download


def jpeg(colour) -> bytes:
    buffer = io.BytesIO()
    Image.new("RGB", (16, 16), colour).save(buffer, "JPEG")
    return buffer.getvalue()


MEMBERS = {**{f"PetImages/{name}/{i}.jpg": jpeg((90 * c, 40 * i, 0)) for c, name in enumerate(["Cat", "Dog"])
              for i in range(3)}, "PetImages/Cat/Thumbs.db": b"\0" * 64}


def zip_bytes(members: dict, compression=zipfile.ZIP_DEFLATED) -> bytes:
    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w", compression) as pack:
        pack.writestr("readme[1].txt", "top-level extra, as in the real archive")
        for name, data in members.items():
            pack.writestr(name, data)
    return buffer.getvalue()


class Handler(BaseHTTPRequestHandler):
    def do_GET(self):
        self.server.requests += 1
        if self.server.status != 200:
            return self.send_error(self.server.status)
        body = self.server.payload
        self.send_response(200)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body[:len(body) // 2] if self.server.drop else body)  # drop: hang up halfway

    def log_message(self, *args):
        pass


@pytest.fixture
def server(monkeypatch):
    for variable in ("http_proxy", "HTTP_PROXY", "all_proxy", "ALL_PROXY"):
        monkeypatch.delenv(variable, raising=False)
    server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    server.payload, server.status, server.drop, server.requests = zip_bytes(MEMBERS), 200, False, 0
    server.url = f"http://127.0.0.1:{server.server_address[1]}/kagglecatsanddogs_5340.zip"
    threading.Thread(target=server.serve_forever, args=(0.01,), daemon=True).start()
    yield server
    server.shutdown()
    server.server_close()


def test_download_extracts_petimages_once(tmp_path, server):
    """--download: PetImages holds exactly the zip's PetImages/ members (a "../" member stays inside), the zip is
    kept and nothing temporary is left; a second call makes no request, nor one with the zip kept."""
    server.payload = zip_bytes({**MEMBERS, "PetImages/Cat/../../../evil.jpg": b"x"})
    root = dataset.download_dataset(tmp_path / "data", server.url)
    found = {path.relative_to(tmp_path / "data").as_posix(): path.read_bytes() for path in root.rglob("*")
             if path.is_file()}
    assert root == tmp_path / "data" / "PetImages" and found == {**MEMBERS, "PetImages/Cat/evil.jpg": b"x"}
    assert sorted(os.listdir(tmp_path / "data")) == ["PetImages", "PetImages.zip"] and server.requests == 1
    assert dataset.download_dataset(tmp_path / "data", server.url) == root and server.requests == 1
    os.rename(root, tmp_path / "moved")
    assert dataset.download_dataset(tmp_path / "data", server.url) == root and server.requests == 1
    assert dataset.find_images(root)[2] == ["Cat", "Dog"]


def damaged_member() -> bytes:
    data = bytearray(zip_bytes(MEMBERS, zipfile.ZIP_STORED))
    data[data.index(b"PetImages/Cat/0.jpg") + 40] ^= 0xFF  # inside the first member's data
    return bytes(data)


BAD_SERVERS = {  # server settings, message fragment, whether the archive is left
    "HTTP 404": ({"status": 404}, "HTTP Error 404"),
    "connection dropped halfway": ({"drop": True}, "is not a whole zip of PetImages"),
    "not a zip": ({"payload": b"<html>not a zip</html>" * 50}, "is not a whole zip of PetImages"),
    "a damaged member": ({"payload": damaged_member()}, "(a damaged member): deleted; run again"),
    "no PetImages": ({"payload": zip_bytes({"Other/0.jpg": b"x"})}, "(no PetImages/ folder)"),
}


@pytest.mark.parametrize("settings, fragment", BAD_SERVERS.values(), ids=BAD_SERVERS.keys())
def test_a_failed_download_is_one_line_and_leaves_no_petimages(tmp_path, server, settings, fragment):
    """A failed request or a zip that is not whole: one line, no PetImages, no archive, nothing temporary."""
    vars(server).update(settings)
    with pytest.raises(UserError) as refused:
        dataset.download_dataset(tmp_path, server.url)
    assert fragment in str(refused.value) and "\n" not in str(refused.value)
    assert [name for name in os.listdir(tmp_path) if not name.endswith(".part")] == []


def test_download_needs_a_folder_named_petimages(tmp_path, server):
    """--download with --data not named PetImages is refused before any request; named so, it downloads."""
    with pytest.raises(UserError, match="pass --data DIR/PetImages"):
        dataset.photos_folder(options(tmp_path / "photos", tmp_path, download=True, download_url=server.url))
    assert server.requests == 0
    assert dataset.photos_folder(options(tmp_path / "PetImages", tmp_path, download=True,
                                         download_url=server.url)) == tmp_path / "PetImages"
    assert server.requests == 1
