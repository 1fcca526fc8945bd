"""Where a trained model goes wrong: one split through the reader, a report per class.

    records split --eval_dataset--> model --> probabilities [N, classes]
        + labels, file names (split_filenames, same order)
    --> Evaluation: accuracy, loss, confusion matrix, per class, ROC AUC
    --> metrics.json, predictions.csv, confusion_matrix.png, mistakes.png

train.py's closing test evaluation and evaluate.py both call `evaluate_split`.
"""

from __future__ import annotations

import csv
import dataclasses
import io
import os

import keras
import numpy as np
import tensorflow as tf

from pipeline import fileio
from pipeline import plots
from pipeline import schema
from pipeline.reader import dataset
from model import backend

MISTAKES_SHOWN = 16  # a 4x4 grid


@dataclasses.dataclass(frozen=True)
class ClassMetrics:
    precision: float
    recall: float
    f1: float
    support: int


@dataclasses.dataclass(frozen=True)
class Evaluation:
    """A split's results, in the run's class order.

    Attributes:
      accuracy, loss: as `model.evaluate` gives them (the loss is the model's
        cross-entropy on the probabilities).
      confusion_matrix: rows are true classes, columns predicted ones.
      per_class: class name -> precision, recall, f1, support.
      roc_auc: for two classes, the area under the ROC curve of the second
        class's probability; None otherwise.
      class_names: the run's classes.
      filenames, labels, probabilities: per example, in the records' order;
        probabilities float32 [N, classes].
      mistakes, mistake_images: the MISTAKES_SHOWN most confident mistakes
        (indices, most confident first) and their model inputs, float32
        [len(mistakes), H, W, 3], kept as the split went by.
    """

    accuracy: float
    loss: float
    confusion_matrix: list[list[int]]
    per_class: dict[str, ClassMetrics]
    roc_auc: float | None
    class_names: tuple[str, ...]
    filenames: tuple[str, ...]
    labels: np.ndarray
    probabilities: np.ndarray
    mistakes: tuple[int, ...] = ()
    mistake_images: np.ndarray | None = None

    def metrics_json(self) -> dict:
        data = {
            "accuracy": self.accuracy, "loss": self.loss, "confusion_matrix": self.confusion_matrix,
            "per_class": {name: dataclasses.asdict(m) for name, m in self.per_class.items()},
            "class_names": list(self.class_names),
        }
        return data if self.roc_auc is None else {**data, "roc_auc": self.roc_auc}


def class_probabilities(outputs) -> tf.Tensor:
    """The model's outputs -> one probability per class, float32 [N, classes]: a sigmoid's
    [N, 1] becomes [1 - p, p]; a softmax's [N, C] stays."""
    outputs = tf.cast(outputs, tf.float32)
    return tf.concat([1.0 - outputs, outputs], axis=-1) if outputs.shape[-1] == 1 else outputs


def batch_probabilities(model: keras.Model, images) -> np.ndarray:
    """One batch through `model` for inference: float32 [N, H, W, 3] (a tf.Tensor or numpy array)
    -> class probabilities, numpy float32 [N, classes] (`class_probabilities`).

    Under JAX through `predict_on_batch`, compiled once a batch shape: the eager call runs
    op by op, 3x slower. Under TensorFlow the eager call: a mirrored model's compiled
    predict would run the whole batch on every replica.
    """
    if backend.name() == backend.JAX:
        outputs = model.predict_on_batch(np.asarray(images))
    else:
        outputs = model(images, training=False)
    return class_probabilities(outputs).numpy()


def _per_class(matrix: np.ndarray, class_names: tuple[str, ...]) -> dict[str, ClassMetrics]:
    found = {}
    for i, name in enumerate(class_names):
        true_positive, predicted, support = matrix[i, i], matrix[:, i].sum(), matrix[i].sum()
        precision = float(true_positive / predicted) if predicted else 0.0
        recall = float(true_positive / support) if support else 0.0
        f1 = 2 * precision * recall / (precision + recall) if precision + recall else 0.0
        found[name] = ClassMetrics(precision, recall, f1, int(support))
    return found


def roc_auc(labels: np.ndarray, scores: np.ndarray) -> float:
    """Area under the ROC curve: the chance that a positive (label 1) outscores a negative, ties half."""
    positives, negatives = int((labels == 1).sum()), int((labels == 0).sum())
    if not positives or not negatives:
        return float("nan")
    # Imported here: scipy.stats is a second of start-up for every train.py, and only the AUC uses it.
    from scipy import stats

    ranks = stats.rankdata(scores)  # tied scores share their mean rank
    return float((ranks[labels == 1].sum() - positives * (positives + 1) / 2) / (positives * negatives))


def evaluate_split(
    model: keras.Model, records_dir: str, split: str, config: dataset.InputConfig, class_names: tuple[str, ...],
    manifest: schema.Manifest | None = None,
) -> Evaluation:
    """Runs `split` of `records_dir` through `model` with the reader's evaluation dataset.

    Args:
      config: the run's evaluation InputConfig (image size, batch size, class mode).
      manifest: the records' manifest, read by the caller; None reads it here.
    """
    manifest = schema.read_manifest(records_dir) if manifest is None else manifest
    ds = dataset.eval_dataset(records_dir, split, dataclasses.replace(config, cache=False, class_mode="sparse"),
                              manifest)
    labels, probabilities, kept = [], [], {}  # kept: index -> (confidence, image) of the top mistakes so far
    start = 0
    for images, batch_labels in ds:
        batch = batch_probabilities(model, images)
        for j in np.flatnonzero(batch.argmax(axis=-1) != batch_labels.numpy()):
            kept[start + int(j)] = (float(batch[j].max()), images[j].numpy())
        kept = dict(sorted(kept.items(), key=lambda item: (-item[1][0], item[0]))[:MISTAKES_SHOWN])
        probabilities.append(batch)
        labels.append(batch_labels.numpy())
        start += len(batch)
    probabilities = np.concatenate(probabilities)
    labels = np.concatenate(labels).astype(np.int64)
    predicted = probabilities.argmax(axis=-1)
    matrix = np.zeros((len(class_names), len(class_names)), np.int64)
    np.add.at(matrix, (labels, predicted), 1)
    # Keras' cross-entropy clips probabilities to [1e-7, 1 - 1e-7]: the same loss as model.evaluate.
    eps = keras.config.epsilon()
    loss = float(-np.log(np.clip(probabilities[np.arange(len(labels)), labels], eps, 1 - eps)).mean())
    return Evaluation(
        accuracy=float((predicted == labels).mean()), loss=loss, confusion_matrix=matrix.tolist(),
        per_class=_per_class(matrix, class_names),
        roc_auc=roc_auc(labels, probabilities[:, 1]) if len(class_names) == 2 else None,
        class_names=class_names, filenames=tuple(dataset.split_filenames(records_dir, split, manifest)),
        labels=labels, probabilities=probabilities, mistakes=tuple(kept),
        mistake_images=np.stack([image for _, image in kept.values()]) if kept else None,
    )


def per_class_table(evaluation: Evaluation) -> str:
    """The per-class table evaluate.py prints."""
    width = max(len(name) for name in (*evaluation.class_names, "class"))
    lines = [f"{'class':<{width}}  precision  recall     f1  support"]
    for name, m in evaluation.per_class.items():
        lines.append(f"{name:<{width}}  {m.precision:9.3f}  {m.recall:6.3f}  {m.f1:5.3f}  {m.support:7d}")
    lines.append(f"accuracy {evaluation.accuracy:.4f}, loss {evaluation.loss:.4f}"
                 + (f", ROC AUC {evaluation.roc_auc:.4f}" if evaluation.roc_auc is not None else ""))
    return "\n".join(lines)


def _predictions_csv(evaluation: Evaluation) -> str:
    out = io.StringIO()
    writer = csv.writer(out)
    writer.writerow(["filename", "true", "predicted", *(f"p_{name}" for name in evaluation.class_names)])
    for name, label, probs in zip(evaluation.filenames, evaluation.labels, evaluation.probabilities):
        writer.writerow([name, evaluation.class_names[label], evaluation.class_names[int(probs.argmax())],
                         *(f"{p:.6f}" for p in probs)])
    return out.getvalue()


def write_report(evaluation: Evaluation, out_dir: str, split: str, pictures: bool = True) -> dict[str, str]:
    """Writes metrics.json, predictions.csv and, with `pictures`, confusion_matrix.png and
    mistakes.png into `out_dir`.

    Returns:
      File kind -> path written.
    """
    fileio.makedirs(out_dir)
    names = ("metrics.json", "predictions.csv") + (("confusion_matrix.png", "mistakes.png") if pictures else ())
    files = {name: os.path.join(out_dir, name) for name in names}
    fileio.write_json(files["metrics.json"], evaluation.metrics_json())
    fileio.write_text(files["predictions.csv"], _predictions_csv(evaluation))
    if pictures:
        _draw_report(evaluation, files["confusion_matrix.png"], files["mistakes.png"], split)
    return files


def _draw_report(evaluation: Evaluation, confusion_png: str, mistakes_png: str, split: str) -> None:
    """The confusion matrix, and a grid of the most confident mistakes titled with their files."""
    plots.plot_confusion_matrix(np.asarray(evaluation.confusion_matrix), evaluation.class_names,
                                confusion_png, title=f"{split}: accuracy {evaluation.accuracy:.3f}")
    mistakes, images = evaluation.mistakes, evaluation.mistake_images
    titles = []
    for i in mistakes:
        predicted = int(evaluation.probabilities[i].argmax())
        titles.append(f"{os.path.basename(evaluation.filenames[i])}\n{evaluation.class_names[evaluation.labels[i]]}"
                      f" -> {evaluation.class_names[predicted]} {evaluation.probabilities[i, predicted]:.2f}")
    suptitle = f"The {len(mistakes)} most confident mistakes ({split})"
    if not len(mistakes):  # a blank tile says so
        images, titles, suptitle = np.ones((1, 32, 32, 3), np.float32), [""], f"No mistakes ({split})"
    plots.plot_image_grid(images, titles, mistakes_png, rows=-(-len(titles) // 4), cols=4, suptitle=suptitle)

