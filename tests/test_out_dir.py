"""pipeline.converter.out_dir: the scratch folder inside --out, stale ones, and the swap into place."""

from __future__ import annotations

import errno
import os
import signal
import socket

import pytest

from support import processes
from support.records import convert, partial_folders, shard_files
from pipeline import schema
from pipeline.converter import conversion
from pipeline.converter import out_dir
from pipeline.converter import tfds_metadata


def test_stale_scratch_folders_are_removed_and_live_ones_kept(split_tree, tmp_path, capsys):
    out = tmp_path / "records"
    convert(split_tree.root, out, num_shards=1)
    host = socket.gethostname()
    stale = [
        f"{out_dir.SCRATCH_PREFIX}{host}-{processes.dead_pid()}-k1ll3d",
        f"{out_dir.SCRATCH_PREFIX}{host}-{os.getpid()}-0ld",  # ours, from a dead run before us
    ]
    kept = [
        f"{out_dir.SCRATCH_PREFIX}{host}-{os.getppid()}-running",  # a live process
        f"{out_dir.SCRATCH_PREFIX}another-host-1-remote",  # a shared disk: not ours to judge
        f"{out_dir.SCRATCH_PREFIX}nopid",
    ]
    for name in stale + kept:
        (out / name).mkdir()
        (out / name / "cats-train.tfrecord-00000-of-00001").write_bytes(b"half")
    capsys.readouterr()

    convert(split_tree.root, out, overwrite=True, num_shards=2)
    lines = capsys.readouterr().err.splitlines()
    assert len(lines) == 1, lines
    assert lines[0].startswith(f"removed 2 scratch folder(s) that interrupted conversions left in {out}")
    assert all(name in lines[0] for name in stale)
    assert sorted(partial_folders(out)) == sorted(kept)
    assert schema.read_manifest(str(out)).splits["train"].num_examples == 24


def test_a_refused_conversion_leaves_stale_scratch_alone(split_tree, tmp_path):
    out = tmp_path / "records"
    convert(split_tree.root, out, num_shards=1)
    name = f"{out_dir.SCRATCH_PREFIX}{socket.gethostname()}-{processes.dead_pid()}-k1ll3d"
    (out / name).mkdir()
    with pytest.raises(conversion.ConversionError, match="overwrite"):
        convert(split_tree.root, out)
    assert partial_folders(out) == [name]


def test_the_records_are_renamed_from_a_scratch_folder_inside_out(split_tree, tmp_path, monkeypatch):
    """An --out on another filesystem than the temp folder works: every move stays inside it."""
    out = tmp_path / "records"
    convert(split_tree.root, out, num_shards=1)
    moves = []
    replace = os.replace

    def same_filesystem_only(src, dst):
        if os.path.dirname(src) == os.path.dirname(dst):  # a file written whole, then renamed
            return replace(src, dst)
        moves.append((os.path.dirname(os.path.dirname(src)), os.path.dirname(dst)))
        if moves[-1] != (str(out), str(out)):
            raise OSError(errno.EXDEV, "Invalid cross-device link")
        return replace(src, dst)

    monkeypatch.setattr(os, "replace", same_filesystem_only)
    monkeypatch.setattr(os, "rename", same_filesystem_only)
    summary = convert(split_tree.root, out, overwrite=True, num_shards=2, data_report=True)
    assert len(moves) == len(os.listdir(out)) == 6 + 1 + len(tfds_metadata.FILES) + 1  # + data_report.png
    assert shard_files(out) == sorted(
        s.filename for info in summary.manifest.splits.values() for s in info.shards
    )


def test_ctrl_c_during_the_move_comes_after_the_whole_new_set(split_tree, tmp_path, monkeypatch):
    out = tmp_path / "records"
    convert(split_tree.root, out, num_shards=1)
    replace, interrupts = os.replace, []

    def interrupting_replace(src, dst):
        if not interrupts and os.path.dirname(src) != os.path.dirname(dst):  # Ctrl-C as the first file is moved in
            interrupts.append(signal.SIGINT)
            signal.raise_signal(signal.SIGINT)
        return replace(src, dst)

    monkeypatch.setattr(os, "replace", interrupting_replace)
    # Python's own Ctrl-C handler, even where pytest runs as a background job (SIGINT ignored).
    previous = signal.signal(signal.SIGINT, signal.default_int_handler)
    with pytest.raises(KeyboardInterrupt):
        try:
            convert(split_tree.root, out, overwrite=True, num_shards=2)
        finally:
            signal.signal(signal.SIGINT, previous)
    manifest = schema.read_manifest(str(out))
    assert shard_files(out) == sorted(s.filename for info in manifest.splits.values() for s in info.shards)
    assert len(shard_files(out)) == 6
    assert not partial_folders(out)
