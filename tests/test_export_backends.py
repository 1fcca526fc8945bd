"""The export on either Keras backend: marked `backends`, so it runs again under KERAS_BACKEND=jax.

On TensorFlow the model's pass is TensorFlow's ops; on JAX, Keras converts it with
jax2tf (one XlaCallModule op). Either way the SavedModel takes encoded images,
decodes them with TensorFlow's ops, serves what predict.py gives within 1e-5 at
any batch size, and loads and serves in a Python where jax cannot be imported.
"""

from __future__ import annotations

import json
import textwrap
from pathlib import Path

import keras
import numpy as np
import pytest
import tensorflow as tf
from tensorflow.core.protobuf import saved_model_pb2

from support import processes
from support.images import noisy_gradient, save_image
from pipeline.reader import augment
from model import cnn
from model import inference

pytestmark = pytest.mark.backends

ON_JAX = keras.backend.backend() == "jax"
# (file name, Pillow format, mode, (height, width)): sizes other than the model's, several decoders.
PHOTOS = (("a.jpg", "JPEG", None, (40, 30)), ("b.png", "PNG", None, (32, 32)), ("c.png", "PNG", "L", (50, 64)),
          ("d.webp", "WEBP", None, (24, 36)), ("e.jpg", "JPEG", None, (90, 70)))


@pytest.fixture(scope="module")
def photos(tmp_path_factory) -> list[str]:
    """Paths of PHOTOS, noisy gradients (so each gives the model another input)."""
    folder = tmp_path_factory.mktemp("photos")
    for seed, (name, fmt, mode, size) in enumerate(PHOTOS):
        save_image(noisy_gradient(size, seed=seed), folder / name, fmt, mode)
    return [str(folder / name) for name, *_ in PHOTOS]


@pytest.fixture(scope="module")
def exported(tmp_path_factory) -> tuple[inference.TrainedRun, keras.Model, str]:
    """(run, model, its export in the run's folder): train.py's binary 32x32 CNN (a sigmoid), untrained,
    with the device augmentation layer (its seed state is a non-trainable variable)."""
    run = inference.TrainedRun(str(tmp_path_factory.mktemp("run")), ("cats", "dogs"), (32, 32))
    model = cnn.build_cnn(run.image_size, 2, augment.NOTEBOOK_AUGMENTATION, seed=7)
    return run, model, inference.export_model(run, model)


def _graph_ops(export: str) -> dict[str, list]:
    """Op type -> its nodes, over every function of the SavedModel's graph."""
    saved = saved_model_pb2.SavedModel()
    saved.ParseFromString(Path(export, "saved_model.pb").read_bytes())
    ops: dict[str, list] = {}
    for function in saved.meta_graphs[0].graph_def.library.function:
        for node in function.node_def:
            ops.setdefault(node.op, []).append(node)
    return ops


def _serve(signature, paths: list[str]) -> dict[str, np.ndarray]:
    """A loaded export's serving_default on the files' bytes, in this process."""
    out = signature(image_bytes=tf.constant([Path(path).read_bytes() for path in paths]))
    return {name: value.numpy() for name, value in out.items()}


def _load(export: str):
    """The export's serving_default signature, loaded in this process."""
    return tf.saved_model.load(export).signatures["serving_default"]


def test_the_export_takes_encoded_images_and_serves_what_predict_gives(exported, photos):
    run, model, export = exported
    signature = _load(export)
    assert signature.structured_input_signature == (
        (), {"image_bytes": tf.TensorSpec([None], tf.string, name="image_bytes")})
    assert signature.structured_outputs == {
        "probabilities": tf.TensorSpec([None, 2], tf.float32, name="probabilities"),
        "classes": tf.TensorSpec([None], tf.string, name="classes")}

    expected = np.array([p.probabilities for p in inference.predict_files(run, model, photos, batch_size=2)])
    for batch in (photos, photos[-1:]):  # the batch dimension stays open, 1 included
        served = _serve(signature, batch)
        np.testing.assert_allclose(served["probabilities"], expected[[photos.index(p) for p in batch]], atol=1e-5)
        assert [name.decode() for name in served["classes"]] == [
            run.class_names[i] for i in np.argmax(served["probabilities"], axis=-1)]

    # Decode and resize are TensorFlow's ops on both backends; the model's pass is the backend's.
    ops = _graph_ops(export)
    assert {"DecodeImage", "DecodeJpeg", "ResizeBilinear"} <= set(ops)
    assert ("XlaCallModule" in ops, "Conv2D" in ops) == (ON_JAX, not ON_JAX)
    if ON_JAX:  # lowered for both, so that a CPU or a GPU TensorFlow serves it
        assert {tuple(call.attr["platforms"].list.s) for call in ops["XlaCallModule"]} == {(b"CPU", b"CUDA")}


def test_a_second_export_replaces_the_first_whole(exported):
    run, model, export = exported
    Path(export, "mine.txt").write_text("from the first export")
    assert inference.export_model(run, model) == export
    assert not Path(export, "mine.txt").exists() and Path(export, "saved_model.pb").is_file()
    assert [p.name for p in Path(export).parent.iterdir()] == ["export"]  # no scratch or old folder left beside


_WITHOUT_JAX = textwrap.dedent(
    """
    import sys
    sys.modules["jax"] = None  # any `import jax` now fails: the export must not need it
    import json
    import tensorflow as tf
    served = tf.saved_model.load(sys.argv[1]).signatures["serving_default"]
    out = served(image_bytes=tf.constant([open(path, "rb").read() for path in sys.argv[2:]]))
    # Not keras: TensorFlow imports it itself when it can (not at all here under KERAS_BACKEND=jax).
    loaded = sorted(m for m in sys.modules if m.split(".")[0] in ("jax", "jaxlib", "pipeline", "model", "benchmark")
                    and sys.modules[m] is not None)
    print(json.dumps({"probabilities": out["probabilities"].numpy().tolist(),
                      "classes": [c.decode() for c in out["classes"].numpy()], "loaded": loaded}))
    """
)


def test_the_export_serves_in_a_python_without_jax(exported, photos, tmp_path):
    run, model, export = exported
    script = tmp_path / "serve.py"
    script.write_text(_WITHOUT_JAX)
    served = processes.run(script, export, *photos, environment=processes.env(PYTHONPATH=""))
    assert served.returncode == 0, served.stderr[-3000:]
    answer = json.loads(served.stdout.strip().splitlines()[-1])
    assert answer["loaded"] == []
    expected = [p.probabilities for p in inference.predict_files(run, model, photos, batch_size=8)]
    np.testing.assert_allclose(answer["probabilities"], expected, atol=1e-5)
    assert answer["classes"] == [run.class_names[i] for i in np.argmax(expected, axis=-1)]
