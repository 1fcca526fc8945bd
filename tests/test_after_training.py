"""After training: evaluate.py, predict.py and the export, each with the reader's preprocessing.

The three must agree: the records' evaluation, the original files through
predict.py and their bytes through the SavedModel. Where a JPEG was stored
as-is they agree exactly; elsewhere within 1e-5 per probability.
"""

from __future__ import annotations

import csv
import json
import shutil
import textwrap

import keras
import numpy as np
import pytest
import tensorflow as tf

from support import cli
from support import processes
from support.images import save_image
from support.records import convert, copy_tree_to, require_cat_dog_small
from pipeline import schema
from pipeline.reader import augment
from pipeline.reader import dataset
from model import cnn
from model import evaluation
from model import inference
from model.commands import EVALUATE, EXPORT, PREDICT

PNG_MAGIC = b"\x89PNG\r\n\x1a\n"


def _csv(path) -> list[dict]:
    with open(path, newline="") as f:
        return list(csv.DictReader(f))


def _test_files(tree) -> dict[str, str]:
    """relpath -> path of the source files of the test split."""
    return {im.relpath: str(im.path) for im in tree.split("test")}


def test_evaluate_writes_its_report_and_agrees_with_keras(finished_run, split_records, split_tree, tmp_path):
    _, model_dir = finished_run
    records, _ = split_records
    out = tmp_path / "eval"
    done = cli.run(EVALUATE, f"--model_dir={model_dir}", f"--out={out}")  # the run's own records, the test split
    assert done.returncode == 0, done.stderr[-3000:]
    assert "precision" in done.stdout and "cats" in done.stdout and "dogs" in done.stdout

    metrics = json.loads((out / "metrics.json").read_text())
    assert {"accuracy", "loss", "confusion_matrix", "per_class", "roc_auc"} <= set(metrics)
    counts = schema.read_manifest(str(records)).splits["test"].class_counts
    matrix = np.array(metrics["confusion_matrix"])
    assert matrix.shape == (2, 2) and matrix.sum(axis=1).tolist() == [counts["cats"], counts["dogs"]]
    assert {name: m["support"] for name, m in metrics["per_class"].items()} == counts
    assert metrics["accuracy"] == pytest.approx(np.trace(matrix) / matrix.sum())
    assert 0.0 <= metrics["roc_auc"] <= 1.0

    rows = _csv(out / "predictions.csv")
    assert sorted(row["filename"] for row in rows) == sorted(_test_files(split_tree))
    assert all(row["true"] == row["filename"].split("/")[0] for row in rows)
    for name in ("confusion_matrix.png", "mistakes.png"):
        assert (out / name).read_bytes()[:8] == PNG_MAGIC

    # Keras' own evaluation of the same split, and train.py's closing one (the same function).
    model = keras.models.load_model(model_dir / "model.keras")
    keras_metrics = model.evaluate(dataset.eval_dataset(str(records), "test", dataset.InputConfig(image_size=(32, 32))),
                                   verbose=0, return_dict=True)
    assert metrics["loss"] == pytest.approx(keras_metrics["loss"], abs=1e-5)
    assert metrics["accuracy"] == pytest.approx(keras_metrics["accuracy"], abs=1e-6)
    results = json.loads((model_dir / "results.json").read_text())
    assert set(results["test"]) == {"accuracy", "loss"}
    assert results["test"]["accuracy"] == metrics["accuracy"]
    assert json.loads((model_dir / "eval_test" / "metrics.json").read_text())["loss"] == pytest.approx(metrics["loss"])


def test_the_three_paths_agree_and_stored_jpegs_exactly(finished_run, split_records, split_tree):
    _, model_dir = finished_run
    records, _ = split_records
    run = inference.open_run(str(model_dir))
    assert run.records == str(records) and run.image_size == (32, 32) and run.class_names == ("cats", "dogs")
    model = run.load_model()
    report = evaluation.evaluate_split(model, str(records), "test", dataset.InputConfig(image_size=run.image_size),
                                       run.class_names)
    from_records = dict(zip(report.filenames, report.probabilities))
    files = _test_files(split_tree)
    predicted = inference.predict_files(run, model, list(files.values()), batch_size=3)
    served = tf.saved_model.load(str(model_dir / "export")).signatures["serving_default"](
        image_bytes=tf.constant([open(path, "rb").read() for path in files.values()]))
    assert served["probabilities"].dtype == tf.float32 and served["classes"].dtype == tf.string
    for (relpath, _), p, exported, name in zip(files.items(), predicted, served["probabilities"].numpy(),
                                               served["classes"].numpy()):
        assert not p.error
        # The sources are RGB JPEGs, stored as they are: the same bytes, the same decode.
        np.testing.assert_array_equal(np.array(p.probabilities, np.float32), from_records[relpath])
        np.testing.assert_allclose(exported, from_records[relpath], atol=1e-6)
        assert name.decode() == run.class_names[int(np.argmax(exported))]


def test_predict_writes_a_row_per_file_and_an_error_row_for_a_broken_one(finished_run, split_tree, tmp_path):
    _, model_dir = finished_run
    photos = tmp_path / "photos"
    shutil.copytree(split_tree.root / "test", photos / "test")
    source = split_tree.split("test")[0]
    pixels = source.pixels()
    for name, fmt, mode in [("png.png", "PNG", None), ("grey.png", "PNG", "L"), ("cmyk.jpg", "JPEG", "CMYK"),
                            ("anim.gif", "GIF", "P"), ("bitmap.bmp", "BMP", None), ("web.webp", "WEBP", None)]:
        save_image(pixels, photos / "formats" / name, fmt, mode)
    whole = source.path.read_bytes()
    (photos / "cut.jpg").write_bytes(whole[: len(whole) // 2])
    output = tmp_path / "out.csv"

    done = cli.run(PREDICT, f"--model_dir={model_dir}", f"--output={output}", "--batch_size=3", photos)
    assert done.returncode == 0, done.stderr[-3000:]
    rows = {row["path"]: row for row in _csv(output)}
    assert list(_csv(output)[0]) == ["path", "predicted", "confidence", "p_cats", "p_dogs", "error"]
    assert len(rows) == len(split_tree.split("test")) + 6 + 1
    broken = rows.pop(str(photos / "cut.jpg"))
    assert broken["predicted"] == "" and "JPEG" in broken["error"], broken
    for row in rows.values():
        assert row["error"] == "" and row["predicted"] in ("cats", "dogs"), row
        p = [float(row["p_cats"]), float(row["p_dogs"])]
        assert sum(p) == pytest.approx(1.0, abs=1e-5) and float(row["confidence"]) == max(p)
    assert "Predicted 10 of 11 files" in done.stdout and "1 could not be read or decoded" in done.stdout

    strict = cli.run(PREDICT, f"--model_dir={model_dir}", f"--output={output}", "--strict", photos / "cut.jpg")
    assert strict.returncode == 1

    # A URL, as tf.io.gfile reads it.
    remote = copy_tree_to(photos / "test", "ram://predict/photos")
    at_url = cli.run(PREDICT, f"--model_dir={model_dir}", f"--output={tmp_path / 'url.csv'}", remote)
    assert at_url.returncode == 0, at_url.stderr[-3000:]
    assert [row["p_cats"] for row in _csv(tmp_path / "url.csv")] == [
        rows[str(photos / "test" / row["path"][len(remote) + 1:])]["p_cats"] for row in _csv(tmp_path / "url.csv")
    ]


def test_predict_passes_over_hidden_entries_of_folders_and_fails_when_nothing_predicts(finished_run, split_tree,
                                                                                     tmp_path):
    _, model_dir = finished_run
    photos, output = tmp_path / "photos", tmp_path / "out.csv"
    source = split_tree.split("test")[0].path
    photos.mkdir()
    shutil.copy(source, photos / "seen.jpg")
    (photos / "._seen.jpg").write_bytes(b"\0\5\26\7 macOS AppleDouble")  # not an image: was an error row
    (photos / ".DS_Store").write_bytes(b"junk")  # not an image file by its name: never counted
    (photos / ".thumbnails").mkdir()
    shutil.copy(source, photos / ".thumbnails" / "seen.jpg")
    shutil.copy(source, tmp_path / ".named.jpg")

    done = cli.run(PREDICT, f"--model_dir={model_dir}", f"--output={output}", photos, tmp_path / ".named.jpg")
    assert done.returncode == 0, done.stderr[-3000:]
    rows = _csv(output)
    assert [row["path"] for row in rows] == [str(photos / "seen.jpg"), str(tmp_path / ".named.jpg")]
    assert not any(row["error"] for row in rows)
    assert done.stdout.strip().splitlines()[-1] == (
        f"Predicted 2 of 2 files into {output}; 2 hidden entries (names starting with '.') passed over: "
        "name a hidden file to predict it")

    # Nothing predicted: exit 1 even without --strict, the closing line as ever.
    (tmp_path / "cut.jpg").write_bytes(source.read_bytes()[:100])
    none = cli.run(PREDICT, f"--model_dir={model_dir}", f"--output={output}",
                   tmp_path / "cut.jpg", tmp_path / "gone.jpg")
    assert none.returncode == 1 and "Traceback" not in none.stderr
    assert none.stdout.strip().splitlines()[-1] == (
        f"Predicted 0 of 2 files into {output}; 2 could not be read or decoded (the error column says why)")
    assert [bool(row["error"]) for row in _csv(output)] == [True, True]
    # A hidden folder named is searched; a folder of hidden entries only is one line.
    named = cli.run(PREDICT, f"--model_dir={model_dir}", f"--output={output}", photos / ".thumbnails")
    assert named.returncode == 0 and "Predicted 1 of 1 files" in named.stdout
    (photos / "seen.jpg").unlink()
    only_hidden = cli.run(PREDICT, f"--model_dir={model_dir}", f"--output={output}", photos)
    assert only_hidden.returncode == 1 and only_hidden.stderr.strip().splitlines()[-1].endswith(
        f"under {photos}; 2 hidden entries (names starting with '.') passed over: name a hidden file to predict it")


@pytest.mark.parametrize("command, args, message", [
    (EVALUATE, [], "--model_dir is required"),
    (PREDICT, ["--model_dir={model_dir}"], "no PATH given"),
    (PREDICT, ["--model_dir={tmp}", "x.jpg"], "holds no run"),
    (EXPORT, ["--model_dir={tmp}"], "holds no run"),
    (PREDICT, ["--model_dir={model_dir}", "--output={tmp}", "x.jpg"], "is a folder"),
])
def test_bad_input_is_one_line_and_exit_1(finished_run, tmp_path, command, args, message):
    _, model_dir = finished_run
    done = cli.run(command, *(a.format(model_dir=model_dir, tmp=tmp_path) for a in args))
    assert done.returncode == 1
    (line,) = [line for line in done.stderr.splitlines() if line.startswith(f"{command.prog}: error:")]
    assert message in line and "Traceback" not in done.stderr


_ONLY_TENSORFLOW = textwrap.dedent(
    """
    import json, sys
    import tensorflow as tf
    served = tf.saved_model.load(sys.argv[1]).signatures["serving_default"]
    images = [open(path, "rb").read() for path in sys.argv[2:]]
    out = served(image_bytes=tf.constant(images))
    ours = sorted(m for m in sys.modules if m.split(".")[0] in ("pipeline", "model", "benchmark"))
    print(json.dumps({"probabilities": out["probabilities"].numpy().tolist(), "ours": ours}))
    """
)


def test_the_export_serves_in_a_python_with_only_tensorflow(finished_run, split_tree, tmp_path):
    _, model_dir = finished_run
    export = tmp_path / "export"
    done = cli.run(EXPORT, f"--model_dir={model_dir}", f"--out={export}")  # export.py, for an older run
    assert done.returncode == 0, done.stderr[-3000:]
    script = tmp_path / "serve.py"
    script.write_text(_ONLY_TENSORFLOW)
    files = list(_test_files(split_tree).values())
    served = processes.run(script, export, *files, environment=processes.env(PYTHONPATH=""))
    assert served.returncode == 0, served.stderr[-3000:]
    answer = json.loads(served.stdout.strip().splitlines()[-1])
    assert answer["ours"] == []
    run = inference.open_run(str(model_dir))
    expected = [p.probabilities for p in inference.predict_files(run, run.load_model(), files, batch_size=8)]
    np.testing.assert_allclose(answer["probabilities"], expected, atol=1e-5)


def test_export_replaces_an_earlier_export_and_nothing_else(finished_run, tmp_path):
    _, model_dir = finished_run
    export = tmp_path / "exports" / "export"
    for _ in range(2):  # the second replaces the first, and leaves nothing beside it
        done = cli.run(EXPORT, f"--model_dir={model_dir}", f"--out={export}")
        assert done.returncode == 0, done.stderr[-3000:]
    assert (export / "saved_model.pb").is_file() and [p.name for p in export.parent.iterdir()] == ["export"]
    records = tmp_path / "records"
    records.mkdir()
    (records / "train.tfrecord").write_bytes(b"mine")
    photo = tmp_path / "photo.png"
    photo.write_bytes(b"mine")
    for taken in (records, photo, tmp_path):  # a folder, a file, a folder above them
        refused = cli.run(EXPORT, f"--model_dir={model_dir}", f"--out={taken}")
        assert refused.returncode == 1 and "Traceback" not in refused.stderr
        assert refused.stderr.strip().splitlines()[-1] == (
            f"export.py: error: {taken} exists and is not a SavedModel: give a new folder or an earlier export")
    assert (records / "train.tfrecord").read_bytes() == b"mine" and photo.read_bytes() == b"mine"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["exports", "photo.png", "records"]


def test_a_model_with_device_augmentation_exports_with_it_off(tmp_path):
    run = inference.TrainedRun(str(tmp_path), ("a", "b", "c"), (32, 32))
    model = cnn.build_cnn((32, 32), 3, device_augmentation=augment.NOTEBOOK_AUGMENTATION, seed=1)
    pixels = np.random.default_rng(0).integers(0, 256, (2, 40, 30, 3), np.uint8)
    encoded = [tf.io.encode_png(image).numpy() for image in pixels]
    served = tf.saved_model.load(inference.export_model(run, model)).signatures["serving_default"]
    first, second = (served(image_bytes=tf.constant(encoded))["probabilities"].numpy() for _ in range(2))
    np.testing.assert_array_equal(first, second)  # no random warp at inference
    images = tf.stack([tf.image.resize(image, (32, 32)) / 255.0 for image in pixels])
    np.testing.assert_allclose(first, model(images, training=False).numpy(), atol=1e-6)
    assert first.shape == (2, 3)


def test_real_photos_agree_exactly_through_the_three_paths(tmp_path):
    photos = require_cat_dog_small()
    tree = tmp_path / "photos"
    for class_name in ("cats", "dogs"):
        (tree / "test" / class_name).mkdir(parents=True)
        for path in sorted((photos / "test" / class_name).iterdir())[:6]:
            shutil.copy(path, tree / "test" / class_name / path.name)
    records = tmp_path / "records"
    convert(tree, records)
    run = inference.TrainedRun(str(tmp_path / "run"), ("cats", "dogs"), (150, 150), str(records))
    keras.utils.set_random_seed(3)
    model = cnn.build_cnn((150, 150), 2, seed=3)
    report = evaluation.evaluate_split(model, str(records), "test", dataset.InputConfig(), run.class_names)
    files = {f"{path.parent.name}/{path.name}": str(path) for path in sorted(tree.glob("test/*/*.jpg"))}
    predicted = inference.predict_files(run, model, list(files.values()), batch_size=20)
    served = tf.saved_model.load(inference.export_model(run, model)).signatures["serving_default"](
        image_bytes=tf.constant([open(path, "rb").read() for path in files.values()]))["probabilities"].numpy()
    from_records = dict(zip(report.filenames, report.probabilities))
    for relpath, p, exported in zip(files, predicted, served):
        assert not p.error
        np.testing.assert_allclose(p.probabilities, from_records[relpath], atol=1e-5)
        np.testing.assert_allclose(exported, from_records[relpath], atol=1e-5)
    # Stored as-is, so the model's inputs are the same bits. (The probabilities
    # then differ by at most a float32 step: another batch order sums otherwise.)
    config = dataset.InputConfig(batch_size=20)
    record_images = np.concatenate([x.numpy() for x, _ in dataset.eval_dataset(str(records), "test", config)])
    by_name = dict(zip(report.filenames, record_images))
    (file_images, _), = dataset.files_dataset(list(files.values()), (150, 150), batch_size=20)
    for relpath, image in zip(files, file_images.numpy()):
        np.testing.assert_array_equal(image, by_name[relpath])
