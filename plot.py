"""Curves from run folders: what the original repository plotted (SimSiam loss, classifier training loss)
and what it lacked (the collapse metric, kNN accuracy during pretraining, held-out test accuracy).

    python plot.py                                   # every run under runs/, PNGs into runs/plots
    python plot.py runs/simsiam runs/classifier-random-frozen runs/classifier-simsiam-frozen --out figures

Writes OUT/simsiam.png (loss, z-std against 1/sqrt(d), kNN accuracy per epoch) and OUT/classifier.png
(train loss and test accuracy per epoch, random against SimSiam backbones on shared axes).
Reads only the files runs leave: args.json and metrics.jsonl.
"""
from __future__ import annotations

import argparse
import json
import math
from pathlib import Path

import matplotlib

matplotlib.use("Agg")  # files only, no display needed
import matplotlib.pyplot as plt  # noqa: E402

import cli  # noqa: E402
from model import PROJECTION_DIM  # noqa: E402

COLOURS = {"random": ["tab:gray", "black", "silver"],  # per backbone, one colour per run in turn
           "simsiam": ["tab:blue", "tab:orange", "tab:green", "tab:red", "tab:purple", "tab:brown"]}
LINESTYLES = {"frozen": "-", "finetune": "--"}


def parse_args(argv=None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("runs", type=Path, nargs="*", help="run folders (default: every run under runs/)")
    parser.add_argument("--out", type=Path, default=Path("runs/plots"), help="folder for the PNGs")
    return parser.parse_args(argv)


def load_runs(folders: list[Path]) -> tuple[list[dict], list[dict]]:
    """(SimSiam runs, classifier runs), each {"name", "args", "epochs": [per-epoch records]}."""
    pretraining, classifiers = [], []
    for folder in folders:
        if not (folder / "metrics.jsonl").is_file() or not (folder / "args.json").is_file():
            continue
        try:
            run_args = json.loads((folder / "args.json").read_text())
        except (OSError, UnicodeDecodeError, json.JSONDecodeError):
            print(f"skipped {folder}: its args.json is unreadable (a run still starting, or killed while writing it)")
            continue
        run = {"name": folder.name, "args": run_args,
               "epochs": [r for r in cli.read_jsonl(folder / "metrics.jsonl") if isinstance(r.get("epoch"), int)]}
        (classifiers if "backbone" in run["args"] else pretraining).append(run)
    return pretraining, classifiers


def series(run: dict, key: str) -> tuple[list[int], list[float]]:
    """(epochs, values) of the records that hold `key`."""
    records = [r for r in run["epochs"] if key in r]
    return [r["epoch"] for r in records], [r[key] for r in records]


def plot_pretraining(pretraining: list[dict], path: Path) -> None:
    figure, (loss_axis, std_axis, knn_axis) = plt.subplots(1, 3, figsize=(15, 4), sharex=True)
    for run in pretraining:
        loss_axis.plot(*series(run, "loss"), label=run["name"])
        std_axis.plot(*series(run, "z_std"), label=run["name"])
        knn_axis.plot(*series(run, "knn_accuracy"), label=run["name"])
    loss_axis.axhline(-1, color="black", linewidth=0.5)
    loss_axis.set(title="SimSiam loss (minimum -1)", xlabel="epoch", ylabel="D(p1, z2)/2 + D(p2, z1)/2")
    std_axis.axhline(1 / math.sqrt(PROJECTION_DIM), color="tab:green", linestyle=":",
                     label=f"1/sqrt(d) = {1 / math.sqrt(PROJECTION_DIM):.4f}, healthy")
    std_axis.set(title="collapse metric: std of l2-normalised z (0 = collapsed)", xlabel="epoch", ylabel="z-std",
                 ylim=(0, 1.5 / math.sqrt(PROJECTION_DIM)))
    knn_axis.set(title="kNN accuracy, test split (bank: labelled subset)", xlabel="epoch",
                 ylabel="accuracy")
    for axis in (loss_axis, std_axis, knn_axis):
        axis.grid(alpha=0.3)
        axis.legend(fontsize=8)
    figure.tight_layout()
    figure.savefig(path, dpi=120)
    plt.close(figure)


def plot_classifiers(classifiers: list[dict], path: Path) -> None:
    figure, (loss_axis, accuracy_axis) = plt.subplots(1, 2, figsize=(11, 4), sharex=True)
    used = {backbone: 0 for backbone in COLOURS}
    for run in sorted(classifiers, key=lambda r: r["name"]):
        backbone, mode = run["args"]["backbone"], run["args"]["mode"]
        colours = COLOURS[backbone]
        style = {"color": colours[used[backbone] % len(colours)], "linestyle": LINESTYLES.get(mode, "-"),
                 "label": f"{backbone} backbone, {mode} ({run['name']})"}
        used[backbone] += 1
        loss_axis.plot(*series(run, "train_loss"), **style)
        accuracy_axis.plot(*series(run, "test_accuracy"), **style)
    loss_axis.set(title="classifier training loss (labelled subset)", xlabel="epoch", ylabel="cross-entropy")
    accuracy_axis.set(title="test accuracy (held-out split)", xlabel="epoch", ylabel="accuracy")
    for axis in (loss_axis, accuracy_axis):
        axis.grid(alpha=0.3)
        axis.legend(fontsize=8)
    figure.tight_layout()
    figure.savefig(path, dpi=120)
    plt.close(figure)


@cli.reports_errors
def main(argv=None) -> None:
    args = parse_args(argv)
    folders = args.runs or sorted(p.parent for p in Path("runs").glob("*/metrics.jsonl"))
    pretraining, classifiers = load_runs(folders)
    if not pretraining and not classifiers:
        raise cli.RunError(f"no runs found in {[str(f) for f in folders] or 'runs/'}: run train.py and "
                           f"classifier.py first")
    cli.writable_folder(args.out, "--out")
    written = []
    if pretraining:
        plot_pretraining(pretraining, args.out / "simsiam.png")
        written.append(args.out / "simsiam.png")
    if classifiers:
        plot_classifiers(classifiers, args.out / "classifier.png")
        written.append(args.out / "classifier.png")
    print("wrote " + ", ".join(str(path) for path in written))


if __name__ == "__main__":
    main()
