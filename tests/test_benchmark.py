"""Smoke test of bench.py: every loader runs and the report is complete.

Timings are never asserted: only that each figure exists and is positive.
"""

from __future__ import annotations

import json
import math
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
from PIL import Image

from pipeline import benchmark

REPO_ROOT = Path(__file__).resolve().parents[1]

LOADERS = (
    "idg_rescale",
    "idg_augment",
    "keras_rescale",
    "keras_augment",
    "pipeline_cold",
    "pipeline_cold_nodct",
    "pipeline_steady",
    "pipeline_steady_cached",
    "pipeline_aug",
    "pipeline_aug_cached",
    "resized_cold",
    "resized_steady",
    "ceiling",
    "ceiling_autotune",
    "ceiling_nodct",
    "train_in_memory",
    "train_pipeline_aug_cached",
    "train_pipeline_aug",
)
PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"


def _make_tree(root: Path) -> None:
    """train/{cats,dogs}: 6 random JPEGs each, of varied sizes."""
    rng = np.random.default_rng(0)
    sizes = [(40, 60), (64, 48), (33, 90), (120, 80), (50, 50), (200, 170)]
    for class_name in ("cats", "dogs"):
        folder = root / "train" / class_name
        folder.mkdir(parents=True)
        for index, (height, width) in enumerate(sizes):
            pixels = rng.integers(0, 256, (height, width, 3), dtype=np.uint8)
            Image.fromarray(pixels, "RGB").save(folder / f"{class_name}.{index}.jpg", quality=90)


def _is_positive_finite(value) -> bool:
    return isinstance(value, (int, float)) and math.isfinite(value) and value > 0


def test_bench_smoke(tmp_path):
    src = tmp_path / "pets"
    out = tmp_path / "bench_out"
    _make_tree(src)
    env = {**os.environ, "TF_CPP_MIN_LOG_LEVEL": "2"}
    completed = subprocess.run(
        [
            sys.executable, str(REPO_ROOT / "bench.py"),
            f"--src={src}", f"--out={out}",
            "--batch_size=4", "--max_batches=2", "--passes=1", "--train_steps=2",
        ],
        cwd=REPO_ROOT, env=env, capture_output=True, text=True, timeout=300,
    )
    assert completed.returncode == 0, completed.stderr[-4000:]

    results = json.loads((out / "results.json").read_text())
    assert set(LOADERS) <= set(results["loaders"])
    for name in LOADERS:
        entry = results["loaders"][name]
        assert _is_positive_finite(entry["images_per_second"]), (name, entry)
        assert entry["pass_seconds"] and all(_is_positive_finite(s) for s in entry["pass_seconds"])
        assert all(n > 0 for n in entry["images_per_pass"]), (name, entry)
        assert _is_positive_finite(entry["memory"]["peak_rss_mib"]), (name, entry)
        if "ratio" in entry:
            assert _is_positive_finite(entry["ratio"]), (name, entry)
        # A capped pass reads at most 2 batches of 4 images; a training row 2 steps.
        assert max(entry["images_per_pass"]) <= 8, (name, entry)
        assert entry["label"] in completed.stdout, name

    for name, ratio in results["ceiling_ratios"].items():
        assert _is_positive_finite(ratio), name
    assert {t["name"] for t in results["targets"]} == {
        "aug_cached_vs_idg_aug", "plain_vs_idg_rescale", "cold_vs_ceiling",
        "training_vs_in_memory", "streaming_memory_growth", "peak_memory",
    }
    for target in results["targets"]:
        assert isinstance(target["passed"], bool)
        if target["name"] == "streaming_memory_growth":  # may shrink: any finite value
            assert math.isfinite(target["value"])
        else:
            assert _is_positive_finite(target["value"])
        verdict = "PASS" if target["passed"] else "FAIL"
        assert f"{verdict}  {target['description']}" in completed.stdout
    assert _is_positive_finite(results["memory"]["peak_rss_mib"])
    streaming = results["memory"]["uncached_streaming_rss_mib"]
    assert len(streaming) == benchmark.STREAMING_EPOCHS and all(_is_positive_finite(mib) for mib in streaming)
    machine = results["machine"]
    assert machine["cores"] >= 1 and machine["cpu_model"] and machine["tensorflow"]
    assert results["date"] and "bench.py" in results["command"]
    assert results["data"]["images"] == 12

    png = out / "throughput.png"
    assert png.read_bytes()[:8] == PNG_SIGNATURE
    with Image.open(png) as image:
        image.verify()
    with Image.open(png) as image:
        assert image.format == "PNG" and min(image.size) > 100
