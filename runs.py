"""What every script's run shares: the data arguments and their resolution, the device, the run folder
(resolved arguments, an append-only metrics.jsonl) and one-line errors."""
from __future__ import annotations

import argparse
import json
import math
import os
import sys
import time
from pathlib import Path

import torch

import dataset
import download


def fail(message: str) -> None:
    """Stop with one line on stderr and exit status 2, no traceback."""
    rank = f"rank {os.environ['RANK']}: " if int(os.environ.get("WORLD_SIZE", "1")) > 1 else ""
    print(f"{rank}error: {message}", file=sys.stderr)
    raise SystemExit(2)


def positive(kind):
    """argparse type: a number > 0, with the valid range in the error."""
    def parse(text: str):
        value = kind(text)
        if not value > 0:
            raise argparse.ArgumentTypeError(f"must be > 0, got {text}")
        return value
    return parse


def fraction(text: str) -> float:
    value = float(text)
    if not 0 < value < 1:
        raise argparse.ArgumentTypeError(f"must be between 0 and 1 (exclusive), got {text}")
    return value


def add_data_arguments(parser: argparse.ArgumentParser) -> None:
    """The data flags train.py and classifier.py share; equal values give both scripts the same splits."""
    group = parser.add_argument_group("data")
    group.add_argument("--data", type=Path, default=Path("data/PetImages"),
                       help="image folder: one sub-folder per class (PetImages/Cat, PetImages/Dog) "
                            "or Kaggle's flat train/cat.0.jpg layout")
    group.add_argument("--download", action="store_true",
                       help="first fetch and unpack Microsoft's archive (787 MB) into the parent of --data, "
                            "resuming a partial download")
    group.add_argument("--download-url", default=download.DEFAULT_URL, help="where --download fetches from")
    group.add_argument("--demo", action="store_true",
                       help="use a generated two-class set instead of --data, with small settings")
    group.add_argument("--cache-dir", type=Path, default=dataset.default_cache_dir(),
                       help="where decoded images are cached (default: %(default)s)")
    group.add_argument("--cache-size", type=positive(int), default=None,
                       help="cache resolution in px (default: 8/7 of --image-size, as 256/224 on ImageNet)")
    group.add_argument("--limit", type=positive(int), default=None, help="use a seeded subset of N images")
    group.add_argument("--workers", type=positive(int), default=None, help="decoding processes (default: all cores)")
    group = parser.add_argument_group("splits (keep equal across scripts)")
    group.add_argument("--split-seed", type=int, default=0, help="seed of the held-out test split and of --limit")
    group.add_argument("--test-fraction", type=fraction, default=0.1,
                       help="stratified test split, never seen by pretraining or the labels")
    group.add_argument("--labels", type=positive(int), default=250,
                       help="size of the labelled subset, balanced per class")
    group.add_argument("--label-seed", type=int, default=0, help="seed of the labelled subset draw")


def add_size_arguments(group, defaults: dict, demo: dict) -> None:
    """--epochs, --batch-size, --image-size: unset (None) until with_defaults resolves them."""
    group.add_argument("--epochs", type=positive(int), default=None,
                       help=f"passes over the training images (default {defaults['epochs']}, --demo {demo['epochs']})")
    group.add_argument("--batch-size", type=positive(int), default=None,
                       help=f"images per step (default {defaults['batch_size']}, --demo {demo['batch_size']})")
    group.add_argument("--image-size", type=positive(int), default=None,
                       help=f"side of the network's input in px (default {defaults['image_size']}, "
                            f"--demo {demo['image_size']})")


def add_run_arguments(group) -> None:
    group.add_argument("--seed", type=int, default=0,
                       help="seed of initialisation, batch order and augmentation (not of the splits)")
    group.add_argument("--device", choices=["auto", "cpu", "cuda"], default="auto",
                       help="auto: cuda when PyTorch sees a GPU, else cpu")
    group.add_argument("--precision", choices=["auto", "bf16", "fp32"], default="auto",
                       help="auto: bf16 autocast on CUDA, fp32 on CPU")


def with_defaults(args: argparse.Namespace, defaults: dict, demo: dict) -> argparse.Namespace:
    """A copy of args where each setting left unset (None) takes its value from `demo` under --demo,
    else from `defaults`."""
    resolved = argparse.Namespace(**vars(args))
    for name, default in defaults.items():
        if getattr(resolved, name) is None:
            setattr(resolved, name, demo[name] if args.demo else default)
    return resolved


def open_data(args: argparse.Namespace, verbose: bool = True) -> tuple[dataset.ImageSet, dataset.Splits]:
    """The decoded images and the splits the arguments ask for, or a one-line error."""
    if args.download and not args.demo:
        if args.data.name != download.TOP_FOLDER:
            fail(f"--download unpacks into a folder named {download.TOP_FOLDER}: pass --data DIR/{download.TOP_FOLDER}")
        try:
            download.download_dataset(args.data.parent, args.download_url)
        except download.DownloadError as error:
            fail(str(error))
    root = dataset.make_demo_images(args.cache_dir / "demo-data") if args.demo else args.data
    cache_size = args.cache_size or math.ceil(args.image_size * 8 / 7)
    try:
        data = dataset.load_images(root, cache_size, args.cache_dir, args.limit, args.split_seed, args.workers)
        splits = dataset.make_splits(data.labels, len(data.classes), args.test_fraction, args.labels,
                                     args.split_seed, args.label_seed, data.classes)
    except dataset.DataError as error:
        fail(str(error))
    if not verbose:
        return data, splits
    print(dataset.describe(data))
    print(f"splits: {len(splits.pretrain):,} pretraining (labels unused), {len(splits.labelled):,} labelled, "
          f"{len(splits.test):,} test (seed {args.split_seed})")
    return data, splits


def pick_device(name: str) -> torch.device:
    if name == "cuda" and not torch.cuda.is_available():
        fail("--device cuda asked for, but PyTorch sees no CUDA GPU; use --device cpu")
    return torch.device(name if name != "auto" else "cuda" if torch.cuda.is_available() else "cpu")


def prepare_out(out: Path) -> Path:
    """Create the run folder and check it can be written, before any work starts."""
    try:
        out.mkdir(parents=True, exist_ok=True)
        probe = out / ".write-test"
        probe.write_text("")
        probe.unlink()
    except OSError as error:
        fail(f"cannot write to the output folder {out} ({error.strerror}): choose another with --out")
    return out


def plain_args(args: argparse.Namespace) -> dict:
    """The arguments as builtins (paths as strings), for JSON and for weights_only checkpoints."""
    return {key: str(value) if isinstance(value, Path) else value for key, value in vars(args).items()}


def save_args(out: Path, args: argparse.Namespace, **derived) -> None:
    """OUT/args.json: the resolved arguments and derived values of this run."""
    (out / "args.json").write_text(json.dumps({**plain_args(args), **derived}, indent=2) + "\n")


class Metrics:
    """OUT/metrics.jsonl: one flat JSON object per event, appended and flushed at once."""

    def __init__(self, path: Path):
        self.path = path

    def log(self, **record) -> None:
        record = {"time": round(time.time(), 3), **record}
        with open(self.path, "a") as file:
            file.write(json.dumps(record) + "\n")


def read_jsonl(path: Path) -> list[dict]:
    """The records of a metrics file; a line cut short by a killed process is skipped."""
    records = []
    for line in Path(path).read_text().splitlines():
        try:
            records.append(json.loads(line))
        except json.JSONDecodeError:
            continue
    return records


def truncate_metrics(path: Path, after_epoch: int) -> None:
    """Drop the records of epochs after `after_epoch` (a resumed run writes them again), atomically."""
    if path.is_file():
        kept = [record for record in read_jsonl(path) if record.get("epoch", 0) <= after_epoch]
        temporary = path.with_name(path.name + ".tmp")
        temporary.write_text("".join(json.dumps(record) + "\n" for record in kept))
        os.replace(temporary, path)


def resolve_precision(name: str, device: torch.device) -> str:
    """auto: bf16 autocast on CUDA (the ResNet's convolutions run on tensor cores), fp32 on CPU."""
    if name == "auto":
        return "bf16" if device.type == "cuda" else "fp32"
    return name


def autocast(device: torch.device, precision: str):
    return torch.autocast(device.type, dtype=torch.bfloat16, enabled=precision == "bf16")


def memory_format(device: torch.device) -> torch.memory_format:
    """channels_last on CUDA, where cuDNN's bf16 convolutions want NHWC; the default layout on CPU."""
    return torch.channels_last if device.type == "cuda" else torch.contiguous_format
