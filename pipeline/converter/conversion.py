"""Converts a class-folder tree of images into sharded TFRecord files.

The output folder holds, once conversion has finished::

    records/
      manifest.json                                    # schema.Manifest: the counts, duplicates
      data_report.png                                  # class counts, image sizes, duplicates
      dataset_info.json, features.json, label.labels.txt  # TFDS metadata, from it
      cat_dog_small-train.tfrecord-00000-of-00004      # shards, per split
      ...

Conversion goes through three record types, one per stage: a
`sources.SourceImage` (a file found), a `imaging.StoredImage` (that file
decoded and stored as RGB JPEG, in a worker process) and the serialized
`tf.train.Example` (`schema.serialize_example`, also in the worker, which
writes the shard: `local`). A local conversion never imports TensorFlow.

Everything is written to a scratch folder inside `out` first and renamed into
place at the end, the manifest last, so an interrupted conversion leaves no
half-written records and existing records go only once the new set is whole.
Each finished shard gets a sidecar there, so that `--resume` can keep it
(`resume`). `src` and `out` may be local paths or URLs (`pipeline.fileio`).
The shards are written by this machine's decoding pool (`local`) or, with
`runner=Runner.BEAM`, by Apache Beam (`beam`); both as `plan` lays them out,
through `write`. Each step takes the `ConversionConfig` (`config`) itself.
"""

from __future__ import annotations

import contextlib
import dataclasses
import multiprocessing.pool
import time
from collections.abc import Sequence

from pipeline import fileio
from pipeline import schema
from pipeline import verify
from pipeline.converter import duplicates as duplicates_lib
from pipeline.converter import local
from pipeline.converter import out_dir
from pipeline.converter import plan
from pipeline.converter import resume as resume_lib
from pipeline.converter import rules
from pipeline.converter import tfds_metadata
from pipeline.converter import walk
# The public surface, as the README's From-Python snippet uses it: defined in `config`.
from pipeline.converter.config import ConversionConfig, ConversionError, Runner, Verification  # noqa: F401


@dataclasses.dataclass(frozen=True)
class ConversionSummary:
    """What a conversion did."""

    out: str
    manifest: schema.Manifest
    seconds: float  # in all, verification included
    verify_seconds: float = 0.0
    verification: Verification = Verification.RECORDS
    duplicate_mode: duplicates_lib.DuplicateMode = duplicates_lib.DuplicateMode.REPORT

    @property
    def skipped(self) -> tuple[schema.SkippedFile, ...]:
        return self.manifest.skipped

    @property
    def num_images(self) -> int:
        return sum(s.num_examples for s in self.manifest.splits.values())

    @property
    def num_bytes(self) -> int:
        return sum(s.num_bytes for s in self.manifest.splits.values())

    def format(self) -> str:
        """A human-readable report: counts per split and class, skips, speed."""
        lines = [f"Wrote {self.num_images} images to {self.out}"]
        for name, split in self.manifest.splits.items():
            counts = ", ".join(f"{c}: {n}" for c, n in split.class_counts.items())
            lines.append(
                f"  {name:<10} {split.num_examples:>7} images in "
                f"{len(split.shards)} shards ({_megabytes(split.num_bytes)})  [{counts}]"
            )
        lines.append(f"  skipped    {len(self.skipped):>7} {'file' if len(self.skipped) == 1 else 'files'}")
        lines += walk.skip_lines(self.skipped)
        if self.duplicate_mode is not duplicates_lib.DuplicateMode.OFF:
            lines += duplicates_lib.summary_lines(self.manifest.duplicates, self.duplicate_mode)
        rate = self.num_images / self.seconds if self.seconds > 0 else float("inf")
        checked = "checksums, counts, labels, sizes" + (", images" if self.verification is Verification.FULL else "")
        lines.append(
            f"  {_megabytes(self.num_bytes)} written in {self.seconds:.1f} s ({rate:.0f} images/s), "
            f"verified ({checked}) in {self.verify_seconds:.1f} s"
        )
        return "\n".join(lines)


def _megabytes(num_bytes: int) -> str:
    return f"{num_bytes / 1e6:.1f} MB"


def _open_scratch(config: ConversionConfig, planned: plan.ConversionPlan) -> tuple[str, dict]:
    """This run's scratch folder in `out`, and the finished shards `--resume` keeps there."""
    if config.runner is Runner.BEAM:
        out_dir.remove_stale_scratch(config.out)
        return out_dir.make_scratch(config.out), {}
    return resume_lib.open_scratch(config, planned)


def _write_shards(
    config: ConversionConfig,
    planned: plan.ConversionPlan,
    scratch: str,
    kept: dict,
    pool: multiprocessing.pool.Pool | None,
    index: duplicates_lib.DuplicateIndex | None,
) -> tuple[dict[str, schema.SplitInfo], list[schema.SkippedFile]]:
    """Every shard not kept, written into `scratch` by the configured runner; duplicates into `index`."""
    if config.runner is Runner.BEAM:
        from pipeline.converter import beam  # heavy, optional: only when asked for

        written, skipped = beam.write_splits(config, planned, scratch, index)
        if config.strict:
            rules.check_strict(skipped)
        return written, skipped
    return local.write_splits(config, planned, scratch, kept, pool, index)


def _manifest(
    config: ConversionConfig,
    planned: plan.ConversionPlan,
    scratch: str,
    written: dict[str, schema.SplitInfo],
    skipped: Sequence[schema.SkippedFile],
    index: duplicates_lib.DuplicateIndex | None,
) -> schema.Manifest:
    """The new set's manifest, once its splits pass `rules.checked_splits` (empty ones leave `scratch`)."""
    return schema.Manifest(
        dataset_name=planned.dataset_name,
        class_names=planned.class_names,
        splits=rules.checked_splits(written, planned.class_names, config.src, scratch, skipped),
        stored_size=config.image_size,
        source=fileio.absolute(config.src),
        skipped=tuple(skipped),
        duplicates=tuple(index.pairs) if index else (),
    )


def _finish(
    config: ConversionConfig,
    scratch: str,
    manifest: schema.Manifest,
    index: duplicates_lib.DuplicateIndex | None,
    pool: multiprocessing.pool.Pool | None,
) -> verify.VerifyReport:
    """Writes the manifest, TFDS metadata and data report, verifies the new set, and swaps it into `out`."""
    tfds_metadata.write(scratch, manifest)
    drawing = None
    if config.data_report:
        report_args = (scratch, manifest, index.sizes if index else None)
        if pool is None or fileio.is_url(scratch):
            _draw_data_report(*report_args)
        else:  # in a worker, beside the verification: matplotlib's import and the drawing take a second
            drawing = pool.apply_async(_draw_data_report, report_args)
    schema.write_manifest(scratch, manifest)
    # Checked as a reader will read it before it replaces anything.
    report = verify.verify_records(scratch, decode=config.verify is Verification.FULL)
    if drawing is not None:
        drawing.get()
    if not report.ok:
        raise ConversionError(f"the new records fail verification, nothing was replaced: {report.summary()}")
    out_dir.move_into_place(scratch, config.out)
    return report


def _draw_data_report(folder: str, manifest: schema.Manifest, sizes) -> None:
    from pipeline.converter import data_report  # matplotlib: only where it draws

    data_report.write(folder, manifest, sizes)


_OUT_HELD = "wait for it to end, or pass another --out"


def convert_folder(config: ConversionConfig) -> ConversionSummary:
    """Converts the image tree `config.src` into TFRecord shards in `config.out`.

    Raises:
      ConversionError: an `out` that is refused, fewer than two classes, a
        class without images, no decodable image, (with `strict`) a skipped
        file, or a full disk (the scratch folder is removed).
      fileio.LockedError: another process converts into `out`, or reads the records there.
      sources.SourceError: see `sources.scan_image_folder`.
      KeyboardInterrupt: passed on; the local runner's scratch folder is kept
        for --resume (its message says where), the Beam runner's removed.
    """
    started = time.perf_counter()
    pool, scratch, created_out, planned = None, None, False, None
    # Forked first, before this process touches any filesystem through
    # TensorFlow (a URL --src or --out): see `local`.
    if config.runner is Runner.LOCAL and config.num_workers > 1:
        pool = local.fork_pool(config.num_workers)
    lock = contextlib.ExitStack()
    try:
        finished_swap = False
        if fileio.isdir(config.out):
            with fileio.held(config.out, _OUT_HELD):
                finished_swap = out_dir.finish_interrupted_swap(config.out)
        # A set this run finished swapping in is replaced as the run's own.
        rules.check_out(config.src, config.out, config.overwrite or finished_swap)
        created_out = not fileio.isdir(config.out)
        fileio.makedirs(config.out)
        lock.enter_context(fileio.held(config.out, _OUT_HELD))
        planned = plan.plan_conversion(rules.checked_scan(config), config)
        scratch, kept = _open_scratch(config, planned)
        index = None
        if config.fingerprints:
            index = duplicates_lib.DuplicateIndex(drop=config.duplicates is duplicates_lib.DuplicateMode.DROP)
        written, skipped = _write_shards(config, planned, scratch, kept, pool, index)
        manifest = _manifest(config, planned, scratch, written, skipped, index)
        report = _finish(config, scratch, manifest, index, pool)
    except KeyboardInterrupt:
        if scratch is None or config.runner is Runner.BEAM or out_dir.swap_begun(scratch):
            raise  # (a swap begun ends before the Ctrl-C is let through)
        kept_for, scratch = scratch, None  # for --resume, as a killed run's
        raise KeyboardInterrupt(f"the finished shards are kept in {kept_for}: the same command with --resume "
                                "continues, one without it removes them") from None
    except Exception as e:
        if not fileio.is_disk_full(e):
            raise
        needed = planned and sum(image.size or 0 for images in planned.files.splits.values() for image in images)
        raise ConversionError(
            f"{fileio.disk_full_message(config.out, needed)} (the source images' size; "
            "the old records are untouched and the new ones removed): free some space and run again"
        ) from None
    finally:
        if pool is not None:
            pool.terminate()
        if scratch is not None:
            fileio.rmtree(scratch)
        lock.close()
        if created_out:  # a failed run leaves no empty folder
            fileio.remove_empty_folder(config.out)
    return ConversionSummary(
        out=config.out, manifest=manifest, seconds=time.perf_counter() - started, verify_seconds=report.seconds,
        verification=config.verify, duplicate_mode=config.duplicates,
    )
