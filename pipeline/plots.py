"""Pictures people would rather look at than read: batches, augmentations, curves."""

from __future__ import annotations

import os
from collections.abc import Mapping, Sequence

import matplotlib

matplotlib.use("Agg")  # files only; no display needed
import matplotlib.ticker  # noqa: E402
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402


def _save(fig, path: str) -> str:
    os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
    fig.savefig(path, dpi=100, bbox_inches="tight")
    plt.close(fig)
    return path


def plot_image_grid(
    images: np.ndarray,
    titles: Sequence[str],
    path: str,
    rows: int = 4,
    cols: int = 5,
    suptitle: str | None = None,
) -> str:
    """Saves up to rows*cols images as a PNG grid, like the notebook's.

    Args:
      images: float [N, H, W, 3] in [0, 1].
      titles: one caption per image.
      path: the PNG to write.
      rows, cols: grid shape.
      suptitle: a title over the grid.

    Returns:
      `path`.
    """
    fig, axes = plt.subplots(rows, cols, figsize=(2.2 * cols, 2.4 * rows))
    for i, ax in enumerate(np.ravel(axes)):
        ax.axis("off")
        if i < len(images):
            ax.imshow(np.clip(images[i], 0.0, 1.0))
            ax.set_title(titles[i], fontsize=9)
    if suptitle:
        fig.suptitle(suptitle)
    fig.tight_layout()
    return _save(fig, path)


def plot_history(history: Sequence[Mapping[str, float]], path: str) -> str:
    """Saves training/validation accuracy and loss per epoch as a PNG.

    Args:
      history: one dict per epoch with "epoch" and Keras' log keys
        ("accuracy", "loss", "val_accuracy", "val_loss").
      path: the PNG to write.

    Returns:
      `path`.
    """
    epochs = [entry["epoch"] + 1 for entry in history]
    fig, axes = plt.subplots(1, 2, figsize=(11, 4))
    for ax, metric in zip(axes, ("accuracy", "loss")):
        for key, label, style in ((metric, "training", "o-"), (f"val_{metric}", "validation", "s-")):
            values = [entry.get(key) for entry in history]
            if any(v is not None for v in values):
                ax.plot(epochs, values, style, label=f"{label} {metric}")
        ax.set_xlabel("epoch")
        ax.xaxis.set_major_locator(matplotlib.ticker.MaxNLocator(integer=True))
        ax.set_ylabel(metric)
        ax.set_title(f"Training and validation {metric}")
        ax.grid(alpha=0.3)
        ax.legend()
    fig.tight_layout()
    return _save(fig, path)
