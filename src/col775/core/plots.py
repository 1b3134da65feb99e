"""Figures shared by every study: curves and image grids, written as PNG files."""

from __future__ import annotations

from pathlib import Path
from typing import Sequence

import matplotlib

matplotlib.use("Agg")  # reports are written on headless machines
import matplotlib.pyplot as plt  # noqa: E402
from matplotlib.ticker import MaxNLocator  # noqa: E402
import numpy as np  # noqa: E402
from sklearn.metrics import ConfusionMatrixDisplay  # noqa: E402


def line_plot(
    series: dict[str, tuple[Sequence[float], Sequence[float]]],
    path: str | Path,
    title: str,
    xlabel: str = "epoch",
    ylabel: str = "",
) -> Path:
    """One line per named (xs, ys) series on shared axes."""
    fig, ax = plt.subplots(figsize=(6.4, 4.0), dpi=100)
    _draw_lines(ax, series, title, xlabel, ylabel)
    return _save(fig, path)


def line_panels(
    panels: dict[str, dict[str, tuple[Sequence[float], Sequence[float]]]],
    path: str | Path,
    title: str,
    xlabel: str = "epoch",
    ncols: int = 2,
) -> Path:
    """One figure of several line plots: per panel title, its named (xs, ys) series (as in line_plot)."""
    nrows = (len(panels) + ncols - 1) // ncols
    fig, axes = plt.subplots(nrows, ncols, figsize=(5.2 * ncols, 3.4 * nrows + 0.4), dpi=100, squeeze=False)
    for ax in axes.flat[len(panels):]:
        ax.axis("off")
    for ax, (name, series) in zip(axes.flat, panels.items()):
        _draw_lines(ax, series, name, xlabel, name)
    fig.suptitle(title, fontsize=11)
    return _save(fig, path)


def _draw_lines(ax, series: dict[str, tuple[Sequence[float], Sequence[float]]], title: str, xlabel: str, ylabel: str) -> None:
    for label, (xs, ys) in series.items():
        ax.plot(list(xs), list(ys), label=label, marker="o" if len(xs) < 15 else None, markersize=3)
    ax.set_title(title)
    if xlabel in ("epoch", "step"):
        ax.xaxis.set_major_locator(MaxNLocator(integer=True))
    ax.set_xlabel(xlabel)
    ax.set_ylabel(ylabel)
    ax.grid(alpha=0.3)
    if len(series) > 1:
        ax.legend(fontsize=8)


def confusion_plot(matrix: np.ndarray, labels: Sequence[str], path: str | Path, title: str = "") -> Path:
    """A confusion matrix (rows: true class, columns: predicted class) with its counts written in."""
    size = 3 + 0.35 * len(labels)
    fig, ax = plt.subplots(figsize=(size, size), dpi=100)
    ConfusionMatrixDisplay(matrix, display_labels=list(labels)).plot(ax=ax, xticks_rotation="vertical", colorbar=False)
    ax.set_title(title)
    return _save(fig, path)


def _save(fig, path: str | Path) -> Path:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.tight_layout()
    fig.savefig(path)
    plt.close(fig)
    return path


def image_grid(
    images: Sequence[np.ndarray | None],
    path: str | Path,
    titles: Sequence[str] | None = None,
    ncols: int = 8,
    title: str | None = None,
    cell_inches: float = 1.6,
) -> Path:
    """Images (HxWx3 uint8, or HxW shown with a colour map) in a grid with optional captions.

    A None entry leaves its cell blank, so rows can be aligned (e.g. one row per kind).
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    count = max(len(images), 1)
    ncols = min(ncols, count)
    nrows = (count + ncols - 1) // ncols
    fig, axes = plt.subplots(nrows, ncols, figsize=(cell_inches * ncols, cell_inches * nrows + 0.4), squeeze=False)
    for index, ax in enumerate(axes.flat):
        ax.axis("off")
        if index < len(images) and images[index] is not None:
            image = images[index]
            ax.imshow(image, cmap="viridis" if image.ndim == 2 else None, interpolation="nearest")
            if titles is not None:
                ax.set_title(titles[index], fontsize=7)
    if title:
        fig.suptitle(title, fontsize=10)
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)
    return path


def history_curves(history: Sequence[dict], out_dir: str | Path) -> list[Path]:
    """One PNG per logged quantity of a run's metrics.jsonl, its splits overlaid.

    Keys are grouped by their last path part, so "train/loss" and "val/loss" share `loss.png`;
    a key without a split ("lr") gets a figure of its own.
    """
    groups: dict[str, dict[str, tuple[list, list]]] = {}
    for record in history:
        for key, value in record.items():
            if key == "epoch" or isinstance(value, bool) or not isinstance(value, (int, float)):
                continue
            split, _, quantity = key.rpartition("/")
            xs, ys = groups.setdefault(quantity, {}).setdefault(split or quantity, ([], []))
            xs.append(record["epoch"])
            ys.append(value)
    paths = []
    for quantity, series in sorted(groups.items()):
        safe = "".join(c if c.isalnum() or c in "-_" else "_" for c in quantity)
        paths.append(line_plot(series, Path(out_dir) / f"{safe}.png", title=quantity, ylabel=quantity))
    return paths
