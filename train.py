"""SimSiam pretraining of a randomly initialised ResNet18 on a folder of photos, labels unused.

    python train.py --demo                                   # synthetic data, small settings, CPU
    python train.py --data data/PetImages                    # Microsoft's Cats and Dogs, 150 px, batch 256
    python train.py --data data/PetImages --resume           # continue an interrupted run from OUT/last.pt
    python train.py --data myphotos --monitor-data data/PetImages --out runs/mine   # your own unlabelled photos
    python train.py --data data/PetImages --image-size 64 --epochs 1 --limit 1000 --device cpu   # CPU check

One step is train_epoch's loop: the lr of this step (schedule.py), two augmented views and one SGD step on the
symmetric loss (recipe.py, which bench.py times; the network and D are in model.py). Writes OUT/siam.pt (the
SimSiam weights and the perceptual hashes of the images they were pretrained on, for classifier.py), OUT/backbone.pt
(the ResNet18 backbone in torchvision's key format), OUT/last.pt (everything --resume needs), OUT/metrics.jsonl
(per epoch: loss, z-std, lr, images/s, kNN accuracy) and OUT/args.json.
"""
from __future__ import annotations

import argparse
import dataclasses
import math
import signal
import time
from dataclasses import dataclass
from pathlib import Path
from typing import NamedTuple

import torch
from tqdm import tqdm

from simsiam import cli, dataset, decode, devices, distributed, evaluate, recipe, runs, schedule
from simsiam.model import (PROJECTION_DIM, CheckpointError, SimSiam, export_backbone, finite_state, load_checkpoint,
                           save_checkpoint)

CHECKED_ON_RESUME = ("epochs", "batch_size", "image_size", "lr", "weight_decay", "momentum", "blur_reference_size",
                     "seed")  # warned of
DEMO, CPU = recipe.DEMO, recipe.CPU


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    cli.add_data_arguments(parser)
    group = parser.add_argument_group("unlabelled photos")
    group.add_argument("--unlabelled", action="store_true",
                       help="read every photo under --data, whatever its sub-folders, as unlabelled (a folder of "
                            "loose photos is read so anyway): no label is read and nothing is held out")
    group.add_argument("--monitor-data", type=Path, default=None, metavar="LABELLED",
                       help="a labelled folder for the kNN monitor: its held-out split (--split-seed, "
                            "--test-fraction) is the queries, its labelled subset (--labels) the bank; pretraining "
                            "photos that are copies of its test images are left out. Default: --data itself when "
                            "it is labelled, else no monitor")
    group = parser.add_argument_group("optimisation (SimSiam paper, §4 and appendix A; recipe.py says why)")
    group.add_argument("--cpu", action="store_true",
                       help="the CPU recipe for real photos, under an hour on 2 cores for the 23,000-photo pack: "
                            + " ".join(f"--{key.replace('_', '-')} {value}" for key, value in CPU.items()))
    defaults = recipe.DEFAULTS
    group.add_argument("--epochs", type=cli.positive(int), default=defaults["epochs"],
                       help=f"passes over the pretraining images (default: %(default)s; --demo: {DEMO['epochs']})")
    group.add_argument("-b", "--batch-size", type=cli.batch_size, default=defaults["batch_size"],
                       help=f"images per step, over all processes (default: %(default)s; --demo: {DEMO['batch_size']})")
    group.add_argument("--image-size", type=cli.image_size, default=defaults["image_size"],
                       help=f"side of the network's input in px (default: %(default)s; --demo: {DEMO['image_size']})")
    group.add_argument("--lr", "--base-lr", dest="lr", type=cli.positive(float), default=defaults["lr"],
                       help="base lr, as classifier.py's: peak lr = lr * batch_size / 256, cosine-decayed to 0, "
                            f"predictor fixed (default: %(default)s, the paper's CIFAR recipe; --demo: {DEMO['lr']})")
    group.add_argument("--wd", "--weight-decay", dest="weight_decay", type=cli.in_range(float, 0),
                       default=defaults["weight_decay"],
                       help="SGD weight decay (default: %(default)s, CIFAR recipe)")
    group.add_argument("--momentum", type=cli.in_range(float, 0, 1), default=defaults["momentum"],
                       help="SGD momentum (default: %(default)s)")
    group.add_argument("--blur-reference-size", type=cli.image_size, default=defaults["blur_reference_size"],
                       metavar="PX", help="the view side for which the blur's sigma range, 0.1-2 px, holds: it is "
                                          "scaled by --image-size / PX (default: %(default)s, MoCo v2's crops; "
                                          "the --image-size itself: 0.1-2 px at any size)")
    group.add_argument("--zero-init-residual", action=argparse.BooleanOptionalAction, default=True,
                       help="start every residual block as the identity (its last BatchNorm scale at 0), as the "
                            "official SimSiam code (default); --no-zero-init-residual: torchvision's "
                            "initialisation, the one the random-init baseline has")
    group = parser.add_argument_group("run")
    cli.add_output_arguments(group, Path("runs/simsiam"), resumable=True)
    cli.add_run_arguments(group)
    group.add_argument("--compile", action="store_true",
                       help="torch.compile the model and the augmentation (a warm-up of tens of seconds)")
    group.add_argument("--deterministic", action="store_true",
                       help="on CUDA, deterministic cuDNN and cuBLAS algorithms, so that a resumed run repeats an "
                            "uninterrupted one bit for bit, at some cost in speed (a CPU run is repeatable anyway)")
    group.add_argument("--save-every", type=cli.positive(int), default=10,
                       help="epochs between checkpoints (default: %(default)s)")
    group.add_argument("--knn-k", type=cli.positive(int), default=20,
                       help="neighbours of the kNN monitor (default: %(default)s)")
    group.add_argument("--collapse-fraction", type=cli.positive(float), default=0.25,
                       help="warn when z-std falls below this fraction of 1/sqrt(d), the healthy value "
                            "(default: %(default)s)")
    return parser


def parse_args(argv=None) -> argparse.Namespace:
    return cli.parse(build_parser(), argv, DEMO, CPU)


# ---------------------------------------------------------------- an epoch, and where it stands


def epoch_seed(seed: int, epoch: int, rank: int = 0) -> int:
    """Seed of an epoch's batch order (rank 0's, shared by all) and of each rank's augmentations: a resumed
    epoch draws exactly what it would have, and ranks draw different, reproducible augmentations."""
    return (seed * 1_000_003 + epoch) * 1_009 + rank


@dataclass
class EpochProgress:
    """Where an epoch stands: steps done, the augmentation stream and the running sums of its metrics. A run
    interrupted mid-epoch saves it in last.pt, so that --resume continues with exactly the same draws: on a large
    folder an epoch is long, and a preempted job should not lose it."""
    epoch: int
    step: int
    augment_generator: torch.Generator
    loss_sum: torch.Tensor  # 0-dim, on the device
    std_sum: torch.Tensor
    first_bad_step: torch.Tensor  # -1 while every loss is finite

    @classmethod
    def start(cls, epoch: int, seed: int, runtime: devices.Runtime) -> EpochProgress:
        generator = devices.generator(runtime.device, epoch_seed(seed, epoch, runtime.context.rank))
        zero = torch.zeros((), device=runtime.device)
        return cls(epoch, 0, generator, zero.clone(), zero.clone(), torch.full((), -1, device=runtime.device))

    def add(self, step: int, loss: torch.Tensor, std: torch.Tensor) -> None:
        """Count step `step` done, without waiting for the device."""
        self.loss_sum += loss
        self.std_sum += std
        self.first_bad_step = torch.where((self.first_bad_step < 0) & ~torch.isfinite(loss), step, self.first_bad_step)
        self.step = step + 1

    def state(self) -> dict:
        """Builtins and a CPU tensor; `device` is the generator's type, whose state means nothing to another's."""
        return {"epoch": self.epoch, "step": self.step, "augment_generator": self.augment_generator.get_state(),
                "loss_sum": self.loss_sum.item(), "std_sum": self.std_sum.item(),
                "device": self.augment_generator.device.type}

    @classmethod
    def restore(cls, state: dict, seed: int, runtime: devices.Runtime) -> EpochProgress:
        progress = cls.start(state["epoch"], seed, runtime)
        progress.augment_generator.set_state(state["augment_generator"])
        progress.step = state["step"]
        progress.loss_sum.fill_(state["loss_sum"])
        progress.std_sum.fill_(state["std_sum"])
        return progress


def train_epoch(model: torch.nn.Module, optimizer: torch.optim.SGD, steps_per_epoch: int, images: torch.Tensor,
                indices: torch.Tensor, progress: EpochProgress, args: argparse.Namespace, runtime: devices.Runtime,
                stop: runs.StopSignals, announce: bool = False) -> dict | None:
    """This rank's part of one pass over the pretraining images `indices`, from `progress.step` on. Returns
    the epoch's metrics (averaged over ranks) and the first step with a non-finite loss (-1 if none), or
    None when a stop signal came first (`progress` then says where it stopped). With `announce`, a long run on
    a CPU says after its first steps what it will cost (cost_note)."""
    context = runtime.context
    # where the cache is, so that no index crosses between host and GPU; the same global order on every rank
    order_generator = devices.generator(images.device, epoch_seed(args.seed, progress.epoch))
    readout = devices.Readout(runtime.device)
    first_step, started = progress.step, time.perf_counter()
    timed_from = started
    batches = dataset.device_batches(images, indices, args.batch_size, order_generator, runtime.device, context.rank,
                                     context.world_size, skip=first_step)
    bar = runs.progress_bar(batches, show=context.is_main, initial=first_step, total=steps_per_epoch, leave=False,
                            desc=f"epoch {progress.epoch + 1}/{args.epochs}")
    for step, batch in enumerate(bar, start=first_step):  # batch: (B, 3, S, S) uint8, on the device
        lrs = schedule.set_lr(optimizer, progress.epoch * steps_per_epoch + step, steps_per_epoch * args.epochs)
        x1, x2 = recipe.views(batch, args.image_size, progress.augment_generator, args.compile,
                              args.blur_reference_size)
        loss, std = recipe.sgd_step(model, optimizer, x1, x2, runtime)
        progress.add(step, loss, std)
        bar.set_postfix(loss=f"{readout.update(loss, step):.4f}", refresh=False)
        if announce and step == first_step:  # the first step warms up (allocations, one-off setup): not timed
            timed_from = time.perf_counter()
        if announce and step == first_step + TIMED_STEPS:
            steps_left = steps_per_epoch * (args.epochs - progress.epoch) - step - 1
            tqdm.write(cost_note((time.perf_counter() - timed_from) / TIMED_STEPS * steps_left, runtime.device))
        if step + 1 < steps_per_epoch and stop_requested(stop, step, runtime):
            return None  # at an epoch's last step the epoch finishes instead, and the stop comes one step later
    seconds = time.perf_counter() - started
    return {"loss": distributed.mean(progress.loss_sum / steps_per_epoch, context).item(),
            "z_std": distributed.mean(progress.std_sum / steps_per_epoch, context).item(), "lr": lrs["encoder"],
            "images_per_s": (steps_per_epoch - first_step) * args.batch_size / seconds, "epoch_s": seconds,
            "peak_memory_gb": devices.peak_memory_gb(runtime.device),
            "bad_step": int(progress.first_bad_step)}


TIMED_STEPS = 10  # steps after the first that a CPU run times before it says what the whole run will cost
LONG_RUN_S = 90 * 60


def cost_note(seconds_left: float, device: torch.device) -> str:
    """What the rest of a run costs on `device`, a first estimate (a busy machine makes it too long), and, when
    that is long, the CPU recipe."""
    note = (f"on {devices.describe(device)} the rest of this run takes about {runs.duration(seconds_left)} (a first "
            f"estimate from {TIMED_STEPS} steps; other work on the machine lengthens it)")
    if seconds_left > LONG_RUN_S:
        note += "; the defaults are sized for a GPU: --cpu is the recipe for a CPU (under an hour on 2 cores)"
    return note


STOP_CHECK_EVERY = 16  # steps between the ranks' agreement on a stop signal (each costs a host synchronisation)


def stop_requested(stop: runs.StopSignals, step: int, runtime: devices.Runtime) -> bool:
    """Whether to stop after this step: at once in one process; under torchrun, every STOP_CHECK_EVERY steps,
    when any rank has a signal, so that all stop at the same step."""
    if runtime.context.is_distributed and (step + 1) % STOP_CHECK_EVERY:
        return False
    return signalled(stop, runtime)


def signalled(stop: runs.StopSignals, runtime: devices.Runtime) -> bool:
    """Whether any process has a stop signal; under torchrun every rank asks at once (an all-reduce)."""
    return distributed.any_rank(stop.signal_number is not None, runtime.device, runtime.context)


def interrupted(stop: runs.StopSignals, where: str, out: Path) -> runs.Interrupted:
    """The exit of a run that a signal stopped `where` ("after epoch 3"), once OUT/last.pt is saved."""
    number = stop.signal_number or signal.SIGTERM
    return runs.Interrupted(f"interrupted ({signal.Signals(number).name}) {where}: saved {out / 'last.pt'}; "
                            f"resume with --resume", number)


class Monitor(NamedTuple):
    """The kNN monitor's labelled images: the bank is the labelled subset, the queries the held-out split."""
    images: torch.Tensor  # (N, 3, S, S) uint8 cache, on the device when it fits
    data: dataset.ImageSet
    splits: dataset.Splits


def knn_monitor(model: SimSiam, monitor: Monitor, args: argparse.Namespace, runtime: devices.Runtime) -> float:
    """kNN accuracy of the backbone's features on the monitor's validation split (the labelled subset the bank).
    The test split is never read while pretraining: it is the final evaluation's alone."""
    images, labels, splits = monitor.images, monitor.data.labels, monitor.splits
    bank = evaluate.embed(model.backbone, images, splits.labelled, args.image_size, runtime)
    queries = evaluate.embed(model.backbone, images, splits.validation, args.image_size, runtime)
    return evaluate.knn_accuracy(bank, labels[splits.labelled], queries, labels[splits.validation],
                                 len(monitor.data.classes), args.knn_k).item()


def fitting_batch_size(num_images: int, world_size: int) -> int:
    """A batch size for a small folder: the largest power of two that leaves an epoch at least 4 steps (so that
    BatchNorm sees several batches), a multiple of the `world_size` processes, at least one image per process."""
    size = 2 ** max(0, (num_images // 4).bit_length() - 1)
    return max(world_size, size // world_size * world_size)


def leave_out_copies(pretrain: torch.Tensor, data: dataset.ImageSet, monitor: Monitor,
                     print_on_main) -> torch.Tensor:
    """The pretraining indices less the photos that are copies (by content) of --monitor-data's test or validation
    images, so that the monitor's queries, and a classifier's later test on that folder, were never pretrained
    on."""
    held_out = torch.cat([monitor.splits.test, monitor.splits.validation])
    copies = decode.near(data.hashes[pretrain], monitor.data.hashes[held_out])
    if copies.any():
        print_on_main(f"note: {int(copies.sum()):,} of the {len(pretrain):,} pretraining photos are copies of "
                      f"--monitor-data's test or validation images: left out of pretraining")
    return pretrain[~copies]


def log_epoch(metrics: runs.Metrics, epoch: int, record: dict, knn: float | None, seconds_left: float,
              args: argparse.Namespace) -> str:
    """Append the epoch's record to metrics.jsonl and print its line (and a collapse warning); returns the
    summary that the last line repeats."""
    healthy_std = 1 / math.sqrt(PROJECTION_DIM)
    collapsing = record["z_std"] < args.collapse_fraction * healthy_std
    metrics.log(epoch=epoch + 1, **record, knn_accuracy=knn, collapse_warning=collapsing)
    summary = (f"loss {record['loss']:.4f}, z-std {record['z_std']:.4f} (healthy {healthy_std:.4f})"
               + ("" if knn is None else f", kNN accuracy {knn:.4f}"))
    left = f", about {runs.duration(seconds_left)} left" if epoch + 1 < args.epochs else ""
    print(f"epoch {epoch + 1}/{args.epochs}: {summary}, {record['images_per_s']:,.0f} images/s{left}")
    if collapsing:
        print(f"warning: z-std {record['z_std']:.4f} is below {args.collapse_fraction} x 1/sqrt(d) = "
              f"{args.collapse_fraction * healthy_std:.4f}: the representation is collapsing")
    return summary


def last_good(out: Path, advice: str) -> str:
    """What is left after a run failed with non-finite numbers, and what to do: --resume only from a checkpoint
    that exists (save never writes a non-finite one)."""
    if (out / "last.pt").is_file():
        return f"the last good checkpoint is {out / 'last.pt'}: lower --lr or {advice}, then --resume"
    return f"no checkpoint was saved before it: lower --lr or {advice}, then start again with --overwrite"


def save(out: Path, model: SimSiam, optimizer: torch.optim.SGD, completed_epochs: int, recorded: dict,
         **progress) -> None:
    """OUT/last.pt, and at an epoch's end (no `progress`) OUT/siam.pt and OUT/backbone.pt; never a non-finite
    tensor. `recorded`: what every checkpoint holds besides the weights (args, split, pretraining hashes)."""
    if not finite_state(model):
        raise runs.RunError(f"non-finite weights after epoch {completed_epochs}: not saved; "
                            f"{last_good(out, 'check --momentum')}")
    save_checkpoint(out / "last.pt", "simsiam", model, optimizer=optimizer.state_dict(), rng=torch.get_rng_state(),
                    epoch=completed_epochs, **recorded, **progress)
    runs.replaced_run_gone(out)  # a good checkpoint: the run an --overwrite replaces may go
    if not progress:
        save_checkpoint(out / "siam.pt", "simsiam", model, epoch=completed_epochs, **recorded)
        export_backbone(model, out / "backbone.pt")


# ---------------------------------------------------------------- the run


def resume(last: Path, model: SimSiam, optimizer: torch.optim.SGD, recorded: dict, args: argparse.Namespace,
           runtime: devices.Runtime) -> EpochProgress:
    """Load last.pt into `model` and `optimizer` (this run's lr schedule kept) and the global RNG; return where its
    epoch stands. Refused: another held-out split or other pretraining photos (a data folder that was moved is
    fine), or a mid-epoch stop that cannot go on with the same draws."""
    context, device = runtime.context, runtime.device
    state = load_checkpoint(last, kind="simsiam", needs=("optimizer", "rng", "epoch", "args", "split",
                                                         "pretraining_hashes"))
    runs.check_protocol(state, last)
    differences = dataset.split_differences(state["split"], recorded["split"])
    if not differences and not torch.equal(state["pretraining_hashes"], recorded["pretraining_hashes"]):
        differences = ["the pretraining photos' pixels (the same names, other photos)"]
    if differences:
        raise runs.RunError(f"cannot resume {last}: its held-out split was made differently "
                            f"({'; '.join(differences)}), so its epochs may have trained on the new test images. "
                            f"Resume with the same data options, or start a new run with another --out")
    mid_epoch = state.get("progress")  # a run stopped mid-epoch by a signal: each rank's EpochProgress
    if mid_epoch and (len(mid_epoch) != context.world_size or state["args"]["batch_size"] != args.batch_size):
        raise runs.RunError(f"{last} was interrupted mid-epoch with {len(mid_epoch)} process(es) and batch "
                            f"{state['args']['batch_size']}: resume it with the same, so that the epoch goes on "
                            f"with the same batches and augmentations")
    interrupted_on = mid_epoch[0].get("device", "cpu") if mid_epoch else device.type
    if interrupted_on != device.type:
        raise runs.RunError(f"{last} was interrupted mid-epoch on {interrupted_on}, whose augmentation stream "
                            f"cannot go on on {device.type}: resume it with --device {interrupted_on} (a run "
                            f"saved at an epoch's end resumes on any device)")
    if args.epochs < state["epoch"]:
        planned = state["args"].get("epochs", "its own number of epochs")
        raise runs.RunError(f"--epochs {args.epochs} is below the {state['epoch']} epochs {last} has completed, and "
                            f"a run cannot be shortened after the fact (its lr schedule was for {planned}): to "
                            f"train on, pass --epochs above {state['epoch']}; its siam.pt is the model after epoch "
                            f"{state['epoch']}")
    model.load_state_dict(state["model"])  # its form checked by load_checkpoint, as every entry's
    own_schedule = [{key: group[key] for key in ("name", "peak_lr", "fixed") if key in group}
                    for group in optimizer.param_groups]
    try:
        optimizer.load_state_dict(state["optimizer"])
        recipe.match_layout(optimizer)
    except (ValueError, KeyError, TypeError, RuntimeError) as error:
        raise CheckpointError(f"{last}: its 'optimizer' state does not fit this model's optimiser "
                              f"({' '.join(str(error).split())})") from None
    for group, own in zip(optimizer.param_groups, own_schedule):  # this run's lr (--lr may have changed)
        group.update(own)
    torch.set_rng_state(state["rng"])
    if state["split"].get("data") != recorded["split"]["data"] and context.is_main:
        print(f"note: {last} was pretrained on {state['split'].get('data')}, which now lies in "
              f"{recorded['split']['data']} (the same file names and pixels): resuming")
    was = {key: state["args"].get(key, recipe.DEFAULTS.get(key)) for key in CHECKED_ON_RESUME}  # a setting newer
    # than the checkpoint: the default the code of then had
    changed = {key: (was[key], getattr(args, key)) for key in CHECKED_ON_RESUME if was[key] != getattr(args, key)}
    if changed and context.is_main:
        print(f"warning: resuming with settings that differ from the interrupted run's (was, now): {changed}")
    if context.is_main:
        runs.truncate_metrics(args.out / "metrics.jsonl", after_epoch=state["epoch"])
    if not mid_epoch:
        return EpochProgress.start(state["epoch"], args.seed, runtime)
    try:
        return EpochProgress.restore(mid_epoch[context.rank], args.seed, runtime)
    except RuntimeError as error:  # a generator state of another length
        raise CheckpointError(f"{last}: its 'progress' entry does not fit this run's augmentation generator "
                              f"({' '.join(str(error).split())})") from None


@cli.reports_errors
def main(argv=None) -> None:
    args = parse_args(argv)
    last = runs.resume_checkpoint(args.resume, args.out)
    context, device_name = distributed.setup(args.device)
    run_folder = None  # the files of a run that --overwrite replaces go once every check has passed
    if context.is_main:
        run_folder = runs.check_out(args.out, overwrite=args.overwrite, resume_from=last, resumable=True)
        runs.writable_folder(args.cache_dir, "--cache-dir")
    torch.manual_seed(args.seed)
    runtime = devices.make_runtime(device_name, args.precision, context)
    if args.deterministic:
        devices.use_deterministic_algorithms()
    device = runtime.device
    print_on_main = print if context.is_main else (lambda *_, **__: None)  # one line per run, not per rank
    recipe.check_memory(args.image_size, args.batch_size // context.world_size, runtime)

    if context.local_rank != 0:
        distributed.barrier(context)  # local rank 0 builds the caches (or the demo set) first
    options = dataset.DataOptions.from_args(args, unlabelled=args.unlabelled or None)  # None: as the folder is
    data, splits = dataset.open_data(options, verbose=context.is_main)
    if args.monitor_data is not None:
        monitor_options = dataclasses.replace(options, data=args.monitor_data, demo=False, unlabelled=False)
        monitor_data, monitor_splits = dataset.open_data(monitor_options, verbose=context.is_main)
    if context.local_rank == 0:
        distributed.barrier(context)
    images = dataset.cache_on_device(data.images, device)
    pretrain, monitor = splits.pretrain, None
    if args.monitor_data is not None:
        monitor = Monitor(dataset.cache_on_device(monitor_data.images, device), monitor_data, monitor_splits)
        pretrain = leave_out_copies(pretrain, data, monitor, print_on_main)
    elif data.classes:
        monitor = Monitor(images, data, splits)
    else:
        print_on_main(f"no kNN monitor: {data.root} has no labels (pass --monitor-data LABELLED for one); the loss "
                      f"and z-std are logged as always")
    if monitor is not None and not len(monitor.splits.validation):
        monitor = None
        print_on_main("no kNN monitor: --val-fraction 0 holds out no validation images (the monitor never reads "
                      "the test split); the loss and z-std are logged as always")
    if args.batch_size % context.world_size or args.batch_size > len(pretrain):
        raise runs.RunError(f"--batch-size {args.batch_size} must divide among {context.world_size} processes and "
                            f"not exceed the {len(pretrain):,} pretraining images: pass --batch-size "
                            f"{fitting_batch_size(len(pretrain), context.world_size)}")
    initial_lr, steps_per_epoch = schedule.peak_lr(args.lr, args.batch_size), len(pretrain) // args.batch_size
    split_record = {**dataset.split_identity(data, splits, options), "monitor_data": str(args.monitor_data),
                    "pretraining_fingerprint": dataset.fingerprint(data.files, pretrain)}
    recorded = {"args": runs.plain_args(args), "split": split_record, "pretraining_hashes": data.hashes[pretrain],
                "hash_kind": decode.HASH_KIND,
                "code": runs.code_version(), "protocol": runs.PROTOCOL, "environment": devices.environment(device)}

    model = SimSiam(zero_init_residual=args.zero_init_residual).to(device, memory_format=runtime.memory_format)
    optimizer = recipe.make_optimizer(model, initial_lr, args.momentum, args.weight_decay)
    if last is None:
        progress = EpochProgress.start(0, args.seed, runtime)
    else:
        progress = resume(last, model, optimizer, recorded, args, runtime)
        print_on_main(f"resumed from {last} at epoch {progress.epoch + 1}, step {progress.step}")
    wrapped_model = distributed.wrap(model, context, device)  # DDP and/or compiled; shares its weights with `model`
    wrapped_model = torch.compile(wrapped_model) if args.compile else wrapped_model
    metrics = runs.Metrics(args.out / "metrics.jsonl", args.tensorboard, None if last is None else progress.epoch + 1)
    print_on_main(f"SimSiam ResNet18, {sum(p.numel() for p in model.parameters()) / 1e6:.1f} M parameters, on {device} "
                  f"({runtime.precision}) x {context.world_size} process(es), cache in "
                  f"{'GPU' if images.device.type == 'cuda' else 'host'} memory; {runs.count(args.epochs, 'epoch')} of "
                  f"{runs.count(steps_per_epoch, 'step')}, batch {args.batch_size}, lr {initial_lr:g}")

    summary = "nothing to do: the run had already finished"
    loop_started, first_epoch = time.perf_counter(), progress.epoch
    with runs.StopSignals() as stop:  # from here on a signal stops the run after a step, saved
        if context.is_main:  # just before the first step
            runs.start_run(run_folder)
            runs.save_args(args.out, args, device=str(device), environment=recorded["environment"],
                           precision_used=runtime.precision,
                           initial_lr=initial_lr, steps_per_epoch=steps_per_epoch, cache_on=images.device.type,
                           cache_resolution=data.images.shape[-1], world_size=context.world_size,
                           num_classes=len(data.classes), num_pretraining=len(pretrain),
                           test_set=f"{len(splits.test):,} held-out test images",
                           test_fingerprint=split_record["test_fingerprint"],
                           monitor_set=None if monitor is None else
                           f"{len(monitor.splits.validation):,} validation images of {monitor.data.root}")
        for epoch in range(progress.epoch, args.epochs):
            if epoch != progress.epoch:
                progress = EpochProgress.start(epoch, args.seed, runtime)
            model.train()
            record = train_epoch(wrapped_model, optimizer, steps_per_epoch, images, pretrain, progress, args,
                                 runtime, stop, announce=context.is_main and device.type == "cpu"
                                 and epoch == first_epoch and steps_per_epoch - progress.step > TIMED_STEPS)
            bad_step = record.pop("bad_step") if record else int(progress.first_bad_step)
            if distributed.any_rank(bad_step >= 0, device, context):
                where = f"step {bad_step + 1}" if bad_step >= 0 else "a step of another process"
                raise runs.RunError(f"non-finite loss at epoch {epoch + 1}, {where}: stopped; "
                                    f"{last_good(args.out, 'check the data')}")
            if record is None:  # a stop signal mid-epoch: save where this epoch stands, on every rank
                rank_progress = distributed.gather(progress.state(), context)
                if context.is_main:
                    save(args.out, model, optimizer, epoch, recorded, progress=rank_progress)
                distributed.cleanup(context)
                raise interrupted(stop, f"at epoch {epoch + 1}, step {progress.step}", args.out)
            # a signal during an epoch's last steps, or in an epoch shorter than STOP_CHECK_EVERY steps
            stop_now = epoch + 1 < args.epochs and signalled(stop, runtime)
            if context.is_main:  # the kNN monitor, logs and checkpoints are rank 0's
                knn = None if monitor is None else knn_monitor(model, monitor, args, runtime)
                per_epoch = (time.perf_counter() - loop_started) / (epoch + 1 - first_epoch)  # kNN monitor included
                summary = log_epoch(metrics, epoch, record, knn, per_epoch * (args.epochs - epoch - 1), args)
                if stop_now or (epoch + 1) % args.save_every == 0 or epoch + 1 == args.epochs:
                    save(args.out, model, optimizer, epoch + 1, recorded)
            if stop_now:
                distributed.cleanup(context)
                raise interrupted(stop, f"after epoch {epoch + 1}", args.out)
    if context.is_distributed:
        in_sync = distributed.parameters_in_sync(model, context)
        if context.is_main:
            metrics.log(event="ranks", world_size=context.world_size, parameters_in_sync=in_sync)
        if not in_sync:
            raise runs.RunError(f"the {context.world_size} processes ended with different weights: this is a bug")
    print_on_main(f"saved {args.out / 'siam.pt'}: {summary}")
    distributed.cleanup(context)


if __name__ == "__main__":
    main()
