"""SimSiam pretraining of a randomly initialised ResNet18 on a folder of photos, labels unused.

    python train.py --demo                                   # synthetic data, about a minute on a CPU
    python train.py --data data/PetImages                    # Microsoft's Cats and Dogs, 150 px, batch 256
    python train.py --data data/PetImages --resume           # continue an interrupted run from OUT/last.pt
    python train.py --data ../shared/data/cats-vs-dogs/PetImages --image-size 64 --epochs 1 --limit 1000 --device cpu

Writes OUT/siam.pt (the SimSiam weights, for classifier.py), OUT/last.pt (everything --resume needs),
OUT/metrics.jsonl (per epoch: loss, z-std, lr, images/s, kNN accuracy) and OUT/args.json.
"""
from __future__ import annotations

import argparse
import math
import time
from pathlib import Path

import torch
from tqdm import tqdm

import augment
import dataset
import distributed
import evaluate
import pretrain
import runs
from model import PROJECTION_DIM, CheckpointError, SimSiam, load_checkpoint, save_checkpoint

# 150 px and batch 256 as the original repository; the optimisation follows the paper's small-data
# (CIFAR-10) recipe rather than ImageNet's (base lr 0.05, wd 1e-4): 23,000 small photos are closer to
# CIFAR's 50,000 than to ImageNet's 1.28 M, and the stronger weight decay is what keeps small-data runs stable.
DEFAULTS = {"epochs": 200, "batch_size": 256, "image_size": 150}
RECIPE = ("epochs", "batch_size", "image_size", "base_lr", "weight_decay", "momentum", "seed")  # checked on --resume
DEMO = {"epochs": 12, "batch_size": 64, "image_size": 48}  # --demo: about a minute on 2 CPU cores


def parse_args(argv=None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    runs.add_data_arguments(parser)
    group = parser.add_argument_group("optimisation (SimSiam paper, §4 and appendix A)")
    runs.add_size_arguments(group, DEFAULTS, DEMO)
    group.add_argument("--base-lr", type=runs.positive(float), default=0.03,
                       help="base lr; effective lr = base_lr * batch_size / 256, cosine-decayed to 0, "
                            "predictor fixed (0.03: the paper's CIFAR recipe)")
    group.add_argument("--weight-decay", type=float, default=5e-4, help="SGD weight decay (CIFAR recipe: 5e-4)")
    group.add_argument("--momentum", type=float, default=0.9, help="SGD momentum")
    group = parser.add_argument_group("run")
    group.add_argument("--out", type=Path, default=Path("runs/simsiam"), help="run folder (default %(default)s)")
    runs.add_run_arguments(group)
    group.add_argument("--resume", action="store_true", help="continue from OUT/last.pt")
    group.add_argument("--compile", action="store_true",
                       help="torch.compile the model and the augmentation (a warm-up of tens of seconds)")
    group.add_argument("--save-every", type=runs.positive(int), default=10, help="epochs between checkpoints")
    group.add_argument("--knn-k", type=runs.positive(int), default=20, help="neighbours of the kNN monitor")
    group.add_argument("--collapse-fraction", type=runs.positive(float), default=0.25,
                       help="warn when z-std falls below this fraction of 1/sqrt(d), the healthy value")
    return parser.parse_args(argv)


def knn_monitor(model: SimSiam, images, data: dataset.ImageSet, splits: dataset.Splits, image_size: int,
                device: torch.device, precision: str, k: int) -> float:
    """kNN accuracy of the backbone's features: the labelled subset is the bank, the test split the queries."""
    bank = evaluate.embed(model.backbone, images, splits.labelled, image_size, device, precision)
    queries = evaluate.embed(model.backbone, images, splits.test, image_size, device, precision)
    return evaluate.knn_accuracy(bank, data.labels[splits.labelled], queries, data.labels[splits.test],
                                 len(data.classes), k).item()


def train_epoch(model, optimizer, images, splits: dataset.Splits, args, epoch: int, steps_per_epoch: int,
                initial_lr: float, device: torch.device, precision: str, context: distributed.Context, view) -> dict:
    """One pass over this rank's part of the pretraining images; returns the epoch's figures, averaged
    over ranks, and the first step with a non-finite loss (-1 if none)."""
    order_generator = torch.Generator(images.device)  # where the cache is: no index crosses to the GPU
    order_generator.manual_seed(pretrain.epoch_seed(args.seed, epoch))  # the same global order on every rank
    augment_generator = torch.Generator(device).manual_seed(pretrain.epoch_seed(args.seed, epoch, context.rank))
    readout = pretrain.Readout(device)
    loss_sum, std_sum = torch.zeros((), device=device), torch.zeros((), device=device)
    first_bad_step = torch.full((), -1, device=device)
    started = time.perf_counter()
    batches = dataset.device_batches(images, splits.pretrain, args.batch_size, order_generator, device,
                                     context.rank, context.world_size)
    bar = tqdm(batches, total=steps_per_epoch, desc=f"epoch {epoch + 1}/{args.epochs}", leave=False,
               disable=not context.is_main)
    for step, batch in enumerate(bar):
        lr = pretrain.learning_rate(initial_lr, epoch * steps_per_epoch + step, steps_per_epoch * args.epochs)
        pretrain.set_learning_rate(optimizer, initial_lr, lr)
        loss, std = pretrain.train_step(model, optimizer, batch, args.image_size, augment_generator, precision, view)
        loss_sum += loss
        std_sum += std
        first_bad_step = torch.where((first_bad_step < 0) & ~torch.isfinite(loss), step, first_bad_step)
        bar.set_postfix(loss=f"{readout.push(loss):.4f}", refresh=False)
    loss_mean = distributed.mean(loss_sum / steps_per_epoch, context).item()
    seconds = time.perf_counter() - started
    return {"loss": loss_mean, "z_std": distributed.mean(std_sum / steps_per_epoch, context).item(), "lr": lr,
            "images_per_s": steps_per_epoch * args.batch_size / seconds, "epoch_s": seconds,
            "bad_step": int(first_bad_step)}


def main(argv=None) -> None:
    args = runs.with_defaults(parse_args(argv), DEFAULTS, DEMO)
    context, device_name = distributed.setup(args.device)
    if context.is_main:
        runs.prepare_out(args.out)
    torch.manual_seed(args.seed)
    device = runs.pick_device(device_name)
    precision = runs.resolve_precision(args.precision, device)
    say = print if context.is_main else (lambda *_, **__: None)

    if context.local_rank != 0:
        distributed.barrier(context)  # local rank 0 builds the cache (or the demo set) first
    data, splits = runs.open_data(args, verbose=context.is_main)
    if context.local_rank == 0:
        distributed.barrier(context)
    if args.batch_size % context.world_size or args.batch_size > len(splits.pretrain):
        runs.fail(f"--batch-size {args.batch_size} must divide among {context.world_size} processes and not exceed "
                  f"the {len(splits.pretrain)} pretraining images")
    images = dataset.place_images(data.images, device)
    steps_per_epoch = len(splits.pretrain) // args.batch_size
    initial_lr = args.base_lr * args.batch_size / 256
    split = {"seed": args.split_seed, "test_fraction": args.test_fraction, "limit": args.limit,
             "test_fingerprint": dataset.fingerprint(data.files, splits.test), "classes": data.classes}

    model = SimSiam().to(device, memory_format=runs.memory_format(device))
    optimizer = pretrain.make_optimizer(model, initial_lr, args.momentum, args.weight_decay)
    start_epoch = 0
    if args.resume:
        try:
            state = load_checkpoint(args.out / "last.pt", kind="simsiam")
        except CheckpointError as error:
            runs.fail(f"cannot resume: {error}")
        model.load_state_dict(state["model"])
        optimizer.load_state_dict(state["optimizer"])
        torch.set_rng_state(state["rng"])
        start_epoch = state["epoch"]
        changed = {key: (state["args"][key], getattr(args, key)) for key in RECIPE
                   if state["args"][key] != getattr(args, key)}
        if changed:
            say(f"warning: resuming with settings that differ from the interrupted run's (was, now): {changed}")
        if context.is_main:
            runs.truncate_metrics(args.out / "metrics.jsonl", after_epoch=start_epoch)
        say(f"resumed from {args.out / 'last.pt'} after epoch {start_epoch}")
    step_model = distributed.wrap(model, context, device)  # shares its weights with `model`
    step_model = torch.compile(step_model) if args.compile else step_model
    view = torch.compile(augment.simsiam_view) if args.compile else augment.simsiam_view
    if context.is_main:
        runs.save_args(args.out, args, device=str(device), precision_used=precision, initial_lr=initial_lr,
                       steps_per_epoch=steps_per_epoch, cache_on=images.device.type, world_size=context.world_size)
    metrics = runs.Metrics(args.out / "metrics.jsonl")
    say(f"SimSiam ResNet18, {sum(p.numel() for p in model.parameters()) / 1e6:.1f} M parameters, on {device} "
        f"({precision}) x {context.world_size} process(es), cache in "
        f"{'GPU' if images.device.type == 'cuda' else 'host'} memory; {args.epochs} epochs of {steps_per_epoch} "
        f"steps, batch {args.batch_size}, lr {initial_lr:g}")

    healthy_std = 1 / math.sqrt(PROJECTION_DIM)
    summary = "nothing to do: the run had already finished"
    for epoch in range(start_epoch, args.epochs):
        model.train()
        figures = train_epoch(step_model, optimizer, images, splits, args, epoch, steps_per_epoch, initial_lr, device,
                              precision, context, view)
        bad_step = figures.pop("bad_step")
        if distributed.any_rank(bad_step >= 0, device, context):
            where = f"step {bad_step + 1}" if bad_step >= 0 else "a step of another process"
            runs.fail(f"non-finite loss at epoch {epoch + 1}, {where}: stopped; the last good "
                      f"checkpoint is kept in {args.out}. Lower --base-lr or check the data, then --resume")
        if not context.is_main:
            continue  # the kNN monitor, logs and checkpoints are rank 0's
        knn = knn_monitor(model, images, data, splits, args.image_size, device, precision, args.knn_k)
        collapsing = figures["z_std"] < args.collapse_fraction * healthy_std
        metrics.log(epoch=epoch + 1, **figures, knn_accuracy=knn, collapse_warning=collapsing)
        summary = (f"loss {figures['loss']:.4f}, z-std {figures['z_std']:.4f} (healthy {healthy_std:.4f}), "
                   f"kNN accuracy {knn:.4f}")
        print(f"epoch {epoch + 1}/{args.epochs}: {summary}, {figures['images_per_s']:,.0f} images/s")
        if collapsing:
            print(f"warning: z-std {figures['z_std']:.4f} is below {args.collapse_fraction} x 1/sqrt(d) = "
                  f"{args.collapse_fraction * healthy_std:.4f}: the representation is collapsing")
        if (epoch + 1) % args.save_every == 0 or epoch + 1 == args.epochs:
            saved = {"epoch": epoch + 1, "args": runs.plain_args(args), "split": split}
            save_checkpoint(args.out / "last.pt", "simsiam", model, optimizer=optimizer.state_dict(),
                            rng=torch.get_rng_state(), **saved)
            save_checkpoint(args.out / "siam.pt", "simsiam", model, **saved)
    if context.enabled:
        in_sync = distributed.parameters_in_sync(model, context)
        if context.is_main:
            metrics.log(event="ranks", world_size=context.world_size, parameters_in_sync=in_sync)
        if not in_sync:
            runs.fail(f"the {context.world_size} processes ended with different weights: this is a bug")
    say(f"saved {args.out / 'siam.pt'}: {summary}")
    distributed.cleanup(context)


if __name__ == "__main__":
    main()
