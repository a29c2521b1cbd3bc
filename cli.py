"""What the scripts share at the command line: argument groups and presets, the one-line error report, and the
run folder (resolved arguments, an append-only metrics.jsonl, the code version). Devices: devices.py."""
from __future__ import annotations

import argparse
import functools
import json
import math
import os
import signal
import subprocess
import sys
import time
from pathlib import Path


import cache
import dataset
import devices
import download
from model import CheckpointError

REPOSITORY = Path(__file__).resolve().parent


class RunError(Exception):
    """A run that cannot go on as asked (a setting that does not fit the data, a checkpoint that may leak the
    test split); the message says what to change."""


class Interrupted(Exception):
    """A run stopped by SIGINT or SIGTERM after saving what it had; exits with 128 + the signal's number."""

    def __init__(self, message: str, signal_number: int):
        super().__init__(message)
        self.exit_status = 128 + signal_number


# reported as one line, exit 2
ERRORS = (RunError, dataset.DataError, cache.CacheError, download.DownloadError, CheckpointError, devices.DeviceError)


def report(message: str) -> None:
    """One line on stderr, naming the process when torchrun started several."""
    rank = f"rank {os.environ['RANK']}: " if int(os.environ.get("WORLD_SIZE", "1")) > 1 else ""
    print(f"{rank}error: {message}", file=sys.stderr)


def reports_errors(main):
    """Decorate a script's main: the library's errors become one line on stderr and exit status 2, Ctrl-C one
    line and exit status 130; a bug still shows its traceback."""
    @functools.wraps(main)
    def run(argv=None):
        try:
            return main(argv)
        except ERRORS as error:
            report(str(error))
            raise SystemExit(2) from None
        except Interrupted as stop:
            print(stop, file=sys.stderr)
            raise SystemExit(stop.exit_status) from None
        except KeyboardInterrupt:
            print("interrupted", file=sys.stderr)
            raise SystemExit(130) from None
    return run


# ---------------------------------------------------------------- arguments


def in_range(kind, low: float, high: float = math.inf, include_low: bool = True):
    """argparse type: a finite number of `kind` in [low, high) (or (low, high) without include_low), with the
    valid range in the error."""
    def parse(text: str):
        value = kind(text)
        above = value >= low if include_low else value > low
        if not (math.isfinite(value) and above and value < high):
            if high == math.inf:
                bounds = f"{'>=' if include_low else '>'} {low}" + (" and finite" if kind is float else "")
            else:
                bounds = f"between {low} and {high}, excluding {'' if include_low else f'{low} and '}{high}"
            raise argparse.ArgumentTypeError(f"must be {bounds}, got {text}")
        return value
    return parse


def positive(kind):
    """argparse type: a finite number > 0."""
    return in_range(kind, 0, include_low=False)


fraction = in_range(float, 0, 1, include_low=False)  # a share strictly between 0 and 1
seed = in_range(int, 0, 2 ** 32)  # torch seeds are 64-bit; epoch seeds multiply this by about 2^30
MIN_IMAGE_SIZE = 16  # px: the 13 px blur kernel must fit, and ResNet18 halves the side five times
image_size = in_range(int, MIN_IMAGE_SIZE)
batch_size = in_range(int, 2)  # BatchNorm in training needs two samples


def add_data_arguments(parser: argparse.ArgumentParser) -> None:
    """The data flags every script shares; equal values give every script the same splits."""
    group = parser.add_argument_group("data")
    group.add_argument("--data", type=Path, default=Path("data/PetImages"),
                       help="image folder: one sub-folder per class (PetImages/Cat, PetImages/Dog) "
                            "or Kaggle's flat train/cat.0.jpg layout (default: %(default)s)")
    group.add_argument("--download", action="store_true",
                       help="first fetch and unpack Microsoft's archive (787 MB) into the parent of --data, "
                            "resuming a partial download")
    group.add_argument("--download-url", default=download.DEFAULT_URL, help="where --download fetches from")
    group.add_argument("--demo", action="store_true",
                       help="use a generated two-class set instead of --data, with the small settings shown as "
                            "'--demo' in this help")
    group.add_argument("--cache-dir", type=Path, default=cache.default_cache_dir(),
                       help="where decoded images are cached (default: %(default)s)")
    group.add_argument("--cache-size", type=positive(int), default=None,
                       help="cache resolution in px (default: 8/7 of --image-size, as 256/224 on ImageNet)")
    group.add_argument("--limit", type=positive(int), default=None, help="use a seeded subset of N images")
    group.add_argument("--workers", type=positive(int), default=None, help="decoding processes (default: all cores)")
    group = parser.add_argument_group("splits (keep equal across scripts)")
    group.add_argument("--split-seed", type=seed, default=0, help="seed of the held-out test split and of --limit")
    group.add_argument("--test-fraction", type=fraction, default=0.1,
                       help="stratified test split, never seen by pretraining or the labels (default: %(default)s)")
    group.add_argument("--labels", type=positive(int), default=250,
                       help="size of the labelled subset, balanced per class (default: %(default)s)")
    group.add_argument("--label-seed", type=seed, default=0, help="seed of the labelled subset draw")


def add_run_arguments(group) -> None:
    group.add_argument("--seed", type=seed, default=0,
                       help="seed of initialisation, batch order and augmentation (not of the splits)")
    group.add_argument("--device", default="auto",
                       help="auto (the current CUDA GPU when PyTorch sees one, else cpu), or any name torch.device "
                            "takes: cpu, cuda, cuda:1; mps and other accelerators are untested here "
                            "(default: %(default)s)")
    group.add_argument("--precision", choices=devices.PRECISIONS, default="auto",
                       help="auto: bf16 autocast on CUDA, fp32 elsewhere (default: %(default)s)")


DEMO_SPLITS = {"test_fraction": 0.25}  # --demo in every script: 200 of the 800 demo images held out, enough to
# tell a 10-point difference from noise (one standard error is about 3.5 points)


def parse(parser: argparse.ArgumentParser, argv, demo: dict) -> argparse.Namespace:
    """Parse argv; under --demo, DEMO_SPLITS and the script's `demo` preset replace the defaults first (explicit
    flags still win). --demo with a --data of its own is refused: the demo set would silently replace it."""
    if parser.parse_known_args(argv)[0].demo:
        parser.set_defaults(**DEMO_SPLITS, **demo)
    args = parser.parse_args(argv)
    if args.demo and args.data != parser.get_default("data"):
        parser.error("--demo trains on a generated set and would ignore --data: pass one or the other")
    return args


def pretrained_resolution(image_size: int | None, cache_size: int | None, pretrained: dict | None,
                          fallback_image_size: int) -> tuple[int, int]:
    """(image size, cache size) in px for a backbone pretrained with the arguments `pretrained`: an explicit flag
    wins; otherwise the checkpoint's, so that the backbone sees the scale and the cached pixels it was pretrained
    on (its cache size None means dataset.default_cache_size). The cache follows the checkpoint's only while the
    image size does. Without a checkpoint, `fallback_image_size`."""
    if image_size is None:
        image_size = pretrained["image_size"] if pretrained is not None else fallback_image_size
    if cache_size is None and pretrained is not None and image_size == pretrained["image_size"]:
        cache_size = pretrained["cache_size"]
    return image_size, cache_size or dataset.default_cache_size(image_size)


# ---------------------------------------------------------------- durations


def duration(seconds: float) -> str:
    """A duration for people: 45 s, 3.2 min, 1.5 h."""
    if seconds < 90:
        return f"{seconds:.0f} s"
    return f"{seconds / 60:.1f} min" if seconds < 5400 else f"{seconds / 3600:.1f} h"


# ---------------------------------------------------------------- the run folder

RUN_FILES = ("args.json", "metrics.jsonl", "siam.pt", "last.pt", "classifier.pt", "labelled.json")  # what runs write


def writable_folder(folder: Path, flag: str) -> Path:
    """Create `folder` and check it can be written, before any work starts."""
    try:
        folder.mkdir(parents=True, exist_ok=True)
        probe = folder / f".write-test-{os.getpid()}"
        probe.write_text("")
        probe.unlink()
    except OSError as error:
        raise RunError(f"cannot write to {folder} ({error.strerror or error}): choose another with {flag}") from None
    return folder


def prepare_out(out: Path, overwrite: bool = False, resume_from: Path | None = None) -> Path:
    """The run folder, checked before any work: a folder that holds another run is refused unless the run
    continues it (`resume_from` its last.pt) or replaces it (`overwrite`: its run files are deleted first,
    nothing else)."""
    held = [name for name in RUN_FILES if (out / name).exists()]
    if resume_from is not None and not resume_from.is_file():
        raise RunError(f"nothing to resume: {resume_from} does not exist (start the run without --resume)")
    continues_out = resume_from is not None and resume_from.resolve() == (out / "last.pt").resolve()
    if held and not continues_out:
        if not overwrite:
            offer = "continue it with --resume, " if "last.pt" in held else ""
            raise RunError(f"{out} already holds a run ({', '.join(held)}): {offer}choose another --out, or pass "
                           f"--overwrite to replace it")
        for name in held:
            (out / name).unlink()
    return writable_folder(out, "--out")


def resume_checkpoint(args: argparse.Namespace) -> Path | None:
    """The checkpoint --resume continues from: OUT/last.pt for a bare --resume, PATH (or PATH/last.pt for a
    folder) for --resume PATH, None without --resume."""
    if args.resume is None:
        return None
    if args.resume is True:
        return args.out / "last.pt"
    return args.resume / "last.pt" if args.resume.is_dir() else args.resume


def add_output_arguments(group, default: Path | None, resumable: bool, shown_default: str = "%(default)s") -> None:
    """--out and what to do when it already holds a run (--overwrite, and --resume where a run can continue)."""
    unless = "--resume or --overwrite" if resumable else "--overwrite"
    group.add_argument("--out", type=Path, default=default,
                       help=f"run folder (default: {shown_default}); one holding another run is refused "
                            f"unless {unless}")
    choice = group.add_mutually_exclusive_group()
    choice.add_argument("--overwrite", action="store_true",
                        help="replace the run in --out: its run files are deleted before any work starts")
    if resumable:
        choice.add_argument("--resume", nargs="?", type=Path, const=True, default=None, metavar="PATH",
                            help="continue the interrupted or finished run in --out from its last.pt, or from the "
                                 "checkpoint PATH (a last.pt, or a run folder) into --out")


class StopSignals:
    """Within `with`, SIGINT and SIGTERM only set `.signal_number`; the loop checks it after each step, saves,
    and stops. Clusters preempt with SIGTERM; Ctrl-C sends SIGINT."""

    def __init__(self):
        self.signal_number: int | None = None
        self.previous = {}

    def __enter__(self) -> StopSignals:
        for number in (signal.SIGINT, signal.SIGTERM):
            self.previous[number] = signal.signal(number, self.request)
        return self

    def request(self, number: int, frame) -> None:
        self.signal_number = number

    def __exit__(self, *exception) -> None:
        for number, handler in self.previous.items():
            signal.signal(number, handler)


@functools.cache
def code_version() -> dict:
    """The git commit of this repository and whether the working tree had changes, when git can tell."""
    def git(*arguments: str) -> str:
        return subprocess.run(["git", *arguments], cwd=REPOSITORY, capture_output=True, text=True, check=True,
                              timeout=10).stdout.strip()
    try:
        return {"commit": git("rev-parse", "HEAD"), "dirty": bool(git("status", "--porcelain", "--untracked-files=no"))}
    except (OSError, subprocess.SubprocessError):
        return {"commit": None, "dirty": None}


def plain_args(args: argparse.Namespace) -> dict:
    """The arguments as builtins (paths as strings), for JSON and for weights_only checkpoints."""
    return {key: str(value) if isinstance(value, Path) else value for key, value in vars(args).items()}


def save_args(out: Path, args: argparse.Namespace, **derived) -> None:
    """OUT/args.json: the resolved arguments, derived values and the code version of this run."""
    record = {**plain_args(args), **derived, "code": code_version()}
    (out / "args.json").write_text(json.dumps(record, indent=2) + "\n")


class Metrics:
    """OUT/metrics.jsonl: one flat JSON object per event, appended and flushed at once."""

    def __init__(self, path: Path):
        self.path = path

    def log(self, **record) -> None:
        record = {"time": round(time.time(), 3), **record}
        with open(self.path, "a") as file:
            file.write(json.dumps(record) + "\n")


def read_jsonl(path: Path) -> list[dict]:
    """The records (JSON objects) of a metrics file; a line cut short by a killed process, or anything else
    that is not an object, is skipped."""
    records = []
    for line in Path(path).read_text(errors="replace").splitlines():
        try:
            record = json.loads(line)
        except json.JSONDecodeError:
            continue
        if isinstance(record, dict):
            records.append(record)
    return records


def final_of(records: list[dict]) -> dict | None:
    """The classifier's closing record (event "final") among a metrics file's records; None for a run that did
    not finish."""
    return next((record for record in reversed(records) if record.get("event") == "final"), None)


def final_record(path: Path) -> dict | None:
    """final_of the records of the metrics file `path`."""
    return final_of(read_jsonl(path))


def truncate_metrics(path: Path, after_epoch: int) -> None:
    """Drop the records of epochs after `after_epoch` (a resumed run writes them again), atomically."""
    if path.is_file():
        kept = [record for record in read_jsonl(path) if record.get("epoch", 0) <= after_epoch]
        temporary = path.with_name(path.name + ".tmp")
        temporary.write_text("".join(json.dumps(record) + "\n" for record in kept))
        os.replace(temporary, path)


# How every figure draws a run: a colour per backbone (one per run in turn) and a line style per mode.
COLOURS = {"random": ["tab:gray", "black", "silver"],
           "simsiam": ["tab:blue", "tab:orange", "tab:green", "tab:red", "tab:purple", "tab:brown"]}
LINESTYLES = {"frozen": "-", "finetune": "--"}


def classifier_run_name(random: bool, finetune: bool, all_labels: bool = False) -> str:
    """The classifier's default run folder name: classifier-{random|simsiam}-{frozen|finetune}[-all-labels]."""
    name = f"classifier-{'random' if random else 'simsiam'}-{'finetune' if finetune else 'frozen'}"
    return name + ("-all-labels" if all_labels else "")
