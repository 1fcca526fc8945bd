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

Odd trees are listed safely: each real file counts once, whatever links lead
to it; symlinked folders are followed without looping; what is not a regular
file (FIFO, device, socket, broken link), what a link leads to outside `src`
and files over the size limit are not listed but skipped, each with its
reason (`FolderScan.skipped`).
"""

from __future__ import annotations

import dataclasses
import errno
import os
import random
import stat
from collections.abc import Sequence

SPLIT_NAMES = ("train", "validation", "test")
DEFAULT_MAX_FILE_MB = 256

# st_mode file type -> its name in a skip reason.
_FILE_TYPES = {
    stat.S_IFIFO: "fifo",
    stat.S_IFCHR: "character device",
    stat.S_IFBLK: "block device",
    stat.S_IFSOCK: "socket",
}
# A real file or folder: (st_dev, st_ino) of what a path leads to.
_RealKey = tuple[int, int]


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
    """The images of a source tree, by split, with the label order.

    Attributes:
      class_names: label index -> class name.
      splits: split name -> its images; no split is empty.
      skipped: entries of the tree that are not listed, each
        {"path", "split", "reason"}, in the order they were found.
    """

    class_names: tuple[str, ...]
    splits: dict[str, list[SourceImage]]
    skipped: tuple[dict[str, str], ...] = ()

    @property
    def num_files(self) -> int:
        return sum(len(files) for files in self.splits.values())


def skip_entry(path: str, split: str, reason: str) -> dict[str, str]:
    """One entry of a skipped list, as the summary and the manifest report it."""
    return {"path": path, "split": split, "reason": reason}


def _subfolders(path: str) -> list[str]:
    return sorted(
        entry.name
        for entry in os.scandir(path)
        if entry.is_dir() and not entry.name.startswith(".")
    )


@dataclasses.dataclass(frozen=True)
class _ClassFolder:
    """Where the walk is: the split and class every file below belongs to."""

    split: str
    label: int
    name: str


@dataclasses.dataclass(frozen=True)
class _Found:
    """A regular file reached by the walk, before duplicates are dropped."""

    image: SourceImage
    split: str
    key: _RealKey
    via_link: bool  # reached through a symlink (to the file or a folder above it)


def _real_key(info: os.stat_result) -> _RealKey:
    return info.st_dev, info.st_ino


def _stat_failure(path: str, error: OSError) -> str:
    """The skip reason for a path whose target cannot be stat'ed."""
    if error.errno == errno.ELOOP:
        return "symlink loop"
    if error.errno == errno.ENOENT and os.path.islink(path):
        return "broken symlink"
    return f"cannot read: {error.strerror or error}"


class _TreeWalk:
    """Walks the class folders of one scan, all splits, remembering what it saw.

    Files and folders are known by their real identity (st_dev, st_ino): a
    folder is walked once however many links lead to it (which also ends
    symlink loops), and a file found through several paths is listed once
    (`unique_files`). Linked folders wait until every real folder has been
    walked (`finish`), so a link never takes a folder from its own place.
    """

    def __init__(self, src: str, follow_external_links: bool, max_file_mb: int):
        self._src = os.path.abspath(src)
        self._root = os.path.realpath(src)
        self._follow_external_links = follow_external_links
        self._max_file_mb = max_file_mb
        self._walked: set[_RealKey] = set()
        self._linked: list[tuple] = []  # _walk_folder arguments of linked folders, for later
        self._found: list[_Found] = []
        self.skipped: list[dict[str, str]] = []

    def _skip(self, path: str, split: str, reason: str) -> None:
        self.skipped.append(skip_entry(path, split, reason))

    def walk_class(self, split_dir: str, where: _ClassFolder) -> None:
        """Lists the files of one class folder, `split_dir`/`where.name`."""
        path = os.path.abspath(os.path.join(split_dir, where.name))
        info = self._target(path, where.split, check_outside=True)
        if info is None:
            return
        parents = frozenset(_real_key(os.stat(p)) for p in (self._src, split_dir))
        via_link = os.path.realpath(path) != os.path.join(self._root, os.path.relpath(path, self._src))
        self._walk_folder(path, where.name, where, info, via_link, parents)

    def finish(self) -> None:
        """Walks the linked folders, once every real one has been walked."""
        while self._linked:
            self._walk_folder(*self._linked.pop(0), walk_now=True)

    def _target(self, path: str, split: str, check_outside: bool) -> os.stat_result | None:
        """stat() of what `path` leads to, or None after recording why it is skipped."""
        try:
            info = os.stat(path)  # follows links; opens nothing (a FIFO would block)
        except OSError as e:
            self._skip(path, split, _stat_failure(path, e))
            return None
        if check_outside and not self._follow_external_links:
            real = os.path.realpath(path)
            if os.path.commonpath([self._root, real]) != self._root:
                self._skip(path, split, "symlink leads outside --src")
                return None
        return info

    def _walk_folder(
        self,
        path: str,
        relpath: str,
        where: _ClassFolder,
        info: os.stat_result,
        via_link: bool,
        ancestors: frozenset[_RealKey],
        walk_now: bool = False,
    ) -> None:
        """Walks the entries of one folder (a linked one only from `finish`)."""
        if via_link and not walk_now:
            self._linked.append((path, relpath, where, info, via_link, ancestors))
            return
        key = _real_key(info)
        if key in ancestors:
            self._skip(path, where.split, "symlink loop")
            return
        if key in self._walked:
            self._skip(path, where.split, "symlink to a folder listed elsewhere")
            return
        self._walked.add(key)
        try:
            with os.scandir(path) as entries:
                names = sorted(e.name for e in entries if not e.name.startswith("."))
        except OSError as e:
            self._skip(path, where.split, f"cannot read: {e.strerror or e}")
            return
        for name in names:
            self._walk_entry(
                os.path.join(path, name), os.path.join(relpath, name), where, via_link, ancestors | {key}
            )

    def _walk_entry(
        self,
        path: str,
        relpath: str,
        where: _ClassFolder,
        via_link: bool,
        ancestors: frozenset[_RealKey],
    ) -> None:
        """Lists one entry of a folder: a file, a folder to walk, or a skip."""
        is_link = os.path.islink(path)
        info = self._target(path, where.split, check_outside=is_link)
        if info is None:
            return
        via_link = via_link or is_link
        if stat.S_ISDIR(info.st_mode):
            self._walk_folder(path, relpath, where, info, via_link, ancestors, walk_now=not is_link)
        elif not stat.S_ISREG(info.st_mode):
            kind = _FILE_TYPES.get(stat.S_IFMT(info.st_mode), "unknown type")
            self._skip(path, where.split, f"not a regular file ({kind})")
        elif info.st_size > self._max_file_mb * 2**20:
            reason = f"larger than --max_file_mb={self._max_file_mb} ({info.st_size / 2**20:.0f} MiB)"
            self._skip(path, where.split, reason)
        else:
            image = SourceImage(path, relpath, where.label, where.name)
            self._found.append(_Found(image, where.split, _real_key(info), via_link))

    def unique_files(self) -> dict[str, list[SourceImage]]:
        """The files found, by split, each real file once; the others are skipped.

        Of the paths to one file, the first reached without a symlink is kept,
        else the first: a link never takes a file away from its own class.
        """
        by_key: dict[_RealKey, list[_Found]] = {}
        for found in self._found:
            by_key.setdefault(found.key, []).append(found)
        kept = set()
        for group in by_key.values():
            first = next((f for f in group if not f.via_link), group[0])
            kept.add(id(first))
            self.skipped += [
                skip_entry(f.image.path, f.split, f"same file as {first.image.path}")
                for f in group
                if f is not first
            ]
        splits: dict[str, list[SourceImage]] = {}
        for found in self._found:
            if id(found) in kept:
                splits.setdefault(found.split, []).append(found.image)
        for images in splits.values():
            images.sort(key=lambda im: (im.label, im.relpath))
        return splits


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
    walk = _TreeWalk(src, follow_external_links, max_file_mb)
    for split, split_dir in split_dirs.items():
        for label, name in enumerate(class_names):
            if os.path.isdir(os.path.join(split_dir, name)):
                walk.walk_class(split_dir, _ClassFolder(split, label, name))
    walk.finish()
    found = walk.unique_files()
    return {split: found.get(split, []) for split in split_dirs}, walk.skipped


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
      src: the source tree, in either layout of the module docstring.
      classes: class folder names in label order; default: the sorted class
        folder names found, as flow_from_directory orders them.
      validation_fraction: when `src` has no split level (or only `train/`),
        the fraction of each class held out as `validation`. Ignored when
        `src` has a validation or test folder.
      seed: seed of that hold-out.
      follow_external_links: list what symlinks lead to outside `src` too,
        instead of skipping it.
      max_file_mb: files larger than this many MiB are skipped.

    Returns:
      The FolderScan; what is not listed is in its `skipped`, with the reason.

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

    splits, skipped = _walk_tree(src, split_dirs, class_names, follow_external_links, max_file_mb)
    if list(split_dirs) == ["train"] and validation_fraction > 0:
        splits["train"], splits["validation"] = hold_out(
            splits["train"], validation_fraction, seed
        )
    # A split can be empty: no files, or a hold-out of classes with one file.
    splits = {name: files for name, files in splits.items() if files}
    if not splits:
        message = f"{src} has no files in its class folders ({', '.join(class_names)})"
        if skipped:  # say why, since no summary will
            message += f"; {len(skipped)} skipped, e.g. {skipped[0]['path']}: {skipped[0]['reason']}"
        raise SourceError(message)
    return FolderScan(class_names=class_names, splits=splits, skipped=tuple(skipped))
