"""SimSiam (Chen & He, "Exploring Simple Siamese Representation Learning", CVPR 2021) on a ResNet18.

The network, the loss D(p, z), the collapse metric and the checkpoint format, in the paper's symbols:
    z1, z2 = f(x1), f(x2)          f = projector(backbone(x)), the encoder
    p1, p2 = h(z1), h(z2)          h = predictor
    L = D(p1, z2) / 2 + D(p2, z1) / 2
"""
from __future__ import annotations

import functools
import math
import os
import pickle
import shutil
import tempfile
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn
from torchvision.models import resnet18

ARCH = "resnet18"
FEATURE_DIM = 512  # ResNet18's pooled feature width
PROJECTION_DIM = 2048  # d, the paper's output dimension of f and h (§4, "Projection MLP")
PREDICTION_HIDDEN_DIM = 512  # the predictor's bottleneck (§4, "Prediction MLP")
MIN_IMAGE_SIZE = 16  # px: ResNet18 halves the side five times
CHECKPOINT_FORMAT = "simsiam-cats-dogs"
CHECKPOINT_VERSION = 1


def resnet18_backbone(zero_init_residual: bool = False) -> nn.Module:
    """Randomly initialised torchvision ResNet18 without its classifier: (B, 3, H, W) -> (B, 512).
    zero_init_residual starts every residual block as the identity (its last BN scale at 0)."""
    backbone = resnet18(weights=None, zero_init_residual=zero_init_residual)
    backbone.fc = nn.Identity()
    return backbone


def projection_mlp(in_dim: int = FEATURE_DIM, dim: int = PROJECTION_DIM) -> nn.Sequential:
    """Projection MLP (§4): three Linear -> BN layers, ReLU after the first two, output BN without affine."""
    return nn.Sequential(
        nn.Linear(in_dim, dim, bias=False), nn.BatchNorm1d(dim), nn.ReLU(inplace=True),
        nn.Linear(dim, dim, bias=False), nn.BatchNorm1d(dim), nn.ReLU(inplace=True),
        nn.Linear(dim, dim, bias=False), nn.BatchNorm1d(dim, affine=False),
    )


def prediction_mlp(dim: int = PROJECTION_DIM, hidden_dim: int = PREDICTION_HIDDEN_DIM) -> nn.Sequential:
    """Prediction MLP (§4): a bottleneck Linear -> BN -> ReLU -> Linear, no BN on its output."""
    return nn.Sequential(
        nn.Linear(dim, hidden_dim, bias=False), nn.BatchNorm1d(hidden_dim), nn.ReLU(inplace=True),
        nn.Linear(hidden_dim, dim),
    )


class SimSiam(nn.Module):
    """backbone + projector form the encoder f; predictor is h."""

    def __init__(self, dim: int = PROJECTION_DIM, hidden_dim: int = PREDICTION_HIDDEN_DIM,
                 zero_init_residual: bool = True):
        """zero_init_residual: every residual block starts as the identity, as in the official SimSiam code's
        encoder; False: torchvision's initialisation, that of the random-init baseline (train.py
        --no-zero-init-residual)."""
        super().__init__()
        self.backbone = resnet18_backbone(zero_init_residual)
        self.projector = projection_mlp(FEATURE_DIM, dim)
        self.predictor = prediction_mlp(dim, hidden_dim)

    def forward(self, x1: torch.Tensor, x2: torch.Tensor):
        z1 = self.projector(self.backbone(x1))  # (B, d)
        z2 = self.projector(self.backbone(x2))  # (B, d)
        p1, p2 = self.predictor(z1), self.predictor(z2)  # (B, d)
        return p1, p2, z1, z2


class Classifier(nn.Module):
    """A ResNet18 backbone and a linear head on its features, for the few-label evaluation."""

    def __init__(self, num_classes: int):
        super().__init__()
        self.backbone = resnet18_backbone()
        # BN without affine standardises the features before the linear layer, so one learning rate suits
        # random and pretrained backbones alike (as in MAE's linear probing, He et al. 2022, appendix A.2)
        self.head = nn.Sequential(nn.BatchNorm1d(FEATURE_DIM, affine=False), nn.Linear(FEATURE_DIM, num_classes))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.backbone(x))


def D(p: torch.Tensor, z: torch.Tensor) -> torch.Tensor:
    """Negative cosine similarity with the stop-gradient on z (§3, eq. 1 and 3): minimum -1."""
    return -F.cosine_similarity(p.float(), z.detach().float(), dim=-1).mean()


def z_std(z: torch.Tensor) -> torch.Tensor:
    """Collapse metric (§4.1, Fig. 2): std over the batch of l2-normalised z, averaged over channels.

    About 1/sqrt(d) for healthy outputs, 0 for collapsed ones."""
    return F.normalize(z.detach().float(), dim=1).std(dim=0).mean()


# ---------------------------------------------------------------- checkpoints
# A checkpoint is a plain dict of tensors and builtins, readable with torch.load(weights_only=True):
#   {"format": CHECKPOINT_FORMAT, "version": 1, "kind": "simsiam" | "classifier", "arch": ARCH,
#    "model": state_dict, ...extra entries such as "epoch", "optimizer", "args", "split"}


class CheckpointError(Exception):
    """A file that is not a checkpoint of the expected kind; the message says what it is."""


def unwrap(model: nn.Module) -> nn.Module:
    """The plain module inside DistributedDataParallel or torch.compile wrappers."""
    model = getattr(model, "module", model)
    return getattr(model, "_orig_mod", model)


def finite_state(model: nn.Module) -> bool:
    """Whether every floating-point tensor of the model's state (weights and BatchNorm statistics) is finite:
    checked before every save, so that no checkpoint holds a NaN."""
    return all(bool(value.isfinite().all()) for value in model.state_dict().values() if value.is_floating_point())


def save_checkpoint(path: Path, kind: str, model: nn.Module, **extra: Any) -> None:
    """Write a checkpoint of `kind` atomically: the unwrapped model's state dict and `extra`."""
    atomic_save({"format": CHECKPOINT_FORMAT, "version": CHECKPOINT_VERSION, "kind": kind, "arch": ARCH,
                 "model": unwrap(model).state_dict(), **extra}, path)


def export_backbone(model: SimSiam, path: Path) -> None:
    """The backbone's weights alone, in torchvision's own key format (conv1.weight, layer1.0.bn1.bias, ...), on the
    CPU: torchvision.models.resnet18().load_state_dict(torch.load(path), strict=False) misses only fc.weight and
    fc.bias."""
    atomic_save({key: value.cpu() for key, value in unwrap(model).backbone.state_dict().items()}, path)


def atomic_save(state: dict, path: Path) -> None:
    """torch.save to a temporary file in the same folder, flushed and synced, then os.replace: a kill at any
    moment leaves either the old file or the new one."""
    path = Path(path)
    descriptor, temporary = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        with os.fdopen(descriptor, "wb") as file:
            torch.save(state, file)
            file.flush()
            os.fsync(file.fileno())
        umask = os.umask(0)
        os.umask(umask)
        os.chmod(temporary, 0o666 & ~umask)  # mkstemp's 0o600 would hide the checkpoint from the group
        os.replace(temporary, path)
    except OSError as error:  # a full disk or quota, a folder gone: the previous file is untouched
        Path(temporary).unlink(missing_ok=True)
        kept = f"the previous {path} is kept" if path.exists() else f"no {path.name} was written"
        raise CheckpointError(f"cannot write {path} ({error.strerror or error}): it needs about "
                              f"{tensor_bytes(state) / 1e6:,.0f} MB in {path.parent}, which has "
                              f"{shutil.disk_usage(path.parent).free / 1e6:,.0f} MB free; {kept}. Free space "
                              f"there and run again (a training run continues with --resume)") from None
    except BaseException:
        Path(temporary).unlink(missing_ok=True)
        raise


def tensor_bytes(value) -> int:
    """The bytes of every tensor in a nested state: about what a checkpoint of it takes on disk."""
    if isinstance(value, torch.Tensor):
        return value.numel() * value.element_size()
    if isinstance(value, dict):
        return sum(map(tensor_bytes, value.values()))
    return sum(map(tensor_bytes, value)) if isinstance(value, (list, tuple)) else 0


def is_count(value) -> bool:
    return isinstance(value, int) and not isinstance(value, bool) and value >= 0


def is_side(value) -> bool:
    return is_count(value) and value >= MIN_IMAGE_SIZE


def is_finite_number(value) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)


def is_byte_tensor(value) -> bool:
    return isinstance(value, torch.Tensor) and value.dtype == torch.uint8 and value.dim() == 1


PROGRESS_KEYS = {"epoch", "step", "augment_generator", "loss_sum", "std_sum"}
# The form of every entry a checkpoint may hold: (what it must be, the check). load_checkpoint applies it once.
ENTRIES = {
    "model": ("a state dict of tensors", lambda v: isinstance(v, dict) and all(
        isinstance(k, str) and isinstance(t, torch.Tensor) for k, t in v.items())),
    "epoch": ("a count of epochs", is_count),
    "args": ("a record of the run's arguments", lambda v: isinstance(v, dict)),
    "split": ("a record of the held-out split", lambda v: isinstance(v, dict) and isinstance(
        v.get("test_fingerprint"), str)),
    "optimizer": ("an optimiser state", lambda v: isinstance(v, dict) and isinstance(v.get("state"), dict)
                  and isinstance(v.get("param_groups"), list) and all(isinstance(g, dict) for g in v["param_groups"])),
    "rng": ("the CPU generator's state", lambda v: is_byte_tensor(v) and v.shape == torch.get_rng_state().shape),
    "progress": ("each process's place in its epoch", lambda v: isinstance(v, list) and all(
        isinstance(p, dict) and PROGRESS_KEYS <= p.keys() and is_count(p["epoch"]) and is_count(p["step"])
        and is_byte_tensor(p["augment_generator"]) and is_finite_number(p["loss_sum"])
        and is_finite_number(p["std_sum"]) and isinstance(p.get("device", ""), str) for p in v)),
    "pretraining_hashes": ("an (N, 2) int64 tensor of photo identities, one row per pretraining photo (none would "
                           "let any test image pass the leak check)", lambda v: isinstance(v, torch.Tensor)
                           and v.dtype == torch.int64 and v.dim() == 2 and v.shape[1] == 2 and len(v) > 0),
    "classes": ("a list of distinct class names", lambda v: isinstance(v, list) and len(v) >= 1
                and all(isinstance(c, str) for c in v) and len(set(v)) == len(v)),
    "labelled_indices": ("a list of indices", lambda v: isinstance(v, list) and all(map(is_count, v))),
    "protocol": ("an evaluation protocol's number", is_count),
    "environment": ("a record of the run's software and hardware", lambda v: isinstance(v, dict)),
}
SIDE = (f"a side in px of at least {MIN_IMAGE_SIZE}", is_side)
SIDE_OR_NONE = (f"a side in px of at least {MIN_IMAGE_SIZE}, or None", lambda v: v is None or is_side(v))
# The arguments each kind's readers use: (what each must be, the check); a missing one reads as None
ARGUMENTS = {"simsiam": {"image_size": SIDE, "cache_size": SIDE_OR_NONE,
                         "batch_size": ("a count of at least 2", lambda v: is_count(v) and v >= 2),
                         "seed": ("a count", is_count), "blur_reference_size": SIDE_OR_NONE},
             "classifier": {"image_size": SIDE, "cache_size": SIDE}}
NEEDS = {"simsiam": ("model",), "classifier": ("model", "classes")}  # what every reader of a kind uses


def schema_problem(state: dict, kind: str) -> str | None:
    """What in a checkpoint's entries does not have the form its readers expect (ENTRIES, ARGUMENTS, and the
    weights of its kind's model: weights_problem), or None."""
    for key, (form, fits) in ENTRIES.items():
        if key in state and not fits(state[key]):
            return f"its {key!r} entry is not {form}"
    for key, (form, fits) in ARGUMENTS[kind].items():
        if "args" in state and not fits(state["args"].get(key)):
            return f"its 'args' entry {key!r} is {state['args'].get(key)!r}, not {form}"
    return weights_problem(state["model"], kind, state.get("classes"))


@functools.cache
def model_weights(kind: str, num_classes: int | None) -> dict[str, tuple[torch.Size, torch.dtype]]:
    """The shape and type of every weight of the model a checkpoint of `kind` holds."""
    with torch.device("meta"):  # shapes and types only: nothing is allocated or initialised
        model = SimSiam() if kind == "simsiam" else Classifier(num_classes)
    return {key: (value.shape, value.dtype) for key, value in model.state_dict().items()}


def weights_problem(weights: dict, kind: str, classes: list | None) -> str | None:
    """What in a state dict does not fit the model of `kind` (every weight's name, shape and type), or holds a
    value that is not finite (no run of this repository saves one), or None."""
    expected = model_weights(kind, None if classes is None else len(classes))
    missing, foreign = expected.keys() - weights.keys(), weights.keys() - expected.keys()
    if missing or foreign:
        odd = [f"{label} {len(keys)}, such as {min(keys)!r}" for label, keys in (("missing", missing),
                                                                                 ("foreign", foreign)) if keys]
        return f"its 'model' entry does not hold a {kind} model's weights ({'; '.join(odd)})"
    for key, value in weights.items():
        if (value.shape, value.dtype) != expected[key]:
            return (f"its 'model' weight {key!r} is {tuple(value.shape)} {value.dtype}, a {kind} model's is "
                    f"{tuple(expected[key][0])} {expected[key][1]}")
    floats = [value for value in weights.values() if value.is_floating_point()]
    if bool(torch.stack([value.sum() for value in floats]).isfinite().all()):  # a tenth of isfinite's time: a NaN
        return None  # or infinity makes its tensor's sum one
    bad = next((key for key, value in weights.items() if value.is_floating_point() and not value.isfinite().all()),
               None)  # None: finite values whose sum overflowed
    return None if bad is None else f"its 'model' weight {bad!r} holds values that are not finite (NaN or infinity)"


CHECKPOINT_NAMES = {"simsiam": ("siam.pt", "last.pt"), "classifier": ("classifier.pt",)}  # in a run folder


def load_checkpoint(path: Path, kind: str, needs: tuple[str, ...] = ()) -> dict:
    """Read a checkpoint of `kind` holding the entries `needs` (besides "model") without unpickling code, each
    entry checked for its form (ENTRIES); raise CheckpointError saying what is wrong."""
    path = Path(path)
    if path.is_dir():
        inside = [name for name in CHECKPOINT_NAMES[kind] if (path / name).is_file()]
        raise CheckpointError(f"{path} is a folder, not a checkpoint file: pass "
                              + (f"{path / inside[0]}" if inside else f"the {' or '.join(CHECKPOINT_NAMES[kind])} "
                                 f"of a {kind} run"))
    if not path.is_file():
        raise CheckpointError(f"{path}: no such checkpoint file")
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as error:
        if "global" not in str(error).lower():  # not a pickle at all, or a damaged one
            raise CheckpointError(f"{path}: not a PyTorch checkpoint (unreadable as one)") from None
        raise CheckpointError(f"{path}: refused, it holds Python objects that would run code when loaded "
                              f"(torch.load(weights_only=True) stopped them): not a checkpoint of this repository, "
                              f"and possibly unsafe") from None
    except Exception as error:
        raise CheckpointError(f"{path}: not a PyTorch checkpoint ({type(error).__name__}: {error})") from None
    if not isinstance(state, dict) or state.get("format") != CHECKPOINT_FORMAT:
        keys = sorted(state, key=str)[:6] if isinstance(state, dict) else type(state).__name__
        raise CheckpointError(f"{path}: a PyTorch file but not a {CHECKPOINT_FORMAT} checkpoint (holds {keys})")
    if state.get("kind") != kind:
        raise CheckpointError(f"{path}: a {state.get('kind')!r} checkpoint, expected a {kind!r} one")
    if state.get("version") != CHECKPOINT_VERSION:
        raise CheckpointError(f"{path}: checkpoint format version {state.get('version')!r}, this code reads "
                              f"version {CHECKPOINT_VERSION}")
    if state.get("arch") != ARCH:
        raise CheckpointError(f"{path}: architecture {state.get('arch')!r}, expected {ARCH!r}")
    missing = [key for key in (*NEEDS[kind], *needs) if key not in state]
    if missing:
        raise CheckpointError(f"{path}: a {kind} checkpoint without {', '.join(repr(key) for key in missing)}"
                              + (" (siam.pt holds the weights only: --resume reads last.pt)"
                                 if "optimizer" in missing else ""))
    if (problem := schema_problem(state, kind)) is not None:
        raise CheckpointError(f"{path}: {problem}: damaged, or not written by this repository's {kind} code")
    return state


def backbone_state(checkpoint: dict) -> dict:
    """The backbone's weights from a SimSiam checkpoint's full state dict."""
    prefix = "backbone."
    return {key[len(prefix):]: value for key, value in checkpoint["model"].items() if key.startswith(prefix)}
