"""The headline experiment: what 250 labels buy with SimSiam pretraining, on held-out images.

    python -m experiments.headline --data data/PetImages            # train.py's defaults
    python -m experiments.headline --data data/PetImages --epochs 100 --image-size 96 --cache-size 110 --batch-size 512
    python -m experiments.headline --data data/PetImages --checkpoint runs/simsiam/siam.pt   # no pretraining
    python -m experiments.headline --tiny                            # CPU smoke run on the --demo set (CI)

Before starting it prints the estimated wall time from the throughput it measures (bench.py on the demo set).
Run again after a failure or a kill, it reuses every run that finished and resumes an unfinished pretraining.

Runs the repository's own scripts, as a user would, one after another in one process group each:
    1. train.py with its defaults and the pretraining flags given (or none, with --checkpoint);
    2. classifier.py for {random, SimSiam} x {frozen, fine-tuned} x label seeds, several at a time on the GPU,
       all at the pretraining's resolution; each frozen run reports both its linear probe (SGD) and its
       closed-form probe (logistic regression);
    3. classifier.py SUPERVISED: a supervised ResNet18 on every label outside the test and validation splits, the
       upper bound;
    4. plot.py;
then writes RESULTS/headline.json (every run's final test accuracy, mean and std per row, command, time,
hardware) and RESULTS/headline.md (the README table), and copies the runs' small files (args, metrics,
labelled indices, plots; no checkpoints) to RESULTS/headline/.
"""
from __future__ import annotations

import argparse
import json
import statistics
import sys
import time
from pathlib import Path

if not __package__:  # run as a file, python experiments/headline.py: import from the repository root, as
    sys.path[0] = str(Path(__file__).resolve().parents[1])  # python -m experiments.headline does

from experiments import common
from experiments.common import SUPERVISED
from simsiam import cli, pretrained, runs

REPOSITORY = Path(__file__).resolve().parents[1]

ROWS = [  # (name, random backbone, fine-tuned, the key of the runs' final record it reports)
    ("random init, linear probe", True, False, "test_accuracy"),
    ("SimSiam, linear probe", False, False, "test_accuracy"),
    ("random init, closed-form probe", True, False, "closed_form_accuracy"),
    ("SimSiam, closed-form probe", False, False, "closed_form_accuracy"),
    ("random init, fine-tuned", True, True, "test_accuracy"),
    ("SimSiam, fine-tuned", False, True, "test_accuracy"),
]
RUNS = list(dict.fromkeys((random, finetune) for _, random, finetune, _ in ROWS))  # the classifier runs per seed


def parse_args(argv=None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    common.add_folder_arguments(parser, "runs/headline")
    common.add_label_seeds_argument(parser)
    parser.add_argument("--parallel", type=cli.positive(int), default=4,
                        help="classifier runs at a time (they share the GPU; default: %(default)s)")
    parser.add_argument("--classifier-epochs", type=cli.positive(int), default=100,
                        help="epochs of each 250-label classifier run (default: %(default)s)")
    parser.add_argument("--supervised-epochs", type=cli.positive(int), default=15,
                        help="epochs of the supervised bound on every label outside the test and validation splits "
                             "(default: %(default)s)")
    parser.add_argument("--tiny", action="store_true", help="CPU smoke run: --demo data, minimal settings")
    common.add_pretraining_arguments(parser)
    args = parser.parse_args(argv)
    common.check_label_seeds(parser, args)
    return args


@cli.reports_errors
def main(argv=None) -> None:
    args = parse_args(argv)
    runs_dir = runs.writable_folder((REPOSITORY / args.runs).resolve(), "--runs")
    runs.writable_folder((REPOSITORY / args.results).resolve(), "--results")
    settings = common.pretraining_settings(args)
    options = common.data_options(args.data, args.tiny, runs_dir, settings["image_size"])
    data, pretraining = common.data_flags(options), common.pretraining_flags(args)
    classifier_extra = common.TINY["classifier"] if args.tiny else ["--epochs", str(args.classifier_epochs)]
    supervised_extra = common.TINY["all_labels"] if args.tiny else ["--epochs", str(args.supervised_epochs)]
    labellable = common.pretraining_images(options)
    labelled_epochs = int(classifier_extra[1]) * options.labels * len(args.label_seeds)
    print(common.estimate(common.measured_throughput(settings, runs_dir),
                          0 if args.checkpoint else settings["epochs"] * labellable,
                          {"frozen": 2 * labelled_epochs,
                           "finetune": 2 * labelled_epochs + int(supervised_extra[1]) * labellable}), flush=True)

    if args.checkpoint is None:
        simsiam = runs_dir / "simsiam"
        train_command, pretrain_s = common.pretrain(data, simsiam, pretraining, runs_dir / "train.log")
        checkpoint_path = simsiam / "siam.pt"
    else:
        checkpoint_path, train_command, pretrain_s = (REPOSITORY / args.checkpoint).resolve(), None, 0.0
    resolution = common.resolution_flags(pretrained.read(checkpoint_path))

    jobs = []  # ((random, finetune), seed, out, command)
    for random, finetune in RUNS:
        for seed in args.label_seeds:
            out = runs_dir / f"{runs.classifier_run_name(random, finetune)}-labels{seed}"
            backbone = ["--random"] if random else ["--checkpoint", str(checkpoint_path)]
            mode = ["--finetune"] if finetune else []
            jobs.append(((random, finetune), seed, out, ["classifier.py", *data, *resolution, *backbone, *mode,
                                                         "--label-seed", str(seed), "--out", str(out), "--overwrite",
                                                         *classifier_extra]))
    supervised_out = runs_dir / "supervised-all-labels"
    supervised_command = ["classifier.py", *data, *resolution, *SUPERVISED, "--out", str(supervised_out),
                          "--overwrite", *supervised_extra]
    supervised_s, *seconds = common.run_all([(supervised_command, supervised_out.with_suffix(".log")),  # longest first
                                             *((job[3], job[2].with_suffix(".log")) for job in jobs)], args.parallel)
    pretraining_folders = [checkpoint_path.parent] if args.checkpoint is None else []
    first_seed_runs = [str(job[2]) for job in jobs if job[1] == args.label_seeds[0]]
    common.run(["plot.py", *map(str, pretraining_folders), *first_seed_runs,
                "--out", str(runs_dir / "plots")], runs_dir / "plot.log")

    rows = []
    for name, random, finetune, key in ROWS:
        mine = [(job, s) for job, s in zip(jobs, seconds) if job[0] == (random, finetune)]
        accuracies = [common.final_record(job[2])[key] for job, _ in mine]
        rows.append({"row": name, "accuracies": accuracies, **common.spread(accuracies),
                     "seconds_each": [round(s, 1) for _, s in mine],
                     "command": common.shown(mine[0][0][3], runs_dir, args.runs)})
    supervised = common.final_record(supervised_out)["test_accuracy"]
    rows.append({"row": "supervised, every label outside test and validation", "accuracies": [supervised],
                 **common.spread([supervised]),
                 "seconds_each": [round(supervised_s, 1)],
                 "command": common.shown(supervised_command, runs_dir, args.runs)})
    pretraining_record = ({"pretrain_command": common.shown(train_command, runs_dir, args.runs),
                           "pretrain_s": round(pretrain_s, 1), **common.pretraining_summary(checkpoint_path.parent)}
                          if args.checkpoint is None else {"checkpoint": str(args.checkpoint)})
    summary = {"hardware": common.hardware(), "date": time.strftime("%Y-%m-%d"), "tiny": args.tiny,
               **pretraining_record, "rows": rows}
    table = ["| backbone, protocol | test accuracy (mean ± std over label seeds) | seeds | s per run | command |",
             "| --- | --- | --- | --- | --- |"]
    table += [f"| {r['row']} | {100 * r['mean']:.1f}% ± {100 * r['std']:.1f} | {len(r['accuracies'])} | "
              f"{statistics.mean(r['seconds_each']):.0f} | `{r['command']}` |" for r in rows]
    results = REPOSITORY / args.results
    (results / "headline").mkdir(parents=True, exist_ok=True)
    (results / "headline.json").write_text(json.dumps(summary, indent=2) + "\n")
    (results / "headline.md").write_text("\n".join(table) + "\n")
    common.copy_small_files([*pretraining_folders, supervised_out,
                             *(job[2] for job in jobs), runs_dir / "plots"], results / "headline")
    print("\n".join(table))
    if args.checkpoint is None:
        print(f"pretraining: {summary['pretrain_s']:.0f} s, {summary['pretrain_epochs']} epochs, "
              f"z-std {summary['final_z_std']:.4f} (min {summary['min_z_std']:.4f}), "
              f"kNN {summary['final_knn_accuracy']:.3f}")


if __name__ == "__main__":
    main()
