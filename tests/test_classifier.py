"""classifier.py's protocol: each optimizer group at its own cosine-decayed lr, the input resolution and cache
that follow the checkpoint, and the closed-form probe beside the linear one. Tiny runs of main() on CPU."""
from __future__ import annotations

import json
import math

import pytest
import torch
from conftest import write_class_tree

import classifier
import train
from simsiam import dataset, devices, evaluate, runs, schedule
from simsiam.model import Classifier, load_checkpoint

# 3 classes x 20 images: 4 test and 4 labelled images per class, 2 steps of 6 per epoch
SPLITS = ["--labels", "12", "--test-fraction", "0.2"]
FAST = ["--epochs", "3", "--batch-size", "6", "--device", "cpu", "--workers", "2", *SPLITS]


def run_classifier(data, out, *extra) -> list[dict]:
    """classifier.main on `data` with FAST settings and a cache beside it; the records of its metrics.jsonl."""
    classifier.main(["--data", str(data), "--cache-dir", str(data.parent / "cache"), "--out", str(out), *FAST,
                     *extra])
    return runs.read_jsonl(out / "metrics.jsonl")


@pytest.fixture(scope="module")
def pretrained(module_folder):
    """(class tree, siam.pt): 3 classes x 20 JPEGs and a SimSiam checkpoint trained on them for one epoch at
    32 px from a 40 px cache (not the default 8/7 of 32, which is 37)."""
    root = module_folder
    data = write_class_tree(root / "PetImages")
    train.main(["--data", str(data), "--cache-dir", str(root / "cache"), "--out", str(root / "simsiam"),
                "--epochs", "1", "--batch-size", "16", "--image-size", "32", "--cache-size", "40", "--device", "cpu",
                "--workers", "2", *SPLITS])
    return data, root / "simsiam" / "siam.pt"


def test_each_group_follows_its_own_cosine():
    """With --finetune --backbone-lr-factor 0.1, set_lr puts the backbone at 0.1 x the head's lr at every step,
    and the head's lr is --lr x (1 + cos(pi t / T)) / 2."""
    args = classifier.parse_args(["--finetune", "--lr", "0.02", "--backbone-lr-factor", "0.1"])
    optimizer = classifier.make_optimizer(Classifier(3), args, batch_size=256)  # peak lr = --lr at batch 256
    total_steps = 10
    for step in (0, 1, 5, 9):
        lrs = schedule.set_lr(optimizer, step, total_steps)
        assert lrs["head"] == pytest.approx(0.02 * (1 + math.cos(math.pi * step / total_steps)) / 2)
        assert lrs["backbone"] == pytest.approx(0.1 * lrs["head"])
        assert [group["lr"] for group in optimizer.param_groups] == [lrs["head"], lrs["backbone"]]


def test_finetune_logs_the_backbone_lr_at_its_factor(class_tree, tmp_path):
    """A fine-tuning run with --backbone-lr-factor 0.1 trains the backbone at 0.1 x the head's lr: metrics.jsonl
    logs both, at the last step of each epoch, on the cosine from --lr."""
    records = run_classifier(class_tree, tmp_path / "finetune", "--random", "--image-size", "32", "--finetune",
                             "--backbone-lr-factor", "0.1")
    epochs = [record for record in records if "epoch" in record]
    total_steps = 3 * 2
    for record in epochs:
        last_step = record["epoch"] * 2 - 1
        peak_lr = classifier.build_parser().get_default("lr") * 6 / 256  # base lr x batch / 256
        assert record["lr"] == pytest.approx(peak_lr * schedule.cosine_decay(last_step, total_steps))
        assert record["backbone_lr"] == pytest.approx(0.1 * record["lr"])


@pytest.mark.slow
def test_resolution_follows_the_checkpoint(pretrained, tmp_path, capsys):
    """Without --image-size and --cache-size, a SimSiam backbone is probed at the image size and from the cache
    size it was pretrained with (32 px from 40 px), and args.json records them."""
    data, checkpoint = pretrained
    run_classifier(data, tmp_path / "probe", "--checkpoint", str(checkpoint))
    recorded = json.loads((tmp_path / "probe" / "args.json").read_text())
    assert (recorded["image_size"], recorded["cache_size"]) == (32, 40)
    out = capsys.readouterr().out
    assert "(pretrained at 32 px) + linear head at 32 px from a 40 px cache" in out and "note: the backbone" not in out


def test_explicit_image_size_wins_with_a_note(pretrained, tmp_path, capsys):
    """--image-size 24 over a 32 px backbone: probed at 24 px from the usual 8/7 cache (28 px), with a note."""
    data, checkpoint = pretrained
    run_classifier(data, tmp_path / "probe", "--checkpoint", str(checkpoint), "--image-size", "24")
    recorded = json.loads((tmp_path / "probe" / "args.json").read_text())
    assert (recorded["image_size"], recorded["cache_size"]) == (24, dataset.default_cache_size(24)) == (24, 28)
    assert "note: the backbone was pretrained at 32 px and is evaluated at 24 px" in capsys.readouterr().out


@pytest.mark.parametrize("flags, image_size", [(["--random"], 150), (["--random", "--demo"], 32),
                                               (["--random", "--image-size", "64"], 64)])
def test_resolution_without_a_checkpoint(flags, image_size):
    """With --random there is no checkpoint to follow: 150 px, 32 px under --demo, or the flag; the cache 8/7."""
    resolved = classifier.resolution(classifier.parse_args(flags), None)
    assert resolved == (image_size, dataset.default_cache_size(image_size))


def test_frozen_run_reports_the_closed_form_probe(class_tree, tmp_path, capsys):
    """A frozen run's final record holds the closed-form probe, cross-validated on the 4 labelled images per class
    (4 folds), and it is printed on the line before `test accuracy: 0.xxxx`."""
    run_classifier(class_tree, tmp_path / "frozen", "--random", "--image-size", "32")
    final = runs.final_record(tmp_path / "frozen" / "metrics.jsonl")
    assert 0 <= final["closed_form_accuracy"] <= 1 and 0 <= final["closed_form_cv_accuracy"] <= 1
    assert final["closed_form_penalty"] > 0 and final["closed_form_folds"] == 4
    *_, closed_form_line, last_line = capsys.readouterr().out.strip().splitlines()
    assert closed_form_line.startswith("closed-form probe (logistic regression, penalty ")
    assert closed_form_line.endswith(f"by 4-fold CV on the labels): {final['closed_form_accuracy']:.4f}")
    assert last_line.startswith(f"test accuracy: {final['test_accuracy']:.4f} ± ")


def test_finetuned_run_has_no_closed_form_probe(class_tree, tmp_path, capsys):
    """With --finetune the closed-form probe would measure the backbone before fine-tuning: it is not fitted."""
    run_classifier(class_tree, tmp_path / "finetune", "--random", "--image-size", "32", "--finetune")
    final = runs.final_record(tmp_path / "finetune" / "metrics.jsonl")
    assert not any(key.startswith("closed_form") for key in final)
    assert "closed-form" not in capsys.readouterr().out


def test_closed_form_probe_fits_the_labelled_images(class_tree, tmp_path):
    """The closed-form probe is evaluate.logistic_probe on the evaluation view of the images in labelled.json,
    tested on the held-out split: refitting it on the saved backbone gives the recorded accuracy."""
    run_classifier(class_tree, tmp_path / "frozen", "--random", "--image-size", "32")
    final = runs.final_record(tmp_path / "frozen" / "metrics.jsonl")
    labelled = torch.tensor(json.loads((tmp_path / "frozen" / "labelled.json").read_text())["indices"])
    args = classifier.parse_args(["--data", str(class_tree), "--cache-dir", str(tmp_path / "cache"), "--random",
                                  "--image-size", "32", *FAST])
    image_size, cache_size = classifier.resolution(args, None)
    data, splits = dataset.open_data(dataset.DataOptions.from_args(args, image_size=image_size, cache_size=cache_size),
                                     verbose=False)
    model = Classifier(len(data.classes))
    model.load_state_dict(load_checkpoint(tmp_path / "frozen" / "classifier.pt", "classifier")["model"])
    runtime = devices.make_runtime("cpu", "fp32")
    features = evaluate.embed(model.backbone, data.images, labelled, 32, runtime)  # (12, 512)
    test_features = evaluate.embed(model.backbone, data.images, splits.test, 32, runtime)  # (12, 512)
    refit = evaluate.logistic_probe(features, data.labels[labelled], test_features, data.labels[splits.test],
                                    len(data.classes))
    assert refit["test_accuracy"] == pytest.approx(final["closed_form_accuracy"])
