"""CUDA emulated on the CPU, so that CI without a GPU runs the code paths that differ on CUDA, with real values.

`FakeTensorMode` (torch._subclasses) fakes CUDA tensors without values: `.item()`, L-BFGS and the progress readout
cannot run under it, and on a machine without a GPU its backward pass stops in the autograd engine
("hasPrimaryContext expects a valid device index"). Here instead a tensor "on cuda:N" is a wrapper that reports
device cuda:N to Python and holds its values in a CPU tensor (`.host`); every aten op is run on the hosts. What
the wrapper makes visible, as a GPU would:
- its device: `tensor.device` is a concrete cuda:N, so `torch.device("cuda") == tensor.device` is False, and
  `.to("cuda")` without an index fails on this machine as it needs a real current device;
- mixed devices: an op on tensors of two devices raises as CUDA does (CPU 0-dim tensors and CPU indices allowed,
  cross-device copies allowed), and so does a generator of the wrong device;
- pinned memory: pinning a CUDA tensor raises; pins of host tensors are counted (`pins`), and an asynchronous
  host-to-device copy from memory that was not pinned is counted as `pageable_async_copies`;
- autocast: `torch.autocast("cuda", torch.bfloat16)` runs as CPU autocast, so the step really computes in bf16.
What it does not emulate: kernels (every op is the CPU one), streams and events (`torch.cuda.Event` is a stub that
has always finished), the CUDA generator's own state format, NCCL, torch.compile for CUDA, memory limits.
"""
from __future__ import annotations

import contextlib
import threading
from dataclasses import dataclass, field

import pytest
import torch
import torch.cuda.amp.common
import torch.utils.data._utils.pin_memory
from torch.overrides import TorchFunctionMode
from torch.utils._python_dispatch import TorchDispatchMode
from torch.utils._pytree import tree_flatten, tree_map

import dataset

CPU = torch.device("cpu")
aten = torch.ops.aten
CROSS_DEVICE = {aten.copy_.default, aten._to_copy.default, aten._copy_from.default,
                aten._copy_from_and_resize.default}
CPU_INDICES_ALLOWED = {aten.index.Tensor, aten.index_put_.default, aten._index_put_impl_.default,
                       aten.index_put.default}


class CudaTensor(torch.Tensor):
    """A tensor that reports device cuda:N and keeps its values in `host`, a CPU tensor of the same shape and
    strides. To the C++ side (autograd engine, device guards) it is a CPU tensor."""
    host: torch.Tensor

    @staticmethod
    def __new__(cls, host: torch.Tensor, device: torch.device):
        return torch.Tensor._make_wrapper_subclass(
            cls, host.size(), strides=host.stride(), storage_offset=host.storage_offset(), dtype=host.dtype,
            layout=host.layout, device=CPU, requires_grad=False)

    def __init__(self, host: torch.Tensor, device: torch.device):
        self.host, self.emulated_device = host, device

    @property
    def device(self) -> torch.device:
        return self.emulated_device

    @property
    def is_cuda(self) -> bool:
        return True

    def get_device(self) -> int:
        return self.emulated_device.index

    def __repr__(self) -> str:
        return f"CudaTensor({self.host!r}, device='{self.emulated_device}')"

    def tolist(self):
        return self.host.tolist()

    def numpy(self, *args, **kwargs):
        raise TypeError(f"can't convert {self.emulated_device} device type tensor to numpy. Use Tensor.cpu() to "
                        f"copy the tensor to host memory first.")

    def cpu(self, memory_format=torch.preserve_format) -> torch.Tensor:
        return self.to(CPU, memory_format=memory_format)

    def to(self, *args, **kwargs) -> torch.Tensor:
        # the C++ `to` sees a CPU tensor and would return it unchanged for a CPU target: decide here
        copy = kwargs.pop("copy", False)  # GradScaler copies its scale to each device
        device, dtype, non_blocking, memory_format = torch._C._nn._parse_to(*args, **kwargs)
        if (device is None or torch.device(device) == self.emulated_device) and dtype in (None, self.dtype) \
                and memory_format in (None, torch.preserve_format) and not copy:
            return self
        with EMULATION.leaving_the_device():
            return aten._to_copy.default(self, dtype=dtype or self.dtype, device=device or self.emulated_device,
                                         non_blocking=non_blocking,
                                         memory_format=memory_format or torch.preserve_format)

    def __reduce_ex__(self, protocol):
        return self.host.__reduce_ex__(protocol)  # saved as a CUDA tensor is loaded with map_location="cpu"

    @classmethod
    def __torch_dispatch__(cls, func, types, args=(), kwargs=None):
        return EMULATION.run(func, args, kwargs or {})


class Event:
    """torch.cuda.Event as seen from the host: recorded work has always finished."""

    def __init__(self, *args, **kwargs):
        pass

    def record(self, stream=None) -> None:
        pass

    def query(self) -> bool:
        return True

    def synchronize(self) -> None:
        pass


def emulated_generator_class():
    real = torch.Generator

    class Generator(real):
        """A CPU generator that reports the device it was made for: ops check it against their device."""

        def __new__(cls, device="cpu"):
            return super().__new__(cls)  # a CPU generator, whatever the device

        def __init__(self, device="cpu"):
            self.emulated_device = torch.device(device)
            if self.emulated_device.type == "cuda" and self.emulated_device.index is None:
                self.emulated_device = torch.device("cuda", 0)

        @property
        def device(self) -> torch.device:
            return self.emulated_device

    return Generator


@dataclass
class Emulation:
    """The state of one emulated machine: how many GPUs, and what the test can observe."""
    device_count: int = 1
    pins: int = 0  # host tensors pinned
    pageable_async_copies: int = 0  # non_blocking host-to-device copies from memory that was not pinned
    pinned: set = field(default_factory=set)  # id() of the host tensors that were pinned
    local: threading.local = field(default_factory=threading.local)

    @contextlib.contextmanager
    def leaving_the_device(self):
        """Within `with`, a copy of a CudaTensor to the CPU is one that Python asked for (`.cpu()`, `.to("cpu")`).
        Other copies to the CPU come from C++, which sees the CudaTensor as a CPU tensor and converts with its
        options (autograd casting a gradient back to its input's dtype): those stay on the GPU."""
        self.local.leaving = True
        try:
            yield
        finally:
            self.local.leaving = False

    def check_device(self, device: torch.device) -> torch.device:
        if device.type == "cuda":
            if device.index is None:
                device = torch.device("cuda", 0)  # the current device
            if device.index >= self.device_count:
                raise RuntimeError(f"CUDA error: invalid device ordinal (cuda:{device.index} of "
                                   f"{self.device_count} emulated)")
        return device

    def pin(self, tensor: torch.Tensor) -> torch.Tensor:
        if isinstance(tensor, CudaTensor):
            raise RuntimeError(f"cannot pin a {tensor.dtype} tensor on {tensor.device}: only dense CPU tensors can "
                               f"be pinned")
        pinned = tensor.clone()
        self.pins += 1
        self.pinned.add(id(pinned))
        return pinned

    def run(self, func, args, kwargs):
        if func is aten.is_pinned.default:
            return id(args[0]) in self.pinned
        if func is aten._pin_memory.default:
            return self.pin(args[0])
        kwargs = dict(kwargs)
        target = kwargs.get("device")
        if func is aten._to_copy.default and isinstance(args[0], CudaTensor) and target is not None \
                and torch.device(target) == CPU and not getattr(self.local, "leaving", False):
            target = args[0].device
        if target is not None:
            target = self.check_device(torch.device(target))
            kwargs["device"] = CPU
        if kwargs.get("pin_memory"):
            kwargs["pin_memory"] = False
        tensors = [x for x in tree_flatten((args, kwargs))[0] if isinstance(x, torch.Tensor)]
        placed = [x.device for x in tensors if x.dim() > 0 or isinstance(x, CudaTensor)]
        if func in CPU_INDICES_ALLOWED:
            placed = [x.device for x in tensors[:1]] + [x.device for x in tensors[1:] if x.device != CPU]
        if func not in CROSS_DEVICE and len(set(placed)) > 1:
            raise RuntimeError(f"Expected all tensors to be on the same device, but found at least two devices, "
                               f"{placed[0]} and {next(d for d in placed if d != placed[0])}! ({func})")
        if func is aten._to_copy.default and kwargs.get("non_blocking") and target is not None \
                and target.type == "cuda" and not isinstance(args[0], CudaTensor) and id(args[0]) not in self.pinned:
            self.pageable_async_copies += 1
        host_args, host_kwargs = tree_map(lambda x: x.host if isinstance(x, CudaTensor) else x, (args, kwargs))
        out = func(*host_args, **host_kwargs)
        device = target if target is not None else next((d for d in placed if d.type == "cuda"), CPU)
        return self.wrap(func, args, kwargs, out, device)

    @staticmethod
    def wrap(func, args, kwargs, out, device: torch.device):
        """The op's results as the caller must see them: an in-place or out= result is the caller's own tensor;
        a new result on cuda:N is wrapped."""
        schema = func._schema
        results = out if isinstance(out, tuple) else (out,)
        wrapped = []
        for ret, result in zip(schema.returns, results):
            alias = ret.alias_info
            if alias is not None and alias.is_write:
                position, argument = next((i, a) for i, a in enumerate(schema.arguments)
                                          if a.alias_info is not None and a.alias_info.before_set == alias.before_set)
                wrapped.append(args[position] if position < len(args) else kwargs[argument.name])
            elif device.type == "cuda":
                wrapped.append(tree_map(lambda t: CudaTensor(t, device) if isinstance(t, torch.Tensor) else t,
                                        result))
            else:
                wrapped.append(result)
        if not isinstance(out, tuple):
            return wrapped[0] if wrapped else out
        return tuple(wrapped)


EMULATION = Emulation()


class Mode(TorchDispatchMode):
    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        return EMULATION.run(func, args, kwargs or {})


class GeneratorCheck(TorchFunctionMode):
    """A random op and its generator must be on one device. Checked where Python calls the op: the dispatcher
    hands __torch_dispatch__ a new Generator object, which no longer says which device it was made for."""

    def __torch_function__(self, func, types, args=(), kwargs=None):
        kwargs = kwargs or {}
        generator = kwargs.get("generator")
        if isinstance(generator, torch.Generator):
            tensors = [x for x in tree_flatten(args)[0] if isinstance(x, torch.Tensor)]
            wanted = torch.device(kwargs["device"]) if kwargs.get("device") is not None else (
                tensors[0].device if tensors else CPU)
            if generator.device.type != wanted.type:
                raise RuntimeError(f"Expected a '{wanted.type}' device type for generator but found "
                                   f"'{generator.device.type}'")
        return func(*args, **kwargs)


class Autocast(torch.autocast):
    """CUDA autocast run as CPU autocast: the emulated tensors are CPU tensors to the dispatcher."""

    def __init__(self, device_type: str, *args, **kwargs):
        super().__init__("cpu" if device_type == "cuda" else device_type, *args, **kwargs)


@contextlib.contextmanager
def emulated_cuda(device_count: int = 1):
    """Within `with`: torch believes `device_count` GPUs are present, and tensors placed on them are CudaTensors.
    Yields the Emulation, whose counters the test reads; everything is as before on leaving."""
    global EMULATION
    EMULATION = Emulation(device_count)
    with pytest.MonkeyPatch.context() as monkeypatch:
        yield from emulate(monkeypatch, device_count)


def emulate(monkeypatch, device_count: int):
    fake = {"is_available": lambda: True, "device_count": lambda: device_count, "current_device": lambda: 0,
            "set_device": lambda device: None, "synchronize": lambda device=None: None,
            "mem_get_info": lambda device=None: (80 << 30, 80 << 30), "max_memory_allocated": lambda device=None: 0,
            "reset_peak_memory_stats": lambda device=None: None, "get_device_name": lambda device=None: "emulated",
            "is_bf16_supported": lambda *a, **k: True, "Event": Event, "_lazy_init": lambda: None,
            "get_device_capability": lambda device=None: (9, 0)}  # an H200's; cuDNN's first use asks for it
    for name, value in fake.items():
        monkeypatch.setattr(torch.cuda, name, value)
    monkeypatch.setattr(torch.cuda.amp.common, "amp_definitely_not_available", lambda: False)
    monkeypatch.setattr(torch, "Generator", emulated_generator_class())
    monkeypatch.setattr(torch, "autocast", Autocast)
    monkeypatch.setattr(dataset, "pin_memory", EMULATION.pin)  # also from the prefetch thread, which has no Mode
    monkeypatch.setattr(torch.utils.data._utils.pin_memory, "pin_memory",  # DataLoader(pin_memory=True)'s thread
                        lambda data, device=None: tree_map(
                            lambda x: EMULATION.pin(x) if isinstance(x, torch.Tensor) else x, data))
    torch._C._ensureCUDADeviceGuardSet()  # a no-op device guard where the real one would need a driver
    lift_cpu_only = torch._C._only_lift_cpu_tensors()
    torch._C._set_only_lift_cpu_tensors(True)  # torch.tensor(data, device=cuda) is made on the CPU, then moved
    overwrite = torch.__future__.get_overwrite_module_params_on_conversion()
    torch.__future__.set_overwrite_module_params_on_conversion(True)  # module.to(cuda) makes new Parameters
    try:
        with torch.autograd.set_multithreading_enabled(False), GeneratorCheck(), Mode():
            yield EMULATION
    finally:
        torch.__future__.set_overwrite_module_params_on_conversion(overwrite)
        torch._C._set_only_lift_cpu_tensors(lift_cpu_only)
