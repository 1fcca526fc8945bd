"""A small, deterministic, photo-like cats-vs-dogs stand-in, for the quick start.

A fresh machine has no Kaggle photos, so the README's main command generates
this sample instead: the users' layout, JPEGs of varied sizes, and two
classes a small CNN learns to tell apart in a few epochs ("cats": warm scenes
with round shapes; "dogs": cool scenes with bars)::

    sample/
      train/{cats,dogs}/*.jpg
      validation/{cats,dogs}/*.jpg
      test/{cats,dogs}/*.jpg

`make_sample.py` (or `tfr-sample`) writes it from the command line.
"""

from __future__ import annotations

import os
from collections.abc import Mapping

import numpy as np
from PIL import Image, ImageDraw, ImageFilter

DEFAULT_COUNTS = {"train": 100, "validation": 30, "test": 30}  # images per class
DEFAULT_OUT = "sample_data/cats_vs_dogs"
CLASS_NAMES = ("cats", "dogs")


def _background(rng: np.random.Generator, height: int, width: int, warm: bool) -> np.ndarray:
    """A lit, textured gradient: float32 [H, W, 3] in [0, 255]."""
    base = np.array([190, 120, 70] if warm else [70, 120, 190], np.float32)
    base = base + rng.normal(0, 20, 3)
    ys, xs = np.mgrid[0:height, 0:width].astype(np.float32)
    angle = rng.uniform(0, 2 * np.pi)
    ramp = (np.cos(angle) * xs / width + np.sin(angle) * ys / height)[..., None]
    noise = rng.normal(0, 12, (height, width, 3))
    return np.clip(base * (0.7 + 0.5 * ramp) + noise, 0, 255)


def sample_image(rng: np.random.Generator, label: int) -> Image.Image:
    """One photo-like RGB image of class `label` (0: cats, 1: dogs)."""
    height, width = int(rng.integers(120, 360)), int(rng.integers(120, 420))
    image = Image.fromarray(_background(rng, height, width, warm=label == 0).astype(np.uint8))
    draw = ImageDraw.Draw(image)
    for _ in range(int(rng.integers(2, 5))):
        colour = tuple(int(c) for c in rng.integers(0, 256, 3))
        x, y = rng.uniform(0, width), rng.uniform(0, height)
        size = rng.uniform(0.15, 0.35) * min(height, width)
        if label == 0:
            draw.ellipse([x - size, y - size * 0.8, x + size, y + size * 0.8], fill=colour)
        else:
            draw.rectangle([x - size * 1.4, y - size * 0.25, x + size * 1.4, y + size * 0.25], fill=colour)
    return image.filter(ImageFilter.GaussianBlur(radius=float(rng.uniform(0.5, 1.5))))


def write_sample(root: str, counts: Mapping[str, int] = DEFAULT_COUNTS, seed: int = 0) -> int:
    """Writes the sample tree under `root`; the same seed writes the same files.

    Args:
      root: the folder to create (split folders go directly below it).
      counts: images per class, by split.
      seed: the generator's seed.

    Returns:
      The number of images written.
    """
    written = 0
    for split_index, (split, count) in enumerate(sorted(counts.items())):
        for label, class_name in enumerate(CLASS_NAMES):
            folder = os.path.join(root, split, class_name)
            os.makedirs(folder, exist_ok=True)
            rng = np.random.default_rng([seed, split_index, label])
            for i in range(count):
                path = os.path.join(folder, f"{class_name[:-1]}.{i}.jpg")
                sample_image(rng, label).save(path, quality=int(rng.integers(75, 95)))
                written += 1
    return written

