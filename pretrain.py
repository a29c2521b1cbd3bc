"""The SimSiam optimiser, schedule and training step, shared by train.py and bench.py so that the benchmark
measures exactly what users run."""
from __future__ import annotations

import math

import torch

import augment
import dataset
import runs
from model import D, SimSiam, z_std


def make_optimizer(model: SimSiam, lr: float, momentum: float, weight_decay: float) -> torch.optim.SGD:
    """SGD over two groups: encoder (cosine-decayed lr) and predictor (fixed lr, `fix_pred_lr`, paper §4.3)."""
    predictor = list(model.predictor.parameters())  # a list, not a set: the order must survive --resume
    encoder = [p for p in model.parameters() if all(p is not q for q in predictor)]
    groups = [{"params": encoder, "fixed_lr": False}, {"params": predictor, "fixed_lr": True}]
    return torch.optim.SGD(groups, lr=lr, momentum=momentum, weight_decay=weight_decay)


def learning_rate(initial: float, step: int, total_steps: int) -> float:
    """Cosine decay from `initial` to 0 over the run (paper §4), evaluated per step."""
    return initial * 0.5 * (1 + math.cos(math.pi * step / total_steps))


def set_learning_rate(optimizer: torch.optim.SGD, initial: float, lr: float) -> None:
    for group in optimizer.param_groups:
        group["lr"] = initial if group["fixed_lr"] else lr


def train_step(model: SimSiam, optimizer: torch.optim.Optimizer, batch: torch.Tensor, image_size: int,
               generator: torch.Generator) -> tuple[torch.Tensor, torch.Tensor]:
    """One SimSiam step on a uint8 batch (B, 3, S, S): two augmented views, symmetric loss (paper eq. 2),
    SGD update. Returns (loss, z-std) as detached 0-dim tensors on the device: no host synchronisation."""
    device = batch.device
    x1 = augment.simsiam_view(batch, image_size, generator).contiguous(memory_format=runs.memory_format(device))
    x2 = augment.simsiam_view(batch, image_size, generator).contiguous(memory_format=runs.memory_format(device))
    with runs.autocast(device):
        p1, p2, z1, z2 = model(x1, x2)
        loss = D(p1, z2) / 2 + D(p2, z1) / 2
    optimizer.zero_grad(set_to_none=True)
    loss.backward()
    optimizer.step()
    return loss.detach(), (z_std(z1) + z_std(z2)) / 2


def epoch_seed(seed: int, epoch: int) -> int:
    """Seed of an epoch's batch order and augmentations: a resumed epoch draws exactly what it would have."""
    return seed * 1_000_003 + epoch


def batches(images: torch.Tensor, indices: torch.Tensor, batch_size: int, generator: torch.Generator,
            device: torch.device):
    """uint8 batches (B, 3, S, S) on `device` of `indices` in the generator's random order."""
    for batch_indices in dataset.epoch_batches(indices, batch_size, generator):
        yield dataset.gather(images, batch_indices, device)
