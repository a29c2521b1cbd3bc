"""evaluate.py: features of the evaluation view, the neighbour search and kNN vote, the paired comparisons (by hand),
the closed-form probe (against scikit-learn), and a SimSiam checkpoint read for evaluation."""
from __future__ import annotations

import argparse
import hashlib
import math
import socket
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F
import torchvision
from torch import nn

import augment
import evaluate
import model
import runs
from emulated_cuda import emulated_cuda
from model import UserError

# ---------------------------------------------------------------- features and neighbours


def tiny_backbone() -> nn.Module:
    """(B, 3, H, W) -> (B, 8), with BatchNorm: its eval mode differs from its train mode."""
    torch.manual_seed(0)
    return nn.Sequential(nn.Conv2d(3, 8, 3), nn.BatchNorm2d(8), nn.AdaptiveAvgPool2d(1), nn.Flatten())


def test_embed_is_the_eval_mode_backbone_on_the_centre_view():
    """Features in batches of 3 are the backbone's in eval mode (BatchNorm's running statistics) on
    augment.center_view, float32 (also under bf16 autocast, channels_last), the backbone left in train mode."""
    backbone = tiny_backbone()
    backbone[1].running_mean.fill_(0.3)  # so that train mode would give other features
    images = torch.randint(0, 256, (10, 3, 20, 20), dtype=torch.uint8)
    indices = torch.tensor([7, 1, 4, 4, 0, 9, 2])
    features = evaluate.embed(backbone, images, indices, 16, runs.make_runtime("cpu"), batch_size=3)
    assert backbone.training and features.dtype == torch.float32 and features.shape == (7, 8)
    with torch.no_grad():
        expected = backbone.eval()(augment.center_view(images[indices], 16))
    torch.testing.assert_close(features, expected)
    bf16 = evaluate.embed(backbone.train(), images, indices, 16, runs.make_runtime("cpu", "bf16"), batch_size=3)
    assert bf16.dtype == torch.float32 and backbone.training
    torch.testing.assert_close(bf16, expected, atol=0.05, rtol=0.05)


def test_nearest_finds_the_noisy_copies():
    """Queries are scaled noisy copies of bank rows (one-hot in 16-D): each query's first neighbour is its source."""
    generator = torch.Generator().manual_seed(0)
    bank = torch.eye(16)[torch.randperm(16, generator=generator)]  # (16, 16)
    source = torch.randperm(16, generator=generator)[:10]  # (10,) the row each query copies
    queries = 3.0 * bank[source] + 0.1 * torch.randn(10, 16, generator=generator)  # scaled: cosine ignores it
    similarities, indices = evaluate.nearest(queries, bank, k=3)
    assert indices.shape == similarities.shape == (10, 3)
    assert torch.equal(indices[:, 0], source) and (similarities[:, 0] > 0.95).all()


def test_nearest_orders_by_similarity_and_reports_it():
    """Each row of similarities is non-increasing, is the cosine similarity of the query with the returned rows, and
    no other bank row is more similar than the k-th returned."""
    generator = torch.Generator().manual_seed(1)
    queries, bank = torch.randn(7, 32, generator=generator), torch.randn(50, 32, generator=generator)
    similarities, indices = evaluate.nearest(queries, bank, k=5)
    assert (similarities[:, :-1] >= similarities[:, 1:]).all()
    cosine = F.cosine_similarity(queries[:, None], bank[None], dim=2)  # (7, 50)
    torch.testing.assert_close(similarities, cosine.gather(1, indices))
    assert (cosine.scatter(1, indices, -math.inf).max(dim=1).values <= similarities[:, -1]).all()


def test_nearest_returns_tied_rows_together_and_k_above_the_bank_returns_it_all():
    """Two identical bank rows come first together with one similarity; k above the bank size gives every row once."""
    bank = torch.tensor([[1.0, 0.0, 0.0], [0.0, 1.0, 0.0], [0.0, 1.0, 0.0], [0.0, 0.0, 1.0]])
    similarities, indices = evaluate.nearest(torch.tensor([[0.2, 1.0, 0.1]]), bank, k=10)
    assert set(indices[0, :2].tolist()) == {1, 2} and indices[0, 2] == 0 and sorted(indices[0].tolist()) == [0, 1, 2, 3]
    assert similarities[0, 0] == similarities[0, 1] > similarities[0, 2]


def test_knn_accuracy_classifies_separated_clusters():
    """1 on three clusters around orthogonal directions, 0 when every query carries another cluster's label."""
    generator = torch.Generator().manual_seed(3)
    centres = 5 * torch.eye(3, 16)  # (3, 16)
    bank_labels, query_labels = torch.arange(60) % 3, torch.arange(30) % 3
    bank = centres[bank_labels] + 0.3 * torch.randn(60, 16, generator=generator)
    queries = centres[query_labels] + 0.3 * torch.randn(30, 16, generator=generator)
    assert evaluate.knn_accuracy(bank, bank_labels, queries, query_labels, num_classes=3, k=5) == 1
    assert evaluate.knn_accuracy(bank, bank_labels, queries, (query_labels + 1) % 3, num_classes=3, k=5) == 0


def test_knn_votes_are_weighted_by_similarity():
    """One very similar neighbour of class 1 outvotes two far ones of class 0: the votes are exp(similarity / 0.1)."""
    bank = torch.tensor([[1.0, 0.0], [0.0, 1.0], [0.0, 1.0]])
    assert evaluate.knn_accuracy(bank, torch.tensor([1, 0, 0]), torch.tensor([[1.0, 0.2]]), torch.tensor([1]), 2, k=3)


def test_evaluation_on_a_cuda_device_gives_the_cpu_results():
    """embed from a host cache onto (emulated) cuda:0, the kNN vote and the probe there: the CPU's results."""
    backbone = tiny_backbone()
    images, labels = torch.randint(0, 256, (24, 3, 20, 20), dtype=torch.uint8), torch.arange(24) % 2
    train, test = torch.arange(16), torch.arange(16, 24)

    def evaluation(device: str) -> tuple:
        runtime = runs.make_runtime(device, "fp32")
        backbone.to(runtime.device)
        bank, queries = (evaluate.embed(backbone, images, rows, 16, runtime) for rows in (train, test))
        assert bank.device == runtime.device
        knn = evaluate.knn_accuracy(bank, labels[train], queries, labels[test], 2, k=5).item()
        probe = evaluate.logistic_probe(bank, labels[train], queries, labels[test], 2, folds=2, penalties=(1e-2, 1.0))
        return bank.cpu(), knn, probe["penalty"], probe["test_accuracy"]

    cpu = evaluation("cpu")
    with emulated_cuda():
        cuda = evaluation("cuda")
    torch.testing.assert_close(cuda[0], cpu[0])
    assert cuda[1:] == pytest.approx(cpu[1:])


# ---------------------------------------------------------------- paired comparisons


def test_paired_difference_by_hand():
    """10 images only a got right, 2 only b, 8 both: difference 0.4, the sample std of the per-image differences over
    sqrt(20), McNemar's exact p = 2 P(X <= 2), X ~ Bin(12, 1/2)."""
    a, b = [True] * 10 + [False] * 2 + [True] * 8, [False] * 10 + [True] * 2 + [True] * 8
    result = evaluate.paired_difference(a, b)
    differences = torch.tensor([1.0] * 10 + [-1.0] * 2 + [0.0] * 8, dtype=torch.float64)
    assert result["difference"] == pytest.approx(0.4) and (result["only_a"], result["only_b"]) == (10, 2)
    assert result["standard_error"] == pytest.approx((differences.std() / math.sqrt(20)).item())
    assert result["mcnemar_p"] == pytest.approx(2 * (1 + 12 + 66) / 4096)
    assert result["low"] < 0.4 < result["high"] and result["num_test"] == 20
    same = evaluate.paired_difference([True, False, True], [True, False, True])
    assert same["difference"] == 0 and same["standard_error"] == 0 and same["mcnemar_p"] == 1


def test_pairing_gives_a_smaller_error_than_two_independent_accuracies():
    """Two classifiers that agree on most images: the paired standard error is well below the error of the
    difference of two independent accuracies."""
    b = torch.rand(2000, generator=torch.Generator().manual_seed(0)) < 0.6
    a = b.clone()
    a[:200] = True  # a also gets some of b's mistakes right
    result = evaluate.paired_difference(a.tolist(), b.tolist())
    independent = math.hypot(evaluate.standard_error(result["accuracy_a"], 2000),
                             evaluate.standard_error(result["accuracy_b"], 2000))
    assert result["standard_error"] < 0.5 * independent


def test_paired_difference_over_draws_by_hand():
    """Two label draws of 3 test images: each image averaged over the draws first (a: 1, 1/2, 1/2; b: 1/2, 0, 1/2),
    then paired over the images: 1/3, the sample std of (1/2, 1/2, 0) over sqrt(3)."""
    result = evaluate.paired_difference_over_draws([[1, 0, 1], [1, 1, 0]], [[0, 0, 1], [1, 0, 0]])
    assert result["difference"] == pytest.approx(1 / 3) and result["draws"] == 2 and result["num_test"] == 3
    assert result["standard_error"] == pytest.approx(math.sqrt(1 / 12) / math.sqrt(3))
    assert (result["accuracy_a"], result["accuracy_b"]) == pytest.approx((2 / 3, 1 / 3))


def test_repeating_a_label_draw_does_not_shrink_the_standard_error():
    """Three copies of one draw give that draw's own difference and standard error, not one sqrt(3) times smaller."""
    generator = torch.Generator().manual_seed(0)
    a, b = (torch.rand(500, generator=generator) < 0.6).tolist(), (torch.rand(500, generator=generator) < 0.5).tolist()
    once, thrice = evaluate.paired_difference(a, b), evaluate.paired_difference_over_draws([a] * 3, [b] * 3)
    assert (thrice["difference"], thrice["standard_error"]) == pytest.approx((once["difference"],
                                                                               once["standard_error"]))


def test_predictions_are_compared_on_the_test_images_both_runs_tested():
    """compare_predictions pairs two predictions.json records under a key both hold, on the images (name and label,
    in any order) both tested from one folder; None without a shared image, the key, or for two folders.
    describe_difference says it in points."""
    a = {"files": ["x", "y", "z"], "labels": [0, 1, 1], "head": [0, 1, 1], "closed_form": [0, 0, 1], "root": "/p"}
    b = {**a, "head": [1, 1, 0]}
    difference = evaluate.compare_predictions(a, b, "head")
    assert difference["difference"] == pytest.approx(2 / 3) and difference["only_a"] == 2
    assert evaluate.describe_difference(difference).startswith("+66.7 ± 33.3 points (paired s.e.; 95% ")
    fewer = {"files": ["w", "z", "x"], "labels": [1, 1, 0], "head": [1, 0, 1], "root": "/p"}  # shares z and x
    shared = evaluate.compare_predictions(a, fewer, "head")
    assert (shared["num_test"], shared["only_a"], shared["only_b"]) == (2, 2, 0)
    assert evaluate.compare_predictions(a, {**b, "files": ["u", "v", "w"]}, "head") is None
    assert evaluate.compare_predictions(a, {**b, "root": "/other"}, "head") is None
    assert evaluate.compare_predictions(a, {k: v for k, v in b.items() if k != "closed_form"}, "closed_form") is None


# ---------------------------------------------------------------- the closed-form probe


def gaussian_problem(num_train: int, num_test: int, dims: int, num_classes: int, separation: float, seed: int = 0):
    """(train features, labels, test features, labels): unit Gaussians around one random mean per class, the means
    about `separation` apart, balanced classes."""
    generator = torch.Generator().manual_seed(seed)
    means = torch.randn(num_classes, dims, generator=generator) * separation / (2 * dims) ** 0.5  # (K, D)

    def draw(n: int) -> tuple[torch.Tensor, torch.Tensor]:
        labels = torch.arange(n) % num_classes
        return torch.randn(n, dims, generator=generator) + means[labels], labels

    return (*draw(num_train), *draw(num_test))


@pytest.mark.parametrize("num_classes, dims", [(2, 512), (3, 64)])
def test_probe_learns_separated_gaussians(num_classes, dims):
    """Well-separated Gaussian classes (250 images, 5 folds): test and cross-validated accuracy above 0.95; scored
    on the test images as validation, every penalty of the grid has its accuracy, the chosen one the test's."""
    train_x, train_y, test_x, test_y = gaussian_problem(250, 600, dims, num_classes, 8.0)
    result = evaluate.logistic_probe(train_x, train_y, test_x, test_y, num_classes, validation=(test_x, test_y))
    assert result["test_accuracy"] > 0.95 and result["cv_accuracy"] > 0.95 and result["folds"] == 5
    assert [penalty for penalty, _ in result["validation_by_penalty"]] == list(evaluate.PROBE_PENALTIES)
    assert result["validation_accuracy"] == result["test_accuracy"] == \
        dict(result["validation_by_penalty"])[result["penalty"]]


def test_probe_is_near_chance_without_signal():
    """Both classes drawn alike: the test accuracy on 2000 images is 0.5 within 0.07 (about 6 standard errors)."""
    result = evaluate.logistic_probe(*gaussian_problem(250, 2000, 512, 2, 0.0), num_classes=2)
    assert abs(result["test_accuracy"] - 0.5) < 0.07


def test_cross_validation_penalises_noise_more_than_a_clean_problem():
    """The penalty chosen for 40 images of 512 signal-free features is larger than for 200 of 16 separated ones."""
    noisy = evaluate.logistic_probe(*gaussian_problem(40, 10, 512, 2, 0.0), num_classes=2)
    clean = evaluate.logistic_probe(*gaussian_problem(200, 10, 16, 2, 8.0), num_classes=2)
    assert noisy["penalty"] > clean["penalty"]


def test_the_choice_depends_on_the_labelled_images_and_the_seed_alone():
    """The same call twice gives identical results; other test features and shuffled test labels, or validation
    features, change neither the penalty nor the cross-validation figures."""
    train_features, train_labels, test_features, test_labels = gaussian_problem(60, 100, 16, 2, 2.0)
    options = {"num_classes": 2, "penalties": (1e-2, 1e-1, 1.0, 10.0), "seed": 3}
    result = evaluate.logistic_probe(train_features, train_labels, test_features, test_labels, **options)
    assert result == evaluate.logistic_probe(train_features, train_labels, test_features, test_labels, **options)
    other = evaluate.logistic_probe(train_features, train_labels, torch.randn_like(test_features),
                                    test_labels[torch.randperm(len(test_labels))], **options,
                                    validation=(test_features, test_labels))
    assert {key: other[key] for key in ("penalty", "cv_loss", "cv_accuracy", "folds")} == {
        key: result[key] for key in ("penalty", "cv_loss", "cv_accuracy", "folds")}


def test_probe_uses_fewer_folds_for_a_small_class_and_refuses_a_single_image():
    """3 labelled images in the smallest class: 3 folds; 1 image: one line naming --labels."""
    train_features, train_labels, test_features, test_labels = gaussian_problem(40, 10, 8, 2, 4.0)
    for kept, folds in [(3, 3), (1, None)]:
        keep = (train_labels == 0) | (torch.arange(len(train_labels)) < 2 * kept)  # class 1 keeps `kept` images
        problem = train_features[keep], train_labels[keep], test_features, test_labels
        if folds is None:
            with pytest.raises(UserError, match=r"2 labelled images or more of each class \(raise --labels\)"):
                evaluate.logistic_probe(*problem, 2)
        else:
            assert evaluate.logistic_probe(*problem, 2)["folds"] == folds


def test_stratified_folds_share_out_every_class():
    """Each fold holds each class's images divided by the number of folds, up to one image."""
    labels = torch.tensor([0] * 23 + [1] * 17 + [2] * 11)
    fold = evaluate.stratified_folds(labels, 5, torch.Generator().manual_seed(0))
    counts = torch.zeros(5, 3, dtype=torch.long).index_put_((fold, labels), torch.ones_like(labels), accumulate=True)
    assert ((counts - torch.bincount(labels).double() / 5).abs() < 1).all()


@pytest.mark.slow
def test_fit_logistic_matches_scikit_learn():
    """At a fixed penalty lambda, fit_logistic's weights and bias are scikit-learn's multinomial LogisticRegression's
    at C = 1 / (lambda n) (the same objective, summed instead of averaged), and its gradient there is 0."""
    from sklearn.linear_model import LogisticRegression
    features, labels, _, _ = gaussian_problem(150, 0, 20, 3, 2.0)
    x, _ = evaluate.standardize(features.double(), features.double())
    for penalty in (1e-2, 1e0):
        weight, bias = evaluate.fit_logistic(x, labels, 3, penalty)
        theirs = LogisticRegression(C=1 / (penalty * len(labels)), tol=1e-10, max_iter=10_000).fit(x.numpy(), labels)
        # softmax weights are defined up to a constant per feature; the penalty makes them sum to 0 over classes
        torch.testing.assert_close(weight.T, torch.from_numpy(theirs.coef_), atol=1e-4, rtol=1e-3)
        torch.testing.assert_close(bias - bias.mean(), torch.from_numpy(theirs.intercept_ - theirs.intercept_.mean()),
                                   atol=1e-4, rtol=1e-3)
        weight.requires_grad_(True), bias.requires_grad_(True)
        loss = F.cross_entropy(x @ weight + bias, labels) + penalty / 2 * weight.square().sum()
        assert max(gradient.abs().max().item() for gradient in torch.autograd.grad(loss, [weight, bias])) < 1e-5


@pytest.mark.parametrize("separation", [pytest.param(2.0, marks=pytest.mark.slow), 4.0])
def test_probe_agrees_with_scikit_learns_cross_validation(separation):
    """On the same folds and penalties, GridSearchCV over StandardScaler + LogisticRegression scored by log-loss (each
    fold standardised with its own training part, as logistic_probe) reaches the same cross-validated log-loss, and a
    test accuracy within 1 point on 3,000 test images; at_edge says whether the penalty is the grid's first or last."""
    from sklearn.linear_model import LogisticRegression
    from sklearn.model_selection import GridSearchCV
    from sklearn.pipeline import make_pipeline
    from sklearn.preprocessing import StandardScaler
    train_x, train_y, test_x, test_y = gaussian_problem(150, 3000, 64, 3, separation)
    ours = evaluate.logistic_probe(train_x, train_y, test_x, test_y, 3, seed=0)
    fold = evaluate.stratified_folds(train_y, 5, torch.Generator().manual_seed(0))
    folds = [(torch.nonzero(fold != k).flatten().numpy(), torch.nonzero(fold == k).flatten().numpy()) for k in range(5)]
    n_fit = len(train_y) * 4 // 5  # C = 1 / (lambda n) on each fold's training part
    theirs = GridSearchCV(make_pipeline(StandardScaler(), LogisticRegression(tol=1e-8, max_iter=10_000)),
                          {"logisticregression__C": [1 / (penalty * n_fit) for penalty in evaluate.PROBE_PENALTIES]},
                          cv=folds, scoring="neg_log_loss").fit(train_x.double().numpy(), train_y.numpy())
    their_accuracy = (theirs.predict(test_x.double().numpy()) == test_y.numpy()).mean()
    # 5 folds of 30: the same mean; StandardScaler divides by the std over n, ours over n - 1 (0.4% apart here)
    assert ours["cv_loss"] == pytest.approx(-theirs.best_score_, rel=2e-3)
    assert 1 / (ours["penalty"] * n_fit) == pytest.approx(theirs.best_params_["logisticregression__C"])
    assert abs(ours["test_accuracy"] - their_accuracy) < 0.01 and ours["test_accuracy"] > 0.6  # chance: 1/3
    assert ours["at_edge"] == (ours["penalty"] in (evaluate.PROBE_PENALTIES[0], evaluate.PROBE_PENALTIES[-1]))
    assert len(ours["test_predictions"]) == 3000


# ---------------------------------------------------------------- a SimSiam checkpoint


def simsiam_checkpoint(path, **changes):
    """A SimSiam checkpoint as train.py writes it, pretrained (it says) on the photos of identities [[1, 0], [2, 0]]."""
    entries = {"epoch": 1, "args": {"image_size": 32, "cache_size": None}, "split": {},
               "pretraining_hashes": torch.tensor([[1, 0x808080], [2, 0x808080]]), "protocol": runs.PROTOCOL, **changes}
    model.save_checkpoint(path, "simsiam", model.SimSiam(), **{k: v for k, v in entries.items() if v is not None})
    return path


def backbone_args(*argv: str):
    parser = argparse.ArgumentParser()
    evaluate.add_backbone_arguments(parser)
    parser.set_defaults(demo=False, cache_size=None)
    return parser.parse_args(argv)


def torchvision_file(path: Path) -> dict:
    """A ResNet18 state dict in torchvision's format, its fc layer included, saved at `path`: marker weights."""
    torch.manual_seed(7)
    path.parent.mkdir(parents=True, exist_ok=True)
    torch.save(state := torchvision.models.resnet18().state_dict(), path)
    return state


def loaded_weights(chosen: evaluate.Backbone) -> dict:
    return chosen.load(model.resnet18_backbone()).state_dict()


@pytest.fixture
def offline(tmp_path, monkeypatch) -> Path:
    """The torch hub cache in tmp_path and every socket refused; the path of torchvision's ImageNet ResNet18 file."""
    monkeypatch.setenv("TORCH_HOME", str(tmp_path / "torch"))
    def refuse(*arguments, **keywords):
        raise OSError("the network is blocked in the tests")
    monkeypatch.setattr(socket, "getaddrinfo", refuse)
    monkeypatch.setattr(socket, "socket", refuse)
    return tmp_path / "torch" / "hub" / "checkpoints" / Path(evaluate.IMAGENET.url).name


def test_imagenet_weights_are_read_from_the_hub_cache_with_their_digest_checked(offline, monkeypatch):
    """--init imagenet: torchvision's file in TORCH_HOME, its SHA-256 checked against the digest in its name (so a
    planted file is refused until the test accepts its digest), then its weights reach the backbone, fc left out;
    224 px, as torchvision's evaluation crop, from a 256 px cache."""
    planted = torchvision_file(offline)
    with pytest.raises(UserError, match=f"SHA-256 .* not torchvision's {evaluate.IMAGENET_SHA256}") as error:
        evaluate.backbone_source(backbone_args("--init", "imagenet"))
    assert str(offline) in str(error.value) and "\n" not in str(error.value)
    monkeypatch.setattr(evaluate, "IMAGENET_SHA256", hashlib.sha256(offline.read_bytes()).hexdigest()[:8])
    chosen = evaluate.backbone_source(backbone_args("--init", "imagenet"))
    assert (chosen.name, chosen.image_size, chosen.cache_size, chosen.checkpoint) == ("imagenet", 224, 256, None)
    weights = loaded_weights(chosen)
    assert weights.keys() == {key for key in planted if not key.startswith("fc.")}
    assert all(torch.equal(value, planted[key]) for key, value in weights.items())


def test_imagenet_weights_missing_offline_are_one_line_saying_where_and_from_where(offline):
    with pytest.raises(UserError) as error:
        evaluate.backbone_source(backbone_args("--init", "imagenet"))
    message = str(error.value)
    assert f"needs {offline}" in message and evaluate.IMAGENET.url in message and "\n" not in message
    assert not offline.exists()


def test_init_weights_and_checkpoint_put_their_weights_into_the_backbone(tmp_path, small_heads):
    """--init-weights takes a torchvision-format file (a run's backbone.pt) and --checkpoint a SimSiam checkpoint:
    each one's backbone weights, loaded strictly; --random: none, at 150 px (32 with --demo)."""
    torch.manual_seed(1)
    model.export_backbone(simsiam := model.SimSiam(), tmp_path / "backbone.pt")
    path = simsiam_checkpoint(tmp_path / "siam.pt")
    for argv, expected in [(["--init-weights", str(tmp_path / "backbone.pt")], simsiam.backbone.state_dict()),
                           (["--checkpoint", str(path)], model.backbone_state(torch.load(path, weights_only=True)))]:
        weights = loaded_weights(chosen := evaluate.backbone_source(backbone_args(*argv)))
        assert chosen.name in ("weights", "simsiam") and chosen.path == Path(argv[1])
        assert all(torch.equal(value, expected[key]) for key, value in weights.items())
    chosen = evaluate.backbone_source(backbone_args("--random"))
    assert (chosen.name, chosen.weights, chosen.image_size) == ("random", None, 150)
    torchvision_file(tmp_path / "other.pt")
    torch.save({"conv1.weight": torch.zeros(1)}, tmp_path / "other.pt")
    with pytest.raises(UserError, match="other.pt: its weights do not fit"):
        loaded_weights(evaluate.backbone_source(backbone_args("--init-weights", str(tmp_path / "other.pt"))))


@pytest.mark.parametrize("changes, fragment", [
    ({"pretraining_hashes": None}, "'pretraining_hashes'"),
    ({"protocol": None}, "protocol 1"),
    ({"protocol": runs.PROTOCOL - 1}, f"protocol {runs.PROTOCOL - 1}"),
    ("classifier", "'classifier'"),
    ("missing", "no such checkpoint"),
])
def test_a_checkpoint_that_cannot_be_evaluated_is_one_line_with_the_hint(tmp_path, small_heads, changes, fragment):
    path = tmp_path / "siam.pt"
    if changes == "classifier":
        model.save_checkpoint(path, "classifier", model.Classifier(2), classes=["a", "b"])
    elif changes != "missing":
        simsiam_checkpoint(path, **changes)
    with pytest.raises(UserError) as error:
        evaluate.read_pretrained(path, "or pass --random")
    message = str(error.value)
    assert message.startswith("cannot use --checkpoint: ") and message.endswith("(or pass --random)")
    assert fragment in message and "\n" not in message


def test_check_unseen_counts_the_test_images_pretrained_on():
    """Test images whose identity is one of the pretraining photos' are counted in one line; others pass."""
    checkpoint = {"pretraining_hashes": torch.tensor([[1, 0x808080], [2, 0x808080]])}
    evaluate.check_unseen(checkpoint, "siam.pt", torch.tensor([[1, 0x000000], [2, 0xffffff]]))  # other colours
    with pytest.raises(UserError, match="^2 of the 3 test images were among the 2 photos siam.pt was pretrained on"):
        evaluate.check_unseen(checkpoint, "siam.pt", torch.tensor([[2, 0x808080], [5, 0x000000], [1, 0x808080]]))


@pytest.mark.parametrize("flags, pretrained, expected", [
    ((None, None), {"image_size": 32, "cache_size": 44}, (32, 44)),  # the checkpoint's
    ((None, None), {"image_size": 32, "cache_size": None}, (32, 37)),  # None: 8/7 of the image size
    ((64, None), {"image_size": 32, "cache_size": 44}, (64, 74)),  # a flag wins, with a cache of 8/7 of itself
    ((None, 40), {"image_size": 32, "cache_size": 44}, (32, 40)),
    ((None, None), None, (150, 172)),  # no checkpoint: the fallback
])
def test_resolution_follows_the_checkpoint_unless_a_flag_says_otherwise(flags, pretrained, expected):
    assert evaluate.resolution(*flags, pretrained, fallback_image_size=150) == expected
