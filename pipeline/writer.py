"""Converts a class-folder tree of images into sharded TFRecord files.

The output folder holds, once conversion has finished::

    records/
      manifest.json                                    # schema.Manifest
      dataset_info.json, features.json                 # TFDS metadata
      cat_dog_small-train.tfrecord-00000-of-00004      # shards, per split
      ...

Everything is written to a scratch folder beside `out` first and moved into
place at the end, so an interrupted conversion leaves no half-written records.
"""

from __future__ import annotations

import dataclasses
import functools
import math
import multiprocessing
import os
import random
import re
import shutil
import tempfile
import time
from collections.abc import Iterator, Sequence

import tensorflow as tf
from tqdm import tqdm

from pipeline import imaging
from pipeline import schema
from pipeline import sources

DEFAULT_SHARD_BYTES = 100 * 1024 * 1024
# Several shards per split even when small: they are read in parallel.
DEFAULT_MIN_SHARDS = 4
# Bytes per pixel of a 95-quality JPEG of a photo, to plan resized shards.
_JPEG_BYTES_PER_PIXEL = 0.5
# What tfds.folder_dataset.write_metadata writes beside the shards.
_TFDS_METADATA_FILES = ("dataset_info.json", "features.json", f"{schema.LABEL_KEY}.labels.txt")


class ConversionError(ValueError):
    """The conversion cannot be done as asked; the message says why."""


@dataclasses.dataclass(frozen=True)
class ConversionSummary:
    """What a conversion did."""

    out: str
    manifest: schema.Manifest
    skipped: list[dict[str, str]]
    seconds: float

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
        for skip in self.skipped:
            lines.append(f"    {skip['path']}: {skip['reason']}")
        rate = self.num_images / self.seconds if self.seconds > 0 else float("inf")
        lines.append(
            f"  {_megabytes(self.num_bytes)} written in {self.seconds:.1f} s "
            f"({rate:.0f} images/s)"
        )
        return "\n".join(lines)


def _megabytes(num_bytes: int) -> str:
    return f"{num_bytes / 1e6:.1f} MB"


def dataset_name_for(src: str) -> str:
    """A TFDS-valid snake_case name from the source folder's name."""
    base = os.path.basename(os.path.normpath(os.path.abspath(src))).lower()
    name = re.sub(r"[^a-z0-9]+", "_", base).strip("_")
    if not name or not name[0].isalpha():
        name = f"images_{name}".rstrip("_")
    return name


def shard_filename(dataset_name: str, split: str, index: int, count: int) -> str:
    """The TFDS default naming: `{dataset}-{split}.tfrecord-00000-of-00004`."""
    return f"{dataset_name}-{split}.{schema.FILE_FORMAT}-{index:05d}-of-{count:05d}"


def plan_num_shards(
    images: Sequence[sources.SourceImage],
    stored_size: tuple[int, int] | None,
    shard_bytes: int = DEFAULT_SHARD_BYTES,
) -> int:
    """Enough shards to keep each under `shard_bytes`, and several if possible."""
    if stored_size is None:
        estimate = sum(os.path.getsize(image.path) for image in images)
    else:
        estimate = len(images) * stored_size[0] * stored_size[1] * _JPEG_BYTES_PER_PIXEL
    by_size = math.ceil(estimate / shard_bytes)
    return max(1, by_size, min(DEFAULT_MIN_SHARDS, len(images)))


def _existing_records(out: str) -> list[str]:
    if not os.path.isdir(out):
        return []
    return sorted(
        name
        for name in os.listdir(out)
        if name == schema.MANIFEST_FILENAME or f".{schema.FILE_FORMAT}-" in name
    )


def _load(path: str, stored_size, jpeg_quality):
    """Worker task: (StoredImage, None) or (None, reason)."""
    try:
        return imaging.load_for_storage(path, stored_size, jpeg_quality), None
    except imaging.ImageDecodeError as e:
        return None, str(e)
    except OSError as e:  # unreadable file: permissions, vanished, ...
        return None, f"cannot read: {e.strerror or e}"


def _decoded(
    paths: list[str],
    pool: multiprocessing.pool.Pool | None,
    stored_size: tuple[int, int] | None,
    jpeg_quality: int,
) -> Iterator:
    """Decodes `paths` in order, in the pool's processes when there is one."""
    task = functools.partial(_load, stored_size=stored_size, jpeg_quality=jpeg_quality)
    if pool is None:
        return map(task, paths)
    return pool.imap(task, paths, chunksize=4)


def _write_split(
    split: str,
    images: list[sources.SourceImage],
    num_shards: int,
    dataset_name: str,
    scratch: str,
    pool,
    stored_size,
    jpeg_quality: int,
    class_names: Sequence[str],
    progress: tqdm,
    skipped: list[dict[str, str]],
) -> schema.SplitInfo:
    """Writes the (already shuffled) images of one split as contiguous shards."""
    bounds = [len(images) * i // num_shards for i in range(num_shards + 1)]
    results = _decoded([im.path for im in images], pool, stored_size, jpeg_quality)
    class_counts = {name: 0 for name in class_names}
    shards = []
    for index in range(num_shards):
        filename = shard_filename(dataset_name, split, index, num_shards)
        path = os.path.join(scratch, filename)
        count = 0
        with tf.io.TFRecordWriter(path) as writer:
            for image in images[bounds[index] : bounds[index + 1]]:
                stored, reason = next(results)
                progress.update(1)
                if stored is None:
                    skipped.append({"path": image.path, "split": split, "reason": reason})
                    continue
                writer.write(
                    schema.serialize_example(
                        schema.ImageRecord(
                            encoded=stored.encoded,
                            label=image.label,
                            class_name=image.class_name,
                            height=stored.height,
                            width=stored.width,
                            image_format=stored.image_format,
                            filename=image.relpath,
                        )
                    )
                )
                class_counts[image.class_name] += 1
                count += 1
        shards.append(
            schema.ShardInfo(filename=filename, num_examples=count, num_bytes=os.path.getsize(path))
        )
    return schema.SplitInfo(name=split, shards=tuple(shards), class_counts=class_counts)


def write_tfds_metadata(records_dir: str, manifest: schema.Manifest) -> None:
    """Writes dataset_info.json and features.json for tfds.builder_from_directory."""
    import numpy as np
    import tensorflow_datasets as tfds  # heavy; only the converter needs it

    if manifest.stored_size is None:
        image_shape = (None, None, 3)
    else:
        image_shape = (*manifest.stored_size, 3)
    text = tfds.features.Text()
    features = tfds.features.FeaturesDict(
        {
            schema.IMAGE_KEY: tfds.features.Image(shape=image_shape, encoding_format="jpeg"),
            schema.LABEL_KEY: tfds.features.ClassLabel(names=list(manifest.class_names)),
            schema.CLASS_NAME_KEY: text,
            schema.HEIGHT_KEY: tfds.features.Scalar(dtype=np.int64),
            schema.WIDTH_KEY: tfds.features.Scalar(dtype=np.int64),
            schema.FORMAT_KEY: text,
            schema.FILENAME_KEY: text,
        }
    )
    split_infos = [
        tfds.core.SplitInfo(
            name=name,
            shard_lengths=[shard.num_examples for shard in split.shards],
            num_bytes=split.num_bytes,
        )
        for name, split in manifest.splits.items()
    ]
    tfds.folder_dataset.write_metadata(
        data_dir=records_dir,
        features=features,
        split_infos=split_infos,
        check_data=False,
        description=f"Images converted from {manifest.source} by convert.py.",
    )


def _move_into_place(scratch: str, out: str) -> None:
    """Replaces earlier records in `out` with the finished files of `scratch`."""
    os.makedirs(out, exist_ok=True)
    for name in _existing_records(out) + list(_TFDS_METADATA_FILES):
        path = os.path.join(out, name)
        if os.path.exists(path):
            os.remove(path)
    # Shards first and the manifest last: a folder with a manifest is complete.
    names = sorted(os.listdir(scratch), key=lambda n: n == schema.MANIFEST_FILENAME)
    for name in names:
        os.replace(os.path.join(scratch, name), os.path.join(out, name))


def convert_folder(
    src: str,
    out: str,
    *,
    classes: Sequence[str] | None = None,
    num_shards: int | None = None,
    shard_bytes: int = DEFAULT_SHARD_BYTES,
    image_size: tuple[int, int] | None = None,
    jpeg_quality: int = imaging.DEFAULT_JPEG_QUALITY,
    workers: int | None = None,
    seed: int = 0,
    validation_fraction: float = 0.0,
    strict: bool = False,
    overwrite: bool = False,
    show_progress: bool = True,
) -> ConversionSummary:
    """Converts the image tree `src` into TFRecord shards in `out`.

    Args:
      src: the image folder (see `sources.scan_image_folder` for layouts).
      out: the records folder to write.
      classes: class names in label order; default: sorted folder names.
      num_shards: shards per split; default: from `shard_bytes`, at least
        DEFAULT_MIN_SHARDS when the split has that many images.
      shard_bytes: target shard size when `num_shards` is not given.
      image_size: (height, width) to store images resized to, or None to keep
        the originals.
      jpeg_quality: quality of the JPEGs the converter encodes.
      workers: decoding processes; default: the number of cores.
      seed: seed of the per-split shuffle (and of the validation hold-out).
      validation_fraction: see `sources.scan_image_folder`.
      strict: fail instead of skipping files that do not decode.
      overwrite: replace records already in `out`.
      show_progress: draw a progress bar on stderr.

    Raises:
      ConversionError: bad arguments, existing records, no decodable image,
        or (with `strict`) a file that does not decode.
      sources.SourceError: see `sources.scan_image_folder`.
    """
    started = time.perf_counter()
    if num_shards is not None and num_shards < 1:
        raise ConversionError(f"--num_shards must be at least 1, got {num_shards}")
    if image_size is not None and min(image_size) < 1:
        raise ConversionError(f"--image_size must be positive, got {image_size}")
    if os.path.exists(out) and not os.path.isdir(out):
        raise ConversionError(f"--out {out} is a file, not a folder")
    existing = _existing_records(out)
    if existing and not overwrite:
        raise ConversionError(
            f"{out} already holds records ({existing[0]}, ...): pass --overwrite to replace them"
        )
    scan = sources.scan_image_folder(src, classes, validation_fraction, seed)
    dataset_name = dataset_name_for(src)
    workers = workers or os.cpu_count() or 1

    parent = os.path.dirname(os.path.abspath(out))
    os.makedirs(parent, exist_ok=True)
    scratch = tempfile.mkdtemp(prefix=f".{os.path.basename(os.path.abspath(out))}-partial-", dir=parent)
    skipped: list[dict[str, str]] = []
    splits: dict[str, schema.SplitInfo] = {}
    # Fork the decoders before this process starts any TensorFlow runtime.
    pool = multiprocessing.get_context("fork").Pool(workers) if workers > 1 else None
    try:
        with tqdm(
            total=scan.num_files, unit="img", desc="converting", disable=not show_progress
        ) as progress:
            for split, images in scan.splits.items():
                images = list(images)
                random.Random(f"{seed}-{split}").shuffle(images)
                count = num_shards or plan_num_shards(images, image_size, shard_bytes)
                count = min(count, len(images))
                splits[split] = _write_split(
                    split, images, count, dataset_name, scratch, pool, image_size,
                    jpeg_quality, scan.class_names, progress, skipped,
                )
                if strict and skipped:
                    first = skipped[0]
                    raise ConversionError(
                        f"--strict: {first['path']}: {first['reason']}"
                        + (f" (and {len(skipped) - 1} more)" if len(skipped) > 1 else "")
                    )
        for split in [s for s in splits.values() if not s.num_examples]:
            del splits[split.name]  # every file of it was skipped
            for shard in split.shards:
                os.remove(os.path.join(scratch, shard.filename))
        if not splits:
            raise ConversionError(f"no file under {src} decodes as an image")
        manifest = schema.Manifest(
            dataset_name=dataset_name,
            class_names=scan.class_names,
            splits=splits,
            stored_size=tuple(image_size) if image_size else None,
            jpeg_quality=jpeg_quality,
            source=os.path.abspath(src),
            skipped=tuple(skipped),
        )
        write_tfds_metadata(scratch, manifest)
        schema.write_manifest(scratch, manifest)
        _move_into_place(scratch, out)
    finally:
        if pool is not None:
            pool.terminate()
        shutil.rmtree(scratch, ignore_errors=True)
    return ConversionSummary(
        out=out, manifest=manifest, skipped=skipped, seconds=time.perf_counter() - started
    )
