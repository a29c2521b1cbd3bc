"""predict.py end to end: one tiny classifier trained by classifier.main for the module, then predict.main on its
test photos, folders with clutter and broken files, odd names, bad inputs (one table), its recorded accuracy, emulated
CUDA."""
from __future__ import annotations

import csv
import io
import json
import os
import sys
from pathlib import Path

import pytest
from conftest import write_class_tree, write_image
from emulated_cuda import emulated_cuda
from PIL import Image

import classifier
import model
import predict
import runs

CLASSES = ["Cat", "Dog", "Fox"]


@pytest.fixture(scope="module")
def trained(module_folder):
    """(class tree, run folder): a frozen classifier over a random backbone at 16 px from a 20 px cache (not the
    default 19, so that predict must take the cache size from the checkpoint)."""
    tree = write_class_tree(module_folder / "Pets", per_class=12)
    classifier.main(["--data", str(tree), "--random", "--epochs", "1", "--image-size", "16", "--cache-size", "20",
                     "--device", "cpu", "--workers", "1", "--labels", "6", "--test-fraction", "0.25",
                     "--cache-dir", str(module_folder / "cache"), "--out", str(module_folder / "run")])
    return tree, module_folder / "run"


def run_predict(run, *arguments) -> None:
    predict.main([*map(str, arguments), "--checkpoint", str(run / "classifier.pt"), "--device", "cpu"])


def printed(out: str) -> dict[str, tuple[str, float]]:
    """{path: (class, probability)} from predict's lines `path  class  probability`."""
    fields = [line.split("  ") for line in out.splitlines()]
    return {f[0]: (f[1], float(f[2])) for f in fields if len(f) == 3}


def test_predictions_are_the_classifiers_own_on_its_test_photos(trained, capsys):
    """predict.py on the photos classifier.py tested on gives exactly its predictions (same decoding, view and
    model, whatever the batches), one line each, then the count per class."""
    tree, run = trained
    recorded = runs.read_predictions(run)
    run_predict(run, *(tree / name for name in recorded["files"]), "--batch-size", "4")  # 3 batches, the last of 1
    out = capsys.readouterr().out
    found = printed(out)
    assert list(found) == [str(tree / name) for name in recorded["files"]]
    assert [name for name, _ in found.values()] == [CLASSES[label] for label in recorded["head"]]
    assert all(0.33 <= probability <= 1 for _, probability in found.values())  # the top of 3, printed to 0.01
    counts = {name: recorded["head"].count(c) for c, name in enumerate(CLASSES)}
    assert out.strip().splitlines()[-1] == (f"9 classified ({', '.join(f'{n} {k}' for n, k in counts.items())}), "
                                            f"0 unreadable")


def test_csv_holds_what_was_printed(trained, tmp_path, capsys):
    """--csv: path, class, probability and a probability per class summing to 1, the largest the printed class."""
    tree, run = trained
    files = sorted((tree / "Dog").glob("*.jpg"))[:4]
    run_predict(run, *files, "--csv", tmp_path / "new" / "predictions.csv")
    shown = printed(capsys.readouterr().out)
    with open(tmp_path / "new" / "predictions.csv", newline="") as file:
        rows = list(csv.DictReader(file))
    assert list(rows[0]) == ["path", "class", "probability", *(f"probability_{name}" for name in CLASSES)]
    assert [row["path"] for row in rows] == [str(file) for file in files]
    for row in rows:
        per_class = {name: float(row[f"probability_{name}"]) for name in CLASSES}
        assert sum(per_class.values()) == pytest.approx(1, abs=1e-5)
        assert row["class"] == max(per_class, key=per_class.get) == shown[row["path"]][0]
        assert float(row["probability"]) == pytest.approx(shown[row["path"]][1], abs=0.005)


def broken_files(folder) -> dict[str, str]:
    """An empty file, text under a .jpg name and a JPEG cut in half in `folder`: {name: the reason predict gives}."""
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "empty.jpg").write_bytes(b"")
    (folder / "text.jpg").write_text("<html>not found</html>")
    whole = io.BytesIO()
    Image.new("RGB", (64, 64), (10, 200, 30)).save(whole, "JPEG")
    (folder / "truncated.jpg").write_bytes(whole.getvalue()[: len(whole.getvalue()) // 2])
    return {"empty.jpg": "empty file", "text.jpg": "not an image", "truncated.jpg": "truncated image"}


def test_folders_are_searched_and_bad_files_skipped(trained, tmp_path, capsys):
    """A folder gives its photos at any depth (no hidden file, Thumbs.db or text); broken files are named on stderr
    with their reason and skipped, and the run still succeeds."""
    photos = tmp_path / "photos"
    wanted = [write_image(photos / "a.jpg", seed=1), write_image(photos / "deep" / "er" / "b.png", seed=2)]
    (photos / "notes.txt").write_text("not a photo")
    (photos / "Thumbs.db").write_bytes(b"\0" * 64)
    write_image(photos / ".hidden.jpg", seed=3)
    kinds = broken_files(photos / "bad")
    run_predict(trained[1], photos)
    captured = capsys.readouterr()
    assert sorted(printed(captured.out)) == sorted(map(str, wanted))
    assert [line.rpartition(": ")[0] for line in captured.err.splitlines()[1:]] == [  # after the test accuracy
        f"skipped {photos / 'bad' / name}" for name in kinds]  # each with its reason (dataset.failure_kind's)
    assert "2 classified" in captured.out and "3 unreadable" in captured.out


def test_a_name_that_is_not_utf8_is_classified(trained, tmp_path, capsys):
    """A photo whose name is not valid UTF-8 is classified, its name printed with \\x escapes."""
    try:
        write_image(tmp_path / os.fsdecode(b"caf\xe9.jpg"), seed=5)
    except OSError:
        pytest.skip("this file system refuses names that are not UTF-8")
    run_predict(trained[1], tmp_path)
    assert list(printed(capsys.readouterr().out)) == [f"{tmp_path}/caf\\xe9.jpg"]


def test_a_newline_or_tab_in_a_name_is_escaped(trained, tmp_path, capsys):
    """A newline or tab in a photo's name prints as \\n or \\t: each photo keeps its one line."""
    write_image(tmp_path / "a\tb.jpg", seed=5)
    write_image(tmp_path / "new\nline.jpg", seed=6)
    run_predict(trained[1], tmp_path)
    assert list(printed(capsys.readouterr().out)) == [f"{tmp_path}/a\\tb.jpg", f"{tmp_path}/new\\nline.jpg"]


def test_a_photo_given_by_several_names_is_classified_once(trained, tmp_path, monkeypatch, capsys):
    """The same file by several names (relative, through .., in a folder given) is classified once, by the name and
    in the order first given."""
    write_image(tmp_path / "photos" / "a.jpg", seed=1)
    write_image(tmp_path / "photos" / "b.png", seed=2)
    monkeypatch.chdir(tmp_path)
    run_predict(trained[1], "photos/b.png", tmp_path / "photos" / ".." / "photos" / "a.jpg", "photos")
    out = capsys.readouterr().out
    assert list(printed(out)) == ["photos/b.png", f"{tmp_path}/photos/../photos/a.jpg"] and "2 classified" in out


def test_a_closed_stdout_is_an_error(trained, capsys, monkeypatch):
    """With stdout closed (>&-: sys.stdout is None) no prediction could be read: exit 2, one error line."""
    monkeypatch.setattr(sys, "stdout", None)
    with pytest.raises(SystemExit) as stop:
        run_predict(trained[1], trained[0] / "Cat" / "0.jpg")
    errors = capsys.readouterr().err.splitlines()
    assert stop.value.code == 2 and len(errors) == 1 and errors[0].startswith("error: stdout is closed")


def test_the_classifiers_recorded_test_accuracy_comes_first(trained, tmp_path, capsys):
    """First, on stderr: the test accuracy and test set the classifier.py run recorded beside classifier.pt, with a
    warning within 2 standard errors of chance (1/3 here), or "test accuracy unknown" without that record."""
    tree, run = trained
    (tmp_path / "classifier.pt").symlink_to(run / "classifier.pt")  # the same classifier, away from its run
    final = runs.final_record(run / "metrics.jsonl")
    headers = []
    for folder, accuracy in [(run, None), (tmp_path, None), (tmp_path, 0.4), (tmp_path, 0.9)]:
        if accuracy is not None:
            (tmp_path / "metrics.jsonl").write_text(json.dumps(
                {"event": "final", "test_accuracy": accuracy, "num_test": 90, "test_set": "90 held-out test images"}))
        run_predict(folder, tree / "Cat" / "0.jpg")
        headers.append(capsys.readouterr().err.splitlines()[0])
    assert headers[0].startswith(f"classifier: test accuracy {final['test_accuracy']:.4f} ± ")
    assert headers[0].split(" (standard error) on ")[1].startswith("9 held-out test images")
    assert headers[1:] == [
        f"classifier: test accuracy unknown (no final record in {tmp_path / 'metrics.jsonl'})",
        "classifier: test accuracy 0.4000 ± 0.0516 (standard error) on 90 held-out test images; warning: within 2 "
        "standard errors of chance (1/3)",
        "classifier: test accuracy 0.9000 ± 0.0316 (standard error) on 90 held-out test images"]


@pytest.fixture(scope="module")
def inputs(trained, module_folder) -> dict[str, str]:
    """In a folder whose runs/demo/ holds a classifier.pt, as after the quick start (relative to it): checkpoints that
    are missing, of another kind, damaged (NaN) or not one at all, a photo, a named pipe, a folder of broken files."""
    tmp_path = module_folder / "inputs"
    (tmp_path / "runs" / "demo" / "classifier-random-frozen").mkdir(parents=True)
    (tmp_path / "runs" / "demo" / "classifier-random-frozen" / "classifier.pt").write_bytes(b"")
    model.save_checkpoint(tmp_path / "siam.pt", "simsiam", model.Classifier(3))
    nan = model.Classifier(3)
    nan.head[1].weight.data[0, 0] = float("nan")
    model.save_checkpoint(tmp_path / "nan.pt", "classifier", nan, classes=CLASSES,
                          args={"image_size": 16, "cache_size": 20})
    damaged = (tmp_path / "nan.pt").read_bytes().replace(b"\x80\x02}", b"\x80\x02$", 1)  # its pickle: an unknown opcode
    (tmp_path / "damaged.pt").write_bytes(damaged)
    (tmp_path / "garbage.pt").write_bytes(b"not a checkpoint")
    write_image(tmp_path / "photo.jpg", seed=3)
    os.mkfifo(tmp_path / "pipe.jpg")
    broken_files(tmp_path / "broken")
    return {"folder": str(tmp_path), "good": str(trained[1] / "classifier.pt"), "missing": "missing.pt",
            "siam": "siam.pt", "nan": "nan.pt", "damaged": "damaged.pt", "garbage": "garbage.pt", "photo": "photo.jpg",
            "pipe": "pipe.jpg", "broken": "broken"}


REFUSALS = {  # case: (arguments, a fragment of the one error line)
    "missing checkpoint": (["{photo}", "--checkpoint", "{missing}"],
                           "pass --checkpoint runs/demo/classifier-random-frozen/classifier.pt"),
    "simsiam checkpoint": (["{photo}", "--checkpoint", "{siam}"], "expected a 'classifier' one"),
    "NaN weights": (["{photo}", "--checkpoint", "{nan}"], "not finite"),
    "damaged checkpoint": (["{photo}", "--checkpoint", "{damaged}"], "not a readable checkpoint (UnpicklingError: Unsupported operand"),
    "not a checkpoint": (["{photo}", "--checkpoint", "{garbage}"], "garbage.pt: not a readable checkpoint"),
    "mistyped photo": (["{photo}", "nowhere.jpg", "--checkpoint", "{good}"], "no such file or folder: nowhere.jpg"),
    "named pipe": (["{pipe}", "--checkpoint", "{good}"], "not a regular file or folder"),
    "--csv a photo": (["{photo}", "--checkpoint", "{good}", "--csv", "{photo}"], "a file that is not a .csv file"),
    "--csv the checkpoint": (["{photo}", "--checkpoint", "{good}", "--csv", "{good}"], "a file that is not a .csv"),
    "--csv a folder": (["{photo}", "--checkpoint", "{good}", "--csv", "{broken}"], "would replace a folder"),
    "no readable photo": (["{broken}", "--checkpoint", "{good}"], "none of the 3 files could be classified"),
}


@pytest.mark.parametrize("arguments, fragment", REFUSALS.values(), ids=REFUSALS)
def test_refusals_are_one_line(inputs, capsys, monkeypatch, arguments, fragment):
    """A missing, foreign, damaged or unreadable checkpoint (naming its fault and what to pass, never torch.load's
    arguments), a mistyped path, a named pipe, a --csv that would replace a photo, the checkpoint or a folder, no
    readable photo: exit 2, one error line, no prediction, and no file changed."""
    kept = [Path(inputs["folder"]) / inputs["photo"], Path(inputs["good"])]  # what a bad --csv would replace
    before = [(path.stat().st_size, path.stat().st_mtime_ns) for path in kept]
    monkeypatch.chdir(inputs["folder"])
    with pytest.raises(SystemExit) as stop:
        predict.main([*(argument.format(**inputs) for argument in arguments), "--device", "cpu"])
    captured = capsys.readouterr()
    errors = [line for line in captured.err.splitlines() if line.startswith("error: ")]
    assert stop.value.code == 2 and len(errors) == 1 and fragment in errors[0] and printed(captured.out) == {}
    assert "weights_only" not in errors[0]
    assert [(path.stat().st_size, path.stat().st_mtime_ns) for path in kept] == before


def test_predict_on_emulated_cuda(trained, capsys):
    """On CUDA (emulated, bf16) every photo is classified, as on the CPU."""
    tree, run = trained
    with emulated_cuda():
        predict.main([str(tree / "Cat"), "--checkpoint", str(run / "classifier.pt"), "--device", "cuda"])
    assert "12 classified" in capsys.readouterr().out
