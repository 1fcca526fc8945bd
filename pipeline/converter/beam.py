"""Writes a conversion's shards with Apache Beam: the `convert.py --runner=beam` path.

The launcher lists the source tree and plans the shards exactly as the local
path does (`sources.scan_image_folder`, `sharding.plan_split`: the seed decides
which image goes to which shard, in which order). Beam then spreads the work
that grows with the photos over its workers::

    shard plans ──> (shard, position, image) ──Reshuffle──> encode_record
        (launcher)        one per image          (decode, validate, JPEG, Example)
                 ──GroupByKey(shard)──> write_shard ──> shard file + its result

Each shard is written by one worker with the local path's own `shards.write_shard`,
from its records sorted by planned position, so both runners write the same
bytes, and a rerun with the same seed rewrites them byte for byte. The
workers' results (counts, sizes, skipped files) come back to the launcher
in the shards' sidecars (`pipeline.converter.resume`), as the local path keeps them,
with the images' fingerprints, which the launcher searches for duplicates in plan order;
the manifest, TFDS metadata, verification and swap stay the local
path's (`conversion.convert_folder`), and the
encoding and writing of a shard are `shards`, which the local runner uses too.

Runs on the DirectRunner's FnApiRunner here (one process per `workers`); any other runner
takes its options from `options`, the `tfds build --beam_pipeline_options`
format, e.g. `("runner=DataflowRunner", "project=p", "region=r")`. A remote
runner's workers must reach `--src` and `--out`, so both are bucket URLs there.

Needs the `beam` extra: `pip install -e '.[beam]'`.
"""

from __future__ import annotations

import dataclasses
import sys
from collections.abc import Iterable, Iterator, Sequence

from pipeline import schema
from pipeline.converter import duplicates
from pipeline.converter import imaging
from pipeline.converter import resume
from pipeline.converter import rules
from pipeline.converter import sharding
from pipeline.converter import shards
from pipeline.converter import sources

try:
    import apache_beam as beam
    from apache_beam.options import pipeline_options
except ImportError:  # an optional extra: say how to get it when it is asked for
    beam = None

@dataclasses.dataclass(frozen=True)
class ShardTask:
    """One shard to write: what the launcher hands to the pipeline."""

    split: str
    filename: str
    images: tuple[sources.SourceImage, ...]


def pipeline_options_from(options: Sequence[str], workers: int) -> "pipeline_options.PipelineOptions":
    """Beam options from `key=value` strings; the local FnApiRunner on `workers` processes by default.

    Args:
      options: e.g. ("runner=DataflowRunner", "project=p"); a bare key is a
        boolean flag (e.g. "save_main_session").
      workers: processes of the DirectRunner, when no runner is named.
    """
    flags = [f"--{option.strip()}" for option in options if option.strip()]
    if not any(flag.startswith("--runner=") for flag in flags):
        # The DirectRunner's batch engine itself: "DirectRunner" would first
        # try to download its Prism runner from GitHub. Processes, not
        # threads: decoding holds the GIL. Workers' start-up chatter off; a
        # named runner keeps its own logging.
        mode = "multi_processing" if workers > 1 else "in_memory"
        defaults = [
            "--runner=FnApiRunner",
            f"--direct_num_workers={workers}",
            f"--direct_running_mode={mode}",
            "--default_sdk_harness_log_level=ERROR",
        ]
        flags = defaults + flags  # the user's come last: theirs win
    return pipeline_options.PipelineOptions(flags)


def shard_tasks(plans: Sequence[sharding.SplitPlan]) -> list[ShardTask]:
    """Every shard of every split, in the local path's order."""
    return [
        ShardTask(plan.name, filename, images) for plan in plans for filename, images in plan.shards()
    ]


def _positions(task: ShardTask) -> Iterator[tuple[tuple[str, str], tuple[int, sources.SourceImage]]]:
    for position, image in enumerate(task.images):
        yield (task.split, task.filename), (position, image)


def _encode(
    element: tuple[tuple[str, str], tuple[int, sources.SourceImage]],
    stored_size: tuple[int, int] | None,
    max_pixels: int,
    fingerprint: bool,
) -> tuple[tuple[str, str], tuple[int, sources.SourceImage, shards.Encoded]]:
    shard, (position, image) = element
    return shard, (position, image, shards.encode_record(image, stored_size, max_pixels, fingerprint))


def _write_shard(
    element: tuple[tuple[str, str], Iterable[tuple[int, sources.SourceImage, shards.Encoded]]],
    scratch: str,
    class_names: Sequence[str],
) -> None:
    """Writes one shard in planned order (the local `write_shard`), then its sidecar."""
    (split, filename), items = element
    ordered = sorted(items, key=lambda item: item[0])
    images = [image for _, image, _ in ordered]
    encoded = iter([encoded for _, _, encoded in ordered])
    result = shards.write_shard(split, filename, images, encoded, scratch, class_names)
    resume.write_result(scratch, result)  # whole or absent: a retried bundle rewrites it
    # Progress: a line per shard (on a cluster runner, in the workers' logs).
    print(f"wrote {filename}: {result.info.num_examples} images", file=sys.stderr, flush=True)


def build_pipeline(
    root: "beam.Pipeline",
    tasks: Sequence[ShardTask],
    scratch: str,
    class_names: Sequence[str],
    stored_size: tuple[int, int] | None,
    max_pixels: int,
    fingerprint: bool = False,
) -> None:
    """Adds the conversion to `root`: decode and encode per image, write per shard."""
    _ = (
        root
        | "Plan" >> beam.Create(tasks)
        | "Images" >> beam.FlatMap(_positions)
        | "Spread" >> beam.Reshuffle()  # decoding is the work: over all workers, not per shard
        | "Encode" >> beam.Map(_encode, stored_size=stored_size, max_pixels=max_pixels, fingerprint=fingerprint)
        | "ByShard" >> beam.GroupByKey()
        | "Write" >> beam.Map(_write_shard, scratch=scratch, class_names=tuple(class_names))
    )


def write_splits(
    plans: Sequence[sharding.SplitPlan],
    scan: sources.FolderScan,
    scratch: str,
    *,
    stored_size: tuple[int, int] | None,
    max_pixels: int = imaging.DEFAULT_MAX_PIXELS,
    workers: int = 1,
    options: Sequence[str] = (),
    index: duplicates.DuplicateIndex | None = None,
) -> tuple[dict[str, schema.SplitInfo], list[schema.SkippedFile]]:
    """Writes every split's shards into `scratch` with a Beam pipeline.

    The workers fingerprint the images (if `index` is given, which must not
    drop); the launcher then adds them to `index` in plan order.

    Returns:
      What the local path returns: split name -> SplitInfo for every plan, and
      the skipped files (the scan's, then the decoders', in plan order).

    Raises:
      rules.ConversionError: apache-beam is not installed.
    """
    if beam is None:
        raise rules.ConversionError("--runner=beam needs Apache Beam: pip install -e '.[beam]'")
    tasks = shard_tasks(plans)
    with beam.Pipeline(options=pipeline_options_from(options, workers)) as root:
        build_pipeline(root, tasks, scratch, scan.class_names, stored_size, max_pixels, index is not None)
    results = resume.read_results(scratch, [task.filename for task in tasks])
    missing = [task.filename for task in tasks if task.filename not in results]
    if missing:
        raise rules.ConversionError(f"the Beam pipeline ended without writing {', '.join(missing)}")
    splits, skipped = {}, list(scan.skipped)
    for plan in plans:
        written = [results[filename] for filename in plan.shard_filenames]
        if index is not None:
            for result in written:
                index.replay(plan.name, result.fingerprints)
        splits[plan.name], split_skipped = shards.gather_split(plan.name, written, scan.class_names)
        skipped += split_skipped
    return splits, skipped
