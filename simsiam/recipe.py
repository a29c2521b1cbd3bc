"""The SimSiam pretraining recipe and its step, the code that train.py runs and bench.py times: the defaults, the
optimiser, two augmented views of a uint8 batch, and one SGD step on the symmetric loss (paper, Algorithm 1). The
network and D are in model.py, the augmentations in augment.py."""
from __future__ import annotations

import functools

import torch

from simsiam import augment, devices
from simsiam.model import D, SimSiam, z_std
from simsiam.runs import RunError

# train.py's defaults. 150 px and batch 256 as the original repository; the optimisation follows the paper's
# small-data (CIFAR-10) recipe rather than ImageNet's (base lr 0.05, wd 1e-4): 23,000 small photos are closer to
# CIFAR's 50,000 than to ImageNet's 1.28 M, and the stronger weight decay is what keeps small-data runs stable.
DEFAULTS = {"epochs": 200, "batch_size": 256, "image_size": 150,  # image size in px
            "lr": 0.03, "weight_decay": 5e-4, "momentum": 0.9,  # base lr: peak lr = lr * batch_size / 256
            "blur_reference_size": augment.BLUR_REFERENCE_SIZE}  # the blur scaled with the view's side
# --demo, for a CPU: 32 px and a high lr, so that a couple of hundred steps visibly move the loss
DEMO = {"epochs": 20, "batch_size": 64, "image_size": 32, "lr": 0.5}
# --cpu: real photos on a CPU in under an hour (2 cores, the 23,000-photo pack: about 36 minutes). 32 px: a step
# costs about a twentieth of one at 150 px; batch 128 and base lr 0.2 (a peak of 0.1, about the CIFAR recipe's 0.06
# at batch 512 raised for a run of a few thousand steps); 18 epochs; the blur's 0.1-2 px at the 32 px view itself.
# Not yet a recipe that shows SimSiam paying: of the three configurations measured (docs/cpu.md), none put SimSiam's
# probes ahead of random init's; this one, the shortest, came closest with the SGD probe.
CPU = {"epochs": 18, "batch_size": 128, "image_size": 32, "lr": 0.2, "blur_reference_size": 32, "device": "cpu"}


# Memory of one training step per input pixel per image (two views, forward and backward, optimiser included): a
# low estimate from one H200 at 150 px, batch 256 (9.4 GB fp32 eager, 3.3 GB bf16 + channels_last, 1,630 and
# 570 bytes), so that only a step that surely cannot fit is refused before any work. The backbone's activations
# dominate it, so a fine-tuned classifier's step (one view) takes about half.
STEP_BYTES_PER_PIXEL = {"fp32": 1_000, "bf16": 400}


def step_bytes(image_size: int, batch_size: int, precision: str, views: int = 2) -> int:
    """About how many bytes one step at `image_size` px and `batch_size` images per process needs, at least:
    SimSiam's two views, or a fine-tuned classifier's one (`views`)."""
    per_pixel = STEP_BYTES_PER_PIXEL.get(precision, STEP_BYTES_PER_PIXEL["fp32"])
    return per_pixel * image_size ** 2 * batch_size * views // 2


def check_memory(image_size: int, batch_size: int, runtime: devices.Runtime, views: int = 2) -> None:
    """Refuse, before any decoding, a step that cannot fit in the device's free memory, with what would fit."""
    needed, free = step_bytes(image_size, batch_size, runtime.precision, views), devices.free_memory(runtime.device)
    if free is not None and needed > free:
        fitting = free // step_bytes(image_size, 1, runtime.precision, views)
        raise RunError(f"one step at --image-size {image_size} and {batch_size} images per process needs about "
                       f"{needed / 1e9:,.1f} GB of {runtime.device} memory, {free / 1e9:,.1f} GB free: pass a "
                       f"smaller --image-size or --batch-size (at {image_size} px about {fitting} images fit)")


def fitting_batch(image_size: int, most: int, runtime: devices.Runtime) -> int:
    """The largest batch, up to `most`, that one view's pass at `image_size` px surely fits in the device's free
    memory (step_bytes of one view, a training step's, is more than an evaluation pass needs); refused when not
    even one image fits."""
    check_memory(image_size, 1, runtime, views=1)
    free = devices.free_memory(runtime.device)
    return most if free is None else max(1, min(most, free // step_bytes(image_size, 1, runtime.precision, views=1)))


def make_optimizer(model: SimSiam, lr: float, momentum: float, weight_decay: float) -> torch.optim.SGD:
    """SGD over two groups at peak lr `lr`: the encoder, cosine-decayed, and the predictor, fixed (`fix_pred_lr`,
    paper §4.3); schedule.set_lr sets their lr at every step."""
    predictor = list(model.predictor.parameters())  # a list, not a set: the order must survive --resume
    encoder = [p for p in model.parameters() if all(p is not q for q in predictor)]
    groups = [{"name": "encoder", "params": encoder, "peak_lr": lr},
              {"name": "predictor", "params": predictor, "peak_lr": lr, "fixed": True}]
    return torch.optim.SGD(groups, lr=lr, momentum=momentum, weight_decay=weight_decay,
                           fused=devices.fused_sgd(next(model.parameters()).device))


@functools.cache
def compiled_view():
    return torch.compile(augment.simsiam_view)


def views(batch: torch.Tensor, image_size: int, generator: torch.Generator, compiled: bool = False,
          blur_reference: int = augment.BLUR_REFERENCE_SIZE) -> tuple[torch.Tensor, torch.Tensor]:
    """Two independently augmented views x1, x2 (B, 3, size, size) of a uint8 batch (B, 3, S, S), on its device;
    `blur_reference`: the view side the blur's sigma range is chosen for (augment.blur_sigma_range)."""
    view = compiled_view() if compiled else augment.simsiam_view
    return view(batch, image_size, generator, blur_reference), view(batch, image_size, generator, blur_reference)


def sgd_step(model: torch.nn.Module, optimizer: torch.optim.Optimizer, x1: torch.Tensor, x2: torch.Tensor,
             runtime: devices.Runtime) -> tuple[torch.Tensor, torch.Tensor]:
    """One SGD step on the symmetric loss (paper eq. 2; the stop-gradient is inside D). Returns (loss, z-std) as
    detached 0-dim tensors on the device: nothing here waits for the GPU. The views are laid out as the runtime's
    convolutions want them (channels_last on CUDA and for bf16 on a CPU)."""
    x1, x2 = (x.contiguous(memory_format=runtime.memory_format) for x in (x1, x2))
    with runtime.autocast():
        p1, p2, z1, z2 = model(x1, x2)  # p: (B, 2048) predictions, z: (B, 2048) projections
        loss = D(p1, z2) / 2 + D(p2, z1) / 2
    optimizer.zero_grad(set_to_none=True)
    loss.backward()
    optimizer.step()
    return loss.detach(), (z_std(z1) + z_std(z2)) / 2


def match_layout(optimizer: torch.optim.Optimizer) -> None:
    """Give every momentum buffer its parameter's memory layout: a last.pt written on a CPU (contiguous) resumes
    into channels_last parameters on CUDA, and the fused update wants a buffer laid out as its parameter."""
    for group in optimizer.param_groups:
        for parameter in group["params"]:
            state = optimizer.state.get(parameter, {})
            if state.get("momentum_buffer") is not None:
                state["momentum_buffer"] = torch.empty_like(parameter).copy_(state["momentum_buffer"])
