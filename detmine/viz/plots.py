"""Precision-recall curves drawn with OpenCV (no plotting library needed).

:func:`pr_curves_at_iou` pulls the per-class curves out of COCOeval's
``precision`` array ``[T, R, K, A, M]``; :func:`draw_pr_grid` draws them as a grid
of small plots, one per class plus a first "mean over classes" plot, each titled
with the class name and its AP at that IoU (the area under the drawn curve as
COCO computes it: the mean of the 101 interpolated precisions).
"""

from __future__ import annotations

import math
import warnings
from collections.abc import Sequence

import cv2
import numpy as np

FONT = cv2.FONT_HERSHEY_SIMPLEX
COCO_IOU_THRESHOLDS = np.linspace(0.5, 0.95, 10)


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


def _draw_tile(curve: np.ndarray, recall: np.ndarray, title: str, size: tuple[int, int]) -> np.ndarray:
    tw, th = size
    tile = np.full((th, tw, 3), 255, dtype=np.uint8)
    left, right, top, bottom = 30, 8, 22, 20
    pw, ph = tw - left - right, th - top - bottom

    def to_px(x: float, y: float) -> tuple[int, int]:
        return int(round(left + x * pw)), int(round(top + (1.0 - y) * ph))

    for v in (0.0, 0.5, 1.0):  # grid + tick labels
        cv2.line(tile, to_px(0, v), to_px(1, v), (225, 225, 225), 1)
        cv2.line(tile, to_px(v, 0), to_px(v, 1), (225, 225, 225), 1)
        cv2.putText(tile, f"{v:.1f}", (2, to_px(0, v)[1] + 4), FONT, 0.32, (90, 90, 90), 1, cv2.LINE_AA)
        x, y = to_px(v, 0)
        cv2.putText(tile, f"{v:.1f}", (x - 8, y + 13), FONT, 0.32, (90, 90, 90), 1, cv2.LINE_AA)
    cv2.rectangle(tile, to_px(0, 1), to_px(1, 0), (60, 60, 60), 1)
    valid = curve > -1
    if valid.any():
        pts = np.array([to_px(r, p) for r, p in zip(recall[valid], curve[valid], strict=True)], np.int32)
        cv2.polylines(tile, [pts.reshape(-1, 1, 2)], False, (30, 90, 220), 2, cv2.LINE_AA)
    scale = 0.4
    while scale > 0.25 and cv2.getTextSize(title, FONT, scale, 1)[0][0] > tw - 4:
        scale -= 0.03
    cv2.putText(tile, title, (3, 15), FONT, scale, (0, 0, 0), 1, cv2.LINE_AA)
    return tile


def draw_pr_grid(
    precision: np.ndarray,
    class_names: Sequence[str],
    iou: float = 0.5,
    tile_size: tuple[int, int] = (220, 180),
    columns: int | None = None,
) -> np.ndarray:
    """A grid of precision-recall plots: "all classes" (mean of the defined
    per-class precisions) first, then one per class in class order.

    Args:
        precision: COCOeval ``precision`` ``[T, R, K, A, M]``.
        class_names: ``K`` names (index k-1 is class k).
        iou: IoU threshold of the curves.
        tile_size: ``(width, height)`` of one plot.
        columns: plots per row; default ``ceil(sqrt(K + 1))``, at most 10.

    Returns:
        ``[rows * h, columns * w, 3]`` uint8 RGB image, white background.
    """
    recall, p = pr_curves_at_iou(precision, iou)
    k = p.shape[1]
    names = list(class_names) + [str(i + 1) for i in range(len(class_names), k)]
    defined = np.where(p > -1, p, np.nan)
    with warnings.catch_warnings():  # recall points no class reaches: "mean of empty slice"
        warnings.simplefilter("ignore", RuntimeWarning)
        mean_curve = np.nanmean(defined, axis=1) if k else np.full(len(recall), np.nan)
    mean_curve = np.where(np.isnan(mean_curve), -1.0, mean_curve)
    curves = [mean_curve] + [p[:, i] for i in range(k)]
    titles = [f"all classes  AP{int(round(iou * 100))} {_fmt(average_precision(mean_curve))}"]
    titles += [f"{names[i]}  {_fmt(average_precision(p[:, i]))}" for i in range(k)]
    cols = columns or min(10, max(1, math.ceil(math.sqrt(len(curves)))))
    rows = math.ceil(len(curves) / cols)
    tw, th = tile_size
    grid = np.full((rows * th, cols * tw, 3), 255, dtype=np.uint8)
    for i, (curve, title) in enumerate(zip(curves, titles, strict=True)):
        r, c = divmod(i, cols)
        grid[r * th : (r + 1) * th, c * tw : (c + 1) * tw] = _draw_tile(curve, recall, title, tile_size)
    return grid


def _fmt(ap: float) -> str:
    return "n/a" if math.isnan(ap) else f"{ap:.3f}"
