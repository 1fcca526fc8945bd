"""Writes shard files: the records of a planned shard's images, encoded and written in order.

Both runners write through here, the local pool (`local`) and Apache Beam
(`beam`), so their shards are the same bytes:

    SourceImage --encode_record(image, Encoding) (a worker)--> serialized Example, or the
                         reason it is skipped; the source's fingerprint (`duplicates`)
    plan.Shard + [Encoded, ...] in planned order --ShardWriter.write--> shard file + ShardResult
                   (with `--duplicates=drop`, a copy of an earlier image is skipped)
    plan.Shard --ShardWriter.write_whole (a worker)--> the same, encoded and written there
    [ShardResult, ...] of a split --gather_split--> schema.SplitInfo + skipped files

Records are framed by `pipeline.tfrecord`, not TensorFlow: workers that write
shards never import it.
"""

from __future__ import annotations

import dataclasses
import os
import shutil
from collections.abc import Callable, Iterator, Sequence
from typing import Any

from pipeline import fileio
from pipeline import schema
from pipeline import tfrecord
from pipeline.converter import config as config_lib
from pipeline.converter import duplicates
from pipeline.converter import imaging
from pipeline.converter import plan
from pipeline.converter import sources

# A shard a worker is writing: FILENAME.PID.part, renamed to FILENAME when whole.
PART_SUFFIX = ".part"
_COPY_BYTES = 1 << 20
# A worker's answer for one image: (serialized record, None, fingerprint or
# None when not asked for) or (None, reason, None).
Encoded = tuple[bytes | None, str | None, duplicates.Fingerprint | None]


@dataclasses.dataclass(frozen=True)
class ShardResult:
    """What one finished shard holds: what its sidecar records (`resume`)."""

    split: str
    info: schema.ShardInfo
    class_counts: dict[str, int]
    skipped: tuple[schema.SkippedFile, ...]
    # (source path, fingerprint) of every image decoded, dropped copies too, in order
    fingerprints: tuple[tuple[str, duplicates.Fingerprint], ...] = ()

    def to_json(self) -> dict[str, Any]:
        return {
            "split": self.split,
            "info": dataclasses.asdict(self.info),
            "class_counts": self.class_counts,
            "skipped": [vars(skip) for skip in self.skipped],
            "fingerprints": [[path, duplicates.fingerprint_to_json(print_)] for path, print_ in self.fingerprints],
        }

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> "ShardResult":
        return cls(
            data["split"],
            schema.ShardInfo(**data["info"]),
            dict(data["class_counts"]),
            tuple(schema.SkippedFile(**skip) for skip in data["skipped"]),
            tuple((str(path), duplicates.fingerprint_from_json(print_)) for path, print_ in data["fingerprints"]),
        )


@dataclasses.dataclass(frozen=True)
class Encoding:
    """How every image is stored: what a worker needs besides the images."""

    stored_size: tuple[int, int] | None = None  # (height, width); None keeps the originals
    max_pixels: int = imaging.DEFAULT_MAX_PIXELS
    fingerprint: bool = False  # for the duplicate search

    @classmethod
    def of(cls, config: config_lib.ConversionConfig) -> "Encoding":
        return cls(config.image_size, config.max_pixels, config.fingerprints)


def encode_record(image: sources.SourceImage, encoding: Encoding) -> Encoded:
    """Worker task: the serialized record of one source image, or why it is skipped; with
    `encoding.fingerprint`, the source's `duplicates.Fingerprint` too."""
    try:
        stored = imaging.load_for_storage(
            image.path, encoding.stored_size, max_pixels=encoding.max_pixels, fingerprint=encoding.fingerprint
        )
    except imaging.ImageDecodeError as e:
        return None, str(e), None
    except OSError as e:  # unreadable file: permissions, vanished, ...
        return None, f"cannot read: {e.strerror or e}", None
    return schema.serialize_example({
        schema.IMAGE_KEY: stored.encoded,
        schema.LABEL_KEY: image.label,
        schema.HEIGHT_KEY: stored.height,
        schema.WIDTH_KEY: stored.width,
        schema.FILENAME_KEY: image.relpath,
    }), None, stored.fingerprint


def piece_name(filename: str, piece: int) -> str:
    """The file a worker writes piece `piece` of shard `filename` to (`ShardWriter.join_pieces` joins them)."""
    return f"{filename}.{piece}{PART_SUFFIX}"


@dataclasses.dataclass(frozen=True)
class ShardWriter:
    """Writes a conversion's shard files into `folder` (a local path or a URL), in a worker or in the launcher."""

    folder: str
    class_names: tuple[str, ...]
    encoding: Encoding

    def write(
        self,
        shard: plan.Shard,
        encoded: Iterator[Encoded],
        on_image: Callable[[], None] = lambda: None,
        index: duplicates.DuplicateIndex | None = None,
    ) -> ShardResult:
        """Writes `folder`/`shard.filename` from `encode_record` of each of `shard.images`.

        Args:
          encoded: yields `encode_record` of each of `shard.images`, in their order.
          on_image: called after each image (progress).
          index: the duplicate search, given every earlier shard in plan order:
            each image is added to it; one it drops (`index.drop`) is skipped.
            None: the search is left to the caller (the workers' launcher).
        """
        path = os.path.join(self.folder, shard.filename)
        class_counts = dict.fromkeys(self.class_names, 0)
        skipped, prints, count = [], [], 0
        with fileio.open_file(path, "wb") as out:
            for image in shard.images:
                record, reason, print_ = next(encoded)
                on_image()
                if print_ is not None:
                    prints.append((image.path, print_))
                    pair = index.add(image.path, shard.split, print_) if index is not None else None
                    if pair is not None and index.drop:
                        record, reason = None, duplicates.reason(pair)
                if record is None:
                    skipped.append(schema.SkippedFile(image.path, shard.split, reason))
                    continue
                out.write(tfrecord.frame(record))
                class_counts[image.class_name] += 1
                count += 1
        info = schema.ShardInfo(shard.filename, count, fileio.size(path))
        return ShardResult(shard.split, info, class_counts, tuple(skipped), tuple(prints))

    def write_whole(self, shard: plan.Shard) -> ShardResult:
        """Worker task: `write` of `shard`, each image encoded here (`encode_record`).

        The duplicate search is the caller's, from the result's fingerprints, so
        no image is dropped here.
        """
        encoded = (encode_record(image, self.encoding) for image in shard.images)
        # Written under a name of this process, then renamed: a worker left running
        # after its launcher was killed never writes into a shard a new run writes.
        part = f"{shard.filename}.{os.getpid()}{PART_SUFFIX}"
        result = self.write(dataclasses.replace(shard, filename=part), encoded)
        fileio.replace(os.path.join(self.folder, part), os.path.join(self.folder, shard.filename))
        return dataclasses.replace(result, info=dataclasses.replace(result.info, filename=shard.filename))

    def join_pieces(self, filename: str, pieces: Sequence[ShardResult]) -> ShardResult:
        """The shard `filename` from its pieces' files, in order, and their results as one.

        A TFRecord file is its records one after another, so the pieces' bytes
        appended in order are the bytes of the shard written whole.
        """
        first = os.path.join(self.folder, pieces[0].info.filename)
        with fileio.open_file(first, "ab") as out:
            for piece in pieces[1:]:
                path = os.path.join(self.folder, piece.info.filename)
                with fileio.open_file(path) as f:
                    shutil.copyfileobj(f, out, _COPY_BYTES)
                fileio.remove(path)
        fileio.replace(first, os.path.join(self.folder, filename))
        class_counts = {name: sum(piece.class_counts[name] for piece in pieces) for name in pieces[0].class_counts}
        info = schema.ShardInfo(
            filename, sum(p.info.num_examples for p in pieces), sum(p.info.num_bytes for p in pieces)
        )
        return ShardResult(
            pieces[0].split, info, class_counts, tuple(skip for p in pieces for skip in p.skipped),
            tuple(print_ for p in pieces for print_ in p.fingerprints),
        )


def gather_split(
    name: str, results: Sequence[ShardResult], class_names: Sequence[str]
) -> tuple[schema.SplitInfo, list[schema.SkippedFile]]:
    """A split's SplitInfo and skipped files, from its shards' results in order."""
    class_counts = dict.fromkeys(class_names, 0)
    skipped = []
    for result in results:
        for class_name, count in result.class_counts.items():
            class_counts[class_name] += count
        skipped += result.skipped
    return schema.SplitInfo(name, tuple(result.info for result in results), class_counts), skipped
