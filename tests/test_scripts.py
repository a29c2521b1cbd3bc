"""End to end: each script's main() with tiny settings, as a user runs it."""
from __future__ import annotations

import json

import pytest
import torch
from conftest import SHARED_PETIMAGES

import classifier
import plot
import train
from simsiam import runs
from simsiam.model import load_checkpoint

TINY = ["--image-size", "32", "--labels", "12", "--test-fraction", "0.2", "--device", "cpu", "--workers", "2"]


def run_train(tmp_path, data, *extra) -> None:
    train.main(["--data", str(data), "--cache-dir", str(tmp_path / "cache"), "--out", str(tmp_path / "simsiam"),
                "--epochs", "2", "--batch-size", "16", *TINY, *extra])


def run_classifier(tmp_path, data, name, *extra) -> str:
    out = tmp_path / name
    backbone = [] if "--random" in extra else ["--checkpoint", str(tmp_path / "simsiam" / "siam.pt")]
    classifier.main(["--data", str(data), "--cache-dir", str(tmp_path / "cache"), "--out", str(out), *backbone,
                     "--epochs", "3", "--batch-size", "6", *TINY, *extra])
    return out


@pytest.mark.slow
def test_whole_chain_on_a_class_tree(class_tree, tmp_path, capsys):
    """train -> classifier (random, SimSiam, fine-tuned) -> plot leave every promised file."""
    run_train(tmp_path, class_tree)
    records = runs.read_jsonl(tmp_path / "simsiam" / "metrics.jsonl")
    assert [r["epoch"] for r in records] == [1, 2]
    assert {"loss", "z_std", "lr", "images_per_s", "knn_accuracy"} <= set(records[0])
    assert json.loads((tmp_path / "simsiam" / "args.json").read_text())["epochs"] == 2
    outs = [run_classifier(tmp_path, class_tree, "random", "--random"),
            run_classifier(tmp_path, class_tree, "probe", "--compare", str(tmp_path / "random")),
            run_classifier(tmp_path, class_tree, "finetune", "--finetune")]
    lines = capsys.readouterr().out.strip().splitlines()
    assert lines[-1].startswith("test accuracy: 0.")
    assert any(line.startswith(f"linear probe, this run - {tmp_path / 'random'}: ") and "paired s.e." in line
               for line in lines)  # --compare
    for out in outs:
        assert len(runs.read_jsonl(out / "metrics.jsonl")) == 4  # 3 epochs and the final record
        labelled = json.loads((out / "labelled.json").read_text())
        assert len(labelled["indices"]) == 12 and len(labelled["files"]) == 12
        predictions = json.loads((out / "predictions.json").read_text())
        assert len(predictions["files"]) == len(predictions["labels"]) == len(predictions["head"]) > 0
    plot.main([str(tmp_path / name) for name in ("simsiam", "random", "probe", "finetune")]
              + ["--out", str(tmp_path / "plots")])
    assert (tmp_path / "plots" / "simsiam.png").stat().st_size > 10_000
    assert (tmp_path / "plots" / "classifier.png").stat().st_size > 10_000
    table = capsys.readouterr().out
    assert "SimSiam - random, linear probe: " in table and "SimSiam - random, closed-form probe: " in table
    assert "(probe against random)" in table and "fine-tuned:" not in table  # no random fine-tuned run to pair


@pytest.mark.slow
def test_frozen_backbone_is_bit_identical(class_tree, tmp_path):
    """After frozen training, the classifier's backbone equals the SimSiam backbone bit for bit."""
    run_train(tmp_path, class_tree)
    out = run_classifier(tmp_path, class_tree, "frozen")
    siam = load_checkpoint(tmp_path / "simsiam" / "siam.pt", "simsiam")["model"]
    trained = load_checkpoint(out / "classifier.pt", "classifier")["model"]
    backbone_keys = [key for key in trained if key.startswith("backbone.")]
    assert backbone_keys and all(torch.equal(trained[key], siam[key]) for key in backbone_keys)
    finetuned = run_classifier(tmp_path, class_tree, "finetuned", "--finetune")
    moved = load_checkpoint(finetuned / "classifier.pt", "classifier")["model"]
    assert not all(torch.equal(moved[key], siam[key]) for key in backbone_keys)


class Killed(Exception):
    """Stands for a process killed at that point: nothing catches it."""


@pytest.mark.slow
def test_resumed_run_equals_uninterrupted(class_tree, tmp_path, monkeypatch):
    """A run stopped after epoch 1 and resumed ends with exactly the weights of an uninterrupted run."""
    run_train(tmp_path, class_tree, "--epochs", "3")
    uninterrupted = load_checkpoint(tmp_path / "simsiam" / "siam.pt", "simsiam")["model"]

    resumed_dir = tmp_path / "resumed"
    resumed_dir.mkdir()
    original_seed = train.epoch_seed

    def stop_at_epoch_two(seed, epoch, rank=0):
        if epoch == 1:
            raise Killed  # as if killed after epoch 1's checkpoint
        return original_seed(seed, epoch, rank)

    args = ["--epochs", "3", "--save-every", "1", "--out", str(resumed_dir)]
    monkeypatch.setattr(train, "epoch_seed", stop_at_epoch_two)
    with pytest.raises(Killed):
        run_train(tmp_path, class_tree, *args)
    monkeypatch.setattr(train, "epoch_seed", original_seed)
    run_train(tmp_path, class_tree, *args, "--resume")
    resumed = load_checkpoint(resumed_dir / "siam.pt", "simsiam")["model"]
    assert all(torch.equal(resumed[key], uninterrupted[key]) for key in uninterrupted)
    assert [r["epoch"] for r in runs.read_jsonl(resumed_dir / "metrics.jsonl")] == [1, 2, 3]


def test_classifier_refuses_a_checkpoint_with_another_test_split(class_tree, tmp_path, capsys):
    """A backbone pretrained with another split has seen some of these test images: refused, exit 2."""
    run_train(tmp_path, class_tree)
    with pytest.raises(SystemExit) as exit_info:
        run_classifier(tmp_path, class_tree, "other", "--split-seed", "1")
    assert exit_info.value.code == 2 and " test images were among the " in capsys.readouterr().err


def test_missing_data_folder_is_one_line_exit_2(tmp_path, capsys):
    """No data: one line naming the download and --demo, exit status 2."""
    with pytest.raises(SystemExit) as exit_info:
        train.main(["--data", str(tmp_path / "missing"), "--cache-dir", str(tmp_path / "cache"),
                    "--out", str(tmp_path / "out")])
    error = capsys.readouterr().err.strip()
    assert exit_info.value.code == 2 and len(error.splitlines()) == 1
    assert "--demo" in error and "kagglecatsanddogs" in error


def test_classifier_evaluates_on_another_folder(class_tree, tmp_path):
    """--test-data evaluates on every image of another labelled folder, classes matched by name, less the photos
    the classifier trains on (copied there from its labelled images)."""
    other = tmp_path / "other"
    for name in ("Dog", "Cat"):
        for i in range(4):
            (other / name).mkdir(parents=True, exist_ok=True)
            (other / name / f"{i}.jpg").write_bytes((class_tree / name / f"{i}.jpg").read_bytes())
    out = run_classifier(tmp_path, class_tree, "other-test", "--random", "--test-data", str(other))
    labelled = set(json.loads((out / "labelled.json").read_text())["files"])
    copied_labels = len(labelled & {f"{name}/{i}.jpg" for name in ("Dog", "Cat") for i in range(4)})
    assert runs.read_jsonl(out / "metrics.jsonl")[-1]["num_test"] == 8 - copied_labels


@pytest.mark.slow
@pytest.mark.skipif(not SHARED_PETIMAGES.is_dir(), reason="../shared/data not present")
def test_chain_on_real_photos(tmp_path):
    """The chain on a few hundred of the real cat and dog JPEGs."""
    args = ["--limit", "300", "--labels", "40"]
    train.main(["--data", str(SHARED_PETIMAGES), "--cache-dir", str(tmp_path / "cache"), "--out",
                str(tmp_path / "simsiam"), "--epochs", "1", "--batch-size", "64", "--image-size", "32",
                "--device", "cpu", *args])
    classifier.main(["--data", str(SHARED_PETIMAGES), "--cache-dir", str(tmp_path / "cache"), "--out",
                     str(tmp_path / "probe"), "--checkpoint", str(tmp_path / "simsiam" / "siam.pt"),
                     "--epochs", "2", "--batch-size", "20", "--image-size", "32", "--device", "cpu", *args])
    final = runs.read_jsonl(tmp_path / "probe" / "metrics.jsonl")[-1]
    assert final["num_test"] == 30 and 0 <= final["test_accuracy"] <= 1


@pytest.mark.slow
def test_resume_warns_about_changed_settings(class_tree, tmp_path, capsys):
    """Resuming with another recipe (here more epochs) continues, saying what changed; a setting newer than the
    checkpoint (here --blur-reference-size, left out of its args) counts as the default the code of then had."""
    run_train(tmp_path, class_tree, "--epochs", "1")
    last = tmp_path / "simsiam" / "last.pt"
    state = torch.load(last, weights_only=True)
    del state["args"]["blur_reference_size"]
    torch.save(state, last)
    run_train(tmp_path, class_tree, "--epochs", "2", "--resume")
    out = capsys.readouterr().out
    assert "resumed from" in out and "warning: resuming with settings" in out and "'epochs': (1, 2)" in out
    assert "blur_reference_size" not in out
    assert [r["epoch"] for r in runs.read_jsonl(tmp_path / "simsiam" / "metrics.jsonl")] == [1, 2]


def test_runs_record_the_code_version(class_tree, tmp_path):
    """args.json and siam.pt name the git commit of the code and whether the tree had changes."""
    run_train(tmp_path, class_tree, "--epochs", "1")
    recorded = json.loads((tmp_path / "simsiam" / "args.json").read_text())["code"]
    assert recorded == runs.code_version() == load_checkpoint(tmp_path / "simsiam" / "siam.pt", "simsiam")["code"]
    assert recorded["commit"] is None or len(recorded["commit"]) == 40


def test_demo_preset_replaces_defaults_and_explicit_flags_win():
    """--demo applies its preset to the defaults; a flag given on the command line still wins; --help shows both."""
    assert train.parse_args([]).epochs == train.build_parser().get_default("epochs")
    assert train.parse_args(["--demo"]).epochs == train.DEMO["epochs"]
    assert train.parse_args(["--demo", "--epochs", "3"]).epochs == 3
    help_text = train.build_parser().format_help()
    assert f"default: 200; --demo: {train.DEMO['epochs']}" in " ".join(help_text.split())
