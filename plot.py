"""Curves from run folders: what the original repository plotted (SimSiam loss, classifier training loss)
and what it lacked (the collapse metric, kNN accuracy during pretraining, held-out test accuracy).

    python plot.py                                   # every run under runs/, PNGs into runs/plots
    python plot.py runs/demo --out runs/demo/plots   # the runs in one folder (the quick start's)
    python plot.py runs/simsiam runs/classifier-random-frozen runs/classifier-simsiam-frozen --out figures

Writes OUT/simsiam.png (loss, z-std against 1/sqrt(d), kNN accuracy per epoch) and OUT/classifier.png
(training loss and accuracy on the labelled images per epoch, random against SimSiam backbones on shared axes,
each run's final test accuracy in its legend entry; a warning says so when the runs were tested on different
test sets), then prints the finished classifier runs as a table: backbone, probe, test accuracy ± its standard
error, test images, and for each SimSiam run and random-init run of the same mode tested on the same images the
paired difference of their probes (from predictions.json). Reads only the files runs leave, args.json,
metrics.jsonl and predictions.json; a run whose files are not what runs write is skipped with one line naming the
file and the field.
"""
from __future__ import annotations

import argparse
import json
import math
from pathlib import Path

from matplotlib.figure import Figure  # drawn to files without pyplot, so no backend is chosen
from matplotlib.ticker import MaxNLocator

from simsiam import cli, dataset, evaluate, figures, runs
from simsiam.model import PROJECTION_DIM


def parse_args(argv=None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("runs", type=Path, nargs="*",
                        help="run folders, or folders holding runs at any depth (default: every run under runs/)")
    parser.add_argument("--out", type=Path, default=Path("runs/plots"), help="folder for the PNGs")
    return parser.parse_args(argv)


NUMBERS = ("loss", "z_std", "knn_accuracy", "lr", "images_per_s", "train_loss", "train_accuracy", "test_accuracy",
           "closed_form_accuracy")  # the per-epoch and final fields plot.py draws or tabulates


ACCURACIES = ("knn_accuracy", "train_accuracy", "test_accuracy", "closed_form_accuracy")  # fractions in [0, 1]


def is_number(value) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)


def run_problem(run_args, records: list[dict]) -> str | None:
    """Why a run's files are not what train.py or classifier.py write, naming the file and the field, or None."""
    if not isinstance(run_args, dict):
        return f"args.json holds a {type(run_args).__name__}, not an object"
    if "backbone" in run_args and (run_args["backbone"] not in figures.COLOURS
                                   or not isinstance(run_args.get("mode"), str)):
        return f"args.json fields 'backbone', 'mode' are {run_args.get('backbone')!r}, {run_args.get('mode')!r}"
    for record in records:
        for field in NUMBERS:
            value = record.get(field, 0)
            if not (is_number(value) or (field == "knn_accuracy" and value is None)):  # None: no monitor
                return f"metrics.jsonl field {field!r} is {value!r}, not a number"
    for record in records:
        for field in ACCURACIES:
            if is_number(record.get(field)) and not 0 <= record[field] <= 1:
                return f"metrics.jsonl field {field!r} is {record[field]!r}, not an accuracy between 0 and 1"
    final = runs.final_of(records)
    if final is not None and not (is_number(final.get("test_accuracy")) and isinstance(final.get("num_test"), int)
                                  and final["num_test"] > 0):
        return "metrics.jsonl final record lacks 'test_accuracy' or 'num_test' as numbers"
    return None


def run_folders(paths: list[Path]) -> list[Path]:
    """Each of `paths` that is a run folder, and for one that is not, the run folders anywhere under it (outside
    hidden folders, such as the .replaced of a run being replaced)."""
    folders = []
    for path in paths:
        inside = [] if (path / "metrics.jsonl").is_file() else sorted(
            found.parent for found in path.rglob("metrics.jsonl")
            if not any(part.startswith(".") for part in found.relative_to(path).parts))
        folders += inside or [path]
    return folders


def load_runs(folders: list[Path]) -> tuple[list[dict], list[dict]]:
    """(SimSiam runs, classifier runs), each {"name", "args", "epochs": [per-epoch records], "final": the
    classifier's closing record or None}. A run whose files are not what runs write is skipped, said in one line."""
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
        if (problem := run_problem(run_args, records)) is not None:
            print(f"skipped {folder}: its {problem}")
            continue
        run = {"name": dataset.shown(folder.name), "folder": folder, "args": run_args,
               "epochs": [r for r in records if isinstance(r.get("epoch"), int)], "final": runs.final_of(records)}
        (classifiers if "backbone" in run["args"] else pretraining).append(run)
    return pretraining, classifiers


def series(run: dict, key: str) -> tuple[list[int], list[float]]:
    """(epochs, values) of the records that hold a value of `key` (a kNN accuracy is None without a monitor)."""
    records = [r for r in run["epochs"] if r.get(key) is not None]
    return [r["epoch"] for r in records], [r[key] for r in records]


def last(run: dict, key: str) -> str:
    """The run's last value of `key`, for its legend entry."""
    values = series(run, key)[1]
    return f": {values[-1]:.3f}" if values else ""


def test_sets_note(runs: list[dict]) -> str:
    """A warning when the runs were evaluated on different test sets (their accuracies are then not comparable),
    else ""."""
    fingerprints = {run["args"].get("test_fingerprint") for run in runs}
    return "WARNING: these runs were evaluated on different test sets" if len(fingerprints) > 1 else ""


def chance_line(axis, runs: list[dict]) -> None:
    """A grey line at the accuracy of guessing, 1 / classes, when the runs agree on the number of classes."""
    classes = {run["args"].get("num_classes") for run in runs}
    if len(classes) == 1 and None not in classes:
        axis.axhline(1 / classes.pop(), color="grey", linestyle=":", label="chance")


def finish(figure, axes, path: Path, note: str = "") -> None:
    """Grid, whole-number epochs, legends and the figure-wide `note` (a warning), then the PNG at `path`."""
    for axis in axes:
        axis.grid(alpha=0.3)
        axis.xaxis.set_major_locator(MaxNLocator(integer=True))  # epochs are whole numbers
        axis.legend(fontsize=8)
    if note:
        figure.suptitle(note, color="tab:red")
    figure.tight_layout()
    figure.savefig(path, dpi=120)


MARKER = {"marker": "o", "markersize": 3}  # so that a run of one epoch is a visible point, not an invisible line


def plot_pretraining(pretraining: list[dict], path: Path) -> None:
    figure = Figure(figsize=(15, 4.4))
    loss_axis, std_axis, knn_axis = figure.subplots(1, 3, sharex=True)
    for run in pretraining:
        loss_axis.plot(*series(run, "loss"), **MARKER, label=run["name"] + last(run, "loss"))
        std_axis.plot(*series(run, "z_std"), **MARKER, label=run["name"] + last(run, "z_std"))
        knn_axis.plot(*series(run, "knn_accuracy"), **MARKER, label=run["name"] + last(run, "knn_accuracy"))
    loss_axis.axhline(-1, color="black", linewidth=0.5)
    loss_axis.set(title="SimSiam loss (minimum -1)", xlabel="epoch", ylabel="D(p1, z2)/2 + D(p2, z1)/2")
    std_axis.axhline(1 / math.sqrt(PROJECTION_DIM), color="tab:green", linestyle=":",
                     label=f"1/sqrt(d) = {1 / math.sqrt(PROJECTION_DIM):.4f}, healthy")
    std_axis.set(title="collapse metric: std of l2-normalised z (0 = collapsed)", xlabel="epoch", ylabel="z-std",
                 ylim=(0, 1.5 / math.sqrt(PROJECTION_DIM)))
    chance_line(knn_axis, pretraining)
    knn_axis.set(title="kNN accuracy, validation split (bank: labelled subset)", xlabel="epoch", ylabel="accuracy")
    finish(figure, (loss_axis, std_axis, knn_axis), path, test_sets_note(pretraining))


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
        tested = "" if run["final"] is None else f"; test {run['final']['test_accuracy']:.3f}"
        loss_axis.plot(*series(run, "train_loss"), **style, **MARKER, label=name + last(run, "train_loss"))
        accuracy_axis.plot(*series(run, "train_accuracy"), **style, **MARKER,
                           label=name + last(run, "train_accuracy") + tested)
    chance_line(accuracy_axis, classifiers)
    loss_axis.set(title="training loss (labelled images)", xlabel="epoch", ylabel="cross-entropy")
    test_set = classifiers[0]["args"].get("test_set", "held-out split")
    accuracy_axis.set(title=f"training accuracy (labelled images)\nlegend: test accuracy at the end, "
                            f"{test_set}", xlabel="epoch", ylabel="accuracy")
    finish(figure, (loss_axis, accuracy_axis), path, test_sets_note(classifiers))


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
                        f"{run['name']}{made_on(run['args'])}")
    if not rows:
        return []
    header = f"{'backbone':8} {'probe':18} {'accuracy':>8} ± s.e.    {'test':>6}   run"
    return [header, *rows, *paired_rows(classifiers)]


def made_on(run_args: dict) -> str:
    """'  (cpu (2 cores), torch 2.14.1, Python 3.11.7)' from args.json's environment; '' for an older run."""
    environment = run_args.get("environment")
    if not isinstance(environment, dict):
        return ""
    return (f"  ({environment.get('device')}, torch {environment.get('torch')}, "
            f"Python {environment.get('python')})")


def predictions_of(run: dict) -> dict | None:
    """A finished classifier run's predictions.json, or None (an older run, or an unreadable file)."""
    try:
        return runs.read_predictions(run["folder"]) if run["final"] is not None else None
    except runs.RunError:
        return None


def paired_rows(classifiers: list[dict]) -> list[str]:
    """SimSiam - random init, image by image, for every SimSiam run and random-init run of the same mode tested on
    the same images (their predictions.json): the paired difference of each probe, with its standard error."""
    ordered = sorted(classifiers, key=lambda r: r["name"])
    predictions = {run["folder"]: predictions_of(run) for run in ordered}  # each file read once
    lines = []
    for simsiam in (run for run in ordered if run["args"]["backbone"] == "simsiam"):
        for random in (run for run in ordered if run["args"]["backbone"] == "random"
                       and run["args"]["mode"] == simsiam["args"]["mode"]):
            a, b = predictions[simsiam["folder"]], predictions[random["folder"]]
            for key, probe in evaluate.PROBE_PREDICTIONS.items():
                probe = "fine-tuned" if key == "head" and simsiam["args"]["mode"] == "finetune" else probe
                difference = None if a is None or b is None else evaluate.compare_predictions(a, b, key)
                if difference is not None:
                    lines.append(f"SimSiam - random, {probe}: {evaluate.describe_difference(difference)} "
                                 f"({simsiam['name']} against {random['name']})")
    return ["", *lines] if lines else []


@cli.reports_errors
def main(argv=None) -> None:
    args = parse_args(argv)
    folders = run_folders(args.runs or [Path("runs")])
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
    for name in {"simsiam.png", "classifier.png"} - {path.name for path in written}:
        if (args.out / name).exists():
            print(f"note: {args.out / name} is left from an earlier plot.py: none of these runs is drawn in it")
    table = results_table(classifiers)
    if table:
        print("\n" + "\n".join(table) + ("\n" + test_sets_note(classifiers) if test_sets_note(classifiers) else ""))


if __name__ == "__main__":
    main()
