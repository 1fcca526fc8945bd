"""pipeline.tfrecord: the bytes TensorFlow writes and reads, without TensorFlow."""

from __future__ import annotations

import io
import random

import pytest
import tensorflow as tf

from pipeline import schema
from pipeline import tfrecord


def _tf_example(values: dict) -> bytes:
    example = tf.train.Example()
    for key, value in values.items():
        if isinstance(value, int):
            example.features.feature[key].int64_list.value.append(value)
        else:
            example.features.feature[key].bytes_list.value.append(value)
    return example.SerializeToString(deterministic=True)


def _random_values(rng: random.Random) -> dict:
    return {
        schema.IMAGE_KEY: rng.randbytes(rng.choice([0, 1, 127, 128, 300, 20_000])),
        schema.LABEL_KEY: rng.choice([0, 1, 127, 128, 2**40, -1, -(2**63), 2**63 - 1]),
        schema.HEIGHT_KEY: rng.randrange(1 << 20),
        schema.WIDTH_KEY: rng.randrange(1 << 14),
        schema.FILENAME_KEY: f"cats/{rng.randrange(10**6)}-é.jpg".encode(),
    }


def test_examples_are_the_bytes_tensorflow_serializes_and_parse_back():
    rng = random.Random(0)
    for _ in range(300):
        values = _random_values(rng)
        serialized = tfrecord.encode_example(values)
        assert serialized == _tf_example(values)
        assert tfrecord.decode_example(serialized) == values
        parsed = tf.io.parse_single_example(serialized, schema.feature_spec())
        assert int(parsed[schema.LABEL_KEY]) == values[schema.LABEL_KEY]


def test_decode_takes_each_features_first_value():
    example = tf.train.Example()
    example.features.feature["n"].int64_list.value.extend([5, 6])
    example.features.feature["f"].float_list.value.append(1.5)
    example.features.feature["empty"].bytes_list.SetInParent()
    example.features.feature["none"].SetInParent()
    assert tfrecord.decode_example(example.SerializeToString()) == {"n": 5, "f": None, "empty": None, "none": None}


@pytest.mark.parametrize("damage", [b"not a record", b"\x0a\x05ab", b"\x0f"])
def test_decode_refuses_what_is_not_an_example(damage):
    with pytest.raises(ValueError):
        tfrecord.decode_example(damage)


def test_frames_are_what_tf_io_tfrecordwriter_writes_and_read_back(tmp_path):
    rng = random.Random(1)
    records = [rng.randbytes(n) for n in (0, 1, 100, 70_000)]
    with tf.io.TFRecordWriter(str(tmp_path / "tf")) as writer:
        for record in records:
            writer.write(record)
    ours = b"".join(tfrecord.frame(record) for record in records)
    assert ours == (tmp_path / "tf").read_bytes()
    assert list(tfrecord.read_records(io.BytesIO(ours))) == records


def _damaged(data: bytes, offset: int) -> bytes:
    return data[:offset] + bytes([data[offset] ^ 1]) + data[offset + 1 :]


def test_reading_names_the_record_and_offset_of_damage():
    records = [b"a" * 10, b"b" * 20, b"c" * 30]
    data = b"".join(tfrecord.frame(record) for record in records)
    second = 16 + 10
    cases = {
        "length": (_damaged(data, second + 2), "corrupted record at 26", 0),
        "data": (_damaged(data, second + 12 + 5), "corrupted record at 26", 0),
        "data cut": (data[: second + 20], "truncated record at 26", 0),
        "length cut": (data[: second + 5], "the file ends 5 bytes into a record's length", 5),
    }
    for name, (damaged, message, partial) in cases.items():
        with pytest.raises(tfrecord.RecordError) as raised:
            list(tfrecord.read_records(io.BytesIO(damaged)))
        assert (str(raised.value), raised.value.index, raised.value.offset) == (message, 1, second), name
        assert raised.value.partial_length == partial, name
