"""Nothing lost, nothing silently wrong: run folders, the split on --resume, non-finite models, argument ranges,
unwritable folders, what plot.py reads, and SIGINT / SIGTERM during training."""
from __future__ import annotations

import signal
import subprocess
import time
from pathlib import Path

import pytest
import torch
from conftest import ONE_THREAD, train_command

import classifier
import plot
import train
from simsiam import devices, recipe, runs
from simsiam.model import load_checkpoint

REPOSITORY = Path(__file__).resolve().parents[1]
SMALL = ["--image-size", "32", "--labels", "6", "--test-fraction", "0.2", "--device", "cpu", "--workers", "2"]


def train_args(data: Path, tmp_path: Path, out: str = "run", *extra: str) -> list[str]:
    return ["--data", str(data), "--cache-dir", str(tmp_path / "cache"), "--out", str(tmp_path / out),
            "--epochs", "1", "--batch-size", "16", *SMALL, *extra]


def classifier_args(data: Path, tmp_path: Path, out: str, *extra: str) -> list[str]:
    return ["--data", str(data), "--cache-dir", str(tmp_path / "cache"), "--out", str(tmp_path / out), "--random",
            "--epochs", "1", "--batch-size", "6", *SMALL, *extra]


def exit_status(main, argv: list[str]) -> int:
    with pytest.raises(SystemExit) as exit_info:
        main(argv)
    return exit_info.value.code


# ---------------------------------------------------------------- 1. a run never destroys another's work


def test_train_refuses_a_folder_holding_a_run(class_tree, tmp_path, capsys):
    """A second train.py into the same --out is refused in one line offering --resume, --out and --overwrite,
    and the first run's files are untouched."""
    train.main(train_args(class_tree, tmp_path))
    before = {name: (tmp_path / "run" / name).read_bytes() for name in ("siam.pt", "last.pt", "metrics.jsonl")}
    capsys.readouterr()
    assert exit_status(train.main, train_args(class_tree, tmp_path)) == 2
    error = capsys.readouterr().err
    assert len(error.strip().splitlines()) == 1 and all(f in error for f in ("--resume", "--out", "--overwrite"))
    assert before == {name: (tmp_path / "run" / name).read_bytes() for name in before}


@pytest.mark.slow
def test_overwrite_replaces_the_run(class_tree, tmp_path):
    """--overwrite replaces the old run's files: metrics.jsonl then holds the new run only, nothing is left aside."""
    train.main(train_args(class_tree, tmp_path))
    (tmp_path / "run" / "notes.txt").write_text("mine")
    train.main(train_args(class_tree, tmp_path, "run", "--overwrite"))
    assert [r["epoch"] for r in runs.read_jsonl(tmp_path / "run" / "metrics.jsonl")] == [1]
    assert (tmp_path / "run" / "notes.txt").read_text() == "mine"  # only run files are deleted
    assert not (tmp_path / "run" / runs.REPLACED).exists()


def run_files(folder: Path) -> dict:
    return {path.relative_to(folder).as_posix(): path.read_bytes() for path in sorted(folder.rglob("*"))
            if path.is_file() and path.name != ".lock"}


def write_run(folder: Path) -> dict:
    """A run folder as a finished run leaves it, with a file of the user's and TensorBoard events beside the run's."""
    (folder / runs.TENSORBOARD).mkdir(parents=True)
    for name in ("args.json", "metrics.jsonl", "last.pt", "siam.pt", "notes.txt",
                 f"{runs.TENSORBOARD}/events.out.tfevents.1.host", f"{runs.TENSORBOARD}/mine.txt"):
        (folder / name).write_text(f"old {name}")
    return run_files(folder)


def test_an_overwrite_that_fails_before_its_first_checkpoint_puts_the_old_run_back(tmp_path):
    """The rule under --overwrite: the old run's files wait in OUT/.replaced until the new run's first good save;
    a run that ends before it (any error, however it ends: release) gets the old run back, byte for byte, and its
    own files are gone. Files that are not run files are never moved."""
    before = write_run(tmp_path / "run")
    runs.start_run(runs.check_out(tmp_path / "run", overwrite=True))
    assert not (tmp_path / "run" / "siam.pt").exists() and (tmp_path / "run" / "notes.txt").exists()
    assert (tmp_path / "run" / runs.TENSORBOARD / "mine.txt").exists()
    (tmp_path / "run" / "metrics.jsonl").write_text("new")  # the new run's first files
    (tmp_path / "run" / "args.json").write_text("new")
    runs.release()
    assert run_files(tmp_path / "run") == before and not (tmp_path / "run" / runs.REPLACED).exists()


def test_an_overwrite_deletes_the_old_run_at_its_first_good_save(tmp_path):
    write_run(tmp_path / "run")
    runs.start_run(runs.check_out(tmp_path / "run", overwrite=True))
    (tmp_path / "run" / "last.pt").write_text("new")
    runs.replaced_run_gone(tmp_path / "run")
    runs.release()
    assert run_files(tmp_path / "run") == {"last.pt": b"new", "notes.txt": b"old notes.txt",
                                           f"{runs.TENSORBOARD}/mine.txt": f"old {runs.TENSORBOARD}/mine.txt".encode()}


def test_the_run_a_killed_overwrite_set_aside_is_never_deleted(tmp_path, capsys):
    """A process killed between setting the old run aside and its first save leaves OUT/.replaced: the next run
    into that folder is refused, naming it, and nothing in it is touched."""
    write_run(tmp_path / "run")
    runs.start_run(runs.check_out(tmp_path / "run", overwrite=True))
    runs._replacing.clear()  # what a SIGKILL does: nothing puts it back
    runs.release()
    aside = run_files(tmp_path / "run" / runs.REPLACED)
    with pytest.raises(runs.RunError, match=r"\.replaced holds the files of a run"):
        runs.start_run(runs.check_out(tmp_path / "run", overwrite=True))
    runs.release()
    assert run_files(tmp_path / "run" / runs.REPLACED) == aside


@pytest.mark.parametrize("name", ["siam.pt", "metrics.jsonl", runs.TENSORBOARD])
def test_a_run_file_name_that_is_not_a_run_file_is_refused(tmp_path, name):
    """A folder named like a checkpoint (or a file named like the TensorBoard folder) is not the project's:
    check_out refuses it, even with --overwrite, and it stays."""
    if name == runs.TENSORBOARD:
        (tmp_path / "run").mkdir()
        (tmp_path / "run" / name).write_text("mine")
    else:
        (tmp_path / "run" / name).mkdir(parents=True)
    with pytest.raises(runs.RunError, match="is not what a run writes there"):
        runs.check_out(tmp_path / "run", overwrite=True)
    assert (tmp_path / "run" / name).exists()


@pytest.mark.slow
def test_a_failed_overwrite_keeps_both_scripts_runs(class_tree, tmp_path, monkeypatch, capsys):
    """The example: train.py --overwrite that stops on a non-finite loss before its first checkpoint, and a
    classifier.py --overwrite that stops on one, leave the runs they were to replace as they were."""
    train.main(train_args(class_tree, tmp_path))
    classifier.main(classifier_args(class_tree, tmp_path, "probe", "--finetune"))
    before = {out: run_files(tmp_path / out) for out in ("run", "probe")}
    capsys.readouterr()
    assert exit_status(train.main, train_args(class_tree, tmp_path, "run", "--overwrite", "--lr", "1e30")) == 2
    real_loss = classifier.F.cross_entropy
    monkeypatch.setattr(classifier.F, "cross_entropy", lambda logits, targets: real_loss(logits, targets) * torch.inf)
    assert exit_status(classifier.main, classifier_args(class_tree, tmp_path, "probe", "--overwrite",
                                                        "--finetune")) == 2
    error = capsys.readouterr().err
    assert "non-finite" in error and error.count("is back as it was") == 2
    assert {out: run_files(tmp_path / out) for out in before} == before


def test_classifier_refuses_a_folder_holding_a_run(class_tree, tmp_path, capsys):
    """classifier.py into a folder holding a classifier run: refused (exit 2) unless --overwrite."""
    classifier.main(classifier_args(class_tree, tmp_path, "probe"))
    capsys.readouterr()
    assert exit_status(classifier.main, classifier_args(class_tree, tmp_path, "probe")) == 2
    assert "--overwrite" in capsys.readouterr().err
    classifier.main(classifier_args(class_tree, tmp_path, "probe", "--overwrite"))
    assert len([r for r in runs.read_jsonl(tmp_path / "probe" / "metrics.jsonl") if "epoch" in r]) == 1


def test_resume_without_a_checkpoint_is_refused(class_tree, tmp_path, capsys):
    """--resume into a folder without last.pt: one line, exit 2, before any work."""
    assert exit_status(train.main, train_args(class_tree, tmp_path, "new", "--resume")) == 2
    assert "nothing to resume" in capsys.readouterr().err and not (tmp_path / "cache").exists()


def test_default_classifier_folder_names_all_labels():
    """The default folder of an --all-labels run differs from the 250-label run's of the same backbone."""
    assert runs.classifier_run_name(True, True, all_labels=True) != runs.classifier_run_name(True, True)


# ---------------------------------------------------------------- 2. the held-out split can never leak


@pytest.mark.parametrize("flag, value, named", [("--split-seed", "1", "--split-seed"),
                                                ("--test-fraction", "0.3", "--test-fraction"),
                                                ("--limit", "50", "--limit")])
def test_resume_refuses_another_split(class_tree, tmp_path, capsys, flag, value, named):
    """Resuming with a setting that changes the held-out split is refused, naming the setting; the checkpoint
    keeps its recorded split."""
    train.main(train_args(class_tree, tmp_path))
    recorded = load_checkpoint(tmp_path / "run" / "last.pt", "simsiam")["split"]
    capsys.readouterr()
    assert exit_status(train.main, train_args(class_tree, tmp_path, "run", "--epochs", "2", "--resume",
                                              flag, value)) == 2
    assert named in capsys.readouterr().err
    assert load_checkpoint(tmp_path / "run" / "last.pt", "simsiam")["split"] == recorded


@pytest.mark.slow
def test_resume_refuses_other_data(class_tree, tmp_path, capsys):
    """Resuming on another data folder (same class names, one photo fewer) is refused, naming the file list. (A
    copy of the same photos elsewhere resumes: test_inputs.py, the moved data folder.)"""
    train.main(train_args(class_tree, tmp_path))
    other = tmp_path / "other"
    for path in sorted(class_tree.rglob("*.jpg"))[1:]:
        (other / path.parent.name).mkdir(parents=True, exist_ok=True)
        (other / path.parent.name / path.name).write_bytes(path.read_bytes())
    capsys.readouterr()
    assert exit_status(train.main, train_args(other, tmp_path, "run", "--epochs", "2", "--resume")) == 2
    assert "the file list" in capsys.readouterr().err


# ---------------------------------------------------------------- 3. no non-finite model is saved or reported


@pytest.mark.parametrize("main, flag, value", [
    (classifier.main, "--lr", "inf"), (classifier.main, "--lr", "nan"), (train.main, "--momentum", "nan"),
    (train.main, "--momentum", "1"), (train.main, "--weight-decay", "-1e-4"), (train.main, "--lr", "inf"),
    (train.main, "--seed", "-1"), (train.main, "--seed", str(2 ** 64)), (train.main, "--image-size", "8"),
    (train.main, "--batch-size", "1"), (classifier.main, "--batch-size", "1")])
def test_out_of_range_settings_are_refused_by_argparse(main, flag, value, capsys):
    """Settings outside their valid range stop at parsing with argparse's one-line error naming the flag."""
    assert exit_status(main, [f"{flag}={value}"]) == 2
    error = capsys.readouterr().err
    assert "argument " in error and flag in error and "must be" in error


def test_non_finite_weights_are_never_saved(class_tree, tmp_path, monkeypatch, capsys):
    """A NaN that reaches the model's state but not the loss (a BatchNorm statistic) stops the run with
    exit 2 before any checkpoint is written."""
    real_step = recipe.sgd_step

    def poisoned_step(model, optimizer, x1, x2, runtime):
        result = real_step(model, optimizer, x1, x2, runtime)
        next(m for m in model.modules() if isinstance(m, torch.nn.BatchNorm2d)).running_mean.fill_(float("nan"))
        return result

    monkeypatch.setattr(recipe, "sgd_step", poisoned_step)
    assert exit_status(train.main, train_args(class_tree, tmp_path)) == 2
    assert "non-finite weights" in capsys.readouterr().err
    assert not (tmp_path / "run" / "siam.pt").exists() and not (tmp_path / "run" / "last.pt").exists()


def test_classifier_stops_on_a_non_finite_loss(class_tree, tmp_path, monkeypatch, capsys):
    """A non-finite training loss stops the classifier with exit 2: no classifier.pt, no accuracy printed."""
    real_loss = classifier.F.cross_entropy
    monkeypatch.setattr(classifier.F, "cross_entropy", lambda logits, targets: real_loss(logits, targets) * torch.inf)
    # fine-tuned: no closed-form probe, whose own cross-entropy would meet the patched one first
    assert exit_status(classifier.main, classifier_args(class_tree, tmp_path, "probe", "--finetune")) == 2
    captured = capsys.readouterr()
    assert "non-finite training loss" in captured.err and "test accuracy" not in captured.out
    assert not (tmp_path / "probe" / "classifier.pt").exists()


# ---------------------------------------------------------------- 6. clear errors for every input


def test_cache_dir_under_a_file_is_refused_before_work(class_tree, tmp_path, capsys):
    """--cache-dir below a regular file: one line naming --cache-dir, exit 2, nothing decoded."""
    (tmp_path / "file").write_text("")
    argv = train_args(class_tree, tmp_path) + ["--cache-dir", str(tmp_path / "file" / "cache")]
    assert exit_status(train.main, argv) == 2
    assert "--cache-dir" in capsys.readouterr().err


@pytest.mark.slow
def test_plot_reads_what_a_killed_run_leaves(class_tree, tmp_path, capsys):
    """plot.py skips a run whose args.json was cut short and ignores odd metrics lines; --out a file is refused."""
    train.main(train_args(class_tree, tmp_path, "run", "--epochs", "2"))
    with open(tmp_path / "run" / "metrics.jsonl", "a") as file:
        file.write('3\n"text"\n{"epoch": "x"}\n{"epoch": 3, "loss"')
    (tmp_path / "starting").mkdir()
    (tmp_path / "starting" / "args.json").write_text('{"epochs": 2, "ba')
    (tmp_path / "starting" / "metrics.jsonl").write_text("")
    plot.main([str(tmp_path / "run"), str(tmp_path / "starting"), "--out", str(tmp_path / "plots")])
    assert (tmp_path / "plots" / "simsiam.png").is_file() and "skipped" in capsys.readouterr().out
    (tmp_path / "a-file").write_text("")
    assert exit_status(plot.main, [str(tmp_path / "run"), "--out", str(tmp_path / "a-file")]) == 2
    assert "--out" in capsys.readouterr().err


# ---------------------------------------------------------------- 7. interrupts and preemption


@pytest.mark.slow
@pytest.mark.parametrize("signal_number", [signal.SIGTERM, signal.SIGINT])
def test_signal_saves_the_step_and_resume_is_bit_identical(uninterrupted, tmp_path, signal_number):
    """SIGTERM or SIGINT mid-run: last.pt is written at that step, one line says how to resume, the exit status
    is 128 + the signal; --resume then ends with exactly the weights of an uninterrupted run."""
    class_tree, whole_run = uninterrupted
    process = subprocess.Popen(train_command(class_tree, tmp_path, "stopped"), env=ONE_THREAD,
                               stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    deadline = time.time() + 120
    while not (tmp_path / "stopped" / "args.json").exists() and time.time() < deadline:
        time.sleep(0.02)  # args.json is written just before the first step
    time.sleep(0.3)
    process.send_signal(signal_number)
    error = process.communicate(timeout=120)[1]
    assert process.returncode == 128 + signal_number
    assert "interrupted" in error and "resume with --resume" in error and "Traceback" not in error
    state = load_checkpoint(tmp_path / "stopped" / "last.pt", "simsiam")
    assert state["epoch"] < 2 and "progress" in state
    assert not (tmp_path / "stopped" / "siam.pt").exists()  # the run had not finished an epoch that saves
    subprocess.run(train_command(class_tree, tmp_path, "stopped", "--resume"), check=True, env=ONE_THREAD,
                   capture_output=True)
    whole = load_checkpoint(whole_run / "siam.pt", "simsiam")["model"]
    resumed = load_checkpoint(tmp_path / "stopped" / "siam.pt", "simsiam")["model"]
    assert all(torch.equal(whole[key], resumed[key]) for key in whole)
    records = runs.read_jsonl(tmp_path / "stopped" / "metrics.jsonl")
    assert [r["epoch"] for r in records] == [1, 2]
    whole_records = runs.read_jsonl(whole_run / "metrics.jsonl")
    assert [r["loss"] for r in records] == [r["loss"] for r in whole_records]


def test_interrupted_state_round_trips(class_tree, tmp_path):
    """EpochProgress.state() and restore() give back the step, the sums and the augmentation stream."""
    args = train.parse_args(train_args(class_tree, tmp_path))
    runtime = devices.make_runtime("cpu", "fp32")
    progress = train.EpochProgress.start(1, args.seed, runtime)
    torch.rand(3, generator=progress.augment_generator)  # move the stream on
    progress.step, progress.loss_sum, progress.std_sum = 5, torch.tensor(-2.5), torch.tensor(0.1)
    restored = train.EpochProgress.restore(progress.state(), args.seed, runtime)
    assert (restored.epoch, restored.step) == (1, 5)
    assert restored.loss_sum.item() == -2.5 and restored.std_sum.item() == pytest.approx(0.1)
    assert torch.equal(torch.rand(4, generator=restored.augment_generator),
                       torch.rand(4, generator=progress.augment_generator))


@pytest.mark.slow
def test_mid_epoch_resume_needs_the_same_batches(class_tree, tmp_path, capsys):
    """A run interrupted mid-epoch resumes only with its batch size and number of processes: its saved step and
    augmentation streams mean nothing for other batches. Refused in one line, exit 2."""
    train.main(train_args(class_tree, tmp_path, "run", "--epochs", "2"))
    last = tmp_path / "run" / "last.pt"
    state = torch.load(last, weights_only=True)
    progress = train.EpochProgress.start(1, 0, devices.make_runtime("cpu", "fp32"))
    progress.step = 1
    torch.save({**state, "epoch": 1, "progress": [progress.state()]}, last)
    capsys.readouterr()
    assert exit_status(train.main, train_args(class_tree, tmp_path, "run", "--epochs", "2", "--resume",
                                              "--batch-size", "8")) == 2
    assert "interrupted mid-epoch" in capsys.readouterr().err
