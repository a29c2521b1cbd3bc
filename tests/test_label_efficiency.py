"""The label-efficiency experiment: its seed rule, and a --tiny run end to end on the CPU (pretraining, the
classifier runs, the JSON, the plot and the small files), so that the script cannot rot before its GPU run."""
from __future__ import annotations

import json

import pytest
from PIL import Image

from experiments import label_efficiency

RUN_KEYS = {"backbone", "mode", "labels", "all_labels", "seed", "test_accuracy", "closed_form_accuracy", "num_test",
            "seconds", "command", "run"}


@pytest.fixture(scope="module")
def tiny(module_folder):
    """One --tiny run (the demo set: 320 images outside the test and validation splits; size 10, and 1,000, which
    does not fit), as (runs folder, results folder). The seed rule's other sizes: test_seed_rule."""
    folder = module_folder
    label_efficiency.main(["--tiny", "--sizes", "10", "1000", "--runs", str(folder / "runs"),
                           "--results", str(folder / "results")])
    return folder / "runs", folder / "results"


def test_seed_rule():
    """A size takes the seeds of the first step whose UP_TO it does not exceed: 5 up to 100 labels, 3 up to
    1,000, 1 beyond."""
    sizes = [10, 100, 101, 1000, 1001, 2500]
    assert [label_efficiency.label_seeds(n, label_efficiency.SEED_RULE) for n in sizes] == [5, 5, 3, 3, 1, 1]


def test_seed_rule_from_the_command_line():
    """--seed-rule UP_TO:SEEDS ... all:SEEDS replaces the default rule."""
    assert label_efficiency.parse_args(["--seed-rule", "50:4", "all:2"]).seed_rule == [(50, 4), (None, 2)]


def test_seed_rule_needs_a_last_step_for_all():
    """A rule that leaves larger sizes without seeds (no all:SEEDS last) is refused at the command line."""
    with pytest.raises(SystemExit):
        label_efficiency.parse_args(["--seed-rule", "50:4", "500:2"])


@pytest.mark.slow
def test_one_run_per_backbone_mode_size_and_seed(tiny):
    """The JSON records every run with its keys: per backbone x mode, label seeds 0 and 1 at 10 labels (the --tiny
    rule 10:2 all:1), and one run on all 320 images outside the test and validation splits."""
    result = json.loads((tiny[1] / "label-efficiency.json").read_text())
    assert all(set(run) == RUN_KEYS for run in result["runs"])
    runs = sorted((r["backbone"], r["mode"], r["labels"], -1 if r["seed"] is None else r["seed"])
                  for r in result["runs"])
    expected = sorted((backbone, mode, labels, seed) for backbone in ("random", "simsiam")
                      for mode in ("frozen", "finetune") for labels, seed in [(10, 0), (10, 1), (320, -1)])
    assert runs == expected


@pytest.mark.slow
def test_summary_spreads_over_seeds(tiny):
    """Per backbone x mode x size the summary holds its number of seeds and mean, std, min and max of the test
    accuracy (min <= mean <= max), and of the closed-form probe exactly where the runs are frozen."""
    result = json.loads((tiny[1] / "label-efficiency.json").read_text())
    assert len(result["summary"]) == 4 * 2
    for row in result["summary"]:
        accuracy = row["test_accuracy"]
        assert row["seeds"] == (2 if row["labels"] == 10 else 1)
        assert accuracy["min"] <= accuracy["mean"] <= accuracy["max"] and accuracy["std"] >= 0
        assert (row["closed_form_accuracy"] is not None) == (row["mode"] == "frozen")
    assert {"hardware", "date", "split", "pretraining", "seed_rule"} <= set(result)
    assert result["pretraining"]["command"].startswith("python train.py")


@pytest.mark.slow
def test_sizes_beyond_the_labellable_images_are_skipped(tiny):
    """1,000 labels, more than the 320 images outside the test and validation splits hold, are left out of the
    sizes with a note."""
    result = json.loads((tiny[1] / "label-efficiency.json").read_text())
    assert result["sizes"] == [10] and result["split"]["to_label"] == 320
    assert len(result["skipped"]) == 1 and result["skipped"][0].startswith("1,000 labels skipped")


@pytest.mark.slow
def test_every_run_holds_out_the_same_split_at_the_same_pixels(tiny):
    """Every classifier run (copied args.json) used the same split seed, test fraction, limit, resolution and
    cache as the pretraining, and every final record counts the same test images."""
    results = tiny[1] / "label-efficiency"
    settings = {tuple(json.loads(path.read_text())[key] for key in ("split_seed", "test_fraction", "limit",
                                                                   "image_size"))
                for path in results.glob("*/args.json")}
    assert settings == {(0, 0.1, 400, 32)}
    caches = {json.loads(path.read_text())["cache_size"] for path in results.glob("classifier-*/args.json")}
    assert caches == {37}
    result = json.loads((tiny[1] / "label-efficiency.json").read_text())
    assert {run["num_test"] for run in result["runs"]} == {result["split"]["num_test"]} == {40}


@pytest.mark.slow
def test_plot_is_a_png(tiny):
    """The plot is a readable PNG of a figure's size."""
    with Image.open(tiny[1] / "label-efficiency.png") as image:
        image.verify()
        assert image.format == "PNG" and image.size[0] > 800 and image.size[1] > 600


@pytest.mark.slow
def test_small_files_copied_without_checkpoints(tiny):
    """Each run's args, metrics and labelled indices are copied to the results, and no checkpoint is."""
    copied = list((tiny[1] / "label-efficiency").rglob("*"))
    assert sum(path.name == "metrics.jsonl" for path in copied) == 12 + 1  # the classifier runs and the pretraining
    assert not any(path.suffix == ".pt" for path in copied)


@pytest.mark.slow
def test_checkpoint_of_another_split_refused(tiny):
    """--checkpoint pretrained with another --split-seed is refused before any classifier run starts."""
    runs = tiny[0]
    with pytest.raises(SystemExit) as stop:
        label_efficiency.main(["--tiny", "--checkpoint", str(runs / "simsiam" / "siam.pt"), "--split-seed", "1",
                               "--runs", str(runs.parent / "other-runs"), "--results", str(runs.parent / "other")])
    assert stop.value.code == 2 and not (runs.parent / "other-runs" / "classifier-random-frozen-all-labels").exists()
