"""A SimSiam checkpoint's backbone, for the scripts that evaluate it (classifier.py, pictures.py, the experiments):
read, its resolution, put into a ResNet18, and checked never to have seen the test images, in one place each."""
from __future__ import annotations

from pathlib import Path

import torch
from torch import nn

from simsiam import dataset, decode, runs
from simsiam.model import CheckpointError, backbone_state, load_checkpoint, resnet18_backbone


def read(path: Path, hint: str = "train one with train.py") -> dict:
    """The SimSiam checkpoint at `path` (train.py's siam.pt or last.pt) with its arguments and the content hashes
    of its pretraining images, before any data is decoded; a CheckpointError that ends with `hint` otherwise."""
    try:
        checkpoint = load_checkpoint(path, kind="simsiam", needs=("args", "split", "pretraining_hashes"))
        runs.check_protocol(checkpoint, path)
        if checkpoint.get("hash_kind") != decode.HASH_KIND:
            raise CheckpointError(f"{path} identifies its pretraining photos by "
                                  f"{checkpoint.get('hash_kind') or 'the bytes of their files'}, this code by their "
                                  f"pixels ({decode.HASH_KIND}), so the check that no test image was pretrained on "
                                  f"cannot compare them: pretrain again with train.py")
    except CheckpointError as error:
        raise CheckpointError(f"cannot use --checkpoint: {error} ({hint})") from None
    return checkpoint


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


def load_backbone(checkpoint: dict, backbone: nn.Module | None = None) -> nn.Module:
    """`backbone` (a new random-init ResNet18 backbone when None) with the checkpoint's backbone weights, loaded
    strictly."""
    backbone = resnet18_backbone() if backbone is None else backbone
    backbone.load_state_dict(backbone_state(checkpoint))  # its form checked by load_checkpoint
    return backbone


def check_unseen(checkpoint: dict, path: Path, test_hashes: torch.Tensor) -> None:
    """Refuse a backbone whose pretraining saw any of the test images, by content: the checkpoint's recorded
    pretraining hashes against the test images' (decode.perceptual_hash), whichever folder they come from, under
    whichever name, in whichever format or size."""
    seen = checkpoint["pretraining_hashes"]
    count = int(decode.near(test_hashes, seen).sum())
    if count:
        raise CheckpointError(f"{count:,} of the {len(test_hashes):,} test images were among the {len(seen):,} "
                              f"images {path} was pretrained on (compared by their pixels, whatever their names or "
                              f"formats), so its test accuracy would not be held out: evaluate with the data options "
                              f"it was pretrained with, or on images it never saw")
