"""--tensorboard: TensorBoard's event files written from the same records as metrics.jsonl, read back with
TensorBoard's own reader; a resumed run's repeated epochs hidden; a one-line refusal when the package is missing."""
from __future__ import annotations

import sys

import pytest

import classifier
import train
from simsiam import runs

event_accumulator = pytest.importorskip("tensorboard.backend.event_processing.event_accumulator")

TINY = ["--image-size", "32", "--batch-size", "16", "--labels", "6", "--test-fraction", "0.2", "--device", "cpu"]


def scalars(folder) -> dict[str, list[tuple[int, float]]]:
    """Every scalar TensorBoard reads in `folder`: tag -> [(step, value)]."""
    events = event_accumulator.EventAccumulator(str(folder))
    events.Reload()
    return {tag: [(event.step, event.value) for event in events.Scalars(tag)] for tag in events.Tags()["scalars"]}


def from_jsonl(path, key: str) -> list[tuple[int, float]]:
    return [(record["epoch"], record[key]) for record in runs.read_jsonl(path) if "epoch" in record]


@pytest.mark.slow
def test_train_and_classifier_write_their_records(class_tree, tmp_path):
    """Every number of every epoch record is a scalar at its epoch, with the value metrics.jsonl holds (TensorBoard
    stores float32); the classifier's final record is under final/; without the flag no event file is written."""
    data = ["--data", str(class_tree), "--cache-dir", str(tmp_path / "cache"), *TINY]
    train.main([*data, "--out", str(tmp_path / "run"), "--epochs", "2", "--tensorboard"])
    written = scalars(tmp_path / "run" / runs.TENSORBOARD)
    assert {"loss", "z_std", "lr", "images_per_s", "knn_accuracy"} <= set(written)
    for key in ("loss", "z_std", "lr", "knn_accuracy"):
        expected = from_jsonl(tmp_path / "run" / "metrics.jsonl", key)
        assert [step for step, _ in written[key]] == [step for step, _ in expected] == [1, 2]
        assert [value for _, value in written[key]] == pytest.approx([value for _, value in expected], rel=1e-6)
    classifier.main([*data, "--checkpoint", str(tmp_path / "run" / "siam.pt"), "--out", str(tmp_path / "probe"),
                     "--epochs", "2", "--tensorboard"])
    final = runs.final_record(tmp_path / "probe" / "metrics.jsonl")
    assert scalars(tmp_path / "probe" / runs.TENSORBOARD)["final/test_accuracy"] == [
        (2, pytest.approx(final["test_accuracy"]))]
    classifier.main([*data, "--random", "--out", str(tmp_path / "plain"), "--epochs", "1"])
    assert not (tmp_path / "plain" / runs.TENSORBOARD).exists()


def test_a_resumed_run_hides_the_epochs_it_writes_again(tmp_path):
    """As truncate_metrics drops a killed run's records from the epoch it resumes at, TensorBoard hides its events
    from there on: each step once, with the resumed run's value."""
    first = runs.Metrics(tmp_path / "metrics.jsonl", tensorboard=True)
    for epoch in (1, 2, 3):
        first.log(epoch=epoch, loss=float(epoch))
    first.writer.close()
    resumed = runs.Metrics(tmp_path / "metrics.jsonl", tensorboard=True, purge_from=2)
    for epoch in (2, 3, 4):
        resumed.log(epoch=epoch, loss=10.0 * epoch)
    resumed.writer.close()
    assert scalars(tmp_path / runs.TENSORBOARD)["loss"] == [(1, 1.0), (2, 20.0), (3, 30.0), (4, 40.0)]


def test_overwrite_deletes_only_the_event_files(class_tree, tmp_path):
    """--overwrite replaces the old run's event files; anything else a user put in OUT/tensorboard stays."""
    args = ["--data", str(class_tree), "--cache-dir", str(tmp_path / "cache"), "--out", str(tmp_path / "run"),
            "--epochs", "1", "--tensorboard", *TINY]
    train.main(args)
    folder = tmp_path / "run" / runs.TENSORBOARD
    (folder / "notes.txt").write_text("mine")
    old = sorted(folder.glob("events.out.tfevents.*"))
    train.main([*args, "--overwrite"])
    assert (folder / "notes.txt").read_text() == "mine"
    new = sorted(folder.glob("events.out.tfevents.*"))
    assert len(new) == 1 and new != old and [step for step, _ in scalars(folder)["loss"]] == [1]


def test_missing_package_is_one_line_before_any_work(class_tree, tmp_path, monkeypatch, capsys):
    """Without the tensorboard package, --tensorboard is refused in one line naming the install command (exit 2),
    before any decoding or run folder."""
    monkeypatch.setitem(sys.modules, "torch.utils.tensorboard", None)  # what a missing package makes of it
    with pytest.raises(SystemExit) as stop:
        train.main(["--data", str(class_tree), "--cache-dir", str(tmp_path / "cache"), "--out",
                    str(tmp_path / "run"), "--tensorboard", *TINY])
    error = capsys.readouterr().err.strip().splitlines()
    assert stop.value.code == 2 and len(error) == 1 and "pip install tensorboard" in error[0]
    assert not (tmp_path / "run").exists() and not (tmp_path / "cache").exists()
