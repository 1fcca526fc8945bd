"""The converter on a remote filesystem, through TensorFlow's in-memory `ram://`.

`--src` and `--out` may be any tf.io.gfile URL (`gs://`, `s3://`, `hdfs://`);
`ram://` stands in for them here. It lives in one process, so everything runs
in this one: `convert_folder` and convert.py's `main`. Each test checks that
nothing reached the local disk: no file in its temporary folder or working
directory, and nothing left in the system temporary folder (where the TFDS
metadata is staged).
"""

from __future__ import annotations

import os
import socket
import tempfile
import uuid
from pathlib import Path

import pytest
import tensorflow as tf

from support import processes
from support.images import make_image_tree
from support.records import convert, copy_tree_to, files
from pipeline import fileio
from pipeline import schema
from pipeline import verify
from pipeline.converter.commands import CONVERT
from pipeline.converter import out_dir
from pipeline.converter import resume as resume_lib
from pipeline.reader import dataset

COUNTS = {"train": {"cats": 6, "dogs": 6}, "validation": {"cats": 2, "dogs": 2}}
SIZES = [(24, 32), (32, 24)]


def _ram(name: str) -> str:
    return f"ram://{uuid.uuid4().hex}/{name}"


def _snapshot(folder: Path, but: Path) -> list[str]:
    """Every file and folder under `folder`, but those under `but`."""
    return sorted(
        str(Path(parent, name))
        for parent, folders, files in os.walk(folder)
        for name in folders + files
        if not Path(parent, name).is_relative_to(but)
    )


@pytest.fixture(scope="module")
def tree(tmp_path_factory):
    """The local tree, and the local conversions it is checked against."""
    root = tmp_path_factory.mktemp("remote_src")
    local = make_image_tree(root / "pets", "split", COUNTS, SIZES)
    convert(local.root, root / "as_is", num_shards=2)
    convert(local.root, root / "resized", num_shards=3, image_size=(20, 20))
    return local, root


@pytest.fixture
def local_disk_untouched(tmp_path, monkeypatch):
    """Runs the test in an empty working directory, and checks afterwards that
    it and the test's tmp_path got no files, and that the system temporary
    folder kept none of the converter's (TensorFlow's autograph leaves the
    code it generates for the readers' tf.data functions there)."""
    cwd, temp = tmp_path / "cwd", tmp_path / "temp"
    cwd.mkdir()
    temp.mkdir()
    monkeypatch.chdir(cwd)
    monkeypatch.setattr(tempfile, "tempdir", str(temp))
    before = _snapshot(tmp_path, but=temp)
    yield
    assert _snapshot(tmp_path, but=temp) == before
    assert not os.listdir(cwd)
    assert [name for name in os.listdir(temp) if not name.startswith("__autograph_generated_file")] == []


def _check_records(records: str, local_records: Path, src: str) -> schema.Manifest:
    """The records at `records` read, verify, and hold the shards of the local run."""
    manifest = schema.read_manifest(records)
    assert manifest.source == src
    assert verify.verify_records(records).ok
    config = dataset.InputConfig(image_size=(16, 16), batch_size=4)
    assert sum(int(x.shape[0]) for x, _ in dataset.eval_dataset(records, "validation", config)) == 4
    assert sum(int(x.shape[0]) for x, _ in dataset.train_dataset(records, config)) == 12
    remote, local = files(records), files(str(local_records))
    assert sorted(remote) == sorted(local)  # shards, manifest, TFDS metadata: no other file
    for name, data in local.items():
        if name == schema.MANIFEST_FILENAME:
            assert manifest.to_json() == {**schema.read_manifest(str(local_records)).to_json(), "source": src}
        elif name != "dataset_info.json":  # which names its source too
            assert remote[name] == data, name  # the same bytes as a local conversion
    ours = f"{out_dir.SCRATCH_PREFIX}{socket.gethostname()}-"
    assert not [name for name in fileio.listdir(records) if name.startswith(ours)]
    return manifest


@pytest.mark.parametrize("workers", [1, 2])
def test_ram_src_to_ram_out(tree, local_disk_untouched, workers):
    local, root = tree
    src = copy_tree_to(local.root, _ram("pets"))
    out = _ram("records")
    # Two workers: the forked decoders read the ram:// files themselves.
    summary = convert(src, out, num_shards=2, workers=workers)
    assert summary.num_images == 16 and not summary.skipped
    _check_records(out, root / "as_is", src)


def test_local_src_to_ram_out_replaces_records_there(tree, local_disk_untouched):
    local, root = tree
    out = _ram("records")
    convert(local.root, out, num_shards=1)
    with pytest.raises(ValueError, match="overwrite"):
        convert(local.root, out, num_shards=3, image_size=(20, 20))
    convert(local.root, out, num_shards=3, image_size=(20, 20), overwrite=True)
    assert _check_records(out, root / "resized", str(local.root)).stored_size == (20, 20)


def test_out_inside_src_is_refused_on_urls_too(tree, local_disk_untouched):
    src = copy_tree_to(tree[0].root, _ram("pets"))
    with pytest.raises(ValueError, match="is inside --src"):
        convert(src, src + "/records")
    with pytest.raises(ValueError, match="is --src itself"):
        convert(src + "/", src)


def test_stale_scratch_on_ram_is_removed_and_an_interrupted_run_resumes(
    tree, local_disk_untouched, monkeypatch, capsys
):
    local, root = tree
    src = copy_tree_to(local.root, _ram("pets"))
    out = _ram("records")
    stale = f"{out}/{out_dir.SCRATCH_PREFIX}{socket.gethostname()}-{processes.dead_pid()}-k1ll3d"
    tf.io.gfile.makedirs(stale)
    other_host = f"{out}/{out_dir.SCRATCH_PREFIX}another-host-1-remote"
    tf.io.gfile.makedirs(other_host)

    # A run that dies after its third shard, leaving its scratch folder as a kill would.
    write_result = resume_lib.write_result

    def dying(scratch, result):
        write_result(scratch, result)
        if len(fileio.listdir(os.path.join(scratch, resume_lib.BOOKKEEPING))) == 4:  # plan + 3 sidecars
            raise SystemExit("killed")

    ours, rmtree = f"{out}/{out_dir.scratch_prefix()}", fileio.rmtree

    with monkeypatch.context() as patch:
        patch.setattr(resume_lib, "write_result", dying)
        patch.setattr(fileio, "rmtree", lambda path: None if path.startswith(ours) else rmtree(path))
        with pytest.raises(SystemExit):
            convert(src, out, num_shards=2)
    assert "removed 1 scratch folder" in capsys.readouterr().err
    assert not tf.io.gfile.exists(stale) and tf.io.gfile.exists(other_host)

    summary = convert(src, out, num_shards=2, resume=True)
    lines = capsys.readouterr().err.splitlines()
    assert len(lines) == 1 and lines[0].startswith("--resume: kept 3 of 4 shards of .convert-partial-"), lines
    assert summary.num_images == 16
    _check_records(out, root / "as_is", src)
    assert fileio.listdir(out).count(os.path.basename(other_host)) == 1  # another host's: kept


def test_convert_py_main_in_process(tree, local_disk_untouched, capsys):
    """convert.py's flags and main, on ram://."""
    local, root = tree
    src = copy_tree_to(local.root, _ram("pets"))
    out = _ram("records")

    def main(*args: str) -> int:
        return CONVERT.main(["convert.py", f"--src={src}/", f"--out={out}", "--num_shards=3", "--image_size=20",
                            "--nodata_report", *args])

    assert main("--workers=2", "--runner=local", "--beam_pipeline_options=") == 0
    captured = capsys.readouterr()
    assert main("--overwrite", "--resume", "--runner=beam", "--beam_pipeline_options=runner=DirectRunner") == 1
    assert capsys.readouterr().err.startswith("convert.py: error: --resume is not supported with --runner=beam")
    assert main("--runner=spark") == 1
    assert "--runner" in capsys.readouterr().err
    assert captured.out.startswith(f"Wrote 16 images to {out}")
    _check_records(out, root / "resized", src)
