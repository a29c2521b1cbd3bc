"""Data-parallel pretraining under torchrun: PyTorch DistributedDataParallel, nothing home-made.

    torchrun --nproc_per_node=4 train.py --data data/PetImages                  # one machine, 4 GPUs
    torchrun --nnodes=2 --nproc_per_node=8 --rdzv_backend=c10d --rdzv_endpoint=HOST:29500 train.py ...

A plain `python train.py` is a single process and none of this runs. Under torchrun (detected from the
WORLD_SIZE / RANK / LOCAL_RANK it sets): NCCL on CUDA, gloo on CPU, one GPU per process, SyncBatchNorm on
multi-GPU CUDA (as the paper trained); on CPU each process normalises its own part of the batch.
"""
from __future__ import annotations

import os
from dataclasses import dataclass
from datetime import timedelta

import torch
import torch.distributed as dist
from torch import nn
from torch.nn.parallel import DistributedDataParallel


@dataclass(frozen=True)
class Context:
    rank: int = 0
    world_size: int = 1
    local_rank: int = 0

    @property
    def is_main(self) -> bool:
        """Rank 0 writes logs, metrics and checkpoints and shows progress."""
        return self.rank == 0

    @property
    def is_distributed(self) -> bool:
        """More than one process: torchrun started several."""
        return self.world_size > 1


def launched_by_torchrun() -> bool:
    return "WORLD_SIZE" in os.environ and "RANK" in os.environ


class LaunchError(Exception):
    """A setting that cannot work under torchrun; the message says what to pass instead."""


DEVICES = ("auto", "cuda", "cpu")  # the --device values torchrun's processes can honour


def setup(device_name: str) -> tuple[Context, str]:
    """(context, device name) for this process; joins the process group when launched by torchrun."""
    if not launched_by_torchrun() or int(os.environ["WORLD_SIZE"]) == 1:
        return Context(), device_name
    if device_name not in DEVICES:  # cuda:N would be overridden by LOCAL_RANK, mps would fall back to the CPU
        raise LaunchError(f"--device {device_name}: under torchrun each process takes its own GPU, cuda:LOCAL_RANK, "
                          "or the CPU; pass --device cuda (or cpu), and choose the GPUs with CUDA_VISIBLE_DEVICES")
    context = Context(int(os.environ["RANK"]), int(os.environ["WORLD_SIZE"]), int(os.environ["LOCAL_RANK"]))
    use_cuda = device_name.split(":")[0] == "cuda" or (device_name == "auto" and torch.cuda.is_available())
    if use_cuda:
        torch.cuda.set_device(context.local_rank)
    # decoding a large cache on one rank keeps the others waiting at a barrier: allow an hour
    dist.init_process_group("nccl" if use_cuda else "gloo", timeout=timedelta(hours=1))
    return context, f"cuda:{context.local_rank}" if use_cuda else "cpu"


def wrap(model: nn.Module, context: Context, device: torch.device) -> nn.Module:
    """DDP (with SyncBatchNorm on CUDA) around the model; the model itself when not distributed."""
    if not context.is_distributed:
        return model
    if device.type == "cuda":
        model = nn.SyncBatchNorm.convert_sync_batchnorm(model)
    return DistributedDataParallel(model, device_ids=[device.index] if device.type == "cuda" else None)


def barrier(context: Context) -> None:
    """Wait for every process. One that stopped before it (a run folder or data refused by rank 0, which alone
    checks it) has said why in its own line: the others end with one line too, not a traceback."""
    if context.is_distributed:
        try:
            dist.barrier()
        except RuntimeError:  # gloo: "Connection closed by peer" (NCCL's processes are stopped by torchrun)
            raise LaunchError("stopped: another process of this run ended first (its error line says why)") from None


def mean(value: torch.Tensor, context: Context) -> torch.Tensor:
    """The mean of a tensor over ranks."""
    if context.is_distributed:
        value = value.clone()
        dist.all_reduce(value)
        value /= context.world_size
    return value


def gather(value, context: Context) -> list:
    """Every rank's `value` (builtins and CPU tensors), in rank order, on every rank."""
    if not context.is_distributed:
        return [value]
    values = [None] * context.world_size
    dist.all_gather_object(values, value)
    return values


def any_rank(flag: bool, device: torch.device, context: Context) -> bool:
    """True on every rank if `flag` is True on any."""
    if not context.is_distributed:
        return flag
    value = torch.tensor(float(flag), device=device)
    dist.all_reduce(value, op=dist.ReduceOp.MAX)
    return bool(value.item())


def parameters_in_sync(model: nn.Module, context: Context) -> bool:
    """Whether every rank holds exactly rank 0's parameters (a check that DDP kept the replicas equal)."""
    if not context.is_distributed:
        return True
    mine = torch.cat([p.detach().flatten() for p in model.parameters()])
    reference = mine.clone()
    dist.broadcast(reference, src=0)
    return not any_rank(not torch.equal(mine, reference), mine.device, context)


def cleanup(context: Context) -> None:
    if context.is_distributed:
        dist.destroy_process_group()
