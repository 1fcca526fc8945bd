"""File helpers every layer shares: JSON written atomically.

Paths go through `tf.io.gfile`, so local folders and any filesystem TensorFlow
knows (`gs://`, `s3://`, `ram://`, ...) work alike.
"""

from __future__ import annotations

import json
import math
import os
from typing import Any

import tensorflow as tf


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


def write_json(path: str, data: Any) -> str:
    """Writes `data` as indented JSON, all or nothing; returns `path`.

    The text goes to `path + ".tmp"` first and is renamed over `path`: a
    reader (or a run killed half-way) sees the old file or the new one, never
    a part. Non-finite floats are written as null.
    """
    folder = os.path.dirname(path)
    if folder:
        tf.io.gfile.makedirs(folder)
    text = json.dumps(normalize_json(data), indent=2, allow_nan=False) + "\n"
    tmp = path + ".tmp"
    with tf.io.gfile.GFile(tmp, "w") as f:
        f.write(text)
    tf.io.gfile.rename(tmp, path, overwrite=True)
    return path


def read_json(path: str) -> Any:
    """The parsed contents of a JSON file."""
    with tf.io.gfile.GFile(path, "r") as f:
        return json.load(f)
