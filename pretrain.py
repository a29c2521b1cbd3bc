"""The SimSiam optimiser, schedule and training step, shared by train.py and bench.py so that the benchmark
measures exactly what users run."""
from __future__ import annotations

import math

import torch

import augment
import runs
from model import D, SimSiam, z_std


def make_optimizer(model: SimSiam, lr: float, momentum: float, weight_decay: float) -> torch.optim.SGD:
    """SGD over two groups: encoder (cosine-decayed lr) and predictor (fixed lr, `fix_pred_lr`, paper §4.3)."""
    predictor = list(model.predictor.parameters())  # a list, not a set: the order must survive --resume
    encoder = [p for p in model.parameters() if all(p is not q for q in predictor)]
    groups = [{"params": encoder, "fixed_lr": False}, {"params": predictor, "fixed_lr": True}]
    fused = next(model.parameters()).device.type == "cuda"  # one kernel for the whole update on the GPU
    return torch.optim.SGD(groups, lr=lr, momentum=momentum, weight_decay=weight_decay, fused=fused)


def learning_rate(initial: float, step: int, total_steps: int) -> float:
    """Cosine decay from `initial` to 0 over the run (paper §4), evaluated per step."""
    return initial * 0.5 * (1 + math.cos(math.pi * step / total_steps))


def set_learning_rate(optimizer: torch.optim.SGD, initial: float, lr: float) -> None:
    for group in optimizer.param_groups:
        group["lr"] = initial if group["fixed_lr"] else lr


def views(batch: torch.Tensor, image_size: int, generator: torch.Generator,
          view=augment.simsiam_view) -> tuple[torch.Tensor, torch.Tensor]:
    """Two independently augmented views x1, x2 (B, 3, size, size) of a uint8 batch (B, 3, S, S);
    `view` is augment.simsiam_view or its torch.compile'd version."""
    layout = runs.memory_format(batch.device)
    x1 = view(batch, image_size, generator).contiguous(memory_format=layout)
    x2 = view(batch, image_size, generator).contiguous(memory_format=layout)
    return x1, x2


def optimize(model: torch.nn.Module, optimizer: torch.optim.Optimizer, x1: torch.Tensor, x2: torch.Tensor,
             precision: str) -> tuple[torch.Tensor, torch.Tensor]:
    """One SGD step on the symmetric loss (paper eq. 2). Returns (loss, z-std) as detached 0-dim tensors
    on the device: nothing here waits for the GPU."""
    with runs.autocast(x1.device, precision):
        p1, p2, z1, z2 = model(x1, x2)
        loss = D(p1, z2) / 2 + D(p2, z1) / 2
    optimizer.zero_grad(set_to_none=True)
    loss.backward()
    optimizer.step()
    return loss.detach(), (z_std(z1) + z_std(z2)) / 2


def train_step(model: torch.nn.Module, optimizer: torch.optim.Optimizer, batch: torch.Tensor, image_size: int,
               generator: torch.Generator, precision: str,
               view=augment.simsiam_view) -> tuple[torch.Tensor, torch.Tensor]:
    """The whole step train.py runs: augmentation on the batch's device, then the SGD step."""
    return optimize(model, optimizer, *views(batch, image_size, generator, view), precision)


def epoch_seed(seed: int, epoch: int, rank: int = 0) -> int:
    """Seed of an epoch's batch order (rank 0's, shared by all) and of each rank's augmentations: a resumed
    epoch draws exactly what it would have, and ranks draw different, reproducible augmentations."""
    return (seed * 1_000_003 + epoch) * 1_009 + rank


class Readout:
    """A device scalar for the progress bar, read without waiting for the GPU: it is copied asynchronously
    into pinned host memory and shown once that copy has landed, a few steps later."""

    def __init__(self, device: torch.device):
        self.cuda = device.type == "cuda"
        self.buffer = torch.zeros((), pin_memory=self.cuda)
        self.copied = torch.cuda.Event() if self.cuda else None
        self.pending = False
        self.value = float("nan")

    def push(self, scalar: torch.Tensor) -> float:
        if not self.cuda:
            self.value = scalar.item()
        elif not self.pending or self.copied.query():
            if self.pending:
                self.value = self.buffer.item()
            self.buffer.copy_(scalar, non_blocking=True)
            self.copied.record()
            self.pending = True
        return self.value
