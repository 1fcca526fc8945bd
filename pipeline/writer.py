"""Converts a class-folder tree of images into sharded TFRecord files.

The output folder holds, once conversion has finished::

    records/
      manifest.json                                    # schema.Manifest: the counts
      dataset_info.json, features.json, label.labels.txt  # TFDS metadata, from it
      cat_dog_small-train.tfrecord-00000-of-00004      # shards, per split
      ...

Conversion goes through three record types, one per stage: a
`sources.SourceImage` (a file found), a `imaging.StoredImage` (that file
decoded and stored as RGB JPEG, in a worker process) and the serialized
`tf.train.Example` (`schema.serialize_example`, also in the worker).

Everything is written to a scratch folder inside `out` first and renamed into
place at the end, the manifest last, so an interrupted conversion leaves no
half-written records and existing records go only once the new set is whole.
"""

from __future__ import annotations

import dataclasses
import functools
import multiprocessing
import os
import shutil
import signal
import tempfile
import time
from collections.abc import Callable, Iterator, Sequence

import tensorflow as tf
from tqdm import tqdm

from pipeline import imaging
from pipeline import out_dir
from pipeline import rules
from pipeline import schema
from pipeline import sharding
from pipeline import sources
from pipeline import verify


ConversionError = rules.ConversionError  # what convert_folder raises, defined with the rules

# A worker's answer for one image: (serialized record, None) or (None, reason).
Encoded = tuple[bytes | None, str | None]


@dataclasses.dataclass(frozen=True)
class ConversionSummary:
    """What a conversion did."""

    out: str
    manifest: schema.Manifest
    seconds: float  # in all, verification included
    verify_seconds: float = 0.0

    @property
    def skipped(self) -> tuple[dict[str, str], ...]:
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
        lines.append(f"  skipped    {len(self.skipped):>7} files")
        lines += [f"    {skip['path']}: {skip['reason']}" for skip in self.skipped]
        rate = self.num_images / self.seconds if self.seconds > 0 else float("inf")
        lines.append(
            f"  {_megabytes(self.num_bytes)} written in {self.seconds:.1f} s ({rate:.0f} images/s), "
            f"verified (checksums, counts, images, labels) in {self.verify_seconds:.1f} s"
        )
        return "\n".join(lines)


def _megabytes(num_bytes: int) -> str:
    return f"{num_bytes / 1e6:.1f} MB"


def encode_record(
    image: sources.SourceImage,
    stored_size: tuple[int, int] | None,
    max_pixels: int = imaging.DEFAULT_MAX_PIXELS,
) -> Encoded:
    """Worker task: the serialized record of one source image, or why it is skipped."""
    try:
        stored = imaging.load_for_storage(image.path, stored_size, max_pixels=max_pixels)
    except imaging.ImageDecodeError as e:
        return None, str(e)
    except OSError as e:  # unreadable file: permissions, vanished, ...
        return None, f"cannot read: {e.strerror or e}"
    return schema.serialize_example({
        schema.IMAGE_KEY: stored.encoded,
        schema.LABEL_KEY: image.label,
        schema.HEIGHT_KEY: stored.height,
        schema.WIDTH_KEY: stored.width,
        schema.FILENAME_KEY: image.relpath,
    }), None


def write_split(
    plan: sharding.SplitPlan,
    encoded: Iterator[Encoded],
    folder: str,
    class_names: Sequence[str],
    on_image: Callable[[], None] = lambda: None,
) -> tuple[schema.SplitInfo, list[dict[str, str]]]:
    """Writes the shards of one split.

    Args:
      plan: the split's images and shard names.
      encoded: `encode_record` of each of `plan.images`, in order.
      folder: where the shard files go.
      class_names: all class names, for the per-class counts.
      on_image: called after each image (progress).

    Returns:
      (the split's SplitInfo, the files skipped as {"path", "split", "reason"}).
    """
    class_counts = dict.fromkeys(class_names, 0)
    shards, skipped = [], []
    for filename, images in plan.shards():
        path = os.path.join(folder, filename)
        count = 0
        with tf.io.TFRecordWriter(path) as writer:
            for image in images:
                record, reason = next(encoded)
                on_image()
                if record is None:
                    skipped.append(sources.skip_entry(image.path, plan.name, reason))
                    continue
                writer.write(record)
                class_counts[image.class_name] += 1
                count += 1
        shards.append(schema.ShardInfo(filename, count, os.path.getsize(path)))
    return schema.SplitInfo(plan.name, tuple(shards), class_counts), skipped


def _ignore_sigint() -> None:
    """Pool initializer: Ctrl-C reaches every process of the terminal's group;
    only the main process acts on it (one line, and it ends the pool), so the
    decoders do not each print a traceback."""
    signal.signal(signal.SIGINT, signal.SIG_IGN)


def _write_splits(
    plans: Sequence[sharding.SplitPlan],
    scan: sources.FolderScan,
    scratch: str,
    encode: Callable[[Sequence[sources.SourceImage]], Iterator[Encoded]],
    strict: bool,
    show_progress: bool,
) -> tuple[dict[str, schema.SplitInfo], list[dict[str, str]]]:
    """Writes every split's shards into `scratch`.

    Returns:
      (split name -> SplitInfo, for every plan, even one whose files were
      all skipped; the skipped files: the scan's, then the decoders').
    """
    splits: dict[str, schema.SplitInfo] = {}
    skipped = list(scan.skipped)
    with tqdm(total=scan.num_files, unit="img", desc="converting", disable=not show_progress) as bar:
        for plan in plans:
            split, split_skipped = write_split(
                plan, encode(plan.images), scratch, scan.class_names, lambda: bar.update(1)
            )
            splits[split.name] = split
            skipped += split_skipped
            if strict:
                rules.check_strict(skipped)
    return splits, skipped


def convert_folder(
    src: str,
    out: str,
    *,
    classes: Sequence[str] | None = None,
    num_shards: int | None = None,
    shard_bytes: int = sharding.DEFAULT_SHARD_BYTES,
    image_size: tuple[int, int] | None = None,
    workers: int | None = None,
    seed: int = 0,
    validation_fraction: float = 0.0,
    strict: bool = False,
    overwrite: bool = False,
    follow_external_links: bool = False,
    max_file_mb: int = sources.DEFAULT_MAX_FILE_MB,
    max_pixels: int = imaging.DEFAULT_MAX_PIXELS,
    show_progress: bool = True,
) -> ConversionSummary:
    """Converts the image tree `src` into TFRecord shards in `out`.

    Args:
      src: the image folder (see `sources.scan_image_folder` for layouts).
      out: the records folder to write; not `src` nor inside it.
      classes: class names in label order; default: sorted folder names.
        At least two.
      num_shards: shards per split; default: from `shard_bytes`, at least
        sharding.DEFAULT_MIN_SHARDS when the split has that many images.
      shard_bytes: target shard size when `num_shards` is not given.
      image_size: (height, width) to store images resized to, or None to keep
        the originals.
      workers: decoding processes; default: the number of cores.
      seed: seed of the per-split shuffle (and of the validation hold-out).
      validation_fraction: see `sources.scan_image_folder`.
      strict: fail instead of skipping any file.
      overwrite: replace records (and TFDS metadata files) already in `out`.
      follow_external_links: use files that symlinks lead to outside `src`.
      max_file_mb: skip files larger than this many MiB.
      max_pixels: skip images of more pixels (checked before decoding).
      show_progress: draw a progress bar on stderr.

    Raises:
      ConversionError: bad arguments, an `out` that is refused, fewer than
        two classes, a class without images, no decodable image, or (with
        `strict`) a skipped file.
      sources.SourceError: see `sources.scan_image_folder`.
      KeyboardInterrupt: passed on, once the scratch folder is gone.
    """
    started = time.perf_counter()
    rules.check_positive(
        num_shards=num_shards,
        image_size=min(image_size) if image_size else None,
        shard_bytes=shard_bytes,
        workers=workers,
        max_file_mb=max_file_mb,
        max_pixels=max_pixels,
    )
    rules.check_out(src, out, overwrite)
    scan = rules.checked_scan(src, classes, validation_fraction, seed, strict, follow_external_links, max_file_mb)
    dataset_name = sharding.dataset_name_for(src)
    plans = [
        sharding.plan_split(name, images, dataset_name, seed, num_shards, image_size, shard_bytes)
        for name, images in scan.splits.items()
    ]
    workers = workers or os.cpu_count() or 1

    created_out = not os.path.isdir(out)
    os.makedirs(out, exist_ok=True)
    out_dir.remove_stale_scratch(out)
    # Inside `out`: the final renames stay on one filesystem, so they are atomic.
    scratch = tempfile.mkdtemp(prefix=out_dir.scratch_prefix(), dir=out)
    task = functools.partial(encode_record, stored_size=image_size, max_pixels=max_pixels)
    pool = None
    try:
        if workers > 1:  # forked before this process starts any TensorFlow runtime
            pool = multiprocessing.get_context("fork").Pool(workers, initializer=_ignore_sigint)
        written, skipped = _write_splits(
            plans,
            scan,
            scratch,
            lambda images: pool.imap(task, images, chunksize=4) if pool else map(task, images),
            strict,
            show_progress,
        )
        manifest = schema.Manifest(
            dataset_name=dataset_name,
            class_names=scan.class_names,
            splits=rules.checked_splits(written, scan.class_names, src, scratch),
            stored_size=tuple(image_size) if image_size else None,
            source=os.path.abspath(src),
            skipped=tuple(skipped),
        )
        schema.write_tfds_metadata(scratch, manifest)
        schema.write_manifest(scratch, manifest)
        # Checked as a reader will read it before it replaces anything.
        report = verify.verify_records(scratch)
        if not report.ok:
            raise ConversionError(f"the new records fail verification, nothing was replaced: {report.summary()}")
        out_dir.move_into_place(scratch, out)
    finally:
        if pool is not None:
            pool.terminate()
        shutil.rmtree(scratch, ignore_errors=True)
        if created_out and not os.listdir(out):  # a failed run leaves no empty folder
            os.rmdir(out)
    return ConversionSummary(
        out=out, manifest=manifest, seconds=time.perf_counter() - started, verify_seconds=report.seconds
    )
