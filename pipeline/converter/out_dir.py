"""The records folder a conversion replaces: scratch folders and the final swap.

A conversion writes its new set into a scratch folder inside `out` (so that
the final renames stay on one filesystem and, on a local disk, are atomic),
then swaps it in: the old manifest goes first, the new one comes last, so a
folder with a manifest is always whole. A conversion killed before the swap
leaves only its scratch folder, which the next conversion into the same `out`
removes, or resumes (`pipeline.converter.resume`); one killed during the swap leaves
`out` without a manifest, which readers refuse, and the next conversion into
`out` finishes that swap first (the set was complete and verified: the
scratch folder's `.swap.json` lists it).

`out` may be a URL (`fileio.is_url`): there every rename is
`tf.io.gfile.rename`, on GCS and S3 a copy and a delete per file, so the swap
is not atomic, only ordered: the manifest is still removed first and written
last, and readers take the shards from it, never a half set.
"""

from __future__ import annotations

import contextlib
import os
import re
import signal
import socket
import sys
import tempfile
import threading
from collections.abc import Iterator

from pipeline import fileio
from pipeline import schema
from pipeline.converter import tfds_metadata

DATA_REPORT_FILENAME = "data_report.png"  # `data_report`: class counts, image sizes, duplicates
SCRATCH_PREFIX = ".convert-partial-"
_SWAP_FILENAME = ".swap.json"  # in a scratch folder whose swap has begun: the new set's file names


def replaced_files(out: str) -> list[str]:
    """The files in `out` a conversion writes or removes: records, manifest, TFDS metadata, data report."""
    if not fileio.isdir(out):
        return []
    return sorted(
        name
        for name in fileio.listdir(out)
        if name in (schema.MANIFEST_FILENAME, *tfds_metadata.FILES, DATA_REPORT_FILENAME) or f".{schema.FILE_FORMAT}-" in name
    )


def scratch_prefix() -> str:
    """This run's scratch folder name, up to mkdtemp's random part."""
    return f"{SCRATCH_PREFIX}{socket.gethostname()}-{os.getpid()}-"


def is_stale_scratch(name: str) -> bool:
    """Whether `name` is the scratch folder of a conversion that has ended.

    The owner is known by the host and PID in the name, not by a lock: the
    name exists from the folder's first instant (a lock taken after mkdtemp
    leaves a window), and no lock fd has to be kept from the forked decoders.
    A folder whose PID runs is kept (a reused PID delays a removal, it never
    removes a live folder); folders of other hosts sharing the disk are kept.
    The same holds on a URL store shared by many hosts: only this host's
    PIDs can be asked, so only this host's dead runs are removed.
    """
    match = re.fullmatch(rf"{re.escape(SCRATCH_PREFIX)}(.+)-(\d+)-[^-]+", name)
    if not match or match[1] != socket.gethostname():
        return False
    pid = int(match[2])
    if pid == os.getpid():  # ours is not made yet: a dead run had our PID
        return True
    try:
        os.kill(pid, 0)  # signal 0: only asks whether the process exists
    except ProcessLookupError:
        return True
    except PermissionError:  # it does, as another user's
        pass
    return False


def stale_scratch(out: str) -> list[str]:
    """The names of the scratch folders in `out` that killed conversions left."""
    return [name for name in sorted(fileio.listdir(out)) if is_stale_scratch(name)]


def make_scratch(out: str) -> str:
    """A new scratch folder for this run, inside `out`."""
    return fileio.new_folder(out, scratch_prefix())


def adopt_scratch(old: str, out: str) -> str:
    """Renames a dead run's scratch folder to one of this run's, keeping its files.

    So that no other conversion takes it for stale while this one writes in
    it. Locally one rename of the folder (files keep their inodes); on a URL
    store each file is renamed, since folders there are only name prefixes.
    """
    if not fileio.is_url(out):
        new = tempfile.mkdtemp(prefix=scratch_prefix(), dir=out)
        os.replace(old, new)  # over the empty folder just made
        return new
    new = make_scratch(out)
    for folder, _, names in fileio.walk_url(old):
        relative = folder[len(old):].lstrip("/")
        target = f"{new}/{relative}" if relative else new
        fileio.makedirs(target)
        for name in names:
            fileio.replace(f"{folder}/{name}", f"{target}/{name}")
    fileio.rmtree(old)
    return new


def remove_stale_scratch(out: str, keep: str | None = None) -> None:
    """Removes the scratch folders that killed conversions left in `out` (but `keep`), saying so."""
    stale = [name for name in stale_scratch(out) if name != keep]
    for name in stale:
        fileio.rmtree(os.path.join(out, name))
    if stale:
        print(
            f"removed {len(stale)} scratch folder(s) that interrupted conversions left in {out}: "
            + ", ".join(stale),
            file=sys.stderr,
        )


@contextlib.contextmanager
def sigint_held() -> Iterator[None]:
    """Delivers a Ctrl-C that arrives in the block only once the block is done."""
    if threading.current_thread() is not threading.main_thread():
        yield  # only the main thread handles signals
        return
    caught = []
    previous = signal.signal(signal.SIGINT, lambda *_: caught.append(True))
    try:
        yield
    finally:
        signal.signal(signal.SIGINT, previous)
    if caught:
        signal.raise_signal(signal.SIGINT)  # to the handler there was


def move_into_place(scratch: str, out: str) -> None:
    """Replaces the records in `out` with the finished set in `scratch` (inside `out`).

    The old manifest goes first, so that from then on the folder reads as
    unfinished; the new manifest comes last, so that a folder with a manifest
    is always whole. Ctrl-C waits for the end of these few renames. Hidden
    entries of `scratch` are its own bookkeeping (`pipeline.converter.resume`) and stay.
    """
    new = sorted(name for name in fileio.listdir(scratch) if not name.startswith("."))
    fileio.write_json(os.path.join(scratch, _SWAP_FILENAME), new)
    with sigint_held():
        _swap(scratch, out, new)


def _swap(scratch: str, out: str, new: list[str]) -> None:
    """move_into_place's renames; those done already (by a run killed among them) are skipped."""
    old = replaced_files(out)
    if schema.MANIFEST_FILENAME in old:
        fileio.remove(os.path.join(out, schema.MANIFEST_FILENAME))
    for name in old:
        if name not in new and name != schema.MANIFEST_FILENAME:
            fileio.remove(os.path.join(out, name))
    for name in sorted(new, key=lambda n: n == schema.MANIFEST_FILENAME):
        if fileio.exists(os.path.join(scratch, name)):
            fileio.replace(os.path.join(scratch, name), os.path.join(out, name))


def swap_begun(scratch: str) -> bool:
    """Whether `move_into_place` has begun to move this scratch folder's set into place."""
    return fileio.exists(os.path.join(scratch, _SWAP_FILENAME))


def finish_interrupted_swap(out: str) -> bool:
    """Finishes the swap a killed conversion began in `out`, if any; whether there was one."""
    for name in stale_scratch(out):
        scratch = os.path.join(out, name)
        swap = os.path.join(scratch, _SWAP_FILENAME)
        if not fileio.exists(swap):
            continue
        new = fileio.read_state(swap, list, f"delete {scratch} and convert again")
        with sigint_held():
            _swap(scratch, out, new)
        fileio.rmtree(scratch)
        print(f"finished the swap an interrupted conversion began: {out} holds its records, whole",
              file=sys.stderr)
        return True
    return False
