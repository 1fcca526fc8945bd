"""Pictures people would rather look at than read: image grids, curves, bars.

Every figure is drawn on its own Agg canvas (no pyplot, no global state) and
saved as a PNG.
"""

from __future__ import annotations

import dataclasses
import os
from collections.abc import Mapping, Sequence

import numpy as np
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure
from matplotlib.patches import Patch
from matplotlib.ticker import FuncFormatter, MaxNLocator, NullFormatter

from pipeline import fileio


def _figure(**kwargs) -> Figure:
    fig = Figure(**kwargs)
    FigureCanvasAgg(fig)
    return fig


def _save(fig: Figure, path: str, dpi: int = 100, tight: bool = True) -> str:
    """Writes `fig` as a PNG; `tight` crops it to what is drawn (one more drawing pass)."""
    folder = os.path.dirname(path)
    if folder:
        fileio.makedirs(folder)
    with fileio.open_file(path, "wb") as f:
        fig.savefig(f, format="png", dpi=dpi, bbox_inches="tight" if tight else None)
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
    # One axes showing one sheet of tiles: a grid of rows*cols axes costs
    # five times as much to draw, and train.py draws two grids per run.
    images = np.clip(np.asarray(images, dtype=np.float32)[: rows * cols], 0.0, 1.0)
    height, width = images.shape[1:3]
    gap_x, gap_y = max(1, width // 10), max(1, height // 4)  # a row's gap holds its titles
    sheet = np.ones((rows * (height + gap_y), cols * (width + gap_x), 3), np.float32)
    title_inches = 0.45 if suptitle else 0.0
    fig_height = 2.4 * rows + title_inches
    fig = _figure(figsize=(2.2 * cols, fig_height))
    ax = fig.add_axes((0.01, 0.01, 0.98, 0.98 - title_inches / fig_height))
    ax.axis("off")
    for i, (image, title) in enumerate(zip(images, titles)):
        top, left = (i // cols) * (height + gap_y) + gap_y, (i % cols) * (width + gap_x) + gap_x // 2
        sheet[top:top + height, left:left + width] = image
        ax.text(left + width / 2, top - 0.15 * gap_y, title, ha="center", va="bottom", fontsize=9)
    ax.imshow(sheet)
    if suptitle:
        fig.suptitle(suptitle, y=1 - 0.1 / fig_height, va="top")
    return _save(fig, path, tight=False)


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
    # Redrawn after every epoch: a fixed layout, a third of the constrained one's cost.
    fig = _figure(figsize=(11, 4))
    axes = fig.subplots(1, 2, gridspec_kw=dict(left=0.07, right=0.98, bottom=0.13, top=0.91, wspace=0.22))
    for ax, metric in zip(axes, ("accuracy", "loss")):
        for key, label, style in ((metric, "training", "o-"), (f"val_{metric}", "validation", "s-")):
            values = [entry.get(key) for entry in history]
            if any(v is not None for v in values):
                ax.plot(epochs, values, style, label=f"{label} {metric}")
        ax.set_xlabel("epoch")
        ax.xaxis.set_major_locator(MaxNLocator(integer=True))
        ax.set_ylabel(metric)
        ax.set_title(f"Training and validation {metric}")
        ax.grid(alpha=0.3)
        ax.legend()
    return _save(fig, path, tight=False)


@dataclasses.dataclass(frozen=True)
class Bar:
    """One bar of `plot_bar_panels`."""

    label: str
    value: float
    group: str  # picks the colour and the legend entry
    note: str = ""  # written after the value


def plot_bar_panels(
    panels: Sequence[tuple[str, Sequence[Bar]]],
    path: str,
    colours: Mapping[str, str],
    suptitle: str = "",
    xlabel: str = "images/s",
) -> str:
    """Horizontal bars on a log scale, one panel per (title, bars).

    Args:
      panels: (title, bars) per panel, top to bottom; empty panels are left out.
      path: the PNG to write.
      colours: group -> matplotlib colour (grey for others).
      suptitle: a title over the panels.
      xlabel: the unit of the values.

    Returns:
      `path`.
    """
    panels = [(title, bars) for title, bars in panels if bars]
    rows = sum(len(bars) for _, bars in panels)
    fig = _figure(figsize=(11, 1.6 + 0.38 * rows + 0.9 * len(panels)), layout="constrained")
    axes = fig.subplots(
        len(panels), 1, squeeze=False,
        gridspec_kw={"height_ratios": [len(bars) + 1 for _, bars in panels]},
    )[:, 0]
    for ax, (title, bars) in zip(axes, panels):
        values = [bar.value for bar in bars]
        positions = np.arange(len(bars))
        ax.barh(positions, values, color=[colours.get(bar.group, "#999999") for bar in bars], height=0.7)
        ax.set_xscale("log")
        ax.set_yticks(positions, [bar.label for bar in bars], fontsize=9)
        ax.invert_yaxis()
        positive = [v for v in values if v > 0]
        if positive:
            ax.set_xlim(min(positive) / 2, max(positive) * 8)
        for position, bar in zip(positions, bars):
            text = f"{bar.value:,.0f}" if bar.value >= 10 else f"{bar.value:.2f}"
            ax.text(bar.value * 1.08, position, f"{text}  {bar.note}".rstrip(), va="center", fontsize=8)
        ax.xaxis.set_major_formatter(FuncFormatter(lambda x, _: f"{x:,.0f}" if x >= 1 else f"{x:g}"))
        ax.xaxis.set_minor_formatter(NullFormatter())
        ax.set_xlabel(xlabel, fontsize=9)
        ax.set_title(title, fontsize=10, loc="left")
        ax.grid(axis="x", which="major", alpha=0.3)
    if suptitle:
        fig.suptitle(suptitle, fontsize=10)
    groups = list(dict.fromkeys(bar.group for _, bars in panels for bar in bars))
    fig.legend(
        handles=[Patch(color=colours.get(g, "#999999"), label=g) for g in groups],
        loc="outside lower center", ncols=min(len(groups), 3), fontsize=8,
    )
    return _save(fig, path, dpi=120)


@dataclasses.dataclass(frozen=True)
class LinePanel:
    """One panel of `plot_line_panels`: named series of (xs, ys)."""

    title: str
    xlabel: str
    ylabel: str
    series: Mapping[str, tuple[Sequence[float], Sequence[float]]]


def plot_line_panels(panels: Sequence[LinePanel], path: str, suptitle: str | None = None) -> str:
    """Saves panels of line charts side by side as a PNG; returns `path`."""
    fig = _figure(figsize=(5.5 * len(panels), 4), layout="constrained")
    axes = fig.subplots(1, len(panels), squeeze=False)[0]
    for ax, panel in zip(axes, panels):
        for label, (xs, ys) in panel.series.items():
            ax.plot(xs, ys, "o-" if len(xs) < 30 else "-", label=label)
            if all(isinstance(x, int) for x in xs):  # epochs, counts: no 2.5
                ax.xaxis.set_major_locator(MaxNLocator(integer=True))
        ax.set_title(panel.title)
        ax.set_xlabel(panel.xlabel)
        ax.set_ylabel(panel.ylabel)
        ax.set_ylim(bottom=0)
        ax.grid(alpha=0.3)
        ax.legend()
    if suptitle:
        fig.suptitle(suptitle)
    return _save(fig, path)


def plot_confusion_matrix(matrix: np.ndarray, class_names: Sequence[str], path: str, title: str = "") -> str:
    """Counts of (true row, predicted column) as a shaded grid, each cell with its count.

    Args:
      matrix: int [C, C]; rows true classes, columns predicted.
      class_names: the C names, in that order.
      path: the PNG to write.
    """
    size = 1.2 + 0.9 * len(class_names)
    fig = _figure(figsize=(size + 1.0, size))
    ax = fig.add_subplot()
    ax.imshow(matrix, cmap="Blues")
    ticks = range(len(class_names))
    ax.set_xticks(ticks, class_names)
    ax.set_yticks(ticks, class_names)
    ax.set_xlabel("predicted")
    ax.set_ylabel("true")
    threshold = matrix.max() / 2 if matrix.size else 0
    for (row, col), count in np.ndenumerate(matrix):
        ax.text(col, row, f"{count}", ha="center", va="center", color="white" if count > threshold else "black")
    if title:
        ax.set_title(title)
    return _save(fig, path)


@dataclasses.dataclass(frozen=True)
class ImagePair:
    """Two images shown side by side under one caption (`plot_data_report`'s duplicates)."""

    left: np.ndarray  # uint8 [H, W, 3]
    right: np.ndarray  # uint8 [H, W, 3], the same height
    caption: str


def plot_data_report(
    class_counts: Mapping[str, Mapping[str, int]],
    sizes: Sequence[tuple[int, int]] | None,
    pairs: Sequence[ImagePair],
    path: str,
    title: str = "",
) -> str:
    """Class counts per split (bars), image sizes (a scatter), and image pairs, as one PNG.

    Args:
      class_counts: split -> class -> images.
      sizes: (height, width) of every image, or None when not measured.
      pairs: up to 8 are drawn, four to a row.
      path: the PNG to write.
    """
    pairs = list(pairs)[:8]
    pair_rows = (len(pairs) + 3) // 4
    fig = _figure(figsize=(14, 4.2 + 2.6 * pair_rows))
    grid = fig.add_gridspec(1 + pair_rows, 4, height_ratios=[4.2] + [2.6] * pair_rows, hspace=0.45, wspace=0.25,
                            left=0.05, right=0.98, top=0.93 if title else 0.97, bottom=0.02)
    bars = fig.add_subplot(grid[0, :2])
    classes = list(dict.fromkeys(c for counts in class_counts.values() for c in counts))
    width = 0.8 / max(1, len(class_counts))
    for i, (split, counts) in enumerate(class_counts.items()):
        positions = np.arange(len(classes)) + i * width
        values = [counts.get(c, 0) for c in classes]
        bars.bar(positions, values, width, label=split)
        for x, value in zip(positions, values):
            bars.text(x, value, f"{value:,}", ha="center", va="bottom", fontsize=8)
    bars.set_xticks(np.arange(len(classes)) + width * (len(class_counts) - 1) / 2, classes)
    bars.set_ylabel("images")
    bars.set_title("Images per class and split", fontsize=10)
    bars.legend(fontsize=8)
    scatter = fig.add_subplot(grid[0, 2:])
    if sizes:
        heights, widths = np.array(sizes).T
        scatter.scatter(widths, heights, s=6, alpha=0.4)
        scatter.set_xlabel("width (pixels)")
        scatter.set_ylabel("height (pixels)")
        scatter.grid(alpha=0.3)
    else:
        scatter.text(0.5, 0.5, "not measured (--duplicates=off)", ha="center", va="center")
        scatter.set_axis_off()
    scatter.set_title(f"Source image sizes, original ({len(sizes or ()):,} files decoded)", fontsize=10)
    for i, pair in enumerate(pairs):
        ax = fig.add_subplot(grid[1 + i // 4, i % 4])
        gap = np.full((pair.left.shape[0], max(2, pair.left.shape[1] // 20), 3), 255, np.uint8)
        ax.imshow(np.concatenate([pair.left, gap, pair.right], axis=1))
        ax.set_axis_off()
        ax.set_title(pair.caption, fontsize=7.5)
    if title:
        fig.suptitle(title, fontsize=11)
    return _save(fig, path, tight=False)
