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
per-class fraction may be held out as `validation`: of the files that will be
stored, so the scan first skips what the headers refuse (`walk.header_problems`).

`src` is a local folder or a URL (`gs://...`, any filesystem tf.io.gfile
knows). Odd local trees are listed safely: each real file counts once,
whatever links lead to it; symlinked folders are followed without looping;
what is not a regular file (FIFO, device, socket, broken link), what a link
leads to outside `src`, empty files, files over the size limit and hidden
files and folders (names starting with ".", class folders included) are not
listed but skipped, each with its reason (`FolderScan.skipped`). The walks
are in `pipeline.converter.walk`.
"""

from __future__ import annotations

import dataclasses
import os
import random
from collections.abc import Sequence

from pipeline import cli
from pipeline import fileio
from pipeline import schema
from pipeline.converter import config as config_lib
from pipeline.converter import walk

SPLIT_NAMES = ("train", "validation", "test")


class SourceError(cli.UserError, ValueError):
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


def _subfolders(path: str) -> tuple[list[str], list[str]]:
    """The names of the folders in `path`, sorted: (shown, hidden)."""
    if fileio.is_url(path):
        names = [name for name in fileio.listdir(path) if name and fileio.isdir(f"{path}/{name}")]
    else:
        names = [entry.name for entry in os.scandir(path) if entry.is_dir()]
    return sorted(n for n in names if not walk.is_hidden(n)), sorted(n for n in names if walk.is_hidden(n))


def _class_names(class_folders: list[str], classes: Sequence[str] | None, hidden: set[str]) -> tuple[str, ...]:
    """The label order: `classes`, or the class folders found; `hidden`: the hidden folders beside them."""
    if not classes:
        return tuple(class_folders)
    named_hidden = [name for name in classes if name in hidden]
    if named_hidden:
        raise SourceError(
            f"--classes names {', '.join(named_hidden)}, a hidden folder (its name starts with '.'): "
            "hidden folders are never classes (macOS and tools keep their own files in them); rename it"
        )
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


def _class_folders(src: str) -> tuple[dict[str, str], list[str], list[schema.SkippedFile]]:
    """(split name -> split folder, the class folder names, the hidden folders beside them as skips).

    Raises:
      SourceError: there is no class folder.
    """
    top, top_hidden = _subfolders(src)
    split_dirs = {name: os.path.join(src, name) for name in SPLIT_NAMES if name in top}
    # Hidden folders beside the splits are neither: only those beside class folders are listed.
    listed = {split: _subfolders(path) for split, path in split_dirs.items()} or {"train": (top, top_hidden)}
    split_dirs = split_dirs or {"train": src}
    folders = sorted({name for shown, _ in listed.values() for name in shown})
    hidden = [
        schema.SkippedFile(os.path.join(split_dirs[split], name), split, f"{walk.HIDDEN}: not a class folder")
        for split, (_, names) in listed.items() for name in names
    ]
    if not folders:
        but = f" (hidden ones are not classes: {', '.join(fileio.basename(s.path) for s in hidden)})" if hidden else ""
        raise SourceError(f"{src} has no class folders{but}")
    return split_dirs, folders, hidden


def _with_image_headers(
    images: list[SourceImage], max_pixels: int
) -> tuple[list[SourceImage], list[schema.SkippedFile]]:
    """(the images whose header reads as an image, the others skipped with the reason)."""
    problems = walk.header_problems([image.path for image in images], max_pixels)
    kept = [image for image, problem in zip(images, problems) if problem is None]
    return kept, [schema.SkippedFile(image.path, "train", problem)
                  for image, problem in zip(images, problems) if problem is not None]


def _walk_tree(
    src: str, split_dirs: dict[str, str], class_names: tuple[str, ...], config: config_lib.ConversionConfig
) -> tuple[dict[str, list[SourceImage]], list[schema.SkippedFile]]:
    """(the files of each split, the skipped entries) of the class folders of `src` (`config.src`, absolute)."""
    if fileio.is_url(src):
        tree = walk.UrlWalk(config.max_file_mb)
    else:
        tree = walk.LocalWalk(src, config.follow_external_links, config.max_file_mb)
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


def scan_image_folder(config: config_lib.ConversionConfig) -> FolderScan:
    """Lists the images of `config.src` by split and class.

    The fields of `config` it reads:
      src: the source tree, in either layout of the module docstring: a
        local folder or a URL.
      classes: class folder names in label order; default: the sorted class
        folder names found, as flow_from_directory orders them.
      validation_fraction: when `src` has no split level (or only `train/`),
        the fraction of each class held out as `validation`; SourceError
        if it is not 0 and `src` has a validation or test folder.
      seed: seed of that hold-out, which deals out only the files whose
        header reads as an image (`walk.header_problems`): a `Thumbs.db` or
        a text file named .jpg takes no place in validation.
      follow_external_links: list what symlinks lead to outside `src` too,
        instead of skipping it (a URL has no symlinks).
      max_file_mb: files larger than this many MiB are skipped.
      max_pixels: with a hold-out, images of more pixels (from the header)
        are skipped before it.

    Returns:
      The FolderScan; what is not listed is in its `skipped`, with the reason.

    Raises:
      SourceError: `src` is missing, has no class folders or no files, or
        `classes` names a folder that does not exist or is hidden.
    """
    src = config.src
    if fileio.is_url(src):
        src = fileio.absolute(src)  # no trailing "/": names are joined to it
    if not fileio.isdir(src):
        raise SourceError(f"--src {src} is not a folder")

    split_dirs, folders, hidden = _class_folders(src)
    class_names = _class_names(folders, config.classes, {fileio.basename(skip.path) for skip in hidden})

    if config.validation_fraction > 0 and list(split_dirs) != ["train"]:
        raise SourceError(f"--validation_fraction holds out part of a tree without split folders, but {src} has "
                          f"{', '.join(name + '/' for name in split_dirs)}: leave the flag out")
    splits, skipped = _walk_tree(src, split_dirs, class_names, config)
    skipped = hidden + skipped
    if config.validation_fraction > 0:
        # Only what will be stored is dealt out: a file skipped later would leave its place empty.
        train, unusable = _with_image_headers(splits["train"], config.max_pixels)
        skipped += unusable
        splits["train"], splits["validation"] = hold_out(train, config.validation_fraction, config.seed)
    # A split can be empty: no files, or a hold-out of classes with one file.
    splits = {name: files for name, files in splits.items() if files}
    if not splits:
        message = f"{src} has no files in its class folders ({', '.join(class_names)})"
        if skipped:  # say why, since no summary will
            message += f"; {len(skipped)} skipped, e.g. {skipped[0].path}: {skipped[0].reason}"
        raise SourceError(message)
    return FolderScan(class_names=class_names, splits=splits, skipped=tuple(skipped))
