"""records/data_report.png: what a new records set holds, to look at.

Class counts per split, the source images' original sizes (a scatter) and up
to PAIRS_SHOWN duplicate pairs side by side, their thumbnails read again from
the source files (`fileio`, so URLs work). Written into the scratch folder
before verification, so it is swapped in with the set (`out_dir`).
"""

from __future__ import annotations

import io
import os
from collections.abc import Sequence

import numpy as np
from PIL import Image

from pipeline import fileio
from pipeline import plots
from pipeline import schema
from pipeline.converter import out_dir

PAIRS_SHOWN = 8
THUMBNAIL_HEIGHT = 160  # pixels of each thumbnail; two side by side fill a quarter of the width
_PATH_PARTS = 3  # split/class/file: enough to find it, short enough for a caption


def _thumbnail(path: str) -> np.ndarray:
    """uint8 [THUMBNAIL_HEIGHT, W, 3] of a source image; grey if it no longer reads."""
    try:
        with Image.open(io.BytesIO(fileio.read_bytes(path))) as image:
            rgb = image.convert("RGB")
            width = max(1, round(rgb.width * THUMBNAIL_HEIGHT / rgb.height))
            return np.asarray(rgb.resize((width, THUMBNAIL_HEIGHT), Image.Resampling.BILINEAR))
    except (OSError, ValueError, Image.DecompressionBombError):
        return np.full((THUMBNAIL_HEIGHT, THUMBNAIL_HEIGHT, 3), 200, np.uint8)


def _short(path: str) -> str:
    """The last parts of a path: split/class/file."""
    return "/".join(path.replace("\\", "/").split("/")[-_PATH_PARTS:])


def _pair(pair: schema.DuplicatePair) -> plots.ImagePair:
    how = "identical" if pair.identical else f"distance {pair.distance}"
    if not pair.identical and pair.score is not None:  # None: a manifest from before the score
        how += f", similarity {pair.score:.2f}"
    caption = f"{_short(pair.path)}\n= {_short(pair.original_path)}\n({how})"
    return plots.ImagePair(_thumbnail(pair.path), _thumbnail(pair.original_path), caption)


def write(folder: str, manifest: schema.Manifest, sizes: Sequence[tuple[int, int]] | None) -> str:
    """Writes `folder`/data_report.png for `manifest`; returns its path.

    Args:
      sizes: (height, width) of every source image decoded, or None (not measured).
    """
    counts = {name: split.class_counts for name, split in manifest.splits.items()}
    pairs = [_pair(pair) for pair in manifest.duplicates[:PAIRS_SHOWN]]
    title = f"{manifest.dataset_name}: {sum(s.num_examples for s in manifest.splits.values()):,} images"
    if manifest.duplicates:
        title += f", {len(manifest.duplicates):,} duplicate pairs (first {len(pairs)} below: copy = original)"
    path = os.path.join(folder, out_dir.DATA_REPORT_FILENAME)
    return plots.plot_data_report(counts, sizes, pairs, path, title)
