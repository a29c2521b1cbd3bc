"""Images and labels: finding them, decoding each once into a uint8 cache (a bad file is skipped and listed, never
fatal), the splits and the leak rule, batches, the demo set and the download. Layouts (find_images):
    ROOT/<class>/<image>        one sub-folder per class (PetImages/Cat/0.jpg), a class's own sub-folders included
    ROOT/<class>.<n>.<ext>      Kaggle's flat layout (train/cat.0.jpg): the class is the name's prefix
    ROOT/<image>                loose photos (IMG_0001.jpg): unlabelled, for pretraining (unlabelled=None)
    ROOT/**/<image>             unlabelled=True: every photo under ROOT, whatever its sub-folders, unlabelled"""
import contextlib
import hashlib
import itertools
import json
import math
import multiprocessing
import os
import re
import shutil
import signal
import sys
import tempfile
import urllib.request
import zipfile
import zlib
from collections import Counter, defaultdict
from concurrent.futures import ProcessPoolExecutor, ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from PIL import Image, ImageDraw, ImageOps, __version__ as PILLOW_VERSION
from tqdm import tqdm

from model import UserError

# ---- finding images

IMAGE_SUFFIXES = set(".jpg .jpeg .jpe .jfif .png .webp .bmp .gif .tif .tiff .heic .heif .avif".split())
KAGGLE_NAME = re.compile(r"([^.]+)\.[0-9]+\.[^.]+")  # cat.0.jpg: class, number, suffix
FETCH_HINT = "run with --download to fetch Microsoft's Cats and Dogs, or with --demo for a synthetic set"

def is_image_file(path: Path) -> bool:
    return path.suffix.lower() in IMAGE_SUFFIXES and not path.name.startswith(".") and (path.is_file()
                                                                                       or path.is_symlink())

def image_tree(folder: Path) -> list[str]:
    """The images under `folder` at any depth, then its sub-folders that could not be read ("x/"), relative and sorted.
    Hidden files and folders are left out; linked folders are followed, each read once, so that a link loop ends."""
    files, unreadable, visited = [], [], set()
    for parent, folders, names in os.walk(folder, onerror=lambda error: unreadable.append(Path(error.filename)),
                                          followlinks=True):
        visited.add(os.path.realpath(parent))
        real = {os.path.realpath(os.path.join(parent, name)): name  # two links to one folder: the first name
                for name in sorted(folders, reverse=True) if not name.startswith(".")}
        folders[:] = [name for path, name in real.items() if path not in visited]
        visited.update(real)
        files += [path for path in (Path(parent) / name for name in names) if is_image_file(path)]
    return ([str(path.relative_to(folder)) for path in sorted(files)]
            + [f"{path.relative_to(folder)}/" for path in sorted(unreadable)])

def find_images(root: Path, min_classes: int = 2,
                unlabelled: bool | None = False) -> tuple[list[str], list[int], list[str]]:
    """(files relative to root, labels, class names) in one of the layouts above; unlabelled (True, or None and
    loose photos): every photo, label 0, no class. A folder that fits no layout: a UserError saying what it holds."""
    if not root.is_dir():
        raise UserError(f"--data {root} is a file, not a folder of photos" if root.exists() else
                        f"data folder {root} not found: {FETCH_HINT}")
    entries = sorted(root.iterdir())
    folders = [path for path in entries if path.is_dir() and not path.name.startswith(".")]
    loose = [path.name for path in entries if is_image_file(path)]
    odd = [name for name in loose if not KAGGLE_NAME.fullmatch(name)]  # no class in the name
    hint = f"did you mean --data {folders[0]}?" if len(folders) == 1 else "labels are read from class folders"
    if unlabelled or (unlabelled is None and odd and not folders):
        classes, pairs = [], [(name, 0) for name in image_tree(root)]
    elif folders and loose:
        raise UserError(f"{root} holds {len(loose):,} photos ({loose[0]!r} ...) beside its class folders: move them "
                        f"into one, or pass --unlabelled to pretrain on every photo under {root} without labels")
    elif folders:
        classes = [folder.name for folder in folders]
        pairs = [(f"{name}/{entry}", label) for label, name in enumerate(classes) for entry in image_tree(root / name)]
    elif odd:
        raise UserError(f"{root} has no class folders and {len(odd):,} of its {len(loose):,} images are not named "
                        f"<class>.<n>.<ext> (e.g. {odd[0]!r}), so they have no labels: {hint}")
    else:  # Kaggle's
        classes = sorted({KAGGLE_NAME.fullmatch(name)[1].lower() for name in loose})
        pairs = [(name, classes.index(KAGGLE_NAME.fullmatch(name)[1].lower())) for name in loose]
    if not pairs:
        raise UserError(f"no images in {root}: {FETCH_HINT}")
    if 0 < len(classes) < min_classes:
        raise UserError(f"found {len(classes)} class(es) in {root} ({', '.join(map(repr, classes))}), "
                        f"{min_classes} or more are needed: {hint}")
    return [name for name, _ in pairs], [label for _, label in pairs], classes

# ---- decoding

DECODE_VERSION = 5  # in the cache key with Pillow's version: bump when the decoding or the cache's record changes
# A photo's identity under any name, format or size (docs/protocol.md): 4 views, the photo itself, its mirror image,
# its centre 80% and that one's mirror image, each a 64-bit perceptual hash (which of the 8 x 8 lowest DCT
# coefficients but the mean of its grey HASH_SIDE px square exceed their median) and its mean colour R << 16 | G << 8
# | B (one layout in other colours, as the demo set's shapes, stays apart; a grey copy is compared by brightness).
HASH_SIDE, NEAR_BITS, NEAR_LEVELS = 32, 8, 16  # one photo: hashes <= NEAR_BITS bits apart, colours <= NEAR_LEVELS each
_DCT = np.cos(np.pi * (2 * np.arange(HASH_SIDE)[None, :] + 1) * np.arange(HASH_SIDE)[:, None] / (2 * HASH_SIDE))
LUMA, MIRROR = np.array([0.299, 0.587, 0.114]), (-1.0) ** np.arange(8)  # a mirror image: odd columns change sign

def identity(image: Image.Image) -> list[int]:  # [hash, colour] of a HASH_SIDE px square, and of its mirror image
    small = np.asarray(image, np.float64)
    colour = int.from_bytes(small.mean(axis=(0, 1)).round().astype(np.uint8).tobytes(), "big")
    hashes = []
    for coefficients in (low := (_DCT @ (small @ LUMA) @ _DCT.T)[:8, :8], low * MIRROR):
        bits = np.concatenate([[False], coefficients.flatten()[1:] > np.median(coefficients.flatten()[1:])])
        hashes.append(int.from_bytes(np.packbits(bits, bitorder="little").tobytes(), "little", signed=True))
    return [hashes[0], colour, hashes[1], colour]

def decode_file(source, size: int) -> tuple[np.ndarray, list[int]]:
    """(the (size, size, 3) uint8 RGB square: upright (EXIF), centre crop; the identity), from any PIL mode."""
    with Image.open(source) as image:
        image.draft("RGB", (max(size, HASH_SIDE),) * 2)  # a JPEG decodes at 1/2, 1/4 or 1/8 scale where enough
        image = ImageOps.exif_transpose(image)
        if image.mode[0] in "IF":  # I, I;16 and its kin, F: scaled to 8 bits
            values = np.asarray(image, dtype=np.float32)
            top = 65535.0 if image.mode.startswith("I;16") else max(float(values.max()), 1.0)
            image = Image.fromarray((values.clip(0, top) * (255.0 / top)).astype(np.uint8), "L")
        if image.mode in ("RGBA", "LA", "PA") or (image.mode == "P" and "transparency" in image.info):  # on white
            image = Image.alpha_composite(Image.new("RGBA", image.size, "white"), image.convert("RGBA"))
        image = image.convert("RGB")
    square, box = ImageOps.fit(image, (5 * HASH_SIDE,) * 2, Image.Resampling.BOX), (16, 16, 144, 144)  # centre 80%
    return (np.asarray(ImageOps.fit(image, (size, size), Image.Resampling.BICUBIC)),
            identity(ImageOps.fit(image, (HASH_SIDE,) * 2, Image.Resampling.BOX))
            + identity(square.resize((HASH_SIDE,) * 2, Image.Resampling.BOX, box)))

def near(identities: torch.Tensor, others: torch.Tensor, chunk: int = 256) -> torch.Tensor:
    """(N,) bool: whether each of N photos (identities (N, 2V): V views, itself first) is a copy of one of `others`
    (M, 2W): one's own view within NEAR_BITS bits of a view of the other, a colour alike (a grey one: brightness)."""
    def parts(rows):  # (N, 2V) -> the views' hash bits (N * V, 64), float 0/1, and their colours (N * V, 3)
        rows = rows.reshape(-1, 2)
        return ((rows[:, :1] >> torch.arange(64)) & 1).float(), (rows[:, 1:] >> torch.tensor([16, 8, 0])) & 255
    def alike(a, b):  # (K, 3) pairs of colours: within NEAR_LEVELS each, or where either is grey, in brightness
        grey, luma = (a.amax(1) - a.amin(1) <= 2) | (b.amax(1) - b.amin(1) <= 2), torch.from_numpy(LUMA).float()
        return ((a - b).abs() <= NEAR_LEVELS).all(1) | grey & ((a - b).float() @ luma).abs().le(NEAR_LEVELS)
    found, theirs = torch.zeros(len(identities), dtype=torch.bool), (parts(others), parts(others[:, :2]))
    for start in range(0, len(identities) if len(others) else 0, chunk):
        rows = identities[start:start + chunk]
        for mine, (other_bits, other_colours) in zip((rows[:, :2], rows), theirs):  # its own view: their views; back
            bits, colours = parts(mine)
            distance = bits.sum(1, keepdim=True) + other_bits.sum(1) - 2 * bits @ other_bits.T
            i, j = torch.nonzero(distance <= NEAR_BITS, as_tuple=True)
            found[start + i[alike(colours[i], other_colours[j])] // (mine.shape[1] // 2)] = True
    return found

def failure_kind(path: Path, error: Exception) -> str:  # why `path` could not be decoded, for skipped.txt
    if path.is_symlink() and not path.exists():  # dangling, or a loop of links
        return "broken link"
    if isinstance(error, Image.UnidentifiedImageError):  # no format that this Pillow reads
        with contextlib.suppress(OSError):
            if path.stat().st_size == 0:
                return "empty file"
        return "not an image" + " this Pillow reads" * (path.suffix.lower() in (".heic", ".heif", ".avif"))
    return ("unreadable folder" if path.is_dir() else "truncated image" if "truncated" in str(error).lower()
            else f"unreadable ({type(error).__name__})")  # FileNotFoundError, PermissionError, DecompressionBombError

# ---- the cache
# CACHE_DIR/<data folder>-<S>px-<key>/ holds images.u8 (N, 3, S, S) uint8, the kept images in file order; meta.json
# (the kept and skipped files, identities, shape); skipped.txt (each skipped file and why).

_rows: np.memmap | None = None  # the staging images.u8 while a build runs: the forked decoding processes write into it

def _decode_row(index: int, path: Path) -> tuple[list[int] | None, str | None]:
    try:
        square, its_identity = decode_file(path, _rows.shape[-1])
        _rows[index] = square.transpose(2, 0, 1)
        return its_identity, None
    except Exception as error:
        return None, failure_kind(path, error)

def default_cache_dir() -> Path:
    return Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache") / "simsiam-cats-dogs"

def default_cache_size(image_size: int) -> int:  # 8/7 of it, as 256/224 on ImageNet: room for the crops to move
    return math.ceil(image_size * 8 / 7)

def cache_key(root: Path, files: list[str], size: int) -> str:
    """Changes with the files, each one's size, times and inode (cp -p, rsync -t keep mtime), px, decoding, Pillow."""
    digest = hashlib.sha1(f"{DECODE_VERSION} {PILLOW_VERSION} {size}".encode())
    for name in files:
        digest.update(b"\n" + os.fsencode(name))  # fsencode: any name, UTF-8 or not
        with contextlib.suppress(OSError):  # vanished or unreadable: the build skips it
            stat = (root / name).stat()
            digest.update(f" {stat.st_size} {stat.st_mtime_ns} {stat.st_ctime_ns} {stat.st_ino}".encode())
    return digest.hexdigest()[:16]

@contextlib.contextmanager
def staging_folder(target: Path, inside: str = ""):  # temporary, by `target`; `inside` becomes `target` on success
    target.parent.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix=f".{target.name}.building-", dir=target.parent))
    try:
        yield staging
        if not target.exists():  # else another process finished it first: theirs is kept (runs may be reading it)
            os.replace(staging / inside, target)
    finally:
        shutil.rmtree(staging, ignore_errors=True)

def build_cache(root: Path, files: list[str], size: int, folder: Path, workers: int) -> None:
    global _rows
    try:  # a decoding process killed (by the OOM killer, say) ends the build with BrokenProcessPool
        with staging_folder(folder) as staging:
            _rows = np.memmap(staging / "images.u8", dtype=np.uint8, mode="w+", shape=(len(files), 3, size, size))
            # the workers ignore Ctrl-C: the main process cancels the pool and removes the staging folder
            pool = ProcessPoolExecutor(workers, multiprocessing.get_context("fork"), signal.signal,
                                       (signal.SIGINT, signal.SIG_IGN))
            try:
                results = list(tqdm(pool.map(_decode_row, range(len(files)), [root / name for name in files],
                                             chunksize=max(1, min(64, len(files) // 4 // workers))),
                                    total=len(files), unit="img", desc=f"decoding {shown(root.name)} at {size} px"))
            finally:
                pool.shutdown(cancel_futures=True)  # after an error or Ctrl-C, only the running chunks finish
            kept = [index for index, (_, why) in enumerate(results) if why is None]
            for row, index in enumerate(kept):  # the kept rows together, in order
                _rows[row] = _rows[index]
            os.truncate(staging / "images.u8", len(kept) * 3 * size * size)
            skipped = {name: why for name, (_, why) in zip(files, results) if why is not None}
            meta = {"root": str(root), "shape": [len(kept), 3, size, size], "files": [files[i] for i in kept],
                    "identities": [results[i][0] for i in kept], "skipped": skipped}
            (staging / "meta.json").write_text(json.dumps(meta))  # a name that is not UTF-8 round-trips (\udcXX)
            write_names(staging / "skipped.txt", skipped)
    finally:
        _rows = None

@dataclass
class ImageSet:
    root: Path
    images: torch.Tensor  # (N, 3, S, S) uint8, memory-mapped from the cache, in file order
    labels: torch.Tensor  # (N,) int64
    classes: list[str]
    files: list[str]  # relative to root
    skipped: dict[str, str]  # file -> why it was skipped
    cache_path: Path
    hashes: torch.Tensor  # (N, 8) int64: each photo's identity, 4 views of (hash, colour), whatever its file

def load_images(root: Path, size: int, cache_dir: Path, limit: int | None = None, seed: int = 0,
                workers: int | None = None, min_classes: int = 2, unlabelled: bool | None = False) -> ImageSet:
    """The images of `root` (find_images; a seeded `limit` of them) at `size` px, from the cache (built if absent)."""
    root = Path(root).resolve()
    if Path(cache_dir).resolve().is_relative_to(root):
        raise UserError(f"--cache-dir {cache_dir} is inside --data {root}: its files would be read as photos; choose a "
                        "cache folder outside it")
    files, labels, classes = find_images(root, min_classes, unlabelled)
    if limit is not None and limit < len(files):
        chosen = torch.randperm(len(files), generator=torch.Generator().manual_seed(seed))[:limit].sort().values
        files, labels = [files[i] for i in chosen], [labels[i] for i in chosen]
    # 64 bytes of the folder's name at most: the cache's name stays within the file systems' 255
    folder = Path(cache_dir) / f"{os.fsdecode(os.fsencode(root.name)[:64])}-{size}px-{cache_key(root, files, size)}"
    try:  # a cache cut short or damaged (meta.json unreadable, images.u8 of another size) is rebuilt
        meta = json.loads((folder / "meta.json").read_bytes())
        damaged = (folder / "images.u8").stat().st_size != len(meta["files"]) * 3 * size * size
    except (OSError, ValueError, KeyError, TypeError):
        damaged = folder.exists()
    if damaged:
        print(f"cache {folder} is damaged: rebuilding", file=sys.stderr)
        shutil.rmtree(folder)
    if not folder.exists():
        build_cache(root, files, size, folder, workers or os.cpu_count() or 1)
    meta, label_of = json.loads((folder / "meta.json").read_bytes()), dict(zip(files, labels))
    kept_labels = [label_of[name] for name in meta["files"]]
    for label in sorted(set(range(max(len(classes), 1))) - set(kept_labels)):  # a class (unlabelled: all) left empty
        members = [file for file, its_label in label_of.items() if its_label == label]
        kinds = ", ".join(f"{n:,} {kind}" for kind, n in Counter(meta["skipped"][file] for file in members).items())
        raise UserError(f"no usable image{f' of class {classes[label]!r}' * bool(classes)} in {root}" + (
            f": all {len(members):,} files were skipped ({kinds}; see {folder / 'skipped.txt'})" if members else
            f" among the {limit} that --limit drew: raise --limit"))
    images = torch.from_numpy(np.memmap(folder / "images.u8", dtype=np.uint8, mode="c", shape=tuple(meta["shape"])))
    return ImageSet(root, images, torch.tensor(kept_labels), classes, meta["files"], meta["skipped"], folder,
                    torch.tensor(meta["identities"], dtype=torch.int64).reshape(-1, 8))

ONE_LINE = {c: ascii(chr(c))[1:-1] for c in (*range(32), ord("\\"), 127, 0x85, 0x2028, 0x2029)}  # \n, \\, \x1b ...

def one_line(name: str) -> str:  # a name kept on one line of a list or an output: control characters escaped
    return name.translate(ONE_LINE)

def write_names(path: Path, names) -> None:  # a list of photos, a name a line (one_line); a dict's values after a tab
    path.write_bytes(b"".join(os.fsencode(one_line(name) + (f"\t{names[name]}" if isinstance(names, dict) else "")
                                          + "\n") for name in names))

def shown(name: str) -> str:  # printable anywhere: the bytes of a name that is not UTF-8 (surrogates) as \xNN
    return name.encode("utf-8", "surrogateescape").decode("utf-8", "backslashreplace")

def describe(data: ImageSet) -> str:
    counts = torch.bincount(data.labels, minlength=len(data.classes)).tolist()
    per_class = ", ".join(f"{shown(name)} {count:,}" for name, count in zip(data.classes, counts)) or "unlabelled"
    kinds = ", ".join(f"{n:,} {kind}" for kind, n in Counter(data.skipped.values()).most_common())
    return (f"{shown(str(data.root))}: {len(data.files):,} images ({per_class}) at {data.images.shape[-1]} px"
            + f", {len(data.skipped):,} skipped ({kinds}): see {data.cache_path / 'skipped.txt'}" * bool(data.skipped))

# ---- splits

@dataclass
class Splits:  # sorted int64 indices
    test: torch.Tensor  # read once, by the final evaluation
    labelled: torch.Tensor  # the few labelled images, balanced per class, among the pretraining images
    pretrain: torch.Tensor  # every image in neither test nor validation, nor a copy of one; its labels unused
    validation: torch.Tensor  # the kNN monitor's queries: choices made while pretraining never read the test split
    two_labels: torch.Tensor  # photos whose pixels are also under another class: in no split

def make_splits(labels: torch.Tensor, num_classes: int, test_fraction: float, num_labels: int, seed: int,
                label_seed: int, class_names: list[str] | None = None, hashes: torch.Tensor | None = None,
                val_fraction: float = 0.0) -> Splits:
    """The stratified test split depends on (seed, test_fraction) only, so every script, validation size and label draw
    holds out the same test images; validation comes next from the same shuffle, the labels (label_seed) from the rest.
    Leak rule: with `hashes`, later splits drop copies of test or validation images. No classes: none held out."""
    if num_classes == 0:
        empty = torch.zeros(0, dtype=torch.int64)
        return Splits(empty, empty, torch.arange(len(labels)), empty, empty)
    split_generator, label_generator = torch.Generator().manual_seed(seed), torch.Generator().manual_seed(label_seed)
    per_class_labels = [num_labels // num_classes + (c < num_labels % num_classes) for c in range(num_classes)]
    test, validation, others = [], [], []
    for c in range(num_classes):
        members = torch.nonzero(labels == c).flatten()
        members = members[torch.randperm(len(members), generator=split_generator)]
        counts = [max(1, round(f * len(members))) if f > 0 else 0 for f in (test_fraction, val_fraction)]  # >= 1
        for split, part in zip((test, validation, others), members.split([*counts, len(members) - sum(counts)])):
            split.append(part)
    two_labels = torch.zeros(len(labels), dtype=torch.bool)
    if hashes is not None:  # the same pixels (the photo itself: identical hash and colour) under two classes
        classes_of = defaultdict(set)
        for key, label in zip(keys := [tuple(row) for row in hashes[:, :2].tolist()], labels.tolist()):
            classes_of[key].add(label)
        two_labels = torch.tensor([len(classes_of[key]) > 1 for key in keys], dtype=torch.bool)
        test, validation, others = ([part[~two_labels[part]] for part in split] for split in (test, validation, others))
        held_out = hashes[torch.cat(test)]
        validation = [rest[~near(hashes[rest], held_out)] for rest in validation]
        held_out = torch.cat([held_out, hashes[torch.cat(validation)]])
        others = [rest[~near(hashes[rest], held_out)] for rest in others]
    labelled = []
    for c, rest in enumerate(others):
        if len(rest) < per_class_labels[c] + 1:
            dropped = int((labels == c).sum()) - len(test[c]) - len(validation[c]) - len(rest)
            lower = [flag for flag, count, least in (("--labels", per_class_labels[c], 1), ("--test-fraction",
                     len(test[c]), 1), ("--val-fraction", len(validation[c]), 0)) if count > least]
            raise UserError(f"class {class_names[c] if class_names else c!r} has {int((labels == c).sum())} images"
                            f"{f' ({dropped} copies of held-out ones or under two classes)' if dropped else ''}, too "
                            f"few for {len(test[c])} test, {len(validation[c])} validation, {per_class_labels[c]} "
                            f"labelled and one more to pretrain on: add images" + ", or lower " * bool(lower)
                            + " or ".join(lower))
        labelled.append(rest[torch.randperm(len(rest), generator=label_generator)[:per_class_labels[c]]])
    return Splits(test=torch.cat(test).sort().values, labelled=torch.cat(labelled).sort().values,
                  pretrain=torch.cat(others).sort().values, validation=torch.cat(validation).sort().values,
                  two_labels=torch.nonzero(two_labels).flatten())

def fingerprint(files: list[str], indices: torch.Tensor) -> str:  # names a set of images by their names' bytes
    return hashlib.sha1(b"\n".join(sorted(os.fsencode(files[i]) for i in indices.tolist()))).hexdigest()[:16]

def split_identity(data: ImageSet, splits: Splits, options) -> dict:
    """What defines the held-out split, for --resume to compare (but "data": train.py compares moved photos' pixels)."""
    return {"data": str(data.root), "the file list": fingerprint(data.files, torch.arange(len(data.files))),
            "--split-seed": options.split_seed, "--test-fraction": options.test_fraction,
            "--val-fraction": options.val_fraction, "--limit": options.limit, "the classes": data.classes,
            "the test images": fingerprint(data.files, splits.test)}

def split_differences(recorded: dict, current: dict) -> list[str]:
    return [f"{key} (was {recorded.get(key)!r}, now {current.get(key)!r})" if key.startswith("--") else key
            for key in {**recorded, **current} if key != "data" and recorded.get(key) != current.get(key)]

def photos_folder(options) -> Path:
    if options.demo:
        return make_demo_images(Path(options.cache_dir) / DEMO_FOLDER)
    if getattr(options, "download", False):
        if options.data.name != "PetImages":
            raise UserError("--download unpacks into a folder named PetImages: pass --data DIR/PetImages")
        download_dataset(options.data.parent, getattr(options, "download_url", None) or DEFAULT_URL)
    return Path(options.data)

def open_data(options, verbose: bool = True) -> tuple[ImageSet, Splits]:
    cache_size = options.cache_size or default_cache_size(options.image_size)
    if cache_size < options.image_size:
        raise UserError(f"--cache-size {cache_size} is below --image-size {options.image_size}: raise it or omit it")
    data = load_images(photos_folder(options), cache_size, options.cache_dir, options.limit, options.split_seed,
                       options.workers, unlabelled=getattr(options, "unlabelled", False) and not options.demo)
    splits = make_splits(data.labels, len(data.classes), options.test_fraction, options.labels, options.split_seed,
                         options.label_seed, data.classes, data.hashes, options.val_fraction)
    if verbose and len(splits.two_labels):
        names = [data.files[i] for i in splits.two_labels]
        with contextlib.suppress(OSError):  # the cache folder is named by the files, so by their classes too
            write_names(data.cache_path / "two-labels.txt", names)
        print(f"warning: {len(names):,} photos are under two classes or more, the same pixels ("
              f"{', '.join(map(shown, names[:3]))}{' ...' * (len(names) > 3)}): left out of every split; listed in "
              f"{data.cache_path / 'two-labels.txt'}")
    if verbose:
        print(f"{describe(data)}\nsplits: {len(splits.pretrain):,} pretraining (labels unused), "
              f"{len(splits.labelled):,} labelled, {len(splits.validation):,} validation, {len(splits.test):,} test "
              f"(seed {options.split_seed})")
    return data, splits

# ---- batches

def pin_memory(tensor: torch.Tensor) -> torch.Tensor:  # the seam tests/emulated_cuda.py replaces to count the pins
    return tensor.pin_memory()

def cache_on_device(images: torch.Tensor, device: torch.device, reserve_bytes: int = 4 << 30) -> torch.Tensor:
    fits = device.type == "cuda" and images.numel() + reserve_bytes <= torch.cuda.mem_get_info(device)[0]
    return images.to(device) if fits else images

def gather(images: torch.Tensor, indices: torch.Tensor, device: torch.device) -> torch.Tensor:
    batch = images[indices.to(images.device)]
    to_cuda = batch.device.type == "cpu" and device.type == "cuda"  # from pinned memory, asynchronously
    return pin_memory(batch).to(device, non_blocking=True) if to_cuda else batch.to(device)

def epoch_batches(indices: torch.Tensor, batch_size: int, generator: torch.Generator, rank: int = 0,
                  world_size: int = 1, skip: int = 0):
    """Batches of `indices` in the generator's order from batch `skip`, a short last one dropped; a slice per rank."""
    order = indices.to(generator.device)[torch.randperm(len(indices), generator=generator, device=generator.device)]
    for start in range(skip * batch_size, len(order) - batch_size + 1, batch_size):
        yield order[start:start + batch_size].chunk(world_size)[rank]  # world_size divides batch_size

def device_batches(images: torch.Tensor, indices: torch.Tensor, batch_size: int, generator: torch.Generator,
                   device: torch.device, rank: int = 0, world_size: int = 1, skip: int = 0, prefetch: int = 3):
    """epoch_batches' uint8 (B, 3, S, S) on `device`; from a host cache to CUDA a thread pins them `prefetch` ahead."""
    order = [rows.to(images.device) for rows in epoch_batches(indices, batch_size, generator, rank, world_size, skip)]
    if not (images.device.type == "cpu" and device.type == "cuda"):
        yield from (gather(images, rows, device) for rows in order)
        return
    pool = ThreadPoolExecutor(1)
    futures = (pool.submit(lambda rows: pin_memory(images[rows]), rows) for rows in order)  # submitted when drawn
    pending = list(itertools.islice(futures, prefetch))
    try:
        while pending:
            batch = pending.pop(0).result()
            pending.extend(itertools.islice(futures, 1))
            yield batch.to(device, non_blocking=True)
    finally:
        pool.shutdown(cancel_futures=True)  # also when the consumer stops early: the thread ends

# ---- demo data

DEMO_PER_CLASS, DEMO_FOLDER = 400, "demo-data-2x400"  # the folder under --cache-dir, named by its content

def make_demo_images(folder: Path, per_class: int = DEMO_PER_CLASS, size: int = 64, seed: int = 0) -> Path:
    if folder.is_dir():
        return folder
    rng = np.random.default_rng(seed)
    with staging_folder(folder) as staging:
        for shape in ("disc", "square"):
            (staging / shape).mkdir()
            for i in range(per_class):
                pixels = rng.integers(0, 256, 3) + rng.normal(0, 25, (size, size, 3))  # a random colour, noisy
                image = Image.fromarray(pixels.clip(0, 255).astype(np.uint8))
                r = rng.uniform(0.15, 0.35) * size
                x, y = rng.uniform(r, size - r, 2)
                draw = getattr(ImageDraw.Draw(image), "ellipse" if shape == "disc" else "rectangle")
                draw([x - r, y - r, x + r, y + r], fill=tuple(map(int, rng.integers(0, 256, 3))))
                image.save(staging / shape / f"{i}.png")
    return folder

# ---- download

DEFAULT_URL = ("https://download.microsoft.com/download/3/E/1/3E1C3F21-ECDB-4869-8368-6DEBA77B919F/"
               "kagglecatsanddogs_5340.zip")

def download_dataset(parent: Path, url: str = DEFAULT_URL) -> Path:
    """parent/PetImages, if absent: `url`'s zip (kept) via a .part file, checked, extracted via a temporary folder."""
    target, archive, part = (Path(parent) / name for name in ("PetImages", "PetImages.zip", "PetImages.zip.part"))
    if target.is_dir():
        return target
    if not archive.exists():
        try:
            target.parent.mkdir(parents=True, exist_ok=True)
            with urllib.request.urlopen(url, timeout=60) as response, open(part, "wb") as file, tqdm(
                    total=int(response.headers.get("Content-Length", 0)) or None, unit="B", unit_scale=True) as bar:
                while chunk := response.read(1 << 20):
                    bar.update(file.write(chunk))
        except OSError as error:  # URLError, HTTPError, timeouts, resets (a file cut short fails the zip check)
            raise UserError(f"downloading {url} failed ({error}): check the network and run again") from None
        os.replace(part, archive)
    try:
        with zipfile.ZipFile(archive) as pack, staging_folder(target, inside="PetImages") as staging:
            members = [name for name in pack.namelist() if name.startswith("PetImages/")]
            if not members or pack.testzip() is not None:  # testzip reads every member and checks its CRC
                raise zipfile.BadZipFile("a damaged member" if members else "no PetImages/ folder")
            pack.extractall(staging, members)  # zipfile drops "..": nothing lands outside `staging`
    except (zipfile.BadZipFile, zlib.error, EOFError) as error:
        archive.unlink()
        raise UserError(f"{archive} is not a whole zip of PetImages ({error}): deleted; run again") from None
    return target
