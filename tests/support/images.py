"""Generated images that stay recognisable after a JPEG round trip.

A "solid" image is one colour from a palette whose entries are 50 grey levels
apart (each image of a tree gets its own colour); a "gradient" image has red
rising along the columns, green down the rows and a flat, per-image blue level
that identifies it even after a geometric warp.
"""

from __future__ import annotations

import dataclasses
import io
from pathlib import Path

import numpy as np
from PIL import Image

# Five levels per channel, 50 apart: 125 colours that a JPEG round trip
# (error of a few grey levels on a flat image) cannot confuse.
_LEVELS = (30, 80, 130, 180, 230)
PALETTE = tuple(
    (_LEVELS[i % 5], _LEVELS[(i // 5) % 5], _LEVELS[(i // 25) % 5]) for i in range(125)
)
# Largest per-channel error accepted for a flat colour after JPEG encoding.
COLOUR_TOLERANCE = 4.0


@dataclasses.dataclass(frozen=True)
class TreeImage:
    """One generated source image."""

    index: int  # unique in its tree: the palette entry
    split: str  # "train" for the flat layout
    class_name: str
    relpath: str  # relative to the split folder, as the records store it
    path: Path
    size: tuple[int, int]  # (height, width)
    colour: tuple[int, int, int]  # the solid colour, or (0, 0, the gradient's blue)
    pattern: str

    def pixels(self) -> np.ndarray:
        """The uint8 [h, w, 3] array that was encoded."""
        return image_array(self.pattern, self.size, self.colour)


@dataclasses.dataclass(frozen=True)
class ImageTree:
    root: Path
    layout: str
    images: tuple[TreeImage, ...]

    def split(self, name: str) -> list[TreeImage]:
        return [im for im in self.images if im.split == name]

    def by_relpath(self, split: str) -> dict[str, TreeImage]:
        return {im.relpath: im for im in self.split(split)}

    def by_colour(self) -> dict[tuple[int, int, int], TreeImage]:
        return {im.colour: im for im in self.images}


def gradient_blue(index: int) -> int:
    """The blue level of gradient image `index`: 10 grey levels apart."""
    if not 0 <= index < 23:
        raise ValueError("at most 23 gradient images per tree")
    return 25 + 10 * index


def gradient_array(size: tuple[int, int], blue: int) -> np.ndarray:
    height, width = size
    red = np.linspace(0, 255, width)[None, :].repeat(height, 0)
    green = np.linspace(0, 255, height)[:, None].repeat(width, 1)
    blue_plane = np.full((height, width), blue, np.float64)
    return np.round(np.stack([red, green, blue_plane], -1)).astype(np.uint8)


def image_array(pattern: str, size: tuple[int, int], colour: tuple[int, int, int]) -> np.ndarray:
    if pattern == "solid":
        return np.broadcast_to(np.array(colour, np.uint8), (*size, 3)).copy()
    if pattern == "gradient":
        return gradient_array(size, colour[2])
    raise ValueError(pattern)


def save_image(array: np.ndarray, path: Path, fmt: str = "JPEG", mode: str | None = None) -> None:
    """Writes an RGB uint8 array as `fmt`, converted to Pillow `mode` first."""
    image = Image.fromarray(array, "RGB")
    if mode == "P":  # an exact palette, not the dithered web palette
        image = image.convert("P", palette=Image.Palette.ADAPTIVE)
    elif mode is not None:
        image = image.convert(mode)
    path.parent.mkdir(parents=True, exist_ok=True)
    if fmt == "JPEG":
        image.save(path, format="JPEG", quality=95)
    else:
        image.save(path, format=fmt)


def make_image_tree(
    root: Path,
    layout: str,
    counts: dict,
    sizes=(24, 32),
    pattern: str = "solid",
) -> ImageTree:
    """Writes a class-folder tree of generated JPEGs.

    Args:
      root: the source folder to create.
      layout: "split" -> counts is {split: {class: n}}, written as
        root/split/class/*.jpg; "flat" -> counts is {class: n}, written as
        root/class/*.jpg (their split is "train").
      counts: see layout.
      sizes: one (height, width), or a list of them used in turn.
      pattern: "solid" or "gradient", see the module docstring.
    """
    root = Path(root)
    if layout == "flat":
        plan = {"train": counts}
    elif layout == "split":
        plan = counts
    else:
        raise ValueError(layout)
    size_list = [tuple(sizes)] if isinstance(sizes[0], int) else [tuple(s) for s in sizes]
    images = []
    index = 0
    for split, classes in plan.items():
        for class_name, count in classes.items():
            for k in range(count):
                size = size_list[index % len(size_list)]
                colour = PALETTE[index] if pattern == "solid" else (0, 0, gradient_blue(index))
                relpath = f"{class_name}/{class_name}.{k:03d}.jpg"
                folder = root if layout == "flat" else root / split
                path = folder / relpath
                save_image(image_array(pattern, size, colour), path)
                images.append(
                    TreeImage(index, split, class_name, relpath, path, size, colour, pattern)
                )
                index += 1
    assert index <= len(PALETTE), "too many images for distinct colours"
    return ImageTree(root, layout, tuple(images))


def decode_jpeg(encoded: bytes) -> np.ndarray:
    """The uint8 [h, w, 3] pixels of JPEG bytes, as the reader decodes them."""
    import tensorflow as tf

    return tf.io.decode_jpeg(encoded, channels=3).numpy()


def mean_colour(image: np.ndarray) -> np.ndarray:
    return np.asarray(image, np.float64).reshape(-1, image.shape[-1]).mean(0)


def nearest_palette_colour(image: np.ndarray) -> tuple[int, int, int]:
    """The palette entry closest to the mean colour of a uint8-scaled image."""
    mean = mean_colour(image)
    distances = np.abs(np.array(PALETTE) - mean).max(axis=1)
    return PALETTE[int(np.argmin(distances))]


# The standard split-layout tree of the `split_tree` fixture: 2 classes, images of three sizes.
SPLIT_COUNTS = {
    "train": {"cats": 12, "dogs": 12},
    "validation": {"cats": 3, "dogs": 3},
    "test": {"cats": 2, "dogs": 2},
}
SPLIT_SIZES = [(24, 32), (32, 24), (30, 30)]


def noisy_gradient(size: tuple[int, int], seed: int = 0, noise: int = 12) -> np.ndarray:
    """uint8 [h, w, 3]: red rising along the columns, green down the rows, blue along the
    diagonal, each plus uniform noise of +-`noise` levels: no two neighbours alike, so a
    conversion that clips (or flattens) shows."""
    height, width = size
    rows, cols = np.mgrid[0:height, 0:width].astype(np.float64)
    planes = np.stack([cols / (width - 1), rows / (height - 1), (rows + cols) / (height + width - 2)], -1)
    jitter = np.random.default_rng(seed).integers(-noise, noise + 1, planes.shape)
    return np.clip(np.round(20 + planes * 215) + jitter, 0, 255).astype(np.uint8)


def check_colour(image: np.ndarray, colour) -> None:
    """Every pixel of a decoded flat image is within COLOUR_TOLERANCE of `colour`."""
    diff = np.abs(image.astype(np.int16) - np.array(colour, np.int16))
    assert diff.max() <= COLOUR_TOLERANCE, (diff.max(), colour, mean_colour(image))


def add_bad_files(folder: Path) -> dict[str, str]:
    """A zero-byte JPEG, a truncated JPEG and a text file named .jpg in `folder`.

    Returns: file name -> a word the converter's skip reason must contain.
    """
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "empty.jpg").write_bytes(b"")
    noise = np.random.default_rng(0).integers(0, 256, (48, 48, 3), dtype=np.uint8)
    buffer = io.BytesIO()
    Image.fromarray(noise).save(buffer, format="JPEG", quality=95)
    data = buffer.getvalue()
    (folder / "truncated.jpg").write_bytes(data[: len(data) // 2])
    (folder / "notes.jpg").write_text("this is not an image\n")
    return {"empty.jpg": "empty", "truncated.jpg": "decode", "notes.jpg": "not an image"}
