"""Tests for evaluate.logistic_probe, the closed-form linear probe: it learns a separable problem and nothing from
noise, its cross-validation picks the penalty from the labelled images alone, and it is seeded. Synthetic Gaussian
features on the CPU (plus one CUDA test, skipped without a GPU)."""
from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from simsiam import evaluate


def gaussian_problem(num_train: int, num_test: int, dims: int, num_classes: int, separation: float,
                     seed: int = 0) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    """(train features, train labels, test features, test labels): unit Gaussians around one random mean per
    class, the means about `separation` apart; balanced classes, train and test from the same means."""
    generator = torch.Generator().manual_seed(seed)
    means = torch.randn(num_classes, dims, generator=generator) * separation / (2 * dims) ** 0.5  # (K, D)

    def draw(n: int) -> tuple[torch.Tensor, torch.Tensor]:
        labels = torch.arange(n) % num_classes
        return torch.randn(n, dims, generator=generator) + means[labels], labels

    return (*draw(num_train), *draw(num_test))


def test_probe_learns_separable_gaussians():
    """On two well-separated Gaussian classes (250 x 512 features), the test accuracy is above 0.95."""
    result = evaluate.logistic_probe(*gaussian_problem(250, 1000, 512, 2, separation=8.0), num_classes=2)
    assert result["test_accuracy"] > 0.95 and result["cv_accuracy"] > 0.95


def test_probe_learns_three_classes():
    """On three well-separated Gaussian classes, the test accuracy is above 0.95, with 5 folds."""
    result = evaluate.logistic_probe(*gaussian_problem(150, 900, 64, 3, separation=8.0), num_classes=3)
    assert result["test_accuracy"] > 0.95 and result["folds"] == 5


def test_probe_is_near_chance_without_signal():
    """When both classes have the same distribution, the test accuracy on 2000 images is 0.5 within 0.07 (about
    6 standard errors)."""
    result = evaluate.logistic_probe(*gaussian_problem(250, 2000, 512, 2, separation=0.0), num_classes=2)
    assert abs(result["test_accuracy"] - 0.5) < 0.07


def test_cross_validation_penalises_noise_more_than_a_clean_problem():
    """The penalty chosen for 40 images of 512 signal-free features is larger than the one chosen for 200 images
    of 16 well-separated features."""
    noisy = evaluate.logistic_probe(*gaussian_problem(40, 10, 512, 2, separation=0.0), num_classes=2)
    clean = evaluate.logistic_probe(*gaussian_problem(200, 10, 16, 2, separation=8.0), num_classes=2)
    assert noisy["penalty"] > clean["penalty"]


def test_test_images_do_not_influence_the_choice():
    """Replacing the test features and shuffling the test labels changes neither the chosen penalty nor the
    cross-validation figures."""
    train_features, train_labels, test_features, test_labels = gaussian_problem(100, 200, 32, 2, separation=2.0)
    result = evaluate.logistic_probe(train_features, train_labels, test_features, test_labels, num_classes=2)
    other = evaluate.logistic_probe(train_features, train_labels, torch.randn_like(test_features),
                                    test_labels[torch.randperm(len(test_labels))], num_classes=2)
    for key in ["penalty", "cv_loss", "cv_accuracy", "folds"]:
        assert result[key] == other[key], key


def test_probe_is_deterministic():
    """Two probes with the same seed return identical results."""
    problem = gaussian_problem(100, 200, 32, 2, separation=2.0)
    result = evaluate.logistic_probe(*problem, num_classes=2, seed=3)
    assert result == evaluate.logistic_probe(*problem, num_classes=2, seed=3)


def test_probe_uses_fewer_folds_for_a_small_class():
    """With 3 labelled images in the smallest class, the probe cross-validates over 3 folds."""
    train_features, train_labels, test_features, test_labels = gaussian_problem(40, 10, 8, 2, separation=4.0)
    keep = (train_labels == 0) | (torch.arange(len(train_labels)) < 6)  # class 1 keeps 3 images
    result = evaluate.logistic_probe(train_features[keep], train_labels[keep], test_features, test_labels, 2)
    assert result["folds"] == 3


def test_stratified_folds_share_out_every_class():
    """Each fold holds each class's images divided by the number of folds, up to one image."""
    labels = torch.tensor([0] * 23 + [1] * 17 + [2] * 11)
    fold = evaluate.stratified_folds(labels, 5, torch.Generator().manual_seed(0))
    counts = torch.zeros(5, 3, dtype=torch.long).index_put_((fold, labels), torch.ones_like(labels), accumulate=True)
    share = torch.bincount(labels).double() / 5  # (3,)
    assert ((counts - share).abs() < 1).all()


def test_fit_logistic_reaches_the_minimum():
    """The gradient of the penalised mean cross-entropy at the fitted weight and bias is zero (below 1e-5: L-BFGS
    stops once the loss changes by less than 1e-9)."""
    features, labels, _, _ = gaussian_problem(100, 0, 16, 3, separation=2.0)
    x, _ = evaluate.standardize(features.double(), features.double())
    weight, bias = evaluate.fit_logistic(x, labels, 3, penalty=1e-2)
    weight.requires_grad_(True), bias.requires_grad_(True)
    loss = F.cross_entropy(x @ weight + bias, labels) + 1e-2 / 2 * weight.square().sum()
    gradients = torch.autograd.grad(loss, [weight, bias])
    assert max(gradient.abs().max().item() for gradient in gradients) < 1e-5


@pytest.mark.parametrize("device", ["cpu", pytest.param("cuda", marks=pytest.mark.skipif(
    not torch.cuda.is_available(), reason="no CUDA"))])
def test_probe_runs_on_the_features_device(device):
    """With features and labels on `device`, the probe runs there and gives the CPU's choice of penalty."""
    problem = gaussian_problem(100, 200, 32, 2, separation=2.0)
    result = evaluate.logistic_probe(*[tensor.to(device) for tensor in problem], num_classes=2)
    assert result["penalty"] == evaluate.logistic_probe(*problem, num_classes=2)["penalty"]
