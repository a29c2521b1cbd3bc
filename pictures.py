"""Pictures of what the backbone learned, from a SimSiam checkpoint and the cache: the augmented views it was
trained on, the nearest neighbours of test images, and a 2-D map of the test features, each for a random-init
backbone beside the SimSiam one.

    python pictures.py --demo                                     # after `train.py --demo`: seconds on a CPU
    python pictures.py --data data/PetImages                      # runs/simsiam/siam.pt -> runs/plots/*.png
    # after train.py's CPU command, with its data flags (so its split), the image size read from the checkpoint:
    python pictures.py --data ../shared/data/cats-vs-dogs/PetImages --limit 1000 --device cpu

Writes, into --out:
    views.png       cached pretraining images, each beside pairs of views x1, x2 drawn as train.py draws them
                    (augment.simsiam_view twice per pair), de-normalised for display
    neighbours.png  test images and their nearest pretraining images by cosine similarity of backbone features,
                    framed green where the class agrees with the test image's, red where not; each panel's
                    title gives the share of agreeing neighbours over every test image
    features.png    the test images' backbone features projected on their first two principal components,
                    coloured by class, with the share of the variance the two components explain
The data flags must give the split the checkpoint was pretrained with (the same as train.py's); another test
split is refused. The resolution follows the checkpoint unless --image-size or --cache-size say otherwise.
"""
from __future__ import annotations

import argparse
import textwrap
from pathlib import Path

import torch
from matplotlib.figure import Figure  # drawn to files without pyplot, so no backend is chosen

from simsiam import augment, cli, dataset, devices, evaluate, pretrained, runs
from simsiam.model import resnet18_backbone

DEMO = {}  # no preset beyond --demo's data: the pictures follow the checkpoint of `train.py --demo`
DPI = 120  # as plot.py
THUMBNAIL = 1.25  # inches per image: 150 px at DPI
AGREE, DISAGREE = "tab:green", "tab:red"  # neighbour frames
PCA_RANK = 10  # components torch.pca_lowrank estimates; the first two are kept (oversampling sharpens them)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    cli.add_data_arguments(parser)
    group = parser.add_argument_group("backbone")
    group.add_argument("--checkpoint", type=Path, default=Path("runs/simsiam/siam.pt"),
                       help="SimSiam checkpoint whose backbone to picture (default: %(default)s, train.py's output)")
    group.add_argument("--image-size", type=cli.image_size, default=None,
                       help="side of the network's input in px (default: the checkpoint's, with its --cache-size)")
    group = parser.add_argument_group("pictures")
    group.add_argument("--view-images", type=cli.positive(int), default=6,
                       help="pretraining images (rows) in views.png (default: %(default)s)")
    group.add_argument("--view-pairs", type=cli.positive(int), default=3,
                       help="pairs of views x1, x2 per image in views.png (default: %(default)s)")
    group.add_argument("--queries", type=cli.positive(int), default=6,
                       help="test images (rows) shown in neighbours.png; the agreement in its titles is over "
                            "every test image (default: %(default)s)")
    group.add_argument("--k", type=cli.positive(int), default=5,
                       help="neighbours per test image (default: %(default)s)")
    group.add_argument("--bank-size", type=cli.positive(int), default=None,
                       help="search the neighbours among a seeded subset of this many pretraining images "
                            "(default: all of them; fewer is faster on a CPU at full size)")
    group = parser.add_argument_group("run")
    group.add_argument("--out", type=Path, default=Path("runs/plots"),
                       help="folder for the PNGs; files of the same names are replaced (default: %(default)s)")
    cli.add_run_arguments(group)
    return parser


def parse_args(argv=None) -> argparse.Namespace:
    return cli.parse(build_parser(), argv, DEMO)


# ---------------------------------------------------------------- numbers


def agreement(neighbours: torch.Tensor, bank_labels: torch.Tensor, query_labels: torch.Tensor) -> float:
    """Share of the (Q, k) neighbour indices into `bank_labels` whose label is their query's."""
    return (bank_labels[neighbours] == query_labels[:, None]).float().mean().item()


def pca_2d(features: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """((N, 2) coordinates, (2,) shares of the total variance) of the (N, D) features, centred, on their first two
    principal components (torch.pca_lowrank, randomised: seeded by torch's global generator)."""
    centred = features.double() - features.double().mean(dim=0)
    _, singular_values, components = torch.pca_lowrank(centred, q=min(PCA_RANK, *centred.shape), center=False,
                                                       niter=4)
    total = centred.square().sum()
    shares = singular_values[:2].square() / total if total > 0 else torch.zeros(2, dtype=centred.dtype)
    return (centred @ components[:, :2]).float(), shares.float()


def displayable(images: torch.Tensor) -> torch.Tensor:
    """(B, H, W, 3) floats in [0, 1] for imshow, from uint8 (B, 3, H, W) or normalised float views."""
    if images.dtype == torch.uint8:
        return images.permute(0, 2, 3, 1).cpu().float() / 255
    mean = torch.tensor(augment.MEAN, device=images.device).view(1, 3, 1, 1)
    std = torch.tensor(augment.STD, device=images.device).view(1, 3, 1, 1)
    return (images * std + mean).clamp(0, 1).permute(0, 2, 3, 1).cpu()


# ---------------------------------------------------------------- figures


def wrapped(text: str, inches: float, fontsize: float) -> str:
    """`text` with each line broken to fit `inches` at `fontsize` points (DejaVu Sans averages about 0.6 em a
    character), so that a title never runs off a narrow figure."""
    width = max(12, int(inches * 72 / (0.6 * fontsize)))
    return "\n".join(textwrap.fill(line, width) for line in text.splitlines())


def show(axis, image: torch.Tensor, frame: str | None = None, label: str | None = None, title: str | None = None):
    """One thumbnail without ticks, its pixels as they are (no smoothing), framed in `frame`'s colour."""
    axis.imshow(image.numpy(), interpolation="nearest")
    axis.set_xticks([])
    axis.set_yticks([])
    for spine in axis.spines.values():
        spine.set_visible(frame is not None)
        if frame is not None:
            spine.set_edgecolor(frame)
            spine.set_linewidth(4)
    if label is not None:
        axis.set_xlabel(label, fontsize=9, labelpad=2)
    if title is not None:
        axis.set_title(title, fontsize=10)


def plot_views(path: Path, originals: torch.Tensor, pairs: list[tuple[torch.Tensor, torch.Tensor]],
               title: str) -> None:
    """Rows: each cached image (B, 3, S, S) uint8, then its views x1, x2 of every pair (normalised floats)."""
    rows = len(originals)
    figure = Figure(figsize=(THUMBNAIL * (1 + 2.2 * len(pairs)), THUMBNAIL * 1.12 * rows + 0.9),
                    layout="constrained")
    figure.suptitle(wrapped(title, figure.get_figwidth(), 11), fontsize=11)
    groups = figure.subfigures(1, 1 + len(pairs), width_ratios=[1] + [2] * len(pairs), wspace=0.04)
    groups[0].suptitle(f"cached ({originals.shape[-1]} px)", fontsize=10)
    for row, (axis, image) in enumerate(zip(groups[0].subplots(rows, 1, squeeze=False)[:, 0],
                                            displayable(originals))):
        show(axis, image)
    for number, (group, (x1, x2)) in enumerate(zip(groups[1:], pairs), start=1):
        group.suptitle(f"pair {number}", fontsize=10)
        axes = group.subplots(rows, 2, squeeze=False)
        for column, views in enumerate((displayable(x1), displayable(x2))):
            for row in range(rows):
                show(axes[row, column], views[row], title=f"x{column + 1}" if row == 0 else None)
    figure.savefig(path, dpi=DPI)


def plot_neighbours(path: Path, data: dataset.ImageSet, queries: torch.Tensor, panels: dict, title: str) -> None:
    """Rows: each test image (`queries`: indices into data), then, per panel {heading: (similarities (Q, k),
    indices into data (Q, k))}, its neighbours framed by class agreement and labelled with class and similarity."""
    rows, k = len(queries), next(iter(panels.values()))[1].shape[1]
    figure = Figure(figsize=(THUMBNAIL * (1 + 1.08 * k * len(panels)), THUMBNAIL * 1.3 * rows + 1.0),
                    layout="constrained")
    figure.suptitle(wrapped(title, figure.get_figwidth(), 11), fontsize=11)
    groups = figure.subfigures(1, 1 + len(panels), width_ratios=[1] + [k] * len(panels), wspace=0.05)
    groups[0].suptitle("test image", fontsize=10)
    labels = data.labels.tolist()
    for axis, index in zip(groups[0].subplots(rows, 1, squeeze=False)[:, 0], queries.tolist()):
        show(axis, displayable(data.images[index:index + 1])[0], label=dataset.shown(data.classes[labels[index]]))
    for group, (heading, (similarities, neighbours)) in zip(groups[1:], panels.items()):
        group.suptitle(wrapped(heading, THUMBNAIL * k, 10), fontsize=10)
        axes = group.subplots(rows, k, squeeze=False)
        for row, query in enumerate(queries.tolist()):
            for column, index in enumerate(neighbours[row].tolist()):
                show(axes[row, column], displayable(data.images[index:index + 1])[0],
                     frame=AGREE if labels[index] == labels[query] else DISAGREE,
                     label=f"{dataset.shown(data.classes[labels[index]])} {similarities[row, column]:.3f}",
                     title=f"#{column + 1}" if row == 0 else None)
    figure.savefig(path, dpi=DPI)


def plot_features(path: Path, panels: dict, labels: torch.Tensor, classes: list[str], title: str) -> None:
    """One scatter per panel {heading: ((N, 2) coordinates, (2,) variance shares)}, coloured by class."""
    figure = Figure(figsize=(6 * len(panels), 5.4), layout="constrained")
    axes = figure.subplots(1, len(panels))
    figure.suptitle(wrapped(title, figure.get_figwidth(), 11), fontsize=11)
    for axis, (heading, (coordinates, shares)) in zip(axes, panels.items()):
        for label, name in enumerate(classes):
            points = coordinates[labels == label]
            axis.scatter(points[:, 0], points[:, 1], s=14, alpha=0.7, color=f"C{label}", label=dataset.shown(name),
                         edgecolors="none")
        axis.set_title(f"{heading}\nPC1 {shares[0]:.0%} + PC2 {shares[1]:.0%} of the variance", fontsize=10)
        axis.set(xlabel="principal component 1", ylabel="principal component 2")
        axis.set_aspect("equal", adjustable="datalim")  # distances on the page are distances in feature space
        axis.grid(alpha=0.3)
        axis.legend(fontsize=9, markerscale=1.5)
    figure.savefig(path, dpi=DPI)


# ---------------------------------------------------------------- the run


@cli.reports_errors
def main(argv=None) -> None:
    args = parse_args(argv)
    if not args.demo and args.out.resolve().is_relative_to(args.data.resolve()):
        raise runs.RunError(f"--out {args.out} lies inside --data {args.data}: the next run would read its PNG files "
                            f"as photos; choose a folder outside it")
    out = runs.writable_folder(args.out, "--out")
    runs.writable_folder(args.cache_dir, "--cache-dir")
    runtime = devices.make_runtime(args.device, args.precision)
    device = runtime.device
    checkpoint = pretrained.read(args.checkpoint)
    image_size, cache_size = pretrained.resolution(args.image_size, args.cache_size, checkpoint["args"],
                                                   fallback_image_size=checkpoint["args"]["image_size"])

    data, splits = dataset.open_data(dataset.DataOptions.from_args(args, image_size=image_size, cache_size=cache_size))
    pretrained.check_unseen(checkpoint, args.checkpoint, data.hashes[splits.test])  # its neighbours: test images
    images = dataset.cache_on_device(data.images, device)
    choose = torch.Generator().manual_seed(args.seed)  # which images are pictured
    bank = splits.pretrain
    if args.bank_size is not None and args.bank_size < len(bank):
        bank = bank[torch.randperm(len(bank), generator=choose)[:args.bank_size].sort().values]

    torch.manual_seed(args.seed)  # here, so that the random backbone is resnet18_backbone() right after the seed
    backbones = {"random-init": resnet18_backbone(), "SimSiam": resnet18_backbone()}
    pretrained.load_backbone(checkpoint, backbones["SimSiam"])
    backbones = {name: backbone.to(device, memory_format=runtime.memory_format)
                 for name, backbone in backbones.items()}
    print(f"random-init and SimSiam (epoch {checkpoint.get('epoch')}, pretrained at "
          f"{checkpoint['args']['image_size']} px) ResNet18 at {image_size} px from a {cache_size} px cache; "
          f"{len(splits.test):,} test images, {len(bank):,} pretraining images searched, on {device} "
          f"({runtime.precision})")

    # views.png: the view function of train.py's step, twice per pair, on a generator on the same device
    rows = splits.pretrain[torch.randperm(len(splits.pretrain), generator=choose)[:args.view_images]]
    batch = dataset.gather(images, rows, device)  # (R, 3, S, S) uint8
    generator = devices.generator(device, args.seed)
    blur_reference = checkpoint["args"].get("blur_reference_size", augment.BLUR_REFERENCE_SIZE)  # the run's blur
    pairs = [tuple(augment.simsiam_view(batch, image_size, generator, blur_reference) for _ in range(2))
             for _ in range(args.view_pairs)]
    plot_views(out / "views.png", batch, pairs,
               f"SimSiam's two views x1, x2 of pretraining images\naugment.simsiam_view called twice per pair, as in "
               f"train.py's step ({image_size} px from the {cache_size} px cache, seed {args.seed})")
    print(f"wrote {out / 'views.png'}: {len(rows)} pretraining images, {args.view_pairs} pairs of views each")

    test_labels, bank_labels = data.labels[splits.test], data.labels[bank]
    test_features = {name: evaluate.embed(backbone, images, splits.test, image_size, runtime).cpu()
                     for name, backbone in backbones.items()}  # (T, 512) each
    shown = torch.randperm(len(splits.test), generator=choose)[:args.queries]  # positions in splits.test
    panels, summary = {}, []
    for name, backbone in backbones.items():
        bank_features = evaluate.embed(backbone, images, bank, image_size, runtime).cpu()  # (B, 512)
        similarities, neighbours = evaluate.nearest(test_features[name], bank_features, args.k)  # (T, k)
        share = agreement(neighbours, bank_labels, test_labels)
        summary.append(f"{name} {share:.1%}")
        panels[f"{name} backbone\n{share:.1%} of neighbours agree in class"] = (
            similarities[shown], bank[neighbours[shown]])
    class_shares = torch.bincount(bank_labels, minlength=len(data.classes)).float() / len(bank)
    chance = class_shares[test_labels].mean().item()  # the expected agreement of a neighbour drawn at random
    plot_neighbours(out / "neighbours.png", data, splits.test[shown], panels,
                    f"{min(args.k, len(bank))} nearest of {len(bank):,} pretraining images by cosine similarity of "
                    f"backbone features, framed green where the class agrees\nagreement over all "
                    f"{len(splits.test):,} test images (chance {chance:.1%})")
    print(f"wrote {out / 'neighbours.png'}: neighbours sharing the test image's class, {', '.join(summary)} "
          f"(k {min(args.k, len(bank))}, chance {chance:.1%})")

    maps = {f"{name} backbone": pca_2d(features) for name, features in test_features.items()}
    plot_features(out / "features.png", maps, test_labels, data.classes,
                  f"backbone features of the {len(splits.test):,} test images on their first two principal "
                  f"components\n(centred, torch.pca_lowrank)")
    print(f"wrote {out / 'features.png'}: variance on 2 principal components, "
          + ", ".join(f"{name} {shares.sum():.0%}" for name, (_, shares) in maps.items()))


if __name__ == "__main__":
    main()
