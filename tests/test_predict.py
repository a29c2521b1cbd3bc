"""predict.py end to end: a tiny classifier trained once by classifier.main, then predict.main on its files, broken
files and wrong checkpoints."""
from __future__ import annotations

import argparse
import csv
import io
import os
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F
from conftest import write_class_tree, write_image
from PIL import Image

import classifier
import predict
from simsiam import dataset, devices, evaluate, runs
from simsiam.model import Classifier, load_checkpoint, save_checkpoint

CLASSES = ["Cat", "Dog", "Fox"]


@pytest.fixture(scope="module")
def trained(module_folder):
    """(class tree, classifier.pt), once for the module: conftest's class_tree (3 classes x 20 JPEGs) and a
    classifier trained on it for one epoch over a random backbone at 32 px from a 40 px cache (not the default 8/7
    of 32, which is 37, so that predict must take the cache size from the checkpoint)."""
    root = module_folder
    data = write_class_tree(root / "PetImages")
    classifier.main(["--data", str(data), "--random", "--epochs", "1", "--image-size", "32", "--cache-size", "40",
                     "--device", "cpu", "--workers", "2", "--labels", "12", "--test-fraction", "0.2",
                     "--cache-dir", str(root / "cache"), "--out", str(root / "classifier")])
    return data, root / "classifier" / "classifier.pt"


def run_predict(checkpoint, *arguments) -> None:
    predict.main([*map(str, arguments), "--checkpoint", str(checkpoint), "--device", "cpu", "--workers", "2"])


def predictions(out: str) -> dict[str, tuple[str, float]]:
    """{path: (class, probability)} from predict's stdout lines `path  class  probability`."""
    lines = [line.split("  ") for line in out.splitlines()]
    return {fields[0]: (fields[1], float(fields[2])) for fields in lines if len(fields) == 3}


def broken_files(folder):
    """An empty file, text under a .jpg name and a JPEG cut in half, in `folder`; their kinds."""
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "empty.jpg").write_bytes(b"")
    (folder / "text.jpg").write_text("<html>not found</html>")
    whole = io.BytesIO()
    Image.new("RGB", (64, 64), (10, 200, 30)).save(whole, "JPEG")
    (folder / "truncated.jpg").write_bytes(whole.getvalue()[: len(whole.getvalue()) // 2])
    return {"empty.jpg": "empty file", "text.jpg": "not an image", "truncated.jpg": "truncated image"}


def test_one_line_per_file_then_a_summary(trained, capsys):
    """Each file gets one line with a known class and a probability in [0, 1]; a summary counts them per class."""
    data, checkpoint = trained
    files = [data / "Cat" / "0.jpg", data / "Dog" / "1.jpg", data / "Fox" / "2.jpg"]
    run_predict(checkpoint, *files)
    out = capsys.readouterr().out
    found = predictions(out)
    assert list(found) == [str(file) for file in files]
    assert all(name in CLASSES and 0 <= probability <= 1 for name, probability in found.values())
    summary = out.strip().splitlines()[-1]
    assert summary.startswith("3 classified (") and "0 unreadable" in summary
    assert all(f"{name} {sum(c == name for c, _ in found.values())}" in summary for name in CLASSES)


def test_folders_are_searched_recursively_for_image_files(trained, tmp_path, capsys):
    """A folder contributes its image files at any depth, and no hidden file, Thumbs.db or other suffix."""
    _, checkpoint = trained
    photos = tmp_path / "photos"
    wanted = [write_image(photos / "a.jpg", seed=1), write_image(photos / "deep" / "er" / "b.png", seed=2)]
    (photos / "notes.txt").write_text("not a photo")
    (photos / "Thumbs.db").write_bytes(b"\0" * 64)
    write_image(photos / ".hidden.jpg", seed=3)
    run_predict(checkpoint, photos)
    captured = capsys.readouterr()
    assert sorted(predictions(captured.out)) == sorted(map(str, wanted)) and captured.err == ""


def test_broken_files_are_reported_and_skipped(trained, tmp_path, capsys):
    """Empty, text-as-JPEG and truncated files are named on stderr with their reason and skipped; exit status 0."""
    _, checkpoint = trained
    photos = tmp_path / "photos"
    kinds = broken_files(photos)
    good = write_image(photos / "good.jpg", seed=4)
    run_predict(checkpoint, photos)  # returns: exit status 0
    captured = capsys.readouterr()
    assert list(predictions(captured.out)) == [str(good)]
    assert captured.err.splitlines() == [f"skipped {photos / name}: {kind}" for name, kind in kinds.items()]
    assert "1 classified" in captured.out and "3 unreadable (" in captured.out


def test_csv_holds_every_classified_file(trained, tmp_path, capsys):
    """--csv writes path, class, probability and one probability column per class, summing to 1, the largest
    being the printed class."""
    data, checkpoint = trained
    files = sorted((data / "Dog").glob("*.jpg"))[:5]
    run_predict(checkpoint, *files, "--csv", tmp_path / "out" / "predictions.csv")
    printed = predictions(capsys.readouterr().out)
    with open(tmp_path / "out" / "predictions.csv", newline="") as file:
        rows = list(csv.DictReader(file))
    assert list(rows[0]) == ["path", "class", "probability", *(f"probability_{name}" for name in CLASSES)]
    assert [row["path"] for row in rows] == [str(file) for file in files]
    for row in rows:
        per_class = {name: float(row[f"probability_{name}"]) for name in CLASSES}
        assert sum(per_class.values()) == pytest.approx(1, abs=1e-5)
        assert row["class"] == max(per_class, key=per_class.get) == printed[row["path"]][0]
        assert float(row["probability"]) == per_class[row["class"]] == pytest.approx(printed[row["path"]][1], abs=0.005)


def test_prediction_equals_the_classifiers_own_evaluation(trained, tmp_path, capsys):
    """predict's probabilities of each photo equal the classifier's evaluation of that photo's cached image
    (evaluate.embed's centre view, then the head, as classifier.py tests): decoding and view are the same."""
    data, checkpoint_path = trained
    checkpoint = load_checkpoint(checkpoint_path, "classifier", needs=("classes", "args"))
    cached = dataset.load_images(data, checkpoint["args"]["cache_size"], Path(checkpoint["args"]["cache_dir"]),
                                 workers=2)  # the cache classifier.main built and tested on
    model = Classifier(len(CLASSES))
    model.load_state_dict(checkpoint["model"])
    model.eval()
    runtime = devices.make_runtime("cpu", "fp32")
    with torch.no_grad():
        features = evaluate.embed(model.backbone, cached.images, torch.arange(len(cached.files)),
                                  checkpoint["args"]["image_size"], runtime)
        expected = F.softmax(model.head(features), dim=1)  # (N, K)
    run_predict(checkpoint_path, data, "--csv", tmp_path / "predictions.csv", "--batch-size", "7")
    capsys.readouterr()
    with open(tmp_path / "predictions.csv", newline="") as file:
        rows = {row["path"]: row for row in csv.DictReader(file)}
    assert len(rows) == len(cached.files) == 60
    for index, name in enumerate(cached.files):
        row = rows[str(data / name)]
        got = torch.tensor([float(row[f"probability_{c}"]) for c in CLASSES])
        assert torch.allclose(got, expected[index], atol=1e-5)
        assert row["class"] == CLASSES[int(expected[index].argmax())]


def test_accuracy_on_the_test_split_is_the_classifiers_test_accuracy(trained, capsys):
    """Predicting the held-out images that classifier.py tested on gives exactly the test accuracy it recorded."""
    data, checkpoint_path = trained
    recorded = load_checkpoint(checkpoint_path, "classifier", needs=("args",))["args"]
    paths = {key: Path(recorded[key]) for key in ("data", "cache_dir")}
    cached, splits = dataset.open_data(dataset.DataOptions.from_args(argparse.Namespace(**{**recorded, **paths})),
                                       verbose=False)
    test_files = [cached.root / cached.files[i] for i in splits.test.tolist()]
    run_predict(checkpoint_path, *test_files)
    found = predictions(capsys.readouterr().out)
    correct = sum(found[str(file)][0] == file.parent.name for file in test_files)
    recorded_accuracy = runs.final_record(checkpoint_path.parent / "metrics.jsonl")["test_accuracy"]  # float32
    assert correct / len(test_files) == pytest.approx(recorded_accuracy, abs=1e-6)


def test_a_name_that_is_not_utf8_is_classified(trained, tmp_path, capsys):
    """A photo whose file name is not valid UTF-8 is classified, its name printed with \\x escapes."""
    _, checkpoint = trained
    try:
        write_image(tmp_path / os.fsdecode(b"caf\xe9.jpg"), seed=5)
    except OSError:
        pytest.skip("this file system refuses names that are not UTF-8")
    run_predict(checkpoint, tmp_path)
    assert list(predictions(capsys.readouterr().out)) == [f"{tmp_path}/caf\\xe9.jpg"]


@pytest.mark.parametrize("problem", ["missing", "wrong kind"])
def test_a_checkpoint_that_is_not_a_classifier_is_one_line_exit_2(trained, tmp_path, capsys, problem):
    """A missing checkpoint, or one of another kind (a SimSiam checkpoint), stops with one line naming it, exit 2."""
    data, _ = trained
    checkpoint = tmp_path / "siam.pt"
    if problem == "wrong kind":
        save_checkpoint(checkpoint, "simsiam", Classifier(len(CLASSES)))
    with pytest.raises(SystemExit) as exit_info:
        run_predict(checkpoint, data / "Cat" / "0.jpg")
    error = capsys.readouterr().err.strip()
    assert exit_info.value.code == 2 and len(error.splitlines()) == 1
    assert error.startswith(f"error: {checkpoint}:")
    assert ("no such checkpoint" if problem == "missing" else "expected a 'classifier'") in error


def test_no_classifiable_file_is_exit_2(trained, tmp_path, capsys):
    """When every file is unreadable, each is reported and the run ends with one error line, exit 2."""
    _, checkpoint = trained
    broken_files(tmp_path / "photos")
    with pytest.raises(SystemExit) as exit_info:
        run_predict(checkpoint, tmp_path / "photos")
    captured = capsys.readouterr()
    assert exit_info.value.code == 2 and predictions(captured.out) == {}
    lines = captured.err.strip().splitlines()
    assert len(lines) == 4 and lines[-1].startswith("error: none of the 3 files could be classified")


def test_a_path_that_does_not_exist_is_one_line_exit_2(trained, tmp_path, capsys):
    """A mistyped path stops the run before any work with one line naming it, exit 2."""
    data, checkpoint = trained
    with pytest.raises(SystemExit) as exit_info:
        run_predict(checkpoint, data / "Cat" / "0.jpg", tmp_path / "nowhere.jpg")
    captured = capsys.readouterr()
    assert exit_info.value.code == 2 and captured.out == ""
    assert captured.err.strip() == f"error: no such file or folder: {tmp_path / 'nowhere.jpg'}"
