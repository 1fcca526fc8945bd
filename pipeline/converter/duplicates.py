"""Duplicate images found at conversion: byte-identical files and near-duplicates.

    decode worker:  file bytes + the image it loaded --fingerprint--> Fingerprint
                    (a SHA-256 of the bytes; a 24x24 grey thumbnail and its 64-bit perceptual hash)
    writer, in plan order (train, validation, test; shards in order):
                    DuplicateIndex.add(path, split, fingerprint), then .pairs
                    (with --duplicates=drop, add returns the image's pair at once)

The hash only proposes, the thumbnails decide. Candidates: earlier images
whose hash is within HASH_RADIUS bits of the new one's, found without
comparing all pairs: the hash is cut into 4 bands of 16 bits, and the
earlier images are filed by each band's value. A new image looks up, in
each band, every value within EXACT_BITS bits of its own (so every hash
within 11 bits is found: pigeonhole), and the values 3 bits away among the
band's UNCERTAIN_BITS least certain bits (those whose DCT coefficients lie
nearest the median: where a copy's bits flip). Its `likeness.Judge` then
scores the candidates, closest hash first (the earliest of ties), until one
is confirmed: the copy it is paired with.

Each image that matches an earlier one is paired with the one earlier image
it matches: byte-identical first, else that confirmed candidate. So k copies
of a photo give k-1 pairs, not k(k-1)/2. With `drop`, a duplicate is not
added to the index: every pair then names an image that the records keep.
"""

from __future__ import annotations

import base64
import dataclasses
import enum
import hashlib
import itertools
from typing import Any

import numpy as np
from PIL import Image

from pipeline import schema
from pipeline.converter import likeness
from pipeline.converter.likeness import THUMBNAIL_SIZE

HASH_BITS = 64
# Hash distance (bits) of a candidate. A pHash has 32 bits set, so distances are even. Of
# copies of the 2,000 photos cropped 4%, 99.5% were within 14, 93% within 10 (the old
# threshold); resized or brightened copies within 6 (BUILD.md, "Duplicates").
HASH_RADIUS = 14
NUM_BANDS, BAND_BITS = 4, 16
# The keys looked up per band: within 2 bits (137), and 3 of its 6 least certain bits (20).
# All keys within 3 bits (697) found the same crops, at 4 times the index's time.
EXACT_BITS = 2
UNCERTAIN_BITS = 6
# Candidates judged per image, the closest hashes first: in a folder of one layout (a fixed
# camera) hundreds are; a copy is among the closest (BUILD.md, "Duplicates").
CANDIDATE_LIMIT = 16
# Images searched together (without drop), and hashes compared one by one before
# they are filed in the band tables: one numpy pass per batch, not per image.
BATCH = 256
RECENT_LIMIT = 1024
_DCT_KEPT = 8  # the 8x8 lowest frequencies: 64 bits
# A flat image's hash bits are rounding noise (every flat colour would match
# every other): a thumbnail spanning fewer grey levels gets none, only its digest.
FLAT_RANGE = 8


def _dct_rows(n: int, kept: int) -> np.ndarray:
    """The first `kept` rows of the (unnormalised, scipy's) DCT-II matrix of size n."""
    k, i = np.arange(kept)[:, None], np.arange(n)[None, :]
    return (2 * np.cos(np.pi * k * (2 * i + 1) / (2 * n))).astype(np.float32)


# D @ X @ D.T of the thumbnail X, raveled, as one [64, 576] matrix times X raveled: one numpy call.
_DCT = np.kron(_dct_rows(THUMBNAIL_SIZE, _DCT_KEPT), _dct_rows(THUMBNAIL_SIZE, _DCT_KEPT))
_MIDDLE = HASH_BITS // 2
_KEY_MASK = (1 << BAND_BITS) - 1
_SHIFTS = np.arange(NUM_BANDS, dtype=np.uint64) * np.uint64(BAND_BITS)
_TRIPLES = np.array(list(itertools.combinations(range(UNCERTAIN_BITS), EXACT_BITS + 1)))


class DuplicateMode(str, enum.Enum):
    """What the converter does about duplicates: list them, drop the later copies, or not look."""

    REPORT = "report"
    DROP = "drop"
    OFF = "off"


@dataclasses.dataclass(frozen=True)
class Fingerprint:
    """What the duplicate search needs of one source image (about 700 bytes pickled).

    Attributes:
      digest: hex SHA-256 of the file's bytes.
      phash: 64-bit perceptual hash of its thumbnail; None for a flat image.
      height, width: the source image's original size in pixels.
      thumbnail: uint8 [THUMBNAIL_SIZE, THUMBNAIL_SIZE] grey thumbnail, row-major
        bytes (`likeness.thumbnail`); None for a flat image.
      uncertain: a mask of `phash`'s bits that a copy's are likeliest to differ
        in: of each band, the UNCERTAIN_BITS whose coefficients lie nearest the
        median. None for a flat image.
    """

    digest: str
    phash: int | None
    height: int
    width: int
    thumbnail: bytes | None = None
    uncertain: int | None = None


def perceptual_hash(pixels: np.ndarray) -> tuple[int, int] | None:
    """(the 64-bit pHash of a uint8 thumbnail [n, n], its uncertain bits); None if it is flat.

    Bit 63 - i of the hash is set where the i-th of the 8x8 lowest DCT
    coefficients (row-major) is above their median; the uncertain bits are,
    of each band, the UNCERTAIN_BITS whose coefficients lie nearest it.
    """
    if int(pixels.max()) - int(pixels.min()) < FLAT_RANGE:
        return None
    low = _DCT @ pixels.ravel().astype(np.float32)
    ordered = np.sort(low)  # a fifth of np.partition's time for 64 values
    centred = low - (ordered[_MIDDLE - 1] + ordered[_MIDDLE]) / 2
    # Coefficients 16b to 16b + 15 make one band (hash bits 63 - 16b down to 48 - 16b).
    margins = np.abs(centred).reshape(NUM_BANDS, BAND_BITS)
    ranks = np.argsort(np.argsort(margins, axis=1, kind="stable"), axis=1)  # 0: nearest the median
    bits = np.packbits(np.concatenate([centred > 0, ranks.ravel() < UNCERTAIN_BITS]))
    return int.from_bytes(bits[:8].tobytes(), "big"), int.from_bytes(bits[8:].tobytes(), "big")


def reachable(differences: np.ndarray, uncertain: int) -> np.ndarray:
    """bool [c]: whether the index's look-ups reach hashes that differ from a new one's
    by uint64 `differences` [c], given its uncertain bits."""
    parts = (differences[:, None] >> _SHIFTS) & np.uint64(_KEY_MASK)  # [c, bands]
    certain = (np.uint64(~uncertain & (2**HASH_BITS - 1)) >> _SHIFTS) & np.uint64(_KEY_MASK)
    counts = np.bitwise_count(parts)
    return ((counts <= EXACT_BITS) | ((counts == EXACT_BITS + 1) & (parts & certain == 0))).any(axis=1)


def fingerprint(data: bytes, image: Image.Image) -> Fingerprint:
    """The Fingerprint of a file's bytes and the image loaded from them (in a decode worker)."""
    pixels = likeness.thumbnail(image)
    phash, uncertain = perceptual_hash(pixels) or (None, None)
    kept = None if phash is None else pixels.tobytes()
    return Fingerprint(hashlib.sha256(data).hexdigest(), phash, image.height, image.width, kept, uncertain)


def fingerprint_to_json(value: Fingerprint) -> list[Any]:
    """A row, [digest, phash, height, width, thumbnail in base64, uncertain]: a shard's sidecar holds one per image."""
    pixels = None if value.thumbnail is None else base64.b64encode(value.thumbnail).decode("ascii")
    return [value.digest, value.phash, value.height, value.width, pixels, value.uncertain]


def fingerprint_from_json(row: list[Any]) -> Fingerprint:
    """The Fingerprint of a row. ValueError for a row of four (an older converter's sidecar,
    whose hash was of another thumbnail): `resume` then writes that shard again."""
    digest, phash, height, width, pixels, uncertain = row
    kept = None if pixels is None else base64.b64decode(pixels)
    whole = (int(value) if value is not None else None for value in (phash, uncertain))
    return Fingerprint(str(digest), next(whole), int(height), int(width), kept, next(whole))


def _flips(width: int, radius: int) -> np.ndarray:
    """Every mask of at most `radius` set bits among `width`: XORed with a key, its neighbours."""
    return np.array([
        sum(1 << bit for bit in bits) for r in range(radius + 1) for bits in itertools.combinations(range(width), r)
    ], np.int64)


_EXACT_FLIPS = _flips(BAND_BITS, EXACT_BITS)
_SLOTS = _KEY_MASK + 2  # a band's slots in the table: one per key, and where its last run ends


def distance(a: int, b: int) -> int:
    """Hamming distance of two hashes: the bits that differ."""
    return (a ^ b).bit_count()


def _how(pair: schema.DuplicatePair) -> str:
    return "identical" if pair.identical else f"hash distance {pair.distance}, similarity {pair.score:.2f}"


def reason(pair: schema.DuplicatePair) -> str:
    """A dropped copy's skip reason: the file it copies, and how close."""
    return f"duplicate of {pair.original_path} ({pair.original_split}; {_how(pair)})"


class DuplicateIndex:
    """The images seen so far, by digest and by hash band; the pairs found.

    Add images in plan order: each is paired with an earlier image. Without
    `drop`, images wait in batches of BATCH and each batch is searched in a
    few numpy steps; reading `pairs` searches the last one. With `drop`,
    `add` answers at once (the writer must know whether to skip the image).

    The hashes added before the last RECENT_LIMIT or so sit in one table
    (image ids sorted by band, then band key, and where each key's run
    starts); the recent ones in an array compared with every new hash
    (`reachable`: the rule the table's look-ups follow). A batch looks up all
    its keys in the table at once. The candidates' thumbnails decide (`likeness.Judge`).
    """

    def __init__(self, drop: bool = False):
        self.drop = drop
        self._by_digest: dict[str, int] = {}  # digest -> its first image
        self._images: list[tuple[str, str]] = []  # (path, split) by id
        self._hashes = np.zeros(1024, np.uint64)  # by id; grown by doubling
        self._thumbnails = np.zeros((1024, THUMBNAIL_SIZE, THUMBNAIL_SIZE), np.uint8)  # likewise
        # The table: the tabled ids sorted by band, then key; each slot's first position.
        self._tabled = np.zeros(0, np.int64)
        self._sorted_ids = np.zeros(0, np.int64)
        self._starts = np.zeros(NUM_BANDS * _SLOTS, np.int32)  # positions: bands x images
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
        # A copy of known bytes pairs by its digest: no look-ups (the folders of copies are fast).
        near = [i for i, (_, _, p) in enumerate(pending) if p.phash is not None and p.digest not in self._by_digest]
        hashes = np.array([pending[i][2].phash for i in near], np.uint64)
        uncertain = np.array([pending[i][2].uncertain for i in near], np.uint64)
        rows, ids, distances = self._tabled_candidates(hashes, uncertain)
        cuts = np.searchsorted(rows, np.arange(len(near) + 1))
        tabled = {i: (ids[cuts[n]:cuts[n + 1]], distances[cuts[n]:cuts[n + 1]]) for n, i in enumerate(near)}
        found = []
        for i, (path, split, print_) in enumerate(pending):
            pair = self._pair(path, split, print_, tabled.get(i))
            found.append(pair)
            if pair is not None:
                self._pairs.append(pair)
            if pair is None or not (self.drop or pair.identical):
                self._insert(path, split, print_)  # an exact copy only counts as its first (earlier) one
        if self._num_recent >= RECENT_LIMIT:
            self._table_recent()
        return found

    def _tabled_candidates(self, hashes: np.ndarray, uncertain: np.ndarray) -> tuple[np.ndarray, ...]:
        """int64 [c] each (row of `hashes`, id, distance): the tabled images the look-ups of
        each uint64 hash reach (given its uncertain bits) within HASH_RADIUS, by row, then id."""
        none = np.zeros(0, np.int64)
        if not len(hashes) or not len(self._tabled):
            return none, none, none
        keys = self._keys(hashes)[:, :, None]  # [images, bands, 1]
        bits = self._keys(uncertain)[:, :, None] >> np.arange(BAND_BITS) & 1  # [images, bands, band bits]
        positions = np.argsort(-bits, axis=2, kind="stable")[:, :, :UNCERTAIN_BITS]  # the set ones
        triples = (1 << positions[:, :, _TRIPLES]).sum(axis=3)  # [images, bands, 20]
        slots = np.concatenate([keys ^ _EXACT_FLIPS, keys ^ triples], axis=2) + _SLOTS * np.arange(NUM_BANDS)[:, None]
        slots = slots.reshape(len(hashes), -1)
        first = self._starts[slots].ravel()
        counts = self._starts[slots + 1].ravel() - first
        total = int(counts.sum())
        if not total:
            return none, none, none
        rows = np.repeat(np.arange(len(hashes)), counts.reshape(len(hashes), -1).sum(axis=1))
        # Each slot's run of ids: its first position, then one more per candidate.
        ids = self._sorted_ids[np.repeat(first - (np.cumsum(counts) - counts), counts) + np.arange(total)]
        distances = np.bitwise_count(self._hashes[ids] ^ hashes[rows]).astype(np.int64)
        near = np.flatnonzero(distances <= HASH_RADIUS)
        if not len(near):
            return none, none, none
        rows, ids, distances = rows[near], ids[near], distances[near]
        once = np.unique(rows * len(self._images) + ids, return_index=True)[1]  # one row, one id: found in one band
        return rows[once], ids[once], distances[once]

    def _pair(
        self, path: str, split: str, print_: Fingerprint, tabled: tuple[np.ndarray, ...] | None
    ) -> schema.DuplicatePair | None:
        """The pair with the same bytes, else with the closest confirmed candidate (the earliest of ties)."""
        first = self._by_digest.get(print_.digest)
        if first is not None:
            return schema.DuplicatePair(path, split, *self._images[first], 0, True, 1.0)
        if tabled is None:  # a flat image: no hash
            return None
        ids, distances = tabled
        if self._num_recent:  # all later than the tabled ones
            differences = self._recent_hashes[:self._num_recent] ^ np.uint64(print_.phash)
            recent = np.bitwise_count(differences)
            near = np.flatnonzero(recent <= HASH_RADIUS)
            if len(near):
                near = near[reachable(differences[near], print_.uncertain)]
            ids = np.concatenate([ids, self._recent_ids[near]])
            distances = np.concatenate([distances, recent[near].astype(np.int64)])
        if not len(ids):
            return None
        order = np.lexsort((ids, distances))[:CANDIDATE_LIMIT]  # closest first, then earliest
        ids, distances = ids[order], distances[order]
        copy = likeness.Judge(_pixels(print_)).first_copy(self._thumbnails[ids])
        if copy is None:
            return None
        best, score = copy
        return schema.DuplicatePair(path, split, *self._images[ids[best]], int(distances[best]), False, round(score, 3))

    def _insert(self, path: str, split: str, print_: Fingerprint) -> None:
        """Files the image under its digest and, with a hash, among the recent ones."""
        index = len(self._images)
        self._images.append((path, split))
        self._by_digest[print_.digest] = index
        if print_.phash is None:
            return
        if index == len(self._hashes):
            self._hashes = np.concatenate([self._hashes, np.zeros_like(self._hashes)])
            self._thumbnails = np.concatenate([self._thumbnails, np.zeros_like(self._thumbnails)])
        self._hashes[index], self._thumbnails[index] = print_.phash, _pixels(print_)
        self._recent_ids[self._num_recent], self._recent_hashes[self._num_recent] = index, print_.phash
        self._num_recent += 1

    def _table_recent(self) -> None:
        """Moves the recent ids into the band tables (rebuilt: a counting sort per band)."""
        self._tabled = np.concatenate([self._tabled, self._recent_ids[:self._num_recent]])
        self._num_recent = 0
        keys = self._keys(self._hashes[self._tabled]).astype(np.uint16)  # 16 bits: a radix sort
        sorted_ids, starts = [], []
        for band in range(NUM_BANDS):
            sorted_ids.append(self._tabled[np.argsort(keys[:, band], kind="stable")])
            counts = np.bincount(keys[:, band], minlength=_KEY_MASK + 1)
            starts.append(band * len(self._tabled) + np.concatenate([[0], np.cumsum(counts)]))
        self._sorted_ids, self._starts = np.concatenate(sorted_ids), np.concatenate(starts).astype(np.int32)

    def _keys(self, hashes: np.ndarray) -> np.ndarray:
        """int64 [images, bands]: each hash's band keys."""
        return ((hashes[:, None] >> _SHIFTS) & np.uint64(_KEY_MASK)).astype(np.int64)

    def replay(self, split: str, fingerprints: tuple[tuple[str, Fingerprint], ...]) -> None:
        """Adds a finished shard's images again, in order (a kept or a Beam-written shard)."""
        for path, print_ in fingerprints:
            self.add(path, split, print_)


def _pixels(print_: Fingerprint) -> np.ndarray:
    """uint8 [THUMBNAIL_SIZE, THUMBNAIL_SIZE]: a fingerprint's thumbnail."""
    return np.frombuffer(print_.thumbnail, np.uint8).reshape(THUMBNAIL_SIZE, THUMBNAIL_SIZE)


SUMMARY_PAIRS = 5  # pairs the summary names; manifest.json lists them all


def summary_lines(pairs: tuple[schema.DuplicatePair, ...], mode: DuplicateMode) -> list[str]:
    """The conversion summary's lines on duplicates: counts, what was done, the first pairs."""
    identical = sum(pair.identical for pair in pairs)
    done = "dropped (the first copy kept)" if mode is DuplicateMode.DROP else "kept; --duplicates=drop keeps the first"
    lines = [
        f"  duplicates {len(pairs):>7} {'pair' if len(pairs) == 1 else 'pairs'} ({identical} byte-identical, "
        f"{len(pairs) - identical} near: hash distance <= {HASH_RADIUS}, similarity >= {likeness.SIMILARITY})"
        f"{', ' + done if pairs else ''}"
    ]
    for pair in pairs[:SUMMARY_PAIRS]:
        lines.append(f"    {pair.path} = {pair.original_path} ({_how(pair)})")
    if len(pairs) > SUMMARY_PAIRS:
        lines.append(f"    ... {len(pairs) - SUMMARY_PAIRS} more in manifest.json")
    return lines
