"""Every file operation of the project, on a local path or a URL: one place picks the API.

A path with a scheme (`gs://`, `s3://`, `hdfs://`, `ram://`, ...) goes through
`tf.io.gfile`; a local path goes through `os`, because the converter's local
guarantees depend on it: links, inodes and FIFOs are told apart by `os.stat`,
and the final swap is `os.replace` (atomic) inside one filesystem. JSON files
(manifest, run state, results) are written all or nothing: to a
temporary name, then renamed over the old file.

TensorFlow is imported only when it is used, so the converter's decoding
workers stay free of it for local files.
"""

from __future__ import annotations

import contextlib
import errno
import fcntl
import json
import math
import os
import re
import shutil
import socket
import sys
import tempfile
import uuid
from collections.abc import Callable, Iterator
from typing import Any, BinaryIO, TypeVar

from pipeline import cli

T = TypeVar("T")

# RFC 3986 scheme, then "://": "gs://b/x" is a URL, "/data/x" and "C:\\x" are not.
_URL = re.compile(r"^[A-Za-z][A-Za-z0-9+.-]*://")


def is_url(path: str) -> bool:
    """Whether `path` names a filesystem by its scheme (`gs://...`), not a local path."""
    return bool(_URL.match(os.fspath(path)))


def _gfile():
    import tensorflow as tf  # only when used: see the module docstring

    return tf.io.gfile


class _NotRaised(Exception):
    """What `_op_error` names when TensorFlow is not loaded: nothing raises it."""


def _op_error() -> type[Exception]:
    """TensorFlow's OpError, to catch; TensorFlow is not imported for it (gfile's callers load it)."""
    tf = sys.modules.get("tensorflow")
    return tf.errors.OpError if tf is not None else _NotRaised


def absolute(path: str) -> str:
    """A local path made absolute; a URL as given, without a trailing "/"."""
    if is_url(path):
        stripped = path.rstrip("/")
        return stripped if "://" in stripped else path
    return os.path.abspath(path)


def basename(path: str) -> str:
    """The last name of `path` (of a URL too), ignoring a trailing "/"."""
    if is_url(path):
        return absolute(path).rsplit("/", 1)[-1]
    return os.path.basename(os.path.normpath(os.path.abspath(path)))


def inside(folder: str, path: str) -> bool:
    """Whether `path` is `folder` or inside it (links resolved for local paths)."""
    if is_url(folder) != is_url(path):
        return False  # another filesystem
    if is_url(folder):
        folder, path = absolute(folder), absolute(path)
        return path == folder or path.startswith(folder + "/")
    folder, path = os.path.realpath(folder), os.path.realpath(path)
    return os.path.commonpath([folder, path]) == folder


def exists(path: str) -> bool:
    return _gfile().exists(path) if is_url(path) else os.path.exists(path)


def isdir(path: str) -> bool:
    return _gfile().isdir(path) if is_url(path) else os.path.isdir(path)


def makedirs(path: str) -> None:
    if is_url(path):
        _gfile().makedirs(path)
    else:
        os.makedirs(path, exist_ok=True)


def listdir(path: str) -> list[str]:
    """The names in a folder (a URL store's "sub/" entries without their "/").

    Raises:
      OSError: it cannot be listed.
    """
    if not is_url(path):
        return os.listdir(path)
    try:
        return [name.rstrip("/") for name in _gfile().listdir(path)]
    except _op_error() as e:
        raise OSError(e.message) from None


def url_stat(path: str) -> tuple[int, int, bool]:
    """(size in bytes, modification time in ns, is a folder) of a path at a URL.

    Raises:
      OSError: it cannot be read (TensorFlow's error, as an OSError).
    """
    try:
        info = _gfile().stat(path)
    except _op_error() as e:
        raise OSError(e.message) from None
    return info.length, info.mtime_nsec, info.is_directory


def size(path: str) -> int:
    """A file's size in bytes."""
    return _gfile().stat(path).length if is_url(path) else os.path.getsize(path)


def remove(path: str) -> None:
    if is_url(path):
        _gfile().remove(path)
    else:
        os.remove(path)


def rmtree(path: str) -> None:
    """Removes a folder and everything in it; nothing if it is gone already."""
    if not is_url(path):
        shutil.rmtree(path, ignore_errors=True)
        return
    try:
        _gfile().rmtree(path)
    except _op_error():  # already gone, or partly: the rest is left as it is
        pass


def remove_empty_folder(path: str) -> None:
    """Removes `path` if it is a folder with nothing in it."""
    if isdir(path) and not listdir(path):
        if is_url(path):
            rmtree(path)
        else:
            os.rmdir(path)


def replace(src: str, dst: str) -> None:
    """Renames a file over `dst`: atomic for a local path (`os.replace`); on a
    URL store `tf.io.gfile.rename`, which on GCS or S3 is a copy and a delete."""
    if is_url(src):
        _gfile().rename(src, dst, overwrite=True)
    else:
        os.replace(src, dst)


def new_folder(parent: str, prefix: str) -> str:
    """A new, empty folder in `parent` whose name starts with `prefix`."""
    if not is_url(parent):
        return tempfile.mkdtemp(prefix=prefix, dir=parent)
    while True:
        path = f"{absolute(parent)}/{prefix}{uuid.uuid4().hex[:8]}"
        if not exists(path):  # 32 random bits: a clash is only guarded against
            makedirs(path)
            return path


def open_file(path: str, mode: str = "rb") -> BinaryIO:
    """A file opened for binary reading ("rb") or writing ("wb"): with `open` for
    a local path, through `tf.io.gfile` for a URL."""
    return _gfile().GFile(path, mode) if is_url(path) else open(path, mode)  # noqa: SIM115 - the caller closes


def read_bytes(path: str) -> bytes:
    """All bytes of a file, local or at a URL.

    Raises:
      OSError: it cannot be read (for a URL, TensorFlow's error as an OSError).
    """
    if not is_url(path):
        with open(path, "rb") as f:
            return f.read()
    try:
        with _gfile().GFile(path, "rb") as f:
            return f.read()
    except _op_error() as e:
        raise OSError(e.message) from None


def walk_url(folder: str) -> Iterator[tuple[str, list[str], list[str]]]:
    """`os.walk` of a folder at a URL: (folder, subfolder names, file names), without trailing \"/\"."""
    for parent, folders, files in _gfile().walk(folder):
        yield parent.rstrip("/"), [f.rstrip("/") for f in folders], files


def copy(src: str, dst: str) -> None:
    """Copies a file over `dst`, either of them local or a URL."""
    _gfile().copy(src, dst, overwrite=True)


def normalize_json(value: Any) -> Any:
    """`value` as it reads back from JSON: tuples become lists, and NaN or
    infinity (which JSON lacks) null."""
    if isinstance(value, float) and not math.isfinite(value):
        return None
    if isinstance(value, dict):
        return {k: normalize_json(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [normalize_json(v) for v in value]
    return value


def write_json(path: str, data: Any, indent: int | None = 2) -> str:
    """Writes `data` as JSON, all or nothing (`write_text`); non-finite floats
    are written as null. `indent=None` writes it compact, with json's C
    encoder (many times faster). Returns `path`."""
    try:
        text = json.dumps(data, indent=indent, allow_nan=False)
    except ValueError:  # a NaN or an infinity: walk the data only then
        text = json.dumps(normalize_json(data), indent=indent, allow_nan=False)
    return write_text(path, text + "\n")


def write_text(path: str, text: str) -> str:
    """Writes `text` to `path`, all or nothing; returns `path`.

    The text goes to `path + ".tmp"` first and is renamed over `path`: a
    reader (or a run killed half-way) sees the old file or the new one, never
    a part.
    """
    folder = os.path.dirname(path)
    if folder:
        makedirs(folder)
    tmp = path + ".tmp"
    try:
        if is_url(path):
            with _gfile().GFile(tmp, "w") as f:
                f.write(text)
            _gfile().rename(tmp, path, overwrite=True)
        else:
            with open(tmp, "w", encoding="utf-8") as f:
                f.write(text)
            os.replace(tmp, path)
    except BaseException:
        if exists(tmp):  # a full disk, `path` a folder, Ctrl-C: no part left behind
            remove(tmp)
        raise
    return path


def read_json(path: str) -> Any:
    """The parsed contents of a JSON file."""
    if is_url(path):
        with _gfile().GFile(path, "r") as f:
            return json.load(f)
    with open(path, encoding="utf-8") as f:
        return json.load(f)


class DamagedFileError(cli.UserError, ValueError):
    """A file a run keeps its state in does not read: the message names it and the way out."""


def read_state(path: str, check: Callable[[Any], T], remedy: str) -> T:
    """`check` of the parsed JSON file `path`: what it holds, checked.

    Args:
      check: returns the checked contents; raises KeyError or TypeError when
        they are not what the file must hold, or ValueError saying what is wrong.
      remedy: what the user can do, ending the error line.

    Raises:
      DamagedFileError: the file is not JSON, not text, unreadable, or fails
        `check`; one line naming `path`, the problem and `remedy`.
    """
    try:
        return check(read_json(path))
    except json.JSONDecodeError as e:
        problem = f"not valid JSON ({e})"
    except UnicodeDecodeError as e:
        problem = f"not UTF-8 text (byte {e.start})"
    except OSError as e:
        problem = f"cannot read it ({e.strerror or e})"
    except (KeyError, TypeError) as e:
        problem = f"it does not hold what it should ({type(e).__name__}: {e})"
    except ValueError as e:  # `check`'s own words
        problem = str(e)
    except _op_error() as e:  # a URL's
        problem = f"cannot read it ({e.message})"
    raise DamagedFileError(f"{path} is damaged: {problem}: {remedy}")


class LockedError(cli.UserError, ValueError):
    """A folder is held by another process: the message names it (program, PID and host)."""


@contextlib.contextmanager
def held(folder: str, remedy: str, shared: bool = False) -> Iterator[None]:
    """Holds the local folder `folder` for this process while the block runs.

    The lock is `flock` on the folder itself: no file is made, and the kernel
    releases it when the process ends, however it ends, so a killed holder's
    folder is free at once. A writer (a conversion into it, a training run in
    its model_dir) holds it exclusively; readers of records (`shared`) hold it
    together, and keep writers out while they read. A URL folder is not
    locked: object stores have no lock (BUILD.md, failures).

    Args:
      remedy: what the refused run can do, ending its line.
      shared: a reader's hold, which other readers share.

    Raises:
      LockedError: another process holds it in a way that excludes this
        hold; the line names that process's program, PID and host.
    """
    if is_url(folder):
        yield
        return
    fd = os.open(folder, os.O_RDONLY | os.O_DIRECTORY)
    try:
        try:
            fcntl.flock(fd, (fcntl.LOCK_SH if shared else fcntl.LOCK_EX) | fcntl.LOCK_NB)
        except BlockingIOError:
            raise LockedError(f"{folder} is in use by {_holders(os.fstat(fd))}: {remedy}") from None
        yield
    finally:
        os.close(fd)  # and with it the lock


def _holders(st: os.stat_result) -> str:
    """Who holds a flock on the file of `st`, e.g. "train.py (PID 12) on host h", from /proc/locks (Linux)."""
    where = f"{os.major(st.st_dev):02x}:{os.minor(st.st_dev):02x}:{st.st_ino}"
    pids = []
    with contextlib.suppress(OSError):
        with open("/proc/locks") as f:
            for line in f:
                fields = line.split()
                if "FLOCK" in fields and where in fields:
                    pids.append(int(fields[fields.index(where) - 1]))
    who = ", ".join(f"{_program(pid)} (PID {pid})" for pid in dict.fromkeys(pids)) or "another process"
    return f"{who} on host {socket.gethostname()}"


def _program(pid: int) -> str:
    """The script or module a process runs (`train.py`, `pytest`), from its command line; "a process" if unknown."""
    try:
        with open(f"/proc/{pid}/cmdline", "rb") as f:
            argv = [arg.decode(errors="replace") for arg in f.read().split(b"\0") if arg]
    except OSError:
        return "a process"
    for i, arg in enumerate(argv):
        if arg.endswith(".py"):
            return os.path.basename(arg)
        if arg == "-m" and i + 1 < len(argv):
            return argv[i + 1]
    if len(argv) > 1 and "python" in os.path.basename(argv[0]) and not argv[1].startswith("-"):
        return os.path.basename(argv[1])  # a console script, e.g. tfr-train
    return os.path.basename(argv[0]) if argv else "a process"


_FULL = (errno.ENOSPC, errno.EDQUOT, errno.EFBIG)


def is_disk_full(error: BaseException) -> bool:
    """Whether `error` says a write found no room: ENOSPC, a quota, a file size
    limit, or TensorFlow's ResourceExhaustedError for the same."""
    if isinstance(error, OSError):
        return error.errno in _FULL
    tf = sys.modules.get("tensorflow")  # only its own errors are left to tell: none if it is not loaded
    return tf is not None and isinstance(error, tf.errors.ResourceExhaustedError) and any(
        words in str(error) for words in ("No space left", "quota", "File too large")
    )


def disk_full_message(folder: str, needed_bytes: int | None = None) -> str:
    """One line: where the disk filled, what it needed and what is free."""
    needed = f", about {needed_bytes / 1e6:,.1f} MB were needed" if needed_bytes else ""
    free = ""
    if not is_url(folder):
        with contextlib.suppress(OSError):
            free = f", {shutil.disk_usage(folder).free / 1e6:,.1f} MB are free"
    return f"no space left writing to {folder}{needed}{free}"


def walk(folder: str) -> Iterator[tuple[str, list[str], list[str]]]:
    """`os.walk` (links followed) or, at a URL, `tf.io.gfile.walk`: subfolders removed from the list are pruned."""
    return _gfile().walk(folder) if is_url(folder) else os.walk(folder, followlinks=True)
