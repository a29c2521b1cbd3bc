"""Pictures of what a backbone learned, a random-init one beside a SimSiam checkpoint's, into --out: views.png (views
x1, x2 of pretraining images as train.py's step draws them), neighbours.png (test images and their nearest pretraining
images by cosine similarity of features, green where the class agrees), features.png (test features on 2 components).

    python pictures.py --demo --device cpu              # after `python train.py --demo`: seconds on a CPU
    python pictures.py --demo --random --device cpu     # a random-init backbone alone, no checkpoint
    python pictures.py --data data/PetImages            # runs/simsiam/siam.pt -> runs/plots/*.png

Pass train.py's data flags. Image and cache size follow the checkpoint unless --image-size or --cache-size say so."""
import argparse
from pathlib import Path

import torch
from matplotlib import rc_context
from matplotlib.figure import Figure  # drawn to files without pyplot, so no backend is chosen

import augment
import dataset
import evaluate
import model
import runs

DPI, THUMBNAIL = 120, 1.25  # inches per image: 150 px
VIEW_IMAGES, VIEW_PAIRS, QUERIES, K = 6, 3, 6, 5  # views.png rows, pairs a row; neighbours.png rows, neighbours a row

def parse_args(argv=None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    runs.add_data_arguments(parser)
    group = parser.add_argument_group("backbone and pictures")
    evaluate.add_backbone_arguments(group)  # beside a random-init one
    group.add_argument("--out", type=Path, default=Path("runs/plots"), help="folder of the PNGs (default: %(default)s)")
    runs.add_run_arguments(group)
    return runs.parse(parser, argv, {})

def agreement(neighbours: torch.Tensor, bank_labels: torch.Tensor, query_labels: torch.Tensor) -> float:
    """Share of the (Q, k) neighbours (indices into bank_labels) whose label is their query's."""
    return (bank_labels[neighbours] == query_labels[:, None]).float().mean().item()

def pca_2d(features: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """((N, 2) coordinates, (2,) shares of the variance) of the centred (N, D) features on their first two principal
    components (torch.pca_lowrank: randomised, seeded by torch's global generator; 10 estimated sharpen the two)."""
    centred = features.double() - features.double().mean(dim=0)
    _, singular_values, components = torch.pca_lowrank(centred, q=min(10, *centred.shape), center=False)
    shares = singular_values[:2].square() / centred.square().sum()  # NaN for a collapsed backbone's equal features
    return (centred @ components[:, :2]).float(), shares.float()

def thumbnails(rows: int, columns: int, title: str):
    figure = Figure(figsize=(THUMBNAIL * columns, THUMBNAIL * 1.25 * rows + 0.7), layout="constrained")
    figure.suptitle(title, fontsize=10)
    return figure, figure.subplots(rows, columns, squeeze=False)

def show(axis, image: torch.Tensor, title: str = "", label: str = "", frame: str | None = None) -> None:
    """One thumbnail of a uint8 (3, H, W) image or a normalised float view, framed in `frame`'s colour."""
    mean, std = (torch.tensor(value)[:, None, None] for value in (augment.MEAN, augment.STD))
    image = image.cpu().float() / 255 if image.dtype == torch.uint8 else (image.cpu().float() * std + mean).clamp(0, 1)
    axis.imshow(image.permute(1, 2, 0).numpy(), interpolation="nearest")
    axis.set_title(title, fontsize=9)
    axis.set_xlabel(label, fontsize=8)
    axis.set(xticks=[], yticks=[])
    for spine in axis.spines.values():
        spine.set(visible=frame is not None, edgecolor=frame or "black", linewidth=4)

@runs.reports_errors
@rc_context({"text.parse_math": False})  # names drawn as written: a $ would start matplotlib's mathtext
def main(argv=None) -> None:
    args = parse_args(argv)
    if not args.demo and args.out.resolve().is_relative_to(args.data.resolve()):
        raise model.UserError(f"--out {args.out} lies inside --data {args.data}: its PNGs would be read as photos")
    runtime, chosen = runs.make_runtime(args.device, args.precision), evaluate.backbone_source(args)
    checkpoint, image_size, cache_size = chosen.checkpoint, chosen.image_size, chosen.cache_size
    data, splits = dataset.open_data(argparse.Namespace(**{**vars(args), "image_size": image_size,
                                                           "cache_size": cache_size}))
    if checkpoint is not None:
        evaluate.check_unseen(checkpoint, args.checkpoint, data.hashes[splits.test])
    device, bank, test = runtime.device, splits.pretrain, splits.test
    images = dataset.cache_on_device(data.images, device)
    torch.manual_seed(args.seed)  # the random-init backbone, the PCA and which images are pictured
    backbones = {"random-init": model.resnet18_backbone()}
    if chosen.weights is not None:
        backbones[{"simsiam": "SimSiam", "imagenet": "ImageNet"}.get(chosen.name, chosen.path.name)] = chosen.load(
            model.resnet18_backbone())
    backbones = {name: backbone.to(device, memory_format=runtime.memory_format) for name, backbone in backbones.items()}
    args.out.mkdir(parents=True, exist_ok=True)
    print(f"{' and '.join(backbones)} at {image_size} px ({cache_size} px cache) on {device}, {runtime.precision}")
    batch = dataset.gather(images, bank[torch.randperm(len(bank))[:VIEW_IMAGES]], device)  # (R, 3, S, S) uint8
    generator, blur = runs.generator(device, args.seed), checkpoint and checkpoint["args"].get("blur_reference_size")
    views = [augment.simsiam_view(batch, image_size, generator, blur or augment.BLUR_REFERENCE_SIZE)
             for _ in range(2 * VIEW_PAIRS)]  # x1, x2 of pair 1, x1, x2 of pair 2, ...
    figure, axes = thumbnails(len(batch), 1 + len(views), f"SimSiam's views x1, x2 of pretraining images, drawn as "
                              f"in train.py's step\n({image_size} px from the {cache_size} px cache, seed {args.seed})")
    for row, image in enumerate(batch):
        show(axes[row, 0], image, "cached" * (row == 0))
        for i, view in enumerate(views):
            show(axes[row, 1 + i], view[row], f"x{1 + i % 2} of pair {1 + i // 2}" * (row == 0))
    figure.savefig(args.out / "views.png", dpi=DPI)
    print(f"wrote {args.out / 'views.png'}: {len(batch)} pretraining images, {VIEW_PAIRS} pairs of views each")
    labels, k = data.labels.tolist(), min(K, len(bank))  # neighbours.png: test images' k nearest pretraining images
    names = [dataset.shown(name) for name in data.classes]
    queries, test_features, panels, summary = torch.randperm(len(test))[:QUERIES], {}, {}, []  # positions in test
    for name, backbone in backbones.items():
        test_features[name] = evaluate.embed(backbone, images, test, image_size, runtime).cpu()  # (T, 512)
        bank_features = evaluate.embed(backbone, images, bank, image_size, runtime).cpu()  # (B, 512)
        similarities, neighbours = evaluate.nearest(test_features[name], bank_features, k)  # (T, k)
        summary.append(f"{name} {agreement(neighbours, data.labels[bank], data.labels[test]):.1%}")
        panels[name] = similarities[queries], bank[neighbours[queries]]
    chance = (torch.bincount(data.labels[bank], minlength=len(names)) / len(bank))[data.labels[test]].mean()
    figure, axes = thumbnails(len(queries), 1 + k * len(panels), f"the {k} nearest of {len(bank):,} pretraining images "
                              f"by cosine similarity of features, green where the class agrees\nagreeing over all "
                              f"{len(test):,} test images: {', '.join(summary)} (chance {chance:.1%})")
    for row, query in enumerate(test[queries].tolist()):
        show(axes[row, 0], data.images[query], "test image" * (row == 0), names[labels[query]])
        for panel, (name, (similarities, neighbours)) in enumerate(panels.items()):
            for j, index in enumerate(neighbours[row].tolist()):
                show(axes[row, 1 + panel * k + j], data.images[index], f"{name} #{j + 1}" * (row == 0),
                     f"{names[labels[index]]} {similarities[row, j]:.3f}",
                     "tab:green" if labels[index] == labels[query] else "tab:red")
    figure.savefig(args.out / "neighbours.png", dpi=DPI)
    print(f"wrote {args.out / 'neighbours.png'}: neighbours of the test image's class, {', '.join(summary)}")
    figure = Figure(figsize=(6 * len(backbones), 5.4), layout="constrained")  # features.png: test features in 2-d
    figure.suptitle(f"features of the {len(test):,} test images on their first two principal components", fontsize=10)
    for axis, (name, features) in zip(figure.subplots(1, len(backbones), squeeze=False)[0], test_features.items()):
        coordinates, shares = pca_2d(features)
        points = [axis.scatter(*coordinates[data.labels[test] == label].T, s=14, alpha=0.7, color=f"C{label}",
                               edgecolors="none") for label in range(len(names))]
        axis.legend(points, names, fontsize=9, markerscale=1.5)  # names given: a leading _ would hide a class
        axis.set(title=f"{name} backbone: PC1 {shares[0]:.0%} + PC2 {shares[1]:.0%} of the variance",
                 xlabel="principal component 1", ylabel="principal component 2")
        axis.set_aspect("equal", adjustable="datalim")  # distances on the page are distances in feature space
    figure.savefig(args.out / "features.png", dpi=DPI)
    print(f"wrote {args.out / 'features.png'}: the test features of {' and '.join(backbones)} on 2 principal axes")

if __name__ == "__main__":
    main()
