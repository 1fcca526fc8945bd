"""Writes a conversion's shards with Apache Beam: the `convert.py --runner=beam` path.

The launcher lists the source tree and plans the shards exactly as the local
path does (`sources.scan_image_folder`, `plan.plan_conversion`: the seed decides
which image goes to which shard, in which order). Beam then spreads the work
that grows with the photos over its workers::

    shard plans ──> (shard, position, image) ──Reshuffle──> encode_record
        (launcher)        one per image          (decode, validate, JPEG, Example)
                 ──GroupByKey(shard)──> write_shard ──> shard file + its result

Each shard is written by one worker with the local path's own `write.ShardWriter`,
from its records sorted by planned position, so both runners write the same
bytes, and a rerun with the same seed rewrites them byte for byte. The
workers' results (counts, sizes, skipped files) come back to the launcher
in the shards' sidecars (`pipeline.converter.resume`), as the local path keeps them,
with the images' fingerprints, which the launcher searches for duplicates in plan order;
the manifest, TFDS metadata, verification and swap stay the local
path's (`conversion.convert_folder`), and the
encoding and writing of a shard are `write`, which the local runner uses too.

Runs on the DirectRunner's FnApiRunner here (one process per `workers`); on a
Dask cluster with `--dask_scheduler` (Beam's DaskRunner, one partition per
shard); any other runner takes its options from `options`, the `tfds build
--beam_pipeline_options` format, e.g. `("runner=DataflowRunner", "project=p",
"region=r")`. A remote runner's workers must reach `--src` and `--out`, so both
are bucket URLs (or a shared filesystem) there.

Needs the `beam` extra: `pip install -e '.[beam]'`; on Dask the `dask` extra.
"""

from __future__ import annotations

import importlib.util
import sys
from collections.abc import Iterable, Iterator, Sequence

from pipeline import schema
from pipeline.converter import config as config_lib
from pipeline.converter import duplicates
from pipeline.converter import plan
from pipeline.converter import resume
from pipeline.converter import rules
from pipeline.converter import sources
from pipeline.converter import write

try:
    import apache_beam as beam
    from apache_beam.options import pipeline_options
except ImportError:  # an optional extra: say how to get it when it is asked for
    beam = None


# `--runner=DaskRunner` is refused by Beam 2.78: the dotted name only.
DASK_RUNNER = "apache_beam.runners.dask.dask_runner.DaskRunner"


def pipeline_options_from(
    options: Sequence[str], workers: int, dask_scheduler: str | None = None, partitions: int = 1
) -> "pipeline_options.PipelineOptions":
    """Beam options from `key=value` strings; the local FnApiRunner on `workers` processes by default.

    Args:
      options: e.g. ("runner=DataflowRunner", "project=p"); a bare key is a
        boolean flag (e.g. "save_main_session").
      workers: processes of the DirectRunner, when no runner is named.
      dask_scheduler: a Dask scheduler's address (tcp://HOST:8786): Beam's DaskRunner on it.
      partitions: Dask bag partitions (the plan's shards) unless `options` size them.
    """
    flags = [f"--{option.strip()}" for option in options if option.strip()]
    if dask_scheduler:
        # Dask's default 128 elements a partition put a few shards on one worker;
        # Reshuffle is a no-op there, so a partition per shard is what spreads the work.
        sized = any(flag.startswith(("--dask_npartitions", "--dask_partition_size")) for flag in flags)
        dask = [f"--runner={DASK_RUNNER}", f"--dask_client_address={dask_scheduler}"]
        flags = dask + ([] if sized else [f"--dask_npartitions={max(partitions, 1)}"]) + flags
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


def _positions(shard: plan.Shard) -> Iterator[tuple[tuple[str, str], tuple[int, sources.SourceImage]]]:
    for position, image in enumerate(shard.images):
        yield (shard.split, shard.filename), (position, image)


def _encode(
    element: tuple[tuple[str, str], tuple[int, sources.SourceImage]], encoding: write.Encoding
) -> tuple[tuple[str, str], tuple[int, sources.SourceImage, write.Encoded]]:
    key, (position, image) = element
    return key, (position, image, write.encode_record(image, encoding))


def _write_shard(
    element: tuple[tuple[str, str], Iterable[tuple[int, sources.SourceImage, write.Encoded]]],
    writer: write.ShardWriter,
) -> None:
    """Writes one shard in planned order (the local path's `ShardWriter.write`), then its sidecar."""
    (split, filename), items = element
    ordered = sorted(items, key=lambda item: item[0])
    shard = plan.Shard(split, filename, tuple(image for _, image, _ in ordered))
    result = writer.write(shard, iter([encoded for _, _, encoded in ordered]))
    resume.write_result(writer.folder, result)  # whole or absent: a retried bundle rewrites it
    # Progress: a line per shard (on a cluster runner, in the workers' logs).
    print(f"wrote {filename}: {result.info.num_examples} images", file=sys.stderr, flush=True)


def build_pipeline(root: "beam.Pipeline", shards: Sequence[plan.Shard], writer: write.ShardWriter) -> None:
    """Adds the conversion to `root`: decode and encode per image, write per shard."""
    _ = (
        root
        | "Plan" >> beam.Create(shards)
        | "Images" >> beam.FlatMap(_positions)
        | "Spread" >> beam.Reshuffle()  # decoding is the work: over all workers, not per shard
        | "Encode" >> beam.Map(_encode, encoding=writer.encoding)
        | "ByShard" >> beam.GroupByKey()
        | "Write" >> beam.Map(_write_shard, writer=writer)
    )


def _killed_worker() -> tuple[type[BaseException], ...]:
    """Dask's error for a task whose workers all died, or () without Dask (it catches nothing)."""
    try:
        from distributed import KilledWorker
    except ImportError:
        return ()
    return (KilledWorker,)


def _run(
    options: "pipeline_options.PipelineOptions", shards: Sequence[plan.Shard], writer: write.ShardWriter,
    dask_scheduler: str | None,
) -> None:
    """Runs the pipeline to its end, then closes a Dask runner's client (Beam's runner never does).

    Raises:
      rules.ConversionError: no Dask scheduler at `dask_scheduler`, or Dask gave up on a task
        whose workers kept dying.
    """
    root = beam.Pipeline(options=options)
    try:
        with root:  # runs and waits on exit
            build_pipeline(root, shards, writer)
    except OSError as e:
        if not dask_scheduler or getattr(root, "result", None) is not None:
            raise  # not the connection: a worker's error keeps its traceback
        raise rules.ConversionError(
            f"no Dask scheduler reached at --dask_scheduler={dask_scheduler} ({e}): start it "
            "(dask scheduler) or correct the address") from None
    except _killed_worker() as e:
        # Dask reran the task on other workers (distributed.scheduler.allowed-failures) and they died too.
        raise rules.ConversionError(
            f"Dask gave up on task {e.task!r} after {e.allowed_failures + 1} of its workers died running it "
            f"(the last {e.last_worker.address}); nothing in --out changed: see the workers' logs "
            "(out of memory?), then run the same command") from None
    finally:
        client = getattr(getattr(root, "result", None), "client", None)
        if client is not None:
            client.close()


def write_splits(
    config: config_lib.ConversionConfig,
    planned: plan.ConversionPlan,
    scratch: str,
    index: duplicates.DuplicateIndex | None = None,
) -> tuple[dict[str, schema.SplitInfo], list[schema.SkippedFile]]:
    """Writes every planned shard into `scratch` with a Beam pipeline, on `config.num_workers`
    local processes unless `config.beam_pipeline_options` name another runner.

    The workers fingerprint the images (if `index` is given, which must not
    drop); the launcher then adds them to `index` in plan order.

    Returns:
      What the local path returns: split name -> SplitInfo for every plan, and
      the skipped files (the scan's, then the decoders', in plan order).

    Raises:
      rules.ConversionError: apache-beam (or, for `config.dask_scheduler`, dask) is not installed.
    """
    if beam is None:
        raise rules.ConversionError("--runner=beam needs Apache Beam: pip install -e '.[beam]'")
    if config.dask_scheduler and importlib.util.find_spec("distributed") is None:
        raise rules.ConversionError("--dask_scheduler needs Dask: pip install -e '.[beam,dask]'")
    shards = list(planned.shards())
    writer = write.ShardWriter(scratch, planned.class_names, write.Encoding.of(config))
    options = pipeline_options_from(
        config.beam_pipeline_options, config.num_workers, config.dask_scheduler, partitions=len(shards))
    _run(options, shards, writer, config.dask_scheduler)
    results = resume.read_results(scratch, [shard.filename for shard in shards])
    missing = [shard.filename for shard in shards if shard.filename not in results]
    if missing:
        raise rules.ConversionError(f"the Beam pipeline ended without writing {', '.join(missing)}")
    splits, skipped = {}, list(planned.files.skipped)
    for split_plan in planned.splits:
        written = [results[filename] for filename in split_plan.shard_filenames]
        if index is not None:
            for result in written:
                index.replay(split_plan.name, result.fingerprints)
        splits[split_plan.name], split_skipped = write.gather_split(split_plan.name, written, planned.class_names)
        skipped += split_skipped
    return splits, skipped
