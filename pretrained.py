"""A SimSiam checkpoint's backbone, for the scripts that evaluate it (classifier.py, pictures.py, the experiments):
read, put into a ResNet18, and checked against the data it is evaluated on, in one place each."""
from __future__ import annotations

from pathlib import Path

import torch
from torch import nn

import dataset
from model import CheckpointError, backbone_state, load_checkpoint, resnet18_backbone


def read(path: Path, hint: str = "train one with train.py") -> dict:
    """The SimSiam checkpoint at `path` (train.py's siam.pt or last.pt) with its arguments and split record, before
    any data is decoded; a CheckpointError that ends with `hint` otherwise."""
    try:
        return load_checkpoint(path, kind="simsiam", needs=("args", "split"))
    except CheckpointError as error:
        raise CheckpointError(f"cannot use --checkpoint: {error} ({hint})") from None


def resolution(image_size: int | None, cache_size: int | None, pretrained: dict | None,
               fallback_image_size: int) -> tuple[int, int]:
    """(image size, cache size) in px for a backbone pretrained with the arguments `pretrained`: an explicit flag
    wins; otherwise the checkpoint's, so that the backbone sees the scale and the cached pixels it was pretrained
    on (its cache size None means dataset.default_cache_size). The cache follows the checkpoint's only while the
    image size does. Without a checkpoint, `fallback_image_size`."""
    if image_size is None:
        image_size = pretrained["image_size"] if pretrained is not None else fallback_image_size
    if cache_size is None and pretrained is not None and image_size == pretrained["image_size"]:
        cache_size = pretrained["cache_size"]
    return image_size, cache_size or dataset.default_cache_size(image_size)


def load_backbone(checkpoint: dict, path: Path, backbone: nn.Module | None = None) -> nn.Module:
    """`backbone` (a new random-init ResNet18 backbone when None) with the checkpoint's backbone weights, loaded
    strictly."""
    backbone = resnet18_backbone() if backbone is None else backbone
    try:
        backbone.load_state_dict(backbone_state(checkpoint))
    except RuntimeError as error:
        raise CheckpointError(f"--checkpoint {path} does not fit a ResNet18 backbone: {error}") from None
    return backbone


def check_test_split(checkpoint: dict, path: Path, data: dataset.ImageSet, test: torch.Tensor,
                     current: dict | None = None) -> None:
    """Refuse a backbone whose pretraining may have seen the test images `test` of `data`: its recorded test split
    must be this one. With the `current` split identity (dataset.split_identity), the refusal names the settings
    that differ."""
    if dataset.fingerprint(data.files, test) == checkpoint["split"]["test_fingerprint"]:
        return
    differences = "; ".join(dataset.split_differences(checkpoint["split"], current)) if current else ""
    raise CheckpointError(f"{path} was pretrained with another test split ({differences or checkpoint['split']}), "
                          f"so its pretraining may have seen these test images: use the data, --split-seed, "
                          f"--test-fraction and --limit it was trained with")
