"""Classes of failure an adversarial user finds, each fixed where it is owned: --overwrite never deletes before
every check has passed, a checkpoint's entries are checked for their form, settings that cannot work are refused
before any work, plot.py skips what it did not write, a full disk keeps the previous checkpoint, and file names
that are not UTF-8 go through every script; a run folder belongs to one process, outputs never replace inputs,
stops stop, nothing is dropped without a word, and messages send the user the right way."""
from __future__ import annotations

import errno
import json
import os
import signal
import subprocess
import sys
import threading
from pathlib import Path

import pytest
import torch
from conftest import write_image

import classifier
import pictures
import plot
import predict
import train
from simsiam import dataset, decode, model, runs

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


REPOSITORY = Path(__file__).resolve().parents[1]


def contents(folder: Path) -> dict[str, bytes]:
    """The run's files (not its .lock) and their bytes."""
    return {path.name: path.read_bytes() for path in sorted(folder.iterdir()) if not path.name.startswith(".")}


# ---------------------------------------------------------------- --overwrite


@pytest.mark.slow
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
    "model": lambda state: {**state, "model": {**state["model"], "projector.0.weight": torch.zeros(3, 3)}},
}


@pytest.mark.slow
@pytest.mark.parametrize("entry", CORRUPTIONS)
def test_a_malformed_last_pt_is_refused_naming_the_entry(class_tree, tmp_path, capsys, entry):
    """A last.pt whose args is a list, lacks image_size, has an empty split record, an optimizer state with other
    groups, an RNG state of another size, a string epoch or a weight of another shape: --resume refuses it in one
    line naming the entry."""
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
    """--labels 1 for three classes: refused in one line naming the smallest that works, before any decoding (the
    classes are those the folder lists: one that no file of can be decoded is an error of its own)."""
    error = refused(classifier.main, classifier_args(class_tree, tmp_path, "probe", "--random", "--labels", "1"),
                    capsys)
    assert "--labels 3" in error and not (tmp_path / "probe").exists()
    assert not (tmp_path / "cache").exists() or not any((tmp_path / "cache").iterdir())


def test_a_step_larger_than_memory_is_refused_before_the_cache_is_built(class_tree, tmp_path, capsys):
    """--image-size 4096 at batch 16 cannot fit in this machine's memory: refused before any decoding, with the
    batch size that would fit."""
    error = refused(train.main, train_args(class_tree, tmp_path, "big", "--image-size", "4096"), capsys)
    assert "memory" in error and "--batch-size" in error
    assert not (tmp_path / "cache").exists() or not any((tmp_path / "cache").iterdir())


# ---------------------------------------------------------------- plot.py reads what it did not write



def test_a_fine_tuning_step_larger_than_memory_is_refused_before_the_cache_is_built(class_tree, tmp_path, capsys):
    """classifier.py --finetune at --image-size 4096 (one view, back-propagated through the backbone): refused
    before any decoding, as train.py's step is, with the batch size that would fit."""
    error = refused(classifier.main, classifier_args(class_tree, tmp_path, "big", "--random", "--finetune",
                                                     "--image-size", "4096", "--labels", "6"), capsys)
    assert "memory" in error and "--batch-size" in error and "6 images" in error
    assert not (tmp_path / "cache").exists() or not any((tmp_path / "cache").iterdir())


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


@pytest.mark.slow
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


@pytest.mark.slow
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
    from experiments import cpu_result, headline, label_efficiency

    for parse, argv in [(headline.parse_args, ["--tiny", "--label-seeds", "0", "0"]),
                        (headline.parse_args, ["--tiny", "--parallel", "0"]),
                        (cpu_result.parse_args, ["--tiny", "--label-seeds", "1", "1"])]:
        with pytest.raises(SystemExit) as stop:
            parse(argv)
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


# ---------------------------------------------------------------- two runs, one folder


@pytest.mark.slow
def test_a_run_folder_belongs_to_one_process(class_tree, tmp_path, capsys):
    """While another process holds a run folder, a run into it is refused naming that process, even with
    --overwrite, and the folder's files stay as they were; once that process has ended, the folder is free."""
    train.main(train_args(class_tree, tmp_path))
    before = contents(tmp_path / "run")
    holder = subprocess.Popen([sys.executable, "-c", "import sys; from pathlib import Path; from simsiam import runs; "
                               "runs.hold(Path(sys.argv[1])); print('held', flush=True); sys.stdin.read()",
                               str(tmp_path / "run")], cwd=REPOSITORY, stdin=subprocess.PIPE,
                              stdout=subprocess.PIPE, text=True)
    try:
        assert holder.stdout.readline().strip() == "held"
        error = refused(train.main, train_args(class_tree, tmp_path, "run", "--overwrite"), capsys)
        assert f"being written by another process (pid {holder.pid})" in error
        assert contents(tmp_path / "run") == before
    finally:
        holder.communicate("", timeout=30)
    train.main(train_args(class_tree, tmp_path, "run", "--overwrite"))


def test_a_run_written_while_this_one_started_is_kept(tmp_path):
    """Two runs started together into one empty folder both pass check_out; the one that starts second finds the
    other's files and is refused instead of mixing its files with them."""
    folder = runs.check_out(tmp_path / "run")
    (tmp_path / "run").mkdir()
    (tmp_path / "run" / "siam.pt").write_text("the other run's")
    with pytest.raises(runs.RunError, match="siam.pt from another run"):
        runs.start_run(folder)
    assert (tmp_path / "run" / "siam.pt").read_text() == "the other run's"


# ---------------------------------------------------------------- outputs that would replace inputs


def test_predict_refuses_a_csv_that_would_replace_a_photo(tmp_path, capsys):
    """predict.py photo.jpg --csv other-photo.jpg, --csv one of the photos, --csv the classifier.pt, or a folder:
    refused before any work, every file unchanged; an existing .csv file may be replaced."""
    photo, other = tmp_path / "photos" / "photo.jpg", tmp_path / "other-photo.jpg"
    write_image(photo, seed=1)
    write_image(other, seed=2)
    checkpoint = tmp_path / "classifier.pt"
    checkpoint.write_bytes(b"a classifier")
    before = {path: path.read_bytes() for path in (photo, other, checkpoint)}
    for paths, csv in [([photo], other), ([photo.parent], photo), ([photo], checkpoint)]:
        error = refused(predict.main, [*map(str, paths), "--csv", str(csv), "--checkpoint", str(checkpoint)], capsys)
        assert "would replace a file that is not a .csv file" in error
    assert "is a folder" in refused(predict.main, [str(photo), "--csv", str(tmp_path)], capsys)
    assert {path: path.read_bytes() for path in before} == before
    (tmp_path / "old.csv").write_text("path,class\n")
    predict.check_csv(tmp_path / "old.csv")


# ---------------------------------------------------------------- stops that stop


def test_a_stop_is_taken_at_the_epoch_end_when_no_step_looked(class_tree, tmp_path, monkeypatch, capsys):
    """Under torchrun the ranks agree on a stop only every STOP_CHECK_EVERY steps, so an epoch shorter than that
    never looks mid-epoch: the stop is then taken at the epoch's end, with a last.pt to resume (simulated here
    with a mid-epoch check that never fires, and SIGTERM during the first step)."""
    monkeypatch.setattr(train, "stop_requested", lambda stop, step, runtime: False)
    step = train.recipe.sgd_step

    def step_then_signal(*arguments):
        os.kill(os.getpid(), signal.SIGTERM)  # StopSignals only records it
        return step(*arguments)
    monkeypatch.setattr(train.recipe, "sgd_step", step_then_signal)
    capsys.readouterr()
    with pytest.raises(SystemExit) as stop:
        train.main(train_args(class_tree, tmp_path, "run", "--epochs", "3"))
    assert stop.value.code == 128 + signal.SIGTERM
    assert "interrupted (SIGTERM) after epoch 1" in capsys.readouterr().err
    state = model.load_checkpoint(tmp_path / "run" / "last.pt", "simsiam")
    assert state["epoch"] == 1 and "progress" not in state


def test_ctrl_c_in_an_experiment_starts_no_queued_run(tmp_path, monkeypatch):
    """Ctrl-C while an experiment's runs are queued: the running one ends, no further run starts, and the
    experiment exits with one line saying how to go on."""
    jobs = [(["-c", "import time; time.sleep(1.5)"], tmp_path / f"run-{i}.log") for i in range(3)]
    from experiments import common
    # Python's own Ctrl-C handler, which a process started in the background (SIGINT ignored there) lacks
    previous = signal.signal(signal.SIGINT, signal.default_int_handler)
    threading.Timer(0.5, os.kill, (os.getpid(), signal.SIGINT)).start()
    with pytest.raises(runs.Interrupted, match="no further run started; run the same command again"):
        try:
            common.run_all(jobs, parallel=1)
        finally:
            signal.signal(signal.SIGINT, previous)
    assert (tmp_path / "run-0.log").exists()
    assert not (tmp_path / "run-1.log").exists() and not (tmp_path / "run-2.log").exists()


@pytest.mark.skipif(not hasattr(os, "mkfifo"), reason="named pipes are POSIX")
def test_predict_refuses_a_named_pipe_instead_of_hanging(tmp_path, capsys):
    """A named pipe given to predict.py would block its read forever: refused in one line; one inside a folder
    is no image file and is passed over."""
    os.mkfifo(tmp_path / "pipe.jpg")
    error = refused(predict.main, [str(tmp_path / "pipe.jpg"), "--checkpoint", str(tmp_path / "none.pt")], capsys)
    assert "not a regular file" in error
    with pytest.raises(runs.RunError, match="no image files"):
        predict.image_files([tmp_path])


# ---------------------------------------------------------------- nothing dropped without a word


def test_hidden_folders_are_not_read_as_photos(class_tree, tmp_path):
    """Cat/.thumbnails/ (and any hidden folder) holds no photos for training or predict.py."""
    write_image(class_tree / "Cat" / ".thumbnails" / "0.jpg", seed=7)
    write_image(class_tree / "Dog" / "album" / "extra.jpg", seed=8)
    files, _, _ = dataset.find_images(class_tree)
    assert "Dog/album/extra.jpg" in files and not any(".thumbnails" in name for name in files)
    assert not any(".thumbnails" in str(path) for path in predict.image_files([class_tree]))


def test_an_unreadable_folder_is_listed_in_skipped_txt(class_tree, tmp_path, monkeypatch, capsys):
    """A sub-folder that cannot be listed is neither dropped in silence nor fatal: one line in skipped.txt, and
    it is counted in the start-up line and in predict.py's summary."""
    write_image(class_tree / "Dog" / "private" / "0.jpg", seed=9)
    listing = os.scandir

    def scandir(path="."):  # shutil.rmtree lists by file descriptor when tmp_path is deleted
        if not isinstance(path, int) and Path(path).name == "private":
            raise PermissionError(13, "Permission denied", str(path))
        return listing(path)
    monkeypatch.setattr(os, "scandir", scandir)
    data = dataset.load_images(class_tree, 16, tmp_path / "cache", workers=1)
    assert data.skipped.get("Dog/private/") == "unreadable folder"
    assert "Dog/private/\tunreadable folder" in (data.cache_path / "skipped.txt").read_text()
    assert "1 unreadable folder" in dataset.describe(data)
    assert class_tree / "Dog" / "private" in predict.image_files([class_tree])


# ---------------------------------------------------------------- messages that send the user the right way


def test_a_limit_too_small_for_the_splits_says_how_many_they_need(class_tree, tmp_path, capsys):
    """--limit 1, or 3: refused before any decoding, saying how many images the splits need at the least (with
    --labels 6, --test-fraction 0.2 and --val-fraction 0.05: 6 a class, 12 for two), not "a few"; a --limit
    above that which draws no image of a small class blames --limit, not missing images."""
    for limit in ("1", "3"):
        error = refused(train.main, train_args(class_tree, tmp_path, "run", "--limit", limit), capsys)
        assert f"--limit {limit} is too few to split" in error and "6 images at the least, two classes 12" in error
    assert not list((tmp_path / "cache").glob("*/images.u8"))  # nothing decoded
    for path in sorted((class_tree / "Fox").glob("*.jpg"))[1:]:
        path.unlink()
    error = refused(train.main, train_args(class_tree, tmp_path, "run", "--limit", "12", "--split-seed", "2"), capsys)
    assert "--limit 12 drew no image of class 'Fox'" in error


def test_a_class_whose_every_file_is_skipped_says_why(class_tree, tmp_path, capsys):
    """Every photo of a class unreadable: the error says all its files were skipped and why (permission, empty,
    not an image), not that there is no image; a permission problem is named as such."""
    for path in (class_tree / "Fox").glob("*.jpg"):
        path.write_bytes(b"")
    error = refused(train.main, train_args(class_tree, tmp_path), capsys)
    assert "all 20 of its files were skipped (20 empty file" in error
    assert decode.failure_kind(class_tree / "Cat" / "0.jpg", PermissionError(13, "Permission denied")) == \
        "permission denied"


@pytest.mark.slow
def test_messages_offer_only_what_exists(class_tree, tmp_path, capsys):
    """A run that fails on non-finite numbers before any save says that no checkpoint was kept; a last.pt with
    NaN weights is refused on resume as such; the classifier, which has no --resume, never offers it."""
    error = refused(train.main, train_args(class_tree, tmp_path, "nan", "--lr", "1e30", "--batch-size", "8"),
                    capsys)
    assert "non-finite" in error and "no checkpoint was saved" in error and "--resume" not in error
    train.main(train_args(class_tree, tmp_path))
    last = tmp_path / "run" / "last.pt"
    state = torch.load(last, weights_only=True)
    first = next(key for key, value in state["model"].items() if value.is_floating_point())
    state["model"][first] = torch.full_like(state["model"][first], float("nan"))
    torch.save(state, last)
    error = refused(train.main, train_args(class_tree, tmp_path, "run", "--epochs", "2", "--resume"), capsys)
    assert "holds values that are not finite" in error
    error = refused(classifier.main, classifier_args(class_tree, tmp_path, "run", "--random"), capsys)
    assert "already holds a run" in error and "--resume" not in error


def test_a_file_where_a_folder_belongs_is_named_so(class_tree, tmp_path, capsys):
    """--data a photo, --out or --cache-dir an existing file: one line saying it is a file, not "not found"."""
    photo = class_tree / "Cat" / "0.jpg"
    assert "is a file, not a folder of photos" in refused(train.main, train_args(photo, tmp_path), capsys)
    (tmp_path / "a-file").write_text("")
    for flag in ("--out", "--cache-dir"):
        argv = train_args(class_tree, tmp_path)
        argv[argv.index(flag) + 1] = str(tmp_path / "a-file")
        assert f"{flag} {tmp_path / 'a-file'} is a file, not a folder" in refused(train.main, argv, capsys)
