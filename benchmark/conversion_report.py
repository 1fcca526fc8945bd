"""bench_convert.py's report of a `conversion.ConversionBenchmark`: its lines, its JSON, its memory chart."""

from __future__ import annotations

import dataclasses

from benchmark.conversion import MARGINAL_TARGET, WHOLE_TARGET, ConversionBenchmark, ConversionRun
from pipeline import plots


def format_report(result: ConversionBenchmark) -> str:
    full, small = result.full, result.fraction
    rows = [
        f"parallel decode, {result.workers} processes: {result.decode_rate:,.0f} images/s",
        f"convert {full.images:,} images: {full.images_per_second:,.0f} images/s with verification "
        f"({full.images_per_second_before_verify:,.0f} before it, verify {full.verify_seconds:.1f} s): "
        f"{result.conversion_vs_decode:.2f} of the decode rate",
        f"whole process, start-up included (fastest of {len(result.search_on or (full,))}): "
        f"{result.whole_vs_decode:.2f} of the decode rate (target {WHOLE_TARGET}: "
        f"{_verdict(result.whole_vs_decode >= WHOLE_TARGET)})",
        f"marginal rate from {small.images:,} to {full.images:,} images (fastest whole processes): "
        f"{result.marginal_rate:,.0f} images/s, {result.marginal_vs_decode:.2f} of the decode rate "
        f"(target {MARGINAL_TARGET}: {_verdict(result.marginal_vs_decode >= MARGINAL_TARGET)})",
        f"peak memory of the converter: {full.peak_mib:,.0f} MiB for {full.images:,} images, "
        f"{small.peak_mib:,.0f} MiB for {small.images:,}",
        "streaming, cache off, MiB after each epoch: " + ", ".join(f"{m:,.0f}" for m in result.streaming_rss_mib),
    ]
    if result.search_off:
        rows.append(
            f"duplicate search: {result.duplicate_search_seconds:+.1f} s, {result.duplicate_search_share:+.1%} "
            f"of the conversion with it, {result.duplicate_search_cpu_share:+.1%} of its CPU-seconds, "
            f"{result.duplicate_search_write_share:+.1%} in its writing phase (fastest of "
            f"{len(result.search_on)} runs with it, {len(result.search_off)} with --duplicates=off, in turns; "
            "the folder is copies: every photo has byte-identical copies)"
        )
    if (cost := result.search_cost) is not None:
        rows.append(
            f"duplicate search, its parts: hashing {cost.hash_ms:.3f} ms of CPU per photo, the index "
            f"{cost.index_seconds:.2f} s for this folder, {cost.index_seconds_distinct:.2f} s for {cost.images:,} "
            f"distinct hashes: {cost.added_seconds() / full.seconds:.1%} of this conversion's time, "
            f"{cost.added_seconds(distinct=True) / full.seconds:.1%} for as many distinct photos"
        )
    return "\n".join(rows)


def _verdict(met: bool) -> str:
    return "met" if met else "not met"


def to_json(result: ConversionBenchmark) -> dict:
    def run_json(run: ConversionRun) -> dict:
        return {
            "images": run.images,
            "seconds": run.seconds,
            "verify_seconds": run.verify_seconds,
            "images_per_second": run.images_per_second,
            "images_per_second_before_verify": run.images_per_second_before_verify,
            "peak_pss_mib": run.peak_mib,
            "pss_timeline": [list(point) for point in run.memory_timeline],
            "cpu_seconds": run.cpu_seconds,
            "wall_seconds": run.wall_seconds,
        }

    return {
        "images": result.images,
        "workers": result.workers,
        "decode_images_per_second": result.decode_rate,
        "conversion_vs_decode": result.conversion_vs_decode,
        "conversion": run_json(result.full),
        "conversion_smaller": run_json(result.fraction),
        "conversions_smaller_again": [run_json(run) for run in result.fraction_again],
        "whole_vs_decode": result.whole_vs_decode,
        "marginal_images_per_second": result.marginal_rate,
        "marginal_vs_decode": result.marginal_vs_decode,
        "targets": {"whole_vs_decode": WHOLE_TARGET, "marginal_vs_decode": MARGINAL_TARGET},
        "streaming_rss_mib_per_epoch": list(result.streaming_rss_mib),
        "conversions_duplicates_reported": [run_json(run) for run in result.search_on],
        "conversions_duplicates_off": [run_json(run) for run in result.search_off],
        "duplicate_search_seconds": result.duplicate_search_seconds,
        "duplicate_search_share": result.duplicate_search_share,
        "duplicate_search_cpu_share": result.duplicate_search_cpu_share,
        "duplicate_search_write_share": result.duplicate_search_write_share,
        "duplicate_search_parts": None if result.search_cost is None else {
            **dataclasses.asdict(result.search_cost),
            "added_share": result.search_cost.added_seconds() / result.full.seconds,
            "added_share_distinct": result.search_cost.added_seconds(distinct=True) / result.full.seconds,
        },
    }


def memory_panels(result: ConversionBenchmark) -> list[plots.LinePanel]:
    """The converter's memory over time, and streaming memory per epoch."""
    full, small = result.full, result.fraction
    return [
        plots.LinePanel(
            "Converter memory (launcher + decoders)", "seconds", "proportional set size, MiB",
            {
                f"{full.images:,} images": tuple(zip(*full.memory_timeline)),
                f"{small.images:,} images": tuple(zip(*small.memory_timeline)),
            },
        ),
        plots.LinePanel(
            "Streaming for training, cache off", "epoch", "resident MiB after the epoch",
            {"train_dataset": (tuple(range(1, len(result.streaming_rss_mib) + 1)), result.streaming_rss_mib)},
        ),
    ]
