"""The duplicate search's cost at conversion, part by part (`bench_convert.py`).

Two whole conversions, with and without the search, differ by less than
their run-to-run spread on a shared machine; so the parts are timed alone:
the fingerprint the decoders take per photo (`hashing_ms`, also at other
photo sizes), and the index the writer keeps.
"""

from __future__ import annotations

import dataclasses
import io
import random
import time
from collections.abc import Sequence

from PIL import Image

from pipeline.converter import duplicates
from pipeline.converter import sources


@dataclasses.dataclass(frozen=True)
class SearchCost:
    """The duplicate search's parts, measured alone (steadier than two whole conversions).

    Attributes:
      hash_ms: CPU milliseconds of `duplicates.fingerprint` per decoded photo
        (the decoders' share), over the distinct photos.
      index_seconds: `DuplicateIndex` over the large folder's fingerprints in
        its order (copies: most are found by their digest).
      index_seconds_distinct: the same number of distinct random hashes, the
        worst case for the bands (each with a photo's thumbnail, for the
        candidates a random hash meets).
      index_seconds_photos: the index over the distinct photos once, with the
        candidates real photos' hashes meet and their confirmation.
    """

    images: int
    workers: int
    hash_ms: float
    index_seconds: float
    index_seconds_distinct: float
    index_seconds_photos: float = 0.0

    def added_seconds(self, distinct: bool = False) -> float:
        """Wall seconds the search adds: the hashing spread over the decoders, the index in the writer."""
        index = self.index_seconds_distinct if distinct else self.index_seconds
        return self.images * self.hash_ms / 1000 / self.workers + index


def _decoded(path: str, long_side: int | None) -> tuple[bytes, Image.Image]:
    """A photo's bytes and pixels; resized to `long_side` pixels and saved again (quality 90) if given."""
    with open(path, "rb") as f:
        data = f.read()
    if long_side is not None:
        with Image.open(io.BytesIO(data)) as image:
            scale = long_side / max(image.size)
            resized = image.convert("RGB").resize((round(image.width * scale), round(image.height * scale)))
        out = io.BytesIO()
        resized.save(out, format="JPEG", quality=90)
        data = out.getvalue()
    pixels = Image.open(io.BytesIO(data))
    pixels.load()
    return data, pixels


def fingerprints(
    originals: Sequence[sources.SourceImage], long_side: int | None = None
) -> tuple[list[duplicates.Fingerprint], float]:
    """The photos' fingerprints, and the CPU milliseconds each took (the decode apart), on
    average; the photos resized to `long_side` pixels first if given. Decoded one at a time:
    the benchmark's memory figures come later."""
    prints, seconds = [], 0.0
    for image in originals:
        data, pixels = _decoded(image.path, long_side)
        with pixels:
            started = time.process_time()
            prints.append(duplicates.fingerprint(data, pixels))
            seconds += time.process_time() - started
    return prints, seconds / len(prints) * 1000


def index_seconds(prints: Sequence[duplicates.Fingerprint]) -> float:
    """CPU seconds of a `DuplicateIndex` adding `prints` in order, then its pairs read."""
    index, started = duplicates.DuplicateIndex(), time.process_time()
    for number, print_ in enumerate(prints):
        index.add(str(number), "train", print_)
    _ = index.pairs  # reading them searches the last batch
    return time.process_time() - started


def random_fingerprints(
    photos: Sequence[duplicates.Fingerprint], count: int, seed: int = 0
) -> list[duplicates.Fingerprint]:
    """`count` distinct fingerprints of random hashes (each band's uncertain bits random too),
    with the photos' thumbnails in turn."""
    rng, hashed = random.Random(seed), [print_ for print_ in photos if print_.phash is not None]
    bands = range(duplicates.NUM_BANDS)
    out = []
    for number in range(count):
        bits = [band * duplicates.BAND_BITS + bit for band in bands
                for bit in rng.sample(range(duplicates.BAND_BITS), duplicates.UNCERTAIN_BITS)]
        thumbnail = hashed[number % len(hashed)].thumbnail
        uncertain = sum(1 << bit for bit in bits)
        out.append(duplicates.Fingerprint(f"{number:064x}", rng.getrandbits(64), 1, 1, thumbnail, uncertain))
    return out


def measure(originals: Sequence[sources.SourceImage], images: int, workers: int) -> SearchCost:
    """Times the search's parts for a folder of `images` copies of `originals`, in turn (see SearchCost)."""
    prints, hash_ms = fingerprints(originals)
    copies = index_seconds([prints[number % len(prints)] for number in range(images)])
    distinct = index_seconds(random_fingerprints(prints, images))
    return SearchCost(images, workers, hash_ms, copies, distinct, index_seconds(prints))


def hashing_table(
    originals: Sequence[sources.SourceImage], long_sides: Sequence[int | None]
) -> dict[int | None, float]:
    """Long side in pixels (None: as they are) -> CPU ms of a fingerprint per photo, the photos resized to it."""
    return {side: fingerprints(originals, side)[1] for side in long_sides}

