"""Flags a user expects: the official script's spellings, one lr convention, no flag silently ignored, and a
console and plots a user can read."""
from __future__ import annotations

import json
import shutil

import pytest
import torch

import classifier
import plot
import train
from simsiam import runs
from simsiam.model import load_checkpoint

SMALL = ["--image-size", "32", "--labels", "6", "--test-fraction", "0.2", "--device", "cpu", "--workers", "2"]


def test_demo_with_data_is_refused(capsys):
    """--demo with a --data of its own is an argparse error naming both, not a silently ignored --data."""
    for parse_args in (train.parse_args, classifier.parse_args):
        with pytest.raises(SystemExit) as exit_info:
            parse_args(["--demo", "--data", "photos/PetImages"])
        assert exit_info.value.code == 2
        error = capsys.readouterr().err
        assert "--demo" in error and "--data" in error


@pytest.mark.parametrize("parse_args", [train.parse_args, classifier.parse_args])
def test_official_spellings(parse_args):
    """-b and --wd mean --batch-size and --weight-decay, as in the official SimSiam scripts."""
    args = parse_args(["-b", "64", "--wd", "1e-4"])
    assert (args.batch_size, args.weight_decay) == (64, 1e-4)


def test_one_lr_convention():
    """Both scripts take --lr as a base lr scaled by batch / 256, and say so in --help; --base-lr is the same
    flag in train.py."""
    for parser in (train.build_parser(), classifier.build_parser()):
        assert "lr * batch_size / 256" in " ".join(parser.format_help().split())
    assert train.parse_args(["--base-lr", "0.05"]).lr == 0.05


@pytest.mark.slow
def test_resume_from_a_path_continues_into_a_new_folder(class_tree, tmp_path, capsys):
    """--resume PATH continues another run's last.pt into a new --out, exactly as --resume in place would,
    and leaves the source run untouched."""
    common = ["--data", str(class_tree), "--cache-dir", str(tmp_path / "cache"), "-b", "16", *SMALL]
    train.main([*common, "--out", str(tmp_path / "first"), "--epochs", "1"])
    shutil.copytree(tmp_path / "first", tmp_path / "in-place")
    train.main([*common, "--out", str(tmp_path / "in-place"), "--epochs", "2", "--resume"])
    train.main([*common, "--out", str(tmp_path / "second"), "--epochs", "2", "--resume", str(tmp_path / "first")])
    assert "resumed from" in capsys.readouterr().out
    in_place = load_checkpoint(tmp_path / "in-place" / "siam.pt", "simsiam")["model"]
    continued = load_checkpoint(tmp_path / "second" / "siam.pt", "simsiam")
    assert continued["epoch"] == 2 and all(torch.equal(in_place[key], continued["model"][key]) for key in in_place)
    assert load_checkpoint(tmp_path / "first" / "siam.pt", "simsiam")["epoch"] == 1


def test_duration_reads_like_a_person_would_say_it():
    """Durations are printed in s, min or h."""
    assert [runs.duration(s) for s in (45, 192, 5400 * 2)] == ["45 s", "3.2 min", "3.0 h"]


def test_results_table_and_test_set_warning(tmp_path, capsys):
    """plot.py prints each finished classifier run with accuracy ± its standard error and test size, a row for
    the closed-form probe of a frozen run, and warns when the runs were tested on different test sets."""
    for name, backbone, mode, accuracy, fingerprint in [("a", "random", "frozen", 0.6, "x"),
                                                         ("b", "simsiam", "finetune", 0.8, "y")]:
        folder = tmp_path / name
        folder.mkdir()
        (folder / "args.json").write_text(json.dumps({"backbone": backbone, "mode": mode, "num_classes": 2,
                                                      "test_fingerprint": fingerprint}))
        final = {"event": "final", "test_accuracy": accuracy, "num_test": 100}
        if mode == "frozen":
            final["closed_form_accuracy"] = 0.5
        records = [{"epoch": 1, "train_loss": 0.7, "test_accuracy": accuracy}, final]
        (folder / "metrics.jsonl").write_text("".join(json.dumps(r) + "\n" for r in records))
    plot.main([str(tmp_path / "a"), str(tmp_path / "b"), "--out", str(tmp_path / "plots")])
    out = capsys.readouterr().out
    assert "0.600 ± 0.049" in out and "0.800 ± 0.040" in out and "closed-form probe     0.500" in out
    assert "different test sets" in out
