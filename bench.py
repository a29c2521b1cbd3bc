"""Throughput of SimSiam pretraining on one device, three ways, in one run:

    (a) ceiling:  SimSiam steps on augmented batches already on the device (model, loss, optimizer only);
    (b) pipeline: what train.py runs, through the same functions: cache -> batch -> augmentation -> step;
    (c) baseline: the usual kind, PIL decode + torchvision transforms in DataLoader workers (one per core),
                  both views, same resolution and batch, then the same step.

    python bench.py --data data/PetImages --device cuda --json results/bench-h200.json   # 150 px, batch 256, bf16
    python bench.py --demo --device cpu --image-size 48 --batch-size 16 --steps 3 --warmup 1   # CPU smoke run

Prints a table (images/s, seconds per 25,000-image epoch, peak memory, ratios b/a and b/c) and writes the same
figures as JSON. The cache is built into a fresh folder under --cache-dir, deleted at the end, so cache_build_s is a
cold build; warm_start_s is a second run's start: opening that cache, placing it, and the first step.
"""
from __future__ import annotations

import argparse
import json
import os
import shutil
import tempfile
import time
from pathlib import Path

import torch
from PIL import Image
from torchvision.transforms import v2

from simsiam import augment, cli, dataset, devices, recipe, runs, schedule
from simsiam.model import SimSiam

EPOCH_IMAGES = 25_000  # the size of Microsoft's archive, for "seconds per epoch"


def parse_args(argv=None) -> argparse.Namespace:
    defaults = recipe.DEFAULTS  # train.py's: the benchmark times what a user's run does
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    cli.add_data_arguments(parser)
    group = parser.add_argument_group("benchmark (sizes and optimiser as train.py's defaults)")
    group.add_argument("--image-size", type=cli.image_size, default=defaults["image_size"],
                       help="crop side in px (default: %(default)s)")
    group.add_argument("--batch-size", type=cli.batch_size, default=defaults["batch_size"],
                       help="images per step, two views each (default: %(default)s)")
    group.add_argument("--steps", type=cli.positive(int), default=50, help="timed steps per measurement")
    group.add_argument("--warmup", type=int, default=10, help="untimed steps before each measurement")
    group.add_argument("--compile", action="store_true", help="torch.compile the model and the augmentation")
    group.add_argument("--host-cache", action="store_true",
                       help="keep the cache in host memory even where it fits on the GPU, to measure the pinned "
                            "prefetch path that a cache too large for the GPU takes")
    group.add_argument("--baseline-workers", type=cli.positive(int), default=os.cpu_count(),
                       help="DataLoader workers of the baseline (default: one per core)")
    group.add_argument("--no-baseline", action="store_true",
                       help="skip (c), the DataLoader baseline, for a quick measurement of (a) and (b)")
    group.add_argument("--json", type=Path, default=None, help="also write the figures here")
    cli.add_run_arguments(group)
    return parser.parse_args(argv)


def images_per_s(step, steps: int, warmup: int, batch_size: int, device: torch.device) -> float:
    """Run `warmup` untimed steps, then time `steps` steps between two device synchronisations."""
    for _ in range(warmup):
        step()
    devices.synchronize(device)
    started = time.perf_counter()
    for _ in range(steps):
        step()
    devices.synchronize(device)
    return steps * batch_size / (time.perf_counter() - started)


def endless(make_iterator):
    """Chain fresh iterators (epochs) forever."""
    while True:
        yield from make_iterator()


class PilPairs(torch.utils.data.Dataset):
    """The usual pipeline: decode the file with PIL, then two torchvision-transformed views."""

    def __init__(self, root: Path, files: list[str], size: int):
        self.paths = [root / name for name in files]
        self.transform = v2.Compose([
            v2.RandomResizedCrop(size, scale=augment.CROP_SCALE, antialias=True),
            v2.RandomApply([v2.ColorJitter(augment.BRIGHTNESS, augment.CONTRAST, augment.SATURATION, augment.HUE)],
                           p=augment.JITTER_PROBABILITY),
            v2.RandomGrayscale(augment.GRAYSCALE_PROBABILITY),
            v2.RandomApply([v2.GaussianBlur(augment.blur_kernel(size), augment.blur_sigma_range(size))],
                           p=augment.BLUR_PROBABILITY),
            v2.RandomHorizontalFlip(),
            v2.ToImage(), v2.ToDtype(torch.float32, scale=True), v2.Normalize(augment.MEAN, augment.STD),
        ])

    def __len__(self) -> int:
        return len(self.paths)

    def __getitem__(self, index: int):
        with Image.open(self.paths[index]) as image:
            image = image.convert("RGB")
        return self.transform(image), self.transform(image)


def baseline_images_per_s(data: dataset.ImageSet, splits: dataset.Splits, model, optimizer, args,
                          runtime: devices.Runtime) -> float:
    """(c): the same step fed by PilPairs in DataLoader workers, batches pinned by the DataLoader on a GPU."""
    device = runtime.device
    loader = torch.utils.data.DataLoader(
        PilPairs(data.root, [data.files[i] for i in splits.pretrain], args.image_size), batch_size=args.batch_size,
        shuffle=True, drop_last=True, num_workers=args.baseline_workers,
        pin_memory=devices.needs_pinning(torch.device("cpu"), device), persistent_workers=True, prefetch_factor=4)
    pairs = endless(lambda: iter(loader))

    def baseline_step():
        x1, x2 = (x.to(device, non_blocking=True) for x in next(pairs))  # sgd_step lays them out
        recipe.sgd_step(model, optimizer, x1, x2, runtime)

    return images_per_s(baseline_step, args.steps, args.warmup, args.batch_size, device)


@cli.reports_errors
def main(argv=None) -> None:
    args = parse_args(argv)
    runtime = devices.make_runtime(args.device, args.precision)
    device, precision = runtime.device, runtime.precision
    recipe.check_memory(args.image_size, args.batch_size, runtime)  # before any decoding
    torch.manual_seed(args.seed)
    layout = runtime.memory_format
    # a cache of its own, timed, under --cache-dir (the temporary folder may be small or read-only)
    temporary_cache = Path(tempfile.mkdtemp(prefix=".bench-", dir=runs.writable_folder(args.cache_dir, "--cache-dir")))
    try:
        started = time.perf_counter()
        data, splits = dataset.open_data(dataset.DataOptions.from_args(args, cache_dir=temporary_cache))
        cache_build_s = time.perf_counter() - started

        model = SimSiam().to(device, memory_format=layout)
        defaults = recipe.DEFAULTS
        optimizer = recipe.make_optimizer(model, schedule.peak_lr(defaults["lr"], args.batch_size),
                                          defaults["momentum"], defaults["weight_decay"])
        timed_model = torch.compile(model) if args.compile else model

        started = time.perf_counter()
        reopened = dataset.load_images(data.root, data.images.shape[-1], temporary_cache, args.limit, args.split_seed,
                                       args.workers)
        images = reopened.images if args.host_cache else dataset.cache_on_device(reopened.images, device)
        order_generator, augment_generator = devices.generator(images.device, 0), devices.generator(device, 0)
        batches = endless(lambda: dataset.device_batches(images, splits.pretrain, args.batch_size, order_generator,
                                                         device))

        def pipeline_step():
            x1, x2 = recipe.views(next(batches), args.image_size, augment_generator, args.compile)
            recipe.sgd_step(timed_model, optimizer, x1, x2, runtime)

        pipeline_step()
        devices.synchronize(device)
        warm_start_s = time.perf_counter() - started
        cache_on = ("host, pinned batches prefetched" if devices.needs_pinning(images.device, device) else
                    "host" if images.device.type == "cpu" else "device")

        batch = next(batches)
        x1, x2 = recipe.views(batch, args.image_size, augment_generator)
        devices.reset_peak_memory(device)
        ceiling = images_per_s(lambda: recipe.sgd_step(timed_model, optimizer, x1, x2, runtime),
                               args.steps, args.warmup, args.batch_size, device)
        ceiling_memory = devices.peak_memory_gb(device)

        devices.reset_peak_memory(device)
        augmentation = images_per_s(lambda: recipe.views(batch, args.image_size, augment_generator, args.compile),
                                    args.steps, args.warmup, args.batch_size, device)
        pipeline = images_per_s(pipeline_step, args.steps, args.warmup, args.batch_size, device)
        pipeline_memory = devices.peak_memory_gb(device)  # on the GPU this includes the resident cache

        baseline = None if args.no_baseline else baseline_images_per_s(data, splits, timed_model, optimizer, args,
                                                                       runtime)
    finally:
        shutil.rmtree(temporary_cache, ignore_errors=True)

    result = {
        "device": devices.describe(device),
        "torch": torch.__version__, "image_size": args.image_size, "batch_size": args.batch_size,
        "precision": precision, "compile": args.compile, "cache_resolution": data.images.shape[-1],
        "num_images": len(data.files), "cache_on": cache_on, "host_cache_forced": args.host_cache, "steps": args.steps,
        "ceiling_images_per_s": ceiling, "pipeline_images_per_s": pipeline, "baseline_images_per_s": baseline,
        "augmentation_images_per_s": augmentation,
        "pipeline_over_ceiling": pipeline / ceiling, "pipeline_over_baseline": baseline and pipeline / baseline,
        "peak_memory_gb": pipeline_memory, "ceiling_peak_memory_gb": ceiling_memory,
        "cache_gb": data.images.numel() / 1e9, "cache_build_s": cache_build_s, "warm_start_s": warm_start_s,
        "baseline_workers": args.baseline_workers,
    }
    rows = [("(a) ceiling: model step only", ceiling), ("(b) pipeline: cache, augmentation, step", pipeline),
            ("(c) baseline: PIL + torchvision workers", baseline), ("    augmentation alone, two views", augmentation)]
    print(f"\n{result['device']}, torch {torch.__version__}, {args.image_size} px, batch {args.batch_size}, "
          f"{precision}{', compiled' if args.compile else ''}; cache of {len(data.files):,} images at "
          f"{data.images.shape[-1]} px in {cache_on}")
    print(f"{'':42} {'images/s':>10} {'s / 25k epoch':>14}")
    for name, rate in rows:
        if rate is not None:
            print(f"{name:42} {rate:10,.0f} {EPOCH_IMAGES / rate:14.2f}")
    memory_kind = "GPU memory, cache included" if device.type == "cuda" else "process resident memory"
    over_baseline = f", b/c = {pipeline / baseline:.1f}" if baseline else ""
    print(f"b/a = {pipeline / ceiling:.2f}{over_baseline}; peak {memory_kind} "
          f"{pipeline_memory:.2f} GB; cache build {cache_build_s:.1f} s, warm start {warm_start_s:.1f} s")
    if args.json:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(json.dumps(result, indent=2) + "\n")


if __name__ == "__main__":
    main()
