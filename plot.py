"""Curves from run folders: what the original repository plotted (SimSiam loss, classifier training loss)
and what it lacked (the collapse metric, kNN accuracy during pretraining, held-out test accuracy).

    python plot.py                                   # every run under runs/, PNGs into runs/plots
    python plot.py runs/simsiam runs/classifier-random-frozen runs/classifier-simsiam-frozen --out figures

Writes OUT/simsiam.png (loss, z-std against 1/sqrt(d), kNN accuracy per epoch) and OUT/classifier.png
(train loss and test accuracy per epoch, random against SimSiam backbones on shared axes, chance level, each
run's final value in its legend entry; a title says so when the runs were tested on different test sets), then
prints the finished classifier runs as a table: backbone, probe, test accuracy ± its standard error, test images.
Reads only the files runs leave: args.json and metrics.jsonl.
"""
from __future__ import annotations

import argparse
import json
import math
from pathlib import Path

from matplotlib.figure import Figure  # drawn to files without pyplot, so no backend is chosen
from matplotlib.ticker import MaxNLocator

import cli
import evaluate
import figures
import runs
from model import PROJECTION_DIM



def parse_args(argv=None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("runs", type=Path, nargs="*", help="run folders (default: every run under runs/)")
    parser.add_argument("--out", type=Path, default=Path("runs/plots"), help="folder for the PNGs")
    return parser.parse_args(argv)


def load_runs(folders: list[Path]) -> tuple[list[dict], list[dict]]:
    """(SimSiam runs, classifier runs), each {"name", "args", "epochs": [per-epoch records], "final": the
    classifier's closing record or None}."""
    pretraining, classifiers = [], []
    for folder in folders:
        if not (folder / "metrics.jsonl").is_file() or not (folder / "args.json").is_file():
            continue
        try:
            run_args = json.loads((folder / "args.json").read_text())
        except (OSError, UnicodeDecodeError, json.JSONDecodeError):
            print(f"skipped {folder}: its args.json is unreadable (a run still starting, or killed while writing it)")
            continue
        records = runs.read_jsonl(folder / "metrics.jsonl")
        run = {"name": folder.name, "args": run_args,
               "epochs": [r for r in records if isinstance(r.get("epoch"), int)],
               "final": runs.final_of(records)}
        (classifiers if "backbone" in run["args"] else pretraining).append(run)
    return pretraining, classifiers


def series(run: dict, key: str) -> tuple[list[int], list[float]]:
    """(epochs, values) of the records that hold `key`."""
    records = [r for r in run["epochs"] if key in r]
    return [r["epoch"] for r in records], [r[key] for r in records]


def last(run: dict, key: str) -> str:
    """The run's last value of `key`, for its legend entry."""
    values = series(run, key)[1]
    return f": {values[-1]:.3f}" if values else ""


def test_sets_note(runs: list[dict]) -> str:
    """A warning for a title when the runs were evaluated on different test sets (their accuracies are then not
    comparable), else ""."""
    fingerprints = {run["args"].get("test_fingerprint") for run in runs}
    return "\nWARNING: these runs were evaluated on different test sets" if len(fingerprints) > 1 else ""


def chance_line(axis, runs: list[dict]) -> None:
    """A grey line at the accuracy of guessing, 1 / classes, when the runs agree on the number of classes."""
    classes = {run["args"].get("num_classes") for run in runs}
    if len(classes) == 1 and None not in classes:
        axis.axhline(1 / classes.pop(), color="grey", linestyle=":", label="chance")


def finish(figure, axes, path: Path) -> None:
    for axis in axes:
        axis.grid(alpha=0.3)
        axis.xaxis.set_major_locator(MaxNLocator(integer=True))  # epochs are whole numbers
        axis.legend(fontsize=8)
    figure.tight_layout()
    figure.savefig(path, dpi=120)


def plot_pretraining(pretraining: list[dict], path: Path) -> None:
    figure = Figure(figsize=(15, 4.4))
    loss_axis, std_axis, knn_axis = figure.subplots(1, 3, sharex=True)
    for run in pretraining:
        loss_axis.plot(*series(run, "loss"), label=run["name"] + last(run, "loss"))
        std_axis.plot(*series(run, "z_std"), label=run["name"] + last(run, "z_std"))
        knn_axis.plot(*series(run, "knn_accuracy"), label=run["name"] + last(run, "knn_accuracy"))
    loss_axis.axhline(-1, color="black", linewidth=0.5)
    loss_axis.set(title="SimSiam loss (minimum -1)", xlabel="epoch", ylabel="D(p1, z2)/2 + D(p2, z1)/2")
    std_axis.axhline(1 / math.sqrt(PROJECTION_DIM), color="tab:green", linestyle=":",
                     label=f"1/sqrt(d) = {1 / math.sqrt(PROJECTION_DIM):.4f}, healthy")
    std_axis.set(title="collapse metric: std of l2-normalised z (0 = collapsed)", xlabel="epoch", ylabel="z-std",
                 ylim=(0, 1.5 / math.sqrt(PROJECTION_DIM)))
    chance_line(knn_axis, pretraining)
    knn_axis.set(title="kNN accuracy, test split (bank: labelled subset)" + test_sets_note(pretraining),
                 xlabel="epoch", ylabel="accuracy")
    finish(figure, (loss_axis, std_axis, knn_axis), path)


def plot_classifiers(classifiers: list[dict], path: Path) -> None:
    figure = Figure(figsize=(12, 4.4))
    loss_axis, accuracy_axis = figure.subplots(1, 2, sharex=True)
    used = {backbone: 0 for backbone in figures.COLOURS}
    for run in sorted(classifiers, key=lambda r: r["name"]):
        backbone, mode = run["args"]["backbone"], run["args"]["mode"]
        colours = figures.COLOURS[backbone]
        style = {"color": colours[used[backbone] % len(colours)], "linestyle": figures.LINESTYLES.get(mode, "-")}
        used[backbone] += 1
        name = f"{backbone} backbone, {mode} ({run['name']})"
        loss_axis.plot(*series(run, "train_loss"), **style, label=name + last(run, "train_loss"))
        accuracy_axis.plot(*series(run, "test_accuracy"), **style, label=name + last(run, "test_accuracy"))
    chance_line(accuracy_axis, classifiers)
    loss_axis.set(title="classifier training loss (labelled subset)", xlabel="epoch", ylabel="cross-entropy")
    test_set = classifiers[0]["args"].get("test_set", "held-out split")
    note = test_sets_note(classifiers)
    accuracy_axis.set(title=f"test accuracy ({'several test sets' if note else test_set}){note}",
                      xlabel="epoch", ylabel="accuracy")
    finish(figure, (loss_axis, accuracy_axis), path)


def results_table(classifiers: list[dict]) -> list[str]:
    """The finished classifier runs as a table: backbone, probe, test accuracy ± its standard error, test set."""
    rows = []
    for run in sorted(classifiers, key=lambda r: r["name"]):
        final = run["final"]
        if final is None:
            continue
        backbone, mode = run["args"]["backbone"], run["args"]["mode"]
        probes = [("fine-tuned" if mode == "finetune" else "linear probe", final["test_accuracy"])]
        if "closed_form_accuracy" in final:
            probes.append(("closed-form probe", final["closed_form_accuracy"]))
        for probe, accuracy in probes:
            error = evaluate.standard_error(accuracy, final["num_test"])
            rows.append(f"{backbone:8} {probe:18} {accuracy:8.3f} ± {error:.3f}   {final['num_test']:>6,}   "
                        f"{run['name']}")
    if not rows:
        return []
    header = f"{'backbone':8} {'probe':18} {'accuracy':>8} ± s.e.    {'test':>6}   run"
    return [header, *rows]


@cli.reports_errors
def main(argv=None) -> None:
    args = parse_args(argv)
    folders = args.runs or sorted(p.parent for p in Path("runs").glob("*/metrics.jsonl"))
    pretraining, classifiers = load_runs(folders)
    if not pretraining and not classifiers:
        raise runs.RunError(f"no runs found in {[str(f) for f in folders] or 'runs/'}: run train.py and "
                            f"classifier.py first")
    runs.writable_folder(args.out, "--out")
    written = []
    if pretraining:
        plot_pretraining(pretraining, args.out / "simsiam.png")
        written.append(args.out / "simsiam.png")
    if classifiers:
        plot_classifiers(classifiers, args.out / "classifier.png")
        written.append(args.out / "classifier.png")
    print("wrote " + ", ".join(str(path) for path in written))
    table = results_table(classifiers)
    if table:
        print("\n" + "\n".join(table) + test_sets_note(classifiers))


if __name__ == "__main__":
    main()
