"""`convert.py --runner=beam`: the same records as the local path, with Apache Beam.

Beam's DirectRunner runs here: with several worker processes (as a cluster
runner spreads the work) and in-process (which also reaches `ram://`).
"""

from __future__ import annotations

import filecmp
import os
import uuid
from pathlib import Path

import pytest

pytest.importorskip("apache_beam")

import tensorflow as tf  # noqa: E402
from apache_beam.options import pipeline_options  # noqa: E402

from support import cli  # noqa: E402
from support.images import make_image_tree, save_image  # noqa: E402
from support.records import convert, read_records  # noqa: E402
from pipeline import schema, verify  # noqa: E402
from pipeline.converter import beam, conversion  # noqa: E402
from pipeline.converter.commands import CONVERT  # noqa: E402
from pipeline.reader import dataset  # noqa: E402

# Worker processes of the DirectRunner, in-process: the two ways it runs.
MULTI_PROCESS = ("direct_num_workers=2", "direct_running_mode=multi_processing")
IN_PROCESS = ("direct_num_workers=1", "direct_running_mode=in_memory")


@pytest.fixture(scope="module")
def tree(tmp_path_factory):
    """Two classes in three splits; a PNG (re-encoded on the way) and a file that is no image."""
    root = tmp_path_factory.mktemp("beam") / "pets"
    tree = make_image_tree(
        root, "split",
        {"train": {"cats": 9, "dogs": 8}, "validation": {"cats": 3, "dogs": 3}, "test": {"cats": 2, "dogs": 2}},
        sizes=[(24, 32), (30, 30)],
    )
    save_image(tree.images[0].pixels(), root / "train" / "dogs" / "dog.png", fmt="PNG")
    (root / "train" / "cats" / "notes.jpg").write_bytes(b"not an image")
    return tree


@pytest.fixture(scope="module")
def local_and_beam(tree, tmp_path_factory):
    """(records by the local path, records by Beam on two worker processes)."""
    out = tmp_path_factory.mktemp("beam_out")
    convert(tree.root, out / "local", num_shards=3)
    convert(tree.root, out / "beam", num_shards=3, runner="beam", beam_pipeline_options=MULTI_PROCESS)
    return out / "local", out / "beam"


def _examples(records: Path, split: str) -> set[tuple[str, int, bytes]]:
    return {
        (r[schema.FILENAME_KEY], int(r[schema.LABEL_KEY]), bytes(r[schema.IMAGE_KEY]))
        for r in read_records(records, split)
    }


def _same_files(left: Path, right: Path) -> None:
    names = sorted(os.listdir(left))
    assert names == sorted(os.listdir(right))
    match, mismatch, errors = filecmp.cmpfiles(left, right, names, shallow=False)
    assert (mismatch, errors) == ([], [])


def test_beam_writes_the_examples_of_the_local_path(tree, local_and_beam):
    local, beam = local_and_beam
    for split in ("train", "validation", "test"):
        assert _examples(beam, split) == _examples(local, split)
        png = 1 if split == "train" else 0
        assert len(_examples(beam, split)) == sum(1 for i in tree.images if i.split == split) + png
    manifest = schema.read_manifest(str(beam))
    assert manifest == schema.read_manifest(str(local))
    assert [s.path for s in manifest.skipped] == [str(tree.root / "train" / "cats" / "notes.jpg")]
    assert manifest.splits["train"].class_counts == {"cats": 9, "dogs": 9}  # with the PNG
    # The same plan and the same writer: not only the same examples, the same bytes.
    _same_files(local, beam)
    assert not [name for name in os.listdir(beam) if name.startswith(".")]  # no bookkeeping left


def test_beam_records_verify_and_read_with_the_pipeline_and_tfds(local_and_beam):
    import tensorflow_datasets as tfds

    _, beam = local_and_beam
    assert verify.verify_records(str(beam)).ok
    config = dataset.InputConfig(image_size=(24, 24), batch_size=5)
    assert sum(int(x.shape[0]) for x, _ in dataset.eval_dataset(str(beam), "validation", config)) == 6
    builder = tfds.builder_from_directory(str(beam))
    assert sum(1 for _ in builder.as_dataset(split="train")) == 18


def test_a_beam_rerun_rewrites_the_same_bytes_whatever_the_workers(tree, local_and_beam, tmp_path):
    _, first = local_and_beam
    convert(tree.root, tmp_path / "again", num_shards=3, runner="beam", beam_pipeline_options=IN_PROCESS)
    _same_files(first, tmp_path / "again")


def test_another_seed_deals_the_shards_differently(tree, local_and_beam, tmp_path):
    _, first = local_and_beam
    convert(tree.root, tmp_path / "seed1", num_shards=3, seed=1, runner="beam", beam_pipeline_options=IN_PROCESS)
    shard = "pets-train.tfrecord-00000-of-00003"
    assert (tmp_path / "seed1" / shard).read_bytes() != (first / shard).read_bytes()
    assert _examples(tmp_path / "seed1", "train") == _examples(first, "train")


def test_beam_writes_to_a_remote_filesystem(tree, local_and_beam):
    """In-process workers reach TensorFlow's `ram://`, as cluster workers reach `gs://`."""
    _, local_beam = local_and_beam
    remote = f"ram://{uuid.uuid4().hex}/records"
    convert(tree.root, remote, num_shards=3, runner="beam", beam_pipeline_options=IN_PROCESS)
    for name in os.listdir(local_beam):
        with tf.io.gfile.GFile(f"{remote}/{name}", "rb") as f:
            assert f.read() == (local_beam / name).read_bytes(), name


def test_pipeline_options_pass_through_in_the_tfds_format():
    options = beam.pipeline_options_from(
        ["runner=DataflowRunner", "project=my-project", "region=europe-west4", "save_main_session"], workers=8
    )
    assert options.view_as(pipeline_options.StandardOptions).runner == "DataflowRunner"
    cloud = options.view_as(pipeline_options.GoogleCloudOptions)
    assert (cloud.project, cloud.region) == ("my-project", "europe-west4")
    assert options.view_as(pipeline_options.SetupOptions).save_main_session
    assert options.view_as(pipeline_options.DirectOptions).direct_num_workers == 1  # untouched

    default = beam.pipeline_options_from([], workers=3)
    assert default.view_as(pipeline_options.StandardOptions).runner == "FnApiRunner"  # never Prism's download
    direct = default.view_as(pipeline_options.DirectOptions)
    assert (direct.direct_num_workers, direct.direct_running_mode) == (3, "multi_processing")
    mine = beam.pipeline_options_from(list(IN_PROCESS), workers=3).view_as(pipeline_options.DirectOptions)
    assert (mine.direct_num_workers, mine.direct_running_mode) == (1, "in_memory")


def test_without_beam_installed_the_error_says_how_to_get_it(tree, tmp_path, monkeypatch):
    monkeypatch.setattr(beam, "beam", None)
    with pytest.raises(conversion.ConversionError, match=r"pip install -e '\.\[beam\]'"):
        convert(tree.root, tmp_path / "out", runner="beam")
    assert not (tmp_path / "out").exists()


def test_convert_cli_runs_beam_with_the_options_given(tree, local_and_beam, tmp_path):
    _, beam = local_and_beam
    done = cli.run(
        CONVERT, f"--src={tree.root}", "--num_shards=3", "--runner=beam",
        "--beam_pipeline_options=" + ",".join(IN_PROCESS), f"--out={tmp_path / 'cli'}", "--workers=2",
        "--nodata_report",
    )
    assert done.returncode == 0, done.stderr
    assert "Wrote 28 images" in done.stdout
    assert "wrote pets-train.tfrecord-00000-of-00003" in done.stderr  # progress, a line per shard
    _same_files(beam, tmp_path / "cli")

