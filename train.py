"""SimSiam pretraining of a randomly initialised ResNet18 on a folder of photos, labels unused.

    python train.py --demo                                 # a generated two-class set, small settings, on a CPU
    python train.py --data data/PetImages                  # Microsoft's Cats and Dogs: 150 px, batch 256, 200 epochs
    python train.py --data data/PetImages --resume         # go on with a stopped or killed run from OUT/last.pt
    python train.py --data myphotos --monitor-data data/PetImages --out runs/mine   # your own unlabelled photos
    python train.py --data data/PetImages --cpu            # the CPU recipe: 64 px, about 3 hours on 2 cores
    torchrun --nproc_per_node=4 train.py --data data/PetImages   # DistributedDataParallel, the batch split in 4

Every step is model.train_step: two augmented views, loss = D(p1, z2) / 2 + D(p2, z1) / 2, one SGD step. OUT gets
siam.pt (weights, split, pixel hashes of the photos pretrained on), backbone.pt (torchvision's key format), last.pt
(for --resume), metrics.jsonl (per epoch: loss, z-std, lr, images/s, kNN accuracy on the validation split) and
args.json. SIGTERM or Ctrl-C saves last.pt after the step in progress; --resume goes on as if never stopped."""
import argparse
import math
import shutil
import signal
import time
from pathlib import Path

import numpy as np
import torch
from tqdm import tqdm

import dataset
import evaluate
import model
import runs
from model import UserError

DEMO = {"epochs": 20, "batch_size": 64, "image_size": 32, "lr": 0.5}  # a few hundred CPU steps visibly move the loss
# --cpu (docs/cpu.md): about 3 h on 2 cores, bf16 where the CPU has it, blur scaled; lr 0.2 suits a few thousand steps
CPU = {"epochs": 60, "batch_size": 64, "image_size": 64, "lr": 0.2, "device": "cpu"}
RESUME_WARNS = ("epochs", "batch_size", "image_size", "lr", "weight_decay", "momentum", "blur_reference_size", "seed")
COLLAPSE_FRACTION = 0.25  # of 1/sqrt(d), z-std's healthy value: below it, a warning that the representation collapses
CHECK_EVERY = 16  # steps between the checks that wait for the device: a non-finite loss, and under torchrun a stop

def parse_args(argv=None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    runs.add_data_arguments(parser)
    group = parser.add_argument_group("your own photos")
    group.add_argument("--unlabelled", action="store_true", help="read every photo under --data, in any sub-folder, "
                       "as unlabelled, nothing held out (a folder of loose photos is read so anyway)")
    group.add_argument("--monitor-data", type=Path, metavar="LABELLED",
                       help="a labelled folder for the kNN monitor (its validation split and labelled subset); "
                            "copies of its held-out images are left out of pretraining (default: --data if labelled)")
    group = parser.add_argument_group("optimisation (SimSiam paper §4 and its CIFAR recipe, for 23,000 small photos)")
    group.add_argument("--cpu", action="store_true", help="the CPU recipe for real photos: "
                       + " ".join(f"--{key.replace('_', '-')} {value}" for key, value in CPU.items()))
    group.add_argument("--epochs", type=runs.positive(int), default=200,
                       help=f"passes over the pretraining images (default: %(default)s; --demo: {DEMO['epochs']})")
    group.add_argument("-b", "--batch-size", type=runs.batch_size, default=None, help="images per step, all processes "
                       "together, as the original repository (default: 256, halved until a small folder holds it; "
                       f"--demo: {DEMO['batch_size']})")
    group.add_argument("--image-size", type=runs.image_size, default=150, help="side of the views in px, as the "
                       f"original repository (default: %(default)s; --demo: {DEMO['image_size']})")
    group.add_argument("--lr", "--base-lr", dest="lr", type=runs.positive(float), default=0.03,
                       help=f"base lr: peak lr = lr * batch_size / 256, cosine-decayed to 0, the predictor's fixed "
                            f"(default: %(default)s, the paper's CIFAR recipe; --demo: {DEMO['lr']})")
    group.add_argument("--wd", "--weight-decay", dest="weight_decay", type=runs.in_range(float, 0), default=5e-4,
                       help="SGD weight decay (default: %(default)s, the CIFAR recipe; small data needs more)")
    group.add_argument("--momentum", type=runs.in_range(float, 0, 1), default=0.9, help="SGD's (default: %(default)s)")
    group.add_argument("--blur-reference-size", type=runs.image_size, default=224, metavar="PX", help="the view side "
                       "for which the blur's sigma range, 0.1-2 px, holds; scaled by --image-size / PX (default: "
                       "%(default)s, MoCo v2's crops)")
    group.add_argument("--zero-init-residual", action=argparse.BooleanOptionalAction, default=True, help="residual "
                       "blocks start as the identity, as the official code (default); or torchvision's initialisation")
    group = parser.add_argument_group("run")
    runs.add_output_arguments(group, Path("runs/simsiam"), resumable=True)
    runs.add_run_arguments(group)
    group.add_argument("--compile", action="store_true", help="torch.compile the model (a warm-up of tens of s)")
    group.add_argument("--deterministic", action="store_true", help="deterministic CUDA kernels, so that a resumed "
                       "run repeats an uninterrupted one bit for bit, a little slower (a CPU run repeats anyway)")
    group.add_argument("--save-every", type=runs.positive(int), default=10, help="epochs between checkpoints "
                       "(default: %(default)s; a stop always saves)")
    group.add_argument("--keep-epochs", type=runs.positive(int), nargs="+", default=(), metavar="N",
                       help="also keep siam.pt after these epochs, as siam-epochN.pt (budgets of one run)")
    return runs.parse(parser, argv, DEMO, CPU)

def seed_of(*numbers: int) -> int:
    """A 64-bit seed of (seed, epoch) for an epoch's batch order, of (seed, epoch, step, rank) for a step's views: a
    resumed run draws what the uninterrupted one drew. The count first: SeedSequence pads with zeros."""
    return int(np.random.SeedSequence([len(numbers), *numbers]).generate_state(1, np.uint64)[0])

def knn_accuracy(network: model.SimSiam, monitor: tuple, args: argparse.Namespace, runtime) -> float:
    """kNN accuracy of the backbone's features on the validation split, the labelled subset the bank (not the test)."""
    data, splits, images = monitor
    bank, queries = (evaluate.embed(network.backbone, images, rows, args.image_size, runtime)
                     for rows in (splits.labelled, splits.validation))
    return float(evaluate.knn_accuracy(bank, data.labels[splits.labelled], queries, data.labels[splits.validation],
                                       len(data.classes)))

def interrupted(stop: runs.StopSignals, where: str, out: Path) -> runs.Interrupted:
    return runs.Interrupted(f"interrupted ({signal.Signals(stop.signal_number).name}) {where}: saved "
                            f"{out / 'last.pt'}; resume with --resume", stop.signal_number)

def non_finite(what: str, checkpoint: Path | None) -> UserError:
    return UserError(f"non-finite {what}: stopped, nothing saved; " + (f"the last good checkpoint is {checkpoint}: "
                     "--resume it with a lower --lr" if checkpoint else "start again with a lower --lr"))

def save(out: Path, network: model.SimSiam, optimizer, recorded: dict, checkpoint: Path | None, epoch: int,
         step: int = 0, loss_sum: float = 0.0, std_sum: float = 0.0) -> Path:
    """OUT/last.pt, and at an epoch's end (step 0) siam.pt and backbone.pt; never non-finite weights."""
    if not model.finite_state(network):
        raise non_finite(f"weights {f'in epoch {epoch + 1}' if step else f'after epoch {epoch}'}", checkpoint)
    model.save_checkpoint(out / "last.pt", "simsiam", network, optimizer=optimizer.state_dict(), epoch=epoch,
                          step=step, loss_sum=loss_sum, std_sum=std_sum, **recorded)
    runs.keep_run(out)  # a good checkpoint: the run an --overwrite replaces may go
    if step == 0:
        model.save_checkpoint(out / "siam.pt", "simsiam", network, epoch=epoch, **recorded)
        model.export_backbone(network, out / "backbone.pt")
    return out / "last.pt"

def resume(last: Path, network: model.SimSiam, optimizer, recorded: dict, args: argparse.Namespace, say) -> dict:
    """Load last.pt into `network` and `optimizer`, refused for another split or photos, or fewer --epochs than done."""
    state = model.load_checkpoint(last, "simsiam", needs=("optimizer", "epoch", "step", "args", "split",
                                                          "pretraining_hashes"))
    runs.check_protocol(state, last)
    differences = dataset.split_differences(state["split"], recorded["split"])
    if not torch.equal(hashes := state["pretraining_hashes"], recorded["pretraining_hashes"][:, :hashes.shape[1]]):
        was, now = (run.get("cache_size") or dataset.default_cache_size(run["image_size"]) for run in (state["args"],
                                                                                                    vars(args)))
        sizes = (f" (decoded at {now} px, the run at {was} px: pass its --image-size {state['args']['image_size']} "
                 f"and --cache-size {was})")
        differences.append("the pretraining photos' pixels" + sizes * (was != now))
    if differences:
        raise UserError(f"cannot resume {last}: its split differs ({'; '.join(differences)}), so its epochs may have "
                        f"trained on the new held-out images: resume with its data flags, or start a new --out")
    if args.epochs < (done := state["epoch"] + (state["step"] > 0)):
        raise UserError(f"--epochs {args.epochs} is below the {done} epochs {last} has done, and a run cannot be "
                        f"shortened (its lr schedule ends with its last epoch): pass --epochs {done} or more")
    model.load_weights(network, state["model"], last)
    # its momentum buffers, with this run's optimiser settings (lr, schedule, weight decay)
    optimizer.load_state_dict({**state["optimizer"], "param_groups": optimizer.state_dict()["param_groups"]})
    model.match_layout(optimizer)
    if changed := {key: (state["args"].get(key), getattr(args, key)) for key in RESUME_WARNS
                   if state["args"].get(key) != getattr(args, key)}:
        say(f"warning: resuming with settings that differ from the stopped run's (was, now): {changed}")
    say(f"resumed from {last} at epoch {state['epoch'] + 1}, step {state['step']}")
    return state

@runs.reports_errors
def main(argv=None) -> None:
    args = parse_args(argv)
    last = runs.resume_checkpoint(args.resume, args.out)
    context, device_name = runs.setup(args.device)
    held = runs.check_out(args.out, args.overwrite, last, resumable=True) if context.is_main else []
    torch.manual_seed(args.seed)
    runtime = runs.make_runtime(device_name, args.precision, context, args.image_size)
    device, world, say = runtime.device, context.world_size, print if context.is_main else lambda *_: None
    if args.deterministic:
        runs.use_deterministic_algorithms()

    if context.local_rank != 0:
        runs.barrier(context)  # local rank 0 decodes the caches (and makes the demo set) first
    options = argparse.Namespace(**{**vars(args), "unlabelled": args.unlabelled or None})  # None: as the folder is
    data, splits = dataset.open_data(options, verbose=context.is_main)
    monitor = (data, splits) if args.monitor_data is None else dataset.open_data(argparse.Namespace(
        **{**vars(args), "data": args.monitor_data, "demo": False, "unlabelled": False}), verbose=context.is_main)
    if context.local_rank == 0:
        runs.barrier(context)
    images, pretrain = dataset.cache_on_device(data.images, device), splits.pretrain
    if args.monitor_data is not None:  # the monitor's held-out images (and a classifier's test on them) stay unseen
        held_out = torch.cat([monitor[1].test, monitor[1].validation])
        copies = dataset.near(data.hashes[pretrain], monitor[0].hashes[held_out])
        if copies.any():
            say(f"{int(copies.sum()):,} of the {len(pretrain):,} pretraining photos are copies of --monitor-data's "
                f"test or validation images: left out of pretraining")
        pretrain = pretrain[~copies]
    monitor = (*monitor, images if args.monitor_data is None else dataset.cache_on_device(monitor[0].images, device))
    if not len(monitor[1].validation):  # none in an unlabelled folder
        say("no kNN monitor (it needs labels, in --data or --monitor-data LABELLED, and --val-fraction above 0): "
            "the loss and z-std are logged as always")
        monitor = None
    if args.batch_size is None:  # the default: 256, or for a small folder the largest power of two it holds
        args.batch_size = max([2 ** k for k in range(1, 9) if 2 ** k <= len(pretrain) and 2 ** k % world == 0] or [256])
    if args.batch_size > len(pretrain) or args.batch_size % world:
        raise UserError(f"--batch-size {args.batch_size} must divide among {world} process(es) and not exceed the "
                        f"{len(pretrain):,} pretraining images: the largest that fits is "
                        f"{len(pretrain) // world * world}")
    split = {**dataset.split_identity(data, splits, options), "--monitor-data": str(args.monitor_data),
             "the pretraining images": dataset.fingerprint(data.files, pretrain)}
    recorded = {"args": runs.plain_args(args), "split": split, "pretraining_hashes": data.hashes[pretrain],
                "protocol": runs.PROTOCOL, "environment": runs.environment(device), "code": runs.code_version()}

    network = model.SimSiam(args.zero_init_residual).to(device, memory_format=runtime.memory_format)
    peak_lr = model.peak_lr(args.lr, args.batch_size)
    optimizer = model.make_optimizer(network, peak_lr, args.momentum, args.weight_decay)
    start = {"epoch": 0, "step": 0, "loss_sum": 0.0, "std_sum": 0.0} if last is None else resume(
        last, network, optimizer, recorded, args, say)
    steps_per_epoch = len(pretrain) // args.batch_size
    if not 0 <= start["step"] < steps_per_epoch:
        raise UserError(f"cannot resume {last}: its step {start['step']} is past an epoch of {steps_per_epoch} steps: "
                        f"resume with its --batch-size {start['args']['batch_size']}, or start a new --out")
    wrapped = runs.wrap(network, context, device)  # DDP in several processes; shares its weights with `network`
    wrapped = torch.compile(wrapped) if args.compile else wrapped
    total = steps_per_epoch * args.epochs
    say(f"SimSiam ResNet18, {sum(p.numel() for p in network.parameters()) / 1e6:.1f} M parameters, on {device} "
        f"({runtime.precision}: {runtime.reason}) x {world} process(es), cache in {images.device.type} memory; "
        f"{args.epochs} epochs of {steps_per_epoch} steps, batch {args.batch_size}, peak lr {peak_lr:g}")
    augment_generator, checkpoint, healthy_std = runs.generator(device, 0), last, 1 / math.sqrt(model.PROJECTION_DIM)

    with runs.StopSignals() as stop:  # from here a signal stops the run after the step in progress, saved
        if context.is_main:
            runs.start_run(args.out, held)  # an --overwrite's old run waits aside until this run's first checkpoint
            runs.save_args(args.out, args, device_used=str(device), precision_used=runtime.precision,
                           precision_reason=runtime.reason, world_size=world, peak_lr=peak_lr,
                           steps_per_epoch=steps_per_epoch, num_pretraining=len(pretrain),
                           num_classes=len(data.classes), cache_on=images.device.type)
            runs.truncate_metrics(args.out / "metrics.jsonl", after_epoch=start["epoch"])  # epochs written again
        for epoch in range(start["epoch"], args.epochs):
            first_step, started = start["step"], time.perf_counter()
            loss_sum, std_sum = (torch.tensor(start[key], device=device) for key in ("loss_sum", "std_sum"))
            batches = dataset.device_batches(images, pretrain, args.batch_size, runs.generator(
                images.device, seed_of(args.seed, epoch)), device, context.rank, world, skip=first_step)
            bar = tqdm(batches, f"epoch {epoch + 1}/{args.epochs}", steps_per_epoch, initial=first_step, leave=False,
                       **({} if context.is_main else {"disable": True}))  # as given, TQDM_DISABLE would not hide it
            for step, batch in enumerate(bar, start=first_step):  # batch: (B / world, 3, S, S) uint8 on the device
                augment_generator.manual_seed(seed_of(args.seed, epoch, step, context.rank))
                loss, std = model.train_step(wrapped, optimizer, batch, augment_generator, args.image_size,
                                             args.blur_reference_size, epoch * steps_per_epoch + step, total, runtime)
                loss_sum, std_sum = loss_sum + loss, std_sum + std
                checks = (step + 1) % CHECK_EVERY == 0 or step + 1 == steps_per_epoch
                if checks and runs.any_rank(not torch.isfinite(loss_sum).item(), device, context):
                    raise non_finite(f"loss in epoch {epoch + 1}, by step {step + 1}", checkpoint)
                if checks:
                    bar.set_postfix(loss=f"{loss_sum.item() / (step + 1):.4f}")
                if step + 1 < steps_per_epoch and (checks or world == 1) and runs.any_rank(
                        stop.signal_number is not None, device, context):
                    if context.is_main:
                        checkpoint = save(args.out, network, optimizer, recorded, checkpoint, epoch, step + 1,
                                          loss_sum.item(), std_sum.item())
                    runs.cleanup(context)
                    raise interrupted(stop, f"at epoch {epoch + 1}, step {step + 1}", args.out)
            seconds, start = time.perf_counter() - started, {"step": 0, "loss_sum": 0.0, "std_sum": 0.0}
            mean_loss, mean_std = (runs.mean(sums / steps_per_epoch, context).item() for sums in (loss_sum, std_sum))
            record = {"loss": mean_loss, "z_std": mean_std, "lr": optimizer.param_groups[0]["lr"], "epoch_s": seconds,
                      "images_per_s": (steps_per_epoch - first_step) * args.batch_size / seconds,
                      "peak_memory_gb": runs.peak_memory_gb(device)}
            stop_now = epoch + 1 < args.epochs and runs.any_rank(stop.signal_number is not None, device, context)
            if context.is_main:  # the monitor, the records and the checkpoints are rank 0's
                record["knn_accuracy"] = None if monitor is None else knn_accuracy(network, monitor, args, runtime)
                record["collapse_warning"] = record["z_std"] < COLLAPSE_FRACTION * healthy_std
                knn = "" if monitor is None else f", kNN accuracy {record['knn_accuracy']:.4f}"
                print(f"epoch {epoch + 1}/{args.epochs}: loss {mean_loss:.4f}, z-std {mean_std:.4f} (healthy "
                      f"{healthy_std:.4f}){knn}, {record['images_per_s']:,.0f} images/s")
                if record["collapse_warning"]:
                    print(f"warning: z-std below {COLLAPSE_FRACTION} / sqrt(d): the representation is collapsing")
                if stop_now or (epoch + 1) % args.save_every == 0 or epoch + 1 in (args.epochs, *args.keep_epochs):
                    checkpoint = save(args.out, network, optimizer, recorded, checkpoint, epoch + 1)
                runs.log(args.out / "metrics.jsonl", epoch=epoch + 1, **record)  # after its checkpoint: none ahead
                if epoch + 1 in args.keep_epochs:  # a budget of the curve of the lead against pretraining time
                    shutil.copyfile(args.out / "siam.pt", args.out / f"siam-epoch{epoch + 1}.pt")
            if stop_now:
                runs.cleanup(context)
                raise interrupted(stop, f"after epoch {epoch + 1}", args.out)
    size = sum(path.stat().st_size for path in args.out.glob("*.pt")) / 1e6
    say(f"saved {args.out / 'siam.pt'}; {args.out} holds {size:,.0f} MB of checkpoints (last.pt, the largest, is for "
        "--resume: delete it when done)")
    runs.cleanup(context)

if __name__ == "__main__":
    main()
