"""A classifier trained on the few labelled images (250 by default), over a random-init ResNet18 or the
SimSiam backbone, evaluated on the held-out test split that neither pretraining nor the labels touched.

    python classifier.py --demo --random                          # synthetic data, small settings, CPU
    python classifier.py --demo                                   # the backbone of `train.py --demo`
    python classifier.py --data data/PetImages                    # linear probe on runs/simsiam/siam.pt
    python classifier.py --data data/PetImages --random           # the same over a random-init backbone
    python classifier.py --data data/PetImages --finetune         # train backbone and head together
    python classifier.py --data data/PetImages --test-data other/PetImages   # evaluate on another folder

Frozen (default): the backbone is in eval mode with requires_grad off and is checked unchanged afterwards;
only the head trains. Random and pretrained backbones go through the same code; only the weights differ. A frozen
run also fits the closed-form probe (L2 logistic regression on the backbone's features, its penalty chosen by
cross-validation on the labelled images), which has no learning rate or epochs to tune. The input resolution
and the cache follow the checkpoint's unless --image-size or --cache-size say otherwise.
The test set is evaluated once, at the end: per epoch only what may guide a choice is shown and logged.
Writes OUT/metrics.jsonl (per epoch: train loss and accuracy, the lr of every group; then a final record with
the test accuracy), OUT/labelled.json (the exact labelled images), OUT/classifier.pt and OUT/args.json; prints the
closed-form probe's accuracy (frozen runs) and then `test accuracy: 0.xxxx` last.
"""
from __future__ import annotations

import argparse
import dataclasses
import json
import math
from pathlib import Path
from typing import NamedTuple

import torch
import torch.nn.functional as F
from tqdm import tqdm

from simsiam import augment, cli, dataset, decode, devices, evaluate, pretrained, recipe, runs, schedule
from simsiam.model import Classifier, finite_state, save_checkpoint

DEMO = {"epochs": 30}  # --demo preset, for a CPU
# --image-size without a checkpoint to follow (--random): the original repository's 150 px, and train.py --demo's
# 32 px under --demo
RANDOM_IMAGE_SIZE, DEMO_RANDOM_IMAGE_SIZE = 150, 32


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    cli.add_data_arguments(parser)
    group = parser.add_argument_group("backbone")
    source = group.add_mutually_exclusive_group()
    source.add_argument("--checkpoint", type=Path, default=Path("runs/simsiam/siam.pt"),
                        help="SimSiam checkpoint whose backbone to use (default %(default)s, train.py's output)")
    source.add_argument("--random", action="store_true", help="a randomly initialised backbone instead")
    group.add_argument("--finetune", action="store_true",
                       help="train the backbone too (default: frozen); the closed-form probe is then not fitted, "
                            "since it would measure the backbone before fine-tuning, not the fine-tuned model")
    group = parser.add_argument_group("training (SGD, momentum 0.9, cosine decay per step)")
    group.add_argument("--epochs", type=cli.positive(int), default=100,
                       help=f"passes over the labelled images (default: %(default)s; --demo: {DEMO['epochs']})")
    group.add_argument("-b", "--batch-size", type=cli.batch_size, default=50,
                       help="labelled images per step (default: %(default)s)")
    group.add_argument("--image-size", type=cli.image_size, default=None,
                       help=f"side of the network's input in px (default: the checkpoint's, the scale its backbone "
                            f"was pretrained at, with its --cache-size; {RANDOM_IMAGE_SIZE} with --random, "
                            f"{DEMO_RANDOM_IMAGE_SIZE} with --random --demo)")
    group.add_argument("--lr", type=cli.positive(float), default=0.05,
                       help="base lr of the head, as train.py's: peak lr = lr * batch_size / 256, cosine-decayed "
                            "to 0 (default: %(default)s, a peak of 0.0098 at batch 50)")
    group.add_argument("--backbone-lr-factor", type=cli.positive(float), default=1.0,
                       help="with --finetune, the backbone's peak lr is this times --lr, decayed alike "
                            "(default: %(default)s)")
    group.add_argument("--wd", "--weight-decay", dest="weight_decay", type=cli.in_range(float, 0), default=5e-4,
                       help="SGD weight decay (default: %(default)s)")
    group = parser.add_argument_group("run")
    group.add_argument("--all-labels", action="store_true",
                       help="train on every image outside the test and validation splits, with its label (the "
                            "supervised upper bound)")
    group.add_argument("--test-data", type=Path, default=None,
                       help="evaluate on every image of this labelled folder instead of the held-out split")
    group.add_argument("--compare", type=Path, default=None, metavar="RUN",
                       help="at the end, compare this run image by image with another classifier run folder tested "
                            "on the same images (its predictions.json): the paired difference of each probe, with "
                            "its standard error")
    cli.add_output_arguments(group, None, resumable=False,
                             shown_default="runs/classifier-{random|simsiam}-{frozen|finetune}[-all-labels]")
    cli.add_run_arguments(group)
    return parser


def parse_args(argv=None) -> argparse.Namespace:
    return cli.parse(build_parser(), argv, DEMO)


def resolution(args: argparse.Namespace, checkpoint: dict | None) -> tuple[int, int]:
    """(image size, cache size) in px (pretrained.resolution): the checkpoint's unless a flag says otherwise;
    without one (--random) RANDOM_IMAGE_SIZE, or DEMO_RANDOM_IMAGE_SIZE under --demo."""
    return pretrained.resolution(args.image_size, args.cache_size, checkpoint and checkpoint["args"],
                                 DEMO_RANDOM_IMAGE_SIZE if args.demo else RANDOM_IMAGE_SIZE)


def make_optimizer(model: Classifier, args: argparse.Namespace, batch_size: int) -> torch.optim.SGD:
    """SGD, momentum 0.9, over the head (peak lr --lr x batch_size / 256) and, with --finetune, the backbone (the
    head's peak x --backbone-lr-factor); each group carries its name and its own `peak_lr`, which schedule.set_lr
    decays."""
    peak_lr = schedule.peak_lr(args.lr, batch_size)
    groups = [{"name": "head", "params": model.head.parameters(), "peak_lr": peak_lr}]
    if args.finetune:
        groups.append({"name": "backbone", "params": model.backbone.parameters(),
                       "peak_lr": peak_lr * args.backbone_lr_factor})
    return torch.optim.SGD(groups, lr=peak_lr, momentum=0.9, weight_decay=args.weight_decay)


def closed_form_probe(model: Classifier, images: torch.Tensor, labelled: torch.Tensor, labels: torch.Tensor,
                      test_features: torch.Tensor, test_labels: torch.Tensor, num_classes: int, image_size: int,
                      seed: int, runtime: devices.Runtime) -> dict:
    """evaluate.logistic_probe on the frozen backbone's features of the evaluation view (centre, no augmentation)
    of the (N,) `labelled` indices into `images`, tested on the (M, 512) `test_features`; the folds are drawn
    from `seed`. Its keys prefixed "closed_form_" (test_accuracy as closed_form_accuracy), for the final record;
    empty when a class has a single labelled image, since the penalty's cross-validation needs two. Its test
    predictions (M,) go under "closed_form_predictions", which the final record leaves out."""
    counts = torch.bincount(labels[labelled].cpu())
    if counts[counts > 0].min() < 2:
        return {}
    features = evaluate.embed(model.backbone, images, labelled, image_size, runtime)  # (N, 512)
    result = evaluate.logistic_probe(features, labels[labelled], test_features, test_labels, num_classes, seed=seed)
    return {f"closed_form_{key}": value for key, value in result.items() if key != "test_accuracy"} | {
        "closed_form_accuracy": result["test_accuracy"]}


class TestSet(NamedTuple):
    images: torch.Tensor  # (N, 3, S, S) uint8 cache that `indices` index
    indices: torch.Tensor  # (M,)
    labels: torch.Tensor  # (M,) in the training data's class numbering
    files: list[str]  # (M,) names, relative to the folder they come from, for predictions.json
    name: str  # for the console: "400 held-out test images"
    fingerprint: str  # names the test set in args.json, so that plot.py never mixes two on one axis
    hashes: torch.Tensor  # (M, 2) photo identities (decode.perceptual_hash), checked against training images


def evaluation_set(args, data: dataset.ImageSet, splits: dataset.Splits) -> TestSet:
    """The evaluation set: the held-out split, or all of --test-data with its class names mapped onto the
    training classes."""
    if args.test_data is None:
        return TestSet(data.images, splits.test, data.labels[splits.test], [data.files[i] for i in splits.test],
                       f"{len(splits.test):,} held-out test images",
                       dataset.fingerprint(data.files, splits.test), data.hashes[splits.test])
    other = dataset.load_images(args.test_data, data.images.shape[-1], args.cache_dir, workers=args.workers,
                                min_classes=1)  # a folder of one class is a fair test set
    unknown = sorted(set(other.classes) - set(data.classes))
    if unknown:
        raise runs.RunError(f"--test-data {args.test_data} has classes {unknown} that the training data lacks "
                            f"({data.classes})")
    print(f"test data: {dataset.describe(other)}")
    mapping = torch.tensor([data.classes.index(name) for name in other.classes])
    trained_on = splits.pretrain if args.all_labels else splits.labelled
    seen = decode.near(other.hashes, data.hashes[trained_on])  # the same photos, in any format, under any name
    kept = torch.nonzero(~seen).flatten()
    if seen.any():
        print(f"note: {int(seen.sum()):,} of the {len(seen):,} images of --test-data {args.test_data} are photos this "
              f"classifier trains on (compared by their pixels): left out of the test set")
    if len(kept) == 0:
        raise runs.RunError(f"every image of --test-data {args.test_data} is a photo this classifier trains on: "
                            f"test on photos it never sees")
    return TestSet(other.images, kept, mapping[other.labels[kept]], [other.files[i] for i in kept],
                   f"{len(kept):,} images of {args.test_data}",
                   dataset.fingerprint([str(other.root / name) for name in other.files], kept), other.hashes[kept])


def train_epoch(model: Classifier, optimizer: torch.optim.SGD, data: dataset.ImageSet, batches,
                generator: torch.Generator, first_step: int, total_steps: int, image_size: int,
                runtime: devices.Runtime) -> tuple[float, float, dict[str, float]]:
    """One pass over `batches` of labelled indices into `data` (images and labels on the device), with
    crop-and-flip augmentation drawn from `generator`, the lr set before each step (global steps from
    `first_step`); (mean loss, accuracy, {group name: lr of the last step})."""
    device = runtime.device
    loss_sum, correct, seen = torch.zeros((), device=device), torch.zeros((), device=device), 0
    for step, indices in enumerate(batches, start=first_step):
        lrs = schedule.set_lr(optimizer, step, total_steps)
        x = augment.crop_flip_view(dataset.gather(data.images, indices, device), image_size, generator)
        targets = data.labels[indices.to(device)]
        with runtime.autocast():
            logits = model(x.contiguous(memory_format=runtime.memory_format)).float()
            loss = F.cross_entropy(logits, targets)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
        loss_sum += loss.detach() * len(indices)
        correct += (logits.argmax(1) == targets).sum()
        seen += len(indices)
    return (loss_sum / seen).item(), (correct / seen).item(), lrs


def compare(predictions: dict, other: dict, folder: Path) -> None:
    """Print this run minus --compare's run, image by image, for each probe both have."""
    for key, probe in evaluate.PROBE_PREDICTIONS.items():
        difference = evaluate.compare_predictions(predictions, other, key)
        if difference is not None:
            print(f"{probe}, this run - {folder}: {evaluate.describe_difference(difference)}")
    if predictions["files"] != other.get("files"):
        print(f"note: --compare {folder} was tested on other images: no paired comparison")



@cli.reports_errors
def main(argv=None) -> None:
    args = parse_args(argv)
    backbone_name = "random" if args.random else "simsiam"
    mode = "finetune" if args.finetune else "frozen"
    out = args.out or Path("runs") / runs.classifier_run_name(args.random, args.finetune, args.all_labels)
    run_folder = runs.check_out(out, args.overwrite)  # the old run's files go once every check has passed
    runs.writable_folder(args.cache_dir, "--cache-dir")
    torch.manual_seed(args.seed)
    runtime = devices.make_runtime(args.device, args.precision)
    device = runtime.device

    other = None if args.compare is None else runs.read_predictions(args.compare)  # before any work starts
    checkpoint = None
    if not args.random:  # checked before any decoding starts
        checkpoint = pretrained.read(args.checkpoint, hint="train one with train.py, or pass --random")
    image_size, cache_size = resolution(args, checkpoint)
    pretrained_size = None if checkpoint is None else checkpoint["args"]["image_size"]
    if pretrained_size not in (None, image_size):
        print(f"note: the backbone was pretrained at {pretrained_size} px and is evaluated at {image_size} px "
              f"(--image-size)")

    if args.finetune:  # a frozen backbone keeps no activations for a backward pass
        batch_size = args.batch_size if args.all_labels else min(args.batch_size, args.labels)
        recipe.check_memory(image_size, batch_size, runtime, views=1)
    options = dataset.DataOptions.from_args(args, image_size=image_size, cache_size=cache_size)
    classes = dataset.find_images(dataset.photos_folder(options))[2]  # listed, before any decoding
    if not args.all_labels and args.labels < len(classes):
        raise runs.RunError(f"--labels {args.labels} leaves a class of the {len(classes)} without a labelled "
                            f"image: the head needs one of each, so --labels {len(classes)} or more")
    data, splits = dataset.open_data(options)
    images = dataset.cache_on_device(data.images, device)
    test_set = evaluation_set(args, data, splits)
    test_source = dataset.cache_on_device(test_set.images, device) if args.test_data else images
    test_indices, test_labels = test_set.indices, test_set.labels

    model = Classifier(len(data.classes))
    if checkpoint is not None:
        pretrained.load_backbone(checkpoint, model.backbone)
        pretrained.check_unseen(checkpoint, args.checkpoint, test_set.hashes)
    model = model.to(device, memory_format=runtime.memory_format)
    model.backbone.requires_grad_(args.finetune)
    frozen_before = None if args.finetune else {k: v.clone() for k, v in model.backbone.state_dict().items()}
    labelled = splits.pretrain if args.all_labels else splits.labelled
    batch_size = min(args.batch_size, len(labelled))
    steps_per_epoch = len(labelled) // batch_size  # the incomplete last batch is dropped
    optimizer = make_optimizer(model, args, batch_size)

    runs.start_run(run_folder)
    environment = devices.environment(device)
    runs.save_args(out, args, image_size=image_size, cache_size=cache_size, device=str(device),
                   environment=environment, precision_used=runtime.precision, backbone=backbone_name, mode=mode,
                   batch_size_used=batch_size,
                   peak_lr=optimizer.param_groups[0]["peak_lr"], num_classes=len(data.classes), test_set=test_set.name,
                   test_fingerprint=test_set.fingerprint)
    (out / "labelled.json").write_text(json.dumps({
        "indices": labelled.tolist(), "files": [data.files[i] for i in labelled.tolist()],
        "labels": data.labels[labelled].tolist(), "classes": data.classes, "root": str(data.root)}))
    metrics = runs.Metrics(out / "metrics.jsonl", args.tensorboard)
    pretrained_at = "" if pretrained_size is None else f" (pretrained at {pretrained_size} px)"
    print(f"{mode} {backbone_name} ResNet18{pretrained_at} + linear head at {image_size} px from a "
          f"{cache_size} px cache, {len(labelled):,} labelled images, {test_set.name}, "
          f"on {device} ({runtime.precision})")

    generator = devices.generator(device, args.seed)
    on_device = dataclasses.replace(data, images=images, labels=data.labels.to(device))
    closed_form = {}  # a frozen backbone's features never change: the closed-form probe is fitted once, first
    if not args.finetune:
        test_features = evaluate.embed(model.backbone, test_source, test_indices, image_size, runtime,
                                       desc="embedding the test set")
        closed_form = closed_form_probe(model, images, labelled, on_device.labels, test_features, test_labels,
                                        len(data.classes), image_size, args.seed, runtime)
        if not closed_form:
            print("note: no closed-form probe: choosing its penalty needs 2 labelled images per class (--labels)")
    bar = tqdm(range(args.epochs), desc="classifier", unit="epoch")
    for epoch in bar:  # what may guide a choice is shown: the labelled images' loss; the test set comes once, last
        model.train()
        if not args.finetune:
            model.backbone.eval()  # frozen: BatchNorm statistics must not move
        batches = dataset.epoch_batches(labelled, batch_size, generator)
        train_loss, train_accuracy, lrs = train_epoch(model, optimizer, on_device, batches, generator,
                                                      epoch * steps_per_epoch, args.epochs * steps_per_epoch,
                                                      image_size, runtime)
        if not math.isfinite(train_loss):
            raise runs.RunError(f"non-finite training loss at epoch {epoch + 1}: stopped, nothing saved. "
                                f"Lower --lr (or --backbone-lr-factor)")
        record = {"epoch": epoch + 1, "train_loss": train_loss, "train_accuracy": train_accuracy, "lr": lrs["head"]}
        if args.finetune:
            record["backbone_lr"] = lrs["backbone"]
        bar.set_postfix(train_loss=f"{train_loss:.3f}", train_accuracy=f"{train_accuracy:.3f}")
        metrics.log(**record)
    if args.finetune:  # a frozen backbone's test features were embedded once, before the loop
        test_features = evaluate.embed(model.backbone, test_source, test_indices, image_size, runtime,
                                       desc="embedding the test set")
    model.head.eval()
    with torch.no_grad():
        test_logits = model.head(test_features)
    test_accuracy = evaluate.accuracy(test_logits, test_labels).item()

    if frozen_before is not None:
        after = model.backbone.state_dict()
        if not all(torch.equal(value, after[key]) for key, value in frozen_before.items()):
            raise RuntimeError("the frozen backbone changed during training: this is a bug")
    if not finite_state(model):
        raise runs.RunError("non-finite weights after training: nothing saved. Lower --lr (or --backbone-lr-factor)")
    resolved = {**runs.plain_args(args), "image_size": image_size, "cache_size": cache_size}
    save_checkpoint(out / "classifier.pt", "classifier", model, classes=data.classes, args=resolved,
                    labelled_indices=labelled.tolist(), code=runs.code_version(), environment=environment)
    closed_form_predictions = closed_form.pop("closed_form_test_predictions", None)
    predictions = {  # per test image, for paired comparisons of two runs
        "test_set": test_set.name, "test_fingerprint": test_set.fingerprint, "classes": data.classes,
        "files": test_set.files, "labels": test_labels.tolist(), "head": test_logits.argmax(dim=1).tolist(),
        **({"closed_form": closed_form_predictions} if closed_form_predictions is not None else {})}
    (out / "predictions.json").write_text(json.dumps(predictions))
    metrics.log(event="final", test_accuracy=test_accuracy, num_test=len(test_indices), test_set=test_set.name,
                **closed_form)
    runs.replaced_run_gone(out)  # the run an --overwrite replaces may go now
    print(f"saved {out / 'classifier.pt'}")
    if closed_form:
        edge = (" (the edge of its grid: the best penalty may lie beyond)" if closed_form["closed_form_at_edge"]
                else "")
        print(f"closed-form probe (logistic regression, penalty {closed_form['closed_form_penalty']:.0e}{edge} by "
              f"{closed_form['closed_form_folds']}-fold CV on the labels): {closed_form['closed_form_accuracy']:.4f}")
    if other is not None:
        compare(predictions, other, args.compare)
    error = evaluate.standard_error(test_accuracy, len(test_indices))
    print(f"test accuracy: {test_accuracy:.4f} ± {error:.4f} (standard error) on {test_set.name}")


if __name__ == "__main__":
    main()
