"""bench.py with tiny settings: every promised figure is there (speed itself is never asserted)."""
from __future__ import annotations

import json

from emulated_cuda import emulated_cuda

import bench

TINY = ["--image-size", "16", "--batch-size", "8", "--steps", "1", "--warmup", "1", "--repeats", "1", "--labels", "6",
        "--test-fraction", "0.2", "--workers", "1"]


def test_bench_prints_and_writes_every_figure(class_tree, cache_dir, tmp_path, small_heads, capsys):
    """On a CPU: (a), (b) and (c) each with images/s (the median of --repeats 2) and peak memory, the ratios b/a
    and b/c, in the table and in --json."""
    bench.main(["--data", str(class_tree), "--cache-dir", str(cache_dir), "--device", "cpu", "--baseline-workers",
                "1", "--json", str(tmp_path / "bench.json"), *TINY, "--repeats", "2"])
    result = json.loads((tmp_path / "bench.json").read_text())
    for name in ("ceiling", "pipeline", "baseline"):
        repeats = result[f"{name}_repeats_images_per_s"]
        assert len(repeats) == 2 and result[f"{name}_images_per_s"] == sum(repeats) / 2 > 0
        assert result[f"{name}_peak_memory_gb"] > 0
    assert result["pipeline_over_ceiling"] > 0 and result["pipeline_over_baseline"] > 0
    assert (result["image_size"], result["batch_size"], result["precision"]) == (16, 8, "fp32")
    out = capsys.readouterr().out
    assert "(c) baseline: PIL + torchvision workers" in out and "b/a = " in out and ", b/c = " in out


def test_bench_on_emulated_cuda_with_a_host_cache(class_tree, cache_dir, tmp_path, small_heads):
    """--device cuda --host-cache: bf16, the pipeline fed through pinned memory only, its figures written."""
    with emulated_cuda() as gpu:
        bench.main(["--data", str(class_tree), "--cache-dir", str(cache_dir), "--device", "cuda", "--host-cache",
                    "--no-baseline", "--json", str(tmp_path / "bench.json"), *TINY, "--image-size", "32"])  # bf16: 32 px
    result = json.loads((tmp_path / "bench.json").read_text())
    assert result["precision"] == "bf16" and result["cache_on"] == "host, pinned batches prefetched"
    assert result["pipeline_images_per_s"] > 0 and "baseline_images_per_s" not in result
    assert gpu.pins >= 3 and gpu.pageable_async_copies == 0  # the resident batch, one warm-up, one timed step
