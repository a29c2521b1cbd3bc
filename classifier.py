"""A classifier trained on the few labelled images (250 by default), over a random-init ResNet18 or the
SimSiam backbone, evaluated on the held-out test split that neither pretraining nor the labels touched.

    python classifier.py --demo --random                          # synthetic data, small settings, CPU
    python classifier.py --demo                                   # the backbone of `train.py --demo`
    python classifier.py --data data/PetImages                    # linear probe on runs/simsiam/siam.pt
    python classifier.py --data data/PetImages --random           # the same over a random-init backbone
    python classifier.py --data data/PetImages --finetune         # train backbone and head together
    python classifier.py --data data/PetImages --test-data other/PetImages   # evaluate on another folder

Frozen (default): the backbone is in eval mode with requires_grad off and is checked unchanged afterwards;
only the head trains. Random and pretrained backbones go through the same code; only the weights differ.
Writes OUT/metrics.jsonl (per epoch: train loss and accuracy, test accuracy), OUT/labelled.json (the exact
labelled images), OUT/classifier.pt and OUT/args.json; prints `test accuracy: 0.xxxx` last.
"""
from __future__ import annotations

import argparse
import dataclasses
import json
import math
from pathlib import Path

import torch
import torch.nn.functional as F
from tqdm import tqdm

import augment
import cli
import dataset
import evaluate
from model import CheckpointError, Classifier, backbone_state, finite_state, load_checkpoint, save_checkpoint

DEMO = {"epochs": 30, "image_size": 48}  # --demo preset, for a CPU


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    cli.add_data_arguments(parser)
    group = parser.add_argument_group("backbone")
    source = group.add_mutually_exclusive_group()
    source.add_argument("--checkpoint", type=Path, default=Path("runs/simsiam/siam.pt"),
                        help="SimSiam checkpoint whose backbone to use (default %(default)s, train.py's output)")
    source.add_argument("--random", action="store_true", help="a randomly initialised backbone instead")
    group.add_argument("--finetune", action="store_true", help="train the backbone too (default: frozen)")
    group = parser.add_argument_group("training (SGD, cosine schedule)")
    group.add_argument("--epochs", type=cli.positive(int), default=100,
                       help=f"passes over the labelled images (default: %(default)s; --demo: {DEMO['epochs']})")
    group.add_argument("--batch-size", type=cli.batch_size, default=50,
                       help="labelled images per step (default: %(default)s)")
    group.add_argument("--image-size", type=cli.positive(int), default=150,
                       help=f"side of the network's input in px (default: %(default)s; --demo: {DEMO['image_size']})")
    group.add_argument("--lr", type=cli.positive(float), default=0.01,
                       help="lr of the head, cosine-decayed to 0 (0.1 diverged on a random backbone, 64 px)")
    group.add_argument("--backbone-lr-factor", type=cli.positive(float), default=1.0,
                       help="with --finetune, the backbone's lr is this times --lr")
    group.add_argument("--weight-decay", type=cli.in_range(float, 0), default=5e-4,
                       help="SGD weight decay (default: %(default)s)")
    group = parser.add_argument_group("run")
    group.add_argument("--all-labels", action="store_true",
                       help="train on every non-test image with its label (the supervised upper bound)")
    group.add_argument("--eval-every", type=cli.positive(int), default=1, help="epochs between test evaluations")
    group.add_argument("--test-data", type=Path, default=None,
                       help="evaluate on every image of this labelled folder instead of the held-out split")
    cli.add_output_arguments(group, None, resumable=False,
                             shown_default="runs/classifier-{random|simsiam}-{frozen|finetune}[-all-labels]")
    cli.add_run_arguments(group)
    return parser


def parse_args(argv=None) -> argparse.Namespace:
    return cli.parse(build_parser(), argv, DEMO)


def evaluation_set(args, data: dataset.ImageSet, splits: dataset.Splits):
    """(images, indices, labels) of the evaluation set: the held-out split, or all of --test-data with its
    class names mapped onto the training classes."""
    if args.test_data is None:
        return data.images, splits.test, data.labels[splits.test]
    other = dataset.load_images(args.test_data, data.images.shape[-1], args.cache_dir, workers=args.workers,
                                min_classes=1)  # a folder of one class is a fair test set
    unknown = sorted(set(other.classes) - set(data.classes))
    if unknown:
        raise cli.RunError(f"--test-data {args.test_data} has classes {unknown} that the training data lacks "
                           f"({data.classes})")
    print(f"test data: {dataset.describe(other)}")
    mapping = torch.tensor([data.classes.index(name) for name in other.classes])
    return other.images, torch.arange(len(other.files)), mapping[other.labels]


def train_epoch(model: Classifier, optimizer, scheduler, data: dataset.ImageSet, batches, generator: torch.Generator,
                args: argparse.Namespace, runtime: cli.Runtime) -> tuple[float, float]:
    """One pass over `batches` of labelled indices into `data` (images and labels on the device), with
    crop-and-flip augmentation drawn from `generator`; (mean loss, accuracy)."""
    device = runtime.device
    loss_sum, correct, seen = torch.zeros((), device=device), torch.zeros((), device=device), 0
    for indices in batches:
        x = augment.crop_flip_view(dataset.gather(data.images, indices, device), args.image_size, generator)
        targets = data.labels[indices.to(device)]
        with runtime.autocast():
            logits = model(x.contiguous(memory_format=cli.memory_format(device))).float()
            loss = F.cross_entropy(logits, targets)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
        scheduler.step()
        loss_sum += loss.detach() * len(indices)
        correct += (logits.argmax(1) == targets).sum()
        seen += len(indices)
    return (loss_sum / seen).item(), (correct / seen).item()


@cli.reports_errors
def main(argv=None) -> None:
    args = parse_args(argv)
    backbone_name = "random" if args.random else "simsiam"
    mode = "finetune" if args.finetune else "frozen"
    out = cli.prepare_out(args.out or Path("runs") / cli.classifier_run_name(args.random, args.finetune,
                                                                            args.all_labels), args.overwrite)
    cli.writable_folder(args.cache_dir, "--cache-dir")
    torch.manual_seed(args.seed)
    runtime = cli.make_runtime(args.device, args.precision)
    device = runtime.device

    checkpoint = None
    if not args.random:  # checked before any decoding starts
        try:
            checkpoint = load_checkpoint(args.checkpoint, kind="simsiam", needs=("args", "split"))
        except CheckpointError as error:
            hint = "train one with train.py, or pass --random"
            raise cli.RunError(f"cannot use --checkpoint: {error} ({hint})") from None

    data, splits = dataset.open_data(args)
    images = dataset.cache_on_device(data.images, device)
    test_source, test_indices, test_labels = evaluation_set(args, data, splits)
    test_source = dataset.cache_on_device(test_source, device) if args.test_data else images

    model = Classifier(len(data.classes))
    if checkpoint is not None:
        try:
            model.backbone.load_state_dict(backbone_state(checkpoint))
        except RuntimeError as error:
            raise cli.RunError(f"--checkpoint {args.checkpoint} does not fit a ResNet18 backbone: {error}") from None
        if checkpoint["args"]["image_size"] != args.image_size:
            print(f"note: the backbone was pretrained at {checkpoint['args']['image_size']} px and is evaluated at "
                  f"{args.image_size} px (--image-size)")
        held_out = dataset.fingerprint(data.files, splits.test)
        if args.test_data is None and checkpoint["split"]["test_fingerprint"] != held_out:
            raise cli.RunError(f"{args.checkpoint} was pretrained with another test split ({checkpoint['split']}), "
                               f"so its pretraining may have seen these test images: use the same data, "
                               f"--split-seed, --test-fraction and --limit as train.py")
    model = model.to(device, memory_format=cli.memory_format(device))
    model.backbone.requires_grad_(args.finetune)
    frozen_before = None if args.finetune else {k: v.clone() for k, v in model.backbone.state_dict().items()}
    groups = [{"params": model.head.parameters(), "initial_lr": args.lr}]
    if args.finetune:
        groups.append({"params": model.backbone.parameters(), "initial_lr": args.lr * args.backbone_lr_factor})
    optimizer = torch.optim.SGD(groups, lr=args.lr, momentum=0.9, weight_decay=args.weight_decay)
    labelled = splits.pretrain if args.all_labels else splits.labelled
    batch_size = min(args.batch_size, len(labelled))
    scheduler = torch.optim.lr_scheduler.CosineAnnealingLR(optimizer, T_max=args.epochs * (len(labelled) // batch_size))

    cli.save_args(out, args, device=str(device), precision_used=runtime.precision, backbone=backbone_name, mode=mode)
    (out / "labelled.json").write_text(json.dumps({
        "indices": labelled.tolist(), "files": [data.files[i] for i in labelled.tolist()],
        "labels": data.labels[labelled].tolist(), "classes": data.classes, "root": str(data.root)}))
    metrics = cli.Metrics(out / "metrics.jsonl")
    print(f"{mode} {backbone_name} ResNet18 + linear head, {len(labelled):,} labelled images, "
          f"{len(test_indices):,} test images, on {device} ({runtime.precision})")

    generator = torch.Generator(device).manual_seed(args.seed)
    on_device = dataclasses.replace(data, images=images, labels=data.labels.to(device))
    test_features = None
    bar = tqdm(range(args.epochs), desc="classifier", unit="epoch")
    for epoch in bar:
        model.train()
        if not args.finetune:
            model.backbone.eval()  # frozen: BatchNorm statistics must not move
        batches = dataset.epoch_batches(labelled, batch_size, generator)
        train_loss, train_accuracy = train_epoch(model, optimizer, scheduler, on_device, batches, generator, args,
                                                 runtime)
        if not math.isfinite(train_loss):
            raise cli.RunError(f"non-finite training loss at epoch {epoch + 1}: stopped, nothing saved. "
                               f"Lower --lr (or --backbone-lr-factor)")
        record = {"epoch": epoch + 1, "train_loss": train_loss, "train_accuracy": train_accuracy,
                  "lr": optimizer.param_groups[0]["lr"]}
        if (epoch + 1) % args.eval_every == 0 or epoch + 1 == args.epochs:
            if args.finetune or test_features is None:  # a frozen backbone's features never change
                test_features = evaluate.embed(model.backbone, test_source, test_indices, args.image_size, runtime)
            model.head.eval()
            with torch.no_grad():
                test_accuracy = evaluate.accuracy(model.head(test_features), test_labels).item()
            record["test_accuracy"] = test_accuracy
            bar.set_postfix(train_loss=f"{train_loss:.3f}", test_accuracy=f"{test_accuracy:.3f}")
        metrics.log(**record)

    if frozen_before is not None:
        after = model.backbone.state_dict()
        if not all(torch.equal(value, after[key]) for key, value in frozen_before.items()):
            raise RuntimeError("the frozen backbone changed during training: this is a bug")
    if not finite_state(model):
        raise cli.RunError("non-finite weights after training: nothing saved. Lower --lr (or --backbone-lr-factor)")
    save_checkpoint(out / "classifier.pt", "classifier", model, classes=data.classes, args=cli.plain_args(args),
                    labelled_indices=labelled.tolist(), code=cli.code_version())
    metrics.log(event="final", test_accuracy=test_accuracy, num_test=len(test_indices))
    print(f"saved {out / 'classifier.pt'}")
    print(f"test accuracy: {test_accuracy:.4f}")


if __name__ == "__main__":
    main()
