"""A finished run used on new photos: its classes and image size, predictions, the export.

    model_dir: run.json (classes, image size, stored size), results.json (records), model.keras
    photos (files, folders, URLs) --files_dataset--> model --> Prediction rows
    model --export_model--> SavedModel: image_bytes -> preprocess_encoded -> model
                            -> probabilities, classes
                            (TensorFlow ops; on JAX the model's pass is converted by jax2tf)

Every path decodes, resizes and scales with the reader's own
`transforms.preprocess_encoded`, the records' evaluation decode: no copy.
A run trained on records stored resized (convert.py --image_size) resizes a
photo as the converter and the reader did (`transforms.as_stored`).
"""

from __future__ import annotations

import dataclasses
import os
import re
import shutil
from collections.abc import Callable, Sequence

import keras
import numpy as np
import tensorflow as tf

from pipeline import cli
from pipeline import fileio
from pipeline.reader import dataset
from pipeline.reader import transforms
from model import backend
from model import evaluation
from model import run_dir

EXPORT_DIRNAME = "export"
# Files predict.py takes from a folder; any other file named on the command line is tried too.
IMAGE_SUFFIXES = (".jpg", ".jpeg", ".png", ".gif", ".bmp", ".webp")


@dataclasses.dataclass(frozen=True)
class TrainedRun:
    """What a model_dir says about its model.

    Attributes:
      model_dir: the folder.
      class_names: the classes, in label order.
      image_size: (height, width) the model takes.
      records: the records folder it was trained on, or "" if results.json does not say.
      stored_size: (height, width) its records' images were stored at; None for
        originals, and for a run.json from before it was kept (until train.py
        runs in it again).
    """

    model_dir: str
    class_names: tuple[str, ...]
    image_size: tuple[int, int]
    records: str = ""
    stored_size: tuple[int, int] | None = None

    @property
    def model_path(self) -> str:
        return os.path.join(self.model_dir, "model.keras")

    def load_model(self) -> keras.Model:
        if not fileio.exists(self.model_path):
            raise cli.MissingError(f"{self.model_path} is not there: train.py writes it at the end of a run")
        return keras.models.load_model(self.model_path, compile=False)


def _run_settings(data) -> tuple[tuple[str, ...], tuple[int, int], tuple[int, int] | None]:
    """run.json -> (class names, image size, stored size or None)."""
    names, size = data["class_names"], data["image_size"]
    stored = data.get(run_dir.STORED_SIZE_KEY)  # absent from a run.json of before it was kept
    if not (isinstance(names, list) and all(isinstance(n, str) for n in names) and isinstance(size, int)):
        raise TypeError("class names and an image size")
    if stored is not None and not (
        isinstance(stored, list) and len(stored) == 2 and all(type(n) is int and n > 0 for n in stored)
    ):
        raise ValueError(f"it holds {run_dir.STORED_SIZE_KEY} {stored!r}, not [height, width] or null")
    return tuple(names), (size, size), None if stored is None else (stored[0], stored[1])


def open_run(model_dir: str) -> TrainedRun:
    """The run in `model_dir`, from its run.json and results.json.

    Raises:
      cli.MissingError: no run.json: not a train.py model_dir.
      fileio.DamagedFileError: run.json does not read.
    """
    path = os.path.join(model_dir, run_dir.RUN_FILENAME)
    if not fileio.exists(path):
        raise cli.MissingError(f"{model_dir} holds no run ({run_dir.RUN_FILENAME} is not there): pass a train.py --model_dir")
    class_names, image_size, stored_size = fileio.read_state(
        path, _run_settings, "train again into another --model_dir")
    results = os.path.join(model_dir, "results.json")
    records = ""
    if fileio.exists(results):
        records = fileio.read_state(results, lambda data: str(data.get("records", "")), "train again to write it")
    return TrainedRun(model_dir, class_names, image_size, records, stored_size)


# --------------------------------------------------------------------------
# predict.py


@dataclasses.dataclass(frozen=True)
class Prediction:
    """One input file: its class probabilities, or the error that kept it from the model."""

    path: str
    probabilities: tuple[float, ...] = ()
    error: str = ""


def image_files(paths: Sequence[str], on_hidden: Callable[[str], None] = lambda path: None) -> list[str]:
    """Files named, and the image files (IMAGE_SUFFIXES) found under folders named, recursively, sorted.

    Under a folder, hidden files and folders (names starting with ".": macOS's
    `._x.jpg`, `.thumbnails/`) are passed over, as the converter skips them:
    `on_hidden` gets each such image file and folder (a folder once, unread).
    A file named is taken, hidden or not: the user asked for it.
    """
    found = []
    for path in paths:
        if not fileio.isdir(path):
            found.append(path)
            continue
        for folder, subfolders, files in fileio.walk(path):
            for name in sorted(name for name in subfolders if name.startswith(".")):
                on_hidden(os.path.join(folder, name))
            subfolders[:] = [name for name in subfolders if not name.startswith(".")]  # walk prunes in place
            images = sorted(name for name in files if name.lower().endswith(IMAGE_SUFFIXES))
            for name in images:
                (on_hidden if name.startswith(".") else found.append)(os.path.join(folder, name))
    return found


def _error(path: str, run: TrainedRun) -> str:
    """Why `path` did not decode: TensorFlow's message, from the same decode, eagerly."""
    try:
        transforms.preprocess_encoded(tf.io.read_file(path), run.image_size, run.stored_size)
    except (tf.errors.OpError, ValueError) as e:
        message = (getattr(e, "message", None) or str(e)).strip().splitlines()[0]
        # TensorFlow's wrapping ("{{function_node ...}} ... [Op:ReadFile]") names its kernel, not the problem.
        return re.sub(r"\{\{[^}]*\}\}\s*|\s*\[Op:[^\]]*\].*$", "", message)
    return "it did not decode in the batch"  # a transient failure: it read alone


def predict_files(
    run: TrainedRun, model: keras.Model, paths: Sequence[str], batch_size: int,
    progress: Callable[[int], None] = lambda done: None,
) -> list[Prediction]:
    """A Prediction per path, in order: files read and decoded in parallel through tf.data.

    `progress` gets the number of files done after each batch.
    """
    probabilities: dict[int, np.ndarray] = {}
    done = 0
    for images, indices in dataset.files_dataset(list(paths), run.image_size, batch_size, run.stored_size):
        batch = evaluation.batch_probabilities(model, images)  # evaluate.py's own call, per backend
        probabilities.update(zip(indices.numpy().tolist(), batch))
        done = int(indices[-1]) + 1
        progress(done)
    progress(len(paths))
    return [
        Prediction(path, tuple(float(p) for p in probabilities[i])) if i in probabilities
        else Prediction(path, error=_error(path, run))
        for i, path in enumerate(paths)
    ]


def predictions_table(run: TrainedRun, predictions: Sequence[Prediction]) -> list[list[str]]:
    """CSV rows: path, predicted, confidence, p_<class>..., error; the header first."""
    rows = [["path", "predicted", "confidence", *(f"p_{name}" for name in run.class_names), "error"]]
    for p in predictions:
        if p.error:
            rows.append([p.path, "", "", *([""] * len(run.class_names)), p.error])
        else:
            best = int(np.argmax(p.probabilities))
            rows.append([p.path, run.class_names[best], f"{p.probabilities[best]:.6f}",
                         *(f"{x:.6f}" for x in p.probabilities), ""])
    return rows


# --------------------------------------------------------------------------
# The export: a SavedModel for TF Serving and any TensorFlow client.

SERVING_ENDPOINT = "serving_default"
# The SavedModel's second signature: the model alone (Keras's archive saves every endpoint it holds).
FORWARD_ENDPOINT = "forward"
# Under JAX the model's pass is lowered to StableHLO for each of these, so that the export serves on a CPU
# or a GPU TensorFlow wherever it was made, as a TensorFlow export does (jax2tf's default: the exporter's only).
JAX_SERVING_PLATFORMS = ("cpu", "cuda")


def _add_forward(archive, model: keras.Model) -> tf.types.experimental.GenericFunction:
    """Tracks `model` and adds its inference pass as the endpoint FORWARD_ENDPOINT; returns it.

    The endpoint is a tf.function: float32 [None, height, width, 3] in [0, 1]
    -> the model's output, float32 [None, 1] (a sigmoid) or [None, classes].
    On TensorFlow it holds the model's ops; on JAX, Keras converts the pass
    with jax2tf (one XlaCallModule op, the batch dimension polymorphic) and
    binds it to tf.Variable copies of the weights.
    """
    archive.track(model)
    spec = tf.TensorSpec(model.inputs[0].shape, tf.float32, name="images")
    # No gradient: the export only serves (with it, every load warns of unsaved custom gradients).
    jax_only = ({"jax2tf_kwargs": {"native_serialization_platforms": JAX_SERVING_PLATFORMS, "with_gradient": False}}
                if backend.name() == backend.JAX else {})
    return archive.add_endpoint(FORWARD_ENDPOINT, lambda images: model(images, training=False),
                                input_signature=[spec], **jax_only)


def _serving_function(
    run: TrainedRun, forward: tf.types.experimental.GenericFunction, image_spec: tf.TensorSpec,
) -> tf.types.experimental.GenericFunction:
    """The `serving_default` tf.function, TensorFlow ops around `forward` on either backend.

    `image_bytes` tf.string [None] -> {"probabilities": float32 [None, classes],
    "classes": tf.string [None]}; each image decoded, resized and scaled by
    `transforms.preprocess_encoded` to `image_spec` (float32 [height, width, 3]).
    """
    image_size, stored_size, names = run.image_size, run.stored_size, tf.constant(run.class_names)

    @tf.function(input_signature=[tf.TensorSpec([None], tf.string, name="image_bytes")], autograph=False)
    def serve(image_bytes):
        images = tf.map_fn(lambda encoded: transforms.preprocess_encoded(encoded, image_size, stored_size),
                           image_bytes, fn_output_signature=image_spec)
        probabilities = evaluation.class_probabilities(forward(images))
        return {"probabilities": probabilities, "classes": tf.gather(names, tf.argmax(probabilities, axis=-1))}

    return serve


def export_model(run: TrainedRun, model: keras.Model, path: str | None = None) -> str:
    """Writes a SavedModel whose `serving_default` takes encoded images, on TensorFlow or JAX.

    Signature: `image_bytes` (`tf.string` [None]: JPEG, PNG, GIF, BMP or WebP)
    -> `probabilities` (float32 [None, classes], the run's class order) and
    `classes` (`tf.string` [None], the predicted class names). Decode, resize
    and scaling are `transforms.preprocess_encoded` (with the run's stored
    size), TensorFlow ops inside the graph on either backend; only the model's
    pass is the backend's (`_add_forward`), also saved alone as the signature
    `forward` (`images` float32 [None, height, width, 3] -> the model's output).
    A device augmentation layer is off, as at any inference. It loads and
    serves with TensorFlow alone.

    Returns:
      The folder written (`model_dir/export` by default); an earlier export
      there is replaced whole.

    Raises:
      cli.InputError: `path` holds something other than a SavedModel (left as it is).
    """
    path = path or os.path.join(run.model_dir, EXPORT_DIRNAME)
    if fileio.exists(path) and not fileio.exists(f"{path.rstrip('/')}/saved_model.pb"):
        raise cli.InputError(f"{path} exists and is not a SavedModel: give a new folder or an earlier export")
    archive = keras.export.ExportArchive()
    forward = _add_forward(archive, model)
    image_spec = tf.TensorSpec(model.inputs[0].shape[1:], tf.float32)
    archive.add_endpoint(SERVING_ENDPOINT, _serving_function(run, forward, image_spec))
    if fileio.is_url(path):  # object stores rename no folders: written in place
        fileio.rmtree(path)
        archive.write_out(path, verbose=False)
        return path
    # Locally, written beside and renamed: a kill leaves the old export or none, never a part.
    parent = os.path.dirname(os.path.abspath(path))
    fileio.makedirs(parent)
    scratch = fileio.new_folder(parent, ".export-partial-")
    try:
        archive.write_out(scratch, verbose=False)
        if fileio.exists(path):
            old = fileio.new_folder(parent, ".export-old-")
            os.replace(path, old)  # a folder renames over an empty one
            os.replace(scratch, path)
            shutil.rmtree(old)
        else:
            os.replace(scratch, path)
    finally:
        shutil.rmtree(scratch, ignore_errors=True)
    return path
