"""Curves and results from the files runs leave (args.json, metrics.jsonl, predictions.json), nothing else.

    python plot.py                                   # the runs in runs/*/, PNGs into runs/plots
    python plot.py runs/demo --out runs/demo/plots   # the runs in one folder (the quick start's)
    python plot.py runs/simsiam runs/classifier-random-frozen --out figures   # chosen runs

OUT/simsiam.png: SimSiam loss, z-std against 1/sqrt(d), kNN accuracy per epoch; OUT/classifier.png: training loss and
accuracy (legend: test accuracy). Then test accuracy ± s.e., SimSiam - random init paired; foreign folders skipped."""
import argparse
import contextlib
import json
import math
from pathlib import Path

from matplotlib import rc_context
from matplotlib.figure import Figure  # drawn to files without pyplot, so no backend is chosen

import dataset
import evaluate
import runs
from model import PROJECTION_DIM, UserError

NUMBERS = ("loss", "z_std", "knn_accuracy", "train_loss", "train_accuracy", "test_accuracy", "closed_form_accuracy")
HEALTHY_STD = 1 / math.sqrt(PROJECTION_DIM)  # the z-std of z spread over the unit sphere in d dimensions
PANELS = {"simsiam.png": (("loss", "SimSiam loss (minimum -1)", "D(p1, z2)/2 + D(p2, z1)/2"),
                          ("z_std", "std of l2-normalised z (0: collapsed)", "z-std"),
                          ("knn_accuracy", "kNN accuracy on the validation split", "accuracy")),
          "classifier.png": (("train_loss", "training loss (labelled images)", "cross-entropy"),
                             ("train_accuracy", "training accuracy (legend: test accuracy)", "accuracy"))}

def parse_args(argv=None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("runs", type=Path, nargs="*", help="run folders, or folders of runs (default: runs)")
    parser.add_argument("--out", type=Path, default=Path("runs/plots"), help="PNGs' folder (default: %(default)s)")
    return parser.parse_args(argv)

def run_folders(paths: list[Path]) -> list[Path]:  # none: runs/*/ alone, runs/demo/* or experiments' not mixed in
    folders = []  # each path that is a run folder, else the run folders under it
    for path in paths or [Path("runs")]:
        found = sorted(metrics.parent for metrics in path.rglob("metrics.jsonl")  # outside hidden folders (.replaced)
                       if not any(part.startswith(".") for part in metrics.relative_to(path).parts))
        folders += [path] if (path / "metrics.jsonl").is_file() or not found else found
    if nested := sorted({str(Path(*folder.parts[:2])) for folder in folders if not paths and len(folder.parts) > 2}):
        print(f"further runs, not plotted: {', '.join(nested)} (python plot.py {nested[0]} --out {nested[0]}/plots)")
    return [folder for folder in folders if paths or len(folder.parts) == 2]

def problem(run_args, records: list[dict]) -> str | None:  # what in a run's files is not what runs write, if any
    if not isinstance(run_args, dict) or run_args.get("backbone", "random") not in runs.COLOURS \
            or run_args.get("mode", "frozen") not in runs.LINESTYLES:
        return "its args.json is not a run's (an object with a known backbone and mode)"
    for record in records:
        for key, value in ((key, record[key]) for key in NUMBERS if record.get(key) is not None):  # None: no monitor
            accuracy = key.endswith("accuracy")
            if type(value) not in (int, float) or not math.isfinite(value) or (accuracy and not 0 <= value <= 1):
                return f"its metrics.jsonl's {key} is {value!r}, not a number{' in [0, 1]' * accuracy}"
        if record.get("event") == "final" and not (type(record.get("num_test")) is int and "test_accuracy" in record):
            return "its metrics.jsonl's final record lacks num_test or test_accuracy"
    return None if records else "its metrics.jsonl has no records yet"

def load_runs(folders: list[Path]) -> tuple[list[dict], list[dict], list[str]]:  # and why each other was skipped
    pretraining, classifiers, skipped = [], [], []
    for folder in folders:
        try:  # OSError: args.json or metrics.jsonl absent, unreadable, or a folder
            run_args = json.loads((folder / "args.json").read_text())
            why = problem(run_args, records := runs.read_jsonl(folder / "metrics.jsonl"))
        except (OSError, UnicodeDecodeError, json.JSONDecodeError) as error:
            why = (f"not a run's folder, no readable {Path(error.filename).name} ({error.strerror})"
                   if isinstance(error, OSError) else f"its args.json is not JSON ({error})")
        if why is not None:
            skipped.append(f"{folder}: {why}")
            continue
        shown = folder.name if [other.name for other in folders].count(folder.name) == 1 else str(folder)  # told apart
        run = {"name": dataset.shown(shown), "folder": folder, "args": run_args,
               "final": next((record for record in reversed(records) if record.get("event") == "final"), None),
               "epochs": [record for record in records if isinstance(record.get("epoch"), int)]}
        (classifiers if "backbone" in run_args else pretraining).append(run)
    return pretraining, classifiers, skipped

@rc_context({"text.parse_math": False})  # names drawn as written: a $ would start matplotlib's mathtext
def plot(drawn: list[dict], panels: tuple, path: Path) -> None:
    axes = (figure := Figure(figsize=(5 * len(panels), 4.4), layout="tight")).subplots(1, len(panels), sharex=True)
    for i, run in enumerate(drawn):
        backbone, mode, final = run["args"].get("backbone"), run["args"].get("mode"), run["final"]
        colours = runs.COLOURS.get(backbone, [None])  # None: matplotlib's next colour
        turn = sum(other["args"].get("backbone") == backbone for other in drawn[:i])  # the runs of this backbone
        style = {"color": colours[turn % len(colours)], "linestyle": runs.LINESTYLES.get(mode, "-")}
        name = run["name"] if backbone is None else f"{backbone}, {mode} ({run['name']})"
        tested = "" if final is None else f", test {final['test_accuracy']:.3f}"
        for axis, (key, _, _) in zip(axes, panels):
            records = [record for record in run["epochs"] if record.get(key) is not None]  # None: no kNN monitor
            axis.plot([r["epoch"] for r in records], [r[key] for r in records], marker="o", markersize=3, **style,
                      label=name + (f": {records[-1][key]:.3f}" if records else "") + tested)  # a marker: 1 epoch seen
    classes = {run["args"].get("num_classes") for run in drawn}
    for axis, (key, title, ylabel) in zip(axes, panels):
        axis.set(title=title, xlabel="epoch", ylabel=ylabel)
        if key == "z_std":
            axis.axhline(HEALTHY_STD, color="tab:green", linestyle=":", label=f"healthy: 1/sqrt(d) = {HEALTHY_STD:.4f}")
            axis.set_ylim(0, 1.5 * HEALTHY_STD)
        if key.endswith("accuracy") and len(classes) == 1 and None not in classes:
            axis.axhline(1 / next(iter(classes)), color="grey", linestyle=":", label="chance")
        axis.xaxis.get_major_locator().set_params(integer=True)  # epochs
        axis.grid(alpha=0.3)
        axis.legend(fontsize=8)
    if len({run["args"].get("test_fingerprint") for run in drawn}) > 1:
        figure.suptitle("WARNING: these runs were tested on different test sets", color="tab:red")
    figure.savefig(path, dpi=120)

def results(classifiers: list[dict]) -> list[str]:  # test accuracies; SimSiam - random init paired on the same images
    finished = [run for run in classifiers if run["final"] is not None]
    rows = [f"{'backbone':8} {'probe':18} {'accuracy':>8} ± s.e.    {'test':>6}   run"] if finished else []
    for run in finished:
        final, n, backbone, mode = run["final"], run["final"]["num_test"], run["args"]["backbone"], run["args"]["mode"]
        probes = {"test_accuracy": "fine-tuned" if mode == "finetune" else "linear probe",
                  "closed_form_accuracy": "closed-form probe"}
        rows += [f"{backbone:8} {probe:18} {final[key]:8.3f} ± {evaluate.standard_error(final[key], n):.3f}   "
                 f"{n:>6,}   {run['name']}" for key, probe in probes.items() if key in final]
    if len({run["args"].get("test_fingerprint") for run in finished}) > 1:
        rows.append("WARNING: these runs were tested on different test sets")
    saved = {}  # folder -> its predictions.json; a run without a readable one is not compared
    for run in finished:
        with contextlib.suppress(UserError):
            saved[run["folder"]] = runs.read_predictions(run["folder"])
    pairs = [(a, b) for a in finished for b in finished
             if a["args"]["mode"] == b["args"]["mode"] and a["args"]["backbone"] != "random" == b["args"]["backbone"]]
    for a, b in pairs:  # none on other images
        rows += [f"{a['args']['backbone'].replace('simsiam', 'SimSiam')} - random, {probe}: {difference} ({a['name']} "
                 f"against {b['name']})" for probe, difference in evaluate.paired_differences(
                     saved.get(a["folder"], {}), saved.get(b["folder"], {}))]
    return rows

@runs.reports_errors
def main(argv=None) -> None:
    args = parse_args(argv)
    pretraining, classifiers, skipped = load_runs(run_folders(args.runs))
    if not pretraining and not classifiers:  # why, folder by folder; no folder: runs/ holds no run folder itself
        raise UserError("; ".join(skipped) or "no runs in runs/*/: run train.py and classifier.py first")
    print("".join(f"skipped {note}\n" for note in skipped), end="")
    runs.writable_folder(args.out, "--out")
    for name, drawn in (("simsiam.png", pretraining), ("classifier.png", classifiers)):
        if drawn:
            plot(drawn, PANELS[name], args.out / name)
            print(f"wrote {args.out / name}")
    if table := results(classifiers):
        print("\n".join(["", *table]))

if __name__ == "__main__":
    main()
