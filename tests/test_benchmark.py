"""The benchmark: its pure parts on hand-made rows, its loaders, and bench.py end to end.

Timings are never asserted: only that each figure exists and is positive.
"""

from __future__ import annotations

import dataclasses
import json
import math
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from benchmark import BenchmarkError
from benchmark import loaders
from benchmark import plan
from benchmark import report
from benchmark import targets
from benchmark import timing
from benchmark.commands import BENCH
from support import cli
from pipeline import schema
from pipeline.reader import augment
from pipeline.reader import dataset
from model import run_config
from model import run_dir
from model import run_plan
from model import training
from model.commands import TRAIN


LOADERS = (
    "idg_rescale",
    "idg_augment",
    "keras_rescale",
    "keras_augment",
    "pipeline_cold",
    "pipeline_cold_nodct",
    "pipeline_steady",
    "predict_files",
    "pipeline_steady_cached",
    "pipeline_aug",
    "pipeline_aug_cached",
    "resized_cold",
    "resized_steady",
    "ceiling",
    "ceiling_autotune",
    "ceiling_nodct",
    "pipeline_aug_tfops",
    "pipeline_aug_tfops_cached",
    "service_1_worker",
    "service_2_workers",
    "train_in_memory",
    "train_pipeline_aug_cached",
    "train_pipeline_aug",
)
LOADER_KEYS = {
    "label", "group", "kind", "images_per_second", "images_per_second_min", "images_per_second_max",
    "images_per_pass", "pass_seconds", "first_batch_seconds", "seconds_total", "memory", "baseline", "ratio",
}
TOP_LEVEL_KEYS = [
    "machine", "date", "command", "settings", "data", "loaders", "ceiling_ratios", "memory", "cpu_contention",
    "wall_seconds", "targets",
]
TARGET_NAMES = [
    "aug_cached_vs_idg_aug", "plain_vs_idg_rescale", "cold_vs_ceiling", "training_vs_in_memory",
    "tfops_aug_cached_vs_idg_aug", "service_vs_in_process", "predict_vs_eval_uncached", "streaming_memory_growth",
    "peak_memory",
]
PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"


# --------------------------------------------------------------------------
# Hand-made results.


def _spec(name: str) -> plan.Spec:
    if name.startswith("train_"):
        return plan.Spec(name, f"label {name}", plan.Group.TRAINING, "train_in_memory")
    group = plan.Group.IDG if name.startswith("idg_") else plan.Group.PIPELINE
    baseline = name if group is plan.Group.IDG else "idg_augment" if "aug" in name else "idg_rescale"
    return plan.Spec(name, f"label {name}", group, baseline)


def _row(name: str, rates: tuple[float, ...]) -> plan.Row:
    """A row whose passes of 100 images ran at `rates` images/s."""
    measurement = timing.Measurement(
        "steady", (100,) * len(rates), tuple(100 / r for r in rates), (0.02,) * len(rates)
    )
    return plan.Row(_spec(name), measurement, timing.Memory(500.0, 450.0), 1.0)


def _results(rates: dict[str, tuple[float, ...]], streaming=(800.0,) * 10, peak=900.0, max_batches=None):
    rows = tuple(_row(name, rates.get(name, (100.0,))) for name in LOADERS)
    config = plan.BenchmarkConfig(src="/data/pets", max_batches=max_batches)
    data = plan.Data("train", "/data/pets/train", 1000, ("cats", "dogs"), "binary", None, {"resized": 1.0}, 45.0, 11.0)
    machine = {"usable_cores": 2, "cpu_model": "test CPU", "tensorflow": "2.x"}
    return plan.Results(
        config, "keras.src.legacy.preprocessing.image", machine, "2026-11-28T05:00:00+00:00", "bench.py", data,
        rows, tuple(streaming), peak, peak, timing.CpuContention(100.0, 1.0, 0.01), 60.0,
    )


def _verdicts(results) -> dict[str, report.Verdict]:
    return {verdict.name: verdict for verdict in report.evaluate(results)}


def test_ratio_targets_use_medians_and_name_the_fastest_row():
    results = _results({
        "pipeline_aug_cached": (2000.0, 2100.0, 3000.0),
        "idg_augment": (100.0,),
        "pipeline_steady_cached": (5000.0,),
        "ceiling": (1000.0,),
        "ceiling_autotune": (1250.0,),
        "pipeline_cold": (1000.0, 1100.0, 1200.0),
        "train_pipeline_aug_cached": (90.0,),
    })
    verdicts = _verdicts(results)
    assert list(verdicts) == TARGET_NAMES
    aug = verdicts["aug_cached_vs_idg_aug"]
    assert aug.value == pytest.approx(21.0) and aug.value_best_passes == pytest.approx(30.0)
    assert aug.passed and aug.unit == "x" and aug.threshold == 20.0
    assert aug.description == "steady host-aug cached pipeline vs ImageDataGenerator with augmentation"
    plain = verdicts["plain_vs_idg_rescale"]
    assert plain.value == pytest.approx(50.0)
    assert "(best: label pipeline_steady_cached) vs" in plain.description
    cold = verdicts["cold_vs_ceiling"]
    assert cold.value == pytest.approx(1100.0 / 1250.0) and not cold.passed  # 0.88 < 0.9
    assert cold.description.endswith("decode ceiling (best: label ceiling_autotune)")
    assert not verdicts["training_vs_in_memory"].passed  # 0.90 < 0.95


def test_memory_targets():
    streaming = (1000.0, 1010.0, 990.0, 1500.0, 1050.0, 1040.0, 1030.0, 1100.0, 1120.0, 1090.0)
    verdicts = _verdicts(_results({}, streaming=streaming, peak=2100.0))
    growth = verdicts["streaming_memory_growth"]
    assert growth.value == pytest.approx(1100.0 - 1000.0)  # medians of the last 3 and the first 3
    assert not growth.passed and growth.value_best_passes is None and growth.unit == "MiB"
    assert "over 10 uncached host-aug epochs (median of the last 3 vs the first 3)" in growth.description
    assert not verdicts["peak_memory"].passed
    shrinking = _verdicts(_results({}, streaming=(900.0, 950.0, 800.0, 700.0)))["streaming_memory_growth"]
    assert shrinking.value == pytest.approx(-100.0) and shrinking.passed  # the windows may overlap


def test_targets_table_names_only_rows_the_plan_measures():
    for target in targets.TARGETS:
        if isinstance(target, targets.RatioTarget):
            assert set(target.numerator + target.denominator) <= set(LOADERS), target.name


def test_table_and_targets_text():
    results = _results({"idg_rescale": (200.0,), "pipeline_cold": (300.0,)}, max_batches=2)
    table = report.format_table(results)
    lines = table.splitlines()
    assert lines[0].split() == ["loader", "images/s", "ratio", "vs", "img/pass", "1st", "batch", "peak", "RSS"]
    idg = next(line for line in lines if line.startswith("label idg_rescale "))
    assert "200.0" in idg and "1.00x" in idg and "(baseline)" in idg and "20 ms" in idg and "500 MiB" in idg
    cold = next(line for line in lines if line.startswith("label pipeline_cold "))
    assert "1.50x" in cold and "IDG rescale" in cold
    assert "" in lines[2:-3]  # a blank line between groups
    assert "dct_scaling=True 3.00, dct_scaling=False 1.00" in table
    text = report.format_targets(results)
    for verdict in report.evaluate(results):
        assert f"{'PASS' if verdict.passed else 'FAIL'}  {verdict.description}: " in text
    assert "Peak memory: 900 MiB resident" in text and "Wall time: 60.0 s" in text
    assert "Other processes used 1% of the machine's CPU" in text and "disturbed" not in text
    assert "--max_batches=2 caps every pass" in text


def test_to_json_keys():
    results = _results({})
    data = report.to_json(results)
    assert list(data) == TOP_LEVEL_KEYS
    assert list(data["loaders"]) == list(LOADERS)
    assert all(set(entry) == LOADER_KEYS for entry in data["loaders"].values())
    assert data["loaders"]["idg_rescale"]["ratio"] == 1.0 and data["loaders"]["idg_rescale"]["kind"] == "steady"
    assert set(data["ceiling_ratios"]) == {"dct_scaling", "no_dct_scaling"}
    assert data["settings"]["image_size"] == dataset.DEFAULT_IMAGE_SIZE
    assert data["settings"]["batch_size"] == dataset.DEFAULT_BATCH_SIZE
    for target in data["targets"]:
        expected = {"name", "description", "value", "threshold", "unit", "passed"}
        assert set(target) == expected | ({"value_best_passes"} if target["unit"] == "x" else set())
    json.dumps(data, allow_nan=False)


# --------------------------------------------------------------------------
# Timing.


def test_images_in_steps():
    assert timing.images_in_steps(7, 4, None) == 28
    assert timing.images_in_steps(3, 4, 10) == 10  # one epoch: 4 + 4 + 2
    assert timing.images_in_steps(5, 4, 10) == 18  # an epoch, then two full batches
    assert timing.images_in_steps(6, 5, 10) == 30  # three epochs of two full batches


def test_measurement_and_passes():
    batches = [(np.zeros((n, 2)), np.zeros(n)) for n in (4, 4, 3)]
    images, seconds, first = timing.timed_pass(batches)
    assert images == 11 and seconds >= first >= 0
    assert timing.timed_pass(batches, max_batches=2)[0] == 8
    assert math.isnan(timing.timed_pass([])[2])
    steady = timing.measure(batches, passes=3)
    assert steady.kind == "steady" and steady.pass_images == (11, 11, 11) and len(steady.first_batch_seconds) == 3
    measurement = timing.Measurement("cold", (10, 10, 10), (1.0, 2.0, 0.5))
    assert measurement.pass_rates == [10.0, 5.0, 20.0] and measurement.images_per_second == 10.0


def test_cold_builds_take_turns_and_are_fresh():
    calls = []

    def build(name):
        def fresh():
            calls.append(name)
            return [(np.zeros((2, 1)), np.zeros(2))]
        return fresh

    measured = timing.measure_cold({"a": build("a"), "b": build("b")}, runs=3)
    assert calls == ["a", "b"] * 3
    assert measured["a"].kind == "cold" and measured["b"].pass_images == (2, 2, 2)


def test_sampled_memory():
    result, memory = timing.sampled(lambda: np.ones(32 * 2**20 // 8).sum())
    assert result == 32 * 2**20 // 8
    assert memory.peak_rss_mib >= memory.rss_after_mib > 0


def test_config_is_checked():
    with pytest.raises(BenchmarkError, match="passes"):
        plan.BenchmarkConfig(src="x", passes=0)
    with pytest.raises(BenchmarkError, match="square"):
        plan.BenchmarkConfig(src="x", image_size=(150, 100))


# --------------------------------------------------------------------------
# Loaders.


def test_keras_layers_follow_the_augmentation_config():
    config = augment.NOTEBOOK_AUGMENTATION
    flip, rotation, zoom, translation = loaders.keras_augmentation_layers(config)
    assert flip.mode == "horizontal_and_vertical"
    assert rotation.factor == pytest.approx((-config.rotation_range / 360, config.rotation_range / 360))
    assert zoom.height_factor == config.zoom_range and zoom.fill_mode == "nearest"
    assert translation.height_factor == config.height_shift_range
    assert translation.width_factor == config.width_shift_range
    no_flips = dataclasses.replace(config, horizontal_flip=False, vertical_flip=False)
    assert len(loaders.keras_augmentation_layers(no_flips)) == 3


def test_idg_loader_reads_an_epoch_per_pass(split_tree):
    loader = loaders.idg_loader(str(split_tree.root / "train"), (20, 20), 5, "binary", augment.NOTEBOOK_AUGMENTATION)
    for _ in range(2):
        shapes = [images.shape for images, _ in loader]
        assert sum(shape[0] for shape in shapes) == 24 and shapes[0] == (5, 20, 20, 3)


def test_decode_ceiling_is_the_pipelines_decode(split_records):
    records_dir, _ = split_records
    size = (16, 16)
    ceiling = np.concatenate([images for images, _ in loaders.decode_ceiling(str(records_dir), "train", size, 5, True)])
    config = dataset.InputConfig(image_size=size, batch_size=5)
    pipeline = np.concatenate([images for images, _ in dataset.eval_dataset(str(records_dir), "train", config)])
    assert ceiling.dtype == np.uint8 and ceiling.shape == (24, 16, 16, 3)
    np.testing.assert_allclose(ceiling / 255.0, pipeline, atol=0.51 / 255)


# --------------------------------------------------------------------------
# bench.py end to end.


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


@pytest.fixture(scope="module")
def bench_py(tmp_path_factory) -> dict:
    """bench.py's main end to end on a tiny tree, in this process; "plans": the RunPlan of each
    `RunPlan.batches` call (train.py's own training input) it made."""
    root = tmp_path_factory.mktemp("bench_py")
    _make_tree(root / "pets")
    cases = {
        "smoke": [
            f"--src={root / 'pets'}", f"--out={root / 'bench_out'}",
            "--batch_size=4", "--max_batches=2", "--passes=1", "--train_steps=2",
        ],
    }
    plans, batches = [], run_plan.RunPlan.batches
    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(run_plan.RunPlan, "batches", lambda self, *args: plans.append(self) or batches(self, *args))
        return {**cli.cases(BENCH, cases), "out": root / "bench_out", "plans": plans}


def test_bench_smoke(bench_py):
    completed, out = bench_py["smoke"], bench_py["out"]
    assert completed.returncode == 0, completed.stderr[-4000:]

    results = json.loads((out / "results.json").read_text())
    assert list(results) == TOP_LEVEL_KEYS
    assert list(results["loaders"]) == list(LOADERS)
    for name in LOADERS:
        entry = results["loaders"][name]
        assert set(entry) == LOADER_KEYS, name
        assert _is_positive_finite(entry["images_per_second"]), (name, entry)
        assert entry["pass_seconds"] and all(_is_positive_finite(s) for s in entry["pass_seconds"])
        assert all(n > 0 for n in entry["images_per_pass"]), (name, entry)
        assert _is_positive_finite(entry["memory"]["peak_rss_mib"]), (name, entry)
        assert _is_positive_finite(entry["ratio"]), (name, entry)
        # A capped pass reads at most 2 batches of 4 images; a training row 2 steps.
        assert max(entry["images_per_pass"]) <= 8, (name, entry)
        assert entry["label"] in completed.stdout, name

    for name, ratio in results["ceiling_ratios"].items():
        assert _is_positive_finite(ratio), name
    assert [t["name"] for t in results["targets"]] == TARGET_NAMES
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
    assert len(streaming) == plan.STREAMING_EPOCHS and all(_is_positive_finite(mib) for mib in streaming)
    machine = results["machine"]
    assert machine["cores"] >= 1 and machine["cpu_model"] and machine["tensorflow"]
    assert results["date"] and "bench.py" in results["command"]
    assert results["data"]["images"] == 12
    assert set(results["cpu_contention"]) == {"own_cpu_seconds", "other_processes_cpu_seconds",
                                              "other_processes_share"}
    assert "Peak memory:" in completed.stdout and "Wall time:" in completed.stdout
    assert "Other processes used" in completed.stdout

    png = out / "throughput.png"
    assert png.read_bytes()[:8] == PNG_SIGNATURE
    with Image.open(png) as image:
        image.verify()
    with Image.open(png) as image:
        assert image.format == "PNG" and min(image.size) > 100


def test_the_training_rows_take_train_py_s_input_for_the_same_flags(split_records, monkeypatch):
    """The TrainConfig and InputConfig bench.py's training rows use are those train.py makes of
    --batch_size, --image_size, --augment_on=host and --[no]cache (train.py's run is stopped at its start)."""
    records_dir, _ = split_records
    manifest = schema.read_manifest(str(records_dir))
    given = []

    def captured(config, stop=None, progress=()):
        given.append(config)
        return run_dir.TrainResult(1, None, {}, {}, already_complete=True)

    monkeypatch.setattr(training, "train_and_evaluate", captured)
    config = plan.BenchmarkConfig(src="unused", batch_size=5, image_size=(40, 40))
    data = plan.Data("train", "unused", 24, ("cats", "dogs"), "binary", None, {}, 1.0, 1.0)
    bench = plan._Run(config, data, str(records_dir), "unused", manifest, lambda message: None)
    for cache in (True, False):
        flags = [f"--records={records_dir}", "--batch_size=5", "--image_size=40", "--augment_on=host",
                 "--cache" if cache else "--nocache"]
        assert cli.run(TRAIN, *flags).returncode == 0
        train_py = run_plan.plan_run(given.pop(), manifest)
        assert bench.train_plan(cache).config == train_py.config
        assert bench.train_plan(cache).train_input == train_py.train_input
        assert train_py.train_input.augmentation == augment.NOTEBOOK_AUGMENTATION and train_py.cache is cache


def test_the_training_and_streaming_rows_read_train_py_s_own_input(bench_py):
    """Cached and uncached training, then the streaming row: `RunPlan.batches` of train.py's plan."""
    plans = bench_py["plans"]
    assert [p.cache for p in plans] == [True, False, False]
    for made in plans:
        expected = run_config.TrainConfig(records=made.config.records, batch_size=4, image_size=150,
                                          augment_on=run_config.AugmentOn.HOST, cache=made.cache)
        assert made.config == expected and made.train_input.seed == expected.seed


def test_bench_reports_a_missing_split_in_one_line(tmp_path):
    (tmp_path / "no_train" / "validation").mkdir(parents=True)
    completed = cli.run(BENCH, f"--src={tmp_path / 'no_train'}", f"--out={tmp_path / 'out'}")
    assert completed.returncode == 1
    assert completed.stderr.strip().splitlines()[-1].startswith("bench.py: error: ")
    assert "train/ folder" in completed.stderr
