"""Precision-recall curves drawn with matplotlib (headless Agg canvas, no pyplot state).

:func:`pr_curves_at_iou` pulls the per-class curves out of COCOeval's ``precision`` array
``[T, R, K, A, M]``; :func:`pr_figure` lays them out as a grid of small plots -- "all classes"
(the mean over the classes, with each class faint behind it) first, then one per class with
the mean dashed for reference -- each with labelled axes (recall, precision), a title and a
legend giving the AP at that IoU (the area under the drawn curve as COCO computes it: the mean
of the 101 interpolated precisions). :func:`draw_pr_grid` renders the figure to an RGB array
for TensorBoard.
"""

from __future__ import annotations

import math
import warnings
from collections.abc import Sequence
from typing import TYPE_CHECKING

import numpy as np

if TYPE_CHECKING:
    from matplotlib.figure import Figure

COCO_IOU_THRESHOLDS = np.linspace(0.5, 0.95, 10)
MAX_CLASSES_OVERLAID = 10  # more faint class curves on the first plot would be noise
CLASS_COLOR = "#1f5fd6"
MEAN_COLOR = "#444444"


def pr_curves_at_iou(precision: np.ndarray, iou: float = 0.5) -> tuple[np.ndarray, np.ndarray]:
    """Per-class precision at the COCO recall points for one IoU threshold.

    Args:
        precision: COCOeval ``eval["precision"]`` ``[T, R, K, A, M]`` (``-1`` where
            a class has no ground truth); area range "all" (index 0) and the
            largest max-detections (index -1) are used.
        iou: one of the COCO thresholds 0.50, 0.55, ..., 0.95.

    Returns:
        ``(recall [R], precision [R, K])`` with ``-1`` kept for undefined entries.
    """
    if precision.ndim != 5:
        raise ValueError(f"expected COCOeval precision of shape [T, R, K, A, M], got {precision.shape}")
    t = int(np.argmin(np.abs(COCO_IOU_THRESHOLDS[: precision.shape[0]] - iou)))
    p = precision[t, :, :, 0, -1]
    recall = np.linspace(0.0, 1.0, p.shape[0])
    return recall, p


def average_precision(curve: np.ndarray) -> float:
    """COCO AP of one interpolated curve ``[R]`` (``nan`` when undefined)."""
    valid = curve > -1
    return float(curve[valid].mean()) if valid.any() else float("nan")


def mean_curve(p: np.ndarray) -> np.ndarray:
    """The mean over the classes of ``p [R, K]`` where defined (``-1`` where no class is)."""
    defined = np.where(p > -1, p, np.nan)
    with warnings.catch_warnings():  # recall points no class reaches: "mean of empty slice"
        warnings.simplefilter("ignore", RuntimeWarning)
        mean = np.nanmean(defined, axis=1) if p.shape[1] else np.full(p.shape[0], np.nan)
    return np.where(np.isnan(mean), -1.0, mean)


def _fmt(ap: float) -> str:
    return "n/a" if math.isnan(ap) else f"{ap:.3f}"


def _plot(ax, recall: np.ndarray, curve: np.ndarray, **kwargs) -> None:  # type: ignore[no-untyped-def]
    valid = curve > -1
    ax.plot(recall[valid], curve[valid], **kwargs)


def pr_figure(
    precision: np.ndarray,
    class_names: Sequence[str],
    iou: float = 0.5,
    tile_size: tuple[int, int] = (320, 280),
    columns: int | None = None,
    dpi: int = 100,
) -> Figure:
    """The grid of precision-recall plots as a matplotlib figure (see the module docstring).

    Args:
        precision: COCOeval ``precision`` ``[T, R, K, A, M]``.
        class_names: ``K`` names (index k-1 is class k).
        iou: IoU threshold of the curves.
        tile_size: ``(width, height)`` of one plot in pixels.
        columns: plots per row; default ``ceil(sqrt(K + 1))``, at most 10.

    Returns:
        A :class:`matplotlib.figure.Figure` (attached to an Agg canvas); its axes are the
        plots in order, then hidden spare cells.
    """
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    recall, p = pr_curves_at_iou(precision, iou)
    k = p.shape[1]
    names = list(class_names) + [str(i + 1) for i in range(len(class_names), k)]
    mean = mean_curve(p)
    tag = f"AP{int(round(iou * 100))}"
    cols = columns or min(10, max(1, math.ceil(math.sqrt(k + 1))))
    rows = math.ceil((k + 1) / cols)
    tw, th = tile_size
    fig = Figure(figsize=(cols * tw / dpi, rows * th / dpi), dpi=dpi)
    FigureCanvasAgg(fig)
    axes = fig.subplots(rows, cols, squeeze=False).ravel()
    for i, ax in enumerate(axes):
        if i > k:
            ax.set_visible(False)
            continue
        if i == 0:
            if k <= MAX_CLASSES_OVERLAID:
                for c in range(k):
                    _plot(ax, recall, p[:, c], color=f"C{c % 10}", lw=0.8, alpha=0.45)
            _plot(
                ax,
                recall,
                mean,
                color=CLASS_COLOR,
                lw=2,
                label=f"mean of classes, {tag} {_fmt(average_precision(mean))}",
            )
            ax.set_title(f"all classes (IoU {iou:.2f})", fontsize=9)
        else:
            curve = p[:, i - 1]
            _plot(ax, recall, mean, color=MEAN_COLOR, lw=1, ls="--", label="mean of classes")
            _plot(ax, recall, curve, color=CLASS_COLOR, lw=2, label=f"{tag} {_fmt(average_precision(curve))}")
            ax.set_title(names[i - 1], fontsize=9)
        ax.set_xlim(0, 1)
        ax.set_ylim(0, 1.02)
        ax.set_xlabel("recall", fontsize=8)
        ax.set_ylabel("precision", fontsize=8)
        ax.tick_params(labelsize=7)
        ax.grid(True, alpha=0.3)
        if ax.get_legend_handles_labels()[0]:
            ax.legend(loc="lower left", fontsize=7, framealpha=0.8)
    _fixed_tile_margins(fig, rows, cols, tw, th)
    return fig


#: pixels around each plot of the grid for its tick labels, axis labels and title
_TILE_MARGINS = {"left": 44, "right": 10, "bottom": 36, "top": 24}


def _fixed_tile_margins(fig: Figure, rows: int, cols: int, tile_w: int, tile_h: int) -> None:
    """Lay out a grid of identical plots with the same pixel margins round each (what
    ``tight_layout`` finds for these decorations, without measuring every tick label: that
    measuring was most of the cost of a picture)."""
    m = _TILE_MARGINS
    width, height = cols * tile_w, rows * tile_h
    axis_w = max(1, tile_w - m["left"] - m["right"])
    axis_h = max(1, tile_h - m["bottom"] - m["top"])
    fig.subplots_adjust(
        left=m["left"] / width,
        right=1 - m["right"] / width,
        bottom=m["bottom"] / height,
        top=1 - m["top"] / height,
        wspace=(m["left"] + m["right"]) / axis_w,
        hspace=(m["bottom"] + m["top"]) / axis_h,
    )


def figure_to_rgb(fig: Figure) -> np.ndarray:
    """Render a figure on its Agg canvas -> ``[H, W, 3]`` uint8 RGB."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg

    canvas = fig.canvas if isinstance(fig.canvas, FigureCanvasAgg) else FigureCanvasAgg(fig)
    canvas.draw()
    return np.asarray(canvas.buffer_rgba())[..., :3].copy()


def draw_pr_grid(
    precision: np.ndarray,
    class_names: Sequence[str],
    iou: float = 0.5,
    tile_size: tuple[int, int] = (320, 280),
    columns: int | None = None,
) -> np.ndarray:
    """:func:`pr_figure` rendered: ``[rows * h, columns * w, 3]`` uint8 RGB, white background."""
    return figure_to_rgb(pr_figure(precision, class_names, iou, tile_size, columns))
