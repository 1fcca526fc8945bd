"""The report of a run: the text table, the targets' verdicts, results.json and the chart; --backends' own."""

from __future__ import annotations

import dataclasses
import math
import os
import shlex
import statistics
from collections.abc import Sequence
from typing import Any

from pipeline import fileio
from pipeline import plots
from benchmark import backends
from benchmark import targets
from benchmark import timing
from benchmark.plan import Group, Results, Row

RESULTS_FILENAME = "results.json"
PLOT_FILENAME = "throughput.png"
CONTENTION_WARNING_SHARE = 0.1  # of the machine's CPU used by others: above it the figures are flagged
GROUP_COLOURS = {Group.IDG: "#8c8c8c", Group.KERAS: "#4c72b0", Group.PIPELINE: "#55a868",
                 Group.RESIZED: "#2e7d4f", Group.CEILING: "#dd8452", Group.SERVICE: "#c44e52",
                 Group.TRAINING: "#8172b2"}
BASELINE_NAMES = {"idg_rescale": "IDG rescale", "idg_augment": "IDG + aug", "train_in_memory": "in-memory",
                  "pipeline_aug_tfops": "in-process"}


@dataclasses.dataclass(frozen=True)
class Verdict:
    """A target judged on a run."""

    name: str
    description: str
    value: float
    value_best_passes: float | None  # ratios: from each row's fastest pass, steadier where the speed wanders
    threshold: float
    unit: str  # "x" or "MiB"
    passed: bool


def _ips(results: Results, name: str) -> float:
    return results.row(name).measurement.images_per_second


def _fastest(results: Results, names: Sequence[str]) -> tuple[Row, str]:
    """The row of `names` with the highest median, and " (best: <its label>)" if there was a choice."""
    row = results.row(max(names, key=lambda name: _ips(results, name)))
    return row, f" (best: {row.spec.label})" if len(names) > 1 else ""


def _judge(results: Results, target: targets.Target) -> Verdict:
    if isinstance(target, targets.RatioTarget):
        top, top_note = _fastest(results, target.numerator)
        bottom, bottom_note = _fastest(results, target.denominator)
        value = top.measurement.images_per_second / bottom.measurement.images_per_second
        best = max(top.measurement.pass_rates) / max(bottom.measurement.pass_rates)
        description = f"{target.numerator_text}{top_note} vs {target.denominator_text}{bottom_note}"
        return Verdict(target.name, description, value, best, target.threshold, "x", value >= target.threshold)
    if isinstance(target, targets.GrowthTarget):
        rss, window = results.streaming_rss_mib, min(target.window, len(results.streaming_rss_mib))
        value = statistics.median(rss[-window:]) - statistics.median(rss[:window])
        description = (f"resident memory growth over {len(rss)} uncached host-aug epochs "
                       f"(median of the last {window} vs the first {window})")
    else:
        value, description = results.peak_rss_mib, "peak resident memory of the benchmark process"
    return Verdict(target.name, description, value, None, target.threshold_mib, "MiB", value < target.threshold_mib)


def evaluate(results: Results, table: Sequence[targets.Target] = targets.TARGETS) -> list[Verdict]:
    """Judges every target of `table` on `results`; ratios on the median figures."""
    return [_judge(results, target) for target in table]


def ceiling_ratios(results: Results) -> dict[str, float]:
    """The cold epoch over the decode ceiling (the faster one), with and without DCT scaling."""
    best_ceiling = max(_ips(results, "ceiling"), _ips(results, "ceiling_autotune"))
    return {"dct_scaling": _ips(results, "pipeline_cold") / best_ceiling,
            "no_dct_scaling": _ips(results, "pipeline_cold_nodct") / _ips(results, "ceiling_nodct")}


def ratio(results: Results, row: Row) -> float | None:
    """The row's images/s over its baseline's, or None without one."""
    baseline = row.spec.baseline
    return None if baseline is None else row.measurement.images_per_second / _ips(results, baseline)


def _versus(results: Results, row: Row) -> tuple[str, str]:
    """(ratio, what it is to), as the table shows them."""
    if row.spec.baseline is None:
        return "", ""
    if row.spec.baseline == row.spec.name:
        return "1.00x", "(baseline)"
    return f"{ratio(results, row):.2f}x", BASELINE_NAMES.get(row.spec.baseline, row.spec.baseline)


def format_table(results: Results) -> str:
    """The rows as a text table, then the cold epoch / ceiling ratios."""
    width = max(len(row.spec.label) for row in results.rows)
    header = (f"{'loader':<{width}}  {'images/s':>10}  {'ratio':>8}  {'vs':<11}  "
              f"{'img/pass':>8}  {'1st batch':>9}  {'peak RSS':>9}")
    lines = [header, "-" * len(header)]
    for previous, row in zip((None, *results.rows), results.rows):
        if previous is not None and previous.spec.group is not row.spec.group:
            lines.append("")
        first = [s for s in row.measurement.first_batch_seconds if math.isfinite(s)]
        first_batch = f"{statistics.median(first) * 1000:,.0f} ms" if first else ""
        ratio_text, versus = _versus(results, row)
        lines.append(f"{row.spec.label:<{width}}  {row.measurement.images_per_second:>10,.1f}  {ratio_text:>8}  "
                     f"{versus:<11}  {row.measurement.pass_images[0]:>8}  {first_batch:>9}  "
                     f"{row.memory.peak_rss_mib:>5,.0f} MiB")
    ratios = ceiling_ratios(results)
    return "\n".join(lines + [
        "",
        "pipeline cold epoch / decode ceiling (same dct setting): "
        f"dct_scaling=True {ratios['dct_scaling']:.2f}, dct_scaling=False {ratios['no_dct_scaling']:.2f}",
        "images/s: median over the timed passes; 1st batch: median time from iter() to the first batch; "
        "peak RSS: resident peak while that row ran (the training rows share one)",
    ])


def format_targets(results: Results) -> str:
    """The targets with PASS/FAIL, then memory, wall time and other processes' CPU use."""
    lines = ["Targets:"]
    for v in evaluate(results):
        figure = (f"{v.value:.2f}x (target >= {v.threshold:g}x; fastest passes: {v.value_best_passes:.2f}x)"
                  if v.unit == "x" else f"{v.value:,.0f} MiB (target < {v.threshold:,.0f} MiB)")
        lines.append(f"  {'PASS' if v.passed else 'FAIL'}  {v.description}: {figure}")
    lines += [
        f"Peak memory: {results.peak_rss_mib:,.0f} MiB resident "
        f"(getrusage ru_maxrss now: {results.ru_maxrss_mib:,.0f} MiB)",
        "Resident memory after each uncached epoch: "
        + ", ".join(f"{mib:,.0f}" for mib in results.streaming_rss_mib) + " MiB",
        f"Wall time: {results.wall_seconds:.1f} s",
        _contention(results.cpu_contention),
    ]
    if results.config.max_batches is not None:
        lines.append(f"Note: --max_batches={results.config.max_batches} caps every pass: "
                     "the figures are not epochs and the targets mean little.")
    return "\n".join(lines)


def _contention(cpu: timing.CpuContention) -> str:
    """Other processes' share of the CPU during the run, flagged above CONTENTION_WARNING_SHARE."""
    return (f"Other processes used {cpu.other_processes_share:.0%} of the machine's CPU during the run "
            f"({cpu.other_processes_cpu_seconds:.0f} CPU-s; the benchmark {cpu.own_cpu_seconds:.0f} CPU-s)"
            + (": the figures are disturbed, run again on an idle machine"
               if cpu.other_processes_share > CONTENTION_WARNING_SHARE else ""))


def _row_json(results: Results, row: Row) -> dict[str, Any]:
    m = row.measurement
    baseline = {} if row.spec.baseline is None else {"baseline": row.spec.baseline, "ratio": ratio(results, row)}
    return {
        "label": row.spec.label, "group": row.spec.group.value, "kind": m.kind,
        "images_per_second": m.images_per_second,
        "images_per_second_min": min(m.pass_rates), "images_per_second_max": max(m.pass_rates),
        "images_per_pass": list(m.pass_images), "pass_seconds": list(m.pass_seconds),
        "first_batch_seconds": list(m.first_batch_seconds),
        "seconds_total": row.seconds, "memory": dataclasses.asdict(row.memory), **baseline,
    }


def to_json(results: Results) -> dict[str, Any]:
    """The results as results.json holds them (`fileio.write_json` turns non-finite floats into null)."""
    config = dataclasses.asdict(results.config)
    return {
        "machine": results.machine,
        "date": results.date,
        "command": results.command,
        "settings": {**config, "src": os.path.abspath(results.config.src),
                     "image_data_generator": results.image_data_generator},
        "data": dataclasses.asdict(results.data),
        "loaders": {row.spec.name: _row_json(results, row) for row in results.rows},
        "ceiling_ratios": ceiling_ratios(results),
        "memory": {"peak_rss_mib": results.peak_rss_mib, "ru_maxrss_mib": results.ru_maxrss_mib,
                   "per_loader_peaks": True,  # sampled while each row ran
                   "uncached_streaming_rss_mib": list(results.streaming_rss_mib)},
        "cpu_contention": dataclasses.asdict(results.cpu_contention),
        "wall_seconds": results.wall_seconds,
        "targets": [{k: v for k, v in dataclasses.asdict(verdict).items() if v is not None}
                    for verdict in evaluate(results)],
    }


def plot(results: Results, path: str) -> str:
    """Bars of images/s on a log scale: the input pipelines, then the CNN's training; returns `path`."""
    def bar(row: Row) -> plots.Bar:
        ratio_text, versus = _versus(results, row)
        note = f"({ratio_text} {versus})" if ratio_text and versus != "(baseline)" else versus
        return plots.Bar(row.spec.label, row.measurement.images_per_second, row.spec.group.value, note)

    panels = [("Input pipelines: images/s delivered (log scale)",
               [bar(row) for row in results.rows if row.spec.group is not Group.TRAINING]),
              ("CNN training: images/s trained (log scale)",
               [bar(row) for row in results.rows if row.spec.group is Group.TRAINING])]
    config, machine, data = results.config, results.machine, results.data
    suptitle = (f"{data.images} '{data.split}' images -> {config.image_size[0]}x{config.image_size[1]}, "
                f"batch {config.batch_size}; {machine['usable_cores']} cores ({machine['cpu_model']}), "
                f"TF {machine['tensorflow']}, {results.date[:10]}")
    colours = {group.value: colour for group, colour in GROUP_COLOURS.items()}
    return plots.plot_bar_panels(panels, path, colours, suptitle)


def save(results: Results, out: str) -> tuple[str, str]:
    """Writes results.json and throughput.png into `out`; returns their paths."""
    json_path = fileio.write_json(os.path.join(out, RESULTS_FILENAME), to_json(results))
    return json_path, plot(results, os.path.join(out, PLOT_FILENAME))


# --------------------------------------------------------------------------
# bench.py --backends: its own table and results.json (`benchmark.backends`).

BACKENDS_BASELINE = "tensorflow"  # the row the others' rates are divided by
LOGS_FOLDER = "backend_logs"  # in --out: each train.py process's output
SETUP_SHOWN = ("backend", "devices", "strategy")  # of train.py's setup block: what says a row ran as it claims


def _seconds(value: float | None) -> str:
    return "" if value is None else f"{value:,.1f} s"


def _row_own(arg: str) -> str:
    """A train.py flag as the table shows it, "..." for a value each row has its own."""
    return next((f"{flag}..." for flag in ("--model_dir=", "--strategy=") if arg.startswith(flag)), arg)


def backend_ratio(results: backends.BackendResults, row: backends.BackendRow) -> float | None:
    """The row's rate over the BACKENDS_BASELINE row's, or None when either is missing."""
    base = next((r for r in results.rows if r.backend.name == BACKENDS_BASELINE), None)
    if base is None or base.images_per_second is None or row.images_per_second is None:
        return None
    return row.images_per_second / base.images_per_second


def format_backends_table(results: backends.BackendResults) -> str:
    """The rows as a text table, train.py's own account of each, then what the columns are."""
    width = max(len(row.backend.label) for row in results.rows)
    header = (f"{'backend':<{width}}  {'images/s':>9}  {'vs TF':>6}  {'1st epoch':>9}  {'one-off':>8}  "
              f"{'epoch':>8}  {'peak RSS per process':>20}  {'CPU-s':>6}")
    lines = [header, "-" * len(header)]
    for row in results.rows:
        rate, versus = row.images_per_second, backend_ratio(results, row)
        rss = ", ".join(f"{p.peak_rss_mib:,.0f}" for p in row.processes) + " MiB"
        lines.append(
            f"{row.backend.label:<{width}}  {'' if rate is None else f'{rate:,.1f}':>9}  "
            f"{'' if versus is None else f'{versus:.2f}x':>6}  {_seconds(row.first_epoch_seconds):>9}  "
            f"{_seconds(row.one_off_seconds):>8}  {_seconds(row.epoch_seconds):>8}  {rss:>20}  "
            f"{sum(p.cpu_seconds for p in row.processes):>6,.0f}")
        if row.error:
            lines.append(f"  failed: {row.error}")
    lines += ["", "train.py's own account of each run (its results.json):"]
    lines += [f"  {row.backend.label}: " + ("; ".join(f"{key} {row.setup[key]}" for key in SETUP_SHOWN
                                                    if key in row.setup) or "none") for row in results.rows]
    config, argv = results.config, results.rows[0].argv
    return "\n".join(lines + [
        "",
        f"Each row: {shlex.join(['train.py', *map(_row_own, argv[2:])])} (--model_dir and --strategy its own; "
        "each process's environment is in results.json)",
        f"images/s: history.json's images_per_second, the median of epochs 2 to {backends.train_epochs(config)} "
        f"({config.train_steps} steps of a global batch of {config.batch_size}); the 1st compiles.",
        "1st epoch: from the first process's start to the 1st epoch's history.json entry; one-off: that less "
        "a steady epoch (epoch: between two entries, validation and backups included).",
        "peak RSS: each process's, the kernel's (wait4); CPU-s: user + system of the row's processes.",
        f"Wall time: {results.wall_seconds:.1f} s",
        _contention(results.cpu_contention),
    ])


def _process_json(process: backends.ProcessRun) -> dict[str, Any]:
    return {key: value for key, value in dataclasses.asdict(process).items() if key != "output"}


def _backend_json(results: backends.BackendResults, row: backends.BackendRow) -> dict[str, Any]:
    return {
        "label": row.backend.label, "keras_backend": row.backend.keras_backend,
        "processes": row.backend.processes, "local_devices": row.backend.local_devices,
        "command": list(row.argv), "error": row.error,
        "images_per_second": row.images_per_second, "ratio_to_" + BACKENDS_BASELINE: backend_ratio(results, row),
        "epoch_images_per_second": list(row.epoch_rates), "epoch_end_seconds": list(row.epoch_ends),
        "first_epoch_seconds": row.first_epoch_seconds, "epoch_seconds": row.epoch_seconds,
        "one_off_seconds": row.one_off_seconds, "setup": row.setup,
        "per_process": [_process_json(process) for process in row.processes],
    }


def backends_to_json(results: backends.BackendResults) -> dict[str, Any]:
    """The results as results.json holds them."""
    return {
        "machine": results.machine, "date": results.date, "command": results.command,
        "settings": {**dataclasses.asdict(results.config), "epochs": backends.train_epochs(results.config)},
        "data": {"records": results.records, "split": backends.TRAIN_SPLIT, "images": results.train_images},
        "backends": {row.backend.name: _backend_json(results, row) for row in results.rows},
        "cpu_contention": dataclasses.asdict(results.cpu_contention), "wall_seconds": results.wall_seconds,
    }


def save_backends(results: backends.BackendResults, out: str) -> tuple[str, str]:
    """Writes results.json and each process's output (LOGS_FOLDER) into `out`; returns their paths."""
    logs = os.path.join(out, LOGS_FOLDER)
    for row in results.rows:
        for process in row.processes:
            fileio.write_text(os.path.join(logs, f"{row.backend.name}.{process.process_id}.log"), process.output)
    return fileio.write_json(os.path.join(out, RESULTS_FILENAME), backends_to_json(results)), logs
