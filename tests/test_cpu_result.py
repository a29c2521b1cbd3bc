"""The CPU result's experiment runs end to end on the CPU with --tiny, so that it cannot rot: the pretraining, the
pair of frozen probes on the same test images, and the paired verdict with its figures."""
from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

import train
from experiments import cpu_result
from simsiam import recipe

REPOSITORY = Path(__file__).resolve().parents[1]


@pytest.mark.slow
def test_cpu_result_tiny(tmp_path):
    """--tiny with two label draws: pretrains, probes both backbones once per draw on the same test images, prints
    the table and a verdict per probe over the draws, and writes the JSON summary, the markdown table and the small
    files (no checkpoints). Each draw's labels reach its pair of probes; the verdict's difference is the mean of
    the draws'."""
    finished = subprocess.run([sys.executable, "-m", "experiments.cpu_result", "--tiny", "--label-seeds", "0", "1",
                               "--runs", str(tmp_path / "runs"), "--results", str(tmp_path / "results")],
                              cwd=REPOSITORY, check=True, capture_output=True, text=True, timeout=600)
    summary = json.loads((tmp_path / "results" / "cpu-result.json").read_text())
    assert [row["probe"] for row in summary["averaged"]] == list(cpu_result.PROBES)
    for row in summary["averaged"]:
        draws = [r for r in summary["rows"] if r["probe"] == row["probe"]]
        assert [r["label_seed"] for r in draws] == row["label_seeds"] == [0, 1]
        assert row["difference"] == pytest.approx(row["simsiam"] - row["random"]) and row["standard_error"] >= 0
        assert row["difference"] == pytest.approx(sum(r["difference"] for r in draws) / 2)
        assert row["meets_target"] == cpu_result.verdict(row)
        assert row["num_test"] == summary["num_test"] == draws[0]["num_test"] == 100  # the tiny set's test split
    for name in ("random", "simsiam"):
        labelled = [json.loads((tmp_path / "runs" / f"probe-{name}-labels{seed}" / "labelled.json").read_text())
                    for seed in (0, 1)]
        assert labelled[0]["files"] != labelled[1]["files"]
    assert summary["pretrain_epochs"] == 2 and "--cpu" not in summary["pretrain_command"]
    assert finished.stdout.count("verdict, ") == 2
    copied = list((tmp_path / "results" / "cpu-result").rglob("*"))
    assert any(p.name == "predictions.json" for p in copied) and not any(p.suffix == ".pt" for p in copied)


def test_verdict_needs_both_the_margin_and_the_standard_errors():
    assert cpu_result.verdict({"difference": 0.06, "standard_error": 0.015})
    assert not cpu_result.verdict({"difference": 0.04, "standard_error": 0.001})  # below the margin
    assert not cpu_result.verdict({"difference": 0.06, "standard_error": 0.025})  # under 3 standard errors


def test_another_configuration_is_trained_with_the_flags_after_the_recipe():
    """`python -m experiments.cpu_result -- --image-size 48 --epochs 10`: train.py gets the recipe, then the flags
    given, which win; without them, the recipe alone."""
    args = cpu_result.parse_args(["--runs", "runs/x", "--", "--image-size", "48", "--epochs", "10"])
    flags = cpu_result.pretraining_flags(args.tiny, args.train_flags)
    assert flags == ["--cpu", "--image-size", "48", "--epochs", "10"]
    assert cpu_result.pretraining_flags(False, cpu_result.parse_args([]).train_flags) == ["--cpu"]
    parsed = train.parse_args(["--cpu", "--image-size", "48", "--epochs", "10"])
    assert (parsed.image_size, parsed.epochs, parsed.batch_size) == (48, 10, recipe.CPU["batch_size"])
