"""Records stored resized (convert.py --image_size) and the photos they came from give the model the same input.

The converter resized each photo with Pillow's antialiased bilinear filter and
stored a JPEG; the reader decodes that (at a DCT scale picked from the stored
size) and resizes it to the model's size. predict.py and the export take the
photo the same way (`transforms.as_stored`), within the bounds below.
"""

from __future__ import annotations

import json

import keras
import numpy as np
import pytest
import tensorflow as tf

from support import cli
from support.images import save_image
from pipeline import schema
from pipeline.converter.commands import CONVERT
from pipeline.reader import dataset
from pipeline.reader import transforms
from model import cnn
from model import hardware
from model import inference
from model import run_config
from model import run_dir
from model import run_plan
from model import training
from model.commands import TRAIN

STORED_SIZE = (48, 64)
SOURCE_SIZES = [(96, 128), (150, 100), (75, 130), (200, 260)]
# (model size, the DCT ratio the reader decodes the 48x64 records at): down, 1/2, up.
MODEL_SIZES = [((32, 40), 1), ((24, 24), 2), ((72, 72), 1)]
# Largest and mean difference of a pixel value in [0, 1] between the record's input
# and the photo's. Measured at most 0.050 and 0.0019 (2026-12-07, Pillow 13.0; the
# photo resized once, as before: 0.17 and 0.020). What is left: Pillow 13 resizes
# some sizes height first, and a level's difference can move a JPEG coefficient.
MAX_PIXEL_DIFFERENCE = 0.06
MEAN_PIXEL_DIFFERENCE = 0.0025


def _textured(size: tuple[int, int], seed: int) -> np.ndarray:
    """uint8 [h, w, 3]: gradients, stripes and noise, so that every resampling step shows."""
    height, width = size
    rows, cols = np.mgrid[0:height, 0:width].astype(np.float64)
    rng = np.random.default_rng(seed)
    stripes = 60 * np.sin(cols / (2 + seed) + rows / 5)
    image = np.stack([255 * cols / width, 255 * rows / height, 128 + stripes], -1)
    return np.clip(image + rng.normal(0, 4, image.shape), 0, 255).astype(np.uint8)


@pytest.fixture(scope="module")
def stored(tmp_path_factory):
    """(records stored at STORED_SIZE, {relpath: source path}) of a small test split, through convert.py."""
    root = tmp_path_factory.mktemp("stored_size")
    sources = {}
    for i, size in enumerate(SOURCE_SIZES * 2):
        relpath = f"{('cats', 'dogs')[i % 2]}/{i}.jpg"
        save_image(_textured(size, i), root / "src" / "test" / relpath)
        sources[relpath] = str(root / "src" / "test" / relpath)
    done = cli.run(CONVERT, f"--src={root / 'src'}", f"--out={root / 'records'}",
                   f"--image_size={STORED_SIZE[0]},{STORED_SIZE[1]}", "--workers=1", "--nodata_report")
    assert done.returncode == 0, done.stderr[-3000:]
    assert schema.read_manifest(str(root / "records")).stored_size == STORED_SIZE
    return str(root / "records"), sources


def _inputs(records: str, sources: dict[str, str], image_size: tuple[int, int],
            stored_size: tuple[int, int] | None) -> tuple[np.ndarray, np.ndarray]:
    """(the reader's images of the records, predict.py's of their sources), float32 [N, h, w, 3], same order."""
    config = dataset.InputConfig(image_size=image_size, batch_size=len(sources))
    (from_records, _), = dataset.eval_dataset(records, "test", config)
    paths = [sources[name] for name in dataset.split_filenames(records, "test")]
    (from_files, indices), = dataset.files_dataset(paths, image_size, len(paths), stored_size)
    assert indices.numpy().tolist() == list(range(len(paths)))
    return from_records.numpy(), from_files.numpy()


@pytest.mark.parametrize("image_size, ratio", MODEL_SIZES)
def test_a_photo_reaches_the_model_as_its_resized_record_does(stored, image_size, ratio):
    records, sources = stored
    photo = tf.io.read_file(next(iter(sources.values())))
    assert transforms.as_stored(photo, STORED_SIZE, image_size).shape[:2] == (48 // ratio, 64 // ratio)
    from_records, from_files = _inputs(records, sources, image_size, STORED_SIZE)
    difference = np.abs(from_files - from_records)
    _, direct = _inputs(records, sources, image_size, None)  # the photo resized once, as before
    before = np.abs(direct - from_records)
    assert difference.max() <= MAX_PIXEL_DIFFERENCE and difference.mean() <= MEAN_PIXEL_DIFFERENCE
    assert before.max() > MAX_PIXEL_DIFFERENCE and before.mean() > 4 * MEAN_PIXEL_DIFFERENCE  # as before


def test_the_export_serves_a_photo_as_predict_does(stored, tmp_path):
    records, sources = stored
    image_size = MODEL_SIZES[1][0]
    run = inference.TrainedRun(str(tmp_path), ("cats", "dogs"), image_size, records, STORED_SIZE)
    keras.utils.set_random_seed(5)
    model = cnn.build_cnn(image_size, 2, seed=5)
    paths = list(sources.values())
    predicted = [p.probabilities for p in inference.predict_files(run, model, paths, batch_size=4)]
    served = tf.saved_model.load(inference.export_model(run, model)).signatures["serving_default"](
        image_bytes=tf.constant([open(path, "rb").read() for path in paths]))["probabilities"].numpy()
    np.testing.assert_allclose(served, predicted, atol=1e-6)
    # Not the originals' path: the photo went through the stored size.
    _, direct = _inputs(records, sources, image_size, None)
    _, through = _inputs(records, sources, image_size, STORED_SIZE)
    assert np.abs(direct - through).max() > 0.05


def test_the_setup_names_an_image_size_other_than_the_records():
    config = run_config.TrainConfig(records="r", image_size=150)
    cpu = hardware.Hardware(gpus=(), cpu_cores=2)

    def setup(stored_size):
        manifest = schema.Manifest("pets", ("cats", "dogs"), {}, stored_size, "src")
        return training.describe_setup(run_plan.plan_run(config, manifest, found=cpu))

    assert setup((120, 160))["images"] == "records stored at 120x160, resized to 150x150 for the model"
    for same in (None, (150, 150)):
        assert "images" not in setup(same)


def test_an_old_run_json_gains_the_stored_size_and_a_changed_one_is_refused(tmp_path):
    old = {"image_size": 32, "records": "abc", "class_names": ["cats", "dogs"]}
    (tmp_path / run_dir.RUN_FILENAME).write_text(json.dumps(old))
    assert inference.open_run(str(tmp_path)).stored_size is None  # predict.py resizes as before
    run_dir.record_settings(str(tmp_path), {**old, run_dir.STORED_SIZE_KEY: STORED_SIZE})
    assert json.loads((tmp_path / run_dir.RUN_FILENAME).read_text()) == {**old, "stored_size": list(STORED_SIZE)}
    assert inference.open_run(str(tmp_path)).stored_size == STORED_SIZE
    with pytest.raises(run_dir.RunMismatchError, match=r"stored_size: \[48, 64\] -> \[96, 96\]"):
        run_dir.record_settings(str(tmp_path), {**old, run_dir.STORED_SIZE_KEY: (96, 96)})


def test_a_run_from_before_the_stored_size_was_kept_resumes(run):
    argv, model_dir = run
    settings = json.loads((model_dir / run_dir.RUN_FILENAME).read_text())
    assert settings.pop(run_dir.STORED_SIZE_KEY) is None  # its records are originals
    (model_dir / run_dir.RUN_FILENAME).write_text(json.dumps(settings))
    assert inference.open_run(str(model_dir)).stored_size is None
    assert TRAIN.main([*argv, "--epochs=2"]) == 0
    assert json.loads((model_dir / run_dir.RUN_FILENAME).read_text()) == {**settings, "stored_size": None}
    assert json.loads((model_dir / "results.json").read_text())["epochs_done"] == 2
