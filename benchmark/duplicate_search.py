"""The duplicate search's cost at conversion, part by part (`bench_convert.py`).

Two whole conversions, with and without the search, differ by less than
their run-to-run spread on a shared machine; so the parts are timed alone:
the hashing the decoders do per photo, and the index the writer keeps.
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
        worst case for the bands.
    """

    images: int
    workers: int
    hash_ms: float
    index_seconds: float
    index_seconds_distinct: float

    def added_seconds(self, distinct: bool = False) -> float:
        """Wall seconds the search adds: the hashing spread over the decoders, the index in the writer."""
        index = self.index_seconds_distinct if distinct else self.index_seconds
        return self.images * self.hash_ms / 1000 / self.workers + index


def measure(originals: Sequence[sources.SourceImage], images: int, workers: int) -> SearchCost:
    """Times the search's parts for a folder of `images` copies of `originals`, in turn (see SearchCost)."""
    prints, seconds = [], 0.0
    for image in originals:  # decoded one at a time: the benchmark's memory figures come later
        with open(image.path, "rb") as f:
            data = f.read()
        with Image.open(io.BytesIO(data)) as pixels:
            pixels.load()
            started = time.process_time()
            prints.append(duplicates.fingerprint(data, pixels))
            seconds += time.process_time() - started
    index, started = duplicates.DuplicateIndex(), time.process_time()
    for number in range(images):
        index.add(str(number), "train", prints[number % len(prints)])
    _ = index.pairs  # reading them searches the last batch
    index_seconds = time.process_time() - started
    rng = random.Random(0)
    distinct = [duplicates.Fingerprint(f"{n:064x}", rng.getrandbits(64), 1, 1) for n in range(images)]
    index, started = duplicates.DuplicateIndex(), time.process_time()
    for number, print_ in enumerate(distinct):
        index.add(str(number), "train", print_)
    _ = index.pairs
    return SearchCost(images, workers, seconds / len(prints) * 1000, index_seconds, time.process_time() - started)
