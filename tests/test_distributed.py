"""torchrun data-parallel pretraining: 2 gloo processes on CPU against a single-process reference."""
from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

import train
from simsiam import dataset, recipe, runs, schedule
from simsiam.model import D, SimSiam, load_checkpoint

REPOSITORY = Path(__file__).resolve().parents[1]
SETTINGS = {"batch_size": 16, "image_size": 32, "labels": 6, "test_fraction": 0.2, "seed": 0,
            "base_lr": 0.5}  # a large lr, so that 3 steps move the weights well above float noise


def launch(class_tree: Path, tmp_path: Path, processes: int, check: bool = True):
    """torchrun train.py with `processes` gloo processes into tmp_path/run-N; (that folder, the finished process)."""
    out = tmp_path / f"run-{processes}"
    command = [sys.executable, "-m", "torch.distributed.run", "--standalone", f"--nproc_per_node={processes}",
               str(REPOSITORY / "train.py"), "--data", str(class_tree), "--cache-dir", str(tmp_path / "cache"),
               "--out", str(out), "--epochs", "1", "--batch-size", str(SETTINGS["batch_size"]),
               "--image-size", str(SETTINGS["image_size"]), "--labels", str(SETTINGS["labels"]),
               "--test-fraction", str(SETTINGS["test_fraction"]), "--lr", str(SETTINGS["base_lr"]),
               "--device", "cpu"]
    finished = subprocess.run(command, check=check, cwd=tmp_path, capture_output=True, text=True, timeout=300,
                              env={**os.environ, "OMP_NUM_THREADS": "1"})
    return out, finished


def accumulated_reference(class_tree: Path, cache_dir: Path, processes: int) -> dict:
    """One epoch in one process where each global batch is `processes` slices, each augmented with that
    rank's generator and normalised by its own BatchNorm pass, gradients accumulated: what DDP computes."""
    data = dataset.load_images(class_tree, 37, cache_dir)  # 37 = ceil(32 * 8 / 7), train.py's cache size
    splits = dataset.make_splits(data.labels, len(data.classes), SETTINGS["test_fraction"], SETTINGS["labels"], 0, 0,
                                 val_fraction=dataset.DataOptions.val_fraction)  # train.py's default
    torch.manual_seed(SETTINGS["seed"])
    model = SimSiam()
    initial_lr = SETTINGS["base_lr"] * SETTINGS["batch_size"] / 256
    optimizer = recipe.make_optimizer(model, initial_lr, 0.9, 5e-4)
    order = torch.Generator().manual_seed(train.epoch_seed(0, 0))
    generators = [torch.Generator().manual_seed(train.epoch_seed(0, 0, rank)) for rank in range(processes)]
    total_steps = len(splits.pretrain) // SETTINGS["batch_size"]  # one epoch
    share = SETTINGS["batch_size"] // processes
    for step, indices in enumerate(dataset.epoch_batches(splits.pretrain, SETTINGS["batch_size"], order)):
        schedule.set_lr(optimizer, step, total_steps)
        optimizer.zero_grad()
        for rank, generator in enumerate(generators):
            x1, x2 = recipe.views(data.images[indices[rank * share:(rank + 1) * share]], 32, generator)
            p1, p2, z1, z2 = model(x1, x2)
            ((D(p1, z2) / 2 + D(p2, z1) / 2) / processes).backward()
        optimizer.step()
    return dict(model.named_parameters())


def relative_difference(weights: dict, reference: dict, start: dict) -> float:
    """|w - w_ref| / |w_ref - w_start| over all parameters: the error relative to how far training moved them."""
    error = sum(((weights[key] - reference[key].detach()) ** 2).sum() for key in start)
    moved = sum(((reference[key].detach() - start[key].detach()) ** 2).sum() for key in start)
    return (error / moved).sqrt().item()


@pytest.mark.slow
def test_two_processes_match_gradient_accumulation(class_tree, tmp_path):
    """torchrun with 2 gloo processes: one siam.pt and one metrics.jsonl, replicas in sync, and the weights
    of a single process computing each global batch as two accumulated half-batches."""
    out, _ = launch(class_tree, tmp_path, 2)
    assert len(list(tmp_path.rglob("siam.pt"))) == 1 and len(list(tmp_path.rglob("metrics.jsonl"))) == 1
    records = runs.read_jsonl(out / "metrics.jsonl")
    assert [r.get("epoch") for r in records if "epoch" in r] == [1]
    assert records[-1] == {**records[-1], "event": "ranks", "world_size": 2, "parameters_in_sync": True}
    trained = load_checkpoint(out / "siam.pt", "simsiam")["model"]
    torch.manual_seed(SETTINGS["seed"])
    start = dict(SimSiam().named_parameters())
    # BatchNorm running statistics are left out: DDP keeps rank 0's, the reference mixes both halves
    assert relative_difference(trained, accumulated_reference(class_tree, tmp_path / "cache", 2), start) < 0.01
    # and the test can tell: normalising the whole global batch at once (one process) is measurably different
    assert relative_difference(trained, accumulated_reference(class_tree, tmp_path / "cache", 1), start) > 0.1


@pytest.mark.parametrize("device", ["cuda:1", "mps"])
def test_a_device_torchrun_would_not_use_is_refused(class_tree, tmp_path, monkeypatch, capsys, device):
    """Under torchrun each process takes its own GPU, cuda:LOCAL_RANK: a --device naming one GPU would be
    overridden, and mps would fall back to the CPU, without a word. Refused in one line, before joining the
    process group, saying what to pass instead."""
    monkeypatch.setenv("WORLD_SIZE", "2")
    monkeypatch.setenv("RANK", "0")
    monkeypatch.setenv("LOCAL_RANK", "0")
    with pytest.raises(SystemExit) as stop:
        train.main(["--data", str(class_tree), "--cache-dir", str(tmp_path / "cache"), "--out", str(tmp_path / "run"),
                    "--device", device])
    error = capsys.readouterr().err.splitlines()[-1]
    assert stop.value.code == 2 and error.startswith(f"rank 0: error: --device {device}:"), error
    assert "--device cuda" in error and "CUDA_VISIBLE_DEVICES" in error
    assert not (tmp_path / "run").exists()


def test_epoch_batches_split_every_global_batch_among_ranks():
    """Each rank takes its own slice of every global batch; together they are the single-process batches."""
    indices = torch.arange(100, 150)
    whole = list(dataset.epoch_batches(indices, 8, torch.Generator().manual_seed(3)))
    parts = [list(dataset.epoch_batches(indices, 8, torch.Generator().manual_seed(3), rank, 4)) for rank in range(4)]
    for step, batch in enumerate(whole):
        assert torch.equal(torch.cat([parts[rank][step] for rank in range(4)]), batch)


def test_ranks_draw_different_reproducible_augmentations():
    """Rank seeds differ from each other and repeat for the same (seed, epoch, rank)."""
    seeds = {train.epoch_seed(0, epoch, rank) for epoch in range(5) for rank in range(8)}
    assert len(seeds) == 40 and train.epoch_seed(0, 2, 1) == train.epoch_seed(0, 2, 1)


@pytest.mark.slow
def test_torchrun_into_a_folder_holding_a_run_is_one_line_a_process(class_tree, tmp_path):
    """Rank 0 alone checks the run folder; when it refuses, the other process, left waiting for it, ends with one
    line too (not a traceback from its barrier), and the run in the folder is untouched. torchrun's own failure
    report follows, as for any failed worker (docs/multi-gpu.md)."""
    out = tmp_path / "run-2"
    out.mkdir()
    (out / "siam.pt").write_bytes(b"an earlier run")
    _, finished = launch(class_tree, tmp_path, 2, check=False)
    assert finished.returncode != 0
    assert "rank 0: error: " in finished.stderr and "already holds a run" in finished.stderr
    assert "rank 1: error: stopped: another process of this run ended first" in finished.stderr
    assert "[rank1]: Traceback" not in finished.stderr
    assert (out / "siam.pt").read_bytes() == b"an earlier run"
