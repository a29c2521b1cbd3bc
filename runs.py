"""What the scripts share besides the model and the data: flags, the one-line error report, run folders (args.json,
metrics.jsonl, the --overwrite promise), devices and precision, and torchrun (PyTorch DDP, nothing home-made)."""
import argparse
import contextlib
import errno
import functools
import json
import math
import os
import platform
import resource
import shutil
import signal
import subprocess
import sys
import time
from dataclasses import dataclass, field
from datetime import timedelta
from pathlib import Path

import numpy
import PIL
import torch
import torchvision
from torch import distributed as dist, nn

import dataset
from model import MIN_IMAGE_SIZE, UserError

# The evaluation protocol, in every args.json and SimSiam checkpoint, raised when figures stop being comparable. 2: the
# kNN monitor reads a validation split, not the test split; the blur scales with the image size; predictions saved.
PROTOCOL = 2

# ---------------------------------------------------------------- flags

def in_range(kind, low: float, high: float = math.inf, include_low: bool = True):
    """argparse type: a finite `kind` in [low, high), or (low, high) without include_low; the error says the range."""
    def parse(text: str):
        value = kind(text)
        if not (math.isfinite(value) and (value >= low if include_low else value > low) and value < high):
            bounds = f"{'>=' if include_low else '>'} {low}" + (f" and < {high}" if high < math.inf else "")
            raise argparse.ArgumentTypeError(f"must be finite and {bounds}, got {text}")
        return value
    return parse

positive = functools.partial(in_range, low=0, include_low=False)
fraction = in_range(float, 0, 1, include_low=False)
seed = in_range(int, 0, 2 ** 32)  # numpy's seeds are 32-bit
image_size = in_range(int, MIN_IMAGE_SIZE)
batch_size = in_range(int, 2)  # BatchNorm in training needs two samples
DEMO_SPLITS = {"test_fraction": 0.25, "val_fraction": 0.1}  # of 800 demo images: 200 tested (s.e. ~3.5 points)

def add_data_arguments(parser: argparse.ArgumentParser) -> None:  # shared by every script: equal values, equal splits
    group = parser.add_argument_group("data")
    group.add_argument("--data", type=Path, default=Path("data/PetImages"), help="photos: a sub-folder per class "
                       "(PetImages/Cat, .../Dog), Kaggle's flat train/cat.0.jpg or loose photos (default: %(default)s)")
    group.add_argument("--download", action="store_true", help="first fetch Microsoft's archive (787 MB) to --data")
    group.add_argument("--download-url", default=dataset.DEFAULT_URL, help="where --download fetches from")
    group.add_argument("--demo", action="store_true", help="a generated two-class set, with small settings")
    add_cache_arguments(group)
    group.add_argument("--limit", type=positive(int), default=None, help="use a seeded subset of N images")
    group = parser.add_argument_group("splits (keep equal across scripts)")
    group.add_argument("--split-seed", type=seed, default=0, help="seed of the test split and --limit (default: 0)")
    group.add_argument("--test-fraction", type=fraction, default=0.1,
                       help="stratified test split, never seen by pretraining or labels (default: %(default)s)")
    group.add_argument("--val-fraction", type=in_range(float, 0, 1), default=0.05, help="the kNN monitor's stratified "
                       "split (not the test's), held out from pretraining and labels; 0: none (default: %(default)s)")
    group.add_argument("--labels", type=positive(int), default=250, help="labelled images, balanced (default: 250)")
    group.add_argument("--label-seed", type=seed, default=0, help="seed of the labelled subset draw (default: 0)")

def add_cache_arguments(group) -> None:  # where, at what side and by how many processes the photos are decoded
    group.add_argument("--cache-dir", type=Path, default=dataset.default_cache_dir(), help="decoded images' cache "
                       "(default: %(default)s)")
    group.add_argument("--cache-size", type=image_size, default=None, help="cached side in px (default: a "
                       "checkpoint's, else 8/7 of the image size)")
    group.add_argument("--workers", type=positive(int), default=None, help="decoding processes (default: all cores)")

def add_run_arguments(group) -> None:
    group.add_argument("--seed", type=seed, default=0, help="seed of initialisation, batch order and augmentation, "
                                                            "not of the splits (default: 0)")
    group.add_argument("--device", default="auto", help="auto (the current CUDA GPU if any, else cpu), cpu, cuda, "
                                                        "cuda:1, ...; under torchrun auto, cuda or cpu (default: auto)")
    group.add_argument("--precision", choices=("auto", "bf16", "fp16", "fp32"), default="auto",
                       help="auto: on CUDA bf16 where the GPU has it, else fp16 with a gradient scaler; on a CPU "
                            "with AMX or AVX512-BF16 bf16 for pretraining at 64 px or more; else fp32 (default: auto)")

def add_output_arguments(group, default_out: Path | None, resumable: bool, shown: str = "%(default)s") -> None:
    group.add_argument("--out", type=Path, default=default_out, help=f"run folder (default: {shown}); one holding "
                       f"another run is refused unless {'--resume or ' if resumable else ''}--overwrite")
    choice = group.add_mutually_exclusive_group()
    choice.add_argument("--overwrite", action="store_true",
                        help="replace the run in --out; it comes back if this run fails before its first checkpoint")
    if resumable:
        choice.add_argument("--resume", nargs="?", type=Path, const=True, default=None, metavar="PATH",
                            help="continue from OUT/last.pt, or from PATH (a last.pt or a run folder) into --out")

def parse(parser: argparse.ArgumentParser, argv, demo: dict, cpu: dict | None = None) -> argparse.Namespace:
    """argv parsed over defaults: a --config record's flags, else the --demo (DEMO_SPLITS, `demo`) or --cpu preset."""
    parser.add_argument("--config", type=Path, metavar="ARGS_JSON", help="a run's args.json: its flags, less --resume "
                        "and --overwrite, are the defaults; flags given here win (pass --out for a new folder)")
    known, data_default = parser.parse_known_args(argv)[0], parser.get_default("data")
    parser.set_defaults(**(recorded := {} if known.config is None else read_config(parser, known.config)))
    known = parser.parse_known_args(argv)[0]
    if known.demo and getattr(known, "cpu", False):
        parser.error("--demo and --cpu are two presets: pass one")
    parser.set_defaults(**({**DEMO_SPLITS, **demo} if known.demo else cpu if getattr(known, "cpu", False) else {}))
    parser.set_defaults(**recorded)  # the record's values, not the preset's
    args = parser.parse_args(argv)
    if args.demo and args.data != data_default:
        parser.error("--demo trains on a generated set and would ignore --data: pass one or the other")
    return args

def read_config(parser: argparse.ArgumentParser, path: Path) -> dict:  # the flags `parser` has; others are named
    try:
        record = json.loads(path.read_text())
        flags = {name: record[name] for name in record.get("flags", record)}  # "flags": the names of the flags
        if "flags" not in record and record.get("random"):  # a record from before --init: random init
            flags["init"] = "random"
    except (OSError, UnicodeDecodeError, ValueError, TypeError, KeyError, AttributeError) as error:
        raise UserError(f"--config {path}: not a run's args.json ({type(error).__name__}: {error})") from None
    known = {action.dest for action in parser._actions} - {"help", "config", "resume", "overwrite"}
    if unused := sorted(set(flags) - known - {"config", "resume", "overwrite"}) * ("flags" in record):  # else: old
        print(f"note: --config {path}: this version has no flag for {', '.join(unused)}: not used", file=sys.stderr)
    return {name: value for name, value in flags.items() if name in known}

# ---------------------------------------------------------------- errors

WRITE_FAILURES = {errno.ENOSPC, errno.EDQUOT, errno.EROFS, errno.EFBIG}  # one line and exit 2, as a UserError

class Interrupted(Exception):  # a run stopped by a signal after saving what it had; exits 128 + the signal's number
    def __init__(self, message: str, signal_number: int):
        super().__init__(message)
        self.exit_status = 128 + signal_number

def reports_errors(main):
    """A script's main: a UserError or a full disk: one line, exit 2; a stop: 128 + its signal; a bug: a traceback."""
    @functools.wraps(main)
    def run(argv=None):
        for stream in (sys.stdout, sys.stderr):  # file names that are not UTF-8 print as escapes, not a crash
            getattr(stream, "reconfigure", lambda **_: None)(errors="backslashreplace")
        try:
            return main(argv)
        except (Interrupted, KeyboardInterrupt) as stop:  # Ctrl-C outside StopSignals: 130, as 128 + SIGINT
            print(stop if isinstance(stop, Interrupted) else "interrupted", file=sys.stderr)
            raise SystemExit(getattr(stop, "exit_status", 128 + signal.SIGINT)) from None
        except BrokenPipeError:  # the reader of stdout has gone (predict.py | head): end quietly, as Unix tools do
            os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())  # so that the exit's flush cannot fail
            raise SystemExit(128 + signal.SIGPIPE) from None
        except (UserError, OSError) as error:
            if isinstance(error, OSError) and error.errno not in WRITE_FAILURES:
                raise
            message = error if isinstance(error, UserError) else f"cannot write {error.filename}: {error.strerror}"
            rank = f"rank {os.environ['RANK']}: " if int(os.environ.get("WORLD_SIZE", "1")) > 1 else ""  # torchrun
            print(f"{rank}error: {message}", file=sys.stderr)
            raise SystemExit(2) from None
        finally:
            release()
    return run

# ---------------------------------------------------------------- run folders

RUN_FILES = ("args.json", "metrics.jsonl", "predictions.json", "siam.pt", "last.pt", "backbone.pt", "classifier.pt",
             "labelled.json", "left-out.txt", "tensorboard")  # what runs write (tensorboard/: older versions' runs)
REPLACED = ".replaced"  # OUT/.replaced: the run an --overwrite replaces, until the new run's first good checkpoint
_replacing: dict[Path, Path] = {}  # resolved run folder -> as given, while its old run waits in OUT/.replaced

def writable_folder(folder: Path, flag: str, create: bool = True) -> Path:  # refused early if a file or unwritable
    nearest = next(path for path in (folder, *folder.absolute().parents) if path.exists())
    if not nearest.is_dir() or not os.access(nearest, os.W_OK | os.X_OK):
        problem = "is a file, not a folder" if not nearest.is_dir() else "cannot be written"
        raise UserError(f"{flag} {folder}: {nearest} {problem}; choose another {flag}")
    if create:
        folder.mkdir(parents=True, exist_ok=True)
    return folder

def check_out(out: Path, overwrite: bool = False, resume_from: Path | None = None,
              resumable: bool = False) -> list[str]:
    """The run files in `out` this run replaces, changing nothing; another run there needs --resume or --overwrite."""
    if resume_from is not None and not resume_from.is_file():
        raise UserError(f"nothing to resume: {resume_from} does not exist (start the run without --resume)")
    if (out / REPLACED).exists():
        raise UserError(f"{out / REPLACED} holds the run that a killed --overwrite was replacing: move its files back "
                        f"into {out} to keep that run, or delete {out / REPLACED}")
    held = [name for name in RUN_FILES if (out / name).exists()]
    continues = resume_from is not None and resume_from.resolve() == (out / "last.pt").resolve()
    if held and not continues and not overwrite:
        offer = "continue it with --resume, " if resumable and "last.pt" in held else ""
        raise UserError(f"{out} already holds a run ({', '.join(held)}): {offer}choose another --out, or pass "
                        f"--overwrite to replace it")
    writable_folder(out, "--out", create=False)
    return [] if continues else held

def start_run(out: Path, held: list[str]) -> None:  # checks passed: create `out`, set the old run's `held` files aside
    out.mkdir(parents=True, exist_ok=True)
    if held:
        (out / REPLACED).mkdir()
        _replacing[out.resolve()] = out
        for name in held:
            os.replace(out / name, out / REPLACED / name)

def keep_run(out: Path) -> None:  # after this run's first good checkpoint: the run it replaces is deleted
    if _replacing.pop(out.resolve(), None) is not None:
        shutil.rmtree(out / REPLACED)

def release() -> None:  # at every main's end: a run ended before keep_run is deleted, the one it replaced put back
    while _replacing:
        out = _replacing.popitem()[1]
        for path in (out / name for name in RUN_FILES):
            shutil.rmtree(path) if path.is_dir() and not path.is_symlink() else path.unlink(missing_ok=True)
        for path in (out / REPLACED).iterdir():
            os.replace(path, out / path.name)
        (out / REPLACED).rmdir()
        print(f"the run in {out} that this one was to replace is back as it was", file=sys.stderr)

def resume_checkpoint(resume: Path | bool | None, out: Path) -> Path | None:
    if resume is None or resume is True:
        return None if resume is None else out / "last.pt"
    return resume / "last.pt" if resume.is_dir() else resume

def plain_args(args: argparse.Namespace) -> dict:  # paths as strings, for JSON and weights_only checkpoints
    return {key: str(value) if isinstance(value, Path) else value for key, value in vars(args).items()}

def save_args(out: Path, args: argparse.Namespace, **derived) -> None:
    """OUT/args.json: the flags (named in "flags", for --config), `derived`, derived["device_used"]'s environment."""
    record = {**plain_args(args), **derived, "protocol": PROTOCOL, "code_version": code_version(),
              "flags": sorted(vars(args))}
    record.setdefault("environment", environment(torch.device(derived.get("device_used", "cpu"))))
    (out / "args.json").write_text(json.dumps(record, indent=2) + "\n")

def log(path: Path, **record) -> None:  # OUT/metrics.jsonl: a flat JSON object per event, flushed at once
    with open(path, "a") as file:
        file.write(json.dumps({"time": round(time.time(), 3), **record}) + "\n")

def read_jsonl(path: Path) -> list[dict]:  # the JSON objects; a line cut short by a killed process is skipped
    records = []
    for line in Path(path).read_text(errors="replace").splitlines():
        with contextlib.suppress(json.JSONDecodeError):
            records.append(json.loads(line))
    return [record for record in records if isinstance(record, dict)]

def final_record(path: Path) -> dict | None:  # the classifier's closing record; None for a run unfinished
    return next((record for record in reversed(read_jsonl(path)) if record.get("event") == "final"), None)

def truncate_metrics(path: Path, after_epoch: int) -> None:  # the epochs a resumed run writes again go, atomically
    if path.is_file():
        kept = [record for record in read_jsonl(path) if isinstance(epoch := record.get("epoch", 0), int)
                and epoch <= after_epoch]  # a record not of this code's making goes too
        temporary = path.with_name(path.name + ".tmp")
        temporary.write_text("".join(json.dumps(record) + "\n" for record in kept))
        os.replace(temporary, path)

def read_predictions(folder: Path) -> dict:
    try:
        return json.loads((Path(folder) / "predictions.json").read_text())
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as error:
        raise UserError(f"{folder} holds no readable predictions.json ({type(error).__name__}): pass a classifier "
                        "run's folder") from None

def classifier_run_name(backbone: str, finetune: bool, all_labels: bool = False) -> str:
    return f"classifier-{backbone}-{'finetune' if finetune else 'frozen'}" + "-all-labels" * all_labels

class StopSignals:  # within `with`, SIGINT and SIGTERM (preemption) only set .signal_number: the loop saves and stops
    signal_number: int | None = None
    def __enter__(self) -> "StopSignals":
        request = lambda number, frame: setattr(self, "signal_number", number)
        self.signal_number = None  # entered again: a new start
        self.previous = {number: signal.signal(number, request) for number in (signal.SIGINT, signal.SIGTERM)}
        return self

    def __exit__(self, *exception) -> None:
        for number, handler in self.previous.items():
            signal.signal(number, handler)

def check_protocol(checkpoint: dict, path: Path) -> None:
    if checkpoint.get("protocol") != PROTOCOL:
        raise UserError(f"{path} was pretrained under evaluation protocol {checkpoint.get('protocol', 1)}, not this "
                        f"code's {PROTOCOL} (its kNN monitor read the test split): pretrain again with train.py")

@functools.cache
def code_version() -> dict:
    def git(*arguments: str) -> str:
        return subprocess.run(["git", *arguments], cwd=Path(__file__).parent, capture_output=True, text=True,
                              check=True, timeout=10).stdout.strip()
    try:
        return {"commit": git("rev-parse", "HEAD"), "dirty": bool(git("status", "--porcelain", "--untracked-files=no"))}
    except (OSError, subprocess.SubprocessError):
        return {"commit": None, "dirty": None}

COLOURS = {"random": ["tab:gray", "black", "silver"], "imagenet": ["tab:olive"], "weights": ["tab:cyan"],
           "simsiam": ["tab:blue", "tab:orange", "tab:green", "tab:red", "tab:purple", "tab:brown"]}
LINESTYLES = {"frozen": "-", "finetune": "--"}  # plots: COLOURS per backbone (one per run in turn), a style per mode

# ---------------------------------------------------------------- devices

@dataclass(frozen=True)
class Runtime:  # where and how tensors are computed: a concrete device (cuda:0, never cuda), the precision, the ranks
    device: torch.device
    precision: str  # "bf16" or "fp16" (autocast), or "fp32"
    context: "Context" = field(default_factory=lambda: Context())
    reason: str = "as asked"  # why this precision, for the start-up line and args.json

    def autocast(self):
        dtype = torch.float16 if self.precision == "fp16" else torch.bfloat16
        return torch.autocast(self.device.type, dtype=dtype, enabled=self.precision != "fp32")

    @functools.cached_property
    def scaler(self) -> torch.amp.GradScaler:  # fp16: the loss scaled up so that small gradients do not vanish
        return torch.amp.GradScaler(self.device.type, enabled=self.precision == "fp16")

    def backward_step(self, loss: torch.Tensor, optimizer: torch.optim.Optimizer) -> None:
        """loss.backward() and optimizer.step(); in fp16 through the scaler, which skips a step of inf gradients."""
        self.scaler.scale(loss).backward()
        self.scaler.step(optimizer)
        self.scaler.update()

    @property
    def memory_format(self) -> torch.memory_format:
        # NHWC where cuDNN's and oneDNN's convolutions want it (CPU bf16 at 64 px: 1.2x faster, docs/cpu.md)
        nhwc = self.device.type == "cuda" or (self.device.type == "cpu" and self.precision == "bf16")
        return torch.channels_last if nhwc else torch.contiguous_format

def make_runtime(device_name: str, precision: str = "auto", context: "Context | None" = None,
                 image_size: int | None = None) -> Runtime:
    """A concrete device ("cuda": the current GPU, "auto": it or the CPU), else a UserError; "auto": auto_precision."""
    name = ("cuda" if torch.cuda.is_available() else "cpu") if device_name == "auto" else device_name
    try:
        device = torch.device(name)
        if device.type == "cuda" and not torch.cuda.is_available():
            raise RuntimeError("PyTorch sees no CUDA GPU; use --device cpu")
        if device.type == "cuda" and device.index is None:
            device = torch.device("cuda", torch.cuda.current_device())
        device = torch.empty(0, device=device).device  # fails where the device is absent; mps -> mps:0
    except (RuntimeError, AssertionError) as error:
        raise UserError(f"--device {name}: not a device PyTorch can use here ({str(error).splitlines()[0]})") from None
    precision, reason = (precision, "as asked") if precision != "auto" else auto_precision(device, image_size)
    return Runtime(device, precision, context or Context(), reason)

def auto_precision(device: torch.device, image_size: int | None) -> tuple[str, str]:  # (precision, why)
    if device.type == "cuda":
        major, minor = torch.cuda.get_device_capability(device)
        if major >= 8:
            return "bf16", f"the GPU has bf16 (compute capability {major}.{minor})"
        return "fp16", f"the GPU lacks bf16 (compute capability {major}.{minor}): fp16 with a gradient scaler"
    units = sorted(set(cpuinfo("flags").split()) & {"amx_bf16", "avx512_bf16"})
    if device.type != "cpu" or not units:
        return "fp32", f"{device.type} without bf16 units"
    if image_size is None or image_size < 64:  # 32 px: 3% faster; below, bf16 backward is wrong (docs/benchmarks.md)
        return "fp32", f"bf16 pays on this CPU ({', '.join(units)}) for pretraining at 64 px or more"
    return "bf16", f"the CPU has {', '.join(units)}, at {image_size} px"  # 1.4x faster at 64 px on a 2-core Xeon

def cpuinfo(key: str) -> str:  # a line of Linux's /proc/cpuinfo ("model name", "flags"); "" elsewhere
    lines = Path("/proc/cpuinfo").read_text().splitlines() if Path("/proc/cpuinfo").is_file() else []
    return next((line.partition(":")[2].strip() for line in lines if line.startswith(key)), "")

def generator(device: torch.device, seed: int) -> torch.Generator:
    return torch.Generator(device).manual_seed(seed)

def use_deterministic_algorithms() -> None:  # repeatable CUDA runs, for a bit-identical resume (CPU runs are)
    os.environ.setdefault("CUBLAS_WORKSPACE_CONFIG", ":4096:8")  # cuBLAS's fixed workspace, read when it starts
    torch.backends.cudnn.benchmark = False
    torch.backends.cudnn.deterministic = True
    torch.use_deterministic_algorithms(True, warn_only=True)

def synchronize(device: torch.device, reset_peak_memory: bool = False) -> None:  # wait for CUDA's queued work
    if device.type == "cuda":
        torch.cuda.synchronize(device)
        if reset_peak_memory:
            torch.cuda.reset_peak_memory_stats(device)

def peak_memory_gb(device: torch.device) -> float:  # allocated on CUDA since the last reset; on a CPU the peak RSS
    if device.type == "cuda":
        return torch.cuda.max_memory_allocated(device) / 1e9
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1e6  # kB on Linux

def describe(device: torch.device) -> str:
    if device.type == "cuda":
        return f"{torch.cuda.get_device_name(device)} ({device})"
    return f"cpu ({os.cpu_count()} cores)" if device.type == "cpu" else str(device)

def environment(device: torch.device) -> dict:
    return {"python": platform.python_version(), "torch": str(torch.__version__),  # TorchVersion: not weights_only
            "torchvision": str(torchvision.__version__), "pillow": PIL.__version__, "numpy": numpy.__version__,
            "cuda": torch.version.cuda, "device": describe(device),
            "cpu": cpuinfo("model name") or platform.processor()}

# ---------------------------------------------------------------- torchrun

@dataclass(frozen=True)
class Context:
    rank: int = 0
    world_size: int = 1
    local_rank: int = 0
    is_main = property(lambda self: self.rank == 0)  # rank 0 writes logs, metrics, checkpoints, shows progress
    is_distributed = property(lambda self: self.world_size > 1)

def setup(device_name: str) -> tuple[Context, str]:  # joins torchrun's group: NCCL on cuda:LOCAL_RANK, gloo on the CPU
    if int(os.environ.get("WORLD_SIZE", "1")) == 1:
        return Context(), device_name
    if device_name not in ("auto", "cuda", "cpu"):  # cuda:N would be overridden by LOCAL_RANK, mps fall back to cpu
        raise UserError(f"--device {device_name}: under torchrun each process takes its own GPU, cuda:LOCAL_RANK, or "
                        "the CPU; pass --device cuda (or cpu), and choose the GPUs with CUDA_VISIBLE_DEVICES")
    context = Context(int(os.environ["RANK"]), int(os.environ["WORLD_SIZE"]), int(os.environ["LOCAL_RANK"]))
    use_cuda = device_name == "cuda" or (device_name == "auto" and torch.cuda.is_available())
    if use_cuda:
        torch.cuda.set_device(context.local_rank)
    # decoding a large cache on one rank keeps the others waiting at a barrier: allow an hour
    dist.init_process_group("nccl" if use_cuda else "gloo", timeout=timedelta(hours=1))
    return context, f"cuda:{context.local_rank}" if use_cuda else "cpu"

def wrap(model: nn.Module, context: Context, device: torch.device) -> nn.Module:
    """DDP, with SyncBatchNorm on CUDA as the paper (on a CPU each process normalises its own part of the batch)."""
    if not context.is_distributed:
        return model
    if device.type == "cuda":
        model = nn.SyncBatchNorm.convert_sync_batchnorm(model)
    return nn.parallel.DistributedDataParallel(model, device_ids=[device.index] if device.type == "cuda" else None)

def barrier(context: Context) -> None:  # when one process stopped first (saying why), the others end in one line too
    if context.is_distributed:
        try:
            dist.barrier()
        except RuntimeError:  # gloo: "Connection closed by peer" (NCCL's processes are stopped by torchrun)
            raise UserError("stopped: another process of this run ended first (its error line says why)") from None

def mean(value: torch.Tensor, context: Context) -> torch.Tensor:
    if context.is_distributed:
        dist.all_reduce(value := value.clone())
        value /= context.world_size
    return value

def any_rank(flag: bool, device: torch.device, context: Context) -> bool:  # True on every rank if `flag` is True on any
    if not context.is_distributed:
        return flag
    dist.all_reduce(value := torch.tensor(float(flag), device=device), op=dist.ReduceOp.MAX)
    return bool(value.item())

def cleanup(context: Context) -> None:
    if context.is_distributed:
        dist.destroy_process_group()
