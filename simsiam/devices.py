"""Where tensors are computed: the run's device and precision, and the few places where a GPU differs from the CPU.

One device model: the runtime device is always concrete (`cuda:0`, `cuda:1`, `cpu`, `mps:0`), the device a tensor
placed there reports, so "is this tensor already there" is `tensor.device == device` (`is_on`), asked nowhere else.
The places that branch on the device type are all here, each saying why:
    pinned memory      host-to-GPU copies go through page-locked memory so that they run asynchronously;
    autocast default   bf16 on CUDA, where the convolutions run on tensor cores; fp32 elsewhere;
    memory format      channels_last on CUDA and for bf16 on a CPU, where cuDNN's and oneDNN's convolutions want NHWC;
    fused SGD          one kernel for the whole update on CUDA;
    free memory        whether the decoded cache fits on the GPU beside training;
    synchronisation    timing and peak memory (bench.py) and the progress readout wait for, or ask, the GPU.
"""
from __future__ import annotations

import os
import platform
import resource
from dataclasses import dataclass, field
from pathlib import Path

import torch
import torchvision

from simsiam import distributed

PRECISIONS = ("auto", "bf16", "fp32")


class DeviceError(Exception):
    """A device that this machine does not have; the message says which ones it has."""


@dataclass(frozen=True)
class Runtime:
    """Where and how the tensors are computed: a concrete device, the precision and the torchrun context."""
    device: torch.device
    precision: str  # "bf16" (autocast) or "fp32"
    context: distributed.Context = field(default_factory=distributed.Context)

    def autocast(self):
        return torch.autocast(self.device.type, dtype=torch.bfloat16, enabled=self.precision == "bf16")

    @property
    def memory_format(self) -> torch.memory_format:
        return memory_format(self.device, self.precision)


def resolve(name: str) -> torch.device:
    """The concrete device `name` stands for: "auto" is the current CUDA device when PyTorch sees one, else the
    CPU; any other name is what `torch.device` takes ("cuda", "cuda:1", "mps", "cpu"), with its index filled in
    as a tensor placed there reports it. A device this machine lacks is a DeviceError."""
    if name == "auto":
        name = "cuda" if torch.cuda.is_available() else "cpu"
    try:
        device = torch.device(name)
    except RuntimeError:
        raise DeviceError(f"--device {name}: not a device name (cpu, cuda, cuda:1, mps, ...)") from None
    if device.type == "cuda":
        count = torch.cuda.device_count() if torch.cuda.is_available() else 0
        if count == 0:
            raise DeviceError(f"--device {name} asked for, but PyTorch sees no CUDA GPU; use --device cpu")
        if device.index is not None and device.index >= count:
            raise DeviceError(f"--device {name}: this machine has {count} CUDA GPU(s), cuda:0 to cuda:{count - 1}")
        return torch.device("cuda", torch.cuda.current_device() if device.index is None else device.index)
    try:
        return torch.empty(0, device=device).device  # mps -> mps:0; fails where the device is absent
    except (RuntimeError, AssertionError) as error:
        raise DeviceError(f"--device {name}: PyTorch cannot use it here ({str(error).splitlines()[0]})") from None


def make_runtime(device_name: str, precision: str = "auto",
                 context: distributed.Context | None = None) -> Runtime:
    """The runtime of `--device` and `--precision`; auto precision: bf16 autocast on CUDA, fp32 elsewhere."""
    device = resolve(device_name)
    if precision == "auto":
        # tensor cores; on a CPU bf16 pays only where the CPU has bf16 units (AMX: docs/cpu.md)
        precision = "bf16" if device.type == "cuda" else "fp32"
    return Runtime(device, precision, context or distributed.Context())


def memory_format(device: torch.device, precision: str) -> torch.memory_format:
    """channels_last on CUDA, where cuDNN's convolutions want NHWC, and for bf16 on a CPU, where oneDNN's do (a
    ResNet18 step at 64 px 1.2x faster in bf16 on an AMX Xeon, no faster in fp32: docs/cpu.md); else the default."""
    channels_last = device.type == "cuda" or (device.type == "cpu" and precision == "bf16")
    return torch.channels_last if channels_last else torch.contiguous_format


def fused_sgd(device: torch.device) -> bool:
    """Whether SGD updates every parameter in one fused kernel: on CUDA, where per-tensor launches cost most."""
    return device.type == "cuda"


# ---------------------------------------------------------------- moving tensors


def is_on(tensor: torch.Tensor, device: torch.device) -> bool:
    """Whether `tensor` is already on the concrete `device`: the one test of "is it there" in the repository."""
    return tensor.device == device


def pin_memory(tensor: torch.Tensor) -> torch.Tensor:
    """A page-locked copy of a host tensor (a seam: the tests without a GPU replace it to observe the pins)."""
    return tensor.pin_memory()


def needs_pinning(source: torch.device, target: torch.device) -> bool:
    """Whether copies from `source` to `target` go through pinned memory: host to CUDA only, where a copy from
    page-locked memory runs asynchronously and one from ordinary memory blocks the host."""
    return source.type == "cpu" and target.type == "cuda"


def to_device(tensor: torch.Tensor, device: torch.device) -> torch.Tensor:
    """`tensor` on `device`: itself when already there, from the host to a GPU asynchronously through pinned
    memory (torch keeps the pinned source alive until the copy is done)."""
    if is_on(tensor, device):
        return tensor
    if needs_pinning(tensor.device, device):
        return pin_memory(tensor).to(device, non_blocking=True)
    return tensor.to(device)


def fits(nbytes: int, device: torch.device, reserve_bytes: int) -> bool:
    """Whether `nbytes` more fit on `device` beside `reserve_bytes` left for training: asked of CUDA's free
    memory; on other devices the data stays in host memory (a CPU's is the host's; MPS shares it)."""
    if device.type != "cuda":
        return False
    free, _ = torch.cuda.mem_get_info(device)
    return nbytes + reserve_bytes <= free


def free_memory(device: torch.device) -> int | None:
    """Bytes a step can still use on `device`: CUDA's free memory; on a CPU the host's available memory (Linux's
    MemAvailable); None where it cannot be told."""
    if device.type == "cuda":
        return torch.cuda.mem_get_info(device)[0]
    if device.type == "cpu":
        try:
            for line in Path("/proc/meminfo").read_text().splitlines():
                if line.startswith("MemAvailable:"):
                    return int(line.split()[1]) * 1024
        except OSError:
            pass
    return None


def generator(device: torch.device, seed: int) -> torch.Generator:
    """A random stream on `device`, so that the draws of a batch on that device never cross to the host."""
    return torch.Generator(device).manual_seed(seed)


def use_deterministic_algorithms() -> None:
    """Make CUDA runs repeatable, for a bit-identical resume: cuDNN's deterministic algorithms without autotuning,
    cuBLAS's fixed workspace (its variable of that name, read when cuBLAS starts), and PyTorch's deterministic
    kernels where it has them (a warning, not an error, for an op that has none). A CPU run is repeatable
    without this."""
    os.environ.setdefault("CUBLAS_WORKSPACE_CONFIG", ":4096:8")
    torch.backends.cudnn.benchmark = False
    torch.backends.cudnn.deterministic = True
    torch.use_deterministic_algorithms(True, warn_only=True)


# ---------------------------------------------------------------- waiting for the device


def synchronize(device: torch.device) -> None:
    """Wait until the device has finished its queued work (CUDA runs asynchronously; a CPU has finished)."""
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def reset_peak_memory(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)


def peak_memory_gb(device: torch.device) -> float:
    """Peak memory allocated on a CUDA device since the last reset; on a CPU the process's peak resident memory."""
    if device.type == "cuda":
        return torch.cuda.max_memory_allocated(device) / 1e9
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1e6  # kB on Linux


def describe(device: torch.device) -> str:
    """The device for people: the GPU's name on CUDA, the core count on a CPU."""
    if device.type == "cuda":
        return f"{torch.cuda.get_device_name(device)} ({device})"
    if device.type == "cpu":
        return f"cpu ({os.cpu_count()} cores)"
    return str(device)


def cpu_name() -> str:
    """The CPU's model name (from /proc/cpuinfo on Linux), else what the platform module says."""
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def environment(device: torch.device) -> dict:
    """The software and hardware of a run, for its args.json and checkpoints: the Python, torch, torchvision, CUDA
    and cuDNN versions (None without them), the device, the CPU and the host's core count."""
    cudnn = torch.backends.cudnn.version() if torch.backends.cudnn.is_available() else None
    return {"python": platform.python_version(), "torch": str(torch.__version__),  # TorchVersion: not weights_only
            "torchvision": str(torchvision.__version__),
            "cuda": torch.version.cuda, "cudnn": cudnn, "device": describe(device), "cpu": cpu_name(),
            "cpu_cores": os.cpu_count()}


class Readout:
    """A device scalar for the progress bar, read without making the host wait for the GPU: on CUDA it is copied
    asynchronously into pinned host memory and shown once that copy has landed, so the value shown lags a few
    steps (`latest` says which step it is from); elsewhere it is read at once."""

    def __init__(self, device: torch.device):
        self.asynchronous = device.type == "cuda"  # only CUDA runs ahead of the host
        self.buffer = torch.zeros((), pin_memory=self.asynchronous)
        self.copied = torch.cuda.Event() if self.asynchronous else None
        self.pending_step: int | None = None
        self.value, self.step = float("nan"), None

    def update(self, scalar: torch.Tensor, step: int) -> float:
        """Offer this step's `scalar`; returns the latest value that has reached the host."""
        if not self.asynchronous:
            self.value, self.step = scalar.item(), step
        elif self.pending_step is None or self.copied.query():
            if self.pending_step is not None:
                self.value, self.step = self.buffer.item(), self.pending_step
            self.buffer.copy_(scalar, non_blocking=True)
            self.copied.record()
            self.pending_step = step
        return self.value
