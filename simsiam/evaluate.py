"""Evaluation shared by the scripts: backbone features of cached images, nearest neighbours and kNN accuracy,
classification accuracy, and the full-batch linear probe (L2-regularised logistic regression, penalty chosen by
cross-validation)."""
from __future__ import annotations

import math
from fractions import Fraction

import torch
import torch.nn.functional as F
from torch import nn

from simsiam import augment, dataset, devices, recipe, runs

KNN_TEMPERATURE = 0.1  # similarity weighting of the neighbours' votes (Wu et al. 2018, as in common kNN monitors)


@torch.no_grad()
def embed(backbone: nn.Module, images: torch.Tensor, indices: torch.Tensor, size: int, runtime: devices.Runtime,
          batch_size: int = 512, desc: str = "embedding") -> torch.Tensor:
    """(len(indices), 512) float32 features of the evaluation view, backbone in eval mode, with a progress bar
    (it can take minutes on a CPU), in batches of at most `batch_size` that fit in the device's memory."""
    batch_size = recipe.fitting_batch(size, batch_size, runtime)
    was_training = backbone.training
    backbone.eval()
    features = []
    starts = range(0, len(indices), batch_size)
    for start in runs.progress_bar(starts, show=len(starts) > 1, desc=desc, unit="batch", leave=False, mininterval=1):
        x = augment.center_view(dataset.gather(images, indices[start:start + batch_size], runtime.device), size)
        with runtime.autocast():
            features.append(backbone(x.contiguous(memory_format=runtime.memory_format)).float())
    backbone.train(was_training)
    return torch.cat(features)


@torch.no_grad()
def nearest(queries: torch.Tensor, bank: torch.Tensor, k: int) -> tuple[torch.Tensor, torch.Tensor]:
    """(similarities, indices), each (Q, min(k, B)): the k rows of the (B, D) bank most similar to each of the
    (Q, D) queries by cosine similarity, most similar first (ties in no particular order)."""
    similarity = F.normalize(queries, dim=1) @ F.normalize(bank, dim=1).T  # (Q, B)
    top_similarity, top_index = similarity.topk(min(k, len(bank)), dim=1)  # (Q, k)
    return top_similarity, top_index


@torch.no_grad()
def knn_accuracy(bank: torch.Tensor, bank_labels: torch.Tensor, queries: torch.Tensor, query_labels: torch.Tensor,
                 num_classes: int, k: int = 20) -> torch.Tensor:
    """Accuracy (0-dim tensor) of a similarity-weighted vote of each query's k nearest bank features (cosine)."""
    top_similarity, top_index = nearest(queries, bank, k)  # (Q, k)
    votes = torch.zeros(len(queries), num_classes, device=queries.device)
    votes.scatter_add_(1, bank_labels.to(queries.device)[top_index], (top_similarity / KNN_TEMPERATURE).exp())
    return accuracy(votes, query_labels)


def standard_error(accuracy: float, num_test: int) -> float:
    """The binomial standard error of an accuracy measured on `num_test` independent test images."""
    return (accuracy * (1 - accuracy) / num_test) ** 0.5


def mean_with_error(differences: torch.Tensor) -> dict:
    """The mean of (n,) per-image differences, its standard error (their sample standard deviation over sqrt(n))
    and a normal 95% interval."""
    difference, error = differences.mean().item(), (differences.std() / len(differences) ** 0.5).item()
    return {"difference": difference, "standard_error": error, "low": difference - 1.96 * error,
            "high": difference + 1.96 * error}


def paired_difference(correct_a, correct_b) -> dict:
    """Accuracy of classifier a minus that of classifier b on the same test images, from their per-image
    correctness (two equal-length sequences of bools): the paired standard error and a normal 95% interval
    (mean_with_error), the discordant counts (only_a: images only a got right) and McNemar's exact two-sided
    p-value on them. Pairing removes what both get right or wrong alike: its standard error is well below that of
    two independent accuracies."""
    a = torch.as_tensor(correct_a, dtype=torch.float64)
    b = torch.as_tensor(correct_b, dtype=torch.float64)
    if a.shape != b.shape or a.ndim != 1 or len(a) < 2:
        raise ValueError("paired_difference needs two equal-length sequences of at least 2 test images")
    differences = a - b
    only_a, only_b = int((differences > 0).sum()), int((differences < 0).sum())
    discordant, fewer = only_a + only_b, min(only_a, only_b)
    tail = Fraction(sum(math.comb(discordant, k) for k in range(fewer + 1)), 2 ** discordant)
    return {"accuracy_a": a.mean().item(), "accuracy_b": b.mean().item(), **mean_with_error(differences),
            "only_a": only_a, "only_b": only_b, "mcnemar_p": min(1.0, float(2 * tail)), "num_test": len(a)}


def paired_difference_over_draws(correct_a, correct_b) -> dict:
    """paired_difference of two kinds of classifier each fitted once per label draw, all tested on the same
    images: (D, n) per-image correctness, a row per draw, the same draws in the same order for a and b. Each
    image's correctness is first averaged over the D draws, so the standard error is over the test images, the
    unit sampled, with the draws' own noise averaged out rather than counted as D times the images. No McNemar
    p-value: correctness averaged over draws is not a pair of bools."""
    a = torch.as_tensor(correct_a, dtype=torch.float64)
    b = torch.as_tensor(correct_b, dtype=torch.float64)
    if a.shape != b.shape or a.ndim != 2 or a.shape[1] < 2:
        raise ValueError("paired_difference_over_draws needs two equal (draws, test images) tables, 2 images or more")
    a, b = a.mean(dim=0), b.mean(dim=0)
    return {"accuracy_a": a.mean().item(), "accuracy_b": b.mean().item(), **mean_with_error(a - b),
            "num_test": len(a), "draws": len(correct_a)}


PROBE_PREDICTIONS = {"head": "linear probe", "closed_form": "closed-form probe"}  # predictions.json keys:
# the trained head's (the linear probe of a frozen run, the model of a fine-tuned one) and the closed-form probe's


def correctness(predictions: dict, key: str) -> list[bool]:
    """Per test image, whether a classifier run's predictions.json record under `key` got it right."""
    return [p == label for p, label in zip(predictions[key], predictions["labels"])]


def same_test_images(*predictions: dict) -> bool:
    """Whether classifier runs' predictions.json records were tested on the same images, in the same order."""
    return all(p.get("files") == predictions[0].get("files") and p.get("labels") == predictions[0].get("labels")
               for p in predictions)


def compare_predictions(a: dict, b: dict, key: str) -> dict | None:
    """paired_difference of two classifier runs' predictions.json records under `key` ("head" or
    "closed_form"), or None when they were not tested on the same images or one lacks `key`."""
    if not same_test_images(a, b) or key not in a or key not in b:
        return None
    return paired_difference(correctness(a, key), correctness(b, key))


def describe_difference(difference: dict) -> str:
    """A paired difference for people, in points: '+6.1 ± 1.3 points (paired s.e.; 95% +3.6 to +8.6; McNemar p
    2e-06)'."""
    return (f"{100 * difference['difference']:+.1f} ± {100 * difference['standard_error']:.1f} points (paired "
            f"s.e.; 95% {100 * difference['low']:+.1f} to {100 * difference['high']:+.1f}; McNemar p "
            f"{difference['mcnemar_p']:.2g}) on {difference['num_test']:,} test images")


def accuracy(logits: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
    """Fraction (0-dim tensor) of rows whose arg-max is the label."""
    return (logits.argmax(dim=1) == labels.to(logits.device)).float().mean()


# ---------------------------------------------------------------- full-batch linear probe (L-BFGS)

# lambda of the penalty (lambda / 2) ||W||^2 added to the mean cross-entropy (scikit-learn's C = 1 / (lambda n)),
# log-spaced over 1e-6 .. 1e4: at the top the weights are nearly the class means' differences (what a very strong
# penalty leaves), at the bottom nearly unpenalised
PROBE_PENALTIES = tuple(10.0 ** k for k in range(-6, 5))
PROBE_ITERATIONS = 300  # L-BFGS iterations per fit, at most; weakly penalised separable problems stop here


def standardize(train: torch.Tensor, test: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Both (N, D) sets standardised with the training set's per-feature mean and std, so that one penalty
    weighs every feature alike; a constant training feature keeps std 1 (its weight stays 0 anyway)."""
    mean, std = train.mean(dim=0), train.std(dim=0)
    std = torch.where(std > 0, std, torch.ones_like(std))
    return (train - mean) / std, (test - mean) / std


def fit_logistic(x: torch.Tensor, labels: torch.Tensor, num_classes: int,
                 penalty: float) -> tuple[torch.Tensor, torch.Tensor]:
    """(D, K) weight W and (K,) bias b minimising mean cross-entropy(x W + b) + penalty / 2 ||W||^2 over (N, D)
    features x, full batch, by L-BFGS with a strong Wolfe line search. The bias is not penalised. The problem is
    convex, so starting from zero loses nothing."""
    weight = torch.zeros(x.shape[1], num_classes, dtype=x.dtype, device=x.device, requires_grad=True)
    bias = torch.zeros(num_classes, dtype=x.dtype, device=x.device, requires_grad=True)
    optimizer = torch.optim.LBFGS([weight, bias], lr=1, max_iter=PROBE_ITERATIONS, line_search_fn="strong_wolfe")

    def closure() -> torch.Tensor:
        optimizer.zero_grad()
        loss = F.cross_entropy(x @ weight + bias, labels) + penalty / 2 * weight.square().sum()
        loss.backward()
        return loss

    with torch.enable_grad():
        optimizer.step(closure)
    return weight.detach(), bias.detach()


def stratified_folds(labels: torch.Tensor, folds: int, generator: torch.Generator) -> torch.Tensor:
    """(N,) fold of each of the (N,) labels on the generator's device: the images, shuffled and grouped by class,
    are dealt to the folds in turn, so each fold holds every class's share up to one image."""
    order = torch.randperm(len(labels), generator=generator, device=generator.device)
    order = order[torch.sort(labels[order], stable=True).indices]  # grouped by class, shuffled within each
    fold = torch.empty_like(order)
    fold[order] = torch.arange(len(labels), device=generator.device) % folds
    return fold


def logistic_probe(train_features: torch.Tensor, train_labels: torch.Tensor, test_features: torch.Tensor,
                   test_labels: torch.Tensor, num_classes: int, folds: int = 5,
                   penalties: tuple[float, ...] = PROBE_PENALTIES, seed: int = 0) -> dict:
    """Accuracy on the test features of L2-regularised multinomial logistic regression on frozen (N, D) features:
    the convex linear probe of Kornblith et al. 2019, also SimCLR's transfer evaluation.

    The penalty is chosen by stratified `folds`-fold cross-validation on the labelled (train) images only (fewer
    folds when a class has fewer images), by held-out accuracy, the measure reported, with ties (frequent on a few
    hundred images) going to the lower held-out cross-entropy; each fold is standardised with its own training
    part. The model is then refitted on all labelled images with that penalty. Float64, on the features' device;
    the folds are drawn from `seed`. Returns test_accuracy, penalty, at_edge (whether it is the grid's first or
    last: a wider grid might do better), cv_loss and cv_accuracy (at that penalty), folds (builtins) and
    test_predictions (a list of M classes)."""
    x, x_test = train_features.double(), test_features.double()  # (N, D), (M, D)
    labels, test_labels = train_labels.to(x.device), test_labels.to(x.device)
    counts = torch.bincount(labels, minlength=num_classes)
    folds = min(folds, int(counts[counts > 0].min()))
    if folds < 2:
        raise ValueError("cross-validating the probe's penalty needs at least 2 labelled images per class")
    fold = stratified_folds(labels.cpu(), folds, torch.Generator().manual_seed(seed)).to(x.device)
    held_out_loss = torch.zeros(len(penalties), dtype=x.dtype, device=x.device)  # summed over the N images
    held_out_correct = torch.zeros(len(penalties), dtype=x.dtype, device=x.device)
    for k in range(folds):
        fit, held_out = fold != k, fold == k
        x_fit, x_held_out = standardize(x[fit], x[held_out])
        for i, penalty in enumerate(penalties):
            weight, bias = fit_logistic(x_fit, labels[fit], num_classes, penalty)
            logits = x_held_out @ weight + bias
            held_out_loss[i] += F.cross_entropy(logits, labels[held_out], reduction="sum")
            held_out_correct[i] += (logits.argmax(dim=1) == labels[held_out]).sum()
    most_correct = held_out_correct == held_out_correct.max()
    best = int(torch.where(most_correct, held_out_loss, torch.inf).argmin())
    x, x_test = standardize(x, x_test)
    weight, bias = fit_logistic(x, labels, num_classes, penalties[best])
    logits = x_test @ weight + bias
    return {"test_accuracy": accuracy(logits, test_labels).item(), "penalty": penalties[best],
            "at_edge": best in (0, len(penalties) - 1), "cv_loss": held_out_loss[best].item() / len(labels),
            "cv_accuracy": held_out_correct[best].item() / len(labels), "folds": folds,
            "test_predictions": logits.argmax(dim=1).tolist()}
