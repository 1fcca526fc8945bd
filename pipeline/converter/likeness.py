"""How alike two photos look, from a small grey thumbnail of each: the duplicate search's judge.

`thumbnail` is taken in the decode workers (`duplicates.fingerprint`), from
the pixels they decode anyway. A `Judge` of a new image takes the
candidates its perceptual hash proposes (`duplicates.DuplicateIndex`), in
the order given, until one is confirmed (`first_copy`): `details`, cheap,
must pass the GATE (photos of one layout share no details), then
`similarity`, which allows for crops, must reach SIMILARITY. Both compare
the thumbnails high-passed: what is left when the layout, which the hash
has matched already, is taken away. Thresholds and what they rest on:
BUILD.md, "Duplicates".
"""

from __future__ import annotations

import dataclasses
import functools
import itertools

import numpy as np
from PIL import Image

# The thumbnail: larger images are sampled at SAMPLE_SIZE^2 points (nearest), then
# box-averaged 8x8: 64 samples a pixel, steady under resizing (4 aliased badly).
THUMBNAIL_SIZE = 24
SAMPLE_SIZE = 192
# The confirmation. Of 400 copies of each kind of the 2,000 photos (resized 80% at quality 80,
# brightened 12%, cropped 4%, all three) `details` gave >= 0.54, `similarity` >= 0.77; of the
# 1,823 pairs of distinct photos whose layouts (8x8 means) correlate >= 0.75, 2 reached 0.4
# in `details` (<= 0.43) and none 0.5 in `similarity` (BUILD.md, "Duplicates").
GATE = 0.4
SHIFT = 1  # pixels `details` moves a thumbnail either way: a crop of a few percent moves it about one
SIMILARITY = 0.7
HIGHPASS_SIGMA = 1.5  # thumbnail pixels: it keeps the details, which layouts alike do not share
# Faint details count as much as one strong edge (which two photos of a wall and a dark
# shape share): among 24,000 quarters of the photos, 25 pairs across photos without it, none so.
SPREAD_SIGMA, FLOOR = 3.0, 0.1
CROP_SCALES = (0.97, 0.94)  # windows: the whole side, and these fractions at its start, middle, end
CONFIRM_LIMIT = 8  # candidates past the gate scored per image at most: bounds the cost (0.05 ms each)


def _blur(n: int, sigma: float) -> np.ndarray:
    """float32 [n, n]: a Gaussian blur along one axis, edges repeated (scipy's mode='nearest')."""
    offsets = np.arange(-int(4 * sigma + 0.5), int(4 * sigma + 0.5) + 1)
    weights = np.exp(-0.5 * (offsets / sigma) ** 2)
    matrix = np.zeros((n, n))
    for offset, weight in zip(offsets, weights / weights.sum()):
        np.add.at(matrix, (np.arange(n), np.clip(np.arange(n) + offset, 0, n - 1)), weight)
    return matrix.astype(np.float32)


def _windows(n: int) -> np.ndarray:
    """float32 [K, n, n]: one axis of a thumbnail resampled (bilinear) onto each crop window."""
    matrices = [np.eye(n)]
    for scale, place in itertools.product(CROP_SCALES, (0.0, 0.5, 1.0)):
        at = np.clip((1 - scale) * place * n + scale * (np.arange(n) + 0.5) - 0.5, 0, n - 1)
        low = np.floor(at).astype(np.int64)
        matrix = np.zeros((n, n))
        np.add.at(matrix, (np.arange(n), low), 1 - (at - low))
        np.add.at(matrix, (np.arange(n), np.minimum(low + 1, n - 1)), at - low)
        matrices.append(matrix)
    return np.array(matrices, np.float32)


_BLUR = _blur(THUMBNAIL_SIZE, HIGHPASS_SIGMA)
_SPREAD = _blur(THUMBNAIL_SIZE, SPREAD_SIGMA)
_WINDOWS = _windows(THUMBNAIL_SIZE)


def _shift_sources(n: int) -> np.ndarray:
    """int64 [shifts, n*n]: for each shift up to SHIFT pixels, the pixel that moves to each pixel (n*n: none)."""
    rows, columns = np.divmod(np.arange(n * n), n)
    sources = []
    for dy, dx in itertools.product(range(-SHIFT, SHIFT + 1), repeat=2):
        inside = (0 <= rows - dy) & (rows - dy < n) & (0 <= columns - dx) & (columns - dx < n)
        sources.append(np.where(inside, (rows - dy) * n + columns - dx, n * n))
    return np.array(sources)


_SHIFT_SOURCES = _shift_sources(THUMBNAIL_SIZE)
_SHIFT_LANDS = (_SHIFT_SOURCES < THUMBNAIL_SIZE**2).astype(np.float32)  # [shifts, n*n]: 1 where a pixel lands
_GRAMS = (_WINDOWS.transpose(0, 2, 1) @ _WINDOWS).reshape(len(_WINDOWS), -1)  # W_l^T W_l, raveled


def thumbnail(image: Image.Image) -> np.ndarray:
    """uint8 [THUMBNAIL_SIZE, THUMBNAIL_SIZE]: a loaded Pillow image, grey, squeezed square."""
    if min(image.size) > SAMPLE_SIZE:  # 0.1-0.15 ms at any size, where a box filter of all took 0.3-12
        grey = image.resize((SAMPLE_SIZE, SAMPLE_SIZE), Image.Resampling.NEAREST).convert("L")
        small = grey.reduce(SAMPLE_SIZE // THUMBNAIL_SIZE)
    else:  # every pixel, by its area
        small = image.convert("L").resize((THUMBNAIL_SIZE, THUMBNAIL_SIZE), Image.Resampling.BOX)
    return np.frombuffer(small.tobytes(), np.uint8).reshape(THUMBNAIL_SIZE, THUMBNAIL_SIZE)


def _details(pixels: np.ndarray) -> np.ndarray:
    """float32 [..., n, n]: uint8 thumbnails' details: less their blur (`HIGHPASS_SIGMA`), each pixel
    divided by the details' strength around it (`SPREAD_SIGMA`) plus a FLOOR of their mean strength."""
    x = pixels.astype(np.float32)
    details = x - _BLUR @ x @ _BLUR.T
    squared = details * details
    around = _SPREAD @ squared @ _SPREAD.T + FLOOR * squared.mean(axis=(-2, -1), keepdims=True)
    return details / np.sqrt(np.maximum(around, 1e-12))


@dataclasses.dataclass(frozen=True)
class _Sides:
    """What `Judge.similarity` needs of m high-passed thumbnails X, for K one-axis windows W."""

    rows: np.ndarray  # [m, K, n*n]: W_k X
    columns: np.ndarray  # [m, K, n*n]: X W_l
    energies: np.ndarray  # [m, K, K]: |W_k X W_l^T|^2, at least 1e-12
    lengths: np.ndarray  # [m]: |X|, at least 1e-6


def _sides(x: np.ndarray) -> _Sides:
    """The _Sides of float32 [m, n, n]."""
    rows = _WINDOWS @ x[:, None]
    grams = (rows.transpose(0, 1, 3, 2) @ rows).reshape(len(x), len(_WINDOWS), -1)  # (W_k X)^T (W_k X)
    energies = np.maximum(np.einsum("mkp,lp->mkl", grams, _GRAMS), 1e-12)
    lengths = np.maximum(np.sqrt(np.einsum("mij,mij->m", x, x)), 1e-6)
    flat = (len(x), len(_WINDOWS), -1)
    return _Sides(rows.reshape(flat), (x[:, None] @ _WINDOWS).reshape(flat), energies, lengths)


class Judge:
    """One image's thumbnail, ready to be compared with others (what it needs of itself made once).

    `similarity` is the cosine of two high-passed thumbnails (the details that
    two photos of one layout do not share), the best of each crop window of
    one against the whole other, either way round (which one is the crop is
    not known). A window W_k A W_l^T (W the one-axis resamplings `_WINDOWS`)
    is never made: its product with B is <W_k A, B W_l>, its squared length
    <(W_k A)^T (W_k A), W_l^T W_l>: a quarter of the arithmetic.
    """

    def __init__(self, pixels: np.ndarray):
        """pixels: uint8 [THUMBNAIL_SIZE, THUMBNAIL_SIZE]."""
        self.pixels = pixels

    @functools.cached_property
    def _mine(self) -> np.ndarray:
        return _details(self.pixels)

    @functools.cached_property
    def _prepared(self) -> _Sides:
        return _sides(self._mine[None])

    def similarity(self, others: np.ndarray) -> np.ndarray:
        """float32 [m]: how alike this thumbnail and each of uint8 [m, n, n] are, -1 to 1."""
        return self._similarity(_details(others))

    def _similarity(self, details: np.ndarray) -> np.ndarray:
        """`similarity`, of others' `_details` [m, n, n]."""
        mine, theirs = self._prepared, _sides(details)
        # einsum, not BLAS: OpenBLAS would spread products this size over threads that spin
        mine_cropped = np.einsum("kp,mlp->mkl", mine.rows[0], theirs.columns) / (
            np.sqrt(mine.energies) * theirs.lengths[:, None, None])
        theirs_cropped = np.einsum("mkp,lp->mkl", theirs.rows, mine.columns[0]) / (
            np.sqrt(theirs.energies) * mine.lengths[0])
        return np.maximum(mine_cropped, theirs_cropped).reshape(len(details), -1).max(axis=1)

    def details(self, others: np.ndarray) -> np.ndarray:
        """float32 [m]: the best cosine of this thumbnail's details (`_details`) and each of uint8
        [m, n, n]'s, over shifts of up to SHIFT pixels either way (where they overlap)."""
        return self._shifted_cosines(_details(others))

    def _shifted_cosines(self, details: np.ndarray) -> np.ndarray:
        """`details`, of others' `_details` [m, n, n]."""
        shifted, lengths = self._shifted
        theirs = details.reshape(len(details), -1)
        products = np.einsum("kp,mp->mk", shifted, theirs)  # einsum, not BLAS: see `similarity`
        overlapping = np.einsum("kp,mp->mk", _SHIFT_LANDS, theirs * theirs)  # their squared length where mine lands
        return (products / np.sqrt(np.maximum(overlapping * lengths, 1e-12))).max(axis=1)

    @functools.cached_property
    def _shifted(self) -> tuple[np.ndarray, np.ndarray]:
        """float32 [shifts, n*n] and [shifts]: this thumbnail's details moved by each shift (zeros where
        nothing moved in), and their squared length."""
        shifted = np.append(self._mine.ravel(), np.float32(0))[_SHIFT_SOURCES]
        return shifted, np.einsum("kp,kp->k", shifted, shifted)

    def first_copy(self, others: np.ndarray) -> tuple[int, float] | None:
        """(index, similarity) of the first of uint8 thumbnails [m, n, n] whose `details` pass the
        GATE and whose `similarity` reaches SIMILARITY, of the first CONFIRM_LIMIT past the gate;
        None if none does."""
        details = _details(others)
        for index in np.flatnonzero(self._shifted_cosines(details) >= GATE)[:CONFIRM_LIMIT]:
            score = float(self._similarity(details[index:index + 1])[0])
            if score >= SIMILARITY:
                return int(index), score
        return None


def similarity(pixels: np.ndarray, others: np.ndarray) -> np.ndarray:
    """float32 [m]: `Judge.similarity` of uint8 thumbnails [n, n] and each of [m, n, n]."""
    return Judge(pixels).similarity(others)


def details(pixels: np.ndarray, others: np.ndarray) -> np.ndarray:
    """float32 [m]: `Judge.details` of uint8 thumbnails [n, n] and each of [m, n, n]."""
    return Judge(pixels).details(others)
