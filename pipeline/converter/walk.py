"""Walking the class folders of a source tree: what each entry is, and why some are skipped.

Two walks, one per kind of path (`fileio.is_url`):

- `LocalWalk`, with `os`: each real file counts once, whatever links lead to
  it; symlinked folders are followed without looping; what is not a regular
  file (FIFO, device, socket, broken link), what a link leads to outside
  `src` and files over the size limit are skipped, each with its reason.
- `UrlWalk`, with `tf.io.gfile`: an object store (or HDFS, ...) has no links,
  FIFOs or devices, so each entry is a file or a folder, reached once; files
  over the size limit are skipped. The entries of a folder are stat'ed by a
  few threads, since each stat is a request.

Both skip, with the reason, empty files and hidden entries (`.DS_Store`,
macOS's `._x.jpg`, `.git/`: a hidden folder is one entry, not walked), and
list the files of a class folder under the `ClassFolder` they were reached
from; `sources.scan_image_folder` turns them into `SourceImage`s.
`header_problems` reads files' headers (no pixels), for the hold-out.
"""

from __future__ import annotations

import concurrent.futures
import dataclasses
import errno
import os
import stat
from collections.abc import Sequence

from pipeline import fileio
from pipeline import schema
from pipeline.converter import imaging

# st_mode file type -> its name in a skip reason.
_FILE_TYPES = {
    stat.S_IFIFO: "fifo",
    stat.S_IFCHR: "character device",
    stat.S_IFBLK: "block device",
    stat.S_IFSOCK: "socket",
}
# A real file or folder: (st_dev, st_ino) of what a path leads to.
_RealKey = tuple[int, int]
# Stats (and header reads) of one URL folder's entries in flight at once.
_STAT_THREADS = 16
HIDDEN = "hidden (its name starts with '.')"
EMPTY = "empty file"  # the decoders' reason too: one reason, wherever it is found


def is_hidden(name: str) -> bool:
    """Whether a file or folder name is hidden: `.DS_Store`, `._x.jpg`, `.git`."""
    return name.startswith(".")


@dataclasses.dataclass(frozen=True)
class ClassFolder:
    """Where the walk is: the split and class every file below belongs to."""

    split: str
    label: int
    name: str


@dataclasses.dataclass(frozen=True)
class Found:
    """A file the walk lists."""

    path: str  # absolute path, or URL
    relpath: str  # relative to the split folder, e.g. "cats/cat.0.jpg"
    where: ClassFolder
    size: int  # bytes
    mtime_ns: int  # modification time (0 where the filesystem keeps none)


def _by_split(found: Sequence[Found]) -> dict[str, list[Found]]:
    """Files by split, each split sorted by label, then path."""
    splits: dict[str, list[Found]] = {}
    for file in found:
        splits.setdefault(file.where.split, []).append(file)
    for files in splits.values():
        files.sort(key=lambda f: (f.where.label, f.relpath))
    return splits


@dataclasses.dataclass(frozen=True)
class _Reached:
    """A regular file reached by the local walk, before duplicates are dropped."""

    file: Found
    key: _RealKey
    via_link: bool  # reached through a symlink (to the file or a folder above it)


@dataclasses.dataclass(frozen=True)
class _Folder:
    """A folder the local walk reached, to list."""

    path: str
    relpath: str  # relative to the split folder
    where: ClassFolder
    info: os.stat_result  # of what `path` leads to
    via_link: bool  # reached through a symlink (to it or to a folder above it)
    ancestors: frozenset[_RealKey]  # the folders above it: a link to one is a loop


def _real_key(info: os.stat_result) -> _RealKey:
    return info.st_dev, info.st_ino


def _stat_failure(path: str, error: OSError) -> str:
    """The skip reason for a path whose target cannot be stat'ed."""
    if error.errno == errno.ELOOP:
        return "symlink loop"
    if error.errno == errno.ENOENT and os.path.islink(path):
        return "broken symlink"
    return f"cannot read: {error.strerror or error}"


class LocalWalk:
    """Walks the class folders of one local scan, all splits, remembering what it saw.

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
        self._linked: list[_Folder] = []  # linked folders, walked last
        self._reached: list[_Reached] = []
        self.skipped: list[schema.SkippedFile] = []

    def _skip(self, path: str, split: str, reason: str) -> None:
        self.skipped.append(schema.SkippedFile(path, split, reason))

    def walk_class(self, split_dir: str, where: ClassFolder) -> None:
        """Lists the files of one class folder, `split_dir`/`where.name`."""
        path = os.path.abspath(os.path.join(split_dir, where.name))
        info = self._target(path, where.split, check_outside=True)
        if info is None:
            return
        parents = frozenset(_real_key(os.stat(p)) for p in (self._src, split_dir))
        via_link = os.path.realpath(path) != os.path.join(self._root, os.path.relpath(path, self._src))
        self._walk_folder(_Folder(path, where.name, where, info, via_link, parents))

    def finish(self) -> None:
        """Walks the linked folders, once every real one has been walked."""
        while self._linked:
            self._walk_folder(self._linked.pop(0), walk_now=True)

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

    def _walk_folder(self, folder: _Folder, walk_now: bool = False) -> None:
        """Walks the entries of one folder (a linked one only from `finish`)."""
        if folder.via_link and not walk_now:
            self._linked.append(folder)
            return
        path, where = folder.path, folder.where
        key = _real_key(folder.info)
        if key in folder.ancestors:
            self._skip(path, where.split, "symlink loop")
            return
        if key in self._walked:
            self._skip(path, where.split, "symlink to a folder listed elsewhere")
            return
        self._walked.add(key)
        try:
            with os.scandir(path) as entries:
                names = sorted(e.name for e in entries)
        except OSError as e:
            self._skip(path, where.split, f"cannot read: {e.strerror or e}")
            return
        for name in names:
            if is_hidden(name):
                self._skip(os.path.join(path, name), where.split, HIDDEN)
                continue
            self._walk_entry(
                os.path.join(path, name), os.path.join(folder.relpath, name), where, folder.via_link,
                folder.ancestors | {key},
            )

    def _walk_entry(
        self,
        path: str,
        relpath: str,
        where: ClassFolder,
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
            self._walk_folder(_Folder(path, relpath, where, info, via_link, ancestors), walk_now=not is_link)
        elif not stat.S_ISREG(info.st_mode):
            kind = _FILE_TYPES.get(stat.S_IFMT(info.st_mode), "unknown type")
            self._skip(path, where.split, f"not a regular file ({kind})")
        elif info.st_size == 0:
            self._skip(path, where.split, EMPTY)
        elif info.st_size > self._max_file_mb * 2**20:
            reason = f"larger than --max_file_mb={self._max_file_mb} ({info.st_size / 2**20:.0f} MiB)"
            self._skip(path, where.split, reason)
        else:
            file = Found(path, relpath, where, info.st_size, info.st_mtime_ns)
            self._reached.append(_Reached(file, _real_key(info), via_link))

    def unique_files(self) -> dict[str, list[Found]]:
        """The files found, by split, each real file once; the others are skipped.

        Of the paths to one file, the first reached without a symlink is kept,
        else the first: a link never takes a file away from its own class.
        """
        by_key: dict[_RealKey, list[_Reached]] = {}
        for reached in self._reached:
            by_key.setdefault(reached.key, []).append(reached)
        kept = set()
        for group in by_key.values():
            first = next((r for r in group if not r.via_link), group[0])
            kept.add(id(first))
            self.skipped += [
                schema.SkippedFile(r.file.path, r.file.where.split, f"same file as {first.file.path}")
                for r in group
                if r is not first
            ]
        return _by_split([r.file for r in self._reached if id(r) in kept])


class UrlWalk:
    """Walks class folders at a URL (`gs://`, `s3://`, `hdfs://`, ...) with tf.io.gfile."""

    def __init__(self, max_file_mb: int):
        self._max_file_mb = max_file_mb
        self._found: list[Found] = []
        self.skipped: list[schema.SkippedFile] = []

    def walk_class(self, split_dir: str, where: ClassFolder) -> None:
        """Lists the files of one class folder, `split_dir`/`where.name`."""
        self._walk_folder(f"{split_dir}/{where.name}", where.name, where)

    def finish(self) -> None:
        """Nothing waits: there are no links to follow last."""

    def _walk_folder(self, path: str, relpath: str, where: ClassFolder) -> None:
        try:
            names = sorted(name for name in fileio.listdir(path) if name)
        except OSError as e:
            self.skipped.append(schema.SkippedFile(path, where.split, f"cannot read: {e}"))
            return
        shown = [name for name in names if not is_hidden(name)]
        with concurrent.futures.ThreadPoolExecutor(max(1, min(_STAT_THREADS, len(shown)))) as threads:
            stats = dict(zip(shown, threads.map(_stat_or_error, [f"{path}/{name}" for name in shown])))
        for name in names:
            entry, info = f"{path}/{name}", stats.get(name)
            if info is None or isinstance(info, OSError):  # hidden (never stat'ed), or unreadable
                reason = HIDDEN if info is None else f"cannot read: {info}"
                self.skipped.append(schema.SkippedFile(entry, where.split, reason))
                continue
            size, mtime_ns, is_folder = info
            if is_folder:
                self._walk_folder(entry, f"{relpath}/{name}", where)
            elif size == 0:
                self.skipped.append(schema.SkippedFile(entry, where.split, EMPTY))
            elif size > self._max_file_mb * 2**20:
                reason = f"larger than --max_file_mb={self._max_file_mb} ({size / 2**20:.0f} MiB)"
                self.skipped.append(schema.SkippedFile(entry, where.split, reason))
            else:
                self._found.append(Found(entry, f"{relpath}/{name}", where, size, mtime_ns))

    def unique_files(self) -> dict[str, list[Found]]:
        """The files found, by split: each object is reached once, by one path."""
        return _by_split(self._found)


def _stat_or_error(path: str) -> tuple[int, int, bool] | OSError:
    try:
        return fileio.url_stat(path)
    except OSError as e:
        return e


def header_problems(paths: Sequence[str], max_pixels: int | None) -> list[str | None]:
    """Why each file cannot be an image, from its header alone, or None; in the order of `paths`.

    Pillow's `Image.open` reads the header, not the pixels: 0.06 ms a photo
    against 1.0-1.2 ms for the decoders' `load_for_storage` (the 2,000 real
    photos, one core, 2026-12-07). What only the full decode finds (a JPEG
    cut short after its header) is left to them.

    Args:
      paths: files the walk listed, local or at URLs (read in threads there:
        each read is a request).
      max_pixels: images of more pixels are refused; None leaves it to the decoders.
    """
    # Pillow's own pixel limit off while the threads read; ours is `max_pixels`.
    with imaging.pixel_limit(max_pixels or imaging.DEFAULT_MAX_PIXELS):
        if not paths or not fileio.is_url(paths[0]):
            return [imaging.header_problem(path, max_pixels) for path in paths]
        with concurrent.futures.ThreadPoolExecutor(min(_STAT_THREADS, len(paths))) as threads:
            return list(threads.map(lambda path: imaging.header_problem(path, max_pixels), paths))


def skip_lines(skipped: Sequence[schema.SkippedFile]) -> list[str]:
    """A line per skipped file, but one for the hidden ones (a Mac's copy has a `._x.jpg` per photo)."""
    hidden = [skip.path for skip in skipped if skip.reason.startswith(HIDDEN)]
    lines = [f"    {skip.path}: {skip.reason}" for skip in skipped if not skip.reason.startswith(HIDDEN)]
    if hidden:
        more = f" and {len(hidden) - 2} more" if len(hidden) > 2 else ""
        lines.append(f"    {len(hidden)} hidden (names starting with '.'), e.g. {', '.join(hidden[:2])}{more}")
    return lines
