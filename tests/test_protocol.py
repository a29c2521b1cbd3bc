"""The evaluation protocol: the validation split the kNN monitor reads (never the test split), the protocol version
and the software and hardware that every run and checkpoint records (older checkpoints are refused), the paired
comparison of two classifiers on the same test images, the closed-form probe against scikit-learn, the --cpu
preset, and the committed results/ runs written under today's protocol."""
from __future__ import annotations

import json
import math
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

import classifier
import train
from simsiam import augment, dataset, evaluate, runs
from simsiam.model import CheckpointError

REPOSITORY = Path(__file__).resolve().parents[1]
TINY_RUN = ["--epochs", "1", "--batch-size", "8", "--image-size", "16", "--labels", "6", "--test-fraction", "0.2",
            "--val-fraction", "0.2", "--device", "cpu", "--workers", "2"]


# ---------------------------------------------------------------- the validation split


def splits_of(labels: torch.Tensor, val_fraction: float, hashes: torch.Tensor | None = None) -> dataset.Splits:
    return dataset.make_splits(labels, 3, 0.2, 30, seed=1, label_seed=2, hashes=hashes, val_fraction=val_fraction)


LABELS = torch.arange(600) % 3  # 200 images per class


def test_validation_is_stratified_and_disjoint_from_everything_else():
    """The validation split holds val_fraction of each class, and test, validation, labelled and pretraining
    images never share an index; together test, validation and pretraining cover every image."""
    splits = splits_of(LABELS, 0.1)
    assert torch.bincount(LABELS[splits.validation]).tolist() == [20, 20, 20]
    parts = [set(splits.test.tolist()), set(splits.validation.tolist()), set(splits.pretrain.tolist())]
    assert all(not (a & b) for i, a in enumerate(parts) for b in parts[i + 1:])
    assert set().union(*parts) == set(range(600))
    assert set(splits.labelled.tolist()) <= parts[2]


def test_the_test_split_does_not_depend_on_the_validation_split():
    """Adding or resizing the validation split leaves the test images as they were: the test split depends on the
    split seed and --test-fraction only, so runs with other validation sizes are tested on the same images."""
    tests = [splits_of(LABELS, fraction).test for fraction in (0.0, 0.05, 0.2)]
    assert all(torch.equal(tests[0], test) for test in tests[1:])
    assert len(splits_of(LABELS, 0.0).validation) == 0


def test_copies_of_validation_images_are_neither_pretrained_nor_labelled():
    """A photo whose content equals a validation image's, under another index, is left out of pretraining and of
    the labels, as copies of test images are."""
    hashes = torch.randint(-2 ** 63, 2 ** 63 - 1, (600, 2), generator=torch.Generator().manual_seed(0))
    validation = splits_of(LABELS, 0.1, hashes).validation
    copy = int(splits_of(LABELS, 0.1, hashes).pretrain[0])
    hashes[copy] = hashes[validation[0]]
    splits = splits_of(LABELS, 0.1, hashes)
    assert copy not in splits.pretrain.tolist() and copy not in splits.labelled.tolist()


@pytest.mark.slow
def test_the_monitor_never_reads_the_test_split(class_tree, tmp_path, monkeypatch):
    """Every image train.py embeds for its kNN monitor during pretraining is a labelled or validation image;
    none is a test image (the test split is the final evaluation's alone)."""
    embedded = []
    embed = evaluate.embed

    def recording(backbone, images, indices, *args, **kwargs):
        embedded.append(indices.clone())
        return embed(backbone, images, indices, *args, **kwargs)

    monkeypatch.setattr(evaluate, "embed", recording)
    train.main(["--data", str(class_tree), "--cache-dir", str(tmp_path / "cache"), "--out", str(tmp_path / "run"),
                *TINY_RUN, "--epochs", "2"])
    options = dataset.DataOptions(class_tree, tmp_path / "cache", 16, labels=6, test_fraction=0.2, val_fraction=0.2)
    _, splits = dataset.open_data(options, verbose=False)
    seen = torch.cat(embedded)
    assert len(embedded) == 4  # bank and queries, each epoch
    assert not torch.isin(seen, splits.test).any()
    assert torch.isin(splits.validation, seen).all()
    args = json.loads((tmp_path / "run" / "args.json").read_text())
    assert args["monitor_set"].startswith(f"{len(splits.validation)} validation images")


def test_no_validation_split_means_no_monitor(class_tree, tmp_path, capsys):
    """--val-fraction 0: no monitor (it would otherwise have to read the test split), said in one line."""
    train.main(["--data", str(class_tree), "--cache-dir", str(tmp_path / "cache"), "--out", str(tmp_path / "run"),
                *TINY_RUN, "--val-fraction", "0"])
    assert "no kNN monitor: --val-fraction 0" in capsys.readouterr().out
    assert runs.read_jsonl(tmp_path / "run" / "metrics.jsonl")[0]["knn_accuracy"] is None


# ---------------------------------------------------------------- the protocol version


@pytest.mark.slow
def test_runs_and_checkpoints_record_the_protocol_and_older_checkpoints_are_refused(class_tree, tmp_path, capsys):
    """args.json and siam.pt record runs.PROTOCOL; a checkpoint of an older protocol (no entry, or another
    number) is refused by classifier.py and by --resume with one line that says why and what to do."""
    out = tmp_path / "run"
    train.main(["--data", str(class_tree), "--cache-dir", str(tmp_path / "cache"), "--out", str(out), *TINY_RUN])
    recorded = json.loads((out / "args.json").read_text())
    assert recorded["protocol"] == runs.PROTOCOL
    assert recorded["environment"]["torch"] == torch.__version__ and recorded["environment"]["cpu_cores"] > 0
    assert {"python", "torchvision", "cuda", "cudnn", "device", "cpu"} <= recorded["environment"].keys()
    for name in ("siam.pt", "last.pt"):
        state = torch.load(out / name, weights_only=True)
        assert state["protocol"] == runs.PROTOCOL and state["environment"] == recorded["environment"]
        del state["protocol"]
        torch.save(state, out / name)
    capsys.readouterr()
    with pytest.raises(SystemExit) as exit:
        classifier.main(["--data", str(class_tree), "--cache-dir", str(tmp_path / "cache"), "--checkpoint",
                         str(out / "siam.pt"), "--out", str(tmp_path / "probe"), *TINY_RUN[2:]])
    error = capsys.readouterr().err
    assert exit.value.code == 2 and "evaluation protocol 1" in error and "pretrain again" in error
    with pytest.raises(SystemExit) as exit:
        train.main(["--data", str(class_tree), "--cache-dir", str(tmp_path / "cache"), "--out", str(out),
                    *TINY_RUN, "--epochs", "2", "--resume"])
    assert exit.value.code == 2 and "evaluation protocol 1" in capsys.readouterr().err


def test_check_protocol_accepts_only_the_current_one(tmp_path):
    path = tmp_path / "siam.pt"
    runs.check_protocol({"protocol": runs.PROTOCOL}, path)
    for old in ({}, {"protocol": runs.PROTOCOL - 1}):
        with pytest.raises(CheckpointError, match="pretrain again"):
            runs.check_protocol(old, path)


def committed_runs() -> list[Path]:
    return sorted(path.parent for path in (REPOSITORY / "results").rglob("args.json"))


def test_every_committed_result_was_made_under_todays_protocol():
    """Each run folder under results/ was written by code whose evaluation protocol is today's (args.json), by a
    committed version of the code (no uncommitted changes), so that no figure there predates the protocol."""
    folders = committed_runs()
    assert folders, "results/ holds no run"
    for folder in folders:
        args = json.loads((folder / "args.json").read_text())
        assert args.get("protocol") == runs.PROTOCOL, folder
        assert args["code"]["commit"] and args["code"]["dirty"] is False, folder


# ---------------------------------------------------------------- the paired comparison


def test_paired_difference_by_hand():
    """10 images only a got right, 2 only b, 8 both, 0 neither: difference 0.4, the paired standard error the
    sample std of the per-image differences over sqrt(20), McNemar's exact p = 2 P(X <= 2), X ~ Bin(12, 1/2)."""
    a = [True] * 10 + [False] * 2 + [True] * 8
    b = [False] * 10 + [True] * 2 + [True] * 8
    result = evaluate.paired_difference(a, b)
    differences = torch.tensor([1.0] * 10 + [-1.0] * 2 + [0.0] * 8, dtype=torch.float64)
    assert result["difference"] == pytest.approx(0.4)
    assert result["standard_error"] == pytest.approx((differences.std() / math.sqrt(20)).item())
    assert (result["only_a"], result["only_b"]) == (10, 2)
    assert result["mcnemar_p"] == pytest.approx(2 * (1 + 12 + 66) / 4096)
    assert result["low"] < 0.4 < result["high"]


def test_pairing_gives_a_smaller_error_than_two_independent_accuracies():
    """Two classifiers that agree on most images: the paired standard error is well below the error of the
    difference of two independent accuracies (sqrt of the summed binomial variances)."""
    generator = torch.Generator().manual_seed(0)
    b = torch.rand(2000, generator=generator) < 0.6
    a = b.clone()
    a[:200] = True  # a also gets some of b's mistakes right
    result = evaluate.paired_difference(a.tolist(), b.tolist())
    independent = math.hypot(evaluate.standard_error(result["accuracy_a"], 2000),
                             evaluate.standard_error(result["accuracy_b"], 2000))
    assert result["standard_error"] < 0.5 * independent


def test_paired_difference_over_draws_by_hand():
    """Two label draws of 3 test images: each image's correctness averaged over the draws first (a: 1, 1/2, 1/2;
    b: 1/2, 0, 1/2), then the paired difference over the images: 1/3, the sample std of (1/2, 1/2, 0) over
    sqrt(3)."""
    result = evaluate.paired_difference_over_draws([[1, 0, 1], [1, 1, 0]], [[0, 0, 1], [1, 0, 0]])
    assert result["difference"] == pytest.approx(1 / 3) and result["draws"] == 2 and result["num_test"] == 3
    assert result["standard_error"] == pytest.approx(math.sqrt(1 / 12) / math.sqrt(3))
    assert (result["accuracy_a"], result["accuracy_b"]) == pytest.approx((2 / 3, 1 / 3))


def test_repeating_a_label_draw_does_not_shrink_the_standard_error():
    """The standard error is over the test images, not over draws x images: three copies of one draw give that
    draw's own paired difference and standard error, not one sqrt(3) times smaller."""
    generator = torch.Generator().manual_seed(0)
    a, b = (torch.rand(500, generator=generator) < 0.6).tolist(), (torch.rand(500, generator=generator) < 0.5).tolist()
    once, thrice = evaluate.paired_difference(a, b), evaluate.paired_difference_over_draws([a] * 3, [b] * 3)
    assert thrice["difference"] == pytest.approx(once["difference"])
    assert thrice["standard_error"] == pytest.approx(once["standard_error"])


def test_paired_difference_of_identical_classifiers_is_zero():
    result = evaluate.paired_difference([True, False, True], [True, False, True])
    assert result["difference"] == 0 and result["standard_error"] == 0 and result["mcnemar_p"] == 1


# ---------------------------------------------------------------- the closed-form probe against scikit-learn


def gaussian_problem(num_train: int, num_test: int, dims: int, separation: float, seed: int = 0):
    generator = torch.Generator().manual_seed(seed)
    means = torch.randn(3, dims, generator=generator) * separation / (2 * dims) ** 0.5

    def draw(n):
        labels = torch.arange(n) % 3
        return torch.randn(n, dims, generator=generator) + means[labels], labels

    return (*draw(num_train), *draw(num_test))


@pytest.mark.slow
def test_fit_logistic_matches_scikit_learn():
    """At a fixed penalty lambda, fit_logistic's weights and bias are scikit-learn's multinomial
    LogisticRegression's at C = 1 / (lambda n) (the same objective, summed instead of averaged)."""
    linear_model = pytest.importorskip("sklearn.linear_model")
    features, labels, _, _ = gaussian_problem(150, 0, 20, separation=2.0)
    x, _ = evaluate.standardize(features.double(), features.double())
    for penalty in (1e-2, 1e0):
        weight, bias = evaluate.fit_logistic(x, labels, 3, penalty)
        theirs = linear_model.LogisticRegression(C=1 / (penalty * len(labels)), tol=1e-10, max_iter=10_000)
        theirs.fit(x.numpy(), labels.numpy())
        # softmax weights are defined up to a constant per feature; the penalty makes them sum to 0 over classes
        torch.testing.assert_close(weight.T, torch.from_numpy(theirs.coef_), atol=1e-4, rtol=1e-3)
        torch.testing.assert_close(bias - bias.mean(), torch.from_numpy(theirs.intercept_ - theirs.intercept_.mean()),
                                   atol=1e-4, rtol=1e-3)


@pytest.mark.parametrize("separation", [2.0, 4.0])
def test_probe_agrees_with_scikit_learns_cross_validation(separation):
    """On the same folds and penalties, scikit-learn's cross-validated logistic regression (GridSearchCV over a
    StandardScaler + LogisticRegression pipeline, scoring by accuracy: each fold standardised with its own training
    part, as logistic_probe does; LogisticRegressionCV would standardise once) reaches the same cross-validated
    accuracy at the penalty it picks, and a test accuracy within 1 point on 3,000 test images."""
    pytest.importorskip("sklearn")
    from sklearn.linear_model import LogisticRegression
    from sklearn.model_selection import GridSearchCV
    from sklearn.pipeline import make_pipeline
    from sklearn.preprocessing import StandardScaler
    train_x, train_y, test_x, test_y = gaussian_problem(150, 3000, 64, separation)
    ours = evaluate.logistic_probe(train_x, train_y, test_x, test_y, 3, seed=0)
    fold = evaluate.stratified_folds(train_y, 5, torch.Generator().manual_seed(0))
    folds = [(torch.nonzero(fold != k).flatten().numpy(), torch.nonzero(fold == k).flatten().numpy())
             for k in range(5)]
    n_fit = len(train_y) * 4 // 5  # C = 1 / (lambda n) on each fold's training part
    theirs = GridSearchCV(make_pipeline(StandardScaler(), LogisticRegression(tol=1e-8, max_iter=10_000)),
                          {"logisticregression__C": [1 / (penalty * n_fit) for penalty in evaluate.PROBE_PENALTIES]},
                          cv=folds, scoring="accuracy")
    theirs.fit(train_x.double().numpy(), train_y.numpy())
    their_accuracy = (theirs.predict(test_x.double().numpy()) == test_y.numpy()).mean()
    assert ours["cv_accuracy"] == pytest.approx(theirs.best_score_, abs=1e-9)
    assert abs(ours["test_accuracy"] - their_accuracy) < 0.01
    assert ours["test_accuracy"] > 0.6  # far above chance (1/3): the comparison is between working probes


def test_probe_chooses_by_accuracy_and_says_when_at_the_edge():
    """Signal-free features: the chosen penalty may sit anywhere, and at_edge says whether it is the first or last
    of the grid; on a clean problem an inner penalty is chosen."""
    clean = evaluate.logistic_probe(*gaussian_problem(150, 300, 16, separation=4.0), num_classes=3)
    assert clean["at_edge"] == (clean["penalty"] in (evaluate.PROBE_PENALTIES[0], evaluate.PROBE_PENALTIES[-1]))
    assert len(clean["test_predictions"]) == 300


# ---------------------------------------------------------------- the --cpu preset and the progress bars


def test_cpu_preset_sets_the_recipe_and_explicit_flags_win():
    args = train.parse_args(["--cpu"])
    assert {key: getattr(args, key) for key in train.CPU} == train.CPU
    assert train.parse_args(["--cpu", "--epochs", "3"]).epochs == 3
    assert train.parse_args([]).image_size == 150  # the GPU defaults without it


def test_zero_init_residual_is_the_default_and_can_be_turned_off():
    assert train.parse_args([]).zero_init_residual
    assert not train.parse_args(["--no-zero-init-residual"]).zero_init_residual


@pytest.mark.slow
def test_the_blur_reference_size_and_the_initialisation_reach_the_run(class_tree, tmp_path, monkeypatch):
    """train.py's views are blurred with the kernel of its --blur-reference-size: 3 taps for 32 px views scaled from
    224 px (the default), 13 taps (0.1-2 px) with the view's own side as the reference; args.json records it. The
    residual blocks' last BatchNorm scales start at 0 (a few steps leave them near it) unless
    --no-zero-init-residual (near torchvision's 1)."""
    kernels = []
    blur = augment.gaussian_blur
    monkeypatch.setattr(augment, "gaussian_blur", lambda x, sigma, kernel_size: kernels.append(kernel_size)
                        or blur(x, sigma, kernel_size))
    for reference, taps, zero_init in [(None, 3, True), (32, 13, False)]:
        kernels.clear()
        out = tmp_path / f"run-{reference}"
        flags = [] if reference is None else ["--blur-reference-size", str(reference), "--no-zero-init-residual"]
        train.main(["--data", str(class_tree), "--cache-dir", str(tmp_path / "cache"), "--out", str(out),
                    "--epochs", "1", "--batch-size", "16", "--image-size", "32", "--labels", "6", "--test-fraction",
                    "0.2", "--device", "cpu", *flags])
        assert kernels and set(kernels) == {taps}
        recorded = json.loads((out / "args.json").read_text())
        assert recorded["blur_reference_size"] == (reference or 224) and recorded["zero_init_residual"] == zero_init
        scales = torch.load(out / "siam.pt", weights_only=False)["model"]["backbone.layer1.0.bn2.weight"]
        assert (scales.abs().max() < 0.1) if zero_init else (scales.min() > 0.9)


def test_cpu_and_demo_presets_are_one_or_the_other(capsys):
    with pytest.raises(SystemExit):
        train.parse_args(["--cpu", "--demo"])
    assert "--demo and --cpu are two presets" in capsys.readouterr().err


@pytest.mark.slow
def test_tqdm_disable_hides_the_bars(monkeypatch):
    """TQDM_DISABLE=1, set before tqdm is imported as a user sets it, hides a bar the scripts show (an explicit
    disable=False used to override it); a bar they hide stays hidden without it."""
    code = "from simsiam import runs; print(runs.progress_bar(range(3), show=True).disable)"
    hidden = subprocess.run([sys.executable, "-c", code], cwd=REPOSITORY, env={**os.environ, "TQDM_DISABLE": "1"},
                            capture_output=True, text=True)
    assert hidden.stdout.strip() == "True", hidden.stderr
    monkeypatch.delenv("TQDM_DISABLE", raising=False)
    assert runs.progress_bar(range(3), show=False).disable
    assert not runs.progress_bar(range(3), show=True).disable
