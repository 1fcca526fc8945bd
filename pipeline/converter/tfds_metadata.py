"""The TFDS metadata of a records folder, so `tfds.builder_from_directory` reads it.

    write(folder, manifest)   # dataset_info.json, features.json, label.labels.txt

The three files are the ones `tfds.folder_dataset.write_metadata` writes, byte
for byte (tests/test_tfds_metadata.py compares them with the installed TFDS),
written here from the manifest and `schema.FEATURES`: importing TFDS (and
TensorFlow with it) would cost the converter several seconds of CPU for three
small JSON files (BUILD.md, "The converter without TensorFlow").
"""

from __future__ import annotations

import json
import os
from typing import Any

from pipeline import fileio
from pipeline import schema

DATASET_INFO = "dataset_info.json"
FEATURES = "features.json"
LABELS = f"{schema.LABEL_KEY}.labels.txt"
FILES = (DATASET_INFO, FEATURES, LABELS)

VERSION = "1.0.0"
_TEMPLATE = "{DATASET}-{SPLIT}.{FILEFORMAT}-{SHARD_X_OF_Y}"  # plan.shard_filename's pattern
_CLASS = "tensorflow_datasets.core.features."


def dataset_info(manifest: schema.Manifest) -> dict[str, Any]:
    """dataset_info.json: the name, the description, each split's shard lengths and bytes."""
    return {
        "description": f"Images converted from {manifest.source} by convert.py.",
        "fileFormat": schema.FILE_FORMAT,
        "name": manifest.dataset_name,
        "splits": [
            {
                "filepathTemplate": _TEMPLATE,
                "name": name,
                "numBytes": str(split.num_bytes),
                "shardLengths": [str(shard.num_examples) for shard in split.shards],
            }
            for name, split in manifest.splits.items()
        ],
        "version": VERSION,
    }


def _feature(key: str, kind: type, manifest: schema.Manifest) -> dict[str, Any]:
    """One feature: the image a JPEG `Image`, the label a `ClassLabel`, ints `Scalar`, bytes `Text`."""
    if key == schema.IMAGE_KEY:
        height, width = manifest.stored_size or (-1, -1)
        shape = {"dimensions": [str(height), str(width), "3"]}
        return {
            "image": {"dtype": "uint8", "encodingFormat": "jpeg", "shape": shape},
            "pythonClassName": _CLASS + "image_feature.Image",
        }
    if key == schema.LABEL_KEY:
        return {
            "classLabel": {"numClasses": str(manifest.num_classes)},
            "pythonClassName": _CLASS + "class_label_feature.ClassLabel",
        }
    if kind is int:
        tensor = {"dtype": "int64", "encoding": "none", "shape": {}}
        return {"pythonClassName": _CLASS + "scalar.Scalar", "tensor": tensor}
    return {"pythonClassName": _CLASS + "text_feature.Text", "text": {}}


def features(manifest: schema.Manifest) -> dict[str, Any]:
    """features.json: the `FeaturesDict` of `schema.FEATURES`."""
    return {
        "featuresDict": {
            "features": {key: _feature(key, kind, manifest) for key, kind in sorted(schema.FEATURES.items())}
        },
        "pythonClassName": _CLASS + "features_dict.FeaturesDict",
    }


def write(folder: str, manifest: schema.Manifest) -> None:
    """Writes the three files into `folder`, a local path or a URL."""
    texts = {
        DATASET_INFO: json.dumps(dataset_info(manifest), indent=2, sort_keys=True),
        FEATURES: json.dumps(features(manifest), indent=4, sort_keys=True),
        LABELS: "".join(f"{name}\n" for name in manifest.class_names),
    }
    for name, text in texts.items():
        fileio.write_text(os.path.join(folder, name), text)
