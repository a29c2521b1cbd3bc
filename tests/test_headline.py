"""The headline experiment script runs end to end on CPU with --tiny, so it cannot rot; its supervised bound
trains."""
from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

import classifier
from experiments import common, headline
from simsiam import runs

REPOSITORY = Path(__file__).resolve().parents[1]


@pytest.mark.slow
def test_headline_tiny(tmp_path):
    """--tiny with pretraining flags: prints its estimate first, pretrains as asked, runs every classifier row for
    each label seed and the supervised bound, and writes the JSON summary, the markdown table and the small files
    (no checkpoints)."""
    finished = subprocess.run([sys.executable, "-m", "experiments.headline", "--tiny", "--runs",
                               str(tmp_path / "runs"), "--results", str(tmp_path / "results"), "--label-seeds", "0",
                               "1", "--parallel", "2", "--epochs", "1", "--image-size", "32"],
                              cwd=REPOSITORY, check=True, capture_output=True, text=True, timeout=600)
    assert finished.stdout.startswith("estimated from ") and "pretraining" in finished.stdout.splitlines()[0]
    summary = json.loads((tmp_path / "results" / "headline.json").read_text())
    assert [row["row"] for row in summary["rows"]] == ["random init, linear probe", "SimSiam, linear probe",
                                                       "random init, closed-form probe", "SimSiam, closed-form probe",
                                                       "random init, fine-tuned", "SimSiam, fine-tuned",
                                                       "supervised, every label outside test and validation"]
    assert all(len(row["accuracies"]) == 2 for row in summary["rows"][:6])
    assert all(0 <= accuracy <= 1 for row in summary["rows"] for accuracy in row["accuracies"])
    assert summary["pretrain_epochs"] == 1 and summary["final_z_std"] > 0  # --tiny alone pretrains 2
    table = (tmp_path / "results" / "headline.md").read_text()
    assert table.count("\n") == 2 + 7 and "SimSiam, closed-form probe" in table
    copied = list((tmp_path / "results" / "headline").rglob("*"))
    assert any(p.name == "simsiam.png" for p in copied) and not any(p.suffix == ".pt" for p in copied)
    labelled = json.loads((tmp_path / "results" / "headline" / "supervised-all-labels" / "labelled.json").read_text())
    assert len(labelled["indices"]) == 260  # the 400 demo images --tiny takes but 100 test and 40 validation


@pytest.mark.slow
def test_supervised_bound_trains(tmp_path):
    """With the headline's SUPERVISED settings, a from-scratch ResNet18 on the demo set's labels outside the test and
    validation splits (32 px, 8 epochs of one step) trains: no epoch's loss rises above the first's, as it does when
    the head's lr is above its stability limit (0.1 went from 0.81 to 1.30 at epoch 3), and the last is below the
    first."""
    out = tmp_path / "supervised"
    classifier.main([*headline.SUPERVISED, "--demo", "--cache-dir", str(tmp_path / "cache"), "--out", str(out),
                     "--epochs", "8", "--image-size", "32", "--device", "cpu", "--workers", "2"])
    losses = [record["train_loss"] for record in runs.read_jsonl(out / "metrics.jsonl") if "train_loss" in record]
    assert len(losses) == 8 and max(losses[1:]) < losses[0]


def counting_command(counter: Path, *extra: str) -> list[str]:
    """A command for common.run that appends an x to `counter` each time it runs."""
    code = (f"import pathlib; p = pathlib.Path({str(counter)!r}); "
            f"p.write_text((p.read_text() if p.exists() else '') + 'x')")
    return ["-c", code, *extra]


def test_a_finished_run_is_reused(tmp_path):
    """run_once runs a command once: called again with the same command (a second try of an experiment) it
    reuses the finished run and its recorded seconds; a different command runs."""
    counter, log = tmp_path / "count", tmp_path / "job.log"
    seconds = common.run_once(counting_command(counter), log)
    assert common.run_once(counting_command(counter), log) == round(seconds, 1) and counter.read_text() == "x"
    common.run_once(counting_command(counter, "--epochs", "3"), log)
    assert counter.read_text() == "xx"


def test_an_unfinished_pretraining_resumes(tmp_path):
    """A command recorded as started but not finished, whose --out holds a last.pt, runs again with --resume in
    place of --overwrite (train.py continues where the killed try stopped); without a last.pt, as it was."""
    out, seen, log = tmp_path / "run", tmp_path / "argv", tmp_path / "train.log"
    command = ["-c", f"import sys, pathlib; pathlib.Path({str(seen)!r}).write_text(' '.join(sys.argv[1:]))",
               "--out", str(out), "--overwrite"]
    log.with_suffix(".run.json").write_text(json.dumps({"command": command}))
    out.mkdir()
    common.run_once(command, log, resume=True)
    assert seen.read_text() == f"--out {out} --overwrite"
    log.with_suffix(".run.json").write_text(json.dumps({"command": command}))
    (out / "last.pt").write_bytes(b"")
    common.run_once(command, log, resume=True)
    assert seen.read_text() == f"--out {out} --resume"
