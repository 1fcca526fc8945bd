"""A reader's hold on a records folder: no conversion replaces the records under it.

Two defences (BUILD.md, failure table):

- Locally, a shared `flock` on the folder while it is read (`hold`): convert.py
  holds it exclusively to write, so a conversion into records being read is
  refused with one line naming the reader (program, PID, host), and a reader
  started during a conversion is refused likewise.
- Anywhere, locks or not (a URL, another host over NFS, files copied by
  hand): `HeldRecords.check` compares the manifest's fingerprint with the one
  the reader started with, so a run stops with one line instead of training
  on, or reporting metrics from, other records.
"""

from __future__ import annotations

import contextlib
import dataclasses
import functools
import hashlib
import json
from collections.abc import Iterator

from pipeline import cli
from pipeline import fileio
from pipeline import schema

_CONVERTING = "wait for that conversion to end, then run again"


class RecordsChangedError(cli.UserError, ValueError):
    """The records folder holds another set than when the reader started; the message says what to do."""


def fingerprint(manifest: schema.Manifest) -> str:
    """The identity of a set of records: 16 hex digits of its manifest, less the source folder (it may move)."""
    records = {k: v for k, v in manifest.to_json().items() if k != "source"}
    return hashlib.sha256(json.dumps(records, sort_keys=True).encode()).hexdigest()[:16]


@contextlib.contextmanager
def hold(records: str) -> Iterator[None]:
    """Holds a local records folder shared while the block reads it (see the module doc); a URL is not held.

    Raises:
      fileio.LockedError: a conversion is writing into it.
    """
    if not fileio.isdir(records):  # the reader's own check says what is wrong
        yield
        return
    with fileio.held(records, _CONVERTING, shared=True):
        yield


@dataclasses.dataclass(frozen=True)
class HeldRecords:
    """A records folder as a reader opened it: its manifest, read once the folder is held."""

    path: str
    manifest: schema.Manifest

    @functools.cached_property
    def fingerprint(self) -> str:
        """`fingerprint(manifest)`, once: every check compares the folder's with it."""
        return fingerprint(self.manifest)

    def check(self, remedy: str) -> None:
        """Refuses to go on if the folder now holds other records than `manifest`.

        Args:
          remedy: what the user does next, ending the line.

        Raises:
          RecordsChangedError: the manifest is gone or another set's.
        """
        try:
            now = fingerprint(schema.read_manifest(self.path))
        except (FileNotFoundError, ValueError):
            now = "none"  # gone or half-written: not the set this run read
        if now != self.fingerprint:
            raise RecordsChangedError(
                f"{self.path} was replaced while this run read it (manifest fingerprint {self.fingerprint} -> {now}), "
                f"by a conversion into it or a copy over it: {remedy}"
            )


@contextlib.contextmanager
def reading(records: str) -> Iterator[HeldRecords]:
    """Holds `records` (`hold`) and reads its manifest once.

    Raises:
      fileio.LockedError: a conversion is writing into it.
      cli.MissingError, cli.InputError: no manifest, or a damaged one (`schema.read_manifest`).
    """
    with hold(records):
        yield HeldRecords(records, schema.read_manifest(records))
