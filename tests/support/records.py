"""Records for tests: converted trees, their examples read back, folders compared."""

from __future__ import annotations

import os
from pathlib import Path

import pytest
import tensorflow as tf

from pipeline import schema
from pipeline.converter import conversion
from pipeline.converter import sample_data

CAT_DOG_SMALL = Path(__file__).resolve().parents[3] / "shared/data/cat_dog_small"


def read_records(records_dir, split: str) -> list[dict]:
    """Every record of a split, from the shard files, as numpy/python values.

    Each also gets "class_name" (from the label and the manifest) and "shard".
    """
    manifest = schema.read_manifest(str(records_dir))
    out = []
    for path in manifest.shard_paths(str(records_dir), split):
        for serialized in tf.data.TFRecordDataset(path):
            features = schema.parse_example(serialized)
            record = {k: v.numpy() for k, v in features.items()}
            record[schema.FILENAME_KEY] = record[schema.FILENAME_KEY].decode("utf-8")
            record["class_name"] = manifest.class_names[record[schema.LABEL_KEY]]
            record["shard"] = os.path.basename(path)
            out.append(record)
    return out


def count_records(path) -> int:
    return sum(1 for _ in tf.data.TFRecordDataset(str(path)))


def convert(src, out, **kwargs) -> conversion.ConversionSummary:
    """convert_folder of a ConversionConfig with these fields; by default no pool and no data report."""
    kwargs.setdefault("workers", 1)
    kwargs.setdefault("data_report", False)
    return conversion.convert_folder(conversion.ConversionConfig(str(src), str(out), **kwargs))


def files(folder) -> dict[str, bytes]:
    """name -> bytes of the files (not folders) directly in `folder`, a local path or URL."""
    folder = str(folder)
    out = {}
    for name in tf.io.gfile.listdir(folder):
        path = f"{folder.rstrip('/')}/{name.rstrip('/')}"
        if not tf.io.gfile.isdir(path):
            with tf.io.gfile.GFile(path, "rb") as f:
                out[name] = f.read()
    return out


def sample_records(root: Path, counts: dict, seed: int) -> Path:
    """The photo-like sample (`pipeline.converter.sample_data`, `counts` images per class by
    split) written under `root` and converted; returns the records folder."""
    sample_data.write_sample(str(root / "src"), counts, seed=seed)
    convert(root / "src", root / "records")
    return root / "records"


def copy_tree_to(local: Path, remote: str) -> str:
    """Copies the folder `local` to the URL `remote` (e.g. `ram://...`); returns `remote`."""
    for folder, _, names in os.walk(local):
        target = remote + folder[len(str(local)):]
        tf.io.gfile.makedirs(target)
        for name in names:
            tf.io.gfile.copy(os.path.join(folder, name), f"{target}/{name}")
    return remote


def require_cat_dog_small() -> Path:
    """The real photos of ../shared, or a skip where this machine has none."""
    if not CAT_DOG_SMALL.is_dir():
        pytest.skip(f"{CAT_DOG_SMALL} is absent")
    return CAT_DOG_SMALL


def shard_files(records_dir) -> list[str]:
    """The names of the shard files in `records_dir`, sorted."""
    return sorted(name for name in os.listdir(records_dir) if ".tfrecord-" in name)


def partial_folders(parent) -> list[str]:
    """The conversions' scratch folders (`out_dir.SCRATCH_PREFIX`) left in `parent`."""
    return [name for name in os.listdir(parent) if "-partial-" in name]
