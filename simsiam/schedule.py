"""The learning-rate schedule of both scripts: every optimizer group carries its own peak lr (`peak_lr`, base lr x
batch / 256 as the official SimSiam scripts) and its name, and follows a half cosine from that peak to 0 over the
run, per step (SimSiam paper §4; SGDR without restarts), unless it is `fixed` (SimSiam's predictor, §4.3)."""
from __future__ import annotations

import math

import torch


def peak_lr(base_lr: float, batch_size: int) -> float:
    """The linear scaling rule: lr = base_lr x batch_size / 256 (SimSiam paper §4)."""
    return base_lr * batch_size / 256


def cosine_decay(step: int, total_steps: int) -> float:
    """The fraction of the peak lr at global step `step` of `total_steps`: 1 at step 0, towards 0 at the end."""
    return 0.5 * (1 + math.cos(math.pi * step / total_steps))


def set_lr(optimizer: torch.optim.Optimizer, step: int, total_steps: int) -> dict[str, float]:
    """Set every group's lr for global step `step`: its peak_lr, cosine-decayed unless the group is fixed;
    {group name: lr}."""
    decay = cosine_decay(step, total_steps)
    for group in optimizer.param_groups:
        group["lr"] = group["peak_lr"] * (1.0 if group.get("fixed") else decay)
    return {group["name"]: group["lr"] for group in optimizer.param_groups}
