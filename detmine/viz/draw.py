"""OpenCV drawing of boxes, labels, legends and mining pictures.

Every function is pure: it takes a numpy ``[H, W, 3]`` uint8 RGB image and returns
a new one (the input is never modified). Boxes are xyxy in pixels of that image.

Readability rules:
- line thickness and font size scale with the image size (:func:`line_thickness`,
  :func:`font_scale`), so a 300 px SSD input and a 1333 px COCO image both read well;
- a label is drawn on a filled background and its position is clamped so it stays
  inside the image (above the box when there is room, else inside it);
- the legend is a panel appended *below* the image, so it never hides content and
  box coordinates in the image part are unchanged.
"""

from __future__ import annotations

from collections.abc import Sequence

import cv2
import numpy as np

from detmine.viz.colors import (
    GT_COLOR,
    IGNORE_REGION_COLOR,
    IGNORED_COLOR,
    LEGEND_BG,
    POSITIVE_COLOR,
    RGB,
    TEXT_COLOR,
    negative_rank_colors,
)

FONT = cv2.FONT_HERSHEY_SIMPLEX


def line_thickness(shape: tuple[int, ...]) -> int:
    """Box line thickness for an image of ``shape`` ``(H, W, ...)``: 1 px up to ~480 px,
    then one more pixel per 320 px of the longer side."""
    return max(1, int(round(max(shape[0], shape[1]) / 320)))


def font_scale(shape: tuple[int, ...]) -> float:
    """OpenCV font scale for an image of ``shape``: readable, never below 0.35."""
    return max(0.35, max(shape[0], shape[1]) / 1000.0)


def _check_image(image: np.ndarray) -> np.ndarray:
    if not isinstance(image, np.ndarray) or image.ndim != 3 or image.shape[2] != 3 or image.dtype != np.uint8:
        raise ValueError(
            "expected a numpy [H, W, 3] uint8 RGB image, got "
            f"{type(image).__name__} {getattr(image, 'shape', None)} {getattr(image, 'dtype', None)}"
        )
    return np.ascontiguousarray(image).copy()


def _as_boxes(boxes: np.ndarray | Sequence | None) -> np.ndarray:
    if boxes is None:
        return np.zeros((0, 4), dtype=np.float32)
    arr = np.asarray(boxes, dtype=np.float32).reshape(-1, 4)
    return arr


def _box_points(box: np.ndarray, shape: tuple[int, ...]) -> tuple[tuple[int, int], tuple[int, int]]:
    """Integer corners of a box, clipped to the image (anchors may stick out)."""
    h, w = shape[0], shape[1]
    x1 = int(round(min(max(float(box[0]), 0.0), w - 1)))
    y1 = int(round(min(max(float(box[1]), 0.0), h - 1)))
    x2 = int(round(min(max(float(box[2]), 0.0), w - 1)))
    y2 = int(round(min(max(float(box[3]), 0.0), h - 1)))
    return (x1, y1), (x2, y2)


def label_origin(
    text_size: tuple[int, int], box_xy: tuple[int, int], shape: tuple[int, ...], pad: int = 2
) -> tuple[int, int]:
    """Top-left corner of a label's background box so that it stays inside the image.

    The label goes just above the box's top-left corner; if it would leave the
    image at the top it moves inside the box, and it is shifted left/up as far as
    needed to keep its right/bottom edge inside.

    Args:
        text_size: ``(width, height)`` of the label box including padding.
        box_xy: ``(x1, y1)`` of the box.
        shape: image shape ``(H, W, ...)``.
    """
    tw, th = text_size
    h, w = shape[0], shape[1]
    x, y = box_xy
    y = y - th if y - th >= 0 else y
    x = min(max(x, 0), max(w - tw, 0))
    y = min(max(y, 0), max(h - th, 0))
    return x, y


def put_label(
    image: np.ndarray,
    text: str,
    box_xy: tuple[int, int],
    color: RGB,
    scale: float | None = None,
    text_color: RGB = TEXT_COLOR,
) -> np.ndarray:
    """Draw ``text`` on a filled ``color`` background at a box's top-left corner,
    kept inside the image (see :func:`label_origin`)."""
    out = _check_image(image)
    _put_label_inplace(out, text, box_xy, color, scale, text_color)
    return out


def _put_label_inplace(
    img: np.ndarray,
    text: str,
    box_xy: tuple[int, int],
    color: RGB,
    scale: float | None,
    text_color: RGB = TEXT_COLOR,
) -> tuple[int, int, int, int]:
    scale = font_scale(img.shape) if scale is None else scale
    thick = max(1, int(round(scale * 1.5)))
    (tw, th), base = cv2.getTextSize(text, FONT, scale, thick)
    pad = 2
    bw, bh = tw + 2 * pad, th + base + 2 * pad
    x, y = label_origin((bw, bh), box_xy, img.shape, pad)
    cv2.rectangle(img, (x, y), (x + bw - 1, y + bh - 1), color, thickness=-1)
    # dark text on light backgrounds, white text on dark ones
    luminance = 0.299 * color[0] + 0.587 * color[1] + 0.114 * color[2]
    fg = (0, 0, 0) if luminance > 150 and text_color == TEXT_COLOR else text_color
    cv2.putText(img, text, (x + pad, y + pad + th), FONT, scale, fg, thick, cv2.LINE_AA)
    return x, y, bw, bh


def draw_boxes(
    image: np.ndarray,
    boxes: np.ndarray | Sequence,
    colors: RGB | Sequence[RGB],
    thickness: int | None = None,
    labels: Sequence[str] | None = None,
    alpha: float = 1.0,
) -> np.ndarray:
    """Draw xyxy ``boxes`` ``[N, 4]`` (clipped to the image) with one colour or one per box.

    Args:
        thickness: line width in pixels; default :func:`line_thickness`.
        labels: optional text per box (``None`` or ``""`` entries draw no label).
        alpha: opacity of the lines, ``< 1`` blends them with the image (labels
            are always opaque).
    """
    out = _check_image(image)
    arr = _as_boxes(boxes)
    if len(arr) == 0:
        return out
    per_box = isinstance(colors, Sequence) and len(colors) > 0 and isinstance(colors[0], Sequence)
    cols = list(colors) if per_box else [colors] * len(arr)  # type: ignore[list-item]
    if len(cols) != len(arr):
        raise ValueError(f"draw_boxes: {len(arr)} boxes but {len(cols)} colours")
    t = line_thickness(out.shape) if thickness is None else thickness
    canvas = out.copy() if alpha < 1.0 else out
    for box, col in zip(arr, cols, strict=True):
        p1, p2 = _box_points(box, out.shape)
        cv2.rectangle(canvas, p1, p2, tuple(int(c) for c in col), t, cv2.LINE_8)
    if alpha < 1.0:
        out = cv2.addWeighted(canvas, alpha, out, 1.0 - alpha, 0.0)
    if labels is not None:
        for box, col, text in zip(arr, cols, labels, strict=True):
            if text:
                p1, _ = _box_points(box, out.shape)
                _put_label_inplace(out, text, p1, tuple(int(c) for c in col), None)
    return out


def draw_legend(
    image: np.ndarray,
    entries: Sequence[tuple[str, RGB]],
    header: str | None = None,
) -> np.ndarray:
    """Append a legend panel below the image: an optional header line, then one
    colour swatch + text per entry, flowing left to right and wrapping.

    Returns an image of shape ``[H + panel_height, W, 3]``; the top ``H`` rows are
    the input image unchanged.
    """
    img = _check_image(image)
    h, w = img.shape[:2]
    scale = font_scale(img.shape)
    thick = max(1, int(round(scale * 1.5)))
    (_, th), base = cv2.getTextSize("Ag", FONT, scale, thick)
    row_h = th + base + 8
    sw = th + 2  # swatch side
    # lay out entries into rows
    rows: list[list[tuple[int, str, RGB]]] = [[]]
    x = 6
    for text, col in entries:
        tw = cv2.getTextSize(text, FONT, scale, thick)[0][0]
        item_w = sw + 4 + tw + 14
        if rows[-1] and x + item_w > w:
            rows.append([])
            x = 6
        rows[-1].append((x, text, col))
        x += item_w
    lines = _wrap(header, w - 12, scale, thick) if header else []
    panel_h = row_h * (len(lines) + len(rows)) + 6
    panel = np.empty((panel_h, w, 3), dtype=np.uint8)
    panel[:] = LEGEND_BG
    y = 4
    for line in lines:
        cv2.putText(panel, line, (6, y + th), FONT, scale, TEXT_COLOR, thick, cv2.LINE_AA)
        y += row_h
    for row in rows:
        for x0, text, col in row:
            cv2.rectangle(panel, (x0, y), (x0 + sw, y + sw), tuple(int(c) for c in col), -1)
            cv2.putText(panel, text, (x0 + sw + 4, y + th), FONT, scale, TEXT_COLOR, thick, cv2.LINE_AA)
        y += row_h
    return np.concatenate([img, panel], axis=0)


def _wrap(text: str, width: int, scale: float, thick: int) -> list[str]:
    """Split ``text`` at its " | " separators into lines at most ``width`` px wide (a single
    part wider than that keeps its own line)."""
    lines: list[str] = []
    current = ""
    for part in text.split(" | "):
        candidate = f"{current} | {part}" if current else part
        if current and cv2.getTextSize(candidate, FONT, scale, thick)[0][0] > width:
            lines.append(current)
            current = part
        else:
            current = candidate
    return [*lines, current]


def upscale(image: np.ndarray, min_side: int) -> tuple[np.ndarray, float]:
    """Resize so the shorter side is at least ``min_side`` (tiny inputs get readable
    labels). Returns ``(image, factor)``; factor 1.0 and a copy when already large."""
    h, w = image.shape[:2]
    if min_side <= 0 or min(h, w) >= min_side:
        return image.copy(), 1.0
    factor = min_side / float(min(h, w))
    size = (int(round(w * factor)), int(round(h * factor)))
    return cv2.resize(image, size, interpolation=cv2.INTER_LINEAR), factor


def draw_mining(
    image: np.ndarray,
    *,
    gt_boxes: np.ndarray | None = None,
    gt_labels: Sequence[int] | None = None,
    positive_boxes: np.ndarray | None = None,
    negative_boxes: np.ndarray | None = None,
    negative_losses: Sequence[float] | None = None,
    ignored_boxes: np.ndarray | None = None,
    ignore_regions: np.ndarray | None = None,
    class_names: Sequence[str] | None = None,
    header: str | None = None,
    label_top: int = 3,
    min_side: int = 0,
) -> np.ndarray:
    """The picture of what a miner chose on one image.

    Layers, bottom to top: ignored anchors (thin, half transparent grey), ignore
    regions (magenta), positive anchors (blue), mined negatives coloured by loss
    rank (``negative_boxes`` sorted hardest first; dark red -> pale yellow, the
    ``label_top`` hardest labelled ``#rank loss``), ground truth (green, thickest,
    labelled with the class name). A legend panel with ``header`` goes below.

    Args:
        image: ``[H, W, 3]`` uint8 RGB.
        gt_boxes: ``[N, 4]``; gt_labels: ``N`` class ids ``1..K``.
        positive_boxes: ``[P, 4]`` anchors; negative_boxes: ``[Q, 4]`` anchors,
            hardest first; negative_losses: ``Q`` losses (for the labels).
        ignored_boxes: ``[I, 4]`` ignored anchors; ignore_regions: ``[M, 4]``.
        min_side: upscale tiny images first so that labels are readable (boxes
            are scaled with the image).

    Returns:
        ``[H' + legend, W', 3]`` uint8 RGB, ``H', W'`` the (possibly upscaled) size.
    """
    img, f = upscale(_check_image(image), min_side)
    gt, pos, neg = _as_boxes(gt_boxes) * f, _as_boxes(positive_boxes) * f, _as_boxes(negative_boxes) * f
    ign, reg = _as_boxes(ignored_boxes) * f, _as_boxes(ignore_regions) * f
    t = line_thickness(img.shape)
    img = draw_boxes(img, ign, IGNORED_COLOR, thickness=1, alpha=0.5)
    img = draw_boxes(img, reg, IGNORE_REGION_COLOR, thickness=t)
    img = draw_boxes(img, pos, POSITIVE_COLOR, thickness=t)
    if len(neg):
        colors = negative_rank_colors(len(neg))
        # draw the easiest first so the hardest end up on top
        img = draw_boxes(img, neg[::-1], colors[::-1], thickness=t)
        if negative_losses is not None:
            for r in range(min(label_top, len(neg)) - 1, -1, -1):
                p1, _ = _box_points(neg[r], img.shape)
                _put_label_inplace(img, f"#{r + 1} {float(negative_losses[r]):.2f}", p1, colors[r], None)
    if len(gt):
        names = []
        for lab in gt_labels if gt_labels is not None else [0] * len(gt):
            k = int(lab)
            names.append(class_names[k - 1] if class_names and 1 <= k <= len(class_names) else str(k))
        img = draw_boxes(img, gt, GT_COLOR, thickness=t + 1, labels=names)
    ramp = negative_rank_colors(max(len(neg), 2))
    entries: list[tuple[str, RGB]] = [
        ("ground truth", GT_COLOR),
        ("positive", POSITIVE_COLOR),
        ("hardest neg", ramp[0]),
        ("easiest shown", ramp[-1]),
        ("ignored", IGNORED_COLOR),
    ]
    if len(reg):
        entries.append(("ignore region", IGNORE_REGION_COLOR))
    return draw_legend(img, entries, header=header)
