"""Tests for model.py: the loss D and its stop-gradient, the symmetric SimSiam loss on a tiny batch, the
architecture of the MLPs (paper §4), the collapse metric, and the checkpoint format (round trip with
weights_only=True, unwrapped keys, clear refusals of foreign or unsafe files, atomic writes)."""
from __future__ import annotations

import os
import pickle
from pathlib import Path

import pytest
import torch
from torch import nn

from simsiam import model
from simsiam.model import (CheckpointError, Classifier, D, SimSiam, backbone_state, load_checkpoint, resnet18_backbone,
                           save_checkpoint, unwrap, z_std)


def randn(*shape: int, seed: int = 0) -> torch.Tensor:
    return torch.randn(*shape, generator=torch.Generator().manual_seed(seed))


# ---------------------------------------------------------------- the loss D(p, z)

def test_D_of_z_with_itself_is_minus_one():
    """D(z, z) == -1."""
    z = randn(16, 2048)
    torch.testing.assert_close(D(z, z), torch.tensor(-1.0))


def test_D_is_the_batch_mean_of_per_sample_negative_cosines():
    """D(p, z) == -mean over the batch of p_i . z_i / (|p_i| |z_i|)."""
    p, z = randn(8, 64, seed=1).double(), randn(8, 64, seed=2).double()
    expected = -((p * z).sum(1) / (p.norm(dim=1) * z.norm(dim=1))).mean()
    torch.testing.assert_close(D(p, z).double(), expected, atol=1e-6, rtol=0)


def test_D_lies_in_minus_one_one():
    """D(p, z) is in [-1, 1], reaching +1 for p = -z."""
    values = torch.stack([D(randn(8, 64, seed=s), randn(8, 64, seed=s + 100)) for s in range(20)])
    assert ((values >= -1) & (values <= 1)).all()
    z = randn(8, 64)
    torch.testing.assert_close(D(-z, z), torch.tensor(1.0))


def test_D_stops_the_gradient_to_z():
    """D(p, z).backward() gives a gradient to p and none to z (the stop-gradient, paper eq. 3)."""
    p = randn(8, 64, seed=1).requires_grad_()
    z = randn(8, 64, seed=2).requires_grad_()
    D(p, z).backward()
    assert z.grad is None or not z.grad.any()
    assert p.grad is not None and p.grad.abs().sum() > 0


# ---------------------------------------------------------------- SimSiam on a tiny batch

@pytest.fixture(scope="module")
def trained_once():
    """A SimSiam after one forward and backward of the symmetric loss on 4 images of 3 x 32 x 32."""
    torch.manual_seed(0)
    network = SimSiam()
    x1, x2 = randn(4, 3, 32, 32, seed=3), randn(4, 3, 32, 32, seed=4)
    p1, p2, z1, z2 = network(x1, x2)
    loss = D(p1, z2) / 2 + D(p2, z1) / 2
    loss.backward()
    return network, loss.detach(), (p1, p2, z1, z2)


def test_forward_gives_projection_dim_outputs(trained_once):
    """SimSiam(x1, x2) returns p1, p2, z1, z2, each (B, 2048)."""
    _, _, outputs = trained_once
    assert [tuple(t.shape) for t in outputs] == [(4, model.PROJECTION_DIM)] * 4


def test_symmetric_loss_is_finite_and_in_range(trained_once):
    """D(p1, z2) / 2 + D(p2, z1) / 2 on a tiny batch is finite and in [-1, 1]."""
    _, loss, _ = trained_once
    assert torch.isfinite(loss) and -1 <= loss.item() <= 1


@pytest.mark.parametrize("part", ["backbone", "projector", "predictor"])
def test_symmetric_loss_reaches_every_parameter(trained_once, part):
    """Backward through the symmetric loss gives every parameter of backbone, projector and predictor a
    gradient, not all zero."""
    network, _, _ = trained_once
    parameters = list(getattr(network, part).parameters())
    assert parameters and all(p.grad is not None for p in parameters)
    assert sum(p.grad.abs().sum() for p in parameters) > 0


# ---------------------------------------------------------------- architecture (paper §4)

def layer_types(sequential: nn.Sequential) -> list[type]:
    return [type(layer) for layer in sequential]


def test_simsiam_has_exactly_backbone_projector_predictor():
    """SimSiam's children are exactly backbone, projector and predictor."""
    assert [name for name, _ in SimSiam().named_children()] == ["backbone", "projector", "predictor"]


def test_projector_is_three_linear_bn_layers_with_plain_output_bn():
    """The projector is 3 x (Linear -> BatchNorm1d), ReLU after the first two, output BN without affine,
    512 -> 2048 -> 2048 -> 2048."""
    projector = model.projection_mlp()
    assert layer_types(projector) == [nn.Linear, nn.BatchNorm1d, nn.ReLU] * 2 + [nn.Linear, nn.BatchNorm1d]
    linears = [layer for layer in projector if isinstance(layer, nn.Linear)]
    norms = [layer for layer in projector if isinstance(layer, nn.BatchNorm1d)]
    assert [(l.in_features, l.out_features) for l in linears] == [(512, 2048), (2048, 2048), (2048, 2048)]
    assert [n.num_features for n in norms] == [2048] * 3
    assert [n.affine for n in norms] == [True, True, False]


def test_predictor_is_a_bottleneck_without_output_bn():
    """The predictor is Linear(2048, 512) -> BatchNorm1d(512) -> ReLU -> Linear(512, 2048), no BN at its output."""
    predictor = model.prediction_mlp()
    assert layer_types(predictor) == [nn.Linear, nn.BatchNorm1d, nn.ReLU, nn.Linear]
    assert (predictor[0].in_features, predictor[0].out_features) == (2048, 512)
    assert predictor[1].num_features == 512
    assert (predictor[3].in_features, predictor[3].out_features) == (512, 2048)


@pytest.mark.parametrize("num_classes", [2, 3])
def test_classifier_head_output_shape(num_classes):
    """Classifier(num_classes).head maps (B, 512) features to (B, num_classes) logits."""
    assert Classifier(num_classes).head(randn(4, model.FEATURE_DIM)).shape == (4, num_classes)


# ---------------------------------------------------------------- collapse metric

def test_z_std_of_gaussian_outputs_is_one_over_sqrt_d():
    """z_std of Gaussian z (batch 512, d = 2048) is 1 / sqrt(d) within 5%."""
    assert z_std(randn(512, 2048)).item() == pytest.approx(2048 ** -0.5, rel=0.05)


def test_z_std_of_collapsed_outputs_is_zero():
    """z_std of z whose rows are all equal is ~0."""
    assert z_std(randn(1, 2048).expand(512, -1)).item() < 1e-6


# ---------------------------------------------------------------- checkpoints

@pytest.fixture(scope="module")
def small_simsiam() -> SimSiam:
    """The SimSiam that train.py saves: load_checkpoint refuses weights of any other shape."""
    torch.manual_seed(1)
    return SimSiam()


class DataParallelLike(nn.Module):
    """Holds the model as `.module`, as DistributedDataParallel does."""

    def __init__(self, module: nn.Module):
        super().__init__()
        self.module = module


def test_checkpoint_loads_with_plain_weights_only_torch_load(tmp_path, small_simsiam):
    """A saved checkpoint opens with plain torch.load(weights_only=True) and holds the format, kind, arch,
    model and extra entries."""
    save_checkpoint(tmp_path / "siam.pt", "simsiam", small_simsiam, epoch=3, args={"lr": 0.05, "name": "x"})
    state = torch.load(tmp_path / "siam.pt", weights_only=True)
    assert (state["format"], state["version"], state["kind"], state["arch"]) == (
        model.CHECKPOINT_FORMAT, model.CHECKPOINT_VERSION, "simsiam", model.ARCH)
    assert state["epoch"] == 3 and state["args"] == {"lr": 0.05, "name": "x"}


def test_checkpoint_round_trips_the_state_dict(tmp_path, small_simsiam):
    """load_checkpoint(save_checkpoint(model))['model'] has the model's keys and equal tensors."""
    save_checkpoint(tmp_path / "siam.pt", "simsiam", small_simsiam)
    loaded = load_checkpoint(tmp_path / "siam.pt", kind="simsiam")["model"]
    expected = small_simsiam.state_dict()
    assert list(loaded) == list(expected)
    assert all(torch.equal(loaded[key], expected[key]) for key in expected)


@pytest.mark.parametrize("wrap", ["module", "compiled", "module around compiled"])
def test_checkpoint_of_wrapped_model_has_unprefixed_keys(tmp_path, wrap):
    """A DDP-like (.module) or torch.compile (_orig_mod) wrapper is unwrapped: the saved keys are the plain
    model's, without 'module.' or '_orig_mod.' prefixes."""
    plain = nn.Sequential(nn.Linear(3, 4), nn.BatchNorm1d(4))
    wrapped = {"module": lambda: DataParallelLike(plain),
               "compiled": lambda: torch.compile(plain),
               "module around compiled": lambda: DataParallelLike(torch.compile(plain))}[wrap]()
    assert unwrap(wrapped) is plain
    save_checkpoint(tmp_path / "c.pt", "simsiam", wrapped)
    assert list(torch.load(tmp_path / "c.pt", weights_only=True)["model"]) == list(plain.state_dict())


def test_backbone_state_loads_strictly_into_resnet18_backbone(tmp_path, small_simsiam):
    """backbone_state of a saved SimSiam checkpoint loads strictly into resnet18_backbone() with equal tensors."""
    save_checkpoint(tmp_path / "siam.pt", "simsiam", small_simsiam)
    backbone = resnet18_backbone()
    backbone.load_state_dict(backbone_state(load_checkpoint(tmp_path / "siam.pt", kind="simsiam")), strict=True)
    expected = small_simsiam.backbone.state_dict()
    assert all(torch.equal(value, expected[key]) for key, value in backbone.state_dict().items())


def test_wrong_kind_is_refused_naming_both_kinds(tmp_path):
    """Loading a 'simsiam' checkpoint as 'classifier' raises CheckpointError naming both kinds."""
    save_checkpoint(tmp_path / "siam.pt", "simsiam", nn.Linear(2, 2))
    with pytest.raises(CheckpointError) as error:
        load_checkpoint(tmp_path / "siam.pt", kind="classifier")
    assert "simsiam" in str(error.value) and "classifier" in str(error.value)


def test_wrong_arch_is_refused(tmp_path):
    """A checkpoint of another architecture raises CheckpointError naming it."""
    save_checkpoint(tmp_path / "c.pt", "simsiam", nn.Linear(2, 2))
    state = torch.load(tmp_path / "c.pt", weights_only=True)
    torch.save({**state, "arch": "resnet50"}, tmp_path / "c.pt")
    with pytest.raises(CheckpointError, match="resnet50"):
        load_checkpoint(tmp_path / "c.pt", kind="simsiam")


def test_other_format_version_is_refused(tmp_path):
    """A checkpoint written in another format version raises CheckpointError naming both versions."""
    save_checkpoint(tmp_path / "c.pt", "simsiam", nn.Linear(2, 2))
    state = torch.load(tmp_path / "c.pt", weights_only=True)
    torch.save({**state, "version": model.CHECKPOINT_VERSION + 1}, tmp_path / "c.pt")
    with pytest.raises(CheckpointError, match=f"version {model.CHECKPOINT_VERSION + 1}.*version "
                                              f"{model.CHECKPOINT_VERSION}"):
        load_checkpoint(tmp_path / "c.pt", kind="simsiam")


@pytest.mark.parametrize("needs", [("split",), ("optimizer", "rng")])
def test_missing_entry_is_named(tmp_path, needs):
    """A checkpoint without an entry the caller needs raises CheckpointError naming the entry, not KeyError."""
    save_checkpoint(tmp_path / "c.pt", "simsiam", nn.Linear(2, 2), epoch=1)
    with pytest.raises(CheckpointError, match=repr(needs[0])):
        load_checkpoint(tmp_path / "c.pt", kind="simsiam", needs=needs)


@pytest.mark.parametrize("content", [
    {"a": 1},
    torch.zeros(3),
    [1, 2, 3],
    pytest.param({0: torch.zeros(1), "step": 1}, id="dict-with-mixed-key-types"),
])
def test_foreign_pytorch_file_is_refused(tmp_path, content):
    """A PyTorch file that is not one of our checkpoints raises CheckpointError."""
    torch.save(content, tmp_path / "other.pt")
    with pytest.raises(CheckpointError, match="not a"):
        load_checkpoint(tmp_path / "other.pt", kind="simsiam")


@pytest.mark.parametrize("content", [b"", b"a checkpoint, honestly\n", bytes(range(256)) * 4, "truncated"])
def test_non_pytorch_file_is_refused(tmp_path, small_simsiam, content):
    """An empty, text, binary or truncated (half of a real checkpoint) file raises CheckpointError."""
    if content == "truncated":
        save_checkpoint(tmp_path / "full.pt", "simsiam", small_simsiam)
        whole = (tmp_path / "full.pt").read_bytes()
        content = whole[: len(whole) // 2]
    (tmp_path / "bad.pt").write_bytes(content)
    with pytest.raises(CheckpointError):
        load_checkpoint(tmp_path / "bad.pt", kind="simsiam")


class WritesMarkerWhenUnpickled:
    """Unpickling this object creates the file `marker`: code a checkpoint must never run."""

    def __init__(self, marker: Path):
        self.marker = marker

    def __reduce__(self):
        return open, (str(self.marker), "w")


@pytest.mark.parametrize("writer", ["torch.save", "pickle.dump"])
def test_code_running_pickle_is_refused_without_running(tmp_path, writer):
    """A file whose unpickling would run code (here: create a marker file) raises CheckpointError and the code
    does not run."""
    marker = tmp_path / "marker"
    payload = {"format": model.CHECKPOINT_FORMAT, "kind": "simsiam", "x": WritesMarkerWhenUnpickled(marker)}
    with open(tmp_path / "evil.pt", "wb") as file:
        torch.save(payload, file) if writer == "torch.save" else pickle.dump(payload, file, protocol=2)
    assert not marker.exists()
    with pytest.raises(CheckpointError, match="refused"):
        load_checkpoint(tmp_path / "evil.pt", kind="simsiam")
    assert not marker.exists()


@pytest.mark.parametrize("name, message", [("missing.pt", "no such"), (".", "is a folder, not a checkpoint file")])
def test_missing_file_is_refused(tmp_path, name, message):
    """A path that is not a file (missing, or a folder) raises CheckpointError."""
    with pytest.raises(CheckpointError, match=message):
        load_checkpoint(tmp_path / name, kind="simsiam")


def test_save_leaves_no_temporary_files(tmp_path):
    """After saving twice to the same path, the folder holds only the checkpoint."""
    for _ in range(2):
        save_checkpoint(tmp_path / "last.pt", "simsiam", nn.Linear(2, 2))
    assert os.listdir(tmp_path) == ["last.pt"]


def test_failed_save_keeps_previous_checkpoint(tmp_path):
    """A save that fails while writing leaves the previous checkpoint intact and no temporary file."""
    previous = nn.Linear(2, 2)
    save_checkpoint(tmp_path / "last.pt", "simsiam", previous)
    with pytest.raises(Exception):
        save_checkpoint(tmp_path / "last.pt", "simsiam", nn.Linear(2, 2), unpicklable=lambda: None)
    assert os.listdir(tmp_path) == ["last.pt"]
    loaded = torch.load(tmp_path / "last.pt", weights_only=True)["model"]
    assert torch.equal(loaded["weight"], previous.weight.detach())


def test_checkpoint_has_ordinary_file_permissions(tmp_path):
    """A checkpoint gets the permissions of any new file in its folder (0o666 masked by the umask)."""
    save_checkpoint(tmp_path / "c.pt", "simsiam", nn.Linear(2, 2))
    (tmp_path / "ordinary").write_bytes(b"")
    assert (tmp_path / "c.pt").stat().st_mode & 0o777 == (tmp_path / "ordinary").stat().st_mode & 0o777


def test_simsiam_encoder_starts_with_identity_residual_blocks():
    """SimSiam's backbone zero-initialises the last BN scale of every residual block (official code);
    the classifier's random baseline keeps torchvision's default initialisation."""
    simsiam_blocks = [m.bn2 for m in SimSiam().backbone.modules() if hasattr(m, "bn2")]
    random_blocks = [m.bn2 for m in Classifier(2).backbone.modules() if hasattr(m, "bn2")]
    assert len(simsiam_blocks) == 8 and all(torch.count_nonzero(bn.weight) == 0 for bn in simsiam_blocks)
    assert all(torch.all(bn.weight == 1) for bn in random_blocks)


def test_simsiam_can_start_from_the_random_baselines_initialisation():
    """train.py --no-zero-init-residual: SimSiam's backbone initialised as the random-init baseline's (residual
    blocks not the identity), so that pretraining starts where the baseline stands."""
    blocks = [m.bn2 for m in SimSiam(zero_init_residual=False).backbone.modules() if hasattr(m, "bn2")]
    assert len(blocks) == 8 and all(torch.all(bn.weight == 1) for bn in blocks)
