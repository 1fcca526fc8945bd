"""What a conversion refuses, checked before it writes and before it replaces.

Every refusal is a ConversionError whose message is the one line the user sees
(values out of range are refused by `ConversionConfig` itself, in `config`).
"""

from __future__ import annotations

import collections
import os
from collections.abc import Sequence

from pipeline import fileio
from pipeline import schema
from pipeline.converter import config as config_lib
from pipeline.converter import out_dir
from pipeline.converter import sources
from pipeline.converter import walk

ConversionError = config_lib.ConversionError


def check_out(src: str | None, out: str, overwrite: bool) -> None:
    """Refuses an `out` that is a file, is or is inside `src`, or holds files it would replace.

    Either may be a URL; a local path and a URL are never inside each other.
    """
    if fileio.exists(out) and not fileio.isdir(out):
        raise ConversionError(f"--out {out} is a file, not a folder")
    if src and fileio.inside(src, out):  # a missing --src is the scan's error
        where = "is --src itself" if fileio.inside(out, src) else f"is inside --src {src}"
        raise ConversionError(f"--out {out} {where}: write the records outside the image folder")
    existing = out_dir.replaced_files(out)
    if existing and not overwrite:
        more = ", ..." if len(existing) > 1 else ""
        raise ConversionError(
            f"{out} already holds {existing[0]}{more}, which a conversion into it replaces: "
            "pass --overwrite to replace them"
        )


def class_counts(splits: dict[str, list[sources.SourceImage]]) -> dict[str, dict[str, int]]:
    """split name -> class name -> images, of a scan."""
    return {
        name: dict(collections.Counter(image.class_name for image in images))
        for name, images in splits.items()
    }


def check_classes(class_names: Sequence[str], counts: dict[str, dict[str, int]]) -> None:
    """Refuses a class with no image to learn from.

    Args:
      class_names: the label order.
      counts: split name -> class name -> images. The train split is what
        a model learns from, so it is the one checked; with no train split,
        all splits together are.
    """
    if "train" in counts:
        where, totals = "train", collections.Counter(counts["train"])
    else:
        where, totals = "any split", sum(map(collections.Counter, counts.values()), collections.Counter())
    empty = [name for name in class_names if not totals[name]]
    if not empty:
        return
    others = [name for name in class_names if name not in empty]
    hint = f"; leave it out with --classes={','.join(others)}" if others else ""
    raise ConversionError(
        f"class {', '.join(empty)} has no image in {where} (its folder is empty, "
        f"or every file in it was skipped){hint}"
    )


def check_strict(skipped: Sequence[schema.SkippedFile]) -> None:
    """With --strict, any skipped file ends the conversion, but the system's hidden ones (`.DS_Store`)."""
    skipped = [skip for skip in skipped if not skip.reason.startswith(walk.HIDDEN)]
    if skipped:
        more = f" (and {len(skipped) - 1} more)" if len(skipped) > 1 else ""
        raise ConversionError(f"--strict: {skipped[0].path}: {skipped[0].reason}{more}")


def checked_scan(config: config_lib.ConversionConfig) -> sources.FolderScan:
    """`sources.scan_image_folder`, refused unless it can make a classifier's data.

    Raises:
      ConversionError: fewer than two classes, a class without files, or
        (with `config.strict`) a file the scan skipped.
    """
    scan = sources.scan_image_folder(config)
    if len(scan.class_names) < 2:
        raise ConversionError(
            f"only one class, {scan.class_names[0]}: a classifier needs two or more"
            + (" (--classes names one)" if config.classes else " class folders")
        )
    check_classes(scan.class_names, class_counts(scan.splits))
    if config.strict:
        check_strict(scan.skipped)
    return scan


def checked_splits(
    written: dict[str, schema.SplitInfo], class_names: Sequence[str], src: str, scratch: str,
    skipped: Sequence[schema.SkippedFile],
) -> dict[str, schema.SplitInfo]:
    """The written splits that hold images, once every class is known to have some.

    A split whose every file was skipped is left out, and its shards deleted.

    Raises:
      ConversionError: no image at all, or a class without images.
    """
    splits = {name: split for name, split in written.items() if split.num_examples}
    if not splits:
        example = f", e.g. {skipped[0].path}: {skipped[0].reason}" if skipped else ""
        raise ConversionError(f"no file under {src} could be converted: {len(skipped)} skipped{example}")
    check_classes(class_names, {name: split.class_counts for name, split in written.items()})
    for split in written.values():
        if split.name not in splits:
            for shard in split.shards:
                fileio.remove(os.path.join(scratch, shard.filename))
    return splits
