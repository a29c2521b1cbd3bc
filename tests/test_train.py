"""train.py end to end with tiny settings (16 px, batch 8, 64-d heads): the files a run leaves, own photos and the
kNN monitor, stops by signal and kill -9 resumed bit for bit, resume refusals, non-finite runs, torchrun against
gradient accumulation, the CUDA paths emulated, and one table of bad inputs."""
from __future__ import annotations

import contextlib
import itertools
import json
import os
import shutil
import signal
import subprocess
import time
from pathlib import Path

import pytest
import torch
import torchvision
from conftest import ONE_THREAD, PYTHON, REPOSITORY, write_class_tree, write_image
from emulated_cuda import emulated_cuda

import augment
import dataset
import evaluate
import model
import runs
import train

TINY = ["--image-size", "16", "--batch-size", "8", "--labels", "6", "--test-fraction", "0.2", "--workers", "1",
        "--device", "cpu"]  # the class tree's 60 photos: 45 to pretrain on (5 steps an epoch), 6 labelled, 3 validation
# train.py with 64-d heads in a process of its own (in-process chains use the small_heads fixture)
SMALL_TRAIN = f"""import sys
sys.path.insert(0, {str(REPOSITORY)!r})
import model
model.PROJECTION_DIM, model.PREDICTION_HIDDEN_DIM = 64, 16
import train
train.main(sys.argv[1:])
"""


def train_args(data: Path, cache: Path, out: Path, *extra: str) -> list[str]:
    return ["--data", str(data), "--cache-dir", str(cache), "--out", str(out), "--epochs", "2", *TINY, *extra]


def refused(argv: list[str], capsys) -> str:
    """The one error line of a run refused with exit 2."""
    capsys.readouterr()
    with pytest.raises(SystemExit) as stop:
        train.main(argv)
    [error] = [line for line in capsys.readouterr().err.splitlines() if "error: " in line]  # ours or argparse's
    assert stop.value.code == 2
    return error


def weights(run: Path) -> dict:
    return model.load_checkpoint(run / "siam.pt", "simsiam")["model"]


def same_weights(run: Path, other: Path) -> bool:
    mine, theirs = weights(run), weights(other)
    return mine.keys() == theirs.keys() and all(torch.equal(value, theirs[key]) for key, value in mine.items())


def losses(run: Path) -> list[float]:
    return [record["loss"] for record in runs.read_jsonl(run / "metrics.jsonl") if "epoch" in record]


def small_train(folder: Path) -> Path:
    (folder / "small_train.py").write_text(SMALL_TRAIN)
    return folder / "small_train.py"


@contextlib.contextmanager
def one_thread():
    """The same sums in every compared run: one thread, as ONE_THREAD gives a subprocess."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        yield
    finally:
        torch.set_num_threads(threads)


@pytest.fixture(scope="module")
def tree(module_folder) -> Path:
    return write_class_tree(module_folder / "PetImages")


@pytest.fixture(scope="module")
def loose(module_folder) -> Path:
    """A phone's folder: 24 photos IMG_0001.jpg ..., no class folders, one broken file."""
    for i in range(24):
        write_image(module_folder / "myphotos" / f"IMG_{i + 1:04d}.jpg", seed=5000 + i)
    (module_folder / "myphotos" / "IMG_9999.jpg").write_bytes(b"not a photo")
    return module_folder / "myphotos"


@pytest.fixture(scope="module")
def reference(tree, module_folder) -> tuple[Path, list]:
    """(the run folder of an uninterrupted 2-epoch run, single-threaded: what every stopped, killed and resumed run
    must equal; the rows that the kNN monitor embedded)."""
    embedded, real_embed = [], evaluate.embed
    with pytest.MonkeyPatch.context() as patch, one_thread():
        patch.setattr(model, "PROJECTION_DIM", 64)
        patch.setattr(model, "PREDICTION_HIDDEN_DIM", 16)
        patch.setattr(os, "fsync", lambda descriptor: None)
        patch.setattr(evaluate, "embed", lambda backbone, images, rows, *rest: embedded.append(rows) or real_embed(
            backbone, images, rows, *rest))
        train.main(train_args(tree, module_folder / "cache", module_folder / "reference", "--keep-epochs", "1"))
    return module_folder / "reference", embedded


@pytest.fixture
def cache(module_folder) -> Path:
    return module_folder / "cache"


# ---------------------------------------------------------------- what a run leaves


def test_presets_replace_defaults_and_flags_win():
    """--demo and --cpu apply their presets through set_defaults; a flag given still wins; --help shows both."""
    assert train.parse_args([]).epochs == 200 and train.parse_args(["--demo"]).epochs == train.DEMO["epochs"]
    assert train.parse_args(["--demo", "--epochs", "3"]).epochs == 3
    assert train.parse_args(["--demo"]).test_fraction == runs.DEMO_SPLITS["test_fraction"]
    cpu = train.parse_args(["--cpu"])
    assert {key: getattr(cpu, key) for key in train.CPU} == train.CPU
    with pytest.raises(SystemExit), contextlib.redirect_stdout(None):
        train.parse_args(["--help"])


def test_seeds_differ_per_step_and_rank_and_repeat():
    """The augmentation seed of every (seed, epoch, step, rank) differs from the others and from the epochs' batch
    order seeds, and is the same when asked again (what a resumed run relies on)."""
    seeds = {train.seed_of(0, epoch, step, rank) for epoch in range(3) for step in range(20) for rank in range(4)}
    orders = {train.seed_of(0, epoch) for epoch in range(3)}
    assert len(seeds) == 240 and len(orders) == 3 and not seeds & orders
    assert train.seed_of(0, 2, 5, 1) == train.seed_of(0, 2, 5, 1) != train.seed_of(1, 2, 5, 1)


@pytest.mark.slow
def test_a_run_leaves_its_records_and_checkpoints(reference, small_heads):
    """metrics.jsonl has one record per epoch (loss, z-std, lr, images/s, kNN accuracy), args.json the settings,
    last.pt the epoch, step 0 and the optimiser, siam.pt the split and the pretraining photos' hashes; --keep-epochs
    keeps siam.pt of an earlier epoch."""
    run, _ = reference
    records = runs.read_jsonl(run / "metrics.jsonl")
    assert [r["epoch"] for r in records] == [1, 2] and all(0 <= r["knn_accuracy"] <= 1 for r in records)
    assert {"loss", "z_std", "lr", "images_per_s", "collapse_warning"} <= set(records[0])
    recorded = json.loads((run / "args.json").read_text())
    assert recorded["epochs"] == 2 and recorded["steps_per_epoch"] == 5 and recorded["num_pretraining"] == 45
    last = model.load_checkpoint(run / "last.pt", "simsiam", needs=("optimizer",))
    siam = model.load_checkpoint(run / "siam.pt", "simsiam")
    assert (last["epoch"], last["step"], siam["epoch"]) == (2, 0, 2) and len(siam["pretraining_hashes"]) == 45
    assert siam["split"] == last["split"] and siam["args"]["epochs"] == 2 and siam["protocol"] == runs.PROTOCOL
    assert siam["code"] == runs.code_version()
    kept = model.load_checkpoint(run / "siam-epoch1.pt", "simsiam")  # --keep-epochs 1: a budget of the curve
    assert kept["epoch"] == 1 and not torch.equal(*(c["model"]["projector.0.weight"] for c in (kept, siam)))


@pytest.mark.slow
def test_the_knn_monitor_reads_the_validation_split_never_the_test_split(reference, tree, cache):
    """Each epoch the monitor embeds the labelled subset (its bank) and the validation split (its queries), and not
    one test image."""
    _, embedded = reference
    _, splits = dataset.open_data(train.parse_args(train_args(tree, cache, cache / "unused")), verbose=False)
    rows = [set(r.tolist()) for r in embedded]
    assert rows == [set(splits.labelled.tolist()), set(splits.validation.tolist())] * 2
    assert not set().union(*rows) & set(splits.test.tolist())


@pytest.mark.slow
def test_backbone_pt_loads_into_torchvision(reference):
    """backbone.pt loads into torchvision's resnet18 missing only fc.*, and gives the backbone's own features."""
    run, _ = reference
    network = torchvision.models.resnet18()
    missing, unexpected = network.load_state_dict(torch.load(run / "backbone.pt", weights_only=True), strict=False)
    assert sorted(missing) == ["fc.bias", "fc.weight"] and unexpected == []
    network.fc = torch.nn.Identity()
    ours = model.resnet18_backbone()
    ours.load_state_dict(model.backbone_state({"model": torch.load(run / "siam.pt", weights_only=True)["model"]}))
    batch = torch.randn(4, 3, 16, 16)
    with torch.no_grad():
        assert torch.equal(network.eval()(batch), ours.eval()(batch))


# ---------------------------------------------------------------- your own photos


@pytest.mark.slow
def test_loose_photos_pretrain_unlabelled(loose, cache, tmp_path, small_heads, capsys):
    """A folder of loose photos pretrains on every decodable photo, nothing held out, no monitor (said once); the
    default batch of 256 is halved until the 24 photos hold it."""
    argv = train_args(loose, cache, tmp_path / "run", "--epochs", "1")
    train.main(argv[:argv.index("--batch-size")] + argv[argv.index("--batch-size") + 2:])
    assert capsys.readouterr().out.count("no kNN monitor") == 1
    assert runs.read_jsonl(tmp_path / "run" / "metrics.jsonl")[0]["knn_accuracy"] is None
    assert len(model.load_checkpoint(tmp_path / "run" / "siam.pt", "simsiam")["pretraining_hashes"]) == 24
    assert json.loads((tmp_path / "run" / "args.json").read_text())["num_classes"] == 0
    assert json.loads((tmp_path / "run" / "args.json").read_text())["batch_size"] == 16


@pytest.mark.slow
def test_monitor_data_monitors_and_its_held_out_copies_stay_out(tree, cache, tmp_path, small_heads, capsys):
    """--unlabelled reads photos in nested folders; --monitor-data gives the kNN monitor a labelled folder's
    validation split, and pretraining photos that are copies of its test or validation images are left out."""
    data, splits = dataset.open_data(train.parse_args(train_args(tree, cache, tmp_path)), verbose=False)
    for i, folder in enumerate(["2023/summer", "2023/winter", "2024/paris/day1"]):
        for j in range(8):
            write_image(tmp_path / "trips" / folder / f"{j}.png", seed=900 + 10 * i + j)
    for i, row in enumerate([*splits.test[:2].tolist(), splits.validation[0].item()]):
        shutil.copy(data.root / data.files[row], tmp_path / "trips" / "2024" / f"copy_{i}.jpg")
    train.main(train_args(tmp_path / "trips", cache, tmp_path / "run", "--epochs", "1", "--unlabelled",
                          "--monitor-data", str(tree)))
    assert "3 of the 27 pretraining photos are copies of --monitor-data's" in capsys.readouterr().out
    assert len(model.load_checkpoint(tmp_path / "run" / "siam.pt", "simsiam")["pretraining_hashes"]) == 24
    assert 0 <= runs.read_jsonl(tmp_path / "run" / "metrics.jsonl")[0]["knn_accuracy"] <= 1


@pytest.mark.slow
def test_demo_with_the_run_flags(cache, tmp_path, small_heads, monkeypatch, capsys):
    """--demo runs on the generated set with its preset splits; --compile compiles the model, --deterministic turns
    deterministic algorithms on, --precision bf16 computes in bf16, and a z-std under the collapse threshold (here
    raised) is warned of."""
    compiled = []
    monkeypatch.setattr(torch, "compile", lambda module: compiled.append(module) or module)
    monkeypatch.setattr(train, "COLLAPSE_FRACTION", 100.0)
    try:
        train.main(["--demo", "--cache-dir", str(cache), "--out", str(tmp_path / "demo"), "--epochs", "1", "--limit",
                    "80", "--labels", "10", "--image-size", "32", "--batch-size", "16", "--compile", "--deterministic",
                    "--precision", "bf16", "--device", "cpu"])
        assert torch.are_deterministic_algorithms_enabled()
    finally:
        torch.use_deterministic_algorithms(False)
        torch.backends.cudnn.deterministic = False
    recorded = json.loads((tmp_path / "demo" / "args.json").read_text())
    assert recorded["demo"] and recorded["test_fraction"] == 0.25 and recorded["precision_used"] == "bf16"
    assert len(compiled) == 1 and isinstance(model.unwrap(compiled[0]), model.SimSiam)
    assert "the representation is collapsing" in capsys.readouterr().out
    [record] = runs.read_jsonl(tmp_path / "demo" / "metrics.jsonl")
    assert record["collapse_warning"] is True


# ---------------------------------------------------------------- stops, kills and resumes


@pytest.mark.slow
@pytest.mark.parametrize("signalled_step, saved, where", [(6, (1, 2), "at epoch 2, step 2"),
                                                          (4, (1, 0), "after epoch 1")])
def test_ctrl_c_saves_where_it_stopped_and_resume_equals_the_uninterrupted_run(
        reference, tree, cache, tmp_path, small_heads, monkeypatch, capsys, signalled_step, saved, where):
    """SIGINT mid-epoch (or in an epoch's last step): last.pt at that epoch and step (siam.pt only at an epoch's
    end), one line saying how to resume, exit 130; --resume ends with exactly the uninterrupted run's weights and
    losses."""
    real_step, steps = model.train_step, itertools.count()

    def step_then_signal(*arguments):
        if next(steps) == signalled_step:  # 5 steps an epoch
            os.kill(os.getpid(), signal.SIGINT)
        return real_step(*arguments)

    monkeypatch.setattr(model, "train_step", step_then_signal)
    argv = train_args(tree, cache, tmp_path / "stopped")
    with one_thread(), pytest.raises(SystemExit) as stop:
        train.main(argv)
    assert stop.value.code == 130 and f"interrupted (SIGINT) {where}" in capsys.readouterr().err
    state = model.load_checkpoint(tmp_path / "stopped" / "last.pt", "simsiam")
    assert (state["epoch"], state["step"]) == saved and (tmp_path / "stopped" / "siam.pt").exists() == (saved[1] == 0)
    monkeypatch.setattr(model, "train_step", real_step)
    with one_thread():
        train.main([*argv, "--resume"])
    run, _ = reference
    assert same_weights(tmp_path / "stopped", run)
    assert losses(tmp_path / "stopped") == losses(run)


@pytest.mark.slow
def test_tqdm_disable_hides_the_progress_bars(cache, tmp_path):
    """TQDM_DISABLE=1 (docs/scripts.md) leaves no progress bar in a run's output: a bar given `disable=` by the code
    ignores the variable."""
    result = subprocess.run([PYTHON, "train.py", "--demo", "--cache-dir", str(cache), "--out", str(tmp_path / "run"),
                             "--epochs", "1", "--limit", "80", "--labels", "10", "--image-size", "16", "--batch-size",
                             "16", "--device", "cpu"], cwd=REPOSITORY, env={**ONE_THREAD, "TQDM_DISABLE": "1"},
                            capture_output=True, text=True, timeout=120)
    assert result.returncode == 0 and "it/s" not in result.stderr + result.stdout


@pytest.mark.slow
def test_sigterm_in_a_process_saves_and_exits_143(tree, cache, tmp_path, small_heads):
    """SIGTERM to a training process (a cluster's preemption): last.pt saved where it stopped, one line, no
    traceback, exit status 128 + 15."""
    process = subprocess.Popen([PYTHON, small_train(tmp_path), *train_args(tree, cache, tmp_path / "run",
                                                                           "--epochs", "100")],
                               env=ONE_THREAD, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    deadline = time.time() + 60
    while not (tmp_path / "run" / "args.json").exists() and time.time() < deadline:
        time.sleep(0.02)  # args.json is written just before the first step
    time.sleep(0.5)
    process.send_signal(signal.SIGTERM)
    error = process.communicate(timeout=60)[1]
    assert process.returncode == 128 + signal.SIGTERM and "Traceback" not in error
    assert "interrupted (SIGTERM)" in error and "resume with --resume" in error
    state = model.load_checkpoint(tmp_path / "run" / "last.pt", "simsiam")
    assert state["epoch"] < 100 and "optimizer" in state


@pytest.mark.slow
def test_kill_9_then_resume_equals_the_uninterrupted_run(reference, tree, cache, tmp_path, small_heads):
    """kill -9 in epoch 2 leaves the --save-every 1 checkpoint of epoch 1; --resume from it ends with exactly the
    uninterrupted run's weights."""
    argv = train_args(tree, cache, tmp_path / "killed", "--save-every", "1")
    process = subprocess.Popen([PYTHON, small_train(tmp_path), *argv], env=ONE_THREAD, stdout=subprocess.DEVNULL,
                               stderr=subprocess.DEVNULL)
    deadline = time.time() + 60
    while not (tmp_path / "killed" / "last.pt").exists() and time.time() < deadline:
        time.sleep(0.01)
    process.kill()
    process.wait()
    state = model.load_checkpoint(tmp_path / "killed" / "last.pt", "simsiam")
    assert (state["epoch"], state["step"]) == (1, 0), "the kill should land in epoch 2"
    with one_thread():
        train.main([*argv, "--resume"])
    run, _ = reference
    assert same_weights(tmp_path / "killed", run)


@pytest.mark.slow
def test_moved_photos_resume_and_other_pixels_are_refused(reference, tree, cache, tmp_path, small_heads, capsys):
    """--resume PATH into another --out from a copy of the photos goes on (a warning names the changed --epochs;
    metrics.jsonl gets epoch 3); other pixels under the same names are refused, naming them."""
    run, _ = reference
    shutil.copytree(tree, tmp_path / "moved")
    argv = train_args(tmp_path / "moved", cache, tmp_path / "more", "--epochs", "3", "--resume", str(run / "last.pt"))
    train.main(argv)
    assert "'epochs': (2, 3)" in capsys.readouterr().out
    assert [r["epoch"] for r in runs.read_jsonl(tmp_path / "more" / "metrics.jsonl")] == [3]
    for path in (tmp_path / "moved" / "Dog").glob("1*.jpg"):
        write_image(path, seed=7000 + int(path.stem))
    assert "the pretraining photos' pixels" in refused([*argv, "--out", str(tmp_path / "other")], capsys)


def test_a_resume_at_another_image_size_says_so(reference, cache, tmp_path, small_heads, monkeypatch, capsys):
    """Another --image-size decodes the photos at another size, and a JPEG decoded smaller hashes a little apart
    (emulated here): the refusal names the sizes and the flags to pass, not other photos."""
    real_decode = dataset.decode_file
    monkeypatch.setattr(dataset, "decode_file", lambda path, size: (lambda pixels, views: (pixels, [
        views[0] ^ (size > 20), *views[1:]]))(*real_decode(path, size)))
    run, _ = reference
    argv = train_args(Path(json.loads((run / "args.json").read_text())["data"]), cache, tmp_path / "other",
                      "--image-size", "24", "--resume", str(run / "last.pt"))
    assert "(decoded at 28 px, the run at 19 px: pass its --image-size 16 and --cache-size 19)" in refused(argv,
                                                                                                         capsys)


def test_a_last_pt_whose_step_is_past_its_epoch_is_refused(reference, tmp_path, small_heads, capsys):
    """A last.pt saved at a step that an epoch of this run does not have (another --batch-size, or damaged): refused
    in one line naming the step and the run's --batch-size, never a silent empty epoch."""
    run, _ = reference
    state = torch.load(run / "last.pt", weights_only=True)
    model.atomic_save({**state, "epoch": 1, "step": 9}, tmp_path / "last.pt")
    argv = train_args(Path(state["args"]["data"]), Path(state["args"]["cache_dir"]), tmp_path / "other", "--resume",
                      str(tmp_path / "last.pt"))
    assert "its step 9 is past an epoch of 5 steps: resume with its --batch-size 8" in refused(argv, capsys)


def test_a_failed_save_leaves_no_record_ahead_of_the_last_checkpoint(tree, cache, tmp_path, small_heads,
                                                                     monkeypatch, capsys):
    """The disk full at epoch 2's checkpoint: one line, and metrics.jsonl ends with epoch 1, the checkpoint's."""
    real_save = train.save
    monkeypatch.setattr(train, "save", lambda out, network, optimizer, recorded, checkpoint, epoch, *rest:
                        real_save(out, network, optimizer, recorded, checkpoint, epoch, *rest) if epoch < 2 else
                        (_ for _ in ()).throw(model.UserError("cannot write last.pt (No space left on device)")))
    assert "No space left on device" in refused(train_args(tree, cache, tmp_path / "run", "--save-every", "1"), capsys)
    assert [record["epoch"] for record in runs.read_jsonl(tmp_path / "run" / "metrics.jsonl")] == [1]


# ---------------------------------------------------------------- non-finite runs and the memory


def nan_loss(network, optimizer, images, *rest):
    return torch.tensor(float("nan")), torch.tensor(0.0)


def nan_statistic(network, optimizer, images, *rest):
    next(m for m in network.modules() if isinstance(m, torch.nn.BatchNorm2d)).running_mean.fill_(float("nan"))
    return torch.tensor(0.0), torch.tensor(0.02)


@pytest.mark.parametrize("step, extra, message", [
    (nan_loss, [], "non-finite loss in epoch 1, by step 5: stopped, nothing saved; start again with a lower --lr"),
    (nan_statistic, [], "non-finite weights after epoch 2: stopped"),
    pytest.param(nan_loss, ["--epochs", "3", "--resume", "{reference}/last.pt"],
                 "the last good checkpoint is {reference}/last.pt", marks=pytest.mark.slow)])
def test_non_finite_numbers_stop_the_run_and_save_nothing(tree, cache, tmp_path, small_heads, monkeypatch, capsys,
                                                          request, step, extra, message):
    """A non-finite loss, or a non-finite statistic in the weights, stops the run with one line naming the last good
    checkpoint (or none); nothing non-finite is saved."""
    reference = str(request.getfixturevalue("reference")[0]) if "{reference}" in message else ""
    monkeypatch.setattr(model, "train_step", step)
    error = refused(train_args(tree, cache, tmp_path / "run", *(x.format(reference=reference) for x in extra)),
                    capsys)
    assert message.format(reference=reference) in error
    assert not {"last.pt", "siam.pt", "backbone.pt"} & {path.name for path in (tmp_path / "run").iterdir()}


def test_an_overwrite_that_fails_before_its_first_checkpoint_keeps_the_old_run(tree, cache, tmp_path, small_heads,
                                                                                monkeypatch, capsys):
    """train.py --overwrite stopped by a non-finite loss before its first checkpoint: the run it was to replace is
    back as it was, byte for byte."""
    old = {"siam.pt": b"old weights", "last.pt": b"old state", "metrics.jsonl": b'{"epoch": 1}\n', "notes.txt": b"x"}
    (tmp_path / "run").mkdir()
    for name, content in old.items():
        (tmp_path / "run" / name).write_bytes(content)
    monkeypatch.setattr(model, "train_step", nan_loss)
    assert "non-finite loss" in refused(train_args(tree, cache, tmp_path / "run", "--overwrite"), capsys)
    assert {path.name: path.read_bytes() for path in (tmp_path / "run").iterdir()} == old


# ---------------------------------------------------------------- bad inputs


@pytest.mark.parametrize("extra, fragment", [
    (["--epochs", "0"], "argument --epochs: must be"),
    (["--batch-size", "1"], "argument -b/--batch-size: must be"),
    (["--momentum", "1"], "argument --momentum: must be"),
    (["--demo", "--cpu"], "two presets"),
    (["--data", "{missing}"], "--download"),
    (["--batch-size", "64"], "not exceed the 45 pretraining images: the largest that fits is 45"),
    (["--resume"], "nothing to resume"),
    (["--monitor-data", "{loose}"], "no labels"),
    (["--out", "{holding}"], "already holds a run"),
    (["--out", "{holding}", "--overwrite", "--data", "{missing}"], "--download"),
    (["--out", "{holding}/siam.pt/run"], "--out"),
    pytest.param(["--resume", "{reference}/last.pt", "--split-seed", "1"], "--split-seed (was 0, now 1)",
                 marks=pytest.mark.slow),
    pytest.param(["--resume", "{reference}/last.pt", "--epochs", "1"], "--epochs 1 is below the 2 epochs",
                 marks=pytest.mark.slow),
    pytest.param(["--resume", "{reference}/siam.pt"], "--resume reads last.pt", marks=pytest.mark.slow)])
def test_bad_inputs_are_one_line_and_exit_2(tree, cache, loose, tmp_path, small_heads, request, capsys, extra,
                                            fragment):
    """Each bad flag, folder or checkpoint: one line naming the problem, exit 2, nothing written to --out."""
    (tmp_path / "holding").mkdir()
    (tmp_path / "holding" / "siam.pt").write_bytes(b"an earlier run")
    places = {"missing": tmp_path / "missing", "loose": loose, "holding": tmp_path / "holding",
              "reference": request.getfixturevalue("reference")[0] if "{reference}" in " ".join(extra) else None}
    argv = train_args(tree, cache, tmp_path / "run", *(x.format(**places) for x in extra))
    assert fragment in refused(argv, capsys)
    assert not (tmp_path / "run").exists() and (tmp_path / "holding" / "siam.pt").read_bytes() == b"an earlier run"


# ---------------------------------------------------------------- torchrun


def accumulated(args, processes: int) -> dict:
    """train.py's epoch computed in one process as `processes` slices of every global batch, each augmented with
    its rank's generator and normalised by its own BatchNorm pass, gradients accumulated: what DDP computes."""
    data, splits = dataset.open_data(args, verbose=False)
    torch.manual_seed(args.seed)
    network = model.SimSiam()
    optimizer = model.make_optimizer(network, model.peak_lr(args.lr, args.batch_size), args.momentum,
                                     args.weight_decay)
    order = torch.Generator().manual_seed(train.seed_of(args.seed, 0))
    share, total = args.batch_size // processes, len(splits.pretrain) // args.batch_size
    for step, rows in enumerate(dataset.epoch_batches(splits.pretrain, args.batch_size, order)):
        model.set_lr(optimizer, step, total)
        optimizer.zero_grad()
        for rank in range(processes):
            generator = torch.Generator().manual_seed(train.seed_of(args.seed, 0, step, rank))
            batch = data.images[rows[rank * share:(rank + 1) * share]]
            x1, x2 = (augment.simsiam_view(batch, args.image_size, generator) for _ in range(2))
            p1, p2, z1, z2 = network(x1, x2)
            ((model.D(p1, z2) / 2 + model.D(p2, z1) / 2) / processes).backward()
        optimizer.step()
    return dict(network.named_parameters())


def relative_difference(trained: dict, reference: dict, start: dict) -> float:
    """|w - w_ref| / |w_ref - w_start| over all parameters: the error against how far training moved them."""
    error = sum(((trained[key] - reference[key].detach()) ** 2).sum() for key in start)
    moved = sum(((reference[key].detach() - start[key].detach()) ** 2).sum() for key in start)
    return (error / moved).sqrt().item()


@pytest.mark.slow
def test_torchrun_two_processes_match_gradient_accumulation(tree, cache, tmp_path, small_heads):
    """torchrun with 2 gloo processes: one siam.pt and metrics.jsonl, and the weights of one
    process that computes each global batch as two accumulated half-batches (not those of one whole batch)."""
    argv = train_args(tree, cache, tmp_path / "run", "--epochs", "1", "--lr", "1.0", "--image-size", "32",
                      "--batch-size", "16")  # at 16 px float noise grows chaotically (BatchNorm over 4 pixels)
    finished = subprocess.run([PYTHON, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2",
                               small_train(tmp_path), *argv], env=ONE_THREAD, capture_output=True, text=True,
                              timeout=300, cwd=tmp_path)
    assert finished.returncode == 0, finished.stderr[-3000:]
    assert len(list(tmp_path.rglob("siam.pt"))) == 1
    trained, args = weights(tmp_path / "run"), train.parse_args(argv)
    torch.manual_seed(args.seed)
    start = dict(model.SimSiam().named_parameters())  # BatchNorm statistics left out: DDP keeps rank 0's
    with one_thread():
        assert relative_difference(trained, accumulated(args, 2), start) < 0.01
        assert relative_difference(trained, accumulated(args, 1), start) > 0.1


# ---------------------------------------------------------------- CUDA, emulated


def first_conv_calls(network: torch.nn.Module) -> list:
    """(dtype it computes in, whether its input is channels_last) at every call of the first convolution."""
    seen = []
    network.backbone.conv1.register_forward_hook(lambda module, inputs, output: seen.append(
        (output.dtype, inputs[0].is_contiguous(memory_format=torch.channels_last))))
    return seen


@pytest.mark.slow
@pytest.mark.parametrize("host_cache", [False, True], ids=["gpu-cache", "host-cache-resumed-from-cpu"])
def test_train_on_emulated_cuda(tree, cache, tmp_path, small_heads, monkeypatch, request, host_cache):
    """train.py --device cuda: every step gets its batch and its generator on cuda:0 and computes in bf16 on
    channels_last with fused SGD; the cache sits on the GPU (no pins) or, too large for it, on the host, reaching
    the GPU through pinned memory only (this run resumes a CPU run's last.pt); the checkpoints load on a CPU."""
    real_step, seen = model.train_step, []
    resumed = ["--resume", str(request.getfixturevalue("reference")[0] / "last.pt"), "--epochs", "3"] * host_cache

    def checked_step(network, optimizer, images, generator, *rest):
        if not seen:
            calls.append(first_conv_calls(model.unwrap(network)))
        seen.append((images.device, generator.device, optimizer.defaults["fused"]))
        return real_step(network, optimizer, images, generator, *rest)

    calls = []
    monkeypatch.setattr(model, "train_step", checked_step)
    with emulated_cuda() as gpu:
        if host_cache:
            monkeypatch.setattr(torch.cuda, "mem_get_info", lambda device=None: (1 << 30, 80 << 30))
        train.main(train_args(tree, cache, tmp_path / "run", "--epochs", "1", "--device", "cuda", "--image-size", "32",
                              *resumed))  # bf16 at 16 px: torch's CPU kernels read garbage (a 1x1 input to layer4)
    recorded = json.loads((tmp_path / "run" / "args.json").read_text())
    assert recorded["device_used"] == "cuda:0" and recorded["precision_used"] == "bf16"
    assert recorded["cache_on"] == ("cpu" if host_cache else "cuda")
    assert set(seen) == {(torch.device("cuda", 0), torch.device("cuda", 0), True)} and len(seen) == 5
    assert set(calls[0]) == {(torch.bfloat16, True)}  # both views of the first step, and the monitor's embedding
    assert (gpu.pins >= 5 if host_cache else gpu.pins == 0) and gpu.pageable_async_copies == 0  # 5 batches, kNN
    epoch = runs.read_jsonl(tmp_path / "run" / "metrics.jsonl")[0]
    assert all(abs(epoch[key]) < 10 for key in ("loss", "z_std", "knn_accuracy"))
    assert all(value.device.type == "cpu" for value in weights(tmp_path / "run").values())
