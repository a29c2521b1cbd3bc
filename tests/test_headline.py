"""The headline experiment script runs end to end on CPU with --tiny, so it cannot rot."""
from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

REPOSITORY = Path(__file__).resolve().parents[1]


def test_headline_tiny(tmp_path):
    """--tiny pretrains, runs every classifier row for each label seed and the supervised bound, and writes
    the JSON summary, the markdown table and the small files (no checkpoints)."""
    subprocess.run([sys.executable, str(REPOSITORY / "experiments" / "headline.py"), "--tiny", "--runs",
                    str(tmp_path / "runs"), "--results", str(tmp_path / "results"), "--label-seeds", "0", "1",
                    "--parallel", "2"], check=True, capture_output=True, timeout=600)
    summary = json.loads((tmp_path / "results" / "headline.json").read_text())
    assert [row["row"] for row in summary["rows"]] == ["random init, linear probe", "SimSiam, linear probe",
                                                       "random init, fine-tuned", "SimSiam, fine-tuned",
                                                       "supervised, all non-test labels"]
    assert all(len(row["accuracies"]) == 2 for row in summary["rows"][:4])
    assert all(0 <= accuracy <= 1 for row in summary["rows"] for accuracy in row["accuracies"])
    assert summary["pretrain_epochs"] == 2 and summary["final_z_std"] > 0
    table = (tmp_path / "results" / "headline.md").read_text()
    assert table.count("\n") == 2 + 5 and "SimSiam, fine-tuned" in table
    copied = list((tmp_path / "results" / "headline").rglob("*"))
    assert any(p.name == "simsiam.png" for p in copied) and not any(p.suffix == ".pt" for p in copied)
    labelled = json.loads((tmp_path / "results" / "headline" / "supervised-all-labels" / "labelled.json").read_text())
    assert len(labelled["indices"]) == 450  # every non-test image of the 500-image demo set
