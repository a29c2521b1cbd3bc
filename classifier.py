"""A classifier on the few labelled images (250 by default) over a frozen backbone, with the closed-form probe beside it
(evaluate.logistic_probe), or fine-tuned (--finetune): SimSiam's, random-init (--random, same code path), ImageNet's
(--init imagenet) or any torchvision ResNet18 (--init-weights); tested once, at the end, on the held-out test split.

    python classifier.py --demo                                  # the backbone of `train.py --demo`, on a CPU
    python classifier.py --data data/PetImages                   # linear probe on runs/simsiam/siam.pt
    python classifier.py --data data/PetImages --random          # the same over a random-init backbone
    python classifier.py --data data/PetImages --init imagenet   # torchvision's ImageNet weights, at 224 px
    python classifier.py --data data/PetImages --finetune        # backbone and head trained together
    python classifier.py --data data/PetImages --test-data other/PetImages   # another labelled folder, less copies
    python classifier.py --data data/PetImages --compare runs/classifier-random-frozen   # paired difference

Resolution and cache follow the checkpoint's. Writes OUT/args.json, metrics.jsonl, labelled.json, classifier.pt (for
predict.py) and predictions.json (per test image, for --compare and plot.py)."""
import argparse
import functools
import json
import math
from pathlib import Path
from typing import NamedTuple

import torch
import torch.nn.functional as F
from tqdm import tqdm

import augment
import dataset
import evaluate
import model
import runs
from model import UserError

DEMO = {"epochs": 30}  # --demo preset, for a CPU
# base lr: frozen, the best on the validation split of 0.02-2 at 64 px over random init and SimSiam (docs/protocol.md)
PROBE_LR, FINETUNE_LR = 0.02, 0.05

def parse_args(argv=None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    runs.add_data_arguments(parser)
    group = parser.add_argument_group("backbone")
    evaluate.add_backbone_arguments(group)
    group.add_argument("--finetune", action="store_true", help="train the backbone too (default: frozen)")
    group = parser.add_argument_group("training (SGD, momentum 0.9, cosine decay per step)")
    group.add_argument("--epochs", type=runs.positive(int), default=100,
                       help=f"passes over the labelled images (default: %(default)s; --demo: {DEMO['epochs']})")
    group.add_argument("-b", "--batch-size", type=runs.batch_size, default=50, help="(default: %(default)s)")
    group.add_argument("--lr", type=runs.positive(float), default=None, help="base lr: peak lr = lr * batch_size / "
                       f"256, cosine-decayed (default: {PROBE_LR}; --finetune: {FINETUNE_LR})")
    group.add_argument("--backbone-lr-factor", type=runs.positive(float), default=1.0,
                       help="--finetune: the backbone's lr is this times the head's (default: %(default)s)")
    group.add_argument("--wd", "--weight-decay", dest="weight_decay", type=runs.in_range(float, 0), default=5e-4,
                       help="SGD weight decay (default: %(default)s)")
    group = parser.add_argument_group("run")
    group.add_argument("--all-labels", action="store_true",
                       help="train on every image outside the test and validation splits (the supervised bound)")
    tested = group.add_mutually_exclusive_group()
    tested.add_argument("--test-data", type=Path, default=None,
                        help="test on every image of this labelled folder, less copies of the photos trained on")
    tested.add_argument("--validate", action="store_true",
                        help="tested on the validation split, the test split unread: for choosing settings")
    group.add_argument("--compare", type=Path, default=None, metavar="RUN",
                       help="print the paired difference of each probe against this classifier run (same test set)")
    runs.add_output_arguments(group, None, False, shown="runs/classifier-BACKBONE-{frozen|finetune}")
    runs.add_run_arguments(group)
    return runs.parse(parser, argv, DEMO)

class TestSet(NamedTuple):
    images: torch.Tensor  # (N, 3, S, S) uint8 cache that `indices` index
    indices: torch.Tensor  # (M,)
    labels: torch.Tensor  # (M,) in the training data's class numbering
    files: list[str]  # (M,) names, for predictions.json
    name: str  # "400 held-out test images"
    fingerprint: str  # in args.json, so that plot.py never mixes two test sets on one axis
    hashes: torch.Tensor  # (M, 8) photo identities, checked against the pretraining photos
    left_out: list[str]  # --test-data: its copies of photos trained on, not tested

def evaluation_set(args, data: dataset.ImageSet, splits: dataset.Splits, trained_on: torch.Tensor) -> TestSet:
    """The held-out split, or every image of --test-data (its classes mapped onto the training ones) that is not
    a copy of a photo this classifier or its backbone trained on (`trained_on`: their identities)."""
    if args.test_data is None:
        test, name = (splits.validation, "validation") if args.validate else (splits.test, "held-out test")
        if not len(test):
            raise UserError("--validate tests on the validation split: give it images (--val-fraction above 0)")
        return TestSet(data.images, test, data.labels[test], [data.files[i] for i in test],
                       f"{len(test):,} {name} images", dataset.fingerprint(data.files, test), data.hashes[test], [])
    other = dataset.load_images(args.test_data, data.images.shape[-1], args.cache_dir, workers=args.workers,
                                min_classes=1)  # a folder of one class is a fair test set
    print(f"test data: {dataset.describe(other)}")
    if unknown := sorted(set(other.classes) - set(data.classes)):
        raise UserError(f"--test-data {args.test_data} has classes {unknown} that the training data lacks: name its "
                        f"folders like the training ones ({', '.join(data.classes)})")
    seen = dataset.near(other.hashes, trained_on)  # the same photos, in any format, under any name
    kept, left_out = torch.nonzero(~seen).flatten(), [other.files[i] for i in torch.nonzero(seen).flatten()]
    if len(kept) == 0:
        raise UserError(f"every image of --test-data {args.test_data} is a photo this classifier or its backbone "
                        f"trained on: test on photos they never saw")
    if left_out:
        print(f"note: {len(left_out):,} of the {len(seen):,} images of --test-data {args.test_data} are copies of "
              f"photos this classifier or its backbone trained on (by pixels), left out of the test set and listed "
              f"in left-out.txt: {', '.join(map(dataset.shown, left_out[:3]))}{' ...' * (len(left_out) > 3)}")
    mapping = torch.tensor([data.classes.index(name) for name in other.classes])
    return TestSet(other.images, kept, mapping[other.labels[kept]], [other.files[i] for i in kept],
                   f"{len(kept):,} images of {args.test_data}", dataset.fingerprint(
                       [str(other.root / name) for name in other.files], kept), other.hashes[kept], left_out)

@runs.reports_errors
def main(argv=None) -> None:
    args = parse_args(argv)
    args.lr = args.lr or (FINETUNE_LR if args.finetune else PROBE_LR)
    out = args.out or Path("runs") / runs.classifier_run_name(evaluate.backbone_name(args), args.finetune,
                                                              args.all_labels)
    held = runs.check_out(out, args.overwrite)  # the old run's files are set aside once every check has passed
    torch.manual_seed(args.seed)
    device = (runtime := runs.make_runtime(args.device, args.precision)).device
    other = None if args.compare is None else runs.read_predictions(args.compare)  # read before any work
    backbone = evaluate.backbone_source(args)
    checkpoint, image_size, cache_size = backbone.checkpoint, backbone.image_size, backbone.cache_size
    pretrained_args = checkpoint and checkpoint["args"]
    if pretrained_args and pretrained_args["image_size"] != image_size:
        print(f"note: the backbone was pretrained at {pretrained_args['image_size']} px, evaluated at {image_size} px")

    data, splits = dataset.open_data(argparse.Namespace(**{**vars(args), "image_size": image_size,
                                                           "cache_size": cache_size, "unlabelled": False}))
    if not args.all_labels and args.labels < len(data.classes):
        raise UserError(f"--labels {args.labels} leaves a class of the {len(data.classes)} without a labelled image: "
                        f"pass --labels {len(data.classes)} or more")
    labelled = splits.pretrain if args.all_labels else splits.labelled
    pretrained_on = checkpoint["pretraining_hashes"] if checkpoint else data.hashes[:0]
    test = evaluation_set(args, data, splits, torch.cat([data.hashes[labelled], pretrained_on]))
    classifier = model.Classifier(len(data.classes))
    backbone.load(classifier.backbone)
    if checkpoint is not None and args.test_data is None:  # the held-out split of other data flags
        evaluate.check_unseen(checkpoint, args.checkpoint, test.hashes)
    classifier = classifier.to(device, memory_format=runtime.memory_format)
    classifier.backbone.requires_grad_(args.finetune)  # frozen: no gradient, eval mode below (tests: unchanged)
    batch_size = min(args.batch_size, len(labelled))
    steps_per_epoch = len(labelled) // batch_size  # the incomplete last batch is dropped
    peak_lr = model.peak_lr(args.lr, batch_size)  # each group named, at its own peak lr (model.set_lr)
    groups = [{"name": "head", "params": list(classifier.head.parameters()), "peak_lr": peak_lr}]
    if args.finetune:  # frozen: the optimizer holds the head alone
        groups.append({"name": "backbone", "params": list(classifier.backbone.parameters()),
                       "peak_lr": peak_lr * args.backbone_lr_factor})
    optimizer = torch.optim.SGD(groups, lr=peak_lr, momentum=0.9, weight_decay=args.weight_decay)

    runs.start_run(out, held)
    mode = "finetune" if args.finetune else "frozen"
    runs.save_args(out, args, image_size=image_size, cache_size=cache_size, device_used=str(device),
                   precision_used=runtime.precision, precision_reason=runtime.reason, backbone=backbone.name,
                   mode=mode, batch_size_used=batch_size, peak_lr=peak_lr, num_classes=len(data.classes),
                   test_set=test.name, test_fingerprint=test.fingerprint, num_left_out=len(test.left_out))
    if test.left_out:
        dataset.write_names(out / "left-out.txt", test.left_out)
    (out / "labelled.json").write_text(json.dumps({
        "indices": labelled.tolist(), "files": [data.files[i] for i in labelled], "classes": data.classes,
        "labels": data.labels[labelled].tolist(), "root": str(data.root)}))
    log_metrics = functools.partial(runs.log, out / "metrics.jsonl")
    print(f"{mode} {backbone.name} ResNet18 + linear head at {image_size} px from a {cache_size} px cache, "
          f"{len(labelled):,} labelled images, {test.name}, on {device} ({runtime.precision})")

    images, labels = dataset.cache_on_device(data.images, device), data.labels.to(device)
    test_images = images if args.test_data is None else dataset.cache_on_device(test.images, device)
    validation, scored = splits.validation, len(splits.validation) > 0  # the probes' settings are chosen on it

    def features(indices: torch.Tensor, of: torch.Tensor = images) -> torch.Tensor:  # (N, 512), evaluation view
        return evaluate.embed(classifier.backbone, of, indices, image_size, runtime)

    def head_accuracy(x: torch.Tensor, indices: torch.Tensor) -> float:  # the head in eval mode on fixed features
        classifier.head.eval()  # classifier.train() at the next epoch sets it back
        with torch.no_grad():
            return evaluate.accuracy(classifier.head(x), labels[indices]).item()

    validation_features = features(validation) if scored and not args.finetune else None  # frozen: fixed
    generator, bar = runs.generator(device, args.seed), tqdm(range(args.epochs), desc="classifier", unit="epoch")
    for epoch in bar:  # per epoch only the labelled images' figures: the test set is seen once, last
        classifier.train()
        classifier.backbone.train(args.finetune)  # frozen: BatchNorm statistics must not move
        losses, accuracies = [], []  # 0-dim tensors on the device: no wait for the GPU within the epoch
        for step, indices in enumerate(dataset.epoch_batches(labelled, batch_size, generator)):
            lrs = model.set_lr(optimizer, epoch * steps_per_epoch + step, args.epochs * steps_per_epoch)
            x = augment.crop_flip_view(dataset.gather(images, indices, device), image_size, generator)
            targets = labels[indices.to(device)]
            with runtime.autocast():
                logits = classifier(x.contiguous(memory_format=runtime.memory_format)).float()  # (B, K)
                loss = F.cross_entropy(logits, targets)
            optimizer.zero_grad(set_to_none=True)
            runtime.backward_step(loss, optimizer)
            losses.append(loss.detach())
            accuracies.append((logits.argmax(1) == targets).float().mean())
        train_loss, train_accuracy = torch.stack(losses).mean().item(), torch.stack(accuracies).mean().item()
        if not math.isfinite(train_loss) or not model.finite_state(classifier):
            raise UserError(f"non-finite training loss at epoch {epoch + 1}: stopped, nothing saved. Lower --lr "
                            f"(or --backbone-lr-factor)")
        bar.set_postfix(train_loss=f"{train_loss:.3f}", train_accuracy=f"{train_accuracy:.3f}")
        log_metrics(epoch=epoch + 1, train_loss=train_loss, train_accuracy=train_accuracy, lr=lrs["head"],
                    **({"backbone_lr": lrs["backbone"]} if args.finetune else {}),
                    **({} if validation_features is None else
                       {"validation_accuracy": head_accuracy(validation_features, validation)}))
    labelled_features, test_features = features(labelled), features(test.indices, test_images)  # evaluation view
    if scored and validation_features is None:  # fine-tuned: the backbone moved
        validation_features = features(validation)
    fitted = {"labelled_accuracy": head_accuracy(labelled_features, labelled),  # does the head fit its labels?
              **({"validation_accuracy": head_accuracy(validation_features, validation)} if scored else {})}
    with torch.no_grad():
        test_logits = classifier.head(test_features)  # (M, K), the head in eval mode
    test_accuracy = evaluate.accuracy(test_logits, test.labels).item()
    closed_form = {}  # frozen only: it would measure the backbone before fine-tuning
    if not args.finetune and torch.bincount(data.labels[labelled]).min() >= 2:  # its penalty is cross-validated
        closed_form = {f"closed_form_{key.removeprefix('test_')}": value for key, value in evaluate.logistic_probe(
            labelled_features, labels[labelled], test_features, test.labels, len(data.classes), seed=args.seed,
            validation=(validation_features, labels[validation]) if scored else None).items()}
    elif not args.finetune:
        print("note: no closed-form probe: choosing its penalty needs 2 labelled images per class (--labels)")

    model.save_checkpoint(out / "classifier.pt", "classifier", classifier, classes=data.classes,
                          args={**runs.plain_args(args), "image_size": image_size, "cache_size": cache_size},
                          labelled_indices=labelled.tolist(), environment=runs.environment(device))
    predictions = {"test_set": test.name, "test_fingerprint": test.fingerprint, "left_out": test.left_out,
                   "root": str(args.test_data.resolve() if args.test_data else data.root), "classes": data.classes,
                   "files": test.files, "labels": test.labels.tolist(), "head": test_logits.argmax(1).tolist(),
                   **({"closed_form": closed_form.pop("closed_form_predictions")} if closed_form else {})}
    (out / "predictions.json").write_text(json.dumps(predictions))
    log_metrics(event="final", test_accuracy=test_accuracy, num_test=len(test.indices), test_set=test.name,
                num_left_out=len(test.left_out), **fitted, **closed_form)
    runs.keep_run(out)
    if closed_form:
        print(f"closed-form probe (logistic regression, penalty {closed_form['closed_form_penalty']:.0e} by "
              f"{closed_form['closed_form_folds']}-fold CV log-loss on the labels): "
              f"{closed_form['closed_form_accuracy']:.4f}")
    compared = [] if other is None else evaluate.paired_differences(predictions, other)
    for probe, difference in compared:
        print(f"{probe}, this run - {args.compare}: {difference}")
    if other is not None and not compared:
        print(f"note: --compare {args.compare} tested no image of this run's test set, or another probe: not compared")
    error = evaluate.standard_error(test_accuracy, len(test.indices))
    print(f"{'fine-tuned' if args.finetune else 'linear probe'}: {fitted['labelled_accuracy']:.4f} of its "
          f"{len(labelled):,} labelled images (evaluation view)" + (
              f", {fitted['validation_accuracy']:.4f} of {len(validation):,} validation images" if scored else ""))
    print(f"test accuracy: {test_accuracy:.4f} ± {error:.4f} (standard error) on {test.name}"
          + f" ({len(test.left_out):,} copies of photos trained on left out)" * bool(test.left_out))

if __name__ == "__main__":
    main()
