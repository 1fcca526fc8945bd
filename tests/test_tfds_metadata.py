"""The TFDS metadata the converter writes by hand is what TFDS itself writes."""

from __future__ import annotations

import os

import numpy as np
import pytest

from pipeline import schema
from pipeline.converter import tfds_metadata



@pytest.fixture(scope="module")
def tfds():
    """TFDS, imported only where it is compared with (a second of every collection otherwise)."""
    return pytest.importorskip("tensorflow_datasets")


def _manifest(stored_size) -> schema.Manifest:
    def shard(split: str, k: int, of: int, count: int, size: int) -> schema.ShardInfo:
        return schema.ShardInfo(f"pets-{split}.tfrecord-{k:05d}-of-{of:05d}", count, size)

    return schema.Manifest(
        dataset_name="pets",
        class_names=("cats", "dogs", "birds"),
        splits={
            "train": schema.SplitInfo("train", (shard("train", 0, 2, 3, 100), shard("train", 1, 2, 4, 120)),
                                      {"cats": 3, "dogs": 2, "birds": 2}),
            "test": schema.SplitInfo("test", (shard("test", 0, 1, 2, 50),), {"cats": 1, "dogs": 1, "birds": 0}),
        },
        stored_size=stored_size,
        source="/data/pets",
        skipped=(),
        duplicates=(),
    )


def _tfds_writes(tfds, folder, manifest: schema.Manifest) -> None:
    """tfds.folder_dataset.write_metadata of the same manifest, features from schema.FEATURES."""
    shape = (*manifest.stored_size, 3) if manifest.stored_size else (None, None, 3)
    by_key = {
        schema.IMAGE_KEY: tfds.features.Image(shape=shape, encoding_format="jpeg"),
        schema.LABEL_KEY: tfds.features.ClassLabel(names=list(manifest.class_names)),
    }
    by_type = {int: lambda: tfds.features.Scalar(dtype=np.int64), bytes: tfds.features.Text}
    features = tfds.features.FeaturesDict(
        {key: by_key.get(key) or by_type[kind]() for key, kind in schema.FEATURES.items()}
    )
    for split in manifest.splits.values():
        for shard in split.shards:
            open(os.path.join(folder, shard.filename), "wb").close()  # TFDS reads the names
    tfds.folder_dataset.write_metadata(
        data_dir=str(folder),
        features=features,
        split_infos=[
            tfds.core.SplitInfo(name=name, shard_lengths=[s.num_examples for s in split.shards], num_bytes=split.num_bytes)
            for name, split in manifest.splits.items()
        ],
        check_data=False,
        description=f"Images converted from {manifest.source} by convert.py.",
    )


@pytest.mark.parametrize("stored_size", [None, (150, 120)])
def test_the_files_are_those_tfds_writes(tfds, tmp_path, stored_size):
    manifest = _manifest(stored_size)
    (tmp_path / "ours").mkdir()
    (tmp_path / "tfds").mkdir()
    tfds_metadata.write(str(tmp_path / "ours"), manifest)
    _tfds_writes(tfds, tmp_path / "tfds", manifest)
    for name in tfds_metadata.FILES:
        assert (tmp_path / "ours" / name).read_bytes() == (tmp_path / "tfds" / name).read_bytes(), name
    assert sorted(p.name for p in (tmp_path / "tfds").iterdir() if ".tfrecord-" not in p.name) == sorted(
        tfds_metadata.FILES
    )
