"""classifier.py in-process at 16 px: the frozen protocol (backbone bit-identical), both probes, --finetune's lr
groups, --compare, --test-data with copies of the training photos, --all-labels, the refusals (one table) and the
CUDA paths (emulated). One SimSiam checkpoint, written without train.py, and one frozen run serve the module."""
from __future__ import annotations

import argparse
import contextlib
import csv
import io
import json
import math
import shutil
from pathlib import Path

import numpy
import pytest
import torch
from conftest import write_class_tree, write_image
from emulated_cuda import emulated_cuda

import classifier
import dataset
import embed
import evaluate
import model
import runs

SPLITS = ["--labels", "6", "--test-fraction", "0.25"]  # 3 classes x 12: 9 test, 3 validation, 6 labelled images
TINY = ["--image-size", "16", "--epochs", "2", "--device", "cpu", "--workers", "1", *SPLITS]


@pytest.fixture(scope="module")
def pretrained(module_folder):
    """{tree, cache, siam: a SimSiam checkpoint of this tree's split at 16 px from a 20 px cache (not the default
    19), leaky: one that says it was pretrained on every image, old: one of an older protocol}; 64-d heads."""
    with pytest.MonkeyPatch.context() as patch:  # load_checkpoint expects 64-d heads while the module runs
        patch.setattr(model, "PROJECTION_DIM", 64)
        patch.setattr(model, "PREDICTION_HIDDEN_DIM", 16)
        tree, cache = write_class_tree(module_folder / "Pets", per_class=12), module_folder / "cache"
        options = classifier.parse_args(["--data", str(tree), "--cache-dir", str(cache), "--workers", "1", *SPLITS])
        data, splits = dataset.open_data(argparse.Namespace(**{**vars(options), "image_size": 16, "cache_size": 20,
                                                               "unlabelled": False}), verbose=False)
        torch.manual_seed(0)
        simsiam = model.SimSiam()
        paths = {"tree": tree, "cache": cache}
        for name, hashes, protocol in [("siam", data.hashes[splits.pretrain], runs.PROTOCOL),
                                       ("leaky", data.hashes, runs.PROTOCOL), ("old", data.hashes[splits.pretrain], 1)]:
            paths[name] = module_folder / f"{name}.pt"
            model.save_checkpoint(paths[name], "simsiam", simsiam, epoch=1, pretraining_hashes=hashes,
                                  protocol=protocol, split=dataset.split_identity(data, splits, options),
                                  args={"image_size": 16, "cache_size": 20, "seed": 0})
        yield paths


def run(pretrained, out, *extra) -> str:
    """classifier.main on the module's tree with TINY settings (over siam.pt unless --random or --init...); stdout."""
    backbone = [] if {"--random", "--init", "--init-weights"} & set(extra) else ["--checkpoint", str(pretrained["siam"])]
    stdout = io.StringIO()
    with contextlib.redirect_stdout(stdout):
        classifier.main(["--data", str(pretrained["tree"]), "--cache-dir", str(pretrained["cache"]), *TINY, *backbone,
                         *(["--out", str(out)] if out else []), *extra])
    return stdout.getvalue()


@pytest.fixture(scope="module")
def frozen(pretrained, module_folder):
    """(run folder, stdout) of one frozen classifier over siam.pt."""
    return module_folder / "frozen", run(pretrained, module_folder / "frozen")


def test_frozen_run_writes_every_promised_file(frozen):
    """args.json (the checkpoint's 16 px and 20 px cache), metrics.jsonl (2 epochs with the validation accuracy, then
    the final record with both probes), labelled.json, predictions.json, classifier.pt (classes and sizes for
    predict.py); the last three lines."""
    out, stdout = frozen
    recorded = json.loads((out / "args.json").read_text())
    assert (recorded["image_size"], recorded["cache_size"], recorded["backbone"], recorded["mode"]) == \
        (16, 20, "simsiam", "frozen")
    *epochs, final = runs.read_jsonl(out / "metrics.jsonl")
    assert [r["epoch"] for r in epochs] == [1, 2]
    assert all({"train_loss", "train_accuracy", "lr"} <= set(record) for record in epochs)
    assert final["event"] == "final" and final["num_test"] == 9 and 0 <= final["closed_form_accuracy"] <= 1
    assert len(json.loads((out / "labelled.json").read_text())["files"]) == 6
    predictions = runs.read_predictions(out)
    assert len(predictions["files"]) == len(predictions["head"]) == len(predictions["closed_form"]) == 9
    saved = model.load_checkpoint(out / "classifier.pt", "classifier", needs=("classes", "args"))
    assert saved["classes"] == ["Cat", "Dog", "Fox"]
    assert (saved["args"]["image_size"], saved["args"]["cache_size"]) == (16, 20)
    assert all(0 <= record["validation_accuracy"] <= 1 for record in epochs)  # the head's, each epoch
    *_, closed_form_line, fitted_line, last = stdout.strip().splitlines()
    assert closed_form_line.startswith("closed-form probe (") and closed_form_line.endswith(
        f"{final['closed_form_accuracy']:.4f}")
    assert fitted_line == f"linear probe: {final['labelled_accuracy']:.4f} of its 6 labelled images (evaluation " \
                          f"view), {final['validation_accuracy']:.4f} of 3 validation images"
    error = (final["test_accuracy"] * (1 - final["test_accuracy"]) / 9) ** 0.5
    assert last == f"test accuracy: {final['test_accuracy']:.4f} ± {error:.4f} (standard error) on 9 held-out test " \
                   f"images"


def test_frozen_backbone_is_bit_identical_to_the_checkpoints(pretrained, frozen):
    """Every backbone weight and BatchNorm statistic of classifier.pt equals siam.pt's, bit for bit."""
    siam = model.load_checkpoint(pretrained["siam"], "simsiam")["model"]
    trained = model.load_checkpoint(frozen[0] / "classifier.pt", "classifier")["model"]
    keys = [key for key in trained if key.startswith("backbone.")]
    assert keys and all(torch.equal(trained[key], siam[key]) for key in keys)


def test_recorded_accuracies_are_those_of_the_predictions(frozen):
    """The final record's accuracies are the fractions of predictions.json's head and closed-form predictions that
    match the labels."""
    final, predictions = runs.final_record(frozen[0] / "metrics.jsonl"), runs.read_predictions(frozen[0])
    for key, recorded in [("head", "test_accuracy"), ("closed_form", "closed_form_accuracy")]:
        correct = [p == label for p, label in zip(predictions[key], predictions["labels"])]
        assert final[recorded] == pytest.approx(sum(correct) / len(correct))


def test_finetune_trains_both_groups_on_their_cosines_and_compares(pretrained, frozen, module_folder):
    """--finetune --backbone-lr-factor 0.1: each epoch logs the head's lr on the cosine from --lr x 6 / 256 and the
    backbone's at 0.1 x it; the backbone moves; no closed-form probe; --compare prints the paired difference."""
    out = module_folder / "finetune"
    stdout = run(pretrained, out, "--finetune", "--backbone-lr-factor", "0.1", "--compare", str(frozen[0]))
    *epochs, final = runs.read_jsonl(out / "metrics.jsonl")
    peak = 0.05 * 6 / 256  # one step per epoch: the last step of epoch e is step e - 1 of 2
    for record in epochs:
        assert record["lr"] == pytest.approx(peak * (1 + math.cos(math.pi * (record["epoch"] - 1) / 2)) / 2)
        assert record["backbone_lr"] == pytest.approx(0.1 * record["lr"])
    assert not any(key.startswith("closed_form") for key in final)
    siam = model.load_checkpoint(pretrained["siam"], "simsiam")["model"]
    moved = model.load_checkpoint(out / "classifier.pt", "classifier")["model"]
    assert not torch.equal(moved["backbone.conv1.weight"], siam["backbone.conv1.weight"])
    assert f"linear probe, this run - {frozen[0]}: " in stdout and "paired s.e." in stdout


def test_test_data_leaves_out_the_photos_it_trains_on(pretrained, tmp_path, monkeypatch):
    """--random --all-labels --test-data: copies (under other names) of the photos it trains on, every image outside
    the test and validation splits, are left out with a note, new photos kept; the run goes to runs/ under its
    default name."""
    other = tmp_path / "other"
    for name in ("Cat", "Dog"):
        write_image(other / name / "new.jpg", seed=999 + len(name))
        for i in range(6):
            shutil.copy(pretrained["tree"] / name / f"{i}.jpg", other / name / f"copy-{i}.jpg")
    monkeypatch.chdir(tmp_path)
    stdout = run(pretrained, None, "--random", "--all-labels", "--test-data", str(other))
    out = tmp_path / "runs" / "classifier-random-frozen-all-labels"
    trained = json.loads((out / "labelled.json").read_text())["files"]
    assert len(trained) == 24  # all 36 but 9 test and 3 validation
    copies = sum(f"{name}/{i}.jpg" in trained for name in ("Cat", "Dog") for i in range(6))
    assert runs.final_record(out / "metrics.jsonl")["num_test"] == 14 - copies
    assert f"note: {copies} of the 14 images of --test-data {other} are copies of photos" in stdout
    left_out = (out / "left-out.txt").read_text().splitlines()
    assert len(left_out) == copies and all(name.split("/")[1].startswith("copy-") for name in left_out)
    assert json.loads((out / "predictions.json").read_text())["left_out"] == left_out


def test_test_data_copies_of_pretraining_photos_are_left_out_and_compared_on_the_rest(pretrained, tmp_path):
    """--test-data holding copies of every Cat and Dog photo and 2 new ones, over siam.pt: the 16 copies of photos
    pretrained on are left out, counted and listed, the 8 of held-out photos and the new ones tested; a random-init
    run on the same folder (only its labelled photos left out) is paired with it on the 10 images both tested."""
    other = tmp_path / "other"
    for name in ("Cat", "Dog"):
        write_image(other / name / "new.jpg", seed=990 + len(name))
        for i in range(12):
            shutil.copy(pretrained["tree"] / name / f"{i}.jpg", other / name / f"copy-{i}.jpg")
    stdout = run(pretrained, tmp_path / "simsiam", "--test-data", str(other))
    final = runs.final_record(tmp_path / "simsiam" / "metrics.jsonl")
    assert (final["num_test"], final["num_left_out"]) == (10, 16)
    assert len((tmp_path / "simsiam" / "left-out.txt").read_text().splitlines()) == 16
    assert "note: 16 of the 26 images of --test-data" in stdout and "(16 copies of photos trained on left out)" in stdout
    stdout = run(pretrained, tmp_path / "random", "--random", "--test-data", str(other), "--compare",
                 str(tmp_path / "simsiam"))
    assert runs.final_record(tmp_path / "random" / "metrics.jsonl")["num_left_out"] == 4  # its 4 labelled photos
    assert "linear probe, this run - " in stdout and "on 10 test images" in stdout


def test_init_weights_reach_the_classifier_and_its_record(pretrained, tmp_path):
    """--init-weights BACKBONE.pt: the classifier's backbone holds that file's weights; the run is named and recorded
    as the "weights" backbone; classifier.pt records the environment, Pillow and NumPy included."""
    torch.manual_seed(5)
    model.export_backbone(model.SimSiam(), tmp_path / "backbone.pt")
    run(pretrained, tmp_path / "weights", "--init-weights", str(tmp_path / "backbone.pt"))
    saved = model.load_checkpoint(tmp_path / "weights" / "classifier.pt", "classifier")
    exported = torch.load(tmp_path / "backbone.pt", weights_only=True)
    assert all(torch.equal(saved["model"][f"backbone.{key}"], value) for key, value in exported.items())
    assert json.loads((tmp_path / "weights" / "args.json").read_text())["backbone"] == "weights"
    assert {"pillow", "numpy", "torch"} <= set(saved["environment"])


def test_embeddings_are_the_backbones_features_with_files_and_classes(pretrained, tmp_path):
    """embed.py: OUT.npy holds the checkpoint's backbone's features of every photo of the folder, in the evaluation
    view at its resolution (16 px from its 20 px cache), row by row as OUT.csv names the file and its class."""
    embed.main([str(pretrained["tree"]), "--checkpoint", str(pretrained["siam"]), "--cache-dir",
                str(pretrained["cache"]), "--workers", "1", "--device", "cpu", "--out", str(tmp_path / "e.npy")])
    features = numpy.load(tmp_path / "e.npy")
    data = dataset.load_images(pretrained["tree"], 20, pretrained["cache"], workers=1)
    backbone = model.resnet18_backbone()
    backbone.load_state_dict(model.backbone_state(model.load_checkpoint(pretrained["siam"], "simsiam")))
    expected = evaluate.embed(backbone, data.images, torch.arange(len(data.files)), 16, runs.make_runtime("cpu"))
    torch.testing.assert_close(torch.from_numpy(features), expected)
    with open(tmp_path / "e.csv", newline="") as file:
        rows = list(csv.reader(file))
    assert rows[0] == ["row", "file", "class"] and len(rows) == 1 + len(data.files) == 37
    assert all([str(i), name, data.classes[label]] == row
               for i, (row, name, label) in enumerate(zip(rows[1:], data.files, data.labels.tolist())))


def run_files(folder: Path) -> dict[str, bytes]:
    return {path.name: path.read_bytes() for path in sorted(folder.iterdir()) if path.is_file()}


@pytest.fixture(scope="module")
def inputs(pretrained, frozen, module_folder) -> dict[str, str]:
    """What the refusals table names: a run folder to (not) replace, a loose-photo folder, --test-data folders of
    copies of the labelled photos (which every run on these flags draws) and of an unknown class."""
    old_run = module_folder / "old-run"
    shutil.copytree(frozen[0], old_run)
    for name in json.loads((old_run / "labelled.json").read_text())["files"]:
        (module_folder / "copies" / name).parent.mkdir(parents=True, exist_ok=True)
        shutil.copy(pretrained["tree"] / name, module_folder / "copies" / name.replace(".jpg", "-copy.jpg"))
    for i in range(4):
        write_image(module_folder / "loose" / f"IMG_{i}.jpg", seed=500 + i)
        write_image(module_folder / "wolves" / "Wolf" / f"{i}.jpg", seed=600 + i)
    return {**{name: str(path) for name, path in pretrained.items()}, "old_run": str(old_run),
            "classifier": str(frozen[0] / "classifier.pt"), "missing": str(module_folder / "missing.pt"),
            **{name: str(module_folder / name) for name in ("loose", "copies", "wolves", "nowhere")}}


REFUSALS = [  # (arguments, a fragment of the one error line): each refused, exit 2, the old run left as it was
    ([], "already holds a run"),
    (["--overwrite", "--checkpoint", "{missing}"], "no such checkpoint file"),
    (["--overwrite", "--checkpoint", "{classifier}"], "expected a 'simsiam' one"),
    (["--overwrite", "--checkpoint", "{old}"], "evaluation protocol 1"),
    (["--overwrite", "--checkpoint", "{leaky}"], "9 of the 9 test images"),
    (["--overwrite", "--random", "--labels", "2"], "pass --labels 3 or more"),
    (["--overwrite", "--random", "--data", "{loose}"], "so they have no labels"),
    (["--overwrite", "--random", "--test-data", "{copies}"], "every image of --test-data"),
    (["--overwrite", "--random", "--test-data", "{wolves}"], "classes ['Wolf'] that the training data lacks"),
    (["--overwrite", "--compare", "{nowhere}"], "no readable predictions.json"),
    (["--overwrite", "--random", "--finetune", "--lr", "1e30"], "non-finite training loss at epoch 2"),  # step 2
    (["--random", "--checkpoint", "{siam}"], "not allowed with argument"),
    (["--overwrite", "--random", "--validate", "--val-fraction", "0"], "--validate tests on the validation split"),
]


@pytest.mark.parametrize("arguments, fragment", REFUSALS, ids=[fragment for _, fragment in REFUSALS])
def test_refusals_are_one_line_and_keep_the_old_run(inputs, capsys, arguments, fragment):
    """Each bad flag, folder, checkpoint, leak or loss: exit 2 with one error line naming it (the argparse error for
    flags that exclude each other); the run in --out, which it would replace, is still there as it was."""
    before = run_files(Path(inputs["old_run"]))
    capsys.readouterr()
    with pytest.raises(SystemExit) as stop:
        classifier.main(["--data", inputs["tree"], "--cache-dir", inputs["cache"], *TINY, "--out", inputs["old_run"],
                         *(argument.format(**inputs) for argument in arguments)])
    errors = [line for line in capsys.readouterr().err.splitlines() if "error: " in line]
    assert stop.value.code == 2 and len(errors) == 1 and fragment in errors[0]
    assert run_files(Path(inputs["old_run"])) == before


@pytest.mark.slow
def test_frozen_and_finetuned_on_emulated_cuda(pretrained, tmp_path):
    """On CUDA (emulated): bf16, frozen with the closed-form probe and fine-tuned; checkpoints load on the CPU."""
    with emulated_cuda():
        for mode in ([], ["--finetune"]):
            run(pretrained, tmp_path / f"cuda{len(mode)}", "--device", "cuda", *mode)
    for mode, out in [([], tmp_path / "cuda0"), (["--finetune"], tmp_path / "cuda1")]:
        recorded = json.loads((out / "args.json").read_text())
        assert (recorded["device_used"], recorded["precision_used"]) == ("cuda:0", "bf16")
        final = runs.final_record(out / "metrics.jsonl")
        assert 0 <= final["test_accuracy"] <= 1 and ("closed_form_accuracy" in final) == (not mode)
        assert model.load_checkpoint(out / "classifier.pt", "classifier")["model"]["head.1.weight"].device.type == "cpu"


def test_probes_are_fitted_on_the_labelled_images_and_scored_on_validation(pretrained, frozen):
    """Refitting evaluate.logistic_probe on the backbone's evaluation-view features of labelled.json's images gives
    predictions.json's closed-form predictions of the test images and the final record's validation figures; the
    head's recorded accuracies on its labelled images and the validation split are those of classifier.pt's head."""
    checkpoint = model.load_checkpoint(frozen[0] / "classifier.pt", "classifier", needs=("args",))
    data, splits = dataset.open_data(argparse.Namespace(**{**checkpoint["args"], "data": pretrained["tree"],
                                                           "cache_dir": pretrained["cache"]}), verbose=False)
    classifier_model = model.load_weights(model.Classifier(3), checkpoint["model"], "classifier.pt").eval()
    runtime = runs.make_runtime("cpu", "fp32")
    labelled = torch.tensor(json.loads((frozen[0] / "labelled.json").read_text())["indices"])
    features, test_features, validation_features = (evaluate.embed(classifier_model.backbone, data.images, rows, 16,
                                                                   runtime)
                                                    for rows in (labelled, splits.test, splits.validation))
    refit = evaluate.logistic_probe(features, data.labels[labelled], test_features, data.labels[splits.test], 3,
                                    validation=(validation_features, data.labels[splits.validation]))
    final = runs.final_record(frozen[0] / "metrics.jsonl")
    assert refit["test_predictions"] == runs.read_predictions(frozen[0])["closed_form"]
    assert [refit["validation_accuracy"], refit["validation_by_penalty"]] == \
        [final["closed_form_validation_accuracy"], final["closed_form_validation_by_penalty"]]
    with torch.no_grad():
        for rows, x, key in [(labelled, features, "labelled_accuracy"),
                             (splits.validation, validation_features, "validation_accuracy")]:
            assert final[key] == pytest.approx(evaluate.accuracy(classifier_model.head(x), data.labels[rows]).item())


def test_validate_tests_on_the_validation_split(pretrained, frozen, tmp_path):
    """--validate: the predictions are of the 3 validation images, the frozen run's labelled images and head
    settings alike, so its test figure is the validation accuracy the frozen run records."""
    run(pretrained, tmp_path / "validate", "--validate")
    predictions, other = runs.read_predictions(tmp_path / "validate"), runs.read_predictions(frozen[0])
    labelled = json.loads((frozen[0] / "labelled.json").read_text())
    final, frozen_final = (runs.final_record(out / "metrics.jsonl") for out in (tmp_path / "validate", frozen[0]))
    assert predictions["test_set"] == "3 validation images" and not set(predictions["files"]) & set(other["files"])
    assert not set(predictions["files"]) & set(labelled["files"])
    assert final["test_accuracy"] == pytest.approx(frozen_final["validation_accuracy"])



def test_config_of_a_random_init_record_from_before_init_reruns_random_init(tmp_path):
    """An args.json written before --init (its "random": true, no "flags") reruns random init, not the checkpoint it
    also names."""
    (tmp_path / "args.json").write_text(json.dumps({"random": True, "checkpoint": "runs/simsiam/siam.pt",
                                                    "labels": 8, "data": "data/PetImages"}))
    args = classifier.parse_args(["--config", str(tmp_path / "args.json")])
    assert evaluate.backbone_name(args) == "random" and args.labels == 8
