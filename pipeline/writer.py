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
Each finished shard gets a sidecar there, so that `--resume` can keep it
(`pipeline.resume`). `src` and `out` may be local paths or URLs
(`pipeline.storage`). The shards are written by this machine's decoding pool
(`pipeline.decoders`) or, with `runner="beam"`, by `pipeline.beam_writer`.
"""

from __future__ import annotations

import dataclasses
import enum
import functools
import os
import time
from collections.abc import Callable, Iterable, Iterator, Sequence

import tensorflow as tf
from tqdm import tqdm

from pipeline import decoders
from pipeline import imaging
from pipeline import out_dir
from pipeline import resume as resume_lib
from pipeline import rules
from pipeline import schema
from pipeline import sharding
from pipeline import sources
from pipeline import storage
from pipeline import verify


ConversionError = rules.ConversionError  # what convert_folder raises, defined with the rules

# A worker's answer for one image: (serialized record, None) or (None, reason).
Encoded = tuple[bytes | None, str | None]


class Runner(str, enum.Enum):
    """What writes the shards: this machine's decoding pool, or Apache Beam."""

    LOCAL = "local"
    BEAM = "beam"


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


def write_shard(
    split: str,
    filename: str,
    images: Sequence[sources.SourceImage],
    encoded: Iterator[Encoded],
    folder: str,
    class_names: Sequence[str],
    on_image: Callable[[], None] = lambda: None,
) -> resume_lib.ShardResult:
    """Writes one shard file, `folder`/`filename`, from `encode_record` of each of `images`."""
    path = os.path.join(folder, filename)
    class_counts = dict.fromkeys(class_names, 0)
    skipped, count = [], 0
    with tf.io.TFRecordWriter(path) as writer:
        for image in images:
            record, reason = next(encoded)
            on_image()
            if record is None:
                skipped.append(sources.skip_entry(image.path, split, reason))
                continue
            writer.write(record)
            class_counts[image.class_name] += 1
            count += 1
    info = schema.ShardInfo(filename, count, storage.size(path))
    return resume_lib.ShardResult(split, info, class_counts, tuple(skipped))


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
      folder: where the shard files go (a local path or a URL).
      class_names: all class names, for the per-class counts.
      on_image: called after each image (progress).

    Returns:
      (the split's SplitInfo, the files skipped as {"path", "split", "reason"}).
    """
    results = [
        write_shard(plan.name, filename, images, encoded, folder, class_names, on_image)
        for filename, images in plan.shards()
    ]
    return resume_lib.gather_split(plan.name, results, class_names)


def _write_splits(
    plans: Sequence[sharding.SplitPlan],
    scan: sources.FolderScan,
    scratch: str,
    encode: Callable[[Iterable[sources.SourceImage]], Iterator[Encoded]],
    strict: bool,
    show_progress: bool,
    kept: dict[str, resume_lib.ShardResult],
) -> tuple[dict[str, schema.SplitInfo], list[dict[str, str]]]:
    """Writes every split's shards into `scratch`, but those in `kept`, each with its sidecar.

    Returns:
      (split name -> SplitInfo, for every plan, even one whose files were
      all skipped; the skipped files: the scan's, then the decoders').
    """
    todo = [images for plan in plans for filename, images in plan.shards() if filename not in kept]
    encoded = encode(image for images in todo for image in images)  # one stream: no pause between shards
    splits: dict[str, schema.SplitInfo] = {}
    skipped = list(scan.skipped)
    with tqdm(total=scan.num_files, unit="img", desc="converting", disable=not show_progress) as bar:
        for plan in plans:
            results = []
            for filename, images in plan.shards():
                result = kept.get(filename)
                if result is None:
                    result = write_shard(
                        plan.name, filename, images, encoded, scratch, scan.class_names, lambda: bar.update(1)
                    )
                    resume_lib.write_result(scratch, result)  # after the shard is whole
                else:
                    bar.update(len(images))
                results.append(result)
            split, split_skipped = resume_lib.gather_split(plan.name, results, scan.class_names)
            splits[split.name] = split
            skipped += split_skipped
            if strict:
                rules.check_strict(skipped)
    return splits, skipped


def _runner(runner: str | Runner) -> Runner:
    try:
        return Runner(runner)
    except ValueError:
        raise ConversionError(
            f"--runner must be {' or '.join(r.value for r in Runner)}, got {runner!r}"
        ) from None


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
    resume: bool = False,
    runner: str | Runner = Runner.LOCAL,
    beam_options: Sequence[str] = (),
) -> ConversionSummary:
    """Converts the image tree `src` into TFRecord shards in `out`.

    Args:
      src: the image folder (see `sources.scan_image_folder` for layouts): a
        local path or a URL that tf.io.gfile reads (`gs://...`).
      out: the records folder to write, local or a URL; not `src` nor
        inside it.
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
      resume: keep the checked shards of an interrupted run with the same
        plan (`pipeline.resume`); the local runner only.
      runner: "local" (this machine's decoding pool) or "beam"
        (`pipeline.beam_writer`).
      beam_options: Beam pipeline options as `key=value` strings.

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
    runner = _runner(runner)
    if resume and runner is Runner.BEAM:
        raise ConversionError("--resume is not supported with --runner=beam (only with the local runner)")
    workers = workers or os.cpu_count() or 1
    task = functools.partial(encode_record, stored_size=image_size, max_pixels=max_pixels)
    pool, scratch, created_out = None, None, False
    # Forked first, before this process touches any filesystem through
    # TensorFlow (a URL --src or --out): see `decoders.fork_pool`.
    if runner is Runner.LOCAL and workers > 1:
        pool = decoders.fork_pool(workers)
    try:
        rules.check_out(src, out, overwrite)
        scan = rules.checked_scan(
            src, classes, validation_fraction, seed, strict, follow_external_links, max_file_mb
        )
        dataset_name = sharding.dataset_name_for(src)
        plans = [
            sharding.plan_split(name, images, dataset_name, seed, num_shards, image_size, shard_bytes)
            for name, images in scan.splits.items()
        ]
        created_out = not storage.isdir(out)
        storage.makedirs(out)
        if runner is Runner.BEAM:
            out_dir.remove_stale_scratch(out)
            scratch = out_dir.make_scratch(out)
            from pipeline import beam_writer  # heavy, optional: only when asked for

            written, skipped = beam_writer.write_splits(
                plans, scan, scratch, stored_size=image_size, max_pixels=max_pixels, workers=workers,
                options=beam_options,
            )
            if strict:
                rules.check_strict(skipped)
        else:
            settings = {
                "src": storage.absolute(src), "classes": ",".join(scan.class_names), "seed": seed,
                "num_shards": num_shards, "shard_bytes": shard_bytes, "image_size": image_size,
                "validation_fraction": validation_fraction, "follow_external_links": follow_external_links,
                "max_file_mb": max_file_mb, "max_pixels": max_pixels,
            }
            plan = resume_lib.make_plan(plans, scan.class_names, image_size, max_pixels, settings)
            scratch, kept = resume_lib.open_scratch(out, plan, resume, plans, scan.class_names, dataset_name)
            if pool is None:
                encode = functools.partial(map, task)
            else:
                encode = functools.partial(decoders.bounded_imap, pool, task, workers)
            written, skipped = _write_splits(plans, scan, scratch, encode, strict, show_progress, kept)
        manifest = schema.Manifest(
            dataset_name=dataset_name,
            class_names=scan.class_names,
            splits=rules.checked_splits(written, scan.class_names, src, scratch),
            stored_size=tuple(image_size) if image_size else None,
            source=storage.absolute(src),
            skipped=tuple(skipped),
        )
        out_dir.write_tfds_metadata(scratch, manifest)
        schema.write_manifest(scratch, manifest)
        # Checked as a reader will read it before it replaces anything.
        report = verify.verify_records(scratch)
        if not report.ok:
            raise ConversionError(f"the new records fail verification, nothing was replaced: {report.summary()}")
        out_dir.move_into_place(scratch, out)
    finally:
        if pool is not None:
            pool.terminate()
        if scratch is not None:
            storage.rmtree(scratch)
        if created_out:  # a failed run leaves no empty folder
            storage.remove_empty_folder(out)
    return ConversionSummary(
        out=out, manifest=manifest, seconds=time.perf_counter() - started, verify_seconds=report.seconds
    )
