"""experiments/check_machine.py: the end-to-end check of a machine runs on the CPU in CI, and says which step failed
and why when one does."""
from __future__ import annotations

import json

import pytest

from experiments import check_machine

STEPS = ["bench", "pretrain", "stop", "resume", "frozen", "finetune", "predict"]


@pytest.mark.slow
def test_every_step_passes_on_the_cpu(tmp_path, capsys):
    """--device cpu --tiny: every step passes (the resumed run equals the uninterrupted one bit for bit), the
    table is printed and written, the exit status is 0."""
    out = tmp_path / "check.json"
    assert check_machine.main(["--device", "cpu", "--tiny", "--runs", str(tmp_path / "runs"), "--json", str(out)]) == 0
    result = json.loads(out.read_text())
    assert [row["step"] for row in result["rows"]] == STEPS and result["failed"] == []
    assert all(row["passed"] and row["seconds"] > 0 for row in result["rows"])
    assert result["rows"][1]["images_per_s"] > 0 and result["rows"][0]["peak_memory_gb"] > 0
    assert "7 of 7 steps passed" in capsys.readouterr().out


@pytest.mark.slow
def test_failed_steps_are_named_with_their_error(tmp_path, capsys):
    """On a device the machine lacks, each step fails with the script's one-line error, the steps that need
    their output are not run, and the exit status is 1."""
    out = tmp_path / "check.json"
    assert check_machine.main(["--device", "cuda:7", "--tiny", "--runs", str(tmp_path / "runs"),
                               "--json", str(out)]) == 1
    rows = json.loads(out.read_text())["rows"]
    assert [row["step"] for row in rows] == STEPS and not any(row["passed"] for row in rows)
    assert "exit 2: error: --device cuda:7" in rows[0]["error"]
    assert rows[-1]["error"] == "not run: no classifier"
