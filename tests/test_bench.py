"""bench.py runs on CPU with small settings and reports every promised figure."""
from __future__ import annotations

import json

import pytest

import bench

KEYS = {"device", "torch", "image_size", "batch_size", "precision", "ceiling_images_per_s", "pipeline_images_per_s",
        "baseline_images_per_s", "peak_memory_gb", "cache_build_s"}


@pytest.mark.slow
def test_bench_writes_every_key(tmp_path, capsys):
    """A tiny CPU run prints the table and writes a JSON with every key, throughputs positive; the cache it times
    is built under --cache-dir (not the temporary folder, which may be read-only) and gone at the end."""
    bench.main(["--demo", "--device", "cpu", "--image-size", "32", "--batch-size", "8", "--steps", "2",
                "--warmup", "1", "--baseline-workers", "1", "--json", str(tmp_path / "bench.json"),
                "--cache-dir", str(tmp_path / "cache")])
    assert not list((tmp_path / "cache").glob(".bench-*"))
    result = json.loads((tmp_path / "bench.json").read_text())
    assert KEYS <= set(result)
    assert result["image_size"] == 32 and result["batch_size"] == 8 and result["precision"] == "fp32"
    assert all(result[key] > 0 for key in ("ceiling_images_per_s", "pipeline_images_per_s", "baseline_images_per_s"))
    assert "b/a =" in capsys.readouterr().out
