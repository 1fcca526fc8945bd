"""TFRecord files and `tf.train.Example` records, without TensorFlow.

The converter writes and checks records in processes that never import
TensorFlow (its import alone costs several seconds of CPU per process); the
bytes are those TensorFlow writes, which the tests check against
`tf.io.TFRecordWriter` and `tf.train.Example.SerializeToString(deterministic=True)`.

    frame(record)                 -> length, its CRC, the record, its CRC: one TFRecord entry
    read_records(file)            -> each record's bytes, CRCs checked (RecordError)
    encode_example({key: value})  -> serialized Example: bytes as a BytesList, int as an Int64List
    decode_example(serialized)    -> {key: first value}, for Examples of single values

The CRC is CRC-32C, masked as TFRecord specifies, from `google_crc32c` (C code).
"""

from __future__ import annotations

import struct
from collections.abc import Iterator, Mapping
from typing import BinaryIO

import google_crc32c

_LENGTH = struct.Struct("<Q")
_CRC = struct.Struct("<I")
_MASK_DELTA = 0xA282EAD8
# Example's wire format (tensorflow/core/example/{example,feature}.proto): every
# message here has its payload at field 1, but a Feature, whose kind is its field.
_MESSAGE = 0x0A  # field 1, length-delimited
_MAP_VALUE = 0x12  # field 2 of a map entry: the Feature
_BYTES_LIST = 0x0A  # Feature.bytes_list
_INT64_LIST = 0x1A  # Feature.int64_list (packed values)


class RecordError(ValueError):
    """A TFRecord file that does not read, from record `index` (at byte `offset`) on.

    `partial_length` is the number of bytes the file ends with when it ends
    inside a record's length field (TensorFlow's reader stops there quietly).
    """

    def __init__(self, message: str, index: int, offset: int, partial_length: int = 0):
        super().__init__(message)
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


def _varint(value: int) -> bytes:
    value &= 0xFFFFFFFFFFFFFFFF  # int64: a negative value is its two's complement, 10 bytes
    out = bytearray()
    while value > 0x7F:
        out.append(value & 0x7F | 0x80)
        value >>= 7
    out.append(value)
    return bytes(out)


def _delimited(tag: int, payload: bytes) -> bytes:
    return bytes((tag,)) + _varint(len(payload)) + payload


def _feature(value: bytes | int) -> bytes:
    if isinstance(value, bytes):
        return _delimited(_BYTES_LIST, _delimited(_MESSAGE, value))
    if isinstance(value, int):
        return _delimited(_INT64_LIST, _delimited(_MESSAGE, _varint(value)))
    raise TypeError(f"a feature value is bytes or int, got {type(value).__name__}")


def encode_example(features: Mapping[str, bytes | int]) -> bytes:
    """A serialized `tf.train.Example` of one value per feature, keys in sorted order
    (as `SerializeToString(deterministic=True)` writes a map)."""
    entries = b"".join(
        _delimited(_MESSAGE, _delimited(_MESSAGE, key.encode()) + _delimited(_MAP_VALUE, _feature(features[key])))
        for key in sorted(features)
    )
    return _delimited(_MESSAGE, entries)


def _read_varint(data: bytes, pos: int) -> tuple[int, int]:
    value, shift = 0, 0
    while True:
        if pos >= len(data) or shift > 63:
            raise ValueError("a varint runs past its message")
        byte = data[pos]
        value |= (byte & 0x7F) << shift
        pos += 1
        if byte < 0x80:
            return value, pos
        shift += 7


def _fields(data: bytes) -> Iterator[tuple[int, int | bytes]]:
    """(tag, value) of each field of a message: an int for varints, bytes for the rest."""
    pos = 0
    while pos < len(data):
        tag, pos = _read_varint(data, pos)
        kind = tag & 7
        if kind == 0:
            value, pos = _read_varint(data, pos)
        elif kind == 2:
            size, pos = _read_varint(data, pos)
            if pos + size > len(data):
                raise ValueError("a field runs past its message")
            value, pos = data[pos : pos + size], pos + size
        elif kind in (1, 5):
            width = 8 if kind == 1 else 4
            value, pos = data[pos : pos + width], pos + width
        else:
            raise ValueError(f"wire type {kind} is not in an Example")
        yield tag, value


def _first_value(feature: bytes) -> bytes | int | None:
    for tag, payload in _fields(feature):
        if tag not in (_BYTES_LIST, _INT64_LIST) or not isinstance(payload, bytes):
            continue
        for value_tag, value in _fields(payload):
            if tag == _BYTES_LIST and value_tag == _MESSAGE:
                return value
            if tag == _INT64_LIST and value_tag == _MESSAGE and isinstance(value, bytes):  # packed
                number = _read_varint(value, 0)[0] if value else None
                return None if number is None else number - (1 << 64) * (number >> 63)
            if tag == _INT64_LIST and value_tag == 0x08:  # one unpacked value
                return value - (1 << 64) * (value >> 63)
    return None


def decode_example(serialized: bytes) -> dict[str, bytes | int | None]:
    """Each feature's first value (bytes, int, or None for an empty or float list).

    Raises:
      ValueError: `serialized` is not an Example.
    """
    found: dict[str, bytes | int | None] = {}
    for tag, features in _fields(serialized):
        if tag != _MESSAGE or not isinstance(features, bytes):
            continue
        for entry_tag, entry in _fields(features):
            if entry_tag != _MESSAGE or not isinstance(entry, bytes):
                continue
            key, feature = b"", b""
            for field_tag, value in _fields(entry):
                if field_tag == _MESSAGE and isinstance(value, bytes):
                    key = value
                elif field_tag == _MAP_VALUE and isinstance(value, bytes):
                    feature = value
            found[key.decode("utf-8", "replace")] = _first_value(feature)
    return found
