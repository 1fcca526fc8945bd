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
"""

from __future__ import annotations

import dataclasses
import os
import random
from collections.abc import Sequence

SPLIT_NAMES = ("train", "validation", "test")


class SourceError(ValueError):
    """The source folder cannot be converted as asked."""


@dataclasses.dataclass(frozen=True)
class SourceImage:
    """One file found in a class folder."""

    path: str  # absolute path
    relpath: str  # relative to the split folder, e.g. "cats/cat.0.jpg"
    label: int
    class_name: str


@dataclasses.dataclass(frozen=True)
class FolderScan:
    """The images of a source tree, by split, with the label order."""

    class_names: tuple[str, ...]
    splits: dict[str, list[SourceImage]]

    @property
    def num_files(self) -> int:
        return sum(len(files) for files in self.splits.values())


def _subfolders(path: str) -> list[str]:
    return sorted(
        entry.name
        for entry in os.scandir(path)
        if entry.is_dir() and not entry.name.startswith(".")
    )


def _files_under(folder: str) -> list[str]:
    """All non-hidden files below `folder`, sorted, as paths relative to it."""
    found = []
    for root, dirs, files in os.walk(folder, followlinks=True):
        dirs[:] = sorted(d for d in dirs if not d.startswith("."))
        for name in files:
            if not name.startswith("."):
                found.append(os.path.relpath(os.path.join(root, name), folder))
    return sorted(found)


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


def _list_split(split_dir: str, class_names: tuple[str, ...]) -> list[SourceImage]:
    images = []
    for label, class_name in enumerate(class_names):
        class_dir = os.path.join(split_dir, class_name)
        if not os.path.isdir(class_dir):
            continue
        for rel in _files_under(class_dir):
            images.append(
                SourceImage(
                    path=os.path.abspath(os.path.join(class_dir, rel)),
                    relpath=os.path.join(class_name, rel),
                    label=label,
                    class_name=class_name,
                )
            )
    return images


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


def scan_image_folder(
    src: str,
    classes: Sequence[str] | None = None,
    validation_fraction: float = 0.0,
    seed: int = 0,
) -> FolderScan:
    """Lists the images of `src` by split and class.

    Args:
      src: the source tree, in either layout of the module docstring.
      classes: class folder names in label order; default: the sorted class
        folder names found, as flow_from_directory orders them.
      validation_fraction: when `src` has no split level (or only `train/`),
        the fraction of each class held out as `validation`. Ignored when
        `src` has a validation or test folder.
      seed: seed of that hold-out.

    Raises:
      SourceError: `src` is missing, has no class folders or no files, or
        `classes` names a folder that does not exist.
    """
    if not src:
        raise SourceError("--src is required: the image folder to convert")
    if not os.path.isdir(src):
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

    splits = {name: _list_split(d, class_names) for name, d in split_dirs.items()}
    if list(split_dirs) == ["train"] and validation_fraction > 0:
        splits["train"], splits["validation"] = hold_out(
            splits["train"], validation_fraction, seed
        )
    # A split can be empty: no files, or a hold-out of classes with one file.
    splits = {name: files for name, files in splits.items() if files}
    if not splits:
        raise SourceError(
            f"{src} has no files in its class folders ({', '.join(class_names)})"
        )
    return FolderScan(class_names=class_names, splits=splits)
