"""pipeline.plots: the image grid shows every image, in order, in its own tile."""

from __future__ import annotations

import numpy as np
import pytest
from PIL import Image

from support.images import PALETTE
from pipeline import plots

ROWS, COLS = 4, 5


def _centres(png: str, colours: np.ndarray) -> list[tuple[float, float]]:
    """(row, column) centre of the pixels of each colour in the PNG, as fractions of its size."""
    pixels = np.asarray(Image.open(png).convert("RGB"), np.int16)
    centres = []
    for colour in colours:
        rows, cols = np.nonzero(np.abs(pixels - colour).max(axis=-1) <= 2)
        assert rows.size > 0.5 * (pixels.shape[0] / ROWS / 2) * (pixels.shape[1] / COLS / 2), colour
        centres.append((rows.mean() / pixels.shape[0], cols.mean() / pixels.shape[1]))
    return centres


@pytest.mark.parametrize("count, size", [(20, 32), (7, 150)])
def test_each_image_fills_its_tile_in_row_major_order(tmp_path, count, size):
    colours = np.array(PALETTE[:count], np.int16)
    images = np.broadcast_to(colours[:, None, None, :] / 255.0, (count, size, size, 3))
    png = plots.plot_image_grid(images, [f"image {i}" for i in range(count)], str(tmp_path / "grid.png"), suptitle="t")
    centres = _centres(png, colours)
    for i, (row, col) in enumerate(centres):
        assert int(row * ROWS) == i // COLS and int(col * COLS) == i % COLS, (i, row, col)
