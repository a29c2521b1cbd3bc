"""Throughput of SimSiam pretraining on one device, three ways, in one run:

    (a) ceiling:  model.train_step on one uint8 batch already on the device (augmentation, network, loss, SGD);
    (b) pipeline: what train.py runs: the decoded cache -> dataset.device_batches -> model.train_step;
    (c) baseline: the usual kind, PIL decode + torchvision v2 transforms (both views) in DataLoader workers.

    python bench.py --data data/PetImages --device cuda --json results/bench-h200.json   # 150 px, batch 256, bf16
    python bench.py --demo --device cpu --image-size 32 --batch-size 16 --steps 3 --warmup 1   # CPU smoke run

Prints images/s, seconds per 25,000-image epoch and peak memory of each, and the ratios b/a and b/c (also --json)."""
import argparse
import itertools
import json
import os
import statistics
import time
from pathlib import Path

import torch
from PIL import Image
from torchvision.transforms import v2

import augment
import dataset
import model
import runs

LR, MOMENTUM, WEIGHT_DECAY = 0.03, 0.9, 5e-4  # train.py's defaults: the optimiser's cost as a run has it
LABELS = {"ceiling": "(a) ceiling: model.train_step alone", "pipeline": "(b) pipeline: train.py's",
          "baseline": "(c) baseline: PIL + torchvision workers"}

def parse_args(argv=None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    runs.add_data_arguments(parser)
    group = parser.add_argument_group("benchmark (sizes as train.py's defaults)")
    group.add_argument("--image-size", type=runs.image_size, default=150, help="view side, px (default: %(default)s)")
    group.add_argument("--batch-size", type=runs.batch_size, default=256, help="images a step (default: %(default)s)")
    group.add_argument("--steps", type=runs.positive(int), default=50, help="timed steps each (default: %(default)s)")
    group.add_argument("--repeats", type=runs.positive(int), default=3, help="timings of --steps each, the median "
                       "reported: a shared host swings (default: %(default)s)")
    group.add_argument("--warmup", type=runs.in_range(int, 0), default=10, help="untimed steps first (default: 10)")
    group.add_argument("--compile", action="store_true", help="torch.compile the model, as train.py --compile")
    group.add_argument("--host-cache", action="store_true", help="keep the cache in host memory: the pinned prefetch")
    group.add_argument("--baseline-workers", type=runs.positive(int), default=os.cpu_count(), help="of (c)")
    group.add_argument("--no-baseline", action="store_true", help="skip (c), for a quick look at (a) and (b)")
    group.add_argument("--json", type=Path, help="also write the figures here")
    runs.add_run_arguments(group)
    return runs.parse(parser, argv, demo={})

def measure(step, args: argparse.Namespace, device: torch.device) -> tuple[list[float], float]:
    """(images/s of --repeats timings of --steps calls each after --warmup untimed calls, peak GB) of `step`."""
    rates = []
    for count in (args.warmup, *[args.steps] * args.repeats):  # untimed, then timed
        runs.synchronize(device, reset_peak_memory=True)
        started = time.perf_counter()
        for _ in range(count):
            step()
        runs.synchronize(device)
        rates.append(count * args.batch_size / (time.perf_counter() - started))
    return rates[1:], runs.peak_memory_gb(device)

class PilPairs(torch.utils.data.Dataset):  # (c)'s data: PIL decoding, two views by torchvision with augment.py's recipe
    def __init__(self, paths: list[Path], size: int):
        jitter = v2.ColorJitter(augment.BRIGHTNESS, augment.CONTRAST, augment.SATURATION, augment.HUE)
        blur = v2.GaussianBlur(augment.blur_kernel(size), augment.blur_sigma_range(size))
        self.paths, self.transform = paths, v2.Compose([
            v2.RandomResizedCrop(size, scale=augment.CROP_SCALE, antialias=True),
            v2.RandomApply([jitter], p=augment.JITTER_PROBABILITY), v2.RandomGrayscale(augment.GRAYSCALE_PROBABILITY),
            v2.RandomApply([blur], p=augment.BLUR_PROBABILITY), v2.RandomHorizontalFlip(),
            v2.ToImage(), v2.ToDtype(torch.float32, scale=True), v2.Normalize(augment.MEAN, augment.STD)])

    def __len__(self) -> int:
        return len(self.paths)

    def __getitem__(self, index: int):
        image = Image.open(self.paths[index]).convert("RGB")  # loading closes the file
        return self.transform(image), self.transform(image)

@runs.reports_errors
def main(argv=None) -> None:
    args = parse_args(argv)
    device = (runtime := runs.make_runtime(args.device, args.precision, image_size=args.image_size)).device
    torch.manual_seed(args.seed)
    data, splits = dataset.open_data(args)
    images = data.images if args.host_cache else dataset.cache_on_device(data.images, device)
    network = model.SimSiam().to(device, memory_format=runtime.memory_format)
    optimizer = model.make_optimizer(network, model.peak_lr(LR, args.batch_size), MOMENTUM, WEIGHT_DECAY)
    stepped, generator = torch.compile(network) if args.compile else network, runs.generator(device, args.seed)
    step = lambda batch: model.train_step(stepped, optimizer, batch, generator, args.image_size,  # at the peak lr
                                          augment.BLUR_REFERENCE_SIZE, 0, 1, runtime)
    order = runs.generator(images.device, args.seed)
    batches = (batch for _ in itertools.count() for batch in dataset.device_batches(
        images, splits.pretrain, args.batch_size, order, device))  # one epoch after another
    resident = next(batches)
    figures = {"ceiling": measure(lambda: step(resident), args, device),
               "pipeline": measure(lambda: step(next(batches)), args, device)}
    if not args.no_baseline:
        loader = torch.utils.data.DataLoader(
            PilPairs([data.root / data.files[i] for i in splits.pretrain.tolist()], args.image_size),
            batch_size=args.batch_size, shuffle=True, drop_last=True, num_workers=args.baseline_workers,
            pin_memory=device.type == "cuda", persistent_workers=True, prefetch_factor=4)
        pairs = (pair for _ in itertools.count() for pair in loader)
        figures["baseline"] = measure(lambda: model.sgd_step(stepped, optimizer, *(  # train_step after its views
            x.to(device, non_blocking=True) for x in next(pairs)), runtime), args, device)
    result = {"device": runs.describe(device), "torch": torch.__version__, "image_size": args.image_size,
              "batch_size": args.batch_size, "precision": runtime.precision, "compile": args.compile,
              "cache_on": "host, pinned batches prefetched" if images.device != device else images.device.type}
    print(f"\n{result['device']}, torch {torch.__version__}, {args.image_size} px, batch {args.batch_size}, "
          f"{runtime.precision}{', compiled' if args.compile else ''}; cache in {result['cache_on']} memory")
    print(f"{'':40} {'images/s':>10} {'range':>13} {'s / 25k epoch':>14} {'peak GB':>8}")  # Microsoft's 25,000
    for name, (rates, peak) in figures.items():  # the median of the repeats, and their range
        rate, spread = statistics.median(rates), f"{min(rates):,.0f}-{max(rates):,.0f}"
        result |= {f"{name}_images_per_s": rate, f"{name}_repeats_images_per_s": rates, f"{name}_peak_memory_gb": peak}
        print(f"{LABELS[name]:40} {rate:10,.0f} {spread:>13} {25_000 / rate:14.2f} {peak:8.2f}")
    result |= {f"pipeline_over_{name}": result["pipeline_images_per_s"] / result[f"{name}_images_per_s"]
               for name in figures if name != "pipeline"}
    print(", ".join(f"b/{LABELS[name][1]} = {result[f'pipeline_over_{name}']:.2f}" for name in figures if name !=
                    "pipeline") + "; peak GB: " + ("GPU memory, cache included" if device.type == "cuda" else "RSS"))
    if args.json:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(json.dumps(result, indent=2) + "\n")

if __name__ == "__main__":
    main()
