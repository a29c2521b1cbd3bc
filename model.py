"""SimSiam (Chen & He, "Exploring Simple Siamese Representation Learning", CVPR 2021) on a ResNet18: the network,
the loss D(p, z), the collapse metric, the checkpoint format and the training step, in the paper's symbols:
    z1, z2 = f(x1), f(x2)          f = projector(backbone(x)), the encoder
    p1, p2 = h(z1), h(z2)          h = predictor
    L = D(p1, z2) / 2 + D(p2, z1) / 2"""
import contextlib
import math
import os
import tempfile
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn
from torchvision.models import resnet18

import augment

FEATURE_DIM = 512  # ResNet18's pooled feature width
PROJECTION_DIM = 2048  # d, the output dimension of f and h (§4, "Projection MLP")
PREDICTION_HIDDEN_DIM = 512  # the predictor's bottleneck (§4, "Prediction MLP")
MIN_IMAGE_SIZE = 16  # px: ResNet18 halves the side five times
FORMAT, VERSION = "simsiam-cats-dogs", 2  # 2: the lean layout (no per-rank generator state in last.pt)

class UserError(Exception):
    """Something the user must change; the message says what. Scripts print it as one line and exit 2."""

# ---------------------------------------------------------------- the network

def resnet18_backbone(zero_init_residual: bool = False) -> nn.Module:  # random init, no fc: (B, 3, H, W) -> (B, 512)
    backbone = resnet18(weights=None, zero_init_residual=zero_init_residual)
    backbone.fc = nn.Identity()
    return backbone

def projection_mlp(in_dim: int, dim: int) -> nn.Sequential:
    """Projection MLP (§4): three Linear -> BN layers, ReLU after the first two, output BN without affine."""
    return nn.Sequential(nn.Linear(in_dim, dim, bias=False), nn.BatchNorm1d(dim), nn.ReLU(inplace=True),
                         nn.Linear(dim, dim, bias=False), nn.BatchNorm1d(dim), nn.ReLU(inplace=True),
                         nn.Linear(dim, dim, bias=False), nn.BatchNorm1d(dim, affine=False))

def prediction_mlp(dim: int, hidden_dim: int) -> nn.Sequential:
    """Prediction MLP (§4): a bottleneck Linear -> BN -> ReLU -> Linear, no BN on its output."""
    return nn.Sequential(nn.Linear(dim, hidden_dim, bias=False), nn.BatchNorm1d(hidden_dim), nn.ReLU(inplace=True),
                         nn.Linear(hidden_dim, dim))

class SimSiam(nn.Module):  # backbone + projector: the encoder f; predictor: h; zero_init_residual as the official code
    def __init__(self, zero_init_residual: bool = True):
        super().__init__()
        self.backbone = resnet18_backbone(zero_init_residual)
        self.projector = projection_mlp(FEATURE_DIM, PROJECTION_DIM)
        self.predictor = prediction_mlp(PROJECTION_DIM, PREDICTION_HIDDEN_DIM)

    def forward(self, x1: torch.Tensor, x2: torch.Tensor):
        z1, z2 = self.projector(self.backbone(x1)), self.projector(self.backbone(x2))  # (B, d)
        return self.predictor(z1), self.predictor(z2), z1, z2

class Classifier(nn.Module):
    def __init__(self, num_classes: int):
        super().__init__()
        self.backbone = resnet18_backbone()
        # BN without affine standardises the features, so one lr suits random and pretrained backbones alike (as in
        # MAE's linear probing, He et al. 2022, appendix A.2)
        self.head = nn.Sequential(nn.BatchNorm1d(FEATURE_DIM, affine=False), nn.Linear(FEATURE_DIM, num_classes))
        nn.init.normal_(self.head[1].weight, std=0.01)  # logits near 0, the loss near chance at the start (MAE)
        nn.init.zeros_(self.head[1].bias)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.backbone(x))

def D(p: torch.Tensor, z: torch.Tensor) -> torch.Tensor:
    """Negative cosine similarity with the stop-gradient on z (§3, eq. 1 and 3): minimum -1."""
    return -F.cosine_similarity(p.float(), z.detach().float(), dim=-1).mean()

def z_std(z: torch.Tensor) -> torch.Tensor:
    """Collapse metric (§4.1, Fig. 2): std over the batch of l2-normalised z, channel mean: 1/sqrt(d) healthy."""
    return F.normalize(z.detach().float(), dim=1).std(dim=0).mean()

# ---------------------------------------------------------------- the training step (train.py runs it, bench.py times)

def peak_lr(base_lr: float, batch_size: int) -> float:  # the official scripts' linear scaling rule
    return base_lr * batch_size / 256

def set_lr(optimizer: torch.optim.Optimizer, step: int, total_steps: int) -> dict[str, float]:
    """Each group's lr: its peak_lr, half-cosine-decayed to 0 (§4), unless `fixed` (the predictor, §4.3)."""
    decay = 0.5 * (1 + math.cos(math.pi * step / total_steps))
    for group in optimizer.param_groups:
        group["lr"] = group["peak_lr"] * (1.0 if group.get("fixed") else decay)
    return {group["name"]: group["lr"] for group in optimizer.param_groups}

def make_optimizer(model: SimSiam, lr: float, momentum: float, weight_decay: float) -> torch.optim.SGD:
    """SGD over the encoder (cosine-decayed) and the predictor (fixed lr, `fix_pred_lr`, §4.3), both at peak `lr`."""
    predictor = list(model.predictor.parameters())
    encoder = [p for p in model.parameters() if all(p is not q for q in predictor)]
    groups = [{"name": "encoder", "params": encoder, "peak_lr": lr},
              {"name": "predictor", "params": predictor, "peak_lr": lr, "fixed": True}]
    fused = next(model.parameters()).device.type == "cuda"  # one kernel for the whole update, where launches cost
    return torch.optim.SGD(groups, lr=lr, momentum=momentum, weight_decay=weight_decay, fused=fused)

def train_step(model: nn.Module, optimizer: torch.optim.Optimizer, images: torch.Tensor, generator: torch.Generator,
               image_size: int, blur_reference: int, step: int, total_steps: int, runtime) -> tuple:
    """One SimSiam step (Algorithm 1) on a device's uint8 batch (B, 3, S, S): this step's lr, two views, sgd_step."""
    set_lr(optimizer, step, total_steps)
    x1 = augment.simsiam_view(images, image_size, generator, blur_reference)  # (B, 3, size, size)
    x2 = augment.simsiam_view(images, image_size, generator, blur_reference)
    return sgd_step(model, optimizer, x1, x2, runtime)

def sgd_step(model: nn.Module, optimizer: torch.optim.Optimizer, x1: torch.Tensor, x2: torch.Tensor, runtime) -> tuple:
    """SGD on the symmetric loss (eq. 2): (loss, z-std) as detached 0-dim tensors on the device, no wait for the GPU."""
    x1, x2 = (x.contiguous(memory_format=runtime.memory_format) for x in (x1, x2))
    with runtime.autocast():
        p1, p2, z1, z2 = model(x1, x2)  # (B, d) each
        loss = D(p1, z2) / 2 + D(p2, z1) / 2
    optimizer.zero_grad(set_to_none=True)
    runtime.backward_step(loss, optimizer)
    return loss.detach(), (z_std(z1) + z_std(z2)) / 2

def match_layout(optimizer: torch.optim.Optimizer) -> None:
    """Momentum buffers laid out as their parameters (a CPU's last.pt on CUDA): the fused update wants both alike."""
    for group in optimizer.param_groups:
        for parameter in group["params"]:
            state = optimizer.state.get(parameter, {})
            if state.get("momentum_buffer") is not None:
                state["momentum_buffer"] = torch.empty_like(parameter).copy_(state["momentum_buffer"])

# ---------------------------------------------------------------- checkpoints
# A plain dict of tensors and builtins, read with torch.load(weights_only=True), nothing unpickled:
#   {"format": FORMAT, "version": VERSION, "kind": "simsiam" | "classifier", "model": state_dict, ...extra entries}

def unwrap(model: nn.Module) -> nn.Module:  # the plain module inside DDP or torch.compile wrappers
    return getattr(model := getattr(model, "module", model), "_orig_mod", model)

def finite_state(model: nn.Module) -> bool:  # every weight and BatchNorm statistic finite: checked before saving
    return all(bool(value.isfinite().all()) for value in model.state_dict().values() if value.is_floating_point())

def atomic_save(state: dict, path: Path) -> None:
    """torch.save to a temporary file beside `path`, synced, then os.replace: a kill at any moment leaves the old
    file or the new one. Any failure (a full disk, a folder made read-only) is a UserError; the old file stays."""
    path, temporary = Path(path), None
    try:
        descriptor, temporary = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
        with os.fdopen(descriptor, "wb") as file:
            torch.save(state, file)
            file.flush()
            os.fsync(file.fileno())
        os.umask(umask := os.umask(0))
        os.chmod(temporary, 0o666 & ~umask)  # mkstemp's 0o600 would hide the checkpoint from the group
        os.replace(temporary, path)
    except Exception as error:  # torch.save raises RuntimeError for a full disk, OSError or others elsewhere
        if temporary is not None:
            with contextlib.suppress(OSError):  # a folder made read-only keeps it: named below
                os.unlink(temporary)
        left = f"; delete {temporary}, left where it could not be" if temporary and os.path.exists(temporary) else ""
        kept = "the previous file is kept" if path.exists() else "nothing was written"
        raise UserError(f"cannot write {path} ({getattr(error, 'strerror', None) or error}): free some space there, "
                        f"make it writable or choose another --out; {kept}{left}") from None

def save_checkpoint(path: Path, kind: str, model: nn.Module, **extra) -> None:
    atomic_save({"format": FORMAT, "version": VERSION, "kind": kind, "model": unwrap(model).state_dict(), **extra},
                path)

def export_backbone(model: SimSiam, path: Path) -> None:
    """The backbone in torchvision's key format, on the CPU: a resnet18() state dict less fc.weight and fc.bias."""
    atomic_save({key: value.cpu() for key, value in unwrap(model).backbone.state_dict().items()}, path)

def load_weights(module: nn.Module, state_dict: dict, path: Path, assign: bool = False) -> nn.Module:  # strictly
    try:
        module.load_state_dict(state_dict, assign=assign)
    except (RuntimeError, TypeError, AttributeError) as error:
        first = " ".join(str(error).split())[:300]
        raise UserError(f"{path}: its weights do not fit this code's model ({first})") from None
    return module

def read_file(path: Path) -> dict:
    if not path.is_file():
        raise UserError(f"{path}: no such checkpoint file" + " (a folder: pass the .pt file in it)" * path.is_dir())
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as error:  # not a pickle, damaged, or holding code that weights_only refuses to run
        fault = error.__context__ or error  # under weights_only's advice to unpickle anyway, the fault itself
        reason = " ".join(str(fault).split(". ")[0].split())[:200]
        raise UserError(f"{path}: not a readable checkpoint ({type(fault).__name__}: {reason})") from None
    if not isinstance(state, dict):
        raise UserError(f"{path}: a PyTorch file, but not a dict of weights")
    return state

def load_checkpoint(path: Path, kind: str, needs: tuple[str, ...] = ()) -> dict:
    """A checkpoint of `kind` holding `needs`, its weights checked strictly against a fresh model; else a UserError."""
    state = read_file(path := Path(path))
    if state.get("format") != FORMAT:
        raise UserError(f"{path}: a PyTorch file but not a {FORMAT} checkpoint")
    if state.get("kind") != kind:
        raise UserError(f"{path}: a {state.get('kind')!r} checkpoint, expected a {kind!r} one")
    if state.get("version") != VERSION:
        raise UserError(f"{path}: checkpoint format version {state.get('version')!r}, this code reads {VERSION}: "
                        f"written by another version of this repository")
    if missing := [key for key in ("model", *needs) if key not in state]:
        hint = " (siam.pt holds the weights only: --resume reads last.pt)" if "optimizer" in missing else ""
        raise UserError(f"{path}: a {kind} checkpoint without {', '.join(map(repr, missing))}{hint}")
    with torch.device("meta"):  # shapes and types only: nothing allocated
        fresh = SimSiam() if kind == "simsiam" else Classifier(len(state.get("classes") or ()))
    # names and shapes checked; a plain dict, since load_state_dict(assign=True) marks the state dict's _metadata
    load_weights(fresh, dict(state["model"]), path, assign=True)
    if not finite_state(fresh):  # assign=True: fresh holds the checkpoint's tensors
        raise UserError(f"{path}: its weights hold values that are not finite (NaN or infinity)")
    return state

def backbone_state(checkpoint: dict) -> dict:  # a SimSiam checkpoint's backbone, in torchvision's key format
    return {key.removeprefix("backbone."): value for key, value in checkpoint["model"].items()
            if key.startswith("backbone.")}
