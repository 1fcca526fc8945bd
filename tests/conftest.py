"""Shared fixtures: tiny generated image trees and the records converted from them.

Every generated image is recognisable after a JPEG round trip: a "solid" image
is one colour from a palette whose entries are 50 grey levels apart (each image
of a tree gets its own colour), and a "gradient" image has red rising along
the columns, green down the rows and a flat, per-image blue level that
identifies it even after a geometric warp.
"""

from __future__ import annotations

import os

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

import dataclasses  # noqa: E402
import shutil  # noqa: E402
import subprocess  # noqa: E402
import sys  # noqa: E402
from pathlib import Path  # noqa: E402

import numpy as np  # noqa: E402
import pytest  # noqa: E402
from PIL import Image  # noqa: E402

REPO_ROOT = Path(__file__).resolve().parents[1]
if str(REPO_ROOT) not in sys.path:
    sys.path.insert(0, str(REPO_ROOT))

import tensorflow as tf  # noqa: E402

from pipeline import schema  # noqa: E402
from pipeline.converter import conversion  # noqa: E402
from pipeline.converter import sample_data  # noqa: E402

import warm  # noqa: E402

CAT_DOG_SMALL = Path(__file__).resolve().parents[2] / "shared/data/cat_dog_small"

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


def read_records(records_dir, split: str) -> list[dict]:
    """Every record of a split, from the shard files, as numpy/python values.

    Each also gets "class_name" (from the label and the manifest) and "shard".
    """
    manifest = schema.read_manifest(str(records_dir))
    out = []
    for path in manifest.shard_paths(str(records_dir), split):
        for serialized in tf.data.TFRecordDataset(path):
            features = schema.parse_example(serialized)
            record = {k: v.numpy() for k, v in features.items()}
            record[schema.FILENAME_KEY] = record[schema.FILENAME_KEY].decode("utf-8")
            record["class_name"] = manifest.class_names[record[schema.LABEL_KEY]]
            record["shard"] = os.path.basename(path)
            out.append(record)
    return out


def count_records(path) -> int:
    return sum(1 for _ in tf.data.TFRecordDataset(str(path)))


def decode_jpeg(encoded: bytes) -> np.ndarray:
    return tf.io.decode_jpeg(encoded, channels=3).numpy()


def mean_colour(image: np.ndarray) -> np.ndarray:
    return np.asarray(image, np.float64).reshape(-1, image.shape[-1]).mean(0)


def nearest_palette_colour(image: np.ndarray) -> tuple[int, int, int]:
    """The palette entry closest to the mean colour of a uint8-scaled image."""
    mean = mean_colour(image)
    distances = np.abs(np.array(PALETTE) - mean).max(axis=1)
    return PALETTE[int(np.argmin(distances))]


def convert(src, out, **kwargs) -> conversion.ConversionSummary:
    """convert_folder of a ConversionConfig with these fields, and no pool by default."""
    kwargs.setdefault("workers", 1)
    return conversion.convert_folder(conversion.ConversionConfig(str(src), str(out), **kwargs))


# The standard split-layout tree: 2 classes, images of three sizes.
SPLIT_COUNTS = {
    "train": {"cats": 12, "dogs": 12},
    "validation": {"cats": 3, "dogs": 3},
    "test": {"cats": 2, "dogs": 2},
}
SPLIT_SIZES = [(24, 32), (32, 24), (30, 30)]


@pytest.fixture(scope="session")
def split_tree(tmp_path_factory) -> ImageTree:
    root = tmp_path_factory.mktemp("split_src") / "pets"
    return make_image_tree(root, "split", SPLIT_COUNTS, SPLIT_SIZES)


@pytest.fixture(scope="session")
def split_records(split_tree, tmp_path_factory):
    """(records_dir, summary) of `split_tree`, converted at the original sizes."""
    out = tmp_path_factory.mktemp("split_records") / "records"
    summary = convert(split_tree.root, out)
    return out, summary


@pytest.fixture(scope="module")
def finished_run(split_records, tmp_path_factory):
    """(train.py command line, model_dir) of a finished one-epoch run on `split_records`."""
    records, _ = split_records
    model_dir = tmp_path_factory.mktemp("finished") / "run"
    argv = ["train.py", f"--records={records}", f"--model_dir={model_dir}", "--epochs=1",
            "--batch_size=6", "--image_size=32", "--nocache", "--verbose=0", "--steps_per_epoch=2"]
    from model.commands import TRAIN

    assert TRAIN.main(argv) == 0
    return argv, model_dir


@pytest.fixture
def run(finished_run, tmp_path):
    """A copy of `finished_run` to change: (its command line, pointing at the copy, the copy)."""
    argv, model_dir = finished_run
    copy = tmp_path / "run"
    shutil.copytree(model_dir, copy)
    return [arg.replace(str(model_dir), str(copy)) for arg in argv], copy


def sample_records(root: Path, counts: dict, seed: int) -> Path:
    """The photo-like sample (`pipeline.converter.sample_data`, `counts` images per class by
    split) written under `root` and converted; returns the records folder."""
    sample_data.write_sample(str(root / "src"), counts, seed=seed)
    convert(root / "src", root / "records")
    return root / "records"


def copy_tree_to(local: Path, remote: str) -> str:
    """Copies the folder `local` to the URL `remote` (e.g. `ram://...`); returns `remote`."""
    for folder, _, files in os.walk(local):
        target = remote + folder[len(str(local)):]
        tf.io.gfile.makedirs(target)
        for name in files:
            tf.io.gfile.copy(os.path.join(folder, name), f"{target}/{name}")
    return remote


def require_cat_dog_small() -> Path:
    if not CAT_DOG_SMALL.is_dir():
        pytest.skip(f"{CAT_DOG_SMALL} is absent")
    return CAT_DOG_SMALL


def run_cli_cases(script: str, cases: list[list[str]], timeout: float = 600) -> list[subprocess.CompletedProcess]:
    """Each case of `script`'s command line, one after another, as `python script
    *args` runs it, each a process forked with TensorFlow imported (tests/warm.py).

    Returns:
      One CompletedProcess per case: its exit status, stdout and stderr.
    """
    return [warm.run([script, *map(str, args)], timeout=timeout) for args in cases]


# --------------------------------------------------------------------------
# Parallel runs: scripts/test.sh runs `pytest -n auto --dist loadfile
# --no-loadscope-reorder` (pytest-xdist), each file on one worker. The workers
# take the files in collection order, so the slowest files (those that start
# train.py, convert.py, bench.py or tf.data servers as processes) go first and
# the workers end together. Slowest first, as measured with --durations; a
# file missing here only runs later, in its usual place.
SLOWEST_FILES = (
    "test_strategy.py",
    "test_data_service.py",
    "test_benchmark.py",
    "test_read_faults.py",
    "test_train_faults.py",
    "test_train.py",
    "test_beam.py",
    "test_conversion_bench.py",
    "test_writer.py",
    "test_model.py",
    "test_dataset.py",
    "test_remote_storage.py",
    "test_convert_resume.py",
    "test_convert_faults.py",
    "test_verify.py",
    "test_convert_remote.py",
)


def pytest_collection_modifyitems(config, items):
    if not os.environ.get("PYTEST_XDIST_WORKER"):
        return  # one process: the files in their usual order
    rank = {name: i for i, name in enumerate(SLOWEST_FILES)}
    items.sort(key=lambda item: rank.get(item.path.name, len(rank)))  # stable: each file keeps its order
