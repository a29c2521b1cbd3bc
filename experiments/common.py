"""What the experiment scripts share: running the repository's scripts as a user would (one subprocess and log
per run, several at a time), the settings every run of an experiment gets (data, resolution, --tiny, the
supervised bound's), reading what the runs leave (final records, the pretraining's metrics) and copying their
small files into results/, and the hardware line that goes with every reported number.

The experiments run as `python -m experiments.NAME` from the repository root and import it as
`from experiments import common`.
"""
from __future__ import annotations

import argparse
import json
import math
import os
import shutil
import signal
import statistics
import subprocess
import sys
import time
from concurrent.futures import ThreadPoolExecutor, as_completed
from pathlib import Path

import torch

from simsiam import cache, cli, dataset, devices, pretrained, recipe, runs

REPOSITORY = Path(__file__).resolve().parents[1]

# --tiny: the demo set at 32 px on the CPU for an epoch or two, enough to run every step of an experiment in CI.
# The classifier runs take their resolution from the pretraining (resolution_flags), hence no --image-size here.
TINY_TRAIN = {"epochs": 2, "batch_size": 32, "image_size": 32, "device": "cpu"}
TINY_IMAGES = 400  # of the 800 demo images: 300 to pretrain and label, 100 to test
TINY = {"classifier": ["--epochs", "2", "--batch-size", "50", "--device", "cpu"],
        "all_labels": ["--epochs", "1", "--device", "cpu"]}
# A classifier on every image outside the test and validation splits, with its label. Batch 256 instead of 50: ~88
# steps per epoch instead of ~450 on 22,500 images. Base lr 0.01, a peak of 0.01 at batch 256 (classifier.py's
# default base lr 0.05 would peak at 0.05 here): a peak of 0.1 is above the standardised head's stability limit, and
# a from-scratch run at 0.1 trained at chance (README, Protocol).
ALL_LABELS = ["--all-labels", "--batch-size", "256", "--lr", "0.01"]
# The supervised upper bound: a random-init ResNet18 fine-tuned on every label outside the test and validation splits.
SUPERVISED = ["--random", "--finetune", *ALL_LABELS]


# ---------------------------------------------------------------- what every run gets


def data_options(data: Path, tiny: bool, runs_dir: Path, image_size: int, **splits) -> dataset.DataOptions:
    """The data of every run of an experiment, identical in each so that all hold out the same test split: under
    --tiny, TINY_IMAGES of the demo set (its --demo split unless `splits` say otherwise) with a cache of its own;
    else `data`, relative to the repository root, where the runs start."""
    if tiny:
        return dataset.DataOptions(REPOSITORY / data, runs_dir / "cache", image_size, demo=True,
                                   **{"limit": TINY_IMAGES, **cli.DEMO_SPLITS, **splits})
    return dataset.DataOptions(REPOSITORY / data, cache.default_cache_dir(), image_size, **splits)


def data_flags(options: dataset.DataOptions) -> list[str]:
    """The flags that give a script the images and the split of `options` (their labels are each run's own)."""
    source = ["--demo", "--cache-dir", str(options.cache_dir)] if options.demo else ["--data", str(options.data)]
    return [*source, *(["--limit", str(options.limit)] if options.limit else []),
            "--split-seed", str(options.split_seed), "--test-fraction", str(options.test_fraction),
            "--val-fraction", str(options.val_fraction)]


def resolution(checkpoint: dict) -> tuple[int, int]:
    """(image size, cache size) in px of a SimSiam checkpoint's pretraining, for every classifier run: the SimSiam
    backbone is probed at the scale it learned (as classifier.py does by itself), and the random backbone sees
    the same pixels, so the runs differ only in the weights."""
    return pretrained.resolution(None, None, checkpoint["args"], checkpoint["args"]["image_size"])


def resolution_flags(checkpoint: dict) -> list[str]:
    """resolution() as classifier.py's flags."""
    image_size, cache_size = resolution(checkpoint)
    return ["--image-size", str(image_size), "--cache-size", str(cache_size)]


# ---------------------------------------------------------------- running the scripts


def run(command: list[str], log: Path, threads: int | None = None) -> float:
    """Run a repository script (`command` = script and arguments) from the repository root, its output into
    `log`, with `threads` CPU threads for torch (its default, all cores, when None); seconds taken. Raises
    runs.RunError with the end of the log when it fails, runs.Interrupted after Ctrl-C once the script, which
    had the Ctrl-C too, has saved what it had and ended."""
    started = time.perf_counter()
    environment = {**os.environ, **({"OMP_NUM_THREADS": str(threads)} if threads else {})}
    with open(log, "w") as file, subprocess.Popen([sys.executable, *command], cwd=REPOSITORY, stdout=file,
                                                  stderr=subprocess.STDOUT, env=environment) as process:
        try:
            returncode = process.wait()
        except KeyboardInterrupt:
            process.wait()
            raise interrupted(f"{command[0]} stopped, its log in {log}") from None
    if returncode:
        raise runs.RunError(f"failed ({returncode}): {' '.join(command)}\n{log.read_text()[-3000:]}")
    return time.perf_counter() - started


def interrupted(what: str) -> runs.Interrupted:
    """The exit of an experiment stopped by Ctrl-C: what stopped, and how to go on."""
    return runs.Interrupted(f"interrupted: {what}; run the same command again to go on (finished runs are "
                            f"reused, an unfinished pretraining resumes)", signal.SIGINT)


def run_once(command: list[str], log: Path, resume: bool = False, threads: int | None = None) -> float:
    """`run`, unless this exact command already finished (a second try of an experiment reuses every run the
    first one finished); seconds taken, or those recorded. LOG.run.json records the command before it starts
    and its seconds once it has finished. With `resume` (train.py), a run the same command left unfinished
    continues from its last.pt instead of starting again."""
    record_path = log.with_suffix(".run.json")
    record = json.loads(record_path.read_text()) if record_path.is_file() else {}
    out = Path(command[command.index("--out") + 1]) if "--out" in command else None
    if record.get("command") == command and "seconds" in record and (out is None or out.is_dir()):
        print(f"reused, finished before: {log.stem}", flush=True)
        return record["seconds"]
    attempt = command
    if (resume and record.get("command") == command and "--overwrite" in command and out is not None
            and (out / "last.pt").is_file()):
        attempt = [flag if flag != "--overwrite" else "--resume" for flag in command]
        print(f"resuming the unfinished {log.stem} from {out / 'last.pt'}", flush=True)
    record_path.write_text(json.dumps({"command": command}) + "\n")
    seconds = run(attempt, log, threads)
    record_path.write_text(json.dumps({"command": command, "seconds": round(seconds, 1)}) + "\n")
    return seconds


def run_all(jobs: list[tuple[list[str], Path]], parallel: int) -> list[float]:
    """Run (command, log) jobs `parallel` at a time (classifier runs share one GPU), in the order given, with a
    line as each finishes; seconds of each, in that order. After a failure no further job starts, and the error
    is raised once the running ones are done. Each run gets its share of the CPU cores, so that the runs'
    thread pools do not fight over them."""
    threads = max(1, (os.cpu_count() or 1) // parallel)
    with ThreadPoolExecutor(parallel) as pool:
        futures = {pool.submit(run_once, command, log, threads=threads): log for command, log in jobs}
        try:
            for done, future in enumerate(as_completed(futures), start=1):
                if future.exception() is not None:
                    pool.shutdown(wait=True, cancel_futures=True)
                    raise future.exception()
                print(f"[{done}/{len(jobs)}] {futures[future].stem}: {future.result():.0f} s", flush=True)
        except KeyboardInterrupt:  # the running scripts had the Ctrl-C too: they end; no queued run starts
            pool.shutdown(wait=True, cancel_futures=True)
            raise interrupted("no further run started") from None
    return [future.result() for future in futures]


def add_folder_arguments(parser: argparse.ArgumentParser, runs: str) -> None:
    """--data, --runs (default `runs`) and --results, the folders of every experiment that reports a result."""
    parser.add_argument("--data", type=Path, default=Path("data/PetImages"),
                        help="the image folder, relative to the repository root (default: %(default)s)")
    parser.add_argument("--runs", type=Path, default=Path(runs), help="where the runs go (default: %(default)s)")
    parser.add_argument("--results", type=Path, default=Path("results"),
                        help="where the small files go (default: %(default)s)")


def add_label_seeds_argument(parser: argparse.ArgumentParser) -> None:
    """--label-seeds: one labelled subset per seed, each probed in its own run folder."""
    parser.add_argument("--label-seeds", type=cli.seed, nargs="+", default=[0, 1, 2],
                        help="one labelled subset per seed, each its own run folder (default: %(default)s)")


def check_label_seeds(parser: argparse.ArgumentParser, args: argparse.Namespace) -> None:
    """Refuse a seed given twice: its two runs would race for one folder."""
    if len(set(args.label_seeds)) < len(args.label_seeds):
        parser.error(f"--label-seeds must differ from each other, got {' '.join(map(str, args.label_seeds))}")


def add_pretraining_arguments(parser: argparse.ArgumentParser) -> None:
    """The pretraining's flags, passed on to train.py (its defaults where absent), or --checkpoint for none."""
    group = parser.add_argument_group("pretraining (train.py's defaults where not given)")
    group.add_argument("--checkpoint", type=Path, default=None,
                       help="an existing SimSiam siam.pt pretrained on the same split: no pretraining")
    group.add_argument("--epochs", type=cli.positive(int), default=None, help="train.py --epochs")
    group.add_argument("--image-size", type=cli.image_size, default=None, help="train.py --image-size (px)")
    group.add_argument("--batch-size", type=cli.batch_size, default=None, help="train.py --batch-size")
    group.add_argument("--cache-size", type=cli.positive(int), default=None, help="train.py --cache-size (px)")


def pretraining_options(args: argparse.Namespace) -> dict:
    """The pretraining options that differ from train.py's defaults: TINY_TRAIN's under --tiny, then those given."""
    given = {key: getattr(args, key) for key in ("epochs", "image_size", "batch_size", "cache_size")}
    return {**(TINY_TRAIN if args.tiny else {}), **{key: value for key, value in given.items() if value is not None}}


def pretraining_flags(args: argparse.Namespace) -> list[str]:
    """train.py's flags for pretraining_options."""
    return [text for key, value in pretraining_options(args).items()
            for text in ("--" + key.replace("_", "-"), str(value))]


def pretraining_settings(args: argparse.Namespace) -> dict:
    """What train.py will run with: its defaults (recipe.DEFAULTS, device auto), then pretraining_options."""
    return {**recipe.DEFAULTS, "device": "auto", **pretraining_options(args)}


def pretrain(data: list[str], out: Path, flags: list[str], log: Path) -> tuple[list[str], float]:
    """train.py on `data` into `out` with `flags`: (its command, seconds). A second try of the experiment reuses
    a pretraining that finished and resumes one that was cut short (run_once)."""
    command = ["train.py", *data, "--out", str(out), "--overwrite", *flags]
    seconds = run_once(command, log, resume=True)
    print(f"pretrained in {seconds:.0f} s: {out / 'siam.pt'}")
    return command, seconds


DEMO_IMAGES = 2 * dataset.DEMO_PER_CLASS
DEMO_PRETRAINING_IMAGES = round(DEMO_IMAGES * (1 - cli.DEMO_SPLITS["test_fraction"] - cli.DEMO_SPLITS["val_fraction"]))
# ^ the most a demo batch holds


def measured_throughput(settings: dict, runs_dir: Path) -> float:
    """images/s of train.py's own pipeline at the pretraining's image size, batch and device on this machine, from
    a short bench.py run on the demo set (generated images: the real data is not decoded for it; the batch at most
    the demo's pretraining images)."""
    out = runs_dir / "throughput.json"
    run(["bench.py", "--demo", "--no-baseline", "--cache-dir", str(runs_dir / "cache"), "--steps", "10",
         "--warmup", "3", "--image-size", str(settings["image_size"]),
         "--batch-size", str(min(settings["batch_size"], DEMO_PRETRAINING_IMAGES)), "--device", settings["device"],
         "--json", str(out)], runs_dir / "throughput.log")
    return json.loads(out.read_text())["pipeline_images_per_s"]


def pretraining_images(options: dataset.DataOptions) -> int:
    """How many images one pretraining epoch on the data `options` sees, from the file list alone."""
    total = DEMO_IMAGES if options.demo else len(dataset.find_images(options.data)[0])
    return round(min(total, options.limit or math.inf) * (1 - options.test_fraction - options.val_fraction))


# Rough costs of one image relative to one SimSiam image (two views, forward and backward, predictor included),
# for the estimate printed before an experiment starts: a fine-tuned image is one view through the backbone
# forward and backward, a frozen one a forward pass only
RELATIVE_COST = {"finetune": 0.5, "frozen": 0.17}


def estimate(images_per_s: float, pretraining_images: int, classifier_images: dict[str, int]) -> str:
    """The estimated wall time of an experiment, for people: `pretraining_images` SimSiam images (epochs x
    images) and `classifier_images` {"finetune"|"frozen": epochs x images over all runs}, at the measured
    throughput of the SimSiam step; decoding, evaluation and process start-up are not included."""
    parts = []
    if pretraining_images:
        parts.append(f"pretraining {runs.duration(pretraining_images / images_per_s)}")
    if classifier_images:
        classifier_s = sum(RELATIVE_COST[mode] * n for mode, n in classifier_images.items()) / images_per_s
        parts.append(f"classifier runs about {runs.duration(classifier_s)} one after another")
    return (f"estimated from {images_per_s:,.0f} SimSiam images/s measured now: {', '.join(parts)} (decoding, "
            f"evaluation and start-up not included)")


def shown(command: list[str], runs_dir: Path, runs: Path) -> str:
    """A run's command as a person would type it, with the runs folder as given on the command line."""
    return "python " + " ".join(command).replace(str(runs_dir), runs.as_posix())


# ---------------------------------------------------------------- what the runs leave


def final_record(run_dir: Path) -> dict:
    """The final record of a classifier run: test_accuracy, num_test and, for frozen runs,
    closed_form_accuracy and its penalty, folds and cross-validation scores."""
    return runs.final_record(run_dir / "metrics.jsonl")


def pretraining_summary(folder: Path) -> dict:
    """Epochs, final and lowest z-std (the collapse metric), final kNN accuracy and median images/s of a
    train.py run folder."""
    epochs = [record for record in runs.read_jsonl(folder / "metrics.jsonl") if "epoch" in record]
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
    return f"{gpu}, {devices.cpu_name()} ({os.cpu_count()} cores), torch {torch.__version__}"
