"""Classify your own photos with classifier.py's classifier.pt: one line per photo (name, class, probability).

    python predict.py photos/rex.jpg more/ --csv predictions.csv    # runs/classifier-simsiam-frozen/classifier.pt
    python predict.py photos/ --checkpoint runs/classifier-simsiam-finetune/classifier.pt --device cuda
    python classifier.py --demo --random --device cpu --out runs/demo-classifier   # CPU smoke, with the next line
    python predict.py ~/.cache/simsiam-cats-dogs/demo-data-2x400 --checkpoint runs/demo-classifier/classifier.pt

A photo is seen as the classifier saw its test images: decoded as the cache decodes it, its centre view, the
backbone in eval mode, then the head. Folders are searched recursively; an unreadable file is reported and skipped."""
import argparse
import csv
import sys
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

import dataset
import evaluate
import model
import runs
from model import UserError

def parse_args(argv=None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("paths", type=Path, nargs="+", help="photos, and folders searched recursively for photos")
    parser.add_argument("--checkpoint", type=Path, help="classifier.py's classifier.pt (default: %(default)s)",
                        default=Path("runs") / runs.classifier_run_name("simsiam", finetune=False) / "classifier.pt")
    parser.add_argument("--batch-size", type=runs.positive(int), default=64,
                        help="photos per forward pass; the results do not depend on it (default: %(default)s)")
    parser.add_argument("--csv", type=Path, default=None,
                        help="also write path, class, probability and probability_<class> columns to this .csv file")
    runs.add_run_arguments(parser)
    return parser.parse_args(argv)

def read_image(path: Path, size: int) -> tuple[np.ndarray | None, str | None]:  # (3, S, S) uint8, or why not
    try:
        return dataset.decode_file(path, size)[0].transpose(2, 0, 1), None
    except Exception as error:  # any undecodable file is reported and skipped, never fatal
        return None, dataset.failure_kind(path, error)

@runs.reports_errors
def main(argv=None) -> None:
    args = parse_args(argv)
    files = []  # each file as given, each folder's photos at any depth and its unreadable sub-folders
    for path in args.paths:
        if not path.is_dir() and not path.is_file():  # a mistyped name is no damaged photo; a named pipe would hang
            raise UserError(f"no such file or folder: {path}" if not path.exists() else
                            f"not a regular file or folder (a named pipe or a device?): {path}")
        files += [path / name for name in dataset.image_tree(path)] if path.is_dir() else [path]
    files = list(dict.fromkeys(files))  # each file once
    if args.csv is not None and (args.csv.is_dir() or (args.csv.exists() and args.csv.suffix.lower() != ".csv")):
        raise UserError(f"--csv {args.csv} would replace a folder or a file that is not a .csv file: name a .csv file")
    runtime = runs.make_runtime(args.device, args.precision)
    try:
        checkpoint = model.load_checkpoint(args.checkpoint, "classifier", needs=("classes", "args"))
    except UserError as error:  # the quick start's classifiers are in runs/demo/
        found = " or ".join(sorted(map(str, Path("runs").rglob("classifier.pt")))[:3])
        raise UserError(f"{error}: pass --checkpoint {found or 'RUN/classifier.pt of a classifier.py run'}") from None
    classes, trained = checkpoint["classes"], checkpoint["args"]
    image_size, cache_size = trained["image_size"], trained["cache_size"]
    classifier = model.load_weights(model.Classifier(len(classes)), checkpoint["model"], args.checkpoint)
    classifier = classifier.to(runtime.device, memory_format=runtime.memory_format).eval()
    rows = []  # name, class, its probability, each class's probability
    with ThreadPoolExecutor() as pool, torch.no_grad():  # PIL releases the GIL while it decodes
        for start in range(0, len(files), args.batch_size):
            batch = files[start:start + args.batch_size]
            decoded = list(pool.map(read_image, batch, [cache_size] * len(batch)))
            for path, (image, reason) in zip(batch, decoded):
                if image is None:
                    print(f"skipped {dataset.shown(str(path))}: {reason}", file=sys.stderr)
            good = [path for path, (image, _) in zip(batch, decoded) if image is not None]
            if good:
                images = torch.from_numpy(np.stack([image for image, _ in decoded if image is not None]))  # uint8
                features = evaluate.embed(classifier.backbone, images, torch.arange(len(good)), image_size, runtime)
                probabilities = F.softmax(classifier.head(features), dim=1).cpu()  # (B, K)
                confidence, predicted = probabilities.max(dim=1)
                for path, p, label, row in zip(good, confidence.tolist(), predicted.tolist(), probabilities.tolist()):
                    print(f"{dataset.shown(str(path))}  {classes[label]}  {p:.2f}")
                    rows.append([dataset.shown(str(path)), classes[label], f"{p:.6f}", *(f"{q:.6f}" for q in row)])
    if not rows:
        raise UserError(f"none of the {len(files):,} files could be classified (see the lines above)")
    if args.csv is not None:
        args.csv.parent.mkdir(parents=True, exist_ok=True)
        with open(args.csv, "w", newline="", encoding="utf-8") as out:
            csv.writer(out).writerows([["path", "class", "probability", *(f"probability_{c}" for c in classes)], *rows])
    per_class = ", ".join(f"{name} {sum(row[1] == name for row in rows):,}" for name in classes)
    print(f"{len(rows):,} classified ({per_class}), {len(files) - len(rows):,} unreadable"
          + (f"; wrote {args.csv}" if args.csv is not None else ""))

if __name__ == "__main__":
    main()
