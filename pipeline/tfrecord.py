"""TFRecord files and `tf.train.Example` records, without TensorFlow.

The converter writes and checks records in processes that never import
TensorFlow (its import alone costs several seconds of CPU per process); the
bytes are those TensorFlow writes, which the tests check against
`tf.io.TFRecordWriter` and `tf.train.Example.SerializeToString(deterministic=True)`.

    frame(record)                 -> length, its CRC, the record, its CRC: one TFRecord entry
    read_records(file)            -> each record's bytes, CRCs checked (RecordError)
    encode_example({key: value})  -> serialized Example: bytes as a BytesList, int as an Int64List
    decode_example(serialized)    -> {key: first value}, for Examples of single values

The CRC is CRC-32C, masked as TFRecord specifies, from `google_crc32c` (C code); the
Example is protobuf's own message class, made from the Example schema.
"""

from __future__ import annotations

import struct
from collections.abc import Iterator, Mapping
from typing import BinaryIO

import google_crc32c
from google.protobuf import descriptor_pb2
from google.protobuf import descriptor_pool
from google.protobuf import message
from google.protobuf import message_factory

_LENGTH = struct.Struct("<Q")
_CRC = struct.Struct("<I")
_MASK_DELTA = 0xA282EAD8


class RecordError(ValueError):
    """A TFRecord file that does not read, from record `index` (at byte `offset`) on.

    `partial_length` is the number of bytes the file ends with when it ends
    inside a record's length field (TensorFlow's reader stops there quietly).
    """

    def __init__(self, text: str, index: int, offset: int, partial_length: int = 0):
        super().__init__(text)
        self.index, self.offset, self.partial_length = index, offset, partial_length


def masked_crc(data: bytes) -> int:
    """TFRecord's masked CRC-32C of `data`."""
    crc = google_crc32c.value(data)
    return (((crc >> 15) | (crc << 17)) + _MASK_DELTA) & 0xFFFFFFFF


def frame(record: bytes) -> bytes:
    """One TFRecord entry: the length (uint64 LE), its masked CRC, `record`, its masked CRC."""
    length = _LENGTH.pack(len(record))
    return b"".join((length, _CRC.pack(masked_crc(length)), record, _CRC.pack(masked_crc(record))))


def read_records(file: BinaryIO) -> Iterator[bytes]:
    """The records of an open TFRecord file, in order, each CRC checked.

    Raises:
      RecordError: a CRC that does not match ("corrupted record at OFFSET",
        TensorFlow's words), or a file that ends inside a record ("truncated
        record at OFFSET").
    """
    index, offset = 0, 0
    while True:
        head = file.read(12)
        if not head:
            return
        if len(head) < 12:
            raise RecordError(f"the file ends {len(head)} bytes into a record's length", index, offset, len(head))
        length = head[:8]
        if _CRC.unpack_from(head, 8)[0] != masked_crc(length):
            raise RecordError(f"corrupted record at {offset}", index, offset)
        size = _LENGTH.unpack(length)[0]
        body = file.read(size + 4)
        if len(body) < size + 4:
            raise RecordError(f"truncated record at {offset}", index, offset)
        record = body[:size]
        if _CRC.unpack_from(body, size)[0] != masked_crc(record):
            raise RecordError(f"corrupted record at {offset}", index, offset)
        yield record
        index, offset = index + 1, offset + 16 + size


def _example_class() -> type:
    """`tf.train.Example`'s message class, from its schema (tensorflow/core/example/{feature,
    example}.proto), in a descriptor pool of its own: TensorFlow's, when loaded, is not touched."""
    fields = descriptor_pb2.FieldDescriptorProto
    proto = descriptor_pb2.FileDescriptorProto(name="pipeline/example.proto", package="tensorflow", syntax="proto3")

    def message(name: str, *specs: dict, oneof: str | None = None) -> descriptor_pb2.DescriptorProto:
        added = proto.message_type.add(name=name)
        if oneof:
            added.oneof_decl.add(name=oneof)
        for spec in specs:
            added.field.add(**{"label": fields.LABEL_OPTIONAL, **spec})
        return added

    packed = descriptor_pb2.FieldOptions(packed=True)
    repeated = {"number": 1, "name": "value", "label": fields.LABEL_REPEATED}
    message("BytesList", {**repeated, "type": fields.TYPE_BYTES})
    message("FloatList", {**repeated, "type": fields.TYPE_FLOAT, "options": packed})
    message("Int64List", {**repeated, "type": fields.TYPE_INT64, "options": packed})
    kinds = ("bytes_list", "BytesList"), ("float_list", "FloatList"), ("int64_list", "Int64List")
    message("Feature", *(
        {"name": name, "number": number, "type": fields.TYPE_MESSAGE, "type_name": f".tensorflow.{kind}", "oneof_index": 0}
        for number, (name, kind) in enumerate(kinds, start=1)
    ), oneof="kind")
    features = message("Features", {
        "name": "feature", "number": 1, "label": fields.LABEL_REPEATED, "type": fields.TYPE_MESSAGE,
        "type_name": ".tensorflow.Features.FeatureEntry",
    })
    entry = features.nested_type.add(name="FeatureEntry", options=descriptor_pb2.MessageOptions(map_entry=True))
    entry.field.add(name="key", number=1, label=fields.LABEL_OPTIONAL, type=fields.TYPE_STRING)
    entry.field.add(name="value", number=2, label=fields.LABEL_OPTIONAL, type=fields.TYPE_MESSAGE,
                    type_name=".tensorflow.Feature")
    message("Example", {"name": "features", "number": 1, "type": fields.TYPE_MESSAGE, "type_name": ".tensorflow.Features"})
    pool = descriptor_pool.DescriptorPool()
    pool.Add(proto)
    return message_factory.GetMessageClass(pool.FindMessageTypeByName("tensorflow.Example"))


_Example = _example_class()


def encode_example(features: Mapping[str, bytes | int]) -> bytes:
    """A serialized `tf.train.Example` of one value per feature: bytes as a BytesList, int as an
    Int64List; map keys sorted (`deterministic=True`), so every process writes the same bytes."""
    example = _Example()
    for key, value in features.items():
        feature = example.features.feature[key]
        if isinstance(value, bytes):
            feature.bytes_list.value.append(value)
        elif isinstance(value, int):
            feature.int64_list.value.append(value)
        else:
            raise TypeError(f"a feature value is bytes or int, got {type(value).__name__}")
    return example.SerializeToString(deterministic=True)


def decode_example(serialized: bytes) -> dict[str, bytes | int | None]:
    """Each feature's first value (bytes, int, or None for an empty or float list).

    Raises:
      ValueError: `serialized` is not an Example.
    """
    try:
        example = _Example.FromString(serialized)
    except message.DecodeError as e:
        raise ValueError(f"not an Example: {e}") from None
    found: dict[str, bytes | int | None] = {}
    for key, feature in example.features.feature.items():
        kind = feature.WhichOneof("kind")
        values = getattr(feature, kind).value if kind else ()
        found[key] = values[0] if values and kind != "float_list" else None
    return found
