"""Inputs that were silently dropped or misread: photo suffixes, linked folders, photos beside class folders, a
cache below the image size, pictures written into the data, a damaged classifier, a folder too small for the
batch. Each ends in a correct run or one clear line with exit 2."""
from __future__ import annotations

import errno
import io
import os
import subprocess
import sys
import tempfile
from pathlib import Path

import pytest
import torch
from conftest import REPOSITORY, write_image
from PIL import Image

import bench
import classifier
import pictures
import plot
import predict
import train
from simsiam import cache, cli, dataset, decode, devices, model, recipe, runs
from simsiam.model import CheckpointError, Classifier, SimSiam, load_checkpoint, save_checkpoint


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


@pytest.mark.parametrize("damage, message", [("classes", "distinct class names"), ("nan", "not finite (NaN")])
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
                              text=True, cwd=REPOSITORY, timeout=120)
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


# ---------------------------------------------------------------- a checkpoint's every entry


def valid_entries(kind: str) -> dict:
    """Every entry a checkpoint of `kind` may hold, each in the form its readers expect."""
    if kind == "classifier":
        return {"model": Classifier(2).state_dict(), "classes": ["Cat", "Dog"], "labelled_indices": [0, 3],
                "args": {"image_size": 32, "cache_size": 36}, "protocol": runs.PROTOCOL, "environment": {}}
    return {"model": SimSiam().state_dict(), "epoch": 1, "split": {"test_fingerprint": "x"},
            "args": {"image_size": 32, "cache_size": None, "batch_size": 8, "seed": 0, "blur_reference_size": 32},
            "optimizer": {"state": {}, "param_groups": [{}]}, "rng": torch.get_rng_state(),
            "progress": [{"epoch": 1, "step": 3, "augment_generator": torch.Generator().get_state(),
                          "loss_sum": -1.5, "std_sum": 0.06, "device": "cpu"}],
            "pretraining_hashes": torch.ones((3, 2), dtype=torch.int64), "protocol": runs.PROTOCOL, "environment": {}}


def changed(entries: dict, key: str, **values) -> dict:
    return {**entries, key: {**entries[key], **values}}


def first_weight(entries: dict, change) -> dict:
    name = next(iter(entries["model"]))
    return changed(entries, "model", **{name: change(entries["model"][name])})


# a damage of each entry (and of each argument its readers use), as a hand edit or a foreign tool might make it:
# (kind, what the message names, the damaged entries)
DAMAGES = [
    ("simsiam", "'model' weight", lambda e: first_weight(e, lambda w: w[:1])),
    ("simsiam", "not finite", lambda e: first_weight(e, lambda w: torch.full_like(w, float("nan")))),
    ("simsiam", "foreign 1", lambda e: changed(e, "model", extra=torch.zeros(1))),
    ("simsiam", "missing 1", lambda e: {**e, "model": dict(list(e["model"].items())[1:])}),
    ("simsiam", "'epoch'", lambda e: {**e, "epoch": -1}),
    ("simsiam", "'args'", lambda e: {**e, "args": ["image_size", 32]}),
    ("simsiam", "'image_size'", lambda e: changed(e, "args", image_size=8)),
    ("simsiam", "'cache_size'", lambda e: changed(e, "args", cache_size="36")),
    ("simsiam", "'batch_size'", lambda e: changed(e, "args", batch_size=1)),
    ("simsiam", "'seed'", lambda e: changed(e, "args", seed=-1)),
    ("simsiam", "'blur_reference_size'", lambda e: changed(e, "args", blur_reference_size=0)),
    ("simsiam", "'split'", lambda e: {**e, "split": {}}),
    ("simsiam", "'optimizer'", lambda e: changed(e, "optimizer", param_groups=[1])),
    ("simsiam", "'rng'", lambda e: {**e, "rng": e["rng"][:10]}),
    ("simsiam", "'progress'", lambda e: {**e, "progress": [{**e["progress"][0], "loss_sum": float("nan")}]}),
    ("simsiam", "'progress'", lambda e: {**e, "progress": [{**e["progress"][0], "augment_generator": [1, 2]}]}),
    ("simsiam", "'pretraining_hashes'", lambda e: {**e, "pretraining_hashes": torch.ones(3)}),
    ("simsiam", "'protocol'", lambda e: {**e, "protocol": "2"}),
    ("simsiam", "'environment'", lambda e: {**e, "environment": "cpu"}),
    ("classifier", "'model' weight", lambda e: changed(e, "model", **{"head.1.weight": torch.zeros(3, 512)})),
    ("classifier", "'classes'", lambda e: {**e, "classes": ["Cat", "Cat"]}),
    ("classifier", "'labelled_indices'", lambda e: {**e, "labelled_indices": [0, -3]}),
    ("classifier", "'image_size'", lambda e: changed(e, "args", image_size=True)),
    ("classifier", "'cache_size'", lambda e: changed(e, "args", cache_size=None)),
]


def test_every_entry_of_a_checkpoint_has_its_form_checked():
    """The rule: every entry a checkpoint may hold (model.ENTRIES), every argument a reader takes from it
    (model.ARGUMENTS) and every weight of the model of its kind (names, shapes, types, finite values) is checked
    when it is read, and a damaged one is named. DAMAGES must cover them all."""
    entries = {kind: valid_entries(kind) for kind in ("simsiam", "classifier")}
    for kind, state in entries.items():
        assert model.schema_problem(state, kind) is None, kind
    for kind, named, damage in DAMAGES:
        problem = model.schema_problem(damage(entries[kind]), kind)
        assert problem is not None and named in problem, (kind, named, problem)
    covered = {named.strip("'").split("'")[0] for _, named, _ in DAMAGES}
    assert set(model.ENTRIES) <= covered
    assert {key for arguments in model.ARGUMENTS.values() for key in arguments} <= covered


def test_a_damaged_checkpoint_entry_is_one_line_wherever_it_is_read(class_tree, tmp_path, capsys):
    """The example: a siam.pt with a weight of another shape, given to pictures.py and classifier.py: one line
    naming the weight, exit 2, no traceback (predict.py: test_a_damaged_classifier_predicts_nothing)."""
    siam = tmp_path / "siam.pt"
    torch.save({"format": model.CHECKPOINT_FORMAT, "version": model.CHECKPOINT_VERSION, "kind": "simsiam",
                "arch": model.ARCH, **first_weight(valid_entries("simsiam"), lambda w: w[:1])}, siam)
    data = ["--data", str(class_tree), "--cache-dir", str(tmp_path / "cache"), "--device", "cpu"]
    for main, argv in [(pictures.main, [*data, "--checkpoint", str(siam), "--out", str(tmp_path / "pictures")]),
                       (classifier.main, [*data, "--checkpoint", str(siam), "--out", str(tmp_path / "probe")])]:
        with pytest.raises(SystemExit) as stop:
            main(argv)
        assert stop.value.code == 2 and "'model' weight 'backbone.conv1.weight'" in capsys.readouterr().err


# ---------------------------------------------------------------- consoles and ways of starting


def test_a_console_that_is_not_utf8_gets_escapes_not_a_traceback(monkeypatch):
    """The rule: whatever a script prints reaches a console of any encoding (PYTHONIOENCODING=ascii, a Latin-1
    locale): what the encoding cannot hold is printed as an escape, a name that is not UTF-8 as its bytes."""
    console = io.TextIOWrapper(io.BytesIO(), encoding="ascii")
    monkeypatch.setattr(sys, "stdout", console)
    cli.show_odd_names()
    print("57.2% \u2192 56.3% \u00b1 1.3, caf" + os.fsdecode(b"\xe9") + ".jpg")
    console.flush()
    assert console.buffer.getvalue() == b"57.2% \\u2192 56.3% \\xb1 1.3, caf\\xe9.jpg\n"


def test_a_script_help_on_an_ascii_console(tmp_path):
    """The example: train.py --help, whose text holds a section sign, under PYTHONIOENCODING=ascii."""
    finished = subprocess.run([sys.executable, str(REPOSITORY / "train.py"), "--help"], capture_output=True,
                              env={**os.environ, "PYTHONIOENCODING": "ascii"}, cwd=tmp_path, timeout=120)
    assert finished.returncode == 0 and b"\\xa7" in finished.stdout, finished.stderr[-500:]


EXPERIMENTS = sorted(path.stem for path in (REPOSITORY / "experiments").glob("*.py")
                     if 'if __name__ == "__main__":' in path.read_text())


@pytest.mark.parametrize("experiment", EXPERIMENTS)
def test_an_experiment_runs_as_a_file_too(experiment, tmp_path):
    """python experiments/headline.py, from any folder, runs as python -m experiments.headline does."""
    finished = subprocess.run([sys.executable, str(REPOSITORY / "experiments" / f"{experiment}.py"), "--help"],
                              capture_output=True, text=True, cwd=tmp_path, timeout=120)
    assert finished.returncode == 0 and "usage:" in finished.stdout, finished.stderr[-500:]


# ---------------------------------------------------------------- messages that say what would work


@pytest.mark.parametrize("labels, test_fraction, val_fraction", [(250, 0.1, 0.05), (6, 0.2, 0.05), (40, 0.25, 0.1),
                                                                 (2, 0.5, 0.0)])
def test_the_fewest_images_a_class_needs_is_what_the_splits_take(labels, test_fraction, val_fraction):
    """The rule behind every "too few images" message: least_per_class images of each class split, one fewer do
    not, and the refusal says how many are needed and which --labels would fit."""
    least = dataset.least_per_class(labels // 2, test_fraction, val_fraction)
    split = lambda per_class: dataset.make_splits(torch.arange(2).repeat_interleave(per_class), 2, test_fraction,
                                                  labels, 0, 0, ["Cat", "Dog"], val_fraction=val_fraction)
    assert len(split(least).labelled) == labels
    with pytest.raises(dataset.DataError, match=f"{least - 1} usable images, and {least} at the least are needed"):
        split(least - 1)
    assert dataset.least_per_class(3, 0.6, 0.4) is None


def test_two_photos_a_class_are_told_what_is_missing(tmp_path, capsys):
    """The example: two photos per class with the defaults: one line saying 148 are needed a class (1 test,
    1 validation, 125 labelled, one to pretrain on) and that no --labels fits, so the fractions must go down."""
    for c, name in enumerate(["Cat", "Dog"]):
        for i in range(2):
            write_image(tmp_path / "Pets" / name / f"{i}.jpg", seed=10 * c + i)
    with pytest.raises(SystemExit) as stop:
        train.main(["--data", str(tmp_path / "Pets"), "--cache-dir", str(tmp_path / "cache"), "--out",
                    str(tmp_path / "run"), "--image-size", "16", "--device", "cpu"])
    error = capsys.readouterr().err
    assert stop.value.code == 2 and "has 2 usable images, and 148 at the least are needed" in error
    assert "lower --test-fraction / --val-fraction" in error


@pytest.mark.slow
def test_a_moved_data_folder_resumes_and_other_photos_under_its_names_do_not(class_tree, tmp_path, capsys):
    """--resume compares the photos, not the folder's path: the same photos moved elsewhere continue the run
    (with a note), other photos under the same names are refused."""
    def run(data: Path, epochs: str, *extra: str):
        train.main(["--data", str(data), "--cache-dir", str(tmp_path / "cache"), "--out", str(tmp_path / "run"),
                    "--epochs", epochs, "--batch-size", "16", "--image-size", "32", "--labels", "6", "--device",
                    "cpu", *extra])
    run(class_tree, "1")
    moved = class_tree.rename(tmp_path / "moved")
    run(moved, "2", "--resume")
    assert "which now lies in" in capsys.readouterr().out
    assert [record["epoch"] for record in runs.read_jsonl(tmp_path / "run" / "metrics.jsonl")] == [1, 2]
    for path in moved.glob("*/[0-9]*.jpg"):
        write_image(path, seed=1000 + int(path.stem), size=(36, 28))
    with pytest.raises(SystemExit) as stop:
        run(moved, "3", "--resume")
    assert stop.value.code == 2 and "cannot resume" in capsys.readouterr().err


def test_plot_finds_the_runs_in_a_folder_of_runs(tmp_path, monkeypatch):
    """plot.py with no argument after the quick start (whose runs are in runs/demo/) finds them, as it does under
    any folder named; a run being replaced (.replaced) is not a run."""
    for folder in ["demo/simsiam", "demo/classifier-random-frozen", "other", "demo/simsiam/.replaced", "empty"]:
        (tmp_path / "runs" / folder).mkdir(parents=True)
        if folder != "empty":
            (tmp_path / "runs" / folder / "metrics.jsonl").write_text("")
    monkeypatch.chdir(tmp_path)
    runs_folder = Path("runs")
    assert plot.run_folders([runs_folder]) == [runs_folder / "demo" / "classifier-random-frozen",
                                               runs_folder / "demo" / "simsiam", runs_folder / "other"]
    assert plot.run_folders([runs_folder / "demo" / "simsiam", runs_folder / "empty"]) == [
        runs_folder / "demo" / "simsiam", runs_folder / "empty"]


def test_predict_without_a_checkpoint_names_the_ones_there_are(tmp_path, monkeypatch, capsys):
    """predict.py's default checkpoint is absent after the quick start, whose classifiers are in runs/demo/: the
    error names them instead of asking for a classifier to be trained."""
    found = tmp_path / "runs" / "demo" / "classifier-simsiam-frozen" / "classifier.pt"
    found.parent.mkdir(parents=True)
    found.write_bytes(b"")
    write_image(tmp_path / "photo.jpg", seed=1)
    monkeypatch.chdir(tmp_path)
    with pytest.raises(SystemExit) as stop:
        predict.main(["photo.jpg", "--device", "cpu"])
    assert stop.value.code == 2 and "runs/demo/classifier-simsiam-frozen/classifier.pt" in capsys.readouterr().err


# ---------------------------------------------------------------- sizes that cannot fit


def test_an_evaluation_pass_takes_the_batch_that_fits(monkeypatch):
    """The rule: an evaluation pass (embedding for the probes, the kNN monitor, the pictures) uses the largest
    batch, up to its own, that fits in the device's free memory, and refuses in one line when not even one image
    does; where the free memory cannot be told, its own batch."""
    runtime = devices.Runtime(torch.device("cpu"), "fp32")
    one = recipe.step_bytes(2000, 1, "fp32", views=1)
    monkeypatch.setattr(devices, "free_memory", lambda device: 10 * one)
    assert recipe.fitting_batch(2000, 512, runtime) == 10 and recipe.fitting_batch(64, 512, runtime) == 512
    monkeypatch.setattr(devices, "free_memory", lambda device: one // 2)
    with pytest.raises(runs.RunError, match="--image-size 2000 and 1 images per process needs about"):
        recipe.fitting_batch(2000, 512, runtime)
    monkeypatch.setattr(devices, "free_memory", lambda device: None)
    assert recipe.fitting_batch(2000, 512, runtime) == 512


def test_bench_at_a_size_no_memory_holds_is_one_line(tmp_path, capsys):
    """The example: bench.py --image-size 20000 (a step of about 100 TB) refused before any decoding."""
    with pytest.raises(SystemExit) as stop:
        bench.main(["--demo", "--image-size", "20000", "--device", "cpu", "--cache-dir", str(tmp_path / "cache")])
    assert stop.value.code == 2 and "GB of cpu memory" in capsys.readouterr().err
    assert not list((tmp_path / "cache").glob("*/images.u8"))


def test_a_data_folder_with_a_240_byte_name_and_a_dollar_sign_is_cached(tmp_path):
    """A folder name near the 255-byte limit (and a $ in it) gives a cache folder name within the limit."""
    root = tmp_path / ("$HOME-" + "x" * 234)
    for c, name in enumerate(["Cat", "Dog"]):
        for i in range(2):
            write_image(root / name / f"{i}.jpg", seed=10 * c + i)
    data = dataset.load_images(root, 16, tmp_path / "cache")
    assert len(data.files) == 4 and len(os.fsencode(data.cache_path.name)) < 120
    assert data.cache_path.name.startswith("$HOME-xxx")
