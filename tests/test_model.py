"""model.cnn: the notebook's CNN, its compilation, XLA and mixed precision."""

from __future__ import annotations

import keras
import numpy as np
import pytest

from pipeline.reader import augment
from model import cnn

SIZE = (32, 32)


@pytest.fixture
def images():
    return np.random.default_rng(0).uniform(0, 1, (4, *SIZE, 3)).astype(np.float32)


@pytest.fixture
def global_policy():
    """Restores the global dtype policy the test changes."""
    previous = keras.mixed_precision.global_policy()
    yield
    keras.mixed_precision.set_global_policy(previous)


def test_two_classes_give_one_sigmoid_unit(images):
    model = cnn.build_cnn(SIZE, 2)
    assert model.input_shape == (None, *SIZE, 3)
    assert model.output_shape == (None, 1)
    assert model.layers[-1].activation is keras.activations.sigmoid
    out = model.predict(images, verbose=0)
    assert out.shape == (4, 1) and out.dtype == np.float32
    assert np.all((out > 0) & (out < 1))


def test_three_classes_give_a_softmax(images):
    model = cnn.build_cnn(SIZE, 3)
    assert model.output_shape == (None, 3)
    assert model.layers[-1].activation is keras.activations.softmax
    out = model.predict(images, verbose=0)
    assert out.shape == (4, 3) and out.dtype == np.float32
    assert np.all(out > 0)
    np.testing.assert_allclose(out.sum(axis=1), 1.0, atol=1e-5)


def test_notebook_architecture():
    model = cnn.build_cnn((150, 150), 2)
    convs = [layer for layer in model.layers if isinstance(layer, keras.layers.Conv2D)]
    assert [layer.filters for layer in convs] == [32, 64, 128]
    assert sum(isinstance(layer, keras.layers.MaxPooling2D) for layer in model.layers) == 3
    dropout = [layer for layer in model.layers if isinstance(layer, keras.layers.Dropout)]
    assert len(dropout) == 1 and dropout[0].rate == 0.5
    assert not any(isinstance(layer, augment.DeviceAugmentation) for layer in model.layers)


def test_one_class_is_refused():
    with pytest.raises(ValueError, match="num_classes"):
        cnn.build_cnn(SIZE, 1)


@pytest.mark.parametrize(
    "num_classes, loss",
    [(2, "binary_crossentropy"), (3, "categorical_crossentropy"), (5, "categorical_crossentropy")],
)
def test_compile_chooses_the_loss(images, num_classes, loss):
    model = cnn.compile_cnn(cnn.build_cnn(SIZE, num_classes), learning_rate=1e-3)
    assert model.loss == loss
    assert float(model.optimizer.learning_rate) == pytest.approx(1e-3)
    # The loss evaluates to the cross-entropy of the predictions.
    predictions = model.predict(images, verbose=0).astype(np.float64)
    if num_classes == 2:
        labels = np.array([0, 1, 1, 0], np.float32)
        p = np.clip(predictions[:, 0], 1e-7, 1 - 1e-7)
        expected = -np.mean(labels * np.log(p) + (1 - labels) * np.log(1 - p))
    else:
        labels = np.eye(num_classes, dtype=np.float32)[[0, 1, 2, 1]]
        expected = -np.mean(np.sum(labels * np.log(np.clip(predictions, 1e-7, 1)), axis=1))
    result = model.evaluate(images, labels, verbose=0, return_dict=True)
    assert result["loss"] == pytest.approx(expected, rel=1e-3)
    assert 0.0 <= result["accuracy"] <= 1.0


def test_device_augmentation_trains_with_xla_on_cpu(images):
    model = cnn.build_cnn(SIZE, 2, device_augmentation=augment.NOTEBOOK_AUGMENTATION, seed=1)
    layer = model.get_layer("augmentation")
    assert isinstance(layer, augment.DeviceAugmentation)
    assert layer.config == augment.NOTEBOOK_AUGMENTATION
    cnn.compile_cnn(model, jit_compile=True)
    before = [w.copy() for w in model.get_weights()]
    labels = np.array([0, 1, 0, 1], np.float32)
    loss = model.train_on_batch(images[:2], labels[:2], return_dict=True)["loss"]
    assert np.isfinite(loss)
    assert model.jit_compile is True
    after = model.get_weights()
    assert any(not np.array_equal(a, b) for a, b in zip(before, after))
    loss = model.train_on_batch(images[2:], labels[2:], return_dict=True)["loss"]
    assert np.isfinite(loss)
    # Inference skips the augmentation (and the dropout): deterministic.
    np.testing.assert_array_equal(model(images, training=False), model(images, training=False))


def test_model_with_device_augmentation_saves_and_loads(tmp_path, images):
    model = cnn.build_cnn(SIZE, 3, device_augmentation=augment.AugmentationConfig(rotation_range=5.0), seed=2)
    path = tmp_path / "cnn.keras"
    model.save(path)
    loaded = keras.saving.load_model(path)
    assert loaded.get_layer("augmentation").config == augment.AugmentationConfig(rotation_range=5.0)
    np.testing.assert_allclose(
        loaded.predict(images, verbose=0), model.predict(images, verbose=0), atol=1e-6
    )


def test_mixed_bfloat16_keeps_float32_outputs(global_policy, images):
    keras.mixed_precision.set_global_policy("mixed_bfloat16")
    for num_classes in (2, 3):
        model = cnn.build_cnn(SIZE, num_classes, device_augmentation=augment.NOTEBOOK_AUGMENTATION, seed=3)
        convs = [layer for layer in model.layers if isinstance(layer, keras.layers.Conv2D)]
        assert all(layer.compute_dtype == "bfloat16" for layer in convs)
        assert all(layer.variable_dtype == "float32" for layer in convs)
        assert model.layers[-1].compute_dtype == "float32"
        assert model.outputs[0].dtype == "float32"
        out = model.predict(images, verbose=0)
        assert out.dtype == np.float32 and out.shape == (4, 1 if num_classes == 2 else num_classes)
        augmented = model.get_layer("augmentation")(images, training=True)
        assert augmented.shape == images.shape

    cnn.compile_cnn(model)
    labels = np.eye(3, dtype=np.float32)[[0, 1, 2, 0]]
    loss = model.train_on_batch(images, labels, return_dict=True)["loss"]
    assert np.isfinite(loss)


def test_policy_is_restored_after_mixed_precision():
    # Runs after the mixed-precision test in file order: the fixture reset it.
    assert keras.mixed_precision.global_policy().name == "float32"
    assert cnn.build_cnn(SIZE, 2).layers[1].compute_dtype == "float32"
