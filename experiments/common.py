"""What the experiment scripts share: running the repository's scripts as a user would (one subprocess and log
per run, several at a time), the settings every run of an experiment gets (data, resolution, --tiny, the
supervised bound's), reading what the runs leave (final records, the pretraining's metrics) and copying their
small files into results/, and the hardware line that goes with every reported number.

The experiments import it as `from experiments import common` after putting the repository root on sys.path.
"""
from __future__ import annotations

import platform
import shutil
import statistics
import subprocess
import sys
import time
from concurrent.futures import ThreadPoolExecutor, as_completed
from pathlib import Path

import torch

import cli

REPOSITORY = Path(__file__).resolve().parents[1]

# --tiny: the demo set at 32 px on the CPU for an epoch or two, enough to run every step of an experiment in CI.
# The classifier runs take their resolution from the pretraining (resolution_flags), hence no --image-size here.
TINY = {"train": ["--epochs", "2", "--batch-size", "32", "--image-size", "32", "--device", "cpu"],
        "classifier": ["--epochs", "2", "--batch-size", "50", "--device", "cpu"],
        "all_labels": ["--epochs", "1", "--device", "cpu"]}
# A classifier on every non-test image with its label. Batch 256 instead of 50: ~88 steps per epoch instead of
# ~450 on 22,500 images. Base lr 0.01, a peak of 0.01 at batch 256 (classifier.py's default base lr 0.05 would
# peak at 0.05 here): a peak of 0.1 is above the standardised head's stability limit, and a from-scratch run at
# 0.1 trained at chance (README, Protocol).
ALL_LABELS = ["--all-labels", "--batch-size", "256", "--lr", "0.01"]
# The supervised upper bound: a random-init ResNet18 fine-tuned on every non-test label.
SUPERVISED = ["--random", "--finetune", *ALL_LABELS]


# ---------------------------------------------------------------- what every run gets


def data_flags(data: Path, tiny: bool, runs_dir: Path) -> list[str]:
    """The data flags of every run of an experiment, identical in each so that all hold out the same test
    split: the demo set with a cache of its own under --tiny, else `data` (relative to the repository root,
    where the runs start)."""
    if tiny:  # 400 of the 800 demo images: 300 to pretrain and label, 100 to test
        return ["--demo", "--limit", "400", "--cache-dir", str(runs_dir / "cache")]
    return ["--data", str(REPOSITORY / data)]


def resolution_flags(checkpoint: dict) -> list[str]:
    """--image-size and --cache-size of a SimSiam checkpoint's pretraining, for every classifier run: the SimSiam
    backbone is probed at the scale it learned (as classifier.py does by itself), and the random backbone sees
    the same pixels, so the runs differ only in the weights."""
    image_size, cache_size = cli.pretrained_resolution(None, None, checkpoint["args"], checkpoint["args"]["image_size"])
    return ["--image-size", str(image_size), "--cache-size", str(cache_size)]


# ---------------------------------------------------------------- running the scripts


def run(command: list[str], log: Path) -> float:
    """Run a repository script (`command` = script and arguments) from the repository root, its output into
    `log`; seconds taken. Raises cli.RunError with the end of the log when it fails."""
    started = time.perf_counter()
    with open(log, "w") as file:
        finished = subprocess.run([sys.executable, *command], cwd=REPOSITORY, stdout=file, stderr=subprocess.STDOUT)
    if finished.returncode:
        raise cli.RunError(f"failed ({finished.returncode}): {' '.join(command)}\n{log.read_text()[-3000:]}")
    return time.perf_counter() - started


def run_all(jobs: list[tuple[list[str], Path]], parallel: int) -> list[float]:
    """Run (command, log) jobs `parallel` at a time (classifier runs share one GPU), in the order given, with a
    line as each finishes; seconds of each, in that order. After a failure no further job starts, and the error
    is raised once the running ones are done."""
    with ThreadPoolExecutor(parallel) as pool:
        futures = {pool.submit(run, command, log): log for command, log in jobs}
        for done, future in enumerate(as_completed(futures), start=1):
            if future.exception() is not None:
                pool.shutdown(wait=True, cancel_futures=True)
                raise future.exception()
            print(f"[{done}/{len(jobs)}] {futures[future].stem}: {future.result():.0f} s", flush=True)
    return [future.result() for future in futures]


def pretrain(data: list[str], out: Path, tiny: bool, log: Path) -> tuple[list[str], float]:
    """train.py with its defaults (TINY's under --tiny) on `data` into `out`: (its command, seconds)."""
    command = ["train.py", *data, "--out", str(out), "--overwrite", *(TINY["train"] if tiny else [])]
    seconds = run(command, log)
    print(f"pretrained in {seconds:.0f} s: {out / 'siam.pt'}")
    return command, seconds


def shown(command: list[str], runs_dir: Path, runs: Path) -> str:
    """A run's command as a person would type it, with the runs folder as given on the command line."""
    return "python " + " ".join(command).replace(str(runs_dir), runs.as_posix())


# ---------------------------------------------------------------- what the runs leave


def final_record(run_dir: Path) -> dict:
    """The final record of a classifier run: test_accuracy, num_test and, for frozen runs,
    closed_form_accuracy and its penalty, folds and cross-validation scores."""
    return cli.final_record(run_dir / "metrics.jsonl")


def pretraining_summary(folder: Path) -> dict:
    """Epochs, final and lowest z-std (the collapse metric), final kNN accuracy and median images/s of a
    train.py run folder."""
    epochs = [record for record in cli.read_jsonl(folder / "metrics.jsonl") if "epoch" in record]
    return {"pretrain_epochs": len(epochs), "final_z_std": epochs[-1]["z_std"],
            "min_z_std": min(record["z_std"] for record in epochs),
            "final_knn_accuracy": epochs[-1]["knn_accuracy"],
            "images_per_s": statistics.median(record["images_per_s"] for record in epochs)}


def spread(values: list[float]) -> dict:
    """Mean, sample standard deviation (0 for a single value), min and max."""
    return {"mean": statistics.mean(values), "std": statistics.stdev(values) if len(values) > 1 else 0.0,
            "min": min(values), "max": max(values)}


def copy_small_files(folders: list[Path], target: Path) -> None:
    """The arguments, metrics, labelled indices and plots (.json, .jsonl, .png) of each folder into
    target/<folder name>/; checkpoints stay behind (45 MB each, and results/ is committed)."""
    for folder in folders:
        for path in folder.iterdir():
            if path.suffix in {".json", ".jsonl", ".png"}:
                (target / folder.name).mkdir(parents=True, exist_ok=True)
                shutil.copy(path, target / folder.name / path.name)


def hardware() -> str:
    """The GPU (or none), the CPU and the torch version, for the line that goes with every reported number."""
    gpu = torch.cuda.get_device_name(0) if torch.cuda.is_available() else "no GPU"
    return f"{gpu}, {platform.processor() or platform.machine()}, torch {torch.__version__}"
