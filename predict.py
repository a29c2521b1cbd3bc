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
    parser.add_argument("--batch-size", type=runs.positive(int), default=64, help="photos per batch (%(default)s)")
    parser.add_argument("--csv", type=Path, help="also write the predictions and each class's probability to this .csv")
    runs.add_run_arguments(parser)
    return parser.parse_args(argv)

def read_image(path: Path, size: int) -> tuple[np.ndarray, str | None]:  # (3, S, S) uint8, or a blank and why not
    try:
        return dataset.decode_file(path, size)[0].transpose(2, 0, 1), None
    except Exception as error:  # any undecodable file is reported and skipped, never fatal
        return np.zeros((3, size, size), np.uint8), dataset.failure_kind(path, error)

@runs.reports_errors
def main(argv=None) -> None:
    args = parse_args(argv)
    if sys.stdout is None:  # closed (>&-): every prediction would vanish
        raise UserError("stdout is closed, so the predictions would go nowhere: redirect it (> predictions.txt)")
    files = {}  # resolved -> as first given: files named, folders' photos at any depth and unreadable sub-folders
    for path in args.paths:
        if not path.is_dir() and not path.is_file():  # a mistyped name is no damaged photo; a named pipe would hang
            raise UserError(f"no such file or folder: {path}" if not path.exists() else
                            f"not a regular file or folder (a named pipe or a device?): {path}")
        for file in [path / name for name in dataset.image_tree(path)] if path.is_dir() else [path]:
            files.setdefault(file.resolve(), file)  # each photo once, however often named
    files = list(files.values())
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
    final = runs.final_record(record) if (record := args.checkpoint.parent / "metrics.jsonl").is_file() else None
    accuracy, chance = final and final["test_accuracy"], 1 / len(classes)  # how far the predictions can be trusted
    error = final and evaluate.standard_error(accuracy, final["num_test"])  # its standard error, as classifier.py's
    print(f"classifier: test accuracy {accuracy:.4f} ± {error:.4f} (standard error) on {final.get('test_set')}"
          + f"; warning: within 2 standard errors of chance (1/{len(classes)})" * (abs(accuracy - chance) <= 2 * error)
          if final else f"classifier: test accuracy unknown (no final record in {record})", file=sys.stderr)
    classifier = model.load_weights(model.Classifier(len(classes)), checkpoint["model"], args.checkpoint)
    classifier = classifier.to(runtime.device, memory_format=runtime.memory_format).eval()
    rows = []  # name, class, its probability, each class's probability
    with ThreadPoolExecutor() as pool, torch.no_grad():  # PIL releases the GIL while it decodes
        for batch in (files[start:start + args.batch_size] for start in range(0, len(files), args.batch_size)):
            decoded = list(pool.map(read_image, batch, [cache_size] * len(batch)))
            images = torch.from_numpy(np.stack([image for image, _ in decoded]))  # (B, 3, S, S) uint8
            features = evaluate.embed(classifier.backbone, images, torch.arange(len(batch)), image_size, runtime)
            for path, (_, reason), row in zip(batch, decoded, F.softmax(classifier.head(features), dim=1).tolist()):
                name, label = dataset.shown(dataset.one_line(str(path))), row.index(max(row))  # argmax: the first
                if reason is not None:  # unreadable: its blank's probabilities are not shown
                    print(f"skipped {name}: {reason}", file=sys.stderr)
                    continue
                rows.append([name, classes[label], f"{row[label]:.6f}", *(f"{q:.6f}" for q in row)])
                print(f"{name}  {classes[label]}  {row[label]:.2f}")
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
