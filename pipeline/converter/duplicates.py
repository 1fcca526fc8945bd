"""Duplicate images found at conversion: byte-identical files and near-duplicates.

    decode worker:  file bytes + the image it loaded --fingerprint--> Fingerprint
                    (a SHA-256 of the bytes; a 64-bit perceptual hash of a 32x32 thumbnail)
    writer, in plan order (train, validation, test; shards in order):
                    DuplicateIndex.add(path, split, fingerprint), then .pairs
                    (with --duplicates=drop, add returns the image's pair at once)

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
# bits of one of NUM_BANDS bands. 4 bands of 16 bits: 137 neighbours per key (3 bands of
# 21-22 bits: 1,562), tables of 65,536 keys (BUILD.md, "Duplicates").
NUM_BANDS = 4
# Images searched together (without drop), and hashes compared one by one before
# they are filed in the band tables: one numpy pass per batch, not per image. For
# 25,000 distinct hashes 256 and 1,024 took 0.6 s, 512 and 512 1.1 s, 2,048 and 2,048 1.1 s.
BATCH = 256
RECENT_LIMIT = 1024
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


# D @ X @ D.T of the 32x32 thumbnail X, raveled, as one [64, 1024] matrix times X raveled:
# one numpy call (the same bits on the 2,000 photos, 0.05 ms less per photo).
_DCT = np.kron(_dct_rows(THUMBNAIL_SIZE, _DCT_KEPT), _dct_rows(THUMBNAIL_SIZE, _DCT_KEPT))
_MIDDLE = HASH_BITS // 2


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
    low = _DCT @ np.frombuffer(thumbnail.tobytes(), np.uint8).astype(np.float32)
    ordered = np.sort(low)  # a fifth of np.partition's time for 64 values
    middle = (ordered[_MIDDLE - 1] + ordered[_MIDDLE]) / 2  # the median of the 64
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

    Add images in plan order: each is paired with an earlier image. Without
    `drop`, images wait in batches of BATCH and each batch is searched in a
    few numpy steps; reading `pairs` searches the last one. With `drop`,
    `add` answers at once (the writer must know whether to skip the image).

    The hashes added before the last RECENT_LIMIT or so sit in one table
    (image ids sorted by band, then band key, and where each key's run
    starts); the recent ones in an array compared with every new hash. A
    batch looks up all its band keys' neighbours in the table at once.
    """

    def __init__(self, drop: bool = False, threshold: int = THRESHOLD, bands: int = NUM_BANDS):
        self.drop = drop
        self.threshold = threshold
        edges = [round(i * HASH_BITS / bands) for i in range(bands + 1)]
        self._masks = [(1 << (end - start)) - 1 for start, end in zip(edges, edges[1:])]
        self._band_shifts = np.array(edges[:-1], np.uint64)
        self._band_masks = np.array(self._masks, np.uint64)
        flips = [_flips(mask.bit_length(), threshold // bands) for mask in self._masks]
        # One table for all bands: band b's key k at slot base[b] + k (each band's run ends at its last key + 1).
        base = np.cumsum([0] + [mask + 2 for mask in self._masks])
        self._flip_band = np.concatenate([np.full(len(f), band) for band, f in enumerate(flips)])
        self._flips = np.concatenate(flips)
        self._flip_base = base[:-1][self._flip_band]
        self._by_digest: dict[str, int] = {}  # digest -> its first image
        self._images: list[tuple[str, str]] = []  # (path, split) by id
        self._hashes = np.zeros(1024, np.uint64)  # by id; grown by doubling
        # The table: the tabled ids sorted by band, then key; each slot's first position.
        self._tabled = np.zeros(0, np.int64)
        self._sorted_ids = np.zeros(0, np.int64)
        self._starts = np.zeros(int(base[-1]), np.int32)  # positions: bands x images
        # Ids with a hash, not yet tabled, and their hashes: at most RECENT_LIMIT + BATCH.
        self._recent_ids = np.zeros(RECENT_LIMIT + BATCH, np.int64)
        self._recent_hashes = np.zeros(RECENT_LIMIT + BATCH, np.uint64)
        self._num_recent = 0
        self._pending: list[tuple[str, str, Fingerprint]] = []
        self._pairs: list[schema.DuplicatePair] = []
        self.sizes: list[tuple[int, int]] = []  # (height, width) of every image added

    def add(self, path: str, split: str, print_: Fingerprint) -> schema.DuplicatePair | None:
        """Adds one image. With `drop`: the pair it makes with an earlier image, or None. Else None."""
        self.sizes.append((print_.height, print_.width))
        self._pending.append((path, split, print_))
        if self.drop:
            return self._search()[0]
        if len(self._pending) >= BATCH:
            self._search()
        return None

    @property
    def pairs(self) -> list[schema.DuplicatePair]:
        """Every pair found, in the order of the later images."""
        self._search()
        return self._pairs

    def _search(self) -> list[schema.DuplicatePair | None]:
        """Pairs each waiting image, in order, as `add` one at a time would; returns what each made."""
        pending, self._pending = self._pending, []
        hashed = [i for i, (_, _, print_) in enumerate(pending) if print_.phash is not None]
        tabled = self._closest_tabled(np.array([pending[i][2].phash for i in hashed], np.uint64))
        closest_tabled = dict(zip(hashed, zip(*tabled)))
        found = []
        for i, (path, split, print_) in enumerate(pending):
            pair = self._pair(path, split, print_, closest_tabled.get(i))
            found.append(pair)
            if pair is not None:
                self._pairs.append(pair)
            if pair is None or not (self.drop or pair.identical):
                self._insert(path, split, print_)  # an exact copy only counts as its first (earlier) one
        if self._num_recent >= RECENT_LIMIT:
            self._table_recent()
        return found

    def _closest_tabled(self, hashes: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """For each hash, (distance, id) of the closest tabled image (the earliest of ties),
        or (threshold + 1, -1) when none is within the threshold."""
        best = np.full(len(hashes), self.threshold + 1, np.int64), np.full(len(hashes), -1, np.int64)
        if not len(hashes) or not len(self._tabled):
            return best
        keys = self._keys(hashes)  # [images, bands]
        slots = (keys[:, self._flip_band] ^ self._flips) + self._flip_base  # every band key's neighbours
        first = self._starts[slots].ravel()
        counts = self._starts[slots + 1].ravel() - first
        total = int(counts.sum())
        if not total:
            return best
        rows = np.repeat(np.arange(counts.size) // len(self._flips), counts)
        # Each slot's run of ids: its first position, then one more per candidate.
        ids = self._sorted_ids[np.repeat(first - (np.cumsum(counts) - counts), counts) + np.arange(total)]
        distances = np.bitwise_count(self._hashes[ids] ^ hashes[rows]).astype(np.int64)
        near = distances <= self.threshold
        rows, ids, distances = rows[near], ids[near], distances[near]
        order = np.lexsort((ids, distances, rows))  # by image, then closest, then earliest
        rows, ids, distances = rows[order], ids[order], distances[order]
        first = np.ones(len(rows), np.bool_)
        first[1:] = rows[1:] != rows[:-1]
        best[0][rows[first]], best[1][rows[first]] = distances[first], ids[first]
        return best

    def _pair(
        self, path: str, split: str, print_: Fingerprint, tabled: tuple[int, int] | None
    ) -> schema.DuplicatePair | None:
        """The pair with the same bytes, else with the closest hash within the threshold (earliest of ties)."""
        first = self._by_digest.get(print_.digest)
        if first is not None:
            return schema.DuplicatePair(path, split, *self._images[first], 0, True)
        if tabled is None:  # a flat image: no hash
            return None
        closest, first = (int(value) for value in tabled)
        if self._num_recent:  # all later than the tabled ones: they win only when closer
            distances = np.bitwise_count(self._recent_hashes[:self._num_recent] ^ np.uint64(print_.phash))
            nearest = int(distances.argmin())  # the earliest of the closest
            if distances[nearest] < closest:
                closest, first = int(distances[nearest]), int(self._recent_ids[nearest])
        if closest > self.threshold:
            return None
        return schema.DuplicatePair(path, split, *self._images[first], closest, False)

    def _insert(self, path: str, split: str, print_: Fingerprint) -> None:
        """Files the image under its digest and, with a hash, among the recent ones."""
        index = len(self._images)
        self._images.append((path, split))
        self._by_digest[print_.digest] = index
        if print_.phash is None:
            return
        if index == len(self._hashes):
            self._hashes = np.concatenate([self._hashes, np.zeros_like(self._hashes)])
        self._hashes[index] = print_.phash
        self._recent_ids[self._num_recent], self._recent_hashes[self._num_recent] = index, print_.phash
        self._num_recent += 1

    def _table_recent(self) -> None:
        """Moves the recent ids into the band tables (rebuilt: a counting sort per band)."""
        self._tabled = np.concatenate([self._tabled, self._recent_ids[:self._num_recent]])
        self._num_recent = 0
        keys = self._keys(self._hashes[self._tabled])
        sorted_ids, starts = [], []
        for band, mask in enumerate(self._masks):
            band_keys = keys[:, band].astype(np.uint16 if mask < 2**16 else np.int64)  # 16 bits: a radix sort
            sorted_ids.append(self._tabled[np.argsort(band_keys, kind="stable")])
            counts = np.bincount(band_keys, minlength=mask + 1)
            starts.append(band * len(self._tabled) + np.concatenate([[0], np.cumsum(counts)]))
        self._sorted_ids, self._starts = np.concatenate(sorted_ids), np.concatenate(starts).astype(np.int32)

    def _keys(self, hashes: np.ndarray) -> np.ndarray:
        """int64 [images, bands]: each hash's band keys."""
        return ((hashes[:, None] >> self._band_shifts) & self._band_masks).astype(np.int64)

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
        f"  duplicates {len(pairs):>7} {'pair' if len(pairs) == 1 else 'pairs'} ({identical} byte-identical, "
        f"{len(pairs) - identical} near, "
        f"perceptual hash distance <= {THRESHOLD}){', ' + done if pairs else ''}"
    ]
    for pair in pairs[:SUMMARY_PAIRS]:
        how = "identical" if pair.identical else f"distance {pair.distance}"
        lines.append(f"    {pair.path} = {pair.original_path} ({how})")
    if len(pairs) > SUMMARY_PAIRS:
        lines.append(f"    ... {len(pairs) - SUMMARY_PAIRS} more in manifest.json")
    return lines
