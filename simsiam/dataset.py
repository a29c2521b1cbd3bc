"""Images and labels: finding them, their decoded uint8 cache (cache.py), the splits, opening all of it as the
scripts' data flags ask (`open_data`), batches of indices, and the synthetic demo set.

Layouts read:
    ROOT/<class>/<image>        one sub-folder per class, as Microsoft's archive unpacks (PetImages/Cat, ...)
    ROOT/<class>.<n>.<ext>      Kaggle's flat layout (train/cat.0.jpg, train/dog.0.jpg): class = name prefix
    ROOT/<image>                loose photos (IMG_0001.jpg ...): unlabelled, for pretraining
    ROOT/**/<image>             with unlabelled=True: every photo under ROOT, whatever its sub-folders, unlabelled
Every image is decoded once into the cache, so no bad file can stop an epoch.
"""
from __future__ import annotations

import dataclasses
import hashlib
import math
import os
import queue
import re
import shutil
import threading
from collections import Counter
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from PIL import Image, ImageDraw

from simsiam import cache, decode, devices, download

IMAGE_SUFFIXES = {".jpg", ".jpeg", ".jpe", ".jfif", ".png", ".webp", ".bmp", ".gif", ".tif", ".tiff",
                  ".heic", ".heif", ".avif"}  # the last three are decoded where Pillow can, else skipped with why
IGNORED_NAMES = {"thumbs.db", "desktop.ini"}
KAGGLE_NAME = re.compile(r"([^.]+)\.[0-9]+\.[^.]+")  # cat.0.jpg: class, number, suffix
LAYOUTS = "ROOT/<class>/<image> (PetImages/Cat/0.jpg) or ROOT/<class>.<n>.<ext> (Kaggle's train/cat.0.jpg)"
DOWNLOAD_HINT = ("run with --download to fetch Microsoft's Cats and Dogs archive (kagglecatsanddogs_5340.zip, "
                 "https://www.microsoft.com/en-us/download/details.aspx?id=54765) and unpack it so that "
                 "DIR/Cat/*.jpg and DIR/Dog/*.jpg exist, or run with --demo for a synthetic set")


class DataError(Exception):
    """Something wrong with the data that the user must fix; the message says what and how."""


# ---------------------------------------------------------------- finding images


def is_image_file(path: Path) -> bool:
    return (path.is_file() and not path.name.startswith(".") and path.name.lower() not in IGNORED_NAMES
            and path.suffix.lower() in IMAGE_SUFFIXES)


def subfolders(folder: Path) -> list[Path]:
    return sorted(path for path in folder.iterdir() if path.is_dir() and not path.name.startswith("."))


def likely_root(root: Path) -> Path | None:
    """The folder near `root` that looks like ROOT/<class>/ (two or more sub-folders), for the error message:
    root's only sub-folder (--data pointing at a folder that holds PetImages) or, when root has no sub-folders,
    its parent (--data pointing at PetImages/Cat)."""
    try:
        inside = subfolders(root)
        if len(inside) > 1:
            return None
        candidate = inside[0] if inside else root.parent
        return candidate if holds_classes(candidate) else None
    except OSError:  # an unreadable neighbour: no suggestion
        return None


def holds_classes(folder: Path) -> bool:
    """Whether `folder` has two or more sub-folders and every one holds image files of its own: a plausible
    ROOT/<class>/ folder, not a home or project folder whose every sibling (code, caches, plots) would become a
    class."""
    inside = subfolders(folder)
    return len(inside) >= 2 and all(any(is_image_file(path) for path in sub.iterdir()) for sub in inside)


def flat_layout(root: Path) -> tuple[list[str], list[tuple[str, int]]]:
    """(classes, (file, label) pairs) of Kaggle's layout, where every image is named <class>.<n>.<ext>.
    Other names (IMG_0001.jpg, my.holiday.photo.jpg) are a DataError: a prefix is no class for them."""
    names = [path.name for path in sorted(root.iterdir()) if is_image_file(path)]
    odd = [name for name in names if not KAGGLE_NAME.fullmatch(name)]
    if odd:
        suggestion = likely_root(root)  # PetImages for PetImages/Cat, only when it holds class folders of images
        advice = (f"did you mean --data {suggestion}?" if suggestion else
                  "train.py pretrains on loose photos as they are, unlabelled")
        raise DataError(f"{root} has no class folders and {len(odd):,} of its {len(names):,} images are not named "
                        f"<class>.<n>.<ext> (e.g. {odd[0]!r}), so it has no labels; labels are read from {LAYOUTS}: "
                        f"{advice}")
    class_of = {name: KAGGLE_NAME.fullmatch(name)[1].lower() for name in names}
    classes = sorted(set(class_of.values()))
    return classes, [(name, classes.index(class_of[name])) for name in names]


def loose_photos(root: Path) -> bool:
    """Whether `root` holds photos and no sub-folder, not all named <class>.<n>.<ext>: a folder without labels."""
    if subfolders(root):
        return False
    names = [path.name for path in root.iterdir() if is_image_file(path)]
    return bool(names) and not all(KAGGLE_NAME.fullmatch(name) for name in names)


def image_tree(folder: Path) -> tuple[list[Path], list[Path]]:
    """(every image file under `folder` at any depth, the folders under it that could not be read), each sorted;
    hidden files and folders (.thumbnails/) are left out. Symbolic links to folders are followed, each folder
    read once however many links lead to it, so that a link loop ends."""
    files, unreadable, visited = [], [], set()
    for parent, folders, names in os.walk(folder, onerror=lambda error: unreadable.append(Path(error.filename)),
                                          followlinks=True):
        visited.add(os.path.realpath(parent))
        kept = []
        for name in folders:
            real = os.path.realpath(os.path.join(parent, name))
            if not name.startswith(".") and real not in visited:
                kept.append(name)
                visited.add(real)
        folders[:] = kept
        files += [path for path in (Path(parent) / name for name in names) if is_image_file(path)]
    return sorted(files), sorted(unreadable)


def tree_entries(root: Path, folder: Path) -> list[str]:
    """The image files under `folder` relative to `root` (image_tree), then each folder that could not be read
    as an entry of its own ("Cat/private/"), which the cache lists in skipped.txt as an unreadable folder."""
    files, unreadable = image_tree(folder)
    return ([str(path.relative_to(root)) for path in files]
            + [str(path.relative_to(root)) + os.sep for path in unreadable])


def find_images(root: Path, min_classes: int = 2,
                unlabelled: bool | None = False) -> tuple[list[str], list[int], list[str]]:
    """(files relative to root, labels, class names) in sorted order, for any of the layouts. Unlabelled
    (`unlabelled` True, or None and a folder of loose photos): every photo, label 0 and no class. A folder that
    fits no layout, or holds fewer than `min_classes` classes, is a DataError saying what was found."""
    root = Path(root)
    if root.is_file():
        raise DataError(f"--data {root} is a file, not a folder of photos (it lies in {root.parent})")
    if not root.is_dir():
        raise DataError(f"data folder {root} not found: {DOWNLOAD_HINT.replace('DIR', str(root))}")
    try:
        os.listdir(root)
    except OSError as error:
        raise DataError(f"cannot read the data folder {root} ({error.strerror or error})") from None
    if unlabelled or (unlabelled is None and loose_photos(root)):
        files = tree_entries(root, root)
        if not files:
            raise DataError(f"no images in {root} (image suffixes: {', '.join(sorted(IMAGE_SUFFIXES))})")
        return files, [0] * len(files), []
    folders = subfolders(root)
    if folders:  # one sub-folder per class
        classes = [folder.name for folder in folders]
        beside = [path.name for path in sorted(root.iterdir()) if is_image_file(path)]
        if beside:
            raise DataError(f"{root} holds {len(beside):,} photos ({beside[0]!r} ...) beside its sub-folders, which "
                            f"are read as classes ({', '.join(map(repr, classes[:5]))}{' ...' * (len(classes) > 5)}), "
                            f"so they would have no label: move them into a class folder, or, to pretrain on every "
                            f"photo under {root} without labels, pass train.py --unlabelled")
        pairs = [(name, label) for label, folder in enumerate(folders) for name in tree_entries(root, folder)]
    else:  # flat: the class is the file-name prefix before the first dot
        classes, pairs = flat_layout(root)
    if not pairs:
        raise DataError(f"no images in {root}: {DOWNLOAD_HINT.replace('DIR', str(root))}")
    if len(classes) < min_classes:
        suggestion = likely_root(root)
        advice = f"did you mean --data {suggestion}?" if suggestion else f"images are read as {LAYOUTS}"
        found = "class folder" if folders else "class in the file names"
        raise DataError(f"found {len(classes)} {found} in {root} ({', '.join(map(repr, classes))}), "
                        f"{min_classes} or more are needed: {advice}")
    files, labels = map(list, zip(*pairs))
    return files, labels, classes


def seeded_subset(files: list[str], labels: list[int], limit: int | None, seed: int):
    """A seeded random subset of `limit` images (all of them when limit is None), in the original order."""
    if limit is None or limit >= len(files):
        return files, labels
    chosen = torch.randperm(len(files), generator=torch.Generator().manual_seed(seed))[:limit].sort().values
    return [files[i] for i in chosen], [labels[i] for i in chosen]


# ---------------------------------------------------------------- decoded images


@dataclass
class ImageSet:
    """Decoded images of one data folder, in file order."""
    root: Path
    images: torch.Tensor  # (N, 3, S, S) uint8, memory-mapped from the cache file
    labels: torch.Tensor  # (N,) int64
    classes: list[str]
    files: list[str]  # relative to root
    skipped: dict[str, str]  # file -> why it was skipped
    cache_path: Path
    source_sides: torch.Tensor  # (N,) int64: each photo's shorter side in px before it was resized to S
    hashes: torch.Tensor  # (N, 2) int64: decode.perceptual_hash of each photo, its identity whatever its file


def load_images(root: Path, size: int, cache_dir: Path, limit: int | None = None, seed: int = 0,
                workers: int | None = None, min_classes: int = 2, unlabelled: bool | None = False) -> ImageSet:
    """The decoded images of `root` (find_images) at `size` px, from the cache, building it first if it is absent
    and rebuilding it, with a one-line warning on stderr, if it fails its check."""
    root = Path(root).resolve()
    files, labels, classes = find_images(root, min_classes, unlabelled)
    files, labels = seeded_subset(files, labels, limit, seed)
    folder, meta = cache.open_cache(root, files, size, cache_dir, workers)
    label_of = dict(zip(files, labels))
    kept = meta["files"]
    present = {label_of[name] for name in kept}
    missing = [name for label, name in enumerate(classes) if label not in present]
    if missing:
        raise DataError(missing_class(missing[0], classes.index(missing[0]), label_of, meta["skipped"], limit, root,
                                      folder))
    array = np.memmap(folder / "images.u8", dtype=np.uint8, mode="c", shape=tuple(meta["shape"]))
    return ImageSet(root=root, images=torch.from_numpy(array), classes=classes, files=kept,
                    labels=torch.tensor([label_of[name] for name in kept], dtype=torch.int64),
                    skipped=meta["skipped"], cache_path=folder,
                    source_sides=torch.tensor(meta["sides"], dtype=torch.int64),
                    hashes=torch.tensor(meta["hashes"], dtype=torch.int64).reshape(-1, 2))


def missing_class(name: str, label: int, label_of: dict[str, int], skipped: dict[str, str], limit: int | None,
                  root: Path, cache_folder: Path) -> str:
    """Why no image of class `name` is left, for the error: --limit drew none of it, or every one of its files
    was skipped, and why."""
    members = [file for file, its_label in label_of.items() if its_label == label]
    if not members:
        return (f"--limit {limit} drew no image of class {name!r} from {root}: raise --limit"
                if limit is not None else f"no image of class {name!r} in {root}")
    reasons = Counter(skipped[file] for file in members if file in skipped).most_common()
    return (f"no usable image of class {name!r} in {root}: all {len(members):,} of its files were skipped "
            f"({', '.join(f'{n:,} {kind}' for kind, n in reasons)}; see {cache_folder / 'skipped.txt'}): make them "
            f"readable, add images of it, or remove the class")


def describe(data: ImageSet) -> str:
    """The start-up lines: how many images, per class, how many skipped and where they are listed, where the
    cache is, and how many photos the cache had to enlarge (a crop of them is then a stretched small patch)."""
    counts = torch.bincount(data.labels, minlength=len(data.classes)).tolist()
    per_class = ", ".join(f"{name} {count:,}" for name, count in zip(data.classes, counts)) or "unlabelled"
    side = data.images.shape[-1]
    line = f"{data.root}: {len(data.files):,} images ({per_class}) at {side} px in {data.cache_path}"
    if data.skipped:
        kinds = Counter(data.skipped.values()).most_common()
        line += (f", {len(data.skipped):,} skipped ({', '.join(f'{n:,} {kind}' for kind, n in kinds)}): "
                 f"see {data.cache_path / 'skipped.txt'}")
    enlarged = data.source_sides[data.source_sides < side]
    if len(enlarged):
        median = int(enlarged.median())
        line += (f"\nnote: {len(enlarged):,} of the {len(data.files):,} photos are smaller than the cache's {side} px "
                 f"and were upsampled (median shorter side {median} px, x{side / median:.2f}); a --image-size at or "
                 f"below about 7/8 of {median} px trains on the photos' own pixels")
    return line


# ---------------------------------------------------------------- splits


@dataclass
class Splits:
    test: torch.Tensor  # held out from everything but the final evaluation
    labelled: torch.Tensor  # the few labelled images, balanced per class, never in test or validation
    pretrain: torch.Tensor  # every image in neither test nor validation; pretraining ignores its labels
    validation: torch.Tensor  # held out from pretraining and labels: the queries of the kNN monitor, which
    # guides the choices made while pretraining, so that the test split is read once, by the final evaluation


def make_splits(labels: torch.Tensor, num_classes: int, test_fraction: float, num_labels: int,
                seed: int, label_seed: int, class_names: list[str] | None = None,
                hashes: torch.Tensor | None = None, val_fraction: float = 0.0) -> Splits:
    """Deterministic from (seed, label_seed): the test split is stratified and depends on `seed` (and
    `test_fraction`) only, so every script, every validation size and every label draw holds out the same test
    images; the stratified validation split (`val_fraction` of each class) comes next from the same shuffle, and
    the labelled subset is drawn from the rest. With the perceptual `hashes`, a copy of a test or validation image
    (under another name, or in another class) is left out of the images after it. Without classes (unlabelled
    photos), nothing is held out."""
    if num_classes == 0:
        empty = torch.zeros(0, dtype=torch.int64)
        return Splits(test=empty, labelled=empty, pretrain=torch.arange(len(labels)), validation=empty)
    split_generator = torch.Generator().manual_seed(seed)
    label_generator = torch.Generator().manual_seed(label_seed)
    per_class_labels = [num_labels // num_classes + (c < num_labels % num_classes) for c in range(num_classes)]
    test, validation, others = [], [], []
    for c in range(num_classes):
        members = torch.nonzero(labels == c).flatten()
        members = members[torch.randperm(len(members), generator=split_generator)]
        num_test, num_validation = split_count(len(members), test_fraction), split_count(len(members), val_fraction)
        test.append(members[:num_test])
        validation.append(members[num_test:num_test + num_validation])
        others.append(members[num_test + num_validation:])
    if hashes is not None:
        held_out = hashes[torch.cat(test)]
        validation = [rest[~decode.near(hashes[rest], held_out)] for rest in validation]
        held_out = torch.cat([held_out, hashes[torch.cat(validation)]])
        others = [rest[~decode.near(hashes[rest], held_out)] for rest in others]
    labelled = []
    for c, rest in enumerate(others):
        if len(rest) < per_class_labels[c] + 1:
            name = class_names[c] if class_names else str(c)
            usable = len(test[c]) + len(validation[c]) + len(rest)
            copies = int((labels == c).sum()) - usable
            fitting = num_classes * min(len(rest) - 1 for rest in others)  # the most --labels these images can take
            lower = (f"--labels (--labels {fitting} fits)" if fitting >= num_classes
                     else "--test-fraction / --val-fraction")
            raise DataError(f"class {name!r} has {usable} usable images"
                            f"{f' ({copies} copies of held-out images not counted)' if copies else ''}, and "
                            f"{least_per_class(per_class_labels[c], test_fraction, val_fraction)} at the least are "
                            f"needed: {len(test[c])} for the test split, {len(validation[c])} for the validation "
                            f"split, {per_class_labels[c]} labelled and one more to pretrain on; add images, or "
                            f"lower {lower}")
        labelled.append(rest[torch.randperm(len(rest), generator=label_generator)[:per_class_labels[c]]])
    return Splits(test=torch.cat(test).sort().values, labelled=torch.cat(labelled).sort().values,
                  pretrain=torch.cat(others).sort().values, validation=torch.cat(validation).sort().values)


def split_count(members: int, fraction: float) -> int:
    """How many of a class's `members` a stratified split of `fraction` holds out: at least one, unless none."""
    return max(1, round(fraction * members)) if fraction > 0 else 0


def least_per_class(labels_per_class: int, test_fraction: float, val_fraction: float) -> int | None:
    """The fewest images of a class make_splits can split: its test and validation shares, its labels and one more
    to pretrain on; None when the two fractions leave nothing."""
    if test_fraction + val_fraction >= 1:
        return None
    members = labels_per_class + 1
    while members - split_count(members, test_fraction) - split_count(members, val_fraction) < labels_per_class + 1:
        members += 1
    return members


def fingerprint(files: list[str], indices: torch.Tensor) -> str:
    """A short hash naming a set of images, to check that two runs held out the same test split. Names are
    hashed as the bytes the OS gave (os.fsencode), so a name that is not valid UTF-8 works too."""
    return hashlib.sha1(b"\n".join(sorted(os.fsencode(files[i]) for i in indices.tolist()))).hexdigest()[:16]


def shown(name: str) -> str:
    """A file or class name for people (consoles, figures): the bytes of a name that is not valid UTF-8, which
    Python holds as lone surrogates, shown as \\xNN escapes (caf\\xe9.jpg)."""
    return name.encode("utf-8", "surrogateescape").decode("utf-8", "backslashreplace")


# what --resume compares (the data folder's path is not: a folder moved elsewhere holds the same photos, which
# train.py checks by their pixels)
SPLIT_SETTINGS = {"files_fingerprint": "the file list", "seed": "--split-seed",
                  "test_fraction": "--test-fraction", "val_fraction": "--val-fraction", "limit": "--limit",
                  "classes": "the classes",
                  "monitor_data": "--monitor-data", "pretraining_fingerprint": "the pretraining images"}


def split_identity(data: ImageSet, splits: Splits, options: DataOptions) -> dict:
    """Everything that defines the held-out split, recorded in every SimSiam checkpoint: --resume refuses a
    mismatch (the earlier epochs may have trained on the new test images). The evaluations check content instead
    (pretrained.check_unseen)."""
    return {"data": str(data.root), "files_fingerprint": fingerprint(data.files, torch.arange(len(data.files))),
            "seed": options.split_seed, "test_fraction": options.test_fraction,
            "val_fraction": options.val_fraction, "limit": options.limit,
            "classes": data.classes, "test_fingerprint": fingerprint(data.files, splits.test)}


def split_differences(recorded: dict, current: dict) -> list[str]:
    """The settings (as flags) in which two split identities differ; [] when they hold out the same images."""
    return [f"{flag} (was {recorded.get(key)!r}, now {current[key]!r})" if flag.startswith("--") else flag
            for key, flag in SPLIT_SETTINGS.items() if recorded.get(key) != current[key]]


def default_cache_size(image_size: int) -> int:
    """8/7 of the training resolution, as 256/224 on ImageNet: room for the crops to move."""
    return math.ceil(image_size * 8 / 7)


@dataclass(frozen=True)
class DataOptions:
    """What the data flags (cli.add_data_arguments) ask for: which images, decoded at which resolution, split how.
    Equal options give every script the same images and the same splits."""
    data: Path
    cache_dir: Path
    image_size: int  # px the network sees; the cache is decoded at cache_size, by default 8/7 of it
    cache_size: int | None = None
    demo: bool = False  # the generated demo set instead of `data`
    unlabelled: bool | None = False  # True: every photo under `data`, unlabelled; None: so when they are loose
    download_url: str = download.DEFAULT_URL
    download: bool = False  # (after download_url, whose default reads the module of this name)
    limit: int | None = None
    workers: int | None = None
    split_seed: int = 0
    test_fraction: float = 0.1
    val_fraction: float = 0.05
    labels: int = 250
    label_seed: int = 0

    @classmethod
    def from_args(cls, args, **changes) -> DataOptions:
        """The options among parsed arguments `args` (or any object with those attributes), `changes` applied."""
        names = [field.name for field in dataclasses.fields(cls)]
        return cls(**{**{name: getattr(args, name) for name in names if hasattr(args, name)}, **changes})


def photos_folder(options: DataOptions) -> Path:
    """The folder of photos that `options` read: the generated demo set, or `data`, downloaded first with
    `download` (once: a folder already there is taken as it is)."""
    if options.download and not options.demo:
        if options.data.name != download.TOP_FOLDER:
            raise DataError(f"--download unpacks into a folder named {download.TOP_FOLDER}: "
                            f"pass --data DIR/{download.TOP_FOLDER}")
        download.download_dataset(options.data.parent, options.download_url)
    return make_demo_images(options.cache_dir / DEMO_FOLDER) if options.demo else options.data


def check_split_sizes(options: DataOptions) -> None:
    """Refuse, before any decoding, split options that no data can satisfy: held-out fractions that leave nothing,
    or a --limit below what two classes need at the least (least_per_class)."""
    if options.test_fraction + options.val_fraction >= 1:
        raise DataError(f"--test-fraction {options.test_fraction} and --val-fraction {options.val_fraction} hold out "
                        f"every image: together they must stay below 1")
    least = least_per_class(math.ceil(options.labels / 2), options.test_fraction, options.val_fraction)
    if options.limit is not None and options.limit < 2 * least:
        raise DataError(f"--limit {options.limit} is too few to split: with --labels {options.labels}, --test-fraction "
                        f"{options.test_fraction} and --val-fraction {options.val_fraction} each class needs "
                        f"{least} images at the least, two classes {2 * least}: raise --limit, or lower --labels")


def open_data(options: DataOptions, verbose: bool = True) -> tuple[ImageSet, Splits]:
    """The decoded images and the splits that `options` ask for (photos_folder); prints the start-up lines when
    `verbose`."""
    root = photos_folder(options)
    cache_size = options.cache_size or default_cache_size(options.image_size)
    if cache_size < options.image_size:
        raise DataError(f"--cache-size {cache_size} is below --image-size {options.image_size}: every image would be "
                        f"enlarged from fewer pixels than the network sees; pass --cache-size {options.image_size} or "
                        f"more, or leave it out (default {default_cache_size(options.image_size)})")
    unlabelled = options.unlabelled and not options.demo
    if not unlabelled:
        check_split_sizes(options)
    data = load_images(root, cache_size, options.cache_dir, options.limit, options.split_seed, options.workers,
                       unlabelled=unlabelled)
    splits = make_splits(data.labels, len(data.classes), options.test_fraction, options.labels, options.split_seed,
                         options.label_seed, data.classes, data.hashes, options.val_fraction)
    if verbose:
        print(describe(data))
        print(f"splits: {len(splits.pretrain):,} pretraining (labels unused), {len(splits.labelled):,} labelled, "
              f"{len(splits.validation):,} validation, {len(splits.test):,} test (seed {options.split_seed})")
    return data, splits


# ---------------------------------------------------------------- batches


def cache_on_device(images: torch.Tensor, device: torch.device, reserve_bytes: int = 4 << 30) -> torch.Tensor:
    """The cache on `device` when it fits there beside `reserve_bytes` for training (devices.fits), else where it
    is, in host memory."""
    return images.to(device) if devices.fits(images.numel() * images.element_size(), device, reserve_bytes) else images


def epoch_batches(indices: torch.Tensor, batch_size: int, generator: torch.Generator, rank: int = 0,
                  world_size: int = 1, skip: int = 0):
    """Batches of `indices` in a random order from `generator` (on its device), dropping the incomplete last,
    after the first `skip` (those a run interrupted mid-epoch had done). With several processes, each yields
    its own 1/world_size slice of every global batch."""
    order = indices.to(generator.device)[torch.randperm(len(indices), generator=generator, device=generator.device)]
    share = batch_size // world_size
    for start in range(skip * batch_size, len(order) - batch_size + 1, batch_size):
        yield order[start + rank * share:start + (rank + 1) * share]


def device_batches(images: torch.Tensor, indices: torch.Tensor, batch_size: int, generator: torch.Generator,
                   device: torch.device, rank: int = 0, world_size: int = 1, skip: int = 0, prefetch: int = 3):
    """uint8 batches (B, 3, S, S) on `device` of `indices` in the generator's random order. A cache on the
    device (or a host cache feeding the host) is gathered where it is; a host cache feeding a GPU is gathered
    into pinned memory by a background thread, `prefetch` batches ahead, and copied asynchronously, so the GPU
    does not wait for the host. The order is drawn in the caller's thread; the background thread only gathers
    and pins host memory."""
    order = list(epoch_batches(indices, batch_size, generator, rank, world_size, skip))
    if not devices.needs_pinning(images.device, device):
        for batch_indices in order:
            yield gather(images, batch_indices, device)
        return
    ready: queue.Queue = queue.Queue(maxsize=prefetch)
    closed = threading.Event()  # the consumer stopped early (an early stop, bench's last epoch): the thread ends

    def offer(item) -> bool:
        """Put `item` in the queue once there is room, unless the consumer stops first."""
        while not closed.is_set():
            try:
                ready.put(item, timeout=0.05)
                return True
            except queue.Full:
                pass
        return False

    def produce() -> None:
        try:
            for batch_indices in order:
                if not offer(devices.pin_memory(images[batch_indices.to(images.device)])):
                    return
            offer(None)
        except BaseException as error:  # handed to the consumer, which raises it
            offer(error)

    threading.Thread(target=produce, daemon=True).start()
    try:
        while (batch := ready.get()) is not None:
            if isinstance(batch, BaseException):
                raise batch
            yield batch.to(device, non_blocking=True)
    finally:
        closed.set()


def gather(images: torch.Tensor, indices: torch.Tensor, device: torch.device) -> torch.Tensor:
    """images[indices] on `device` (devices.to_device: a host batch goes to a GPU through pinned memory)."""
    return devices.to_device(images[indices.to(images.device)], device)


# ---------------------------------------------------------------- demo data


DEMO_PER_CLASS = 400  # images of each of the demo set's two classes
DEMO_FOLDER = f"demo-data-2x{DEMO_PER_CLASS}"  # under --cache-dir; named by its content, so a change makes a new one


def make_demo_images(folder: Path, per_class: int = DEMO_PER_CLASS, size: int = 64, seed: int = 0) -> Path:
    """A small synthetic two-class set (discs vs. squares, random colours, sizes, places and noise) written
    as PNGs into folder/disc and folder/square once; returns folder."""
    if folder.is_dir():
        return folder
    cache.remove_abandoned(folder.parent)
    staging = cache.staging_path(folder)
    rng = np.random.default_rng(seed)
    for shape in ("disc", "square"):
        (staging / shape).mkdir(parents=True, exist_ok=True)
        for i in range(per_class):
            background = rng.integers(0, 256, 3)
            pixels = np.clip(background + rng.normal(0, 25, (size, size, 3)), 0, 255).astype(np.uint8)
            image = Image.fromarray(pixels)
            radius = rng.uniform(0.15, 0.35) * size
            cx, cy = rng.uniform(radius, size - radius, 2)
            box = [cx - radius, cy - radius, cx + radius, cy + radius]
            colour = tuple(int(v) for v in rng.integers(0, 256, 3))
            draw = ImageDraw.Draw(image)
            (draw.ellipse if shape == "disc" else draw.rectangle)(box, fill=colour)
            image.save(staging / shape / f"{i}.png")
    try:
        os.replace(staging, folder)
    except OSError:
        if not folder.is_dir():
            raise
        shutil.rmtree(staging, ignore_errors=True)  # another process finished the same set first: keep its copy,
        # which the runs started meanwhile may be reading
    return folder
