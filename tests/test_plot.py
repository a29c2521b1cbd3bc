"""plot.py on small canned run folders: the figures, the results table with standard errors and the paired
difference, folders it did not write skipped with a note, names drawn as written and told apart."""
from __future__ import annotations

import json
import os
from pathlib import Path

import pytest
from matplotlib.figure import Figure
from matplotlib.text import Text
from PIL import Image

import plot

FILES = [f"{i}.jpg" for i in range(100)]
LABELS = [i % 2 for i in range(100)]


def right_on(first: int) -> list[int]:
    """Predictions right on the first `first` of the 100 test images, wrong on the others."""
    return [label if i < first else 1 - label for i, label in enumerate(LABELS)]


def write_run(folder: Path, args, records: list, predictions: dict | None = None) -> Path:
    folder.mkdir(parents=True)
    (folder / "args.json").write_text(args if isinstance(args, str) else json.dumps(args))
    (folder / "metrics.jsonl").write_text("".join(json.dumps(record) + "\n" for record in records))
    if predictions is not None:
        (folder / "predictions.json").write_text(json.dumps({"files": FILES, "labels": LABELS, **predictions}))
    return folder


def classifier_run(folder: Path, backbone: str, head: int, closed_form: int, fingerprint: str = "x",
                   num_test: int = 100) -> Path:
    args = {"backbone": backbone, "mode": "frozen", "num_classes": 2, "test_fingerprint": fingerprint}
    final = {"event": "final", "test_accuracy": head / 100, "num_test": num_test,
             "closed_form_accuracy": closed_form / 100}
    records = [{"epoch": epoch, "train_loss": 0.8 - epoch / 10, "train_accuracy": 0.5 + epoch / 10} for epoch in (1, 2)]
    records.append(final)
    return write_run(folder, args, records, {"head": right_on(head), "closed_form": right_on(closed_form)})


def pretraining_run(folder: Path) -> Path:
    records = [{"epoch": epoch, "loss": -0.2 * epoch, "z_std": 0.02, "knn_accuracy": 0.5 + 0.05 * epoch}
               for epoch in (1, 2, 3)]
    return write_run(folder, {"epochs": 3, "num_classes": 2}, records)


def run_main(argv: list[str], capsys) -> str:
    plot.main([*map(str, argv)])
    return capsys.readouterr().out


@pytest.fixture
def figures(monkeypatch) -> list:
    """The figures saved while a test runs, each still written to its file."""
    saved, savefig = [], Figure.savefig
    monkeypatch.setattr(Figure, "savefig", lambda *args, **kwargs: saved.append(args[0]) or savefig(*args, **kwargs))
    return saved


def test_figures_table_and_paired_difference(tmp_path, capsys):
    """Both PNGs are written; each finished classifier run's probes are tabled with accuracy ± its standard error
    and test size; a SimSiam and a random-init run tested on the same images get their paired difference. A run
    folder whose name is not UTF-8 is named, not a crash."""
    pretraining_run(tmp_path / "runs" / "simsiam")
    classifier_run(tmp_path / "runs" / "random", "random", 60, 55)
    odd = classifier_run(tmp_path / "runs" / os.fsdecode(b"simsiam-caf\xe9"), "simsiam", 80, 75)
    out = run_main([tmp_path / "runs", "--out", tmp_path / "plots"], capsys)
    for name, width in (("simsiam.png", 1800), ("classifier.png", 1200)):
        with Image.open(tmp_path / "plots" / name) as image:
            assert image.size[0] == width
    assert "random   linear probe          0.600 ± 0.049      100   random" in out
    assert "simsiam  closed-form probe     0.750 ± 0.043      100   simsiam-caf\\xe9" in out
    assert "SimSiam - random, linear probe: +20.0 ± 4.0 points" in out
    assert "SimSiam - random, closed-form probe: +20.0 ± 4.0 points" in out and odd.is_dir()


def test_runs_tested_on_different_images_are_not_compared(tmp_path, capsys):
    """Runs tested on different test sets: a warning, and no paired difference."""
    classifier_run(tmp_path / "random", "random", 60, 55, fingerprint="x")
    run = classifier_run(tmp_path / "simsiam", "simsiam", 80, 75, fingerprint="y")
    predictions = json.loads((run / "predictions.json").read_text())
    (run / "predictions.json").write_text(json.dumps({**predictions, "files": FILES[::-1]}))
    out = run_main([tmp_path / "random", tmp_path / "simsiam", "--out", tmp_path / "plots"], capsys)
    assert "WARNING: these runs were tested on different test sets" in out and "SimSiam - random" not in out


FOREIGN = [  # (args.json text, None: none; metrics.jsonl records, None: none, or "a folder"; a fragment of the note)
    (None, None, "not a run's folder, no readable args.json"),
    (None, [{"epoch": 1, "loss": 0.1}], "not a run's folder, no readable args.json"),
    ("{}", "a folder", "not a run's folder, no readable metrics.jsonl"),
    ("{}", [], "its metrics.jsonl has no records yet"),
    ('{"epochs": 2, "ba', [], "its args.json is not JSON"),
    ("[1, 2]", [{"epoch": 1, "loss": 0.1}], "args.json is not a run's"),
    ('{"backbone": "vit", "mode": "frozen"}', [], "args.json is not a run's"),
    ("{}", [{"epoch": 1, "loss": "high"}], "metrics.jsonl's loss is 'high', not a number"),
    ("{}", [{"epoch": 1, "loss": float("nan")}], "metrics.jsonl's loss is nan, not a number"),
    ('{"backbone": "random", "mode": "frozen"}', [{"event": "final", "test_accuracy": 57.2, "num_test": 10}],
     "test_accuracy is 57.2, not a number in [0, 1]"),
    ('{"backbone": "random", "mode": "frozen"}', [{"event": "final", "test_accuracy": 0.5}], "lacks num_test")]


@pytest.mark.parametrize("args_text, records, fragment", FOREIGN)
def test_a_folder_it_did_not_write_is_skipped_with_a_note(tmp_path, capsys, args_text, records, fragment):
    """Files that are not what runs write (a folder of something else, no args.json, a metrics.jsonl that is a
    folder or holds no records yet, an args.json cut short by a kill, a list, strings or NaN where numbers belong, an
    accuracy in percent, a final record without num_test): the folder is skipped with one note naming the file and
    field, not a traceback."""
    folder = tmp_path / "foreign"
    folder.mkdir()
    if args_text is not None:
        (folder / "args.json").write_text(args_text)
    if records == "a folder":
        (folder / "metrics.jsonl").mkdir()
    elif records is not None:
        (folder / "metrics.jsonl").write_text("".join(json.dumps(record) + "\n" for record in records))
    pretraining, classifiers, [note] = plot.load_runs([folder])
    assert not pretraining and not classifiers and note.startswith(f"{folder}: ") and fragment in note
    assert "\n" not in note and not capsys.readouterr().out


def test_when_every_folder_is_skipped_the_error_says_why(tmp_path, capsys):
    """Nothing to draw: the one-line error names each folder skipped and why (here a metrics.jsonl that is a folder,
    a run with no records yet), not only that no runs were found."""
    (tmp_path / "odd" / "metrics.jsonl").mkdir(parents=True)
    (tmp_path / "odd" / "args.json").write_text("{}")
    write_run(tmp_path / "new", {"epochs": 3}, [])
    with pytest.raises(SystemExit):
        plot.main([str(tmp_path / "odd"), str(tmp_path / "new"), "--out", str(tmp_path / "plots")])
    error = capsys.readouterr().err
    assert f"{tmp_path / 'odd'}: not a run's folder, no readable metrics.jsonl" in error and error.count("\n") == 1
    assert f"{tmp_path / 'new'}: its metrics.jsonl has no records yet" in error


def test_the_good_runs_are_still_drawn_beside_a_foreign_folder(tmp_path, capsys):
    """A killed run's cut-short metrics line is ignored and its run drawn; a foreign folder beside it is skipped."""
    run = pretraining_run(tmp_path / "run")
    with open(run / "metrics.jsonl", "a") as file:
        file.write('{"epoch": 4, "loss"')
    (tmp_path / "starting").mkdir()
    (tmp_path / "starting" / "args.json").write_text('{"epochs": 2, "ba')
    out = run_main([run, tmp_path / "starting", "--out", tmp_path / "plots"], capsys)
    assert "skipped" in out and (tmp_path / "plots" / "simsiam.png").is_file()
    assert not (tmp_path / "plots" / "classifier.png").exists()


def test_run_folders_are_found_at_any_depth_outside_hidden_folders(tmp_path, monkeypatch):
    """A folder named: its runs at any depth (runs/demo/...); a run being replaced (.replaced) is not a run; a folder
    given that holds none is kept, to be noted."""
    for folder in ["demo/simsiam", "demo/classifier-random-frozen", "other", "demo/simsiam/.replaced"]:
        (tmp_path / "runs" / folder).mkdir(parents=True)
        (tmp_path / "runs" / folder / "metrics.jsonl").write_text("")
    (tmp_path / "runs" / "empty").mkdir()
    monkeypatch.chdir(tmp_path)
    found = [Path("runs/demo/classifier-random-frozen"), Path("runs/demo/simsiam"), Path("runs/other")]
    assert plot.run_folders([Path("runs")]) == found
    assert plot.run_folders([Path("runs/demo/simsiam"), Path("runs/empty")]) == [Path("runs/demo/simsiam"),
                                                                                   Path("runs/empty")]


def test_without_arguments_only_the_runs_in_runs_are_read(tmp_path, monkeypatch, capsys):
    """plot.py alone reads runs/*/, not the runs further down (the quick start's runs/demo/*, experiments'): one line
    names their folders and how to plot them; runs/plots, holding no run, is passed over."""
    for folder in ["mine", "demo/simsiam", "cpu-curve/result/simsiam"]:
        pretraining_run(tmp_path / "runs" / folder)
    (tmp_path / "runs" / "plots").mkdir()
    monkeypatch.chdir(tmp_path)
    assert plot.run_folders([]) == [Path("runs/mine")]
    assert capsys.readouterr().out == ("further runs, not plotted: runs/cpu-curve, runs/demo (python plot.py "
                                       "runs/cpu-curve --out runs/cpu-curve/plots)\n")


def test_runs_of_one_folder_name_are_told_apart(tmp_path, capsys, figures):
    """Two runs in folders of one name (a/random, b/random): the table and the legends name each by its path."""
    for folder, head in (("a", 60), ("b", 70)):
        classifier_run(tmp_path / folder / "random", "random", head, 55)
    out = run_main([tmp_path, "--out", tmp_path / "plots"], capsys)
    legends = [text.get_text() for axis in figures[0].axes for text in axis.get_legend().get_texts()]
    for folder in ("a", "b"):
        assert f"   {tmp_path / folder / 'random'}\n" in out
        assert any(f"({tmp_path / folder / 'random'})" in legend for legend in legends)


def test_names_in_tex_are_drawn_as_written(tmp_path, capsys, figures):
    """Run folders named like TeX ($\\foo$, which mathtext cannot parse; $x^2$, which it would typeset): both
    figures are written, the legends name the runs as written, and no text drawn is read as mathtext."""
    pretraining_run(tmp_path / "$\\foo$")
    classifier_run(tmp_path / "$x^2$", "random", 60, 55)
    run_main([tmp_path, "--out", tmp_path / "plots"], capsys)
    texts = [text for figure in figures for text in figure.findobj(Text)]
    assert len(figures) == 2 and not any(text.get_parse_math() for text in texts)
    assert {"$\\foo$: -0.600", "random, frozen ($x^2$): 0.600, test 0.600"} <= {text.get_text() for text in texts}


def test_each_run_states_its_own_number_of_test_images(tmp_path, capsys, figures):
    """Runs tested on 100 and on 40 images: each table row counts its own, and no title counts one run's."""
    classifier_run(tmp_path / "random", "random", 60, 55, fingerprint="x")
    classifier_run(tmp_path / "simsiam", "simsiam", 80, 75, fingerprint="y", num_test=40)
    out = run_main([tmp_path, "--out", tmp_path / "plots"], capsys)
    assert "    100   random\n" in out and "     40   simsiam\n" in out
    titles = [figures[0].get_suptitle(), *(axis.get_title() for axis in figures[0].axes)]
    assert not any(count in title for title in titles for count in ("100", "40", "test images"))


@pytest.mark.parametrize("case, fragment", [("no runs", "nothing: not a run's folder, no readable args.json"),
                                            ("out a file", "--out"),
                                            ("out under a file", "is a file, not a folder")])
def test_refusals_are_one_line(tmp_path, capsys, case, fragment):
    """No run where named (the error says why), or --out a file (or below one): one line, exit 2, nothing written."""
    run = pretraining_run(tmp_path / "run")
    (tmp_path / "a-file").write_text("")
    argv = {"no runs": [tmp_path / "nothing", "--out", tmp_path / "plots"],
            "out a file": [run, "--out", tmp_path / "a-file"],
            "out under a file": [run, "--out", tmp_path / "a-file" / "plots"]}[case]
    with pytest.raises(SystemExit) as stop:
        plot.main([*map(str, argv)])
    error = capsys.readouterr().err
    assert stop.value.code == 2 and error.startswith("error: ") and error.count("\n") == 1 and fragment in error
    assert not (tmp_path / "plots").exists()
