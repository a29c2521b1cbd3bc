"""Inputs that were silently dropped or misread: photo suffixes, linked folders, photos beside class folders, a
cache below the image size, pictures written into the data, a damaged classifier, a folder too small for the
batch. Each ends in a correct run or one clear line with exit 2."""
from __future__ import annotations

import errno
import os
import subprocess
import sys
import tempfile
from pathlib import Path

import pytest
import torch
from conftest import write_image
from PIL import Image

import bench
import pictures
import plot
import predict
import train
from simsiam import cache, dataset, decode, runs
from simsiam.model import CheckpointError, Classifier, load_checkpoint, save_checkpoint


def test_every_jpeg_suffix_is_read_and_an_unreadable_format_says_why(tmp_path):
    """.jfif and .jpe are JPEGs and are read; a HEIC photo that Pillow cannot decode is listed and skipped with
    its reason, never ignored without a word."""
    for name in ("a.jfif", "b.jpe", "c.jpg"):
        write_image(tmp_path / "Cat" / name, seed=len(name), format="JPEG")
    (tmp_path / "Cat" / "d.heic").write_bytes(b"\x00\x00\x00\x18ftypheic" + bytes(64))
    files, _ = dataset.image_tree(tmp_path)
    assert sorted(path.name for path in files) == ["a.jfif", "b.jpe", "c.jpg", "d.heic"]
    with pytest.raises(Image.UnidentifiedImageError) as error:
        decode.square(tmp_path / "Cat" / "d.heic", 16)
    assert "HEIC photo that this Pillow cannot decode" in decode.failure_kind(tmp_path / "Cat" / "d.heic", error.value)


def test_linked_folders_are_read_once_and_a_link_loop_ends(tmp_path):
    """A class folder's linked sub-folder is read (not dropped); a link back to an ancestor (a loop) and a second
    link to the same folder add nothing twice."""
    outside = tmp_path / "elsewhere"
    write_image(outside / "far.jpg", seed=1)
    write_image(tmp_path / "Pets" / "Cat" / "near.jpg", seed=2)
    os.symlink(outside, tmp_path / "Pets" / "Cat" / "linked")
    os.symlink(outside, tmp_path / "Pets" / "Cat" / "linked-again")
    os.symlink(tmp_path / "Pets" / "Cat", tmp_path / "Pets" / "Cat" / "loop")
    files, unreadable = dataset.image_tree(tmp_path / "Pets" / "Cat")
    assert sorted(path.name for path in files) == ["far.jpg", "near.jpg"] and not unreadable


def test_photos_beside_class_folders_are_not_left_without_a_word(tmp_path):
    """Photos loose beside year folders (ROOT/IMG_1.jpg, ROOT/2019/, ROOT/2020/): the sub-folders would be classes
    and the loose photos unlabelled, so it is refused, offering --unlabelled; with it, every photo is read."""
    for folder in ("2019", "2020"):
        write_image(tmp_path / "photos" / folder / "x.jpg", seed=len(folder))
    write_image(tmp_path / "photos" / "IMG_1.jpg", seed=9)
    with pytest.raises(dataset.DataError, match="1 photos .* beside its sub-folders.*--unlabelled"):
        dataset.find_images(tmp_path / "photos")
    assert len(dataset.find_images(tmp_path / "photos", unlabelled=True)[0]) == 3


def test_a_cache_below_the_image_size_is_refused(class_tree, tmp_path):
    options = dataset.DataOptions(class_tree, tmp_path / "cache", 32, cache_size=24)
    with pytest.raises(dataset.DataError, match="--cache-size 24 is below --image-size 32"):
        dataset.open_data(options, verbose=False)
    assert not (tmp_path / "cache").exists()


def test_pictures_never_write_into_the_data(class_tree, tmp_path, capsys):
    """pictures.py --out inside a class folder would add its PNGs to the photos: refused before any work."""
    with pytest.raises(SystemExit) as stop:
        pictures.main(["--data", str(class_tree), "--checkpoint", str(tmp_path / "siam.pt"),
                       "--out", str(class_tree / "Cat" / "plots")])
    assert stop.value.code == 2 and "lies inside --data" in capsys.readouterr().err
    assert not (class_tree / "Cat" / "plots").exists()


@pytest.mark.parametrize("damage, message", [("classes", "distinct class names"), ("nan", "non-finite weights")])
def test_a_damaged_classifier_predicts_nothing(tmp_path, capsys, damage, message):
    """classifier.pt with two classes of one name, or a NaN in its head: one line, exit 2, no predictions."""
    model = Classifier(2)
    if damage == "nan":
        next(model.head.parameters()).data.view(-1)[0] = float("nan")
    save_checkpoint(tmp_path / "classifier.pt", "classifier", model,
                    classes=["Cat", "Cat"] if damage == "classes" else ["Cat", "Dog"],
                    args={"image_size": 32, "cache_size": 36})
    write_image(tmp_path / "photo.jpg", seed=3)
    with pytest.raises(SystemExit) as stop:
        predict.main(["--checkpoint", str(tmp_path / "classifier.pt"), str(tmp_path / "photo.jpg"), "--device", "cpu"])
    captured = capsys.readouterr()
    assert stop.value.code == 2 and message in captured.err and "photo.jpg" not in captured.out


def test_a_small_folder_is_offered_a_batch_size_that_fits(tmp_path, capsys):
    """200 loose photos with the default batch of 256: refused, naming a batch size that fits (at least 4 steps an
    epoch, a power of two); that batch size then runs."""
    assert [train.fitting_batch_size(n, 1) for n in (200, 24, 3, 1000)] == [32, 4, 1, 128]
    assert train.fitting_batch_size(200, 4) == 32 and train.fitting_batch_size(10, 4) == 4
    for i in range(24):
        write_image(tmp_path / "mine" / f"IMG_{i}.jpg", seed=i)
    common = ["--data", str(tmp_path / "mine"), "--cache-dir", str(tmp_path / "cache"), "--image-size", "32",
              "--device", "cpu", "--epochs", "1", "--out", str(tmp_path / "run")]
    with pytest.raises(SystemExit) as stop:
        train.main(common)
    error = capsys.readouterr().err
    assert stop.value.code == 2 and "not exceed the 24 pretraining images: pass --batch-size 4" in error
    train.main([*common, "--batch-size", "4"])
    assert (tmp_path / "run" / "siam.pt").is_file()
    assert torch.load(tmp_path / "run" / "siam.pt", weights_only=True)["args"]["batch_size"] == 4


def test_a_closed_pipe_ends_quietly(tmp_path):
    """predict.py | head: the reader closes the pipe after a line; no traceback, the SIGPIPE status."""
    script = ("import sys; from simsiam import cli\n"
              "@cli.reports_errors\n"
              "def main(argv=None):\n"
              "    for i in range(100000): print('a line of predictions', i)\n"
              "main()\n")
    finished = subprocess.run(f"{sys.executable} -c \"{script}\" | head -1", shell=True, capture_output=True,
                              text=True, cwd=Path(__file__).resolve().parents[1], timeout=120)
    assert finished.stdout == "a line of predictions 0\n" and "Traceback" not in finished.stderr, finished.stderr


def test_no_home_folder_still_gives_a_cache_folder(monkeypatch):
    """HOME unset and no passwd entry (Path.home() fails): the cache goes to a folder of the user's in the
    temporary directory instead of every script failing at start-up."""
    monkeypatch.delenv("XDG_CACHE_HOME", raising=False)
    monkeypatch.setattr(Path, "home", classmethod(lambda cls: (_ for _ in ()).throw(RuntimeError("no home"))))
    assert cache.default_cache_dir().parent == Path(tempfile.gettempdir())


def test_a_run_folder_given_as_checkpoint_names_the_file_to_pass(tmp_path):
    (tmp_path / "run").mkdir()
    (tmp_path / "run" / "siam.pt").write_bytes(b"")
    with pytest.raises(CheckpointError, match=r"is a folder, not a checkpoint file: pass .*run/siam\.pt"):
        load_checkpoint(tmp_path / "run", "simsiam")
    with pytest.raises(CheckpointError, match="pass the classifier.pt of a classifier run"):
        load_checkpoint(tmp_path / "run", "classifier")


def test_a_full_disk_ends_in_one_line_and_keeps_the_run_it_replaces(class_tree, tmp_path, monkeypatch, capsys):
    """No space left at any write (here metrics.jsonl, at the first epoch's end): one line naming the file, exit
    2, and the run that --overwrite was replacing is back as it was. Other OS errors still show their traceback."""
    common = ["--data", str(class_tree), "--cache-dir", str(tmp_path / "cache"), "--out", str(tmp_path / "run"),
              "--epochs", "1", "--batch-size", "16", "--image-size", "32", "--labels", "6", "--device", "cpu"]
    train.main(common)
    before = {path.name: path.read_bytes() for path in (tmp_path / "run").iterdir() if path.name != ".lock"}

    def full(self, **record):
        raise OSError(errno.ENOSPC, "No space left on device", str(self.path))
    monkeypatch.setattr(runs.Metrics, "log", full)
    capsys.readouterr()
    with pytest.raises(SystemExit) as stop:
        train.main([*common, "--overwrite"])
    error = capsys.readouterr().err
    assert stop.value.code == 2 and "cannot write" in error and "No space left on device" in error
    assert {path.name: path.read_bytes() for path in (tmp_path / "run").iterdir() if path.name != ".lock"} == before
    monkeypatch.setattr(runs.Metrics, "log", lambda self, **record: (_ for _ in ()).throw(OSError(errno.EBADF, "x")))
    with pytest.raises(OSError):
        train.main([*common, "--overwrite"])


def test_plot_refuses_an_accuracy_outside_0_to_1():
    """A foreign or edited record with an accuracy above 1 (a percentage, say) is named, not plotted."""
    final = {"event": "final", "test_accuracy": 57.2, "num_test": 2300}
    assert "not an accuracy between 0 and 1" in plot.run_problem({}, [final])
    assert plot.run_problem({}, [{**final, "test_accuracy": 0.572}]) is None


@pytest.mark.parametrize("flag, value", [("--batch-size", "1"), ("--image-size", "1")])
def test_bench_refuses_sizes_no_step_can_take(flag, value, capsys):
    """bench.py takes the ranges train.py takes: a batch of one (BatchNorm needs two), an image under 16 px."""
    with pytest.raises(SystemExit) as stop:
        bench.parse_args([flag, value])
    assert stop.value.code == 2 and flag in capsys.readouterr().err


def test_resuming_a_finished_run_with_fewer_epochs_is_refused(class_tree, tmp_path, capsys):
    """--resume --epochs 1 on a run that completed 2: not "nothing to do, finished" but one line saying the run
    cannot be shortened, what to pass instead, and which model siam.pt is; the run's files are untouched."""
    common = ["--data", str(class_tree), "--cache-dir", str(tmp_path / "cache"), "--out", str(tmp_path / "run"),
              "--batch-size", "16", "--image-size", "32", "--labels", "6", "--device", "cpu"]
    train.main([*common, "--epochs", "2"])
    before = (tmp_path / "run" / "metrics.jsonl").read_bytes()
    capsys.readouterr()
    with pytest.raises(SystemExit) as stop:
        train.main([*common, "--epochs", "1", "--resume"])
    error = capsys.readouterr().err
    assert stop.value.code == 2 and "--epochs 1 is below the 2 epochs" in error and "--epochs above 2" in error
    assert (tmp_path / "run" / "metrics.jsonl").read_bytes() == before
