"""pipeline.reader.dataset.train_dataset and eval_dataset: records -> batches, as flow_from_directory."""

from __future__ import annotations

import os
from collections import Counter

import numpy as np
import pytest
import tensorflow as tf
from PIL import Image

from support.images import COLOUR_TOLERANCE, make_image_tree, nearest_palette_colour
from support.records import convert, read_records, require_cat_dog_small
from pipeline import schema
from pipeline.reader import augment
from pipeline.reader import dataset
from pipeline.reader import epochs
from pipeline.reader import transforms

SIZE = (20, 20)
SOLID_COUNTS = {
    "train": {"cats": 7, "dogs": 6},
    "validation": {"cats": 3, "dogs": 2},
}


@pytest.fixture(scope="module")
def solid(tmp_path_factory):
    """(tree, records_dir): flat-colour images of three sizes, two classes."""
    root = tmp_path_factory.mktemp("ds_solid")
    tree = make_image_tree(root / "pets", "split", SOLID_COUNTS, [(24, 32), (40, 28), (30, 30)])
    convert(tree.root, root / "records")
    return tree, root / "records"


@pytest.fixture(scope="module")
def three_classes(tmp_path_factory):
    root = tmp_path_factory.mktemp("ds_three")
    tree = make_image_tree(root / "zoo", "flat", {"ant": 3, "bee": 2, "cow": 4}, (16, 16))
    convert(tree.root, root / "records", num_shards=2)
    return tree, root / "records"


@pytest.fixture(scope="module")
def gradients(tmp_path_factory):
    """(tree, records at the original sizes, records stored at 24x32)."""
    root = tmp_path_factory.mktemp("ds_gradient")
    tree = make_image_tree(
        root / "ramps", "flat", {"a": 4, "b": 4}, [(60, 80), (90, 70)], pattern="gradient"
    )
    convert(tree.root, root / "records")
    convert(tree.root, root / "resized", image_size=(24, 32))
    return tree, root / "records", root / "resized"


def _config(**kwargs) -> dataset.InputConfig:
    kwargs.setdefault("image_size", SIZE)
    kwargs.setdefault("batch_size", 4)
    return dataset.InputConfig(**kwargs)


def _epoch(ds) -> tuple[np.ndarray, np.ndarray]:
    """One pass: (images, labels), concatenated over the batches."""
    images, labels = [], []
    for x, y in ds:
        images.append(x.numpy())
        labels.append(y.numpy())
    return np.concatenate(images), np.concatenate(labels)


def _identify_solid(tree, images: np.ndarray):
    """The source image of each flat-colour output image (uint8-scaled)."""
    by_colour = tree.by_colour()
    found = []
    for image in images:
        colour = nearest_palette_colour(image * 255.0)
        source = by_colour[colour]
        assert np.abs(image * 255.0 - np.array(colour)).max() <= COLOUR_TOLERANCE + 1
        found.append(source)
    return found


def _identify_gradient(tree, images: np.ndarray):
    """The source of each gradient output image, by its flat blue level."""
    found = []
    for image in images:
        blue = image[..., 2] * 255.0
        # Flat up to the JPEG error (the ramps of red and green leak a few
        # levels into blue); the mean is within 2 levels of the source's.
        assert blue.max() - blue.min() <= 20.0
        source = min(tree.images, key=lambda im: abs(im.colour[2] - blue.mean()))
        assert abs(source.colour[2] - blue.mean()) <= 4.0
        found.append(source)
    return found


# --------------------------------------------------------------------------
# Batches: shapes, dtypes, values.


@pytest.mark.parametrize("class_mode", ["binary", "categorical", "sparse"])
def test_batch_shapes_dtypes_and_ranges(solid, class_mode):
    tree, records = solid
    ds = dataset.eval_dataset(str(records), "validation", _config(class_mode=class_mode))
    image_spec, label_spec = ds.element_spec
    assert image_spec.dtype == tf.float32 and image_spec.shape.as_list() == [None, 20, 20, 3]
    batches = list(ds)
    assert [int(x.shape[0]) for x, _ in batches] == [4, 1]
    assert int(ds.cardinality()) == 2
    for images, labels in batches:
        images, labels = images.numpy(), labels.numpy()
        assert images.dtype == np.float32
        assert images.min() >= 0.0 and images.max() <= 1.0
        batch = images.shape[0]
        if class_mode == "binary":
            assert labels.dtype == np.float32 and labels.shape == (batch,)
            assert set(labels.tolist()) <= {0.0, 1.0}
        elif class_mode == "categorical":
            assert labels.dtype == np.float32 and labels.shape == (batch, 2)
            assert set(labels.ravel().tolist()) <= {0.0, 1.0}
            np.testing.assert_array_equal(labels.sum(axis=1), 1.0)
        else:
            assert labels.dtype == np.int32 and labels.shape == (batch,)
            assert set(labels.tolist()) <= {0, 1}


def test_images_and_labels_are_the_sources(solid):
    tree, records = solid
    for split in ("train", "validation"):
        ds = dataset.eval_dataset(str(records), split, _config(class_mode="sparse"))
        images, labels = _epoch(ds)
        sources = _identify_solid(tree, images)
        assert sorted(s.relpath for s in sources) == sorted(im.relpath for im in tree.split(split))
        for source, label in zip(sources, labels):
            assert label == ["cats", "dogs"].index(source.class_name)


def test_categorical_labels_for_three_classes(three_classes):
    tree, records = three_classes
    ds = dataset.eval_dataset(str(records), "train", _config(class_mode="categorical", image_size=(8, 8)))
    images, labels = _epoch(ds)
    assert labels.shape == (9, 3)
    for source, label in zip(_identify_solid(tree, images), labels):
        np.testing.assert_array_equal(label, np.eye(3)[["ant", "bee", "cow"].index(source.class_name)])
    sparse = _epoch(dataset.eval_dataset(str(records), "train", _config(class_mode="sparse", image_size=(8, 8))))[1]
    assert sorted(Counter(sparse.tolist()).items()) == [(0, 3), (1, 2), (2, 4)]


def test_binary_labels_of_three_classes_are_refused_when_a_dataset_is_built(three_classes):
    """The default class_mode, "binary", on 3 classes gave float labels 0-2; Keras refuses it too."""
    _, records = three_classes
    expected = ('class_mode="binary" needs exactly 2 classes, but the records hold 3 (ant, bee, cow): '
                'pass class_mode="categorical" (one-hot labels) or "sparse" (class indices)')
    config = _config()  # InputConfig alone knows no classes: accepted
    assert config.class_mode == "binary"
    for build in (lambda: dataset.eval_dataset(str(records), "train", config),
                  lambda: dataset.train_dataset(str(records), config),
                  lambda: dataset.train_dataset(str(records), _config(seed=1), position=epochs.EpochPosition())):
        with pytest.raises(ValueError) as raised:
            build()
        assert str(raised.value) == expected


def test_gradients_come_back_up_to_the_resize(gradients):
    """Stored at full size or pre-resized, the reader gives the source pixels
    resized to image_size, within a few grey levels."""
    tree, full, resized = gradients
    size = (24, 32)
    outputs = {}
    for name, records in (("full", full), ("resized", resized)):
        images, _ = _epoch(dataset.eval_dataset(str(records), "train", _config(image_size=size)))
        assert images.shape == (8, 24, 32, 3)
        for image, source in zip(images, _identify_gradient(tree, images)):
            reference = np.asarray(
                Image.fromarray(source.pixels()).resize(size[::-1], Image.Resampling.BILINEAR),
                np.float32,
            ) / 255.0
            diff = np.abs(image - reference)
            assert diff.mean() < 0.015 and diff.max() < 0.08, (name, source.relpath)
            outputs[(name, source.relpath)] = image
    for im in tree.images:
        diff = np.abs(outputs[("full", im.relpath)] - outputs[("resized", im.relpath)])
        assert diff.mean() < 0.015


def test_dct_scaling_matches_full_decoding(gradients):
    tree, full, _ = gradients
    on, _ = _epoch(dataset.eval_dataset(str(full), "train", _config(image_size=(24, 32))))
    off, _ = _epoch(dataset.eval_dataset(str(full), "train", _config(image_size=(24, 32), dct_scaling=False)))
    assert np.abs(on - off).mean() < 0.01
    assert np.abs(on - off).max() < 0.06


# --------------------------------------------------------------------------
# Validation: deterministic, unaugmented, cacheable.


def _decode_without_augmentation(records, split, size) -> list[bytes]:
    """Each record decoded by decode_example (float32, unrounded, as the
    evaluation path decodes) and scaled, as float32 bytes."""
    manifest = schema.read_manifest(str(records))
    ds = tf.data.TFRecordDataset(manifest.shard_paths(str(records), split))
    ds = ds.map(lambda r: dataset.decode_example(r, size, dtype=tf.float32))
    return [transforms.scale_image(image).numpy().tobytes() for image, _ in ds]


def test_validation_is_deterministic_and_unaugmented(gradients):
    tree, full, _ = gradients
    ds = dataset.eval_dataset(str(full), "train", _config(image_size=(24, 32)))
    first, labels_first = _epoch(ds)
    second, labels_second = _epoch(ds)
    np.testing.assert_array_equal(first, second)
    np.testing.assert_array_equal(labels_first, labels_second)
    rebuilt, _ = _epoch(dataset.eval_dataset(str(full), "train", _config(image_size=(24, 32))))
    np.testing.assert_array_equal(first, rebuilt)
    expected = _decode_without_augmentation(full, "train", (24, 32))
    assert sorted(image.tobytes() for image in first) == sorted(expected)


def test_cache_gives_the_same_validation_batches(gradients):
    _, full, _ = gradients
    plain = _epoch(dataset.eval_dataset(str(full), "train", _config(image_size=(24, 32))))
    cached_ds = dataset.eval_dataset(str(full), "train", _config(image_size=(24, 32), cache=True))
    for _ in range(2):  # filling the cache, then reading it
        cached = _epoch(cached_ds)
        # The cache holds uint8 images: at most half a grey level from the float path.
        np.testing.assert_allclose(cached[0], plain[0], atol=0.5 / 255 + 1e-6, rtol=0)
        np.testing.assert_allclose(cached[0] * 255, np.round(cached[0] * 255), atol=1e-4, rtol=0)
        np.testing.assert_array_equal(cached[1], plain[1])


# --------------------------------------------------------------------------
# Training: shuffled, augmented anew each epoch, every example once.


@pytest.mark.parametrize("cache", [False, True])
@pytest.mark.parametrize("augmentation", [None, augment.NOTEBOOK_AUGMENTATION], ids=["plain", "augmented"])
def test_training_epoch_holds_every_example_once(solid, cache, augmentation):
    tree, records = solid
    config = _config(augmentation=augmentation, cache=cache, class_mode="sparse", seed=4)
    ds = dataset.train_dataset(str(records), config)
    orders = []
    for _ in range(2):
        images, labels = _epoch(ds)
        sources = _identify_solid(tree, images)
        assert Counter(s.relpath for s in sources) == Counter(im.relpath for im in tree.split("train"))
        for source, label in zip(sources, labels):
            assert label == ["cats", "dogs"].index(source.class_name)
        orders.append([s.relpath for s in sources])
    assert orders[0] != orders[1]  # reshuffled every epoch


def test_training_augmentation_differs_between_epochs(gradients):
    tree, full, _ = gradients
    config = _config(image_size=(24, 32), augmentation=augment.NOTEBOOK_AUGMENTATION)
    ds = dataset.train_dataset(str(full), config)
    unaugmented, _ = _epoch(dataset.eval_dataset(str(full), "train", _config(image_size=(24, 32))))
    plain = {s.relpath: image for s, image in zip(_identify_gradient(tree, unaugmented), unaugmented)}
    assert len(plain) == len(tree.images)
    epochs = []
    for _ in range(2):
        images, _ = _epoch(ds)
        sources = _identify_gradient(tree, images)
        assert sorted(s.relpath for s in sources) == sorted(plain)
        epochs.append({s.relpath: image for s, image in zip(sources, images)})
    for relpath, image in plain.items():
        assert np.abs(epochs[0][relpath] - epochs[1][relpath]).mean() > 1e-3, relpath
        assert np.abs(epochs[0][relpath] - image).mean() > 1e-3, relpath
        assert 0.0 <= epochs[0][relpath].min() and epochs[0][relpath].max() <= 1.0


@pytest.mark.parametrize("cache", [False, True])
def test_without_a_position_each_pass_is_the_next_epoch_of_the_one_chain(solid, cache):
    """One chain: a dataset nobody moves makes epochs 0, 1, ... (its own EpochPosition
    moves on as each pass begins), batch for batch those a position names; its length is stated."""
    _, records = solid
    config = _config(augmentation=augment.NOTEBOOK_AUGMENTATION, cache=cache, seed=3)
    unmoved = dataset.train_dataset(str(records), config)
    assert int(unmoved.cardinality()) == 4  # 13 images in batches of 4
    for epoch in range(2):
        named = dataset.train_dataset(str(records), config, position=epochs.EpochPosition(epoch))
        np.testing.assert_array_equal(_epoch(unmoved)[0], _epoch(named)[0])


def test_training_with_a_seed_is_reproducible(gradients):
    _, full, _ = gradients
    config = _config(image_size=(24, 32), augmentation=augment.NOTEBOOK_AUGMENTATION, seed=7)
    first = _epoch(dataset.train_dataset(str(full), config))
    again = _epoch(dataset.train_dataset(str(full), config))
    np.testing.assert_array_equal(first[0], again[0])
    np.testing.assert_array_equal(first[1], again[1])


def test_drop_remainder_gives_full_batches(solid):
    _, records = solid
    ds = dataset.train_dataset(str(records), _config(drop_remainder=True))
    assert ds.element_spec[0].shape.as_list() == [4, 20, 20, 3]
    sizes = [int(x.shape[0]) for x, _ in ds]
    assert sizes == [4, 4, 4]  # 13 images
    assert int(ds.cardinality()) == 3


# --------------------------------------------------------------------------
# Errors.


@pytest.mark.parametrize(
    "kwargs, match",
    [({"class_mode": "input"}, "class_mode"), ({"batch_size": 0}, "batch_size"), ({"image_size": (0, 5)}, "image_size")],
)
def test_bad_config_raises(kwargs, match):
    with pytest.raises(ValueError, match=match):
        dataset.InputConfig(**kwargs)


def test_missing_split_or_manifest_raises(solid, tmp_path):
    _, records = solid
    with pytest.raises(ValueError, match="test"):
        dataset.eval_dataset(str(records), "test", _config())
    with pytest.raises(FileNotFoundError, match="convert.py"):
        dataset.eval_dataset(str(tmp_path), "train", _config())


# --------------------------------------------------------------------------
# Real photos.


@pytest.fixture(scope="module")
def photos(tmp_path_factory):
    """A few cat_dog_small photos (linked, not copied) and their records."""
    data = require_cat_dog_small()
    root = tmp_path_factory.mktemp("photos")
    src = root / "cat_dog_tiny"
    for split, count in (("train", 6), ("validation", 4)):
        for class_name in ("cats", "dogs"):
            folder = src / split / class_name
            folder.mkdir(parents=True)
            names = sorted(os.listdir(data / split / class_name))[:count]
            for name in names:
                os.symlink(data / split / class_name / name, folder / name)
    summary = convert(src, root / "records", follow_external_links=True)  # the links lead to ../shared
    return src, root / "records", summary


def test_real_photos_round_trip(photos):
    src, records, summary = photos
    assert not summary.skipped
    assert summary.manifest.splits["train"].class_counts == {"cats": 6, "dogs": 6}
    for record in read_records(records, "validation"):
        source = src / "validation" / record[schema.FILENAME_KEY]
        assert record[schema.IMAGE_KEY] == source.read_bytes()  # stored byte for byte
        with Image.open(source) as image:
            assert (record[schema.HEIGHT_KEY], record[schema.WIDTH_KEY]) == (image.height, image.width)
        assert record[schema.LABEL_KEY] == ["cats", "dogs"].index(record["class_name"])

    size = (150, 150)
    images, labels = _epoch(dataset.eval_dataset(str(records), "validation", _config(image_size=size, batch_size=5)))
    assert images.shape == (8, 150, 150, 3)
    assert sorted(labels.tolist()) == [0.0] * 4 + [1.0] * 4
    expected = []
    for record in read_records(records, "validation"):
        full = tf.io.decode_jpeg(record[schema.IMAGE_KEY], channels=3)
        expected.append(transforms.scale_image(transforms.resize_image(full, size)).numpy())
    # DCT scaling decodes large photos smaller first: close to a full decode.
    for image in images:
        best = min(np.abs(image - e).mean() for e in expected)
        assert best < 0.03


def test_real_photos_augmented_training_batches(photos):
    _, records, _ = photos
    config = _config(image_size=(150, 150), batch_size=6, augmentation=augment.NOTEBOOK_AUGMENTATION, seed=1)
    images, labels = _epoch(dataset.train_dataset(str(records), config))
    assert images.shape == (12, 150, 150, 3)
    assert images.min() >= 0.0 and images.max() <= 1.0
    assert Counter(labels.tolist()) == {0.0: 6, 1.0: 6}
