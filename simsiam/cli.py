"""The command line the scripts share: argparse types with their valid ranges, the data, run and output flags, the
--demo presets, and the one-line error report with its exit status. Run folders: runs.py; devices: devices.py."""
from __future__ import annotations

import argparse
import codecs
import errno
import functools
import math
import os
import sys
from pathlib import Path

from simsiam import cache, dataset, devices, distributed, download, runs
from simsiam.model import MIN_IMAGE_SIZE, CheckpointError
from simsiam.runs import Interrupted, RunError

# a write that failed for want of space or permission, anywhere: reported as one line, exit 2
WRITE_FAILURES = {errno.ENOSPC, errno.EDQUOT, errno.EROFS, errno.EFBIG}
# reported as one line, exit 2
ERRORS = (RunError, dataset.DataError, cache.CacheError, download.DownloadError, CheckpointError, devices.DeviceError,
          distributed.LaunchError)


def report(message: str) -> None:
    """One line on stderr, naming the process when torchrun started several."""
    rank = f"rank {os.environ['RANK']}: " if int(os.environ.get("WORLD_SIZE", "1")) > 1 else ""
    print(f"{rank}error: {message}", file=sys.stderr)


def reports_errors(main):
    """Decorate a script's main: the library's errors, and a write that failed for want of space or permission
    (WRITE_FAILURES), become one line on stderr and exit status 2, Ctrl-C one line and exit status 130, a closed
    stdout pipe a quiet exit 141; a bug still shows its traceback. Its run folders are let go when it ends."""
    @functools.wraps(main)
    def run(argv=None):
        show_odd_names()
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
        except BrokenPipeError:  # the reader of stdout has gone (predict.py | head): end quietly, as Unix tools do
            os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())  # so that the exit's flush cannot fail
            raise SystemExit(128 + 13) from None  # 13: SIGPIPE
        except OSError as error:
            if error.errno not in WRITE_FAILURES:
                raise  # a bug, or something this project should have caught where it happened: the traceback
            report(f"cannot write {error.filename or 'a file'}: {error.strerror} (free some space, or choose a "
                   f"writable folder); the files written before are as they were")
            raise SystemExit(2) from None
        finally:
            runs.release()  # the run folders it held
    return run


def show_odd_names() -> None:
    """Let stdout and stderr print what their encoding cannot hold instead of raising UnicodeEncodeError at the
    first print of it: file names that are not valid UTF-8 (lone surrogates in Python) as dataset.shown does, and
    on a console that is not UTF-8 (PYTHONIOENCODING=ascii, a Latin-1 locale) every other character as a Python
    escape (\\u2192 for an arrow)."""
    def escape(error: UnicodeEncodeError) -> tuple[str, int]:
        text = dataset.shown(error.object[error.start:error.end])
        return text.encode("ascii", "backslashreplace").decode("ascii"), error.end
    codecs.register_error("shown", escape)
    for stream in (sys.stdout, sys.stderr):
        if hasattr(stream, "reconfigure"):
            stream.reconfigure(errors="shown")


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
    group.add_argument("--val-fraction", type=in_range(float, 0, 1), default=0.05,
                       help="stratified validation split, drawn after the test split and held out from pretraining "
                            "and the labels: the kNN monitor's queries, so that choices made while pretraining "
                            "never read the test split; 0: no monitor (default: %(default)s)")
    group.add_argument("--labels", type=positive(int), default=250,
                       help="size of the labelled subset, balanced per class (default: %(default)s)")
    group.add_argument("--label-seed", type=seed, default=0, help="seed of the labelled subset draw")


def add_run_arguments(group) -> None:
    group.add_argument("--seed", type=seed, default=0,
                       help="seed of initialisation, batch order and augmentation (not of the splits)")
    group.add_argument("--device", default="auto",
                       help="auto (the current CUDA GPU when PyTorch sees one, else cpu), or any name torch.device "
                            "takes: cpu, cuda, cuda:1; mps and other accelerators are untested here; train.py under "
                            "torchrun: auto, cuda or cpu (each process takes cuda:LOCAL_RANK) "
                            "(default: %(default)s)")
    group.add_argument("--precision", choices=devices.PRECISIONS, default="auto",
                       help="auto: bf16 autocast on CUDA, fp32 elsewhere (default: %(default)s)")


DEMO_SPLITS = {"test_fraction": 0.25, "val_fraction": 0.1}  # --demo in every script: 200 of the 800 demo images
# held out, enough to tell a 10-point difference from noise (one standard error is about 3.5 points), and 80 more
# for the kNN monitor


def parse(parser: argparse.ArgumentParser, argv, demo: dict, cpu: dict | None = None) -> argparse.Namespace:
    """Parse argv; under --demo, DEMO_SPLITS and the script's `demo` preset replace the defaults first, under
    --cpu (a script that has it) its `cpu` preset (explicit flags still win). --demo with a --data of its own is
    refused: the demo set would silently replace it."""
    known = parser.parse_known_args(argv)[0]
    if known.demo and getattr(known, "cpu", False):
        parser.error("--demo and --cpu are two presets: pass one")
    if known.demo:
        parser.set_defaults(**DEMO_SPLITS, **demo)
    if getattr(known, "cpu", False):
        parser.set_defaults(**cpu)
    args = parser.parse_args(argv)
    if args.demo and args.data != parser.get_default("data"):
        parser.error("--demo trains on a generated set and would ignore --data: pass one or the other")
    if getattr(args, "tensorboard", False):
        runs.summary_writer()  # refused before any work when the package is missing
    return args


def add_output_arguments(group, default: Path | None, resumable: bool, shown_default: str = "%(default)s") -> None:
    """--out and what to do when it already holds a run (--overwrite, and --resume where a run can continue)."""
    unless = "--resume or --overwrite" if resumable else "--overwrite"
    group.add_argument("--out", type=Path, default=default,
                       help=f"run folder (default: {shown_default}); one holding another run is refused "
                            f"unless {unless}")
    group.add_argument("--tensorboard", action="store_true",
                       help="also write every metrics.jsonl record to TensorBoard event files in OUT/tensorboard "
                            "(needs pip install tensorboard): tensorboard --logdir runs")
    choice = group.add_mutually_exclusive_group()
    choice.add_argument("--overwrite", action="store_true",
                        help="replace the run in --out: its run files are deleted before any work starts")
    if resumable:
        choice.add_argument("--resume", nargs="?", type=Path, const=True, default=None, metavar="PATH",
                            help="continue the interrupted or finished run in --out from its last.pt, or from the "
                                 "checkpoint PATH (a last.pt, or a run folder) into --out")
