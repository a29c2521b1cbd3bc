"""A run's folder and its life: the checks before any work (a writable folder, one that holds no other run), its
lock (one process at a time), the resolved arguments (args.json) and the code version, the append-only metrics.jsonl,
stop signals, run names and durations for people. Every script that writes a run uses it; nothing here reads the
command line."""
from __future__ import annotations

import argparse
import contextlib
import functools
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import NamedTuple

try:
    import fcntl
except ImportError:  # Windows
    fcntl = None

from tqdm import tqdm

from simsiam.model import CheckpointError

REPOSITORY = Path(__file__).resolve().parents[1]

# The version of the evaluation protocol, recorded in every args.json and SimSiam checkpoint; raised whenever a
# change makes new figures incomparable with older ones. 1: the kNN monitor read the test split at every epoch and
# the blur's sigma was 0.1-2 px at every image size. 2: the monitor reads a validation split (--val-fraction) held
# out from pretraining and labels; the blur scales with the image size; the closed-form probe chooses its penalty
# by cross-validated accuracy over a wider grid; classifier runs record their test predictions for paired
# comparisons.
PROTOCOL = 2


class RunError(Exception):
    """A run that cannot go on as asked (a setting that does not fit the data, a checkpoint that may leak the
    test split); the message says what to change."""


class Interrupted(Exception):
    """A run stopped by SIGINT or SIGTERM after saving what it had; exits with 128 + the signal's number."""

    def __init__(self, message: str, signal_number: int):
        super().__init__(message)
        self.exit_status = 128 + signal_number


def count(number: int, noun: str) -> str:
    """"1 epoch", "20 epochs": a count and its noun, for people."""
    return f"{number:,} {noun}{'' if number == 1 else 's'}"


def duration(seconds: float) -> str:
    """A duration for people: 45 s, 3.2 min, 1.5 h."""
    if seconds < 90:
        return f"{seconds:.0f} s"
    return f"{seconds / 60:.1f} min" if seconds < 5400 else f"{seconds / 3600:.1f} h"


# ---------------------------------------------------------------- the run folder

TENSORBOARD = "tensorboard"  # OUT/tensorboard: TensorBoard's event files, under --tensorboard
RUN_FILES = ("args.json", "metrics.jsonl", "predictions.json", "siam.pt", "last.pt", "backbone.pt", "classifier.pt",
             "labelled.json", TENSORBOARD)  # what runs write


def writable_folder(folder: Path, flag: str, create: bool = True) -> Path:
    """Check that `folder` can be written, before any work starts: created when `create`, else probed in it or
    its nearest existing parent, so that a command refused later leaves no empty folder behind."""
    if folder.exists() and not folder.is_dir():
        raise RunError(f"{flag} {folder} is a file, not a folder: choose a folder with {flag}")
    try:
        if create:
            folder.mkdir(parents=True, exist_ok=True)
        probed = next(path for path in (folder, *folder.parents) if path.exists())
        probe = probed / f".write-test-{os.getpid()}"
        probe.write_text("")
        probe.unlink()
    except OSError as error:
        raise RunError(f"cannot write to {folder} ({error.strerror or error}): choose another with {flag}") from None
    return folder


class RunFolder(NamedTuple):
    """A run folder as check_out found it: the run files it `held`, and those this run deletes once it starts."""
    out: Path
    held: tuple[str, ...]
    replaced: tuple[str, ...]


def check_out(out: Path, overwrite: bool = False, resume_from: Path | None = None,
              resumable: bool = False) -> RunFolder:
    """Check the run folder before any work, changing nothing: a folder that holds another run is refused unless
    the run continues it (`resume_from` its last.pt) or replaces it (`overwrite`); `resumable`: the script has
    --resume to offer."""
    held = tuple(name for name in RUN_FILES if (out / name).exists())
    strangers = [name for name in held if (out / name).is_dir() != (name == TENSORBOARD) or (out / name).is_symlink()]
    if strangers:
        raise RunError(f"{out / strangers[0]} is not what a run writes there (a "
                       f"{'folder' if (out / strangers[0]).is_dir() else 'file or link'}): this project deletes or "
                       f"replaces only its own files; move it, or choose another --out")
    if resume_from is not None and not resume_from.is_file():
        raise RunError(f"nothing to resume: {resume_from} does not exist (start the run without --resume)")
    continues_out = resume_from is not None and resume_from.resolve() == (out / "last.pt").resolve()
    if held and not continues_out and not overwrite:
        offer = "continue it with --resume, " if resumable and "last.pt" in held else ""
        raise RunError(f"{out} already holds a run ({', '.join(held)}): {offer}choose another --out, or pass "
                       f"--overwrite to replace it")
    writable_folder(out, "--out", create=False)
    return RunFolder(out, held, () if continues_out else held)


_locks = {}  # run folder -> its open lock file, for each run folder this process holds


def hold(out: Path) -> None:
    """Hold the run folder `out` for this process: OUT/.lock, locked until release() (at the end of the script's
    main, cli.reports_errors) or the process's end, however it ends; a second process is refused. POSIX only: on
    Windows a run folder is not locked."""
    key = out.resolve()
    if key in _locks or fcntl is None:
        return
    lock = open(out / ".lock", "a+")
    try:
        fcntl.flock(lock, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        lock.seek(0)
        holder = lock.read().strip() or "unknown"
        lock.close()
        raise RunError(f"{out} is being written by another process (pid {holder}): wait for it to end, or choose "
                       f"another --out") from None
    lock.truncate(0)
    lock.write(f"{os.getpid()}\n")
    lock.flush()
    _locks[key] = lock


def release() -> None:
    """Let go of every run folder this process holds (hold), first putting back any run that it was replacing and
    has not yet replaced with a good checkpoint (start_run)."""
    while _replacing:
        _put_back(_replacing.popitem()[1])
    while _locks:
        _locks.popitem()[1].close()


REPLACED = ".replaced"  # OUT/.replaced: the files of the run an --overwrite replaces, until its first good save


def start_run(folder: RunFolder) -> None:
    """Create the run folder, hold it (hold), and set the files of the run it replaces aside in OUT/.replaced:
    called just before the first step, when the data, the checkpoint and the settings have all passed their checks
    (check_out). They are deleted once this run has saved its first good checkpoint (replaced_run_gone), and put
    back if it ends before that (release), so that a failed --overwrite loses nothing."""
    out = folder.out
    out.mkdir(parents=True, exist_ok=True)
    hold(out)
    appeared = [name for name in RUN_FILES if (out / name).exists() and name not in folder.held]
    if appeared:  # written by a run that started together with this one and has already ended
        raise RunError(f"{out} received {', '.join(appeared)} from another run while this one started: choose "
                       f"another --out, or pass --overwrite to replace it")
    if not folder.replaced:
        return
    aside = out / REPLACED
    if aside.exists():
        raise RunError(f"{aside} holds the files of a run that an --overwrite, killed before its first checkpoint, "
                       f"was replacing: move them back into {out} to keep that run, or delete {aside}")
    aside.mkdir()
    _replacing[out.resolve()] = out
    _move_run_files(out, aside)


_replacing = {}  # run folder -> its path, for each run folder whose replaced run waits in OUT/.replaced


def replaced_run_gone(out: Path) -> None:
    """Delete the run that this run replaces (start_run), now that this one has saved a good checkpoint."""
    if _replacing.pop(out.resolve(), None) is not None:
        _remove_run_files(out / REPLACED)
        (out / REPLACED).rmdir()


def _run_files(folder: Path) -> list[Path]:
    """The files a run wrote in `folder`, relative to it: its RUN_FILES and its TensorBoard event files, nothing
    else of the user's."""
    return ([Path(name) for name in RUN_FILES if name != TENSORBOARD and (folder / name).is_file()]
            + [events.relative_to(folder) for events in (folder / TENSORBOARD).glob("events.out.tfevents.*")])


def _move_run_files(source: Path, target: Path) -> None:
    for name in _run_files(source):
        (target / name).parent.mkdir(exist_ok=True)
        os.replace(source / name, target / name)


def _remove_run_files(folder: Path) -> None:
    for name in _run_files(folder):
        (folder / name).unlink()
    with contextlib.suppress(OSError):  # only when nothing of the user's is left in it
        (folder / TENSORBOARD).rmdir()


def _put_back(out: Path) -> None:
    """Delete the files of a run that ended before its first good checkpoint and put back the run it was replacing."""
    _remove_run_files(out)
    _move_run_files(out / REPLACED, out)
    with contextlib.suppress(OSError):
        (out / REPLACED / TENSORBOARD).rmdir()
    (out / REPLACED).rmdir()
    print(f"the run in {out} that this one was to replace is back as it was", file=sys.stderr)


def resume_checkpoint(resume: Path | bool | None, out: Path) -> Path | None:
    """The checkpoint --resume continues from: OUT/last.pt for a bare --resume (True), PATH (or PATH/last.pt for a
    folder) for --resume PATH, None without --resume."""
    if resume is None:
        return None
    if resume is True:
        return out / "last.pt"
    return resume / "last.pt" if resume.is_dir() else resume


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


def check_protocol(checkpoint: dict, path: Path) -> None:
    """Refuse a SimSiam checkpoint written under another evaluation protocol (PROTOCOL): its monitor may have read
    the test split, and its augmentation differs from today's."""
    if checkpoint.get("protocol") != PROTOCOL:
        raise CheckpointError(f"{path} was pretrained under evaluation protocol {checkpoint.get('protocol', 1)}, "
                              f"this code's is {PROTOCOL} (its kNN monitor read the test split, and its blur was not "
                              f"scaled to the image size): pretrain again with train.py")


def progress_bar(iterable=None, show: bool = True, **options) -> tqdm:
    """A tqdm bar, hidden where `show` is False (another rank's, a loop of one batch). Otherwise `disable` is left to
    tqdm, whose TQDM_DISABLE=1 (and the other TQDM_ variables) would be overridden by an explicit disable=False."""
    return tqdm(iterable, **options, **({} if show else {"disable": True}))


def plain_args(args: argparse.Namespace) -> dict:
    """The arguments as builtins (paths as strings), for JSON and for weights_only checkpoints."""
    return {key: str(value) if isinstance(value, Path) else value for key, value in vars(args).items()}


def save_args(out: Path, args: argparse.Namespace, **derived) -> None:
    """OUT/args.json: the resolved arguments, derived values, the protocol and the code version of this run."""
    record = {**plain_args(args), **derived, "protocol": PROTOCOL, "code": code_version()}
    (out / "args.json").write_text(json.dumps(record, indent=2) + "\n")


def summary_writer():
    """torch's TensorBoard SummaryWriter class; a RunError naming the install command when the tensorboard package,
    which it needs and the project does not require, is missing."""
    try:
        from torch.utils.tensorboard import SummaryWriter
    except ImportError:
        raise RunError("--tensorboard needs the tensorboard package, which is not installed: pip install "
                       "tensorboard (or run without --tensorboard; metrics.jsonl holds the same records)") from None
    return SummaryWriter


class Metrics:
    """OUT/metrics.jsonl: one flat JSON object per event, appended and flushed at once. With `tensorboard`, each
    record also goes to TensorBoard's event files in OUT/tensorboard, from the same dictionary, so the two never
    disagree: its numbers as scalars at step `epoch` (an event's, such as the classifier's final record, under
    EVENT/key at the last epoch), at the record's time. `purge_from`: the first epoch a resumed run writes again;
    TensorBoard hides the earlier run's events from there on, as truncate_metrics drops its records."""

    def __init__(self, path: Path, tensorboard: bool = False, purge_from: int | None = None):
        self.path, self.tensorboard, self.purge_from = path, tensorboard, purge_from
        self.writer, self.step = None, 0  # the writer is opened by the first record, on the process that logs

    def log(self, **record) -> None:
        record = {"time": round(time.time(), 3), **record}
        with open(self.path, "a") as file:
            file.write(json.dumps(record) + "\n")
        if self.tensorboard:
            self.write_scalars(record)

    def write_scalars(self, record: dict) -> None:
        if self.writer is None:
            self.writer = summary_writer()(self.path.parent / TENSORBOARD, purge_step=self.purge_from)
        self.step = record.get("epoch", self.step)
        prefix = f"{record['event']}/" if "event" in record else ""
        for key, value in record.items():
            if isinstance(value, (int, float)) and not isinstance(value, bool) and key not in ("time", "epoch"):
                self.writer.add_scalar(prefix + key, value, self.step, walltime=record["time"])
        self.writer.flush()


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


def read_predictions(folder: Path) -> dict:
    """A classifier run's OUT/predictions.json (each test image's name, label and predicted classes); a RunError
    when the folder holds none that can be read."""
    try:
        return json.loads((folder / "predictions.json").read_text())
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as error:
        raise RunError(f"{folder} holds no readable predictions.json ({error.__class__.__name__}): pass the folder "
                       f"of a classifier run of this version") from None


def truncate_metrics(path: Path, after_epoch: int) -> None:
    """Drop the records of epochs after `after_epoch` (a resumed run writes them again), atomically."""
    if path.is_file():
        kept = [record for record in read_jsonl(path) if record.get("epoch", 0) <= after_epoch]
        temporary = path.with_name(path.name + ".tmp")
        temporary.write_text("".join(json.dumps(record) + "\n" for record in kept))
        os.replace(temporary, path)


def classifier_run_name(random: bool, finetune: bool, all_labels: bool = False) -> str:
    """The classifier's default run folder name: classifier-{random|simsiam}-{frozen|finetune}[-all-labels]."""
    name = f"classifier-{'random' if random else 'simsiam'}-{'finetune' if finetune else 'frozen'}"
    return name + ("-all-labels" if all_labels else "")
