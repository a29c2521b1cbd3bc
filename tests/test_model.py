"""Tests for model.py: the loss D and its stop-gradient, the symmetric SimSiam loss, the architecture (paper §4) and
its initialisation, the collapse metric, the lr schedule, the optimizer's groups and the training step, and the
checkpoint format (round trip with weights_only=True, unwrapped keys, the backbone export, one-line refusals of
damaged, foreign or unsafe files, atomic writes on a full disk)."""
from __future__ import annotations

import errno
import math
import os
import pickle
from pathlib import Path

import pytest
import torch
from torch import nn
from torchvision.models import resnet18

import model
from model import (Classifier, D, SimSiam, UserError, backbone_state, export_backbone, load_checkpoint,
                   save_checkpoint, unwrap, z_std)


def randn(*shape: int, seed: int = 0) -> torch.Tensor:
    return torch.randn(*shape, generator=torch.Generator().manual_seed(seed))


@pytest.fixture
def simsiam(small_heads) -> SimSiam:
    """A SimSiam with 64-d heads (load_checkpoint expects those while small_heads holds)."""
    torch.manual_seed(1)
    return SimSiam()


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


# ---------------------------------------------------------------- SimSiam at its real sizes, on a tiny batch


@pytest.fixture(scope="module")
def trained_once():
    """A full-size SimSiam after one forward and backward of the symmetric loss on 4 images of 3 x 32 x 32."""
    torch.manual_seed(0)
    network = SimSiam()
    p1, p2, z1, z2 = network(randn(4, 3, 32, 32, seed=3), randn(4, 3, 32, 32, seed=4))
    loss = D(p1, z2) / 2 + D(p2, z1) / 2
    loss.backward()
    return network, loss.detach(), (p1, p2, z1, z2)


def test_forward_gives_projection_dim_outputs(trained_once):
    """SimSiam(x1, x2) returns p1, p2, z1, z2, each (B, 2048)."""
    _, _, outputs = trained_once
    assert [tuple(t.shape) for t in outputs] == [(4, 2048)] * 4


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


def layer_types(sequential: nn.Sequential) -> list[type]:
    return [type(layer) for layer in sequential]


def test_simsiam_has_exactly_backbone_projector_predictor(trained_once):
    """SimSiam's children are exactly backbone, projector and predictor."""
    network, _, _ = trained_once
    assert [name for name, _ in network.named_children()] == ["backbone", "projector", "predictor"]


def test_projector_is_three_linear_bn_layers_with_plain_output_bn(trained_once):
    """The projector is 3 x (Linear -> BatchNorm1d), ReLU after the first two, output BN without affine,
    512 -> 2048 -> 2048 -> 2048 (paper §4)."""
    projector = trained_once[0].projector
    assert layer_types(projector) == [nn.Linear, nn.BatchNorm1d, nn.ReLU] * 2 + [nn.Linear, nn.BatchNorm1d]
    linears = [layer for layer in projector if isinstance(layer, nn.Linear)]
    norms = [layer for layer in projector if isinstance(layer, nn.BatchNorm1d)]
    assert [(lin.in_features, lin.out_features) for lin in linears] == [(512, 2048), (2048, 2048), (2048, 2048)]
    assert [n.num_features for n in norms] == [2048] * 3 and [n.affine for n in norms] == [True, True, False]


def test_predictor_is_a_bottleneck_without_output_bn(trained_once):
    """The predictor is Linear(2048, 512) -> BatchNorm1d(512) -> ReLU -> Linear(512, 2048), no BN at its output
    (paper §4)."""
    predictor = trained_once[0].predictor
    assert layer_types(predictor) == [nn.Linear, nn.BatchNorm1d, nn.ReLU, nn.Linear]
    assert (predictor[0].in_features, predictor[0].out_features) == (2048, 512)
    assert predictor[1].num_features == 512
    assert (predictor[3].in_features, predictor[3].out_features) == (512, 2048)


@pytest.mark.parametrize("num_classes", [2, 3])
def test_classifier_maps_images_to_logits(num_classes):
    """Classifier(num_classes) maps (B, 3, H, W) images to (B, num_classes) logits through a BN without affine and
    a Linear on the 512 features."""
    classifier = Classifier(num_classes)
    assert layer_types(classifier.head) == [nn.BatchNorm1d, nn.Linear] and not classifier.head[0].affine
    assert classifier(randn(4, 3, 32, 32)).shape == (4, num_classes)


@pytest.mark.parametrize("build, zero_init", [
    (lambda: SimSiam(), True),
    (lambda: SimSiam(zero_init_residual=False), False),
    (lambda: Classifier(2), False),
], ids=["SimSiam", "SimSiam-no-zero-init", "Classifier"])
def test_backbone_starts_from_torchvisions_initialisation(small_heads, build, zero_init):
    """From the same seed, the backbone's weights equal torchvision's resnet18(zero_init_residual) but fc:
    SimSiam() zero-initialises the last BN scale of the 8 residual blocks (each starts as the identity, as the
    official code's encoder); SimSiam(zero_init_residual=False) (train.py --no-zero-init-residual) and the
    classifier's random baseline keep torchvision's default."""
    torch.manual_seed(0)
    theirs = resnet18(zero_init_residual=zero_init).state_dict()
    torch.manual_seed(0)
    ours = build().backbone.state_dict()
    assert list(ours) == [key for key in theirs if not key.startswith("fc.")]
    assert all(torch.equal(value, theirs[key]) for key, value in ours.items())
    scales = [value for key, value in ours.items() if key.endswith("bn2.weight")]
    assert len(scales) == 8 and all(bool((scale == 0).all()) == zero_init for scale in scales)


# ---------------------------------------------------------------- collapse metric


def test_z_std_of_gaussian_outputs_is_one_over_sqrt_d():
    """z_std of Gaussian z (batch 512, d = 2048) is 1 / sqrt(d) within 5%."""
    assert z_std(randn(512, 2048)).item() == pytest.approx(2048 ** -0.5, rel=0.05)


def test_z_std_of_collapsed_outputs_is_zero():
    """z_std of z whose rows are all equal is ~0."""
    assert z_std(randn(1, 2048).expand(512, -1)).item() < 1e-6


# ---------------------------------------------------------------- the lr schedule, the optimizer, the step


def test_peak_lr_is_the_linear_scaling_rule():
    """peak_lr = base_lr x batch_size / 256."""
    assert model.peak_lr(0.05, 256) == pytest.approx(0.05) and model.peak_lr(0.05, 512) == pytest.approx(0.1)


def test_optimizer_has_an_encoder_and_a_fixed_predictor_group(simsiam):
    """make_optimizer gives two SGD groups, "encoder" (every parameter outside the predictor) and "predictor" (fixed),
    at the peak lr with the momentum and weight decay asked for: no parameter in both, none missing."""
    optimizer = model.make_optimizer(simsiam, lr=0.1, momentum=0.9, weight_decay=1e-4)
    encoder, predictor = optimizer.param_groups
    assert (encoder["name"], predictor["name"]) == ("encoder", "predictor")
    assert [id(p) for p in predictor["params"]] == [id(p) for p in simsiam.predictor.parameters()]
    assert sorted(map(id, encoder["params"] + predictor["params"])) == sorted(map(id, simsiam.parameters()))
    assert predictor.get("fixed") and not encoder.get("fixed")
    assert all((g["peak_lr"], g["momentum"], g["weight_decay"]) == (0.1, 0.9, 1e-4) for g in optimizer.param_groups)


@pytest.mark.parametrize("step, decay", [(0, 1.0), (25, 0.5 * (1 + math.cos(math.pi / 4))), (50, 0.5), (100, 0.0)])
def test_set_lr_decays_the_encoder_on_a_cosine_and_fixes_the_predictor(simsiam, step, decay):
    """set_lr(step, total_steps) sets the encoder's lr to peak x (1 + cos(pi step / total)) / 2 and keeps the
    predictor's at its peak (§4.3), returning {group name: lr}."""
    optimizer = model.make_optimizer(simsiam, lr=0.1, momentum=0.9, weight_decay=1e-4)
    lrs = model.set_lr(optimizer, step, 100)
    assert lrs == pytest.approx({"encoder": 0.1 * decay, "predictor": 0.1})
    assert [group["lr"] for group in optimizer.param_groups] == pytest.approx([0.1 * decay, 0.1])


class Runtime:
    """What train_step uses of runs.Runtime, on the CPU."""

    def __init__(self, precision: str):
        self.device, self.precision, self.memory_format = torch.device("cpu"), precision, torch.contiguous_format

    def autocast(self):
        return torch.autocast("cpu", dtype=torch.bfloat16, enabled=self.precision == "bf16")

    def backward_step(self, loss, optimizer):
        loss.backward()
        optimizer.step()


@pytest.mark.parametrize("precision", ["fp32", "bf16"])
def test_train_step_returns_detached_metrics_and_moves_every_part(simsiam, precision):
    """train_step on a 16 px uint8 batch of 4 returns finite detached 0-dim (loss, z-std) on the device, the loss in
    [-1, 1], and changes weights of the backbone, the projector and the predictor (fp32, and bf16 autocast)."""
    optimizer = model.make_optimizer(simsiam, lr=0.1, momentum=0.9, weight_decay=1e-4)
    before = {name: p.detach().clone() for name, p in simsiam.named_parameters()}
    images = torch.randint(0, 256, (4, 3, 16, 16), dtype=torch.uint8, generator=torch.Generator().manual_seed(0))
    loss, std = model.train_step(simsiam, optimizer, images, torch.Generator().manual_seed(1), 16, 224, 0, 10,
                                 Runtime(precision))
    for value in (loss, std):
        assert value.shape == () and not value.requires_grad and value.device.type == "cpu"
        assert torch.isfinite(value)
    assert -1 <= loss.item() <= 1 and 0 <= std.item() <= 1
    changed = {name.partition(".")[0] for name, p in simsiam.named_parameters() if not torch.equal(p, before[name])}
    assert changed == {"backbone", "projector", "predictor"}


def test_match_layout_gives_momentum_buffers_their_parameters_layout():
    """After a step on contiguous weights and a move to channels_last (a CPU last.pt resumed on CUDA), match_layout
    lays each momentum buffer out as its parameter, values unchanged."""
    conv = nn.Conv2d(3, 4, 3)
    optimizer = torch.optim.SGD(conv.parameters(), lr=0.1, momentum=0.9)
    conv(randn(2, 3, 5, 5)).sum().backward()
    optimizer.step()
    conv.to(memory_format=torch.channels_last)
    buffer = optimizer.state[conv.weight]["momentum_buffer"]
    assert buffer.stride() != conv.weight.stride()
    model.match_layout(optimizer)
    moved = optimizer.state[conv.weight]["momentum_buffer"]
    assert moved.stride() == conv.weight.stride() and torch.equal(moved, buffer)


@pytest.mark.parametrize("entry, value", [("weight", float("nan")), ("running_var", float("inf"))])
def test_finite_state_sees_any_non_finite_weight_or_statistic(entry, value):
    """finite_state is True for a fresh module and False once one weight or BatchNorm statistic is NaN or
    infinite (the check before every save)."""
    norm = nn.BatchNorm1d(3)
    assert model.finite_state(norm)
    with torch.no_grad():
        getattr(norm, entry)[1] = value
    assert not model.finite_state(norm)


# ---------------------------------------------------------------- checkpoints


class DataParallelLike(nn.Module):
    """Holds the model as `.module`, as DistributedDataParallel does."""

    def __init__(self, module: nn.Module):
        super().__init__()
        self.module = module


@pytest.mark.parametrize("kind", ["simsiam", "classifier"])
def test_checkpoint_round_trips_under_plain_weights_only_load(tmp_path, small_heads, kind):
    """A saved checkpoint opens with plain torch.load(weights_only=True), holding format, version, kind, the extra
    entries and the model's state dict, and load_checkpoint accepts it with the same weights."""
    network = SimSiam() if kind == "simsiam" else Classifier(3)
    extra = {"epoch": 3, "args": {"lr": 0.05, "name": "x"}, "classes": ["Cat", "Dog", "Fox"]}
    save_checkpoint(tmp_path / "c.pt", kind, network, **extra)
    state = torch.load(tmp_path / "c.pt", weights_only=True)
    assert {key: state[key] for key in ("format", "version", "kind", *extra)} == {
        "format": model.FORMAT, "version": model.VERSION, "kind": kind, **extra}
    expected = network.state_dict()
    for weights in (state["model"], load_checkpoint(tmp_path / "c.pt", kind)["model"]):
        assert list(weights) == list(expected) and all(torch.equal(weights[key], expected[key]) for key in expected)


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


@pytest.mark.parametrize("source", ["backbone_state", "export_backbone"])
def test_backbone_loads_into_torchvisions_resnet18(tmp_path, simsiam, source):
    """backbone_state of a saved checkpoint, and the backbone.pt that export_backbone writes from a wrapped model
    (read with weights_only=True), load into torchvision's resnet18 with strict=False missing only fc.*, with
    the SimSiam backbone's tensors."""
    if source == "backbone_state":
        save_checkpoint(tmp_path / "siam.pt", "simsiam", simsiam)
        state = backbone_state(load_checkpoint(tmp_path / "siam.pt", "simsiam"))
    else:
        export_backbone(DataParallelLike(simsiam), tmp_path / "backbone.pt")
        state = torch.load(tmp_path / "backbone.pt", weights_only=True)
    network = resnet18()
    result = network.load_state_dict(state, strict=False)
    assert sorted(result.missing_keys) == ["fc.bias", "fc.weight"] and result.unexpected_keys == []
    expected = simsiam.backbone.state_dict()
    assert all(torch.equal(value, network.state_dict()[key]) for key, value in expected.items())


def refusal(path: Path, kind: str = "simsiam", needs: tuple[str, ...] = ()) -> str:
    """load_checkpoint's UserError message for `path`, checked to be one line naming the file."""
    with pytest.raises(UserError) as error:
        load_checkpoint(path, kind, needs)
    message = str(error.value)
    assert str(path) in message and "\n" not in message, message
    return message


def edited(change):
    """A change to a saved checkpoint file: `change` applied to its dict, saved again."""
    def apply(path: Path) -> None:
        state = torch.load(path, weights_only=True)
        change(state)
        torch.save(state, path)
    return apply


def unchanged(path: Path) -> None:
    pass


DAMAGED = {  # id: (change to the saved simsiam checkpoint, kind asked for, needs, fragment of the message)
    "wrong kind": (unchanged, "classifier", (), "a 'simsiam' checkpoint, expected a 'classifier' one"),
    "other version": (edited(lambda s: s.update(version=model.VERSION + 1)), "simsiam", (),
                      f"version {model.VERSION + 1}, this code reads {model.VERSION}"),
    "other format": (edited(lambda s: s.update(format="other")), "simsiam", (), f"not a {model.FORMAT} checkpoint"),
    "no weights": (edited(lambda s: s.pop("model")), "simsiam", (), "without 'model'"),
    "needed entry missing": (unchanged, "simsiam", ("epoch", "split"), "without 'split'"),
    "siam.pt given to --resume": (unchanged, "simsiam", ("optimizer",), "--resume reads last.pt"),
    "classifier without classes": (edited(lambda s: s.update(kind="classifier")), "classifier", (),
                                   "its weights do not fit this code's model"),
    "missing weight": (edited(lambda s: s["model"].pop("projector.0.weight")), "simsiam", (), "projector.0.weight"),
    "unexpected weight": (edited(lambda s: s["model"].update({"extra.weight": torch.zeros(1)})), "simsiam", (),
                          "extra.weight"),
    "shape mismatch": (edited(lambda s: s["model"].update({"predictor.3.weight": torch.zeros(3, 3)})), "simsiam",
                       (), "size mismatch for predictor.3.weight"),
    "NaN weight": (edited(lambda s: s["model"]["predictor.3.bias"].fill_(float("nan"))), "simsiam", (),
                   "not finite"),
    "infinite BN statistic": (edited(lambda s: s["model"]["projector.1.running_var"].fill_(float("inf"))),
                              "simsiam", (), "not finite"),
    "truncated": (lambda path: path.write_bytes(path.read_bytes()[: path.stat().st_size // 2]), "simsiam", (),
                  "not a readable checkpoint"),
}


@pytest.mark.parametrize("case", DAMAGED)
def test_damaged_or_mismatched_checkpoint_is_refused(tmp_path, simsiam, case):
    """A checkpoint of the wrong kind, version or format, without an entry the caller needs, with weights of other
    names, shapes or non-finite values, or cut short, is refused with one UserError line naming the file and what
    is wrong."""
    change, kind, needs, fragment = DAMAGED[case]
    save_checkpoint(tmp_path / "siam.pt", "simsiam", simsiam, epoch=3)
    change(tmp_path / "siam.pt")
    assert fragment in refusal(tmp_path / "siam.pt", kind, needs)


NOT_OURS = {  # id: (what the file holds: bytes as written, anything else through torch.save; fragment)
    "dict": ({"a": 1}, f"not a {model.FORMAT} checkpoint"),
    "tensor": (torch.zeros(3), "not a dict of weights"),
    "list": ([1, 2, 3], "not a dict of weights"),
    "dict with mixed key types": ({0: torch.zeros(1), "step": 1}, f"not a {model.FORMAT} checkpoint"),
    "empty": (b"", "not a readable checkpoint"),
    "text": (b"a checkpoint, honestly\n", "not a readable checkpoint"),
    "binary": (bytes(range(256)) * 4, "not a readable checkpoint"),
}


@pytest.mark.parametrize("case", NOT_OURS)
def test_file_that_is_not_a_checkpoint_is_refused(tmp_path, case):
    """A PyTorch file that is not one of our checkpoints, or a file that is not a PyTorch file at all, is refused
    with one UserError line naming the file."""
    content, fragment = NOT_OURS[case]
    path = tmp_path / "other.pt"
    path.write_bytes(content) if isinstance(content, bytes) else torch.save(content, path)
    assert fragment in refusal(path)


@pytest.mark.parametrize("name, fragment", [("missing.pt", "no such checkpoint file"),
                                            ("run", "a folder: pass the .pt file in it")])
def test_path_that_is_not_a_file_is_refused(tmp_path, name, fragment):
    """A missing path, or a run folder given for its checkpoint, is refused with one UserError line naming it."""
    (tmp_path / "run").mkdir()
    assert fragment in refusal(tmp_path / name)


class WritesMarkerWhenUnpickled:
    """Unpickling this object creates the file `marker`: code a checkpoint must never run."""

    def __init__(self, marker: Path):
        self.marker = marker

    def __reduce__(self):
        return open, (str(self.marker), "w")


@pytest.mark.parametrize("writer", ["torch.save", "pickle.dump"])
def test_code_running_pickle_is_refused_without_running(tmp_path, writer):
    """A file whose unpickling would run code (here: create a marker file) is refused with one UserError line, and
    the code does not run."""
    marker = tmp_path / "marker"
    payload = {"format": model.FORMAT, "version": model.VERSION, "kind": "simsiam",
               "x": WritesMarkerWhenUnpickled(marker)}
    with open(tmp_path / "evil.pt", "wb") as file:
        torch.save(payload, file) if writer == "torch.save" else pickle.dump(payload, file, protocol=2)
    assert not marker.exists()
    refusal(tmp_path / "evil.pt")
    assert not marker.exists()


def test_save_leaves_no_temporary_files(tmp_path):
    """After saving twice to the same path, the folder holds only the checkpoint."""
    for _ in range(2):
        save_checkpoint(tmp_path / "last.pt", "simsiam", nn.Linear(2, 2))
    assert os.listdir(tmp_path) == ["last.pt"]


@pytest.mark.parametrize("error", [
    RuntimeError("[enforce fail at inline_container.cc:858] . PytorchStreamWriter failed writing file data/0: "
                 "file write failed, No space left on device"),
    OSError(errno.ENOSPC, "No space left on device"),
    ValueError("No space left on device (any other exception)"),
], ids=["RuntimeError", "OSError", "other"])
def test_save_on_a_full_disk_keeps_the_previous_file(tmp_path, monkeypatch, error):
    """A save that fails half-written for lack of space (torch.save raising RuntimeError or OSError) is one
    UserError line naming the file and the cause, and leaves the previous checkpoint intact and no temporary
    file."""
    path = tmp_path / "last.pt"
    save_checkpoint(path, "simsiam", nn.Linear(2, 2))
    previous = path.read_bytes()

    def full_disk(state, file):
        file.write(b"half a checkpoint")
        raise error

    monkeypatch.setattr(torch, "save", full_disk)
    with pytest.raises(UserError) as raised:
        save_checkpoint(path, "simsiam", nn.Linear(2, 2))
    message = str(raised.value)
    assert str(path) in message and "No space left on device" in message and "\n" not in message
    assert "previous file is kept" in message
    assert os.listdir(tmp_path) == ["last.pt"] and path.read_bytes() == previous


def test_save_into_a_folder_made_read_only_is_one_line_naming_what_is_left(tmp_path, monkeypatch):
    """The folder made read-only during a save (os.replace and the clean-up both refused): one UserError line, which
    names the temporary file that could not be deleted."""
    def refused(*args, **kwargs):
        raise PermissionError(errno.EACCES, "Permission denied")

    with monkeypatch.context() as patch, pytest.raises(UserError, match=r"last.pt \(Permission denied\): .*make it "
                                                       r"writable.*nothing was written; delete .*/\.last\.pt\..*\.tmp, "
                                                       r"left where it could not be$"):
        patch.setattr(os, "replace", refused)
        patch.setattr(os, "unlink", refused)
        save_checkpoint(tmp_path / "last.pt", "simsiam", nn.Linear(2, 2))


@pytest.mark.parametrize("umask", [0o022, 0o002, 0o077], ids=["umask-022", "umask-002", "umask-077"])
def test_checkpoint_has_ordinary_file_permissions(tmp_path, umask):
    """A checkpoint gets the permissions of any new file in its folder (0o666 masked by the umask): readable by
    the group where the user shares files, private where the user keeps files private."""
    previous = os.umask(umask)
    try:
        save_checkpoint(tmp_path / "c.pt", "simsiam", nn.Linear(2, 2))
        (tmp_path / "ordinary").write_bytes(b"")
    finally:
        os.umask(previous)
    assert oct((tmp_path / "c.pt").stat().st_mode & 0o777) == oct((tmp_path / "ordinary").stat().st_mode & 0o777)
