"""The repository's own result on a CPU: SimSiam pretraining on real photos with train.py's --cpu recipe (under an
hour on 2 cores for the 23,000-photo pack), then the frozen probes of 250 labels over that backbone and over a
random-init one, compared on the same held-out test images, which neither the pretraining nor the labels touched.

    python -m experiments.cpu_result                      # data/PetImages, train.py --cpu
    python -m experiments.cpu_result --tiny               # CPU smoke run on the --demo set (CI)
    python -m experiments.cpu_result --runs runs/cpu-48px --results results/cpu-48px -- --image-size 48 --epochs 12
                                                          # another configuration: train.py's flags after --

Run again after a failure or a kill, it reuses every run that finished and resumes an unfinished pretraining.
Runs the repository's own scripts, as a user would:
    1. train.py --cpu (its kNN monitor reads the validation split, never the test split);
    2. classifier.py, frozen, over the random-init and over the SimSiam backbone, once per label draw
       (--label-seeds, three by default): the same split, the same labels for both backbones, the same pixels;
       each reports its linear probe (SGD) and its closed-form probe (logistic regression, penalty by
       cross-validation on the labels) and records its test predictions;
    3. plot.py, over the first label draw's pair.
Then, for each probe, the paired difference SimSiam - random init on the same test images with its standard error
and 95% interval: per label draw (evaluate.paired_difference, with McNemar's p) and over all draws, each test
image's correctness averaged over them (evaluate.paired_difference_over_draws). The verdict is the latter's: SimSiam
ahead by at least MARGIN and by at least STANDARD_ERRORS standard errors. One draw of 250 labels moves the difference
by a few points either way (docs/cpu.md), which a verdict on one draw would count as the method's. Writes
RESULTS/cpu-result.json and RESULTS/cpu-result.md (the README's table) and copies the runs' small files (no
checkpoints) to RESULTS/cpu-result/.
"""
from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

if not __package__:  # run as a file, python experiments/cpu_result.py: import from the repository root, as
    sys.path[0] = str(Path(__file__).resolve().parents[1])  # python -m experiments.cpu_result does

from experiments import common
from simsiam import cli, evaluate, pretrained, recipe, runs

REPOSITORY = Path(__file__).resolve().parents[1]

MARGIN = 0.05  # the least difference that counts as SimSiam paying, in accuracy
STANDARD_ERRORS = 3  # ... and in standard errors of the paired difference
PROBES = {"linear probe (SGD)": "head", "closed-form probe": "closed_form"}  # name: key of predictions.json


def parse_args(argv=None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    common.add_folder_arguments(parser, "runs/cpu-result")
    parser.add_argument("--classifier-epochs", type=cli.positive(int), default=100,
                        help="epochs of the SGD linear probes (default: %(default)s, classifier.py's)")
    common.add_label_seeds_argument(parser)
    parser.add_argument("--tiny", action="store_true", help="CPU smoke run: --demo data, minimal settings")
    parser.add_argument("train_flags", nargs="*", metavar="-- TRAIN_FLAGS",
                        help="train.py flags after a --, applied after the recipe's: another configuration to try")
    args = parser.parse_args(argv)
    common.check_label_seeds(parser, args)
    return args


def pretraining_flags(tiny: bool, changes: list[str] = ()) -> list[str]:
    """train.py's flags: the --cpu recipe, or under --tiny the experiments' smallest pretraining, then `changes`
    (train.py's later flags win)."""
    if tiny:
        recipe_flags = [text for key, value in common.TINY_TRAIN.items()
                        for text in ("--" + key.replace("_", "-"), str(value))]
    else:
        recipe_flags = ["--cpu"]
    return [*recipe_flags, *changes]


def verdict(difference: dict) -> bool:
    """Whether a paired difference shows SimSiam paying: at least MARGIN and STANDARD_ERRORS standard errors."""
    return (difference["difference"] >= MARGIN
            and difference["difference"] >= STANDARD_ERRORS * difference["standard_error"])


def points(row: dict) -> str:
    """A row's accuracies, paired difference and interval as cpu-result.md's cells."""
    return (f"{100 * row['random']:.1f}% | {100 * row['simsiam']:.1f}% | {100 * row['difference']:+.1f} ± "
            f"{100 * row['standard_error']:.1f} points | {100 * row['low']:+.1f} to {100 * row['high']:+.1f}")


@cli.reports_errors
def main(argv=None) -> None:
    args = parse_args(argv)
    runs_dir = runs.writable_folder((REPOSITORY / args.runs).resolve(), "--runs")
    runs.writable_folder((REPOSITORY / args.results).resolve(), "--results")
    image_size = common.TINY_TRAIN["image_size"] if args.tiny else recipe.CPU["image_size"]
    options = common.data_options(args.data, args.tiny, runs_dir, image_size)
    data = common.data_flags(options)
    simsiam = runs_dir / "simsiam"
    train_command, pretrain_s = common.pretrain(data, simsiam, pretraining_flags(args.tiny, args.train_flags),
                                                runs_dir / "train.log")
    checkpoint_path = simsiam / "siam.pt"
    resolution = common.resolution_flags(pretrained.read(checkpoint_path))

    epochs = common.TINY["classifier"] if args.tiny else ["--epochs", str(args.classifier_epochs)]
    probes = {}  # (backbone name, label seed): (out, command)
    for seed in args.label_seeds:
        for name, backbone in (("random", ["--random"]), ("simsiam", ["--checkpoint", str(checkpoint_path)])):
            out = runs_dir / f"probe-{name}-labels{seed}"
            probes[name, seed] = (out, ["classifier.py", *data, *resolution, *backbone, "--label-seed", str(seed),
                                        "--out", str(out), "--overwrite", *epochs])
    seconds = dict(zip(probes, common.run_all([(command, out.with_suffix(".log")) for out, command in probes.values()],
                                              parallel=1)))
    first_pair = [str(probes[name, args.label_seeds[0]][0]) for name in ("random", "simsiam")]
    common.run(["plot.py", str(simsiam), *first_pair, "--out", str(runs_dir / "plots")], runs_dir / "plot.log")

    predictions = {key: json.loads((out / "predictions.json").read_text()) for key, (out, _) in probes.items()}
    if not evaluate.same_test_images(*predictions.values()):
        raise runs.RunError("the probes were not all tested on the same images: this is a bug")
    rows, averaged = [], []
    for probe, key in PROBES.items():
        correct = {name: [evaluate.correctness(predictions[name, seed], key) for seed in args.label_seeds]
                   for name in ("random", "simsiam")}
        for seed, simsiam_correct, random_correct in zip(args.label_seeds, correct["simsiam"], correct["random"]):
            difference = evaluate.paired_difference(simsiam_correct, random_correct)
            rows.append({"probe": probe, "label_seed": seed, "random": difference["accuracy_b"],
                         "simsiam": difference["accuracy_a"], **difference})
        difference = evaluate.paired_difference_over_draws(correct["simsiam"], correct["random"])
        averaged.append({"probe": probe, "label_seeds": args.label_seeds, "random": difference["accuracy_b"],
                         "simsiam": difference["accuracy_a"], **difference, "meets_target": verdict(difference)})
    summary = {"hardware": common.hardware(), "date": time.strftime("%Y-%m-%d"), "tiny": args.tiny,
               "target": {"margin": MARGIN, "standard_errors": STANDARD_ERRORS},
               "pretrain_command": common.shown(train_command, runs_dir, args.runs), "pretrain_s": round(pretrain_s, 1),
               **common.pretraining_summary(simsiam),
               "probe_commands": {f"{name}, label seed {seed}": common.shown(command, runs_dir, args.runs)
                                  for (name, seed), (_, command) in probes.items()},
               "probe_s": {f"{name}, label seed {seed}": round(s, 1) for (name, seed), s in seconds.items()},
               "num_test": averaged[0]["num_test"], "label_seeds": args.label_seeds, "averaged": averaged,
               "rows": rows}
    table = ["| frozen probe, 250 labels | label draw | random init | SimSiam | SimSiam - random (paired SE) | "
             "95% interval | McNemar p | target met |",
             "| --- | --- | --- | --- | --- | --- | --- | --- |"]
    for a in averaged:
        table += [f"| {a['probe']} | mean of {len(a['label_seeds'])} | {points(a)} | – | "
                  f"{'yes' if a['meets_target'] else 'no'} |"]
        table += [f"| | seed {r['label_seed']} | {points(r)} | {r['mcnemar_p']:.2g} | – |"
                  for r in rows if r["probe"] == a["probe"]]
    results = REPOSITORY / args.results
    (results / "cpu-result").mkdir(parents=True, exist_ok=True)
    (results / "cpu-result.json").write_text(json.dumps(summary, indent=2) + "\n")
    (results / "cpu-result.md").write_text("\n".join(table) + "\n")
    common.copy_small_files([simsiam, *(out for out, _ in probes.values()), runs_dir / "plots"],
                            results / "cpu-result")
    print("\n".join(table))
    print(f"pretraining: {summary['pretrain_s'] / 60:.1f} min, {summary['pretrain_epochs']} epochs, z-std "
          f"{summary['final_z_std']:.4f} (min {summary['min_z_std']:.4f}), final validation kNN "
          f"{summary['final_knn_accuracy']:.3f}; {summary['num_test']:,} test images")
    for row in averaged:
        print(f"verdict, {row['probe']}, over {len(row['label_seeds'])} label draws: SimSiam "
              f"{'beats' if row['meets_target'] else 'does not beat'} random init by at least {100 * MARGIN:.0f} "
              f"points and {STANDARD_ERRORS} paired standard errors")


if __name__ == "__main__":
    main()
