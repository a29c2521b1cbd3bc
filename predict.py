"""Classify photos with a trained classifier (classifier.py's classifier.pt): one line per file with its class and
probability, then how many went to each class and how many could not be read.

    python predict.py photos/rex.jpg                          # runs/classifier-simsiam-frozen/classifier.pt
    python predict.py photos/ more/tom.png --csv predictions.csv   # folders are searched recursively
    python predict.py photos/ --checkpoint runs/classifier-simsiam-finetune/classifier.pt --device cuda
    python classifier.py --demo --random --device cpu --out runs/demo-classifier   # CPU smoke, with the next line
    python predict.py ~/.cache/simsiam-cats-dogs/demo-data-2x400 --device cpu \\
        --checkpoint runs/demo-classifier/classifier.pt

Each file is seen exactly as the classifier saw its test images: decoded as the cache decodes it
(decode.decode_image at the classifier's cache resolution: EXIF orientation, shorter side resized, centre crop),
then the evaluation view (augment.center_view at its image size), the backbone's features in eval mode and the
head (evaluate.embed, then model.head, as classifier.py tests); the probabilities are the softmax of the logits.
Both sizes come from the checkpoint's recorded arguments.

A folder contributes its image files (dataset.is_image_file: image suffixes, no hidden files, no Thumbs.db) at any
depth; a file named on the command line is tried whatever its suffix. A file that cannot be decoded (empty,
truncated, not an image, vanished) is reported on stderr with the reason and skipped. A path that does not exist
is an error before any work: a mistyped name is not a damaged photo. Exit status 0 when at least one file was
classified, 2 (one line, `error: ...`) when none could be, or the checkpoint is missing or not a classifier.
--csv FILE writes path, class, probability and one probability_<class> column per class for the classified files,
atomically at the end.
"""
from __future__ import annotations

import argparse
import csv
import os
import sys
from collections import Counter
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

from simsiam import cli, dataset, decode, devices, evaluate, pretrained, runs
from simsiam.model import Classifier, load_checkpoint

DEFAULT_CHECKPOINT = Path("runs") / runs.classifier_run_name(random=False, finetune=False) / "classifier.pt"


def parse_args(argv=None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("paths", type=Path, nargs="+",
                        help="image files and folders (searched recursively for image files)")
    group = parser.add_argument_group("model")
    group.add_argument("--checkpoint", type=Path, default=DEFAULT_CHECKPOINT,
                       help="classifier.py's classifier.pt (default: %(default)s)")
    group = parser.add_argument_group("run")
    group.add_argument("--batch-size", type=cli.positive(int), default=64,
                       help="images per forward pass; the model is in eval mode, so the probabilities do not "
                            "depend on it (default: %(default)s)")
    group.add_argument("--workers", type=cli.positive(int), default=None,
                       help="decoding threads (default: all cores)")
    group.add_argument("--csv", type=Path, default=None,
                       help="also write path,class,probability and probability_<class> columns to this file (a "
                            "new file, or one ending in .csv: nothing else is replaced)")
    cli.add_run_arguments(group)
    return parser.parse_args(argv)


def image_files(paths: list[Path]) -> list[Path]:
    """The files to classify, in order: each file as given, each folder's image files (dataset.image_tree: at any
    depth, hidden ones left out) sorted, then its folders that could not be read (each reported as skipped); a
    file reached twice counts once. A path that does not exist, or is no regular file (a named pipe would block
    the read), is a RunError."""
    missing = [str(path) for path in paths if not path.exists()]
    if missing:
        raise runs.RunError(f"no such file or folder: {', '.join(missing)}")
    odd = [str(path) for path in paths if not path.is_dir() and not path.is_file()]
    if odd:
        raise runs.RunError(f"not a regular file or folder (a named pipe or a device?): {', '.join(odd)}")
    files = []
    for path in paths:
        found, unreadable = dataset.image_tree(path) if path.is_dir() else ([path], [])
        files += found + unreadable
    if not files:
        raise runs.RunError(f"no image files in {', '.join(map(str, paths))} (image suffixes: "
                            f"{', '.join(sorted(dataset.IMAGE_SUFFIXES))})")
    return list(dict.fromkeys(files))


def check_csv(path: Path) -> None:
    """Refuse, before the work starts, a --csv that would replace anything but a CSV file: a photo, the
    checkpoint, a folder."""
    if path.is_dir():
        raise runs.RunError(f"--csv {path} is a folder: name a file in it, e.g. --csv {path / 'predictions.csv'}")
    if path.exists() and path.suffix.lower() != ".csv":
        raise runs.RunError(f"--csv {path} would replace a file that is not a .csv file: name a .csv file, e.g. "
                            f"--csv predictions.csv")
    runs.writable_folder(path.parent, "--csv")


def read_image(path: Path, size: int) -> tuple[np.ndarray | None, str | None]:
    """((3, size, size) uint8, None): the row the cache holds for this file (cache.py decodes it so), or
    (None, why it cannot be decoded)."""
    try:
        return decode.decode_image(path, size).transpose(2, 0, 1), None
    except Exception as error:  # any undecodable file is skipped and reported, never fatal
        return None, decode.failure_kind(path, error)


def decoded_batches(files: list[Path], size: int, batch_size: int, workers: int | None):
    """Per batch of `files`: (the decoded files, their (B, 3, size, size) uint8 images or None when there are none,
    {file: why it was skipped}); decoded on `workers` threads (PIL releases the GIL while it decodes)."""
    with ThreadPoolExecutor(workers or os.cpu_count()) as pool:
        for start in range(0, len(files), batch_size):
            batch = files[start:start + batch_size]
            results = list(pool.map(read_image, batch, [size] * len(batch)))
            decoded = [(path, image) for path, (image, _) in zip(batch, results) if image is not None]
            skipped = {path: reason for path, (_, reason) in zip(batch, results) if reason is not None}
            paths = [path for path, _ in decoded]
            images = torch.from_numpy(np.stack([image for _, image in decoded])) if decoded else None
            yield paths, images, skipped


@torch.inference_mode()
def classify(model: Classifier, images: torch.Tensor, image_size: int, runtime: devices.Runtime) -> torch.Tensor:
    """(B, K) class probabilities of a uint8 batch (B, 3, S, S), as classifier.py evaluates its test images: the
    backbone's features of the centre view (evaluate.embed), then the head in eval mode; softmax of the logits."""
    features = evaluate.embed(model.backbone, images, torch.arange(len(images)), image_size, runtime)  # (B, 512)
    return F.softmax(model.head(features), dim=1)


def write_csv(path: Path, classes: list[str], rows: list[list]) -> None:
    """path,class,probability,probability_<class>... and `rows`, written to a temporary file, then renamed."""
    temporary = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    try:
        with open(temporary, "w", newline="", encoding="utf-8", errors="surrogateescape") as file:  # names as given
            writer = csv.writer(file)
            writer.writerow(["path", "class", "probability", *(f"probability_{name}" for name in classes)])
            writer.writerows(rows)
        os.replace(temporary, path)
    except OSError as error:
        temporary.unlink(missing_ok=True)
        raise runs.RunError(f"cannot write --csv {path} ({error.strerror or error})") from None


@cli.reports_errors
def main(argv=None) -> None:
    args = parse_args(argv)
    files = image_files(args.paths)
    if args.csv is not None:
        check_csv(args.csv)
    torch.manual_seed(args.seed)
    runtime = devices.make_runtime(args.device, args.precision)
    device = runtime.device

    if not args.checkpoint.exists():
        found = sorted(Path("runs").rglob("classifier.pt"))  # the quick start's are in runs/demo/, runs/quickstart/
        raise runs.RunError(f"{args.checkpoint}: no such checkpoint file: " + (
            f"pass one of the classifiers under runs/ with --checkpoint: {', '.join(map(str, found[:4]))}"
            if found else "train a classifier first (python classifier.py --data data/PetImages, after train.py), "
                          "or pass --checkpoint RUN/classifier.pt"))
    checkpoint = load_checkpoint(args.checkpoint, kind="classifier", needs=("classes", "args"))
    classes, trained = checkpoint["classes"], checkpoint["args"]
    image_size, cache_size = pretrained.resolution(None, None, trained, trained["image_size"])
    model = Classifier(len(classes))
    model.load_state_dict(checkpoint["model"])  # its form checked by load_checkpoint
    model = model.to(device, memory_format=runtime.memory_format).eval()
    print(f"{args.checkpoint}: {len(classes)} classes ({', '.join(classes)}) at {image_size} px from a {cache_size} px "
          f"decode, on {device} ({runtime.precision}); files: {len(files):,}")

    per_class, unreadable, rows = Counter(), Counter(), []
    for paths, images, skipped in decoded_batches(files, cache_size, args.batch_size, args.workers):
        for path, reason in skipped.items():
            print(f"skipped {dataset.shown(str(path))}: {reason}", file=sys.stderr)
        unreadable.update(skipped.values())
        if images is None:
            continue
        probabilities = classify(model, images, image_size, runtime).cpu()  # (B, K)
        confidence, predicted = probabilities.max(dim=1)
        for path, p, label, row in zip(paths, confidence.tolist(), predicted.tolist(), probabilities.tolist()):
            name = dataset.shown(str(path))
            print(f"{name}  {classes[label]}  {p:.2f}")
            per_class[classes[label]] += 1
            rows.append([name, classes[label], f"{p:.6f}", *(f"{value:.6f}" for value in row)])

    reasons = ", ".join(f"{count:,} {kind}" for kind, count in unreadable.most_common())
    if not rows:
        raise runs.RunError(f"none of the {len(files):,} files could be classified ({reasons}): see the lines above")
    if args.csv is not None:
        write_csv(args.csv, classes, rows)
    print(f"{len(rows):,} classified ({', '.join(f'{name} {per_class[name]:,}' for name in classes)}), "
          f"{unreadable.total():,} unreadable" + (f" ({reasons})" if unreadable else "")
          + (f"; wrote {args.csv}" if args.csv is not None else ""))


if __name__ == "__main__":
    main()
