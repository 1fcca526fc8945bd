"""The records folder a conversion replaces: scratch folders and the final swap.

A conversion writes its new set into a scratch folder inside `out` (so that
the final renames stay on one filesystem and are atomic), then swaps it in:
the old manifest goes first, the new one comes last, so a folder with a
manifest is always whole. A conversion killed before the swap leaves only its
scratch folder, which the next conversion into the same `out` removes; one
killed during the swap left a whole set in its scratch folder, which the next
conversion moves into place first.
"""

from __future__ import annotations

import contextlib
import os
import re
import shutil
import signal
import socket
import sys
import threading
from collections.abc import Iterator

from pipeline import schema

# What tfds.folder_dataset.write_metadata writes beside the shards.
TFDS_METADATA_FILES = ("dataset_info.json", "features.json", f"{schema.LABEL_KEY}.labels.txt")
SCRATCH_PREFIX = ".convert-partial-"


def replaced_files(out: str) -> list[str]:
    """The files in `out` a conversion writes or removes: records, manifest, TFDS metadata."""
    if not os.path.isdir(out):
        return []
    return sorted(
        name
        for name in os.listdir(out)
        if name in (schema.MANIFEST_FILENAME, *TFDS_METADATA_FILES) or f".{schema.FILE_FORMAT}-" in name
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


def remove_stale_scratch(out: str) -> None:
    """Removes the scratch folders that killed conversions left in `out`, saying so."""
    stale = [name for name in sorted(os.listdir(out)) if is_stale_scratch(name)]
    for name in stale:
        shutil.rmtree(os.path.join(out, name), ignore_errors=True)
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
    is always whole. Ctrl-C waits for the end of these few renames.
    """
    with sigint_held():
        old = replaced_files(out)
        if schema.MANIFEST_FILENAME in old:
            os.remove(os.path.join(out, schema.MANIFEST_FILENAME))
        new = set(os.listdir(scratch))
        for name in old:
            if name not in new and name != schema.MANIFEST_FILENAME:
                os.remove(os.path.join(out, name))
        for name in sorted(new, key=lambda n: n == schema.MANIFEST_FILENAME):
            os.replace(os.path.join(scratch, name), os.path.join(out, name))
