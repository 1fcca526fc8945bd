"""Duplicate images found at conversion: byte-identical files and near-duplicates.

    decode worker:  file bytes + the image it loaded --fingerprint--> Fingerprint
                    (a SHA-256 of the bytes; a 64-bit perceptual hash of a 32x32 thumbnail)
    writer, in plan order (train, validation, test; shards in order):
                    DuplicateIndex.add(path, split, fingerprint) -> the pair, or None

Each image that matches an earlier one is paired with the one earlier image
it matches: byte-identical first, else the closest perceptual hash within
THRESHOLD bits, ties to the earliest. So k copies of a photo give k-1 pairs,
not k(k-1)/2. The near search never compares all pairs: the hash is cut into
NUM_BANDS bands, and two hashes within THRESHOLD bits differ in at most
THRESHOLD // NUM_BANDS bits of at least one band (pigeonhole), so only
images whose band is that close are compared: each band's key and its
neighbours within THRESHOLD // NUM_BANDS bits are looked up.
With `drop`, a duplicate is not added to the index: every pair then names an
image that the records keep.
"""

from __future__ import annotations

import dataclasses
import enum
import hashlib
import itertools
from typing import Any

import numpy as np
from PIL import Image

from pipeline import schema

HASH_BITS = 64
# Perceptual-hash distance (bits) up to which two images are near-duplicates:
# every 80%-resized, quality-80 copy of the 2,000 real photos was within 8,
# unrelated photos farther than 10 but one genuine pair (BUILD.md, "Duplicates").
THRESHOLD = 10
# Pigeonhole: two hashes within THRESHOLD bits differ in at most THRESHOLD // NUM_BANDS
# bits of one of NUM_BANDS bands. Wider bands hold fewer unrelated images per key: for
# 25,000 distinct hashes 3 bands of 21-22 bits took 2.8-3.2 s, 4 of 16 bits 3.3-4.0 s.
NUM_BANDS = 3
# The thumbnail: a nearest-neighbour sample (touches 4,096 pixels, not all of
# them: 0.05 ms where a box filter of the whole photo took 0.3), averaged 2x2.
SAMPLE_SIZE = 64
THUMBNAIL_SIZE = 32
_DCT_KEPT = 8  # the 8x8 lowest frequencies: 64 bits
# A flat image's hash bits are rounding noise (every flat colour would match
# every other): a thumbnail spanning fewer grey levels gets none, only its digest.
FLAT_RANGE = 8


def _dct_rows(n: int, kept: int) -> np.ndarray:
    """The first `kept` rows of the (unnormalised, scipy's) DCT-II matrix of size n."""
    k, i = np.arange(kept)[:, None], np.arange(n)[None, :]
    return (2 * np.cos(np.pi * k * (2 * i + 1) / (2 * n))).astype(np.float32)


_DCT = _dct_rows(THUMBNAIL_SIZE, _DCT_KEPT)
_MIDDLE = [HASH_BITS // 2 - 1, HASH_BITS // 2]


class DuplicateMode(str, enum.Enum):
    """What the converter does about duplicates: list them, drop the later copies, or not look."""

    REPORT = "report"
    DROP = "drop"
    OFF = "off"


@dataclasses.dataclass(frozen=True)
class Fingerprint:
    """What the duplicate search needs of one source image.

    Attributes:
      digest: hex SHA-256 of the file's bytes.
      phash: 64-bit perceptual hash of its pixels (`perceptual_hash`); None for a flat image.
      height, width: the source image's original size in pixels.
    """

    digest: str
    phash: int | None
    height: int
    width: int


def perceptual_hash(image: Image.Image) -> int | None:
    """The 64-bit pHash of a loaded Pillow image: the same bits as imagehash.phash of our thumbnail.

    The thumbnail is grey, 32x32: a 64x64 nearest-neighbour sample averaged
    2x2. Bit i is set where the i-th of the 8x8 lowest DCT coefficients
    (row-major) is above their median.
    """
    sample = image.resize((SAMPLE_SIZE, SAMPLE_SIZE), Image.Resampling.NEAREST).convert("L")
    thumbnail = sample.reduce(SAMPLE_SIZE // THUMBNAIL_SIZE)
    darkest, brightest = thumbnail.getextrema()  # in C: a fifth of numpy's std here
    if brightest - darkest < FLAT_RANGE:
        return None
    pixels = np.frombuffer(thumbnail.tobytes(), np.uint8).reshape(THUMBNAIL_SIZE, THUMBNAIL_SIZE)
    low = (_DCT @ pixels.astype(np.float32) @ _DCT.T).ravel()
    middle = np.partition(low, _MIDDLE)[_MIDDLE].mean()  # the median of the 64
    return int.from_bytes(np.packbits(low > middle).tobytes(), "big")


def fingerprint(data: bytes, image: Image.Image) -> Fingerprint:
    """The Fingerprint of a file's bytes and the image loaded from them (in a decode worker)."""
    return Fingerprint(hashlib.sha256(data).hexdigest(), perceptual_hash(image), image.height, image.width)


def fingerprint_to_json(value: Fingerprint) -> list[Any]:
    """A row, [digest, phash, height, width]: a shard's sidecar holds one per image."""
    return [value.digest, value.phash, value.height, value.width]


def fingerprint_from_json(row: list[Any]) -> Fingerprint:
    digest, phash, height, width = row
    return Fingerprint(str(digest), None if phash is None else int(phash), int(height), int(width))


def _flips(width: int, radius: int) -> np.ndarray:
    """Every mask of at most `radius` set bits among `width`: XORed with a key, its neighbours."""
    return np.array([
        sum(1 << bit for bit in bits) for r in range(radius + 1) for bits in itertools.combinations(range(width), r)
    ], np.int64)


def distance(a: int, b: int) -> int:
    """Hamming distance of two hashes: the bits that differ."""
    return (a ^ b).bit_count()


def reason(pair: schema.DuplicatePair) -> str:
    """A dropped copy's skip reason: the file it copies, and how close."""
    how = "identical" if pair.identical else f"perceptual hash distance {pair.distance}"
    return f"duplicate of {pair.original_path} ({pair.original_split}; {how})"


class DuplicateIndex:
    """The images seen so far, by digest and by hash band; the pairs found.

    Add images in plan order: `add` pairs each with an earlier image. Per band,
    a table of 2**width flags says which keys hold any image, so a query picks
    the occupied ones among a key's neighbours in one numpy step, and the
    candidates' distances are computed together.
    """

    def __init__(self, drop: bool = False, threshold: int = THRESHOLD, bands: int = NUM_BANDS):
        self.drop = drop
        self.threshold = threshold
        edges = [round(i * HASH_BITS / bands) for i in range(bands + 1)]
        self._shifts = edges[:-1]
        self._masks = [(1 << (end - start)) - 1 for start, end in zip(edges, edges[1:])]
        self._flips = [_flips(mask.bit_length(), threshold // bands) for mask in self._masks]
        self._occupied = [np.zeros(mask + 1, np.bool_) for mask in self._masks]
        self._bands: list[dict[int, list[int]]] = [{} for _ in range(bands)]
        self._by_digest: dict[str, int] = {}  # digest -> its first image
        self._images: list[tuple[str, str]] = []  # (path, split) by index
        self._hashes = np.zeros(1024, np.uint64)  # by index; grown by doubling
        self.pairs: list[schema.DuplicatePair] = []
        self.sizes: list[tuple[int, int]] = []  # (height, width) of every image added

    def add(self, path: str, split: str, print_: Fingerprint) -> schema.DuplicatePair | None:
        """Adds one image; returns the pair it makes with the earlier image it duplicates, or None."""
        self.sizes.append((print_.height, print_.width))
        pair = self._pair(path, split, print_)
        if pair is not None:
            self.pairs.append(pair)
        if pair is None or not self.drop:
            self._insert(path, split, print_, exact_seen=pair is not None and pair.identical)
        return pair

    def _keys(self, phash: int) -> list[int]:
        return [(phash >> shift) & mask for shift, mask in zip(self._shifts, self._masks)]

    def _candidates(self, phash: int) -> list[int]:
        """Indices of the images sharing a band with `phash` but for at most threshold // bands bits."""
        found: list[int] = []
        for band, key in enumerate(self._keys(phash)):
            neighbours = key ^ self._flips[band]
            for neighbour in neighbours[self._occupied[band][neighbours]].tolist():
                found += self._bands[band][neighbour]
        return found

    def _pair(self, path: str, split: str, print_: Fingerprint) -> schema.DuplicatePair | None:
        """The pair with the same bytes, else with the closest hash within the threshold (earliest of ties)."""
        first = self._by_digest.get(print_.digest)
        if first is not None:
            return schema.DuplicatePair(path, split, *self._images[first], 0, True)
        if print_.phash is None or not (candidates := self._candidates(print_.phash)):
            return None
        indices = np.array(candidates)  # an image may come from several bands
        distances = np.bitwise_count(self._hashes[indices] ^ np.uint64(print_.phash))
        closest = int(distances.min())
        if closest > self.threshold:
            return None
        first = int(indices[distances == closest].min())  # the earliest of the closest
        return schema.DuplicatePair(path, split, *self._images[first], closest, False)

    def _insert(self, path: str, split: str, print_: Fingerprint, exact_seen: bool) -> None:
        """Files under the digest and the bands; an exact copy only counts as its first (earlier) one."""
        if exact_seen:
            return  # its bytes, hence its hash, are in already, under an earlier image
        index = len(self._images)
        self._images.append((path, split))
        self._by_digest[print_.digest] = index
        if print_.phash is None:
            return
        if index == len(self._hashes):
            self._hashes = np.concatenate([self._hashes, np.zeros_like(self._hashes)])
        self._hashes[index] = print_.phash
        for band, key in enumerate(self._keys(print_.phash)):
            self._bands[band].setdefault(key, []).append(index)
            self._occupied[band][key] = True

    def replay(self, split: str, fingerprints: tuple[tuple[str, Fingerprint], ...]) -> None:
        """Adds a finished shard's images again, in order (a kept or a Beam-written shard)."""
        for path, print_ in fingerprints:
            self.add(path, split, print_)


SUMMARY_PAIRS = 5  # pairs the summary names; manifest.json lists them all


def summary_lines(pairs: tuple[schema.DuplicatePair, ...], mode: DuplicateMode) -> list[str]:
    """The conversion summary's lines on duplicates: counts, what was done, the first pairs."""
    identical = sum(pair.identical for pair in pairs)
    done = "dropped (the first copy kept)" if mode is DuplicateMode.DROP else "kept; --duplicates=drop keeps the first"
    lines = [
        f"  duplicates {len(pairs):>7} pairs ({identical} byte-identical, {len(pairs) - identical} near, "
        f"perceptual hash distance <= {THRESHOLD}){', ' + done if pairs else ''}"
    ]
    for pair in pairs[:SUMMARY_PAIRS]:
        how = "identical" if pair.identical else f"distance {pair.distance}"
        lines.append(f"    {pair.path} = {pair.original_path} ({how})")
    if len(pairs) > SUMMARY_PAIRS:
        lines.append(f"    ... {len(pairs) - SUMMARY_PAIRS} more in manifest.json")
    return lines
