"""Classes of failure an adversarial user finds, each fixed where it is owned: --overwrite never deletes before
every check has passed, a checkpoint's entries are checked for their form, settings that cannot work are refused
before any work, plot.py skips what it did not write, a full disk keeps the previous checkpoint, and file names
that are not UTF-8 go through every script."""
from __future__ import annotations

import errno
import json
import os
import sys
from pathlib import Path

import pytest
import torch

import classifier
import model
import pictures
import plot
import predict
import train
from conftest import write_image

SMALL = ["--image-size", "32", "--labels", "6", "--test-fraction", "0.2", "--device", "cpu", "--workers", "2"]


def train_args(data: Path, tmp_path: Path, out: str = "run", *extra: str) -> list[str]:
    return ["--data", str(data), "--cache-dir", str(tmp_path / "cache"), "--out", str(tmp_path / out),
            "--epochs", "1", "--batch-size", "16", *SMALL, *extra]


def classifier_args(data: Path, tmp_path: Path, out: str, *extra: str) -> list[str]:
    return ["--data", str(data), "--cache-dir", str(tmp_path / "cache"), "--out", str(tmp_path / out),
            "--epochs", "1", "--batch-size", "6", *SMALL, *extra]


def refused(main, argv: list[str], capsys) -> str:
    """The one error line (after any progress bar) of a run refused with exit 2."""
    capsys.readouterr()
    with pytest.raises(SystemExit) as stop:
        main(argv)
    error = capsys.readouterr().err.splitlines()[-1]
    assert stop.value.code == 2 and error.startswith("error: "), error
    return error


def contents(folder: Path) -> dict[str, bytes]:
    return {path.name: path.read_bytes() for path in sorted(folder.iterdir())}


# ---------------------------------------------------------------- --overwrite


def test_overwrite_with_a_missing_data_folder_keeps_the_old_run(class_tree, tmp_path, capsys):
    """train.py --data <a typo> --overwrite fails on the data and leaves the previous run's files as they were."""
    train.main(train_args(class_tree, tmp_path))
    before = contents(tmp_path / "run")
    refused(train.main, train_args(tmp_path / "no-such-folder", tmp_path, "run", "--overwrite"), capsys)
    assert contents(tmp_path / "run") == before


def test_classifier_overwrite_with_a_missing_checkpoint_keeps_the_old_run(class_tree, tmp_path, capsys):
    """classifier.py --overwrite with a checkpoint that does not exist: refused, and classifier.pt (what
    predict.py uses) and the other files of the run are still there, unchanged."""
    classifier.main(classifier_args(class_tree, tmp_path, "probe", "--random"))
    before = contents(tmp_path / "probe")
    error = refused(classifier.main, classifier_args(class_tree, tmp_path, "probe", "--overwrite", "--checkpoint",
                                                     str(tmp_path / "missing.pt")), capsys)
    assert "no such checkpoint file" in error and contents(tmp_path / "probe") == before


def test_a_failed_command_leaves_no_run_folder(class_tree, tmp_path, capsys):
    """A run refused before its first step leaves no empty run folder behind."""
    refused(train.main, train_args(tmp_path / "no-such-folder", tmp_path, "new"), capsys)
    refused(classifier.main, classifier_args(class_tree, tmp_path, "new-probe", "--checkpoint",
                                             str(tmp_path / "missing.pt")), capsys)
    assert not (tmp_path / "new").exists() and not (tmp_path / "new-probe").exists()


def test_overwrite_replaces_the_run_once_it_starts(class_tree, tmp_path):
    """--overwrite that gets going replaces the old run: one run's records in metrics.jsonl, not two."""
    train.main(train_args(class_tree, tmp_path))
    train.main(train_args(class_tree, tmp_path, "run", "--overwrite"))
    lines = (tmp_path / "run" / "metrics.jsonl").read_text().splitlines()
    assert [json.loads(line)["epoch"] for line in lines] == [1]


# ---------------------------------------------------------------- a checkpoint's form


CORRUPTIONS = {
    "args": lambda state: {**state, "args": list(state["args"])},
    "image_size": lambda state: {**state, "args": {k: v for k, v in state["args"].items() if k != "image_size"}},
    "split": lambda state: {**state, "split": {}},
    "optimizer": lambda state: {**state, "optimizer": {**state["optimizer"],
                                                       "param_groups": state["optimizer"]["param_groups"][:1]}},
    "rng": lambda state: {**state, "rng": state["rng"][:100]},
    "epoch": lambda state: {**state, "epoch": "1"},
}


@pytest.mark.parametrize("entry", CORRUPTIONS)
def test_a_malformed_last_pt_is_refused_naming_the_entry(class_tree, tmp_path, capsys, entry):
    """A last.pt whose args is a list, lacks image_size, has an empty split record, an optimizer state with other
    groups, an RNG state of another size or a string epoch: --resume refuses it in one line naming the entry."""
    train.main(train_args(class_tree, tmp_path, "run", "--epochs", "1"))
    last = tmp_path / "run" / "last.pt"
    torch.save(CORRUPTIONS[entry](torch.load(last, weights_only=True)), last)
    error = refused(train.main, train_args(class_tree, tmp_path, "run", "--epochs", "2", "--resume"), capsys)
    assert entry in error


@pytest.mark.parametrize("entry", ["args", "image_size"])
def test_a_malformed_siam_pt_is_refused_by_the_classifier(class_tree, tmp_path, capsys, entry):
    """classifier.py refuses a siam.pt whose args is not a record of the pretraining's arguments, naming it."""
    train.main(train_args(class_tree, tmp_path))
    siam = tmp_path / "run" / "siam.pt"
    torch.save(CORRUPTIONS[entry](torch.load(siam, weights_only=True)), siam)
    error = refused(classifier.main, classifier_args(class_tree, tmp_path, "probe", "--checkpoint", str(siam)), capsys)
    assert entry in error


# ---------------------------------------------------------------- settings that cannot work


def test_too_few_labels_for_the_classes_are_refused_first(class_tree, tmp_path, capsys):
    """--labels 1 for three classes: refused in one line naming the smallest that works, before any training (the
    cache is built first: the classes are known once the files are decoded, some may be unusable)."""
    error = refused(classifier.main, classifier_args(class_tree, tmp_path, "probe", "--random", "--labels", "1"),
                    capsys)
    assert "--labels 3" in error and not (tmp_path / "probe").exists()


def test_a_step_larger_than_memory_is_refused_before_the_cache_is_built(class_tree, tmp_path, capsys):
    """--image-size 4096 at batch 16 cannot fit in this machine's memory: refused before any decoding, with the
    batch size that would fit."""
    error = refused(train.main, train_args(class_tree, tmp_path, "big", "--image-size", "4096"), capsys)
    assert "memory" in error and "--batch-size" in error
    assert not (tmp_path / "cache").exists() or not any((tmp_path / "cache").iterdir())


# ---------------------------------------------------------------- plot.py reads what it did not write


def test_plot_skips_records_it_did_not_write(class_tree, tmp_path, capsys):
    """Strings where numbers belong, a final record without num_test, an args.json that is a list: each run is
    skipped with one warning naming its file and the field, and the good runs are still plotted."""
    classifier.main(classifier_args(class_tree, tmp_path, "runs/good", "--random"))
    for name, args_text, records in [
            ("strings", None, [{"epoch": 1, "train_loss": "high", "test_accuracy": 0.5}]),
            ("no-num-test", None, [{"epoch": 1, "train_loss": 0.5}, {"event": "final", "test_accuracy": 0.5}]),
            ("list-args", "[1, 2]", [{"epoch": 1, "loss": 0.1}])]:
        folder = tmp_path / "runs" / name
        folder.mkdir(parents=True)
        args = json.loads((tmp_path / "runs" / "good" / "args.json").read_text())
        (folder / "args.json").write_text(args_text or json.dumps(args))
        (folder / "metrics.jsonl").write_text("".join(json.dumps(r) + "\n" for r in records))
    capsys.readouterr()
    plot.main([str(path) for path in sorted((tmp_path / "runs").iterdir())] + ["--out", str(tmp_path / "plots")])
    out = capsys.readouterr().out
    assert "strings" in out and "train_loss" in out
    assert "no-num-test" in out and "num_test" in out
    assert "list-args" in out and "args.json" in out
    assert (tmp_path / "plots" / "classifier.png").is_file()


# ---------------------------------------------------------------- a full disk


def test_a_full_disk_while_saving_keeps_the_previous_checkpoint(class_tree, tmp_path, capsys, monkeypatch):
    """ENOSPC while last.pt is written: one line saying where the previous checkpoint is and how much space the
    new one needs; the previous last.pt is intact."""
    train.main(train_args(class_tree, tmp_path, "run", "--save-every", "1"))
    before = (tmp_path / "run" / "last.pt").read_bytes()
    real_save = torch.save

    def full(state, file, *args, **kwargs):
        real_save(state, file, *args, **kwargs)
        raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))

    monkeypatch.setattr(model.torch, "save", full)
    error = refused(train.main, train_args(class_tree, tmp_path, "run", "--epochs", "2", "--resume"), capsys)
    assert "last.pt" in error and "MB" in error and os.strerror(errno.ENOSPC) in error
    assert (tmp_path / "run" / "last.pt").read_bytes() == before
    assert not [path for path in (tmp_path / "run").iterdir() if path.name.endswith(".tmp")]


# ---------------------------------------------------------------- names that are not UTF-8


@pytest.mark.skipif(sys.platform != "linux", reason="needs a file system that takes any bytes in a name")
def test_names_that_are_not_utf8_go_through_every_script(tmp_path, capsys):
    """A Latin-1 photo name (caf\\xe9.jpg) and a Latin-1 class folder: train, resume, classifier, plot, pictures
    and predict all run, and what they print, write to JSON and store in checkpoints names them."""
    root = tmp_path / "Pets"
    for c, folder in enumerate([b"Cat", b"Chi\xe9n"]):
        for i in range(12):
            name = b"caf\xe9-%d.jpg" % i if i < 2 else b"%d.jpg" % i
            write_image(Path(os.fsdecode(os.path.join(os.fsencode(root), folder, name))), seed=100 * c + i)
    data = ["--data", str(root), "--cache-dir", str(tmp_path / "cache"), *SMALL[:2], "--labels", "4",
            "--test-fraction", "0.25", "--device", "cpu", "--workers", "2"]
    train.main([*data, "--out", str(tmp_path / "runs" / "simsiam"), "--epochs", "1", "--batch-size", "8"])
    train.main([*data, "--out", str(tmp_path / "runs" / "simsiam"), "--epochs", "2", "--batch-size", "8",
                "--resume"])
    classifier.main([*data, "--out", str(tmp_path / "runs" / "probe"), "--checkpoint",
                     str(tmp_path / "runs" / "simsiam" / "siam.pt"), "--epochs", "1", "--batch-size", "4"])
    plot.main([str(tmp_path / "runs" / "simsiam"), str(tmp_path / "runs" / "probe"), "--out", str(tmp_path / "plots")])
    pictures.main([*data, "--checkpoint", str(tmp_path / "runs" / "simsiam" / "siam.pt"), "--out",
                   str(tmp_path / "plots"), "--queries", "2", "--k", "2"])
    capsys.readouterr()
    predict.main([str(root), "--checkpoint", str(tmp_path / "runs" / "probe" / "classifier.pt")])
    out = capsys.readouterr().out
    assert "caf\\xe9-0.jpg" in out and "Chi\\xe9n" in out  # printed with the odd byte shown, not a crash
    labelled = json.loads((tmp_path / "runs" / "probe" / "labelled.json").read_text())
    assert sorted(labelled["classes"]) == sorted(["Cat", os.fsdecode(b"Chi\xe9n")])


# ---------------------------------------------------------------- the experiments' own flags


def test_experiment_flags_that_cannot_work_are_refused(tmp_path, capsys):
    """Two equal label seeds (two runs racing for one folder), --parallel 0, and a --runs or --results that names
    an existing file: each refused in one line, exit 2, before any run starts."""
    from experiments import headline, label_efficiency

    for argv in (["--tiny", "--label-seeds", "0", "0"], ["--tiny", "--parallel", "0"]):
        with pytest.raises(SystemExit) as stop:
            headline.parse_args(argv)
        assert stop.value.code == 2
    with pytest.raises(SystemExit) as stop:
        label_efficiency.parse_args(["--tiny", "--parallel", "0"])
    assert stop.value.code == 2
    taken = tmp_path / "a-file"
    taken.write_text("")
    for main, flag in [(headline.main, "--runs"), (headline.main, "--results"), (label_efficiency.main, "--runs")]:
        error = refused(main, ["--tiny", "--runs", str(tmp_path / "runs"), "--results", str(tmp_path / "results"),
                               flag, str(taken)], capsys)
        assert flag in error and str(taken) in error
