"""Your own photos: loose or nested unlabelled photos pretrain, a labelled folder elsewhere monitors and evaluates,
the leak rule is by content (copies of test images under other names are refused, with their count), and the
backbone comes out in torchvision's own format."""
from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest
import torch
import torchvision
from conftest import write_image

import classifier
import train
from simsiam import dataset, decode, pretrained, runs
from simsiam.model import load_checkpoint

SMALL = ["--image-size", "32", "--device", "cpu", "--workers", "2"]
LABELLED = ["--labels", "6", "--test-fraction", "0.2"]  # the labelled folder's split, in every script


@pytest.fixture
def loose_photos(tmp_path) -> Path:
    """A phone's folder: 24 photos named IMG_0001.jpg ..., no class folders, one broken file."""
    folder = tmp_path / "myphotos"
    for i in range(24):
        write_image(folder / f"IMG_{i + 1:04d}.jpg", seed=5000 + i)
    (folder / "IMG_9999.jpg").write_bytes(b"not a photo")
    return folder


def pretrain(data: Path, tmp_path: Path, out: str = "simsiam", *extra: str) -> Path:
    train.main(["--data", str(data), "--cache-dir", str(tmp_path / "cache"), "--out", str(tmp_path / out),
                "--epochs", "1", "--batch-size", "8", *SMALL, *extra])
    return tmp_path / out


def evaluate_on(labelled: Path, tmp_path: Path, checkpoint: Path, *extra: str) -> list[str]:
    return ["--data", str(labelled), "--cache-dir", str(tmp_path / "cache"), "--out", str(tmp_path / "probe"),
            "--checkpoint", str(checkpoint), "--epochs", "1", "--batch-size", "6", *SMALL, *LABELLED, *extra]


def test_loose_photos_pretrain_unlabelled(loose_photos, tmp_path, capsys):
    """A folder of loose photos pretrains with no label read and nothing held out: every decodable photo is a
    pretraining image, the loss and z-std are logged, and the missing monitor is said once at start-up."""
    run = pretrain(loose_photos, tmp_path)
    out = capsys.readouterr().out
    assert out.count("no kNN monitor") == 1 and "--monitor-data" in out
    record = [r for r in runs.read_jsonl(run / "metrics.jsonl") if "epoch" in r][-1]
    assert record["loss"] == record["loss"] and record["z_std"] > 0 and record.get("knn_accuracy") is None
    checkpoint = load_checkpoint(run / "siam.pt", "simsiam")
    assert len(checkpoint["pretraining_hashes"]) == 24  # all 24 good photos, none held out
    assert json.loads((run / "args.json").read_text())["num_classes"] == 0


def test_unlabelled_reads_any_tree(tmp_path):
    """--unlabelled reads every photo under the folder, whatever its sub-folders, and no class."""
    root = tmp_path / "trips"
    for i, folder in enumerate(["2023/summer", "2023/winter", "2024", "2024/paris/day1"]):
        for j in range(3):
            write_image(root / folder / f"{j}.png", seed=10 * i + j)
    files, labels, classes = dataset.find_images(root, unlabelled=True)
    assert len(files) == 12 and classes == [] and set(labels) == {0}
    assert "2024/paris/day1/0.png" in [Path(name).as_posix() for name in files]


def test_classifier_refuses_loose_photos(loose_photos, tmp_path, capsys):
    """classifier.py needs labels: a folder of loose photos is refused in one line saying where they can go."""
    with pytest.raises(SystemExit) as stop:
        classifier.main(["--data", str(loose_photos), "--random", "--cache-dir", str(tmp_path / "cache"),
                         "--out", str(tmp_path / "c"), *SMALL])
    assert stop.value.code == 2
    assert "train.py" in capsys.readouterr().err


@pytest.mark.slow
def test_monitor_data_and_evaluation_on_another_folder(loose_photos, class_tree, tmp_path, capsys):
    """--monitor-data gives the kNN monitor its queries and bank from a labelled folder; classifier.py then
    evaluates the backbone on that folder's held-out split."""
    run = pretrain(loose_photos, tmp_path, "simsiam", "--monitor-data", str(class_tree), *LABELLED)
    record = [r for r in runs.read_jsonl(run / "metrics.jsonl") if "epoch" in r][-1]
    assert 0 <= record["knn_accuracy"] <= 1
    capsys.readouterr()
    classifier.main(evaluate_on(class_tree, tmp_path, run / "siam.pt"))
    final = runs.final_record(tmp_path / "probe" / "metrics.jsonl")
    assert final["num_test"] == 12 and 0 <= final["test_accuracy"] <= 1


def held_out_files(class_tree: Path, tmp_path: Path, split: str = "test") -> list[Path]:
    """The files of class_tree's test (or validation) split under LABELLED, as every script draws it."""
    options = dataset.DataOptions(class_tree, tmp_path / "cache", 32, labels=6, test_fraction=0.2)
    data, splits = dataset.open_data(options, verbose=False)
    return [data.root / data.files[i] for i in getattr(splits, split).tolist()]


def test_copies_of_test_images_are_refused_with_their_count(loose_photos, class_tree, tmp_path, capsys):
    """Three test images of the labelled folder, copied under other names among the pretraining photos: the
    classifier refuses that checkpoint on that test set in one line giving the count, whatever the names."""
    for i, path in enumerate(held_out_files(class_tree, tmp_path)[:3]):
        shutil.copy(path, loose_photos / f"copy_{i}.jpg")
    run = pretrain(loose_photos, tmp_path)
    capsys.readouterr()
    with pytest.raises(SystemExit) as stop:
        classifier.main(evaluate_on(class_tree, tmp_path, run / "siam.pt"))
    error = capsys.readouterr().err
    assert stop.value.code == 2 and error.count("\n") == 1
    assert "3 of the 12 test images" in error and not (tmp_path / "probe" / "classifier.pt").exists()


@pytest.mark.slow
def test_monitor_test_copies_are_left_out_of_pretraining(loose_photos, class_tree, tmp_path, capsys):
    """With --monitor-data, pretraining photos that are copies of the monitor's test or validation images are left
    out (said at start-up), so that the labelled folder's held-out evaluation stays honest and allowed, and the
    monitor never scores an image it was pretrained on."""
    copied = held_out_files(class_tree, tmp_path)[:2] + held_out_files(class_tree, tmp_path, "validation")[:1]
    for i, path in enumerate(copied):
        shutil.copy(path, loose_photos / f"copy_{i}.jpg")
    run = pretrain(loose_photos, tmp_path, "simsiam", "--monitor-data", str(class_tree), *LABELLED)
    assert ("3 of the 27 pretraining photos are copies of --monitor-data's test or validation images"
            in capsys.readouterr().out)
    assert len(load_checkpoint(run / "siam.pt", "simsiam")["pretraining_hashes"]) == 24
    classifier.main(evaluate_on(class_tree, tmp_path, run / "siam.pt"))
    assert runs.final_record(tmp_path / "probe" / "metrics.jsonl") is not None


def test_copies_within_a_folder_stay_out_of_pretraining(tmp_path):
    """A photo stored twice in one labelled folder (the real archive has five such pairs): when one copy is held
    out (test or validation split), the other is neither pretrained on nor labelled, so that the folder's own split
    is always allowed."""
    root = tmp_path / "Pets"
    for c, name in enumerate(["Cat", "Dog"]):
        for i in range(20):
            write_image(root / name / f"{i}.jpg", seed=100 * c + i)
            if name == "Cat":  # every cat twice, under another name
                shutil.copy(root / name / f"{i}.jpg", root / name / f"copy-{i}.jpg")
    data, splits = dataset.open_data(dataset.DataOptions(root, tmp_path / "cache", 32, labels=4, test_fraction=0.2),
                                     verbose=False)
    held_out = torch.cat([splits.test, splits.validation])
    held_out_hashes = data.hashes[held_out]
    assert not decode.near(data.hashes[splits.pretrain], held_out_hashes).any()
    assert not decode.near(data.hashes[splits.labelled], held_out_hashes).any()
    kept = torch.ones(len(data.files), dtype=torch.bool)
    kept[held_out] = False
    copies = int((decode.near(data.hashes, held_out_hashes) & kept).sum())
    assert copies > 0 and len(splits.pretrain) == int(kept.sum()) - copies


def test_exported_backbone_loads_into_torchvision(class_tree, tmp_path):
    """OUT/backbone.pt loads into torchvision's ResNet18 missing only fc.weight and fc.bias, and gives the same
    512-d features as the repository's backbone on the same batch."""
    run = pretrain(class_tree, tmp_path, "simsiam", *LABELLED)
    network = torchvision.models.resnet18()
    missing, unexpected = network.load_state_dict(torch.load(run / "backbone.pt", weights_only=True), strict=False)
    assert sorted(missing) == ["fc.bias", "fc.weight"] and unexpected == []
    network.fc = torch.nn.Identity()
    ours = pretrained.load_backbone(pretrained.read(run / "siam.pt"))
    batch = torch.randn(4, 3, 32, 32)
    with torch.no_grad():
        assert torch.equal(network.eval()(batch), ours.eval()(batch))
