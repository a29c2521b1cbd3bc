"""Evaluation shared by the scripts: features, neighbours and kNN, paired comparisons, probes, the backbones."""
import hashlib
import math
from pathlib import Path
from typing import NamedTuple

import torch
import torch.nn.functional as F
from torch import nn
from torchvision.models import ResNet18_Weights
from tqdm import tqdm

import augment
import dataset
import model
import runs

@torch.no_grad()
def embed(backbone: nn.Module, images: torch.Tensor, indices: torch.Tensor, size: int, runtime,
          batch_size: int = 256) -> torch.Tensor:
    """(len(indices), 512) float32 features of the evaluation view (augment.center_view), backbone in eval mode."""
    was_training, features, starts = backbone.training, [], range(0, len(indices), batch_size)
    backbone.eval()
    for start in tqdm(starts, "embedding", leave=False, **({} if len(starts) > 1 else {"disable": True})):
        x = augment.center_view(dataset.gather(images, indices[start:start + batch_size], runtime.device), size)
        with runtime.autocast():
            features.append(backbone(x.contiguous(memory_format=runtime.memory_format)).float())
    backbone.train(was_training)
    return torch.cat(features)

def nearest(queries: torch.Tensor, bank: torch.Tensor, k: int) -> tuple[torch.Tensor, torch.Tensor]:
    """(similarities, indices), each (Q, min(k, B)): the (B, D) bank's rows nearest each query by cosine, in order."""
    return (F.normalize(queries, dim=1) @ F.normalize(bank, dim=1).T).topk(min(k, len(bank)), dim=1)  # of (Q, B)

def knn_accuracy(bank: torch.Tensor, bank_labels: torch.Tensor, queries: torch.Tensor, query_labels: torch.Tensor,
                 num_classes: int, k: int = 20) -> torch.Tensor:
    """Accuracy (0-dim) of a vote of each query's k nearest bank rows weighted by exp(similarity / 0.1) (Wu 2018)."""
    similarities, neighbours = nearest(queries, bank, k)  # (Q, k)
    votes = torch.zeros(len(queries), num_classes, device=queries.device)
    votes.scatter_add_(1, bank_labels.to(queries.device)[neighbours], (similarities / 0.1).exp())
    return accuracy(votes, query_labels)

def accuracy(logits: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:  # (N, K), (N,) -> 0-dim
    return (logits.argmax(dim=1) == labels.to(logits.device)).float().mean()

def standard_error(accuracy: float, n: int) -> float:  # binomial, on n independent test images
    return (accuracy * (1 - accuracy) / n) ** 0.5

def paired_difference(correct_a, correct_b) -> dict:  # a - b from (n,) correctness: paired s.e., McNemar's exact p
    a, b = (torch.as_tensor(correct, dtype=torch.float64) for correct in (correct_a, correct_b))
    only_a, only_b = int((a > b).sum()), int((a < b).sum())
    p = min(1., sum(math.comb(only_a + only_b, k) for k in range(min(only_a, only_b) + 1)) / 2 ** (only_a + only_b - 1))
    return {**paired_difference_over_draws(a[None], b[None]), "only_a": only_a, "only_b": only_b, "mcnemar_p": p}

def paired_difference_over_draws(correct_a, correct_b) -> dict:
    """Paired difference of classifiers fitted per label draw ((D, n) correctness, draws in the same order): each
    image's correctness averaged over the draws first, so the s.e. (std / sqrt(n)) is over the n images, not D n."""
    a, b = (torch.as_tensor(correct, dtype=torch.float64).mean(dim=0) for correct in (correct_a, correct_b))
    difference, error = (a - b).mean().item(), ((a - b).std() / len(a) ** 0.5).item()
    return {"accuracy_a": a.mean().item(), "accuracy_b": b.mean().item(), "difference": difference,
            "standard_error": error, "low": difference - 1.96 * error, "high": difference + 1.96 * error,
            "num_test": len(a), "draws": len(correct_a)}

PROBE_PREDICTIONS = {"head": "linear probe", "closed_form": "closed-form probe"}  # predictions.json keys

def correctness(predictions: dict, key: str) -> list[bool]:
    return [p == label for p, label in zip(predictions[key], predictions["labels"])]

def compare_predictions(a: dict, b: dict, key: str) -> dict | None:
    """Paired difference of `key`'s predictions on the images both runs tested (by name and label, of one folder:
    --test-data leaves out different copies per backbone); None unless both hold `key` and share images."""
    if key not in a or key not in b or None not in (a.get("root"), b.get("root")) and a["root"] != b["root"]:
        return None
    position = {image: j for j, image in enumerate(zip(b["files"], b["labels"]))}
    shared = [(i, position[image]) for i, image in enumerate(zip(a["files"], a["labels"])) if image in position]
    correct_a, correct_b = correctness(a, key), correctness(b, key)
    return paired_difference([correct_a[i] for i, _ in shared], [correct_b[j] for _, j in shared]) if shared else None

def describe_difference(d: dict) -> str:  # +6.1 ± 1.3 points (paired s.e.; 95% +3.6 to +8.6; McNemar p 2e-06) on ...
    return (f"{100 * d['difference']:+.1f} ± {100 * d['standard_error']:.1f} points (paired s.e.; 95% "
            f"{100 * d['low']:+.1f} to {100 * d['high']:+.1f}; McNemar p {d['mcnemar_p']:.2g}) on {d['num_test']:,} "
            f"test images")

def paired_differences(a: dict, b: dict) -> list[tuple[str, str]]:  # (probe, a - b described) per probe compared
    return [(probe, describe_difference(d)) for key, probe in PROBE_PREDICTIONS.items()
            if (d := compare_predictions(a, b, key)) is not None]

# ---------------------------------------------------------------- the closed-form probe (Kornblith et al. 2019)

# lambda of lambda / 2 ||W||^2 added to the mean cross-entropy (scikit-learn's C = 1 / (lambda n)), nearly none to huge
PROBE_PENALTIES = tuple(10.0 ** k for k in range(-6, 5))

def standardize(train: torch.Tensor, *others: torch.Tensor) -> list[torch.Tensor]:
    mean, std = train.mean(dim=0), train.std(dim=0)  # the training set's, per feature
    return [(x - mean) / torch.where(std > 0, std, 1.0) for x in (train, *others)]  # a constant feature keeps std 1

def fit_logistic(x: torch.Tensor, labels: torch.Tensor, num_classes: int, penalty: float) -> tuple:
    """(D, K) W, (K,) b minimising mean cross-entropy(x W + b) + penalty / 2 ||W||^2 by full-batch L-BFGS (convex)."""
    weight = torch.zeros(x.shape[1], num_classes, dtype=x.dtype, device=x.device, requires_grad=True)
    bias = torch.zeros(num_classes, dtype=x.dtype, device=x.device, requires_grad=True)
    # at most 300 iterations: weakly penalised separable problems stop there
    optimizer = torch.optim.LBFGS([weight, bias], lr=1, max_iter=300, line_search_fn="strong_wolfe")
    def closure() -> torch.Tensor:
        optimizer.zero_grad()
        loss = F.cross_entropy(x @ weight + bias, labels) + penalty / 2 * weight.square().sum()
        loss.backward()
        return loss
    with torch.enable_grad():
        optimizer.step(closure)
    return weight.detach(), bias.detach()

def stratified_folds(labels: torch.Tensor, folds: int, generator: torch.Generator) -> torch.Tensor:
    """(N,) fold of each label: the images, shuffled and grouped by class, dealt to the folds in turn."""
    order = torch.randperm(len(labels), generator=generator)
    order = order[labels[order].sort(stable=True).indices]  # grouped by class, shuffled within each
    return torch.empty_like(order).index_put_((order,), torch.arange(len(labels)) % folds)

def logistic_probe(train_features: torch.Tensor, train_labels: torch.Tensor, test_features: torch.Tensor,
                   test_labels: torch.Tensor, num_classes: int, folds: int = 5, penalties: tuple = PROBE_PENALTIES,
                   seed: int = 0, validation: tuple | None = None) -> dict:
    """Test accuracy of L2 logistic regression on frozen (N, D) features, float64. Penalty: the lowest cross-validated
    log-loss over stratified k folds of the labelled images (each fold standardised alone), then refitted on all.
    With `validation` ((V, D) features, (V,) labels), unread by the choice: the validation accuracy of every penalty."""
    x, x_test, labels = train_features.double(), test_features.double(), train_labels.to(train_features.device)
    if (folds := min(folds, int(labels.unique(return_counts=True)[1].min()))) < 2:
        raise model.UserError("the closed-form probe needs 2 labelled images or more of each class (raise --labels)")
    fold = stratified_folds(labels.cpu(), folds, torch.Generator().manual_seed(seed)).to(x.device)
    cv_loss, cv_correct = torch.zeros(2, len(penalties), dtype=x.dtype, device=x.device)  # sums over N
    for k in range(folds):
        fit, held_out = fold != k, fold == k
        x_fit, x_held_out = standardize(x[fit], x[held_out])
        for i, penalty in enumerate(penalties):
            weight, bias = fit_logistic(x_fit, labels[fit], num_classes, penalty)
            logits = x_held_out @ weight + bias
            cv_loss[i] += F.cross_entropy(logits, labels[held_out], reduction="sum")
            cv_correct[i] += (logits.argmax(dim=1) == labels[held_out]).sum()
    best = int(cv_loss.argmin())  # log-loss, not accuracy: on 250 labels the CV accuracy's ties and noise pick badly
    x, x_test, *x_validation = standardize(x, x_test, *([] if validation is None else [validation[0].double()]))
    weight, bias = fit_logistic(x, labels, num_classes, penalties[best])
    logits = x_test @ weight + bias
    result = {"test_accuracy": accuracy(logits, test_labels).item(), "penalty": penalties[best], "folds": folds,
              "at_edge": best in (0, len(penalties) - 1), "test_predictions": logits.argmax(dim=1).tolist(),
              "cv_loss": cv_loss[best].item() / len(labels), "cv_accuracy": cv_correct[best].item() / len(labels)}
    if validation is not None:  # how much the choice of penalty moves the accuracy: [penalty, validation accuracy]
        by_penalty = [[penalty, accuracy(x_validation[0] @ weight + bias, validation[1]).item()]
                      for penalty in penalties for weight, bias in [fit_logistic(x, labels, num_classes, penalty)]]
        result |= {"validation_accuracy": by_penalty[best][1], "validation_by_penalty": by_penalty}
    return result

# ---------------------------------------------------------------- backbones: SimSiam, random init, ImageNet, a file

IMAGENET = ResNet18_Weights.IMAGENET1K_V1  # torchvision's supervised ResNet18: labels of dog breeds and cats included
# the SHA-256's first hex digits, in the file's name: torch.hub's check of a download, made here of the cached file too
IMAGENET_SHA256 = torch.hub.HASH_REGEX.search(Path(IMAGENET.url).name)[1]
IMAGE_SIZES = {"imagenet": 224, "demo": 32, "other": 150}  # px without a checkpoint (ImageNet, --demo, official code)

def add_backbone_arguments(group) -> None:
    source = group.add_mutually_exclusive_group()
    source.add_argument("--checkpoint", type=Path, default=Path("runs/simsiam/siam.pt"),
                        help="SimSiam checkpoint whose backbone to use (default: %(default)s, train.py's output)")
    source.add_argument("--init", choices=("random", "imagenet"), help="instead: random init, or torchvision's "
                        "ImageNet weights (a reference with free labels, docs/protocol.md)")
    source.add_argument("--random", dest="init", action="store_const", const="random", help="--init random")
    source.add_argument("--init-weights", type=Path, metavar="PATH", help="instead: a ResNet18 state dict in "
                        "torchvision's format (a run's backbone.pt); its pretraining photos unknown, not checked")
    group.add_argument("--image-size", type=runs.image_size, default=None, help="input side in px (default: the "
                       f"checkpoint's, with its --cache-size; {IMAGE_SIZES['imagenet']} for ImageNet, else "
                       f"{IMAGE_SIZES['other']}, {IMAGE_SIZES['demo']} with --demo)")

def backbone_name(args) -> str:  # of the backbone flags: simsiam, random, imagenet or weights
    return "weights" if args.init_weights else args.init or "simsiam"

class Backbone(NamedTuple):  # what --checkpoint, --init or --init-weights chose, read before any decoding
    name: str  # simsiam, random, imagenet or weights
    weights: dict | None  # None: random init
    path: Path | None  # the file they came from
    checkpoint: dict | None  # SimSiam's, with its arguments and pretraining photos
    image_size: int
    cache_size: int

    def load(self, module: nn.Module) -> nn.Module:  # a ResNet18 backbone with these weights, loaded strictly
        return module if self.weights is None else model.load_weights(module, self.weights, self.path)

def backbone_source(args) -> Backbone:
    name, path, checkpoint, weights = backbone_name(args), None, None, None
    if name in ("weights", "imagenet"):
        path = args.init_weights if name == "weights" else imagenet_file()
        weights = {k: v for k, v in model.read_file(path).items() if not k.startswith("fc.")}  # ImageNet's classes
    elif name == "simsiam":
        path, checkpoint = args.checkpoint, read_pretrained(args.checkpoint, "or pass --init random")
        weights = model.backbone_state(checkpoint)
    size = IMAGE_SIZES["imagenet" if name == "imagenet" else "demo" if args.demo else "other"]
    return Backbone(name, weights, path, checkpoint, *resolution(args.image_size, args.cache_size,
                                                                 checkpoint and checkpoint["args"], size))

def imagenet_file() -> Path:
    path = Path(torch.hub.get_dir()) / "checkpoints" / Path(IMAGENET.url).name
    if not path.is_file():
        try:
            IMAGENET.get_state_dict(progress=True, check_hash=True)
        except OSError as error:  # offline: URLError
            raise model.UserError(f"--init imagenet needs {path}, absent and not fetched ({error}): download "
                                  f"{IMAGENET.url} into {path.parent} (TORCH_HOME moves it)") from None
    with open(path, "rb") as file:
        if not (digest := hashlib.file_digest(file, "sha256").hexdigest()).startswith(IMAGENET_SHA256):
            raise model.UserError(f"{path}: SHA-256 {digest[:16]}..., not torchvision's {IMAGENET_SHA256}...: not the "
                                  f"published file (damaged?); delete it and run again to fetch it")
    return path

def read_pretrained(path: Path, hint: str = "train one with train.py") -> dict:
    try:
        checkpoint = model.load_checkpoint(path, "simsiam", needs=("args", "split", "pretraining_hashes"))
        runs.check_protocol(checkpoint, path)
    except model.UserError as error:
        raise model.UserError(f"cannot use --checkpoint: {error} ({hint})") from None
    return checkpoint

def resolution(image_size: int | None, cache_size: int | None, pretrained_args: dict | None, fallback_image_size: int):
    """(image size, cache size) in px: a flag wins, else the checkpoint's pretraining scale (its cache at its size)."""
    if image_size is None:
        image_size = fallback_image_size if pretrained_args is None else pretrained_args["image_size"]
    if cache_size is None and pretrained_args is not None and image_size == pretrained_args["image_size"]:
        cache_size = pretrained_args.get("cache_size")
    return image_size, cache_size or dataset.default_cache_size(image_size)

def check_unseen(checkpoint: dict, path: Path, test_hashes: torch.Tensor) -> None:
    if count := int(dataset.near(test_hashes, seen := checkpoint["pretraining_hashes"]).sum()):
        raise model.UserError(f"{count:,} of the {len(test_hashes):,} test images were among the {len(seen):,} photos "
                              f"{path} was pretrained on (by pixels): use the data flags it was pretrained with")
