"""The conversion benchmark's parts (`benchmark/conversion.py`), on a tiny generated tree."""

from __future__ import annotations

import os

import pytest

from benchmark import BenchmarkError
from benchmark import conversion
from benchmark import conversion_report
from support.images import make_image_tree
from pipeline import plots, schema


@pytest.fixture(scope="module")
def photos(tmp_path_factory):
    return make_image_tree(tmp_path_factory.mktemp("photos") / "src", "flat", {"cats": 3, "dogs": 2})


def test_copies_are_real_files_in_every_class(photos, tmp_path):
    assert conversion.copy_photos(str(photos.root), str(tmp_path / "big"), 7) == 7
    files = {c: sorted(os.listdir(tmp_path / "big" / "train" / c)) for c in ("cats", "dogs")}
    assert (len(files["cats"]), len(files["dogs"])) == (4, 3)  # classes in turn
    inodes = {os.stat(tmp_path / "big" / "train" / c / f).st_ino for c in files for f in files[c]}
    assert len(inodes) == 7  # copies: the converter would take a link's file once


def test_decode_rate_and_a_measured_conversion(photos, tmp_path):
    conversion.copy_photos(str(photos.root), str(tmp_path / "big"), 12)
    assert conversion.parallel_decode_rate(str(tmp_path / "big"), workers=2) > 0

    run = conversion.run_converter(str(tmp_path / "big"), str(tmp_path / "records"), workers=2)
    assert run.images == 12 == schema.read_manifest(str(tmp_path / "records")).splits["train"].num_examples
    assert 0 <= run.verify_seconds < run.seconds
    assert run.memory_timeline and run.peak_mib == max(m for _, m in run.memory_timeline) > 0

    streaming = conversion.streaming_memory(str(tmp_path / "records"), epochs=2, batch_size=4)
    assert len(streaming) == 2 and min(streaming) > 0
    result = conversion.ConversionBenchmark(12, 2, 100.0, run, run, tuple(streaming))
    assert conversion_report.to_json(result)["conversion"]["images"] == 12
    assert "of the decode rate" in conversion_report.format_report(result)
    png = plots.plot_line_panels(conversion_report.memory_panels(result), str(tmp_path / "memory.png"))
    assert open(png, "rb").read(8) == b"\x89PNG\r\n\x1a\n"


def test_the_duplicate_search_figures_come_from_the_fastest_runs_of_each():
    def run(seconds: float, verify_seconds: float, cpu_seconds: float) -> conversion.ConversionRun:
        return conversion.ConversionRun(100, seconds, verify_seconds, 1.0, ((0.0, 1.0),), cpu_seconds, seconds + 1.0)

    on = (run(53.2, 21.4, 80.8), run(46.4, 13.0, 85.2))
    off = (run(39.4, 11.9, 73.6), run(50.9, 20.8, 79.1))
    result = conversion.ConversionBenchmark(100, 2, 100.0, on[0], on[0], (1.0,), on, off)
    assert result.duplicate_search_seconds == pytest.approx(46.4 - 39.4)
    assert result.duplicate_search_share == pytest.approx(7.0 / 46.4)
    assert result.duplicate_search_cpu_share == pytest.approx((80.8 - 73.6) / 80.8)
    assert result.duplicate_search_write_share == pytest.approx((31.8 - 27.5) / 46.4)
    assert "+9.3% in its writing phase" in conversion_report.format_report(result)
    assert conversion_report.to_json(result)["duplicate_search_write_share"] == pytest.approx(0.0927, abs=1e-4)


def test_a_failed_conversion_is_an_error_with_its_line(tmp_path):
    (tmp_path / "empty").mkdir()
    with pytest.raises(BenchmarkError, match="convert.py failed: convert.py: error: "):
        conversion.run_converter(str(tmp_path / "empty"), str(tmp_path / "records"), workers=1)


def test_the_whole_and_marginal_rates_come_from_the_fastest_whole_processes():
    def run(images: int, wall_seconds: float) -> conversion.ConversionRun:
        return conversion.ConversionRun(images, wall_seconds - 1.0, 0.5, 1.0, ((0.0, 1.0),), 2.0, wall_seconds)

    on = (run(25_000, 30.0), run(25_000, 25.0))
    smaller = (run(5_000, 9.0), run(5_000, 7.0))
    result = conversion.ConversionBenchmark(
        25_000, 2, 1_600.0, on[0], smaller[0], (1.0,), on, (), fraction_again=smaller[1:]
    )
    assert result.whole_vs_decode == pytest.approx(25_000 / 25.0 / 1_600.0)  # 0.625
    assert result.marginal_rate == pytest.approx(20_000 / 18.0)
    assert result.marginal_vs_decode == pytest.approx(20_000 / 18.0 / 1_600.0)  # 0.69
    report = conversion_report.format_report(result)
    assert "0.62 of the decode rate (target 0.45: met)" in report
    assert "1,111 images/s, 0.69 of the decode rate (target 0.7: not met)" in report
    data = conversion_report.to_json(result)
    assert data["marginal_vs_decode"] == pytest.approx(0.6944, abs=1e-4) and len(data["conversions_smaller_again"]) == 1
