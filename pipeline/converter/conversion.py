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
`runner=Runner.BEAM`, by Apache Beam (`beam`); both through `shards`.
"""

from __future__ import annotations

import contextlib
import dataclasses
import enum
import multiprocessing.pool
import os
import time
from collections.abc import Sequence
from typing import Any

from pipeline import fileio
from pipeline import schema
from pipeline import verify
from pipeline.converter import decoders
from pipeline.converter import duplicates as duplicates_lib
from pipeline.converter import imaging
from pipeline.converter import local
from pipeline.converter import out_dir
from pipeline.converter import resume as resume_lib
from pipeline.converter import rules
from pipeline.converter import sharding
from pipeline.converter import sources
from pipeline.converter import tfds_metadata
from pipeline.converter import walk

ConversionError = rules.ConversionError  # what convert_folder raises, defined with the rules


class Runner(str, enum.Enum):
    """What writes the shards: this machine's decoding pool, or Apache Beam."""

    LOCAL = "local"
    BEAM = "beam"


class Verification(str, enum.Enum):
    """What the new records are checked for before they replace anything (`pipeline.verify`)."""

    RECORDS = "records"  # checksums, counts, labels, sizes: what can go wrong after the workers' decode
    FULL = "full"  # and every image decoded again


@dataclasses.dataclass(frozen=True)
class ConversionConfig:
    """One conversion: a field per convert.py flag, of the same name and default.

    Attributes:
      src: the image folder (`sources.scan_image_folder` for the layouts): a
        local path or a URL that tf.io.gfile reads (`gs://...`).
      out: the records folder to write, local or a URL; not `src` nor inside it.
      classes: class names in label order; default: sorted folder names.
      num_shards: shards per split; default: from `shard_mb`, at least
        sharding.DEFAULT_MIN_SHARDS when the split has that many images.
      shard_mb: target shard size in MiB when `num_shards` is not given.
      image_size: (height, width) to store images resized to; None keeps the originals.
      workers: decoding processes; default: the number of cores.
      seed: seed of the per-split shuffle (and of the validation hold-out).
      validation_fraction: see `sources.scan_image_folder`.
      strict: fail instead of skipping any file.
      overwrite: replace records (and TFDS metadata files) already in `out`.
      follow_external_links: use files that symlinks lead to outside `src`.
      max_file_mb: skip files larger than this many MiB.
      max_pixels: skip images of more pixels (checked before decoding).
      resume: keep the checked shards of an interrupted run with the same
        plan (`resume`); the local runner only.
      duplicates: report the duplicate images found (`duplicates`), drop the
        later copies (the local runner only), or not look for them.
      verify: the check of the new records before the swap: `RECORDS`
        (each image was decoded by its worker already; the CRCs prove the
        bytes on disk are those it wrote), or `FULL`, every image decoded again.
      data_report: draw `data_report.png` into the records (class counts,
        image sizes, duplicate pairs); about half a second of CPU.
      runner: this machine's decoding pool, or Apache Beam (`beam`).
      beam_pipeline_options: Beam options as `key=value` strings.
      show_progress: draw a progress bar on stderr (not a flag: convert.py
        draws it when stderr is a terminal).

    Raises (on construction):
      ConversionError: a value out of range, an unknown runner or duplicate
        mode, or `resume` or `duplicates=drop` with the Beam runner.
    """

    src: str
    out: str = "records"
    classes: tuple[str, ...] | None = None
    num_shards: int | None = None
    shard_mb: float = sharding.DEFAULT_SHARD_BYTES / 2**20
    image_size: tuple[int, int] | None = None
    workers: int | None = None
    seed: int = 0
    validation_fraction: float = 0.0
    strict: bool = False
    overwrite: bool = False
    follow_external_links: bool = False
    max_file_mb: int = sources.DEFAULT_MAX_FILE_MB
    max_pixels: int = imaging.DEFAULT_MAX_PIXELS
    resume: bool = False
    duplicates: duplicates_lib.DuplicateMode = duplicates_lib.DuplicateMode.REPORT
    verify: Verification = Verification.RECORDS
    data_report: bool = True
    runner: Runner = Runner.LOCAL
    beam_pipeline_options: tuple[str, ...] = ()
    show_progress: bool = False

    # The fields that decide the records' bytes: what --resume compares.
    OUTPUT_FIELDS = (
        "src", "classes", "seed", "num_shards", "shard_mb", "image_size", "validation_fraction",
        "follow_external_links", "max_file_mb", "max_pixels", "duplicates",
    )

    def __post_init__(self):
        if not self.src:
            raise ConversionError("--src is required: the image folder to convert")
        for name in ("classes", "image_size", "beam_pipeline_options"):
            value = getattr(self, name)
            if value is not None and not isinstance(value, tuple):
                object.__setattr__(self, name, tuple(value))  # lists from flags or callers
        for name, kind in (("runner", Runner), ("duplicates", duplicates_lib.DuplicateMode), ("verify", Verification)):
            try:
                object.__setattr__(self, name, kind(getattr(self, name)))
            except ValueError:
                raise ConversionError(
                    f"--{name} must be {' or '.join(k.value for k in kind)}, got {getattr(self, name)!r}"
                ) from None
        rules.check_positive(num_shards=self.num_shards, image_size=min(self.image_size) if self.image_size else None,
                             workers=self.workers, max_file_mb=self.max_file_mb, max_pixels=self.max_pixels)
        if self.shard_mb <= 0:
            raise ConversionError(f"--shard_mb must be positive, got {self.shard_mb}")
        if not 0.0 <= self.validation_fraction < 1.0:
            raise ConversionError(f"--validation_fraction must be in [0, 1), got {self.validation_fraction}")
        if self.resume and self.runner is Runner.BEAM:
            raise ConversionError("--resume is not supported with --runner=beam (only with the local runner)")
        if self.duplicates is duplicates_lib.DuplicateMode.DROP and self.runner is Runner.BEAM:
            raise ConversionError("--duplicates=drop is not supported with --runner=beam (only with the local runner): "
                                  "--duplicates=report lists them")

    @property
    def shard_bytes(self) -> int:
        return int(self.shard_mb * 2**20)

    @property
    def num_workers(self) -> int:
        return self.workers or os.cpu_count() or 1

    def output_settings(self, class_names: Sequence[str]) -> dict[str, Any]:
        """flag name -> value of what decides the output, with the classes as found."""
        settings = {name: getattr(self, name) for name in self.OUTPUT_FIELDS}
        return dict(settings, src=fileio.absolute(self.src), classes=",".join(class_names))


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


@dataclasses.dataclass(frozen=True)
class _Scan:
    """The listing and the shard plan: what the writing needs to know."""

    files: sources.FolderScan
    plans: tuple[sharding.SplitPlan, ...]
    dataset_name: str


def _scan_and_plan(config: ConversionConfig) -> _Scan:
    """Lists `src` and plans every split's shards."""
    files = rules.checked_scan(
        config.src, config.classes, config.validation_fraction, config.seed, config.strict,
        config.follow_external_links, config.max_file_mb, config.max_pixels,
    )
    dataset_name = sharding.dataset_name_for(config.src)
    plans = tuple(
        sharding.plan_split(
            name, images, dataset_name, config.seed, config.num_shards, config.image_size, config.shard_bytes
        )
        for name, images in files.splits.items()
    )
    return _Scan(files, plans, dataset_name)


def _open_scratch(config: ConversionConfig, scan: _Scan) -> tuple[str, dict]:
    """This run's scratch folder in `out`, and the finished shards `--resume` keeps there."""
    if config.runner is Runner.BEAM:
        out_dir.remove_stale_scratch(config.out)
        return out_dir.make_scratch(config.out), {}
    plan = resume_lib.make_plan(
        scan.plans, scan.files.class_names, config.image_size, config.max_pixels, config.duplicates.value,
        config.output_settings(scan.files.class_names),
    )
    return resume_lib.open_scratch(
        config.out, plan, config.resume, scan.plans, scan.files.class_names, scan.dataset_name
    )


def _write_shards(
    config: ConversionConfig,
    scan: _Scan,
    scratch: str,
    kept: dict,
    pool: multiprocessing.pool.Pool | None,
    index: duplicates_lib.DuplicateIndex | None,
) -> tuple[dict[str, schema.SplitInfo], list[schema.SkippedFile]]:
    """Every shard not kept, written into `scratch` by the configured runner; duplicates into `index`."""
    if config.runner is Runner.BEAM:
        from pipeline.converter import beam  # heavy, optional: only when asked for

        written, skipped = beam.write_splits(
            scan.plans, scan.files, scratch, stored_size=config.image_size, max_pixels=config.max_pixels,
            workers=config.num_workers, options=config.beam_pipeline_options, index=index,
        )
        if config.strict:
            rules.check_strict(skipped)
        return written, skipped
    encoding = local.Encoding(config.image_size, config.max_pixels, fingerprint=index is not None)
    return local.write_splits(
        scan.plans, scan.files, scratch, pool, config.num_workers, encoding, config.strict, config.show_progress,
        kept, index,
    )


def _finish(
    config: ConversionConfig,
    scan: _Scan,
    scratch: str,
    written: dict[str, schema.SplitInfo],
    skipped: Sequence[schema.SkippedFile],
    index: duplicates_lib.DuplicateIndex | None,
    pool: multiprocessing.pool.Pool | None,
) -> tuple[schema.Manifest, verify.VerifyReport]:
    """Writes the manifest, TFDS metadata and data report, verifies the new set, and swaps it into `out`."""
    manifest = schema.Manifest(
        dataset_name=scan.dataset_name,
        class_names=scan.files.class_names,
        splits=rules.checked_splits(written, scan.files.class_names, config.src, scratch, skipped),
        stored_size=config.image_size,
        source=fileio.absolute(config.src),
        skipped=tuple(skipped),
        duplicates=tuple(index.pairs) if index else (),
    )
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
    return manifest, report


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
    pool, scratch, created_out, scan = None, None, False, None
    # Forked first, before this process touches any filesystem through
    # TensorFlow (a URL --src or --out): see `decoders.fork_pool`.
    if config.runner is Runner.LOCAL and config.num_workers > 1:
        pool = decoders.fork_pool(config.num_workers)
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
        scan = _scan_and_plan(config)
        scratch, kept = _open_scratch(config, scan)
        index = None
        if config.duplicates is not duplicates_lib.DuplicateMode.OFF:
            index = duplicates_lib.DuplicateIndex(drop=config.duplicates is duplicates_lib.DuplicateMode.DROP)
        written, skipped = _write_shards(config, scan, scratch, kept, pool, index)
        manifest, report = _finish(config, scan, scratch, written, skipped, index, pool)
    except KeyboardInterrupt:
        if scratch is None or config.runner is Runner.BEAM or out_dir.swap_begun(scratch):
            raise  # (a swap begun ends before the Ctrl-C is let through)
        kept_for, scratch = scratch, None  # for --resume, as a killed run's
        raise KeyboardInterrupt(f"the finished shards are kept in {kept_for}: the same command with --resume "
                                "continues, one without it removes them") from None
    except Exception as e:
        if not fileio.is_disk_full(e):
            raise
        needed = scan and sum(image.size or 0 for images in scan.files.splits.values() for image in images)
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
