"""Finds the images of a class-folder tree, the layout flow_from_directory reads.

Two layouts are accepted::

    src/                            src/
      train/                          cats/
        cats/cat.0.jpg                  cat.0.jpg
        dogs/dog.0.jpg                dogs/
      validation/                       dog.0.jpg
        cats/ ...
      test/          (optional)
        cats/ ...

On the left, each split folder holds one folder per class. On the right there
is no split level: every image goes to `train`, and a deterministic,
per-class fraction may be held out as `validation`.

`src` is a local folder or a URL (`gs://...`, any filesystem tf.io.gfile
knows). Odd local trees are listed safely: each real file counts once,
whatever links lead to it; symlinked folders are followed without looping;
what is not a regular file (FIFO, device, socket, broken link), what a link
leads to outside `src` and files over the size limit are not listed but
skipped, each with its reason (`FolderScan.skipped`). The walks are in
`pipeline.converter.walk`.
"""

from __future__ import annotations

import dataclasses
import os
import random
from collections.abc import Sequence

from pipeline import fileio
from pipeline import schema
from pipeline.converter import walk

SPLIT_NAMES = ("train", "validation", "test")
DEFAULT_MAX_FILE_MB = 256



class SourceError(ValueError):
    """The source folder cannot be converted as asked."""


@dataclasses.dataclass(frozen=True)
class SourceImage:
    """One file found in a class folder."""

    path: str  # absolute path, or URL
    relpath: str  # relative to the split folder, e.g. "cats/cat.0.jpg"
    label: int
    class_name: str
    # As the scan found them; None for an image made by hand. They are what a
    # resumed conversion checks to know the file has not changed since.
    size: int | None = None
    mtime_ns: int | None = None


@dataclasses.dataclass(frozen=True)
class FolderScan:
    """The images of a source tree, by split, with the label order.

    Attributes:
      class_names: label index -> class name.
      splits: split name -> its images; no split is empty.
      skipped: entries of the tree that are not listed, in the order they
        were found.
    """

    class_names: tuple[str, ...]
    splits: dict[str, list[SourceImage]]
    skipped: tuple[schema.SkippedFile, ...] = ()

    @property
    def num_files(self) -> int:
        return sum(len(files) for files in self.splits.values())


def _subfolders(path: str) -> list[str]:
    """The folders in `path`, hidden ones left out, sorted."""
    if fileio.is_url(path):
        names = [name for name in fileio.listdir(path) if name and not name.startswith(".")]
        return sorted(name for name in names if fileio.isdir(f"{path}/{name}"))
    return sorted(
        entry.name
        for entry in os.scandir(path)
        if entry.is_dir() and not entry.name.startswith(".")
    )


def _class_names(class_folders: list[str], classes: Sequence[str] | None) -> tuple[str, ...]:
    if not classes:
        return tuple(class_folders)
    missing = [name for name in classes if name not in class_folders]
    if missing:
        raise SourceError(
            f"--classes names {', '.join(missing)} but there is no such class "
            f"folder (found: {', '.join(class_folders) or 'none'})"
        )
    if len(set(classes)) != len(classes):
        raise SourceError(f"--classes repeats a name: {','.join(classes)}")
    return tuple(classes)


def hold_out(
    images: list[SourceImage], fraction: float, seed: int
) -> tuple[list[SourceImage], list[SourceImage]]:
    """Splits off `fraction` of each class, the same way for the same seed.

    Returns:
      (kept, held_out); each class contributes round(fraction * count) files
      to held_out, and at least one when fraction > 0 and the class has two or
      more files.
    """
    kept, held = [], []
    by_class: dict[int, list[SourceImage]] = {}
    for image in images:
        by_class.setdefault(image.label, []).append(image)
    for label in sorted(by_class):
        members = sorted(by_class[label], key=lambda im: im.relpath)
        random.Random(f"{seed}-{label}").shuffle(members)
        count = round(fraction * len(members))
        if fraction > 0 and len(members) > 1:
            count = min(max(count, 1), len(members) - 1)
        held.extend(members[:count])
        kept.extend(members[count:])
    return kept, held


def _walk_tree(
    src: str,
    split_dirs: dict[str, str],
    class_names: tuple[str, ...],
    follow_external_links: bool,
    max_file_mb: int,
) -> tuple[dict[str, list[SourceImage]], list[dict[str, str]]]:
    """(the files of each split, the skipped entries) of the class folders."""
    if fileio.is_url(src):
        tree = walk.UrlWalk(max_file_mb)
    else:
        tree = walk.LocalWalk(src, follow_external_links, max_file_mb)
    for split, split_dir in split_dirs.items():
        for label, name in enumerate(class_names):
            if fileio.isdir(os.path.join(split_dir, name)):
                tree.walk_class(split_dir, walk.ClassFolder(split, label, name))
    tree.finish()
    found = tree.unique_files()
    splits = {
        split: [
            SourceImage(f.path, f.relpath, f.where.label, f.where.name, f.size, f.mtime_ns) for f in files
        ]
        for split, files in found.items()
    }
    return {split: splits.get(split, []) for split in split_dirs}, tree.skipped


def scan_image_folder(
    src: str,
    classes: Sequence[str] | None = None,
    validation_fraction: float = 0.0,
    seed: int = 0,
    *,
    follow_external_links: bool = False,
    max_file_mb: int = DEFAULT_MAX_FILE_MB,
) -> FolderScan:
    """Lists the images of `src` by split and class.

    Args:
      src: the source tree, in either layout of the module docstring: a
        local folder or a URL.
      classes: class folder names in label order; default: the sorted class
        folder names found, as flow_from_directory orders them.
      validation_fraction: when `src` has no split level (or only `train/`),
        the fraction of each class held out as `validation`; SourceError
        if it is not 0 and `src` has a validation or test folder.
      seed: seed of that hold-out.
      follow_external_links: list what symlinks lead to outside `src` too,
        instead of skipping it (a URL has no symlinks).
      max_file_mb: files larger than this many MiB are skipped.

    Returns:
      The FolderScan; what is not listed is in its `skipped`, with the reason.

    Raises:
      SourceError: `src` is missing, has no class folders or no files, or
        `classes` names a folder that does not exist.
    """
    if not src:
        raise SourceError("--src is required: the image folder to convert")
    if fileio.is_url(src):
        src = fileio.absolute(src)  # no trailing "/": names are joined to it
    if not fileio.isdir(src):
        raise SourceError(f"--src {src} is not a folder")
    if not 0.0 <= validation_fraction < 1.0:
        raise SourceError(
            f"--validation_fraction must be in [0, 1), got {validation_fraction}"
        )

    top = _subfolders(src)
    split_dirs = {name: os.path.join(src, name) for name in SPLIT_NAMES if name in top}
    if split_dirs:
        folders = sorted({c for d in split_dirs.values() for c in _subfolders(d)})
    else:
        split_dirs = {"train": src}
        folders = top
    if not folders:
        raise SourceError(f"{src} has no class folders")
    class_names = _class_names(folders, classes)

    if validation_fraction > 0 and list(split_dirs) != ["train"]:
        raise SourceError(f"--validation_fraction holds out part of a tree without split folders, but {src} has "
                          f"{', '.join(name + '/' for name in split_dirs)}: leave the flag out")
    splits, skipped = _walk_tree(src, split_dirs, class_names, follow_external_links, max_file_mb)
    if validation_fraction > 0:
        splits["train"], splits["validation"] = hold_out(
            splits["train"], validation_fraction, seed
        )
    # A split can be empty: no files, or a hold-out of classes with one file.
    splits = {name: files for name, files in splits.items() if files}
    if not splits:
        message = f"{src} has no files in its class folders ({', '.join(class_names)})"
        if skipped:  # say why, since no summary will
            message += f"; {len(skipped)} skipped, e.g. {skipped[0].path}: {skipped[0].reason}"
        raise SourceError(message)
    return FolderScan(class_names=class_names, splits=splits, skipped=tuple(skipped))
