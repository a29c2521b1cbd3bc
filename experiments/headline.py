"""The headline experiment: what 250 labels buy with SimSiam pretraining, on held-out images.

    python experiments/headline.py --data /tmp/PetImages            # one GPU, about 10 minutes in all
    python experiments/headline.py --tiny                            # CPU smoke run on the --demo set (CI)

Runs the repository's own scripts, as a user would, one after another in one process group each:
    1. train.py with its defaults (the recipe the README table reports);
    2. classifier.py for {random, SimSiam} x {frozen, fine-tuned} x label seeds, several at a time on the GPU;
       each frozen run reports both its linear probe (SGD) and its closed-form probe (logistic regression);
    3. classifier.py SUPERVISED: a supervised ResNet18 on every non-test label, the upper bound;
    4. plot.py;
then writes RESULTS/headline.json (every run's final test accuracy, mean and std per row, command, time,
hardware) and RESULTS/headline.md (the README table), and copies the runs' small files (args, metrics,
labelled indices, plots; no checkpoints) to RESULTS/headline/.
"""
from __future__ import annotations

import argparse
import json
import platform
import shutil
import statistics
import subprocess
import sys
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

REPOSITORY = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPOSITORY))  # the repository's shared modules
import cli  # noqa: E402
import torch  # noqa: E402

ROWS = [  # (name, random backbone, fine-tuned, the key of the runs' final record it reports)
    ("random init, linear probe", True, False, "test_accuracy"),
    ("SimSiam, linear probe", False, False, "test_accuracy"),
    ("random init, closed-form probe", True, False, "closed_form_accuracy"),
    ("SimSiam, closed-form probe", False, False, "closed_form_accuracy"),
    ("random init, fine-tuned", True, True, "test_accuracy"),
    ("SimSiam, fine-tuned", False, True, "test_accuracy"),
]
RUNS = list(dict.fromkeys((random, finetune) for _, random, finetune, _ in ROWS))  # the classifier runs per seed
# The supervised upper bound: a random-init ResNet18 trained on every non-test label. Its lr stays at
# classifier.py's 0.01: 0.1 is above the standardised head's stability limit, and a from-scratch run at 0.1
# trained at chance (README, Protocol).
SUPERVISED = ["--random", "--finetune", "--all-labels", "--batch-size", "256", "--lr", "0.01"]
TINY = {"train": ["--demo", "--epochs", "2", "--batch-size", "32", "--image-size", "32", "--device", "cpu"],
        "classifier": ["--demo", "--epochs", "2", "--batch-size", "50", "--image-size", "32", "--device", "cpu"],
        "supervised": ["--epochs", "1", "--image-size", "32", "--device", "cpu"]}


def parse_args(argv=None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--data", type=Path, default=Path("/tmp/PetImages"), help="the image folder")
    parser.add_argument("--runs", type=Path, default=Path("runs/headline"), help="where the runs go")
    parser.add_argument("--results", type=Path, default=Path("results"), help="where the small files go")
    parser.add_argument("--label-seeds", type=int, nargs="+", default=[0, 1, 2])
    parser.add_argument("--parallel", type=int, default=4, help="classifier runs at a time (they share the GPU)")
    parser.add_argument("--classifier-epochs", type=int, default=100)
    parser.add_argument("--supervised-epochs", type=int, default=15)
    parser.add_argument("--tiny", action="store_true", help="CPU smoke run: --demo data, minimal settings")
    return parser.parse_args(argv)


def run(command: list[str], log: Path) -> float:
    """Run a repository script, its output into `log`; seconds taken. Raises on failure, showing the log."""
    started = time.perf_counter()
    with open(log, "w") as file:
        finished = subprocess.run([sys.executable, *command], cwd=REPOSITORY, stdout=file, stderr=subprocess.STDOUT)
    if finished.returncode:
        sys.exit(f"failed ({finished.returncode}): {' '.join(command)}\n{log.read_text()[-3000:]}")
    return time.perf_counter() - started


def final_accuracy(run_dir: Path, key: str = "test_accuracy") -> float:
    """`key` (test_accuracy, closed_form_accuracy) of the final record of a classifier run."""
    return cli.final_record(run_dir / "metrics.jsonl")[key]


def hardware() -> str:
    gpu = torch.cuda.get_device_name(0) if torch.cuda.is_available() else "no GPU"
    return f"{gpu}, {platform.processor() or platform.machine()}, torch {torch.__version__}"


def main(argv=None) -> None:
    args = parse_args(argv)
    runs_dir = (REPOSITORY / args.runs).resolve()
    runs_dir.mkdir(parents=True, exist_ok=True)
    data = TINY["train"][:1] if args.tiny else ["--data", str(args.data)]
    train_extra = TINY["train"][1:] if args.tiny else []
    classifier_extra = TINY["classifier"][1:] if args.tiny else ["--epochs", str(args.classifier_epochs),
                                                                 "--eval-every", "10"]
    cache = ["--cache-dir", str(runs_dir / "cache")] if args.tiny else []

    simsiam = runs_dir / "simsiam"
    train_command = ["train.py", *data, *cache, "--out", str(simsiam), "--overwrite", *train_extra]
    pretrain_s = run(train_command, runs_dir / "train.log")
    print(f"pretrained in {pretrain_s:.0f} s: {simsiam / 'siam.pt'}")

    jobs = []  # ((random, finetune), seed, out, command)
    for random, finetune in RUNS:
        for seed in args.label_seeds:
            out = runs_dir / f"{cli.classifier_run_name(random, finetune)}-labels{seed}"
            backbone = ["--random"] if random else ["--checkpoint", str(simsiam / "siam.pt")]
            mode = ["--finetune"] if finetune else []
            jobs.append(((random, finetune), seed, out, ["classifier.py", *data, *cache, *backbone, *mode,
                                                         "--label-seed", str(seed), "--out", str(out), "--overwrite",
                                                         *classifier_extra]))
    supervised_out = runs_dir / "supervised-all-labels"
    supervised_extra = TINY["supervised"] if args.tiny else ["--epochs", str(args.supervised_epochs),
                                                             "--eval-every", "5"]
    supervised_command = ["classifier.py", *data, *cache, *SUPERVISED, "--out", str(supervised_out), "--overwrite",
                          *supervised_extra]
    with ThreadPoolExecutor(args.parallel) as pool:
        seconds = list(pool.map(lambda job: run(job[3], job[2].with_suffix(".log")), jobs))
        supervised_s = pool.submit(run, supervised_command, supervised_out.with_suffix(".log")).result()
    run(["plot.py", str(simsiam), *(str(job[2]) for job in jobs if job[1] == args.label_seeds[0]),
         "--out", str(runs_dir / "plots")], runs_dir / "plot.log")

    rows = []
    for name, random, finetune, key in ROWS:
        mine = [(job, s) for job, s in zip(jobs, seconds) if job[0] == (random, finetune)]
        accuracies = [final_accuracy(job[2], key) for job, _ in mine]
        rows.append({"row": name, "accuracies": accuracies, "mean": statistics.mean(accuracies),
                     "std": statistics.stdev(accuracies) if len(accuracies) > 1 else 0.0,
                     "seconds_each": [round(s, 1) for _, s in mine],
                     "command": "python " + " ".join(mine[0][0][3]).replace(str(runs_dir), args.runs.as_posix())})
    rows.append({"row": "supervised, all non-test labels", "accuracies": [final_accuracy(supervised_out)],
                 "mean": final_accuracy(supervised_out), "std": 0.0, "seconds_each": [round(supervised_s, 1)],
                 "command": "python " + " ".join(supervised_command).replace(str(runs_dir), args.runs.as_posix())})
    epochs = [r for r in cli.read_jsonl(simsiam / "metrics.jsonl") if "epoch" in r]
    summary = {"hardware": hardware(), "date": time.strftime("%Y-%m-%d"), "tiny": args.tiny,
               "pretrain_command": "python " + " ".join(train_command).replace(str(runs_dir), args.runs.as_posix()),
               "pretrain_s": round(pretrain_s, 1), "pretrain_epochs": len(epochs),
               "final_z_std": epochs[-1]["z_std"], "min_z_std": min(r["z_std"] for r in epochs),
               "final_knn_accuracy": epochs[-1]["knn_accuracy"],
               "images_per_s": statistics.median(r["images_per_s"] for r in epochs), "rows": rows}
    table = ["| backbone, protocol | test accuracy (mean ± std over label seeds) | seeds | s per run | command |",
             "| --- | --- | --- | --- | --- |"]
    table += [f"| {r['row']} | {100 * r['mean']:.1f}% ± {100 * r['std']:.1f} | {len(r['accuracies'])} | "
              f"{statistics.mean(r['seconds_each']):.0f} | `{r['command']}` |" for r in rows]
    results = REPOSITORY / args.results
    (results / "headline").mkdir(parents=True, exist_ok=True)
    (results / "headline.json").write_text(json.dumps(summary, indent=2) + "\n")
    (results / "headline.md").write_text("\n".join(table) + "\n")
    for folder in [simsiam, supervised_out, *(job[2] for job in jobs), runs_dir / "plots"]:
        for path in folder.iterdir():
            if path.suffix in {".json", ".jsonl", ".png"}:
                target = results / "headline" / folder.name / path.name
                target.parent.mkdir(parents=True, exist_ok=True)
                shutil.copy(path, target)
    print("\n".join(table))
    print(f"pretraining: {summary['pretrain_s']:.0f} s, {summary['pretrain_epochs']} epochs, "
          f"z-std {summary['final_z_std']:.4f} (min {summary['min_z_std']:.4f}), "
          f"kNN {summary['final_knn_accuracy']:.3f}")


if __name__ == "__main__":
    main()
