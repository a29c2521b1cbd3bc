"""The real archive's bad files, killed runs, bad arguments and hostile checkpoints."""
from __future__ import annotations

import io
import signal
import subprocess
import time
from pathlib import Path

import numpy as np
import pytest
import torch
from conftest import ONE_THREAD, train_command, write_image
from PIL import Image

import classifier
import train
from simsiam import dataset, decode, recipe, runs
from simsiam.model import Classifier, load_checkpoint, save_checkpoint

REPOSITORY = Path(__file__).resolve().parents[1]


def upright_with_exif_rotation(path: Path) -> None:
    """A JPEG whose pixels are stored turned a quarter left, with EXIF orientation 6 to turn them back:
    upright, its top half is red and its bottom half blue."""
    upright = np.zeros((40, 40, 3), dtype=np.uint8)
    upright[:20, :, 0] = 255
    upright[20:, :, 2] = 255
    stored = Image.fromarray(upright).transpose(Image.Transpose.ROTATE_90)
    exif = Image.Exif()
    exif[0x0112] = 6  # Orientation: rotate 90 degrees clockwise to display
    stored.save(path, exif=exif.tobytes(), quality=95)


@pytest.fixture
def messy_tree(tmp_path) -> Path:
    """A PetImages tree with every kind of file Microsoft's archive has, and then some."""
    root = tmp_path / "PetImages"
    for c, name in enumerate(("Cat", "Dog")):
        for i in range(12):  # distinct seeds: two equal photos would be one photo to the leak rule
            write_image(root / name / f"{i}.jpg", seed=100 + 20 * c + i)
    cat, dog = root / "Cat", root / "Dog"
    (cat / "empty.jpg").write_bytes(b"")
    good = io.BytesIO()
    Image.new("RGB", (64, 64), (10, 200, 30)).save(good, "JPEG")
    (cat / "truncated.jpg").write_bytes(good.getvalue()[: len(good.getvalue()) // 2])
    (cat / "text.jpg").write_text("<html>not found</html>")
    write_image(cat / "png.jpg", seed=1, format="PNG")
    write_image(cat / "gif.jpg", seed=2, format="GIF")
    write_image(dog / "cmyk.jpg", seed=3, mode="CMYK")
    write_image(dog / "gray.jpg", seed=4, mode="L")
    write_image(dog / "rgba.png", seed=5, mode="RGBA")
    palette = Image.new("P", (30, 30), 1)
    palette.putpalette([0, 0, 0, 255, 0, 0] + [0] * 762)
    palette.save(dog / "palette.png", transparency=0)
    Image.fromarray(np.full((30, 30), 40000, dtype=np.uint16)).save(dog / "sixteen.png")
    upright_with_exif_rotation(dog / "rotated.jpg")
    (cat / "Thumbs.db").write_bytes(b"\xd0\xcf\x11\xe0" + b"\0" * 60)
    (dog / ".DS_Store").write_bytes(b"\0" * 30)
    (dog / "._12.jpg").write_bytes(b"\0\5\26\7")  # macOS resource fork next to a photo
    return root


SKIPPED = {"Cat/empty.jpg": "empty file", "Cat/truncated.jpg": "truncated image", "Cat/text.jpg": "not an image"}


def test_bad_files_are_skipped_by_kind(messy_tree, tmp_path):
    """Undecodable files are skipped, each with its kind; every decodable image is kept."""
    data = dataset.load_images(messy_tree, 24, tmp_path / "cache", workers=2)
    assert data.skipped == SKIPPED
    assert len(data.files) == 24 + 2 + 6  # photos; PNG and GIF named .jpg; CMYK, L, RGBA, P, 16-bit, rotated
    summary = dataset.describe(data)
    assert "3 skipped (" in summary and all(f"1 {kind}" in summary for kind in SKIPPED.values())


def test_every_mode_becomes_rgb(tmp_path):
    """L, CMYK, RGBA, P with transparency and 16-bit images all decode to (S, S, 3) uint8."""
    samples = {"L": write_image(tmp_path / "l.jpg", 1, mode="L"),
               "CMYK": write_image(tmp_path / "cmyk.jpg", 2, mode="CMYK"),
               "LA": write_image(tmp_path / "la.png", 3, mode="LA")}
    Image.fromarray(np.full((20, 20), 65535, dtype=np.uint16)).save(tmp_path / "white16.png")
    transparent = Image.new("RGBA", (20, 20), (255, 0, 0, 0))
    transparent.save(tmp_path / "clear.png")
    for path in [*samples.values(), tmp_path / "white16.png", tmp_path / "clear.png"]:
        decoded = decode.decode_image(path, 16)
        assert decoded.shape == (16, 16, 3) and decoded.dtype == np.uint8
    assert decode.decode_image(tmp_path / "white16.png", 16).min() == 255  # 16-bit white stays white
    assert decode.decode_image(tmp_path / "clear.png", 16).min() == 255  # transparent becomes white


def test_exif_orientation_is_applied(tmp_path):
    """An EXIF-rotated JPEG is cached upright: red on top, blue at the bottom."""
    upright_with_exif_rotation(tmp_path / "rotated.jpg")
    decoded = decode.decode_image(tmp_path / "rotated.jpg", 20).astype(int)
    assert decoded[:8, :, 0].mean() > 200 and decoded[:8, :, 2].mean() < 50
    assert decoded[-8:, :, 2].mean() > 200 and decoded[-8:, :, 0].mean() < 50


def test_decompression_bomb_is_refused(tmp_path, monkeypatch):
    """An image over twice PIL's pixel limit is skipped as a decompression bomb, not decoded, the limit named; one
    between the limit and twice it (a 108-megapixel phone photo against the 89-megapixel limit) is decoded."""
    root = tmp_path / "PetImages"
    for name in ("Cat", "Dog"):
        for i in range(3):
            write_image(root / name / f"{i}.jpg", seed=i, size=(20, 20))
    write_image(root / "Cat" / "bomb.png", seed=9, size=(200, 200))
    write_image(root / "Cat" / "large.png", seed=8, size=(90, 90))  # 8,100 pixels: between 5,000 and 10,000
    monkeypatch.setattr(Image, "MAX_IMAGE_PIXELS", 5000)  # inherited by the forked decoding processes
    data = dataset.load_images(root, 16, tmp_path / "cache", workers=1)
    assert data.skipped == {"Cat/bomb.png": "too many pixels (over 0 megapixels, Pillow's limit against "
                                            "decompression bombs)"}
    assert "Cat/large.png" in data.files


@pytest.mark.slow
def test_train_runs_on_the_messy_tree(messy_tree, tmp_path, capsys):
    """train.py reports the skip count at start-up and pretrains on every decodable image."""
    train.main(["--data", str(messy_tree), "--cache-dir", str(tmp_path / "cache"), "--out", str(tmp_path / "run"),
                "--epochs", "1", "--batch-size", "8", "--image-size", "32", "--labels", "4",
                "--test-fraction", "0.2", "--device", "cpu"])
    out = capsys.readouterr().out
    assert "32 images" in out and "3 skipped" in out and "skipped.txt" in out
    # 32 images less a stratified test split of 7 (20% of 14 cats, 18 dogs) and a validation split of 2 (5%, at
    # least one per class)
    assert "23 pretraining" in out


def test_class_without_usable_images_is_a_clear_error(tmp_path, capsys):
    """A class whose files are all undecodable: one line naming the class, exit 2."""
    root = tmp_path / "PetImages"
    for i in range(5):
        write_image(root / "Cat" / f"{i}.jpg", seed=i)
        (root / "Dog").mkdir(parents=True, exist_ok=True)
        (root / "Dog" / f"{i}.jpg").write_bytes(b"")
    with pytest.raises(SystemExit) as exit_info:
        train.main(["--data", str(root), "--cache-dir", str(tmp_path / "cache"), "--out", str(tmp_path / "run")])
    assert exit_info.value.code == 2 and "'Dog'" in capsys.readouterr().err


def test_empty_data_folder_names_download_and_demo(tmp_path, capsys):
    """An empty data folder: one line naming --download and --demo, exit 2."""
    (tmp_path / "PetImages").mkdir()
    with pytest.raises(SystemExit) as exit_info:
        train.main(["--data", str(tmp_path / "PetImages"), "--cache-dir", str(tmp_path / "c"),
                    "--out", str(tmp_path / "o")])
    error = capsys.readouterr().err
    assert exit_info.value.code == 2 and "--download" in error and "--demo" in error and len(error.splitlines()) == 1


def test_unwritable_output_folder_is_refused_before_work(tmp_path, capsys, monkeypatch):
    """An output folder that cannot be created fails at once, before any decoding."""
    (tmp_path / "file").write_text("")
    monkeypatch.setattr(dataset, "load_images", lambda *a, **k: pytest.fail("work started"))
    with pytest.raises(SystemExit) as exit_info:
        train.main(["--demo", "--cache-dir", str(tmp_path / "c"), "--out", str(tmp_path / "file" / "run")])
    assert exit_info.value.code == 2 and "--out" in capsys.readouterr().err


@pytest.mark.parametrize("flag, value, expected", [("--epochs", "0", "must be > 0"),
                                                   ("--test-fraction", "1.5", "between 0 and 1"),
                                                   ("--batch-size", "1", "must be >= 2")])
def test_out_of_range_arguments(flag, value, expected, capsys):
    """Out-of-range arguments are refused by argparse with the valid range, exit 2."""
    with pytest.raises(SystemExit) as exit_info:
        train.parse_args([flag, value])
    assert exit_info.value.code == 2 and expected in capsys.readouterr().err


@pytest.mark.slow
def test_non_finite_loss_stops_the_run(class_tree, tmp_path, monkeypatch, capsys):
    """A NaN loss stops with the epoch and step, exit 2, and the last good checkpoint is kept."""
    args = ["--data", str(class_tree), "--cache-dir", str(tmp_path / "cache"), "--out", str(tmp_path / "run"),
            "--batch-size", "16", "--image-size", "32", "--labels", "6", "--device", "cpu", "--save-every", "1"]
    train.main([*args, "--epochs", "1"])
    good = load_checkpoint(tmp_path / "run" / "last.pt", "simsiam")
    real_D = recipe.D
    monkeypatch.setattr(recipe, "D", lambda p, z: real_D(p, z) * torch.nan)
    with pytest.raises(SystemExit) as exit_info:
        train.main([*args, "--epochs", "3", "--resume"])
    assert exit_info.value.code == 2 and "non-finite loss at epoch 2, step 1" in capsys.readouterr().err
    kept = load_checkpoint(tmp_path / "run" / "last.pt", "simsiam")
    assert kept["epoch"] == 1 and all(torch.equal(kept["model"][k], v) for k, v in good["model"].items())


def test_collapse_alarm(class_tree, tmp_path, capsys):
    """z-std below the set fraction of 1/sqrt(d) raises the alarm on stdout and in the metrics."""
    train.main(["--data", str(class_tree), "--cache-dir", str(tmp_path / "cache"), "--out", str(tmp_path / "run"),
                "--epochs", "1", "--batch-size", "16", "--image-size", "32", "--labels", "6", "--device", "cpu",
                "--collapse-fraction", "2"])  # healthy z-std is 1/sqrt(d), so a threshold of twice that fires
    assert "collapsing" in capsys.readouterr().out
    assert runs.read_jsonl(tmp_path / "run" / "metrics.jsonl")[-1]["collapse_warning"] is True


@pytest.mark.slow
def test_sigkill_then_resume_equals_uninterrupted(uninterrupted, tmp_path):
    """kill -9 in the middle of a run leaves a loadable checkpoint; --resume then ends with exactly the
    weights of an uninterrupted run (deterministic CPU settings: same threads, same seeds)."""
    class_tree, whole_run = uninterrupted
    process = subprocess.Popen(train_command(class_tree, tmp_path, "killed", "--save-every", "1"), env=ONE_THREAD,
                               stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    last = tmp_path / "killed" / "last.pt"
    deadline = time.time() + 120
    while not last.exists() and time.time() < deadline:
        time.sleep(0.05)
    time.sleep(0.5)  # into the next epoch
    process.send_signal(signal.SIGKILL)
    process.wait()
    assert load_checkpoint(last, "simsiam")["epoch"] == 1, "the kill should land in the second epoch"
    subprocess.run(train_command(class_tree, tmp_path, "killed", "--resume"), check=True, env=ONE_THREAD,
                   capture_output=True)
    whole = load_checkpoint(whole_run / "siam.pt", "simsiam")["model"]
    resumed = load_checkpoint(tmp_path / "killed" / "siam.pt", "simsiam")["model"]
    assert all(torch.equal(whole[key], resumed[key]) for key in whole)


class RunsCode:
    """A pickle payload that would create a file when unpickled."""

    def __init__(self, marker: Path):
        self.marker = marker

    def __reduce__(self):
        return (Path.touch, (self.marker,))


def test_code_running_checkpoint_is_refused(class_tree, tmp_path, capsys):
    """A pickle that would run code is refused with a clear message, and its code does not run."""
    marker = tmp_path / "pwned"
    torch.save({"format": "simsiam-cats-dogs", "payload": RunsCode(marker)}, tmp_path / "evil.pt")
    with pytest.raises(SystemExit) as exit_info:
        classifier.main(["--data", str(class_tree), "--checkpoint", str(tmp_path / "evil.pt"),
                         "--cache-dir", str(tmp_path / "c"), "--out", str(tmp_path / "o")])
    assert exit_info.value.code == 2 and "refused" in capsys.readouterr().err
    assert not marker.exists()


def test_wrong_kind_of_checkpoint_says_what_it_is(class_tree, tmp_path, capsys):
    """A classifier checkpoint given as the backbone: the message names both kinds."""
    save_checkpoint(tmp_path / "classifier.pt", "classifier", Classifier(2))
    with pytest.raises(SystemExit) as exit_info:
        classifier.main(["--data", str(class_tree), "--checkpoint", str(tmp_path / "classifier.pt"),
                         "--cache-dir", str(tmp_path / "c"), "--out", str(tmp_path / "o")])
    error = capsys.readouterr().err
    assert exit_info.value.code == 2 and "'classifier' checkpoint, expected a 'simsiam'" in error
