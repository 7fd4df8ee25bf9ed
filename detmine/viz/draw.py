"""OpenCV drawing of boxes, labels and legends (the mining picture itself is
:mod:`detmine.viz.mining_picture`).

Every public function is pure: it takes a numpy ``[H, W, 3]`` uint8 RGB image and returns
a new one (the input is never modified). Boxes are xyxy in pixels of that image.

Readability rules:
- line thickness and font size scale with the image size (:func:`line_thickness`,
  :func:`font_scale`), so a 300 px SSD input and a 1333 px COCO image both read well;
- a label is drawn on a filled background, inside the image, and never on another label
  (:class:`detmine.viz.labels.LabelPlacer`: a label with no free spot is left out);
- the legend is a panel appended *below* the image, so it never hides content and
  box coordinates in the image part are unchanged; its items never overlap either.
"""

from __future__ import annotations

from collections.abc import Sequence

import cv2
import numpy as np

from detmine.viz.colors import LEGEND_BG, RGB, TEXT_COLOR
from detmine.viz.labels import LabelPlacer, Rect

FONT = cv2.FONT_HERSHEY_SIMPLEX
LABEL_PAD = 2

#: a legend entry: its text and either a colour or a swatch picture ``[h, w, 3]`` (a colour ramp)
LegendEntry = tuple[str, "RGB | np.ndarray"]


def line_thickness(shape: tuple[int, ...]) -> int:
    """Box line thickness for an image of ``shape`` ``(H, W, ...)``: 1 px up to ~480 px,
    then one more pixel per 320 px of the longer side."""
    return max(1, int(round(max(shape[0], shape[1]) / 320)))


def font_scale(shape: tuple[int, ...]) -> float:
    """OpenCV font scale for an image of ``shape``: readable, never below 0.35."""
    return max(0.35, max(shape[0], shape[1]) / 1000.0)


def _thickness(scale: float) -> int:
    return max(1, int(round(scale * 1.5)))


def check_image(image: np.ndarray) -> np.ndarray:
    if not isinstance(image, np.ndarray) or image.ndim != 3 or image.shape[2] != 3 or image.dtype != np.uint8:
        raise ValueError(
            "expected a numpy [H, W, 3] uint8 RGB image, got "
            f"{type(image).__name__} {getattr(image, 'shape', None)} {getattr(image, 'dtype', None)}"
        )
    return np.ascontiguousarray(image).copy()


def as_boxes(boxes: np.ndarray | Sequence | None) -> np.ndarray:
    """``boxes`` as float32 ``[N, 4]`` (``None`` -> ``[0, 4]``)."""
    if boxes is None:
        return np.zeros((0, 4), dtype=np.float32)
    return np.asarray(boxes, dtype=np.float32).reshape(-1, 4)


def box_points(box: np.ndarray, shape: tuple[int, ...]) -> tuple[tuple[int, int], tuple[int, int]]:
    """Integer corners of a box, clipped to the image (anchors may stick out)."""
    h, w = shape[0], shape[1]
    x1 = int(round(min(max(float(box[0]), 0.0), w - 1)))
    y1 = int(round(min(max(float(box[1]), 0.0), h - 1)))
    x2 = int(round(min(max(float(box[2]), 0.0), w - 1)))
    y2 = int(round(min(max(float(box[3]), 0.0), h - 1)))
    return (x1, y1), (x2, y2)


def label_origin(
    text_size: tuple[int, int], box_xy: tuple[int, int], shape: tuple[int, ...], pad: int = LABEL_PAD
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


def label_size(text: str, scale: float) -> tuple[int, int]:
    """``(width, height)`` of a label's filled background (text plus padding)."""
    (tw, th), base = cv2.getTextSize(text, FONT, scale, _thickness(scale))
    return tw + 2 * LABEL_PAD, th + base + 2 * LABEL_PAD


def draw_label(img: np.ndarray, text: str, rect: Rect, color: RGB, scale: float,
               text_color: RGB = TEXT_COLOR) -> None:  # fmt: skip
    """Draw ``text`` on a filled ``color`` background filling ``rect``, in place."""
    thick = _thickness(scale)
    (_, th), _ = cv2.getTextSize(text, FONT, scale, thick)
    cv2.rectangle(img, (rect.x, rect.y), (rect.x2 - 1, rect.y2 - 1), color, thickness=-1)
    # dark text on light backgrounds, white text on dark ones
    luminance = 0.299 * color[0] + 0.587 * color[1] + 0.114 * color[2]
    fg = (0, 0, 0) if luminance > 150 and text_color == TEXT_COLOR else text_color
    origin = (rect.x + LABEL_PAD, rect.y + LABEL_PAD + th)
    cv2.putText(img, text, origin, FONT, scale, fg, thick, cv2.LINE_AA)


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
    out = check_image(image)
    scale = font_scale(out.shape) if scale is None else scale
    bw, bh = label_size(text, scale)
    x, y = label_origin((bw, bh), box_xy, out.shape)
    draw_label(out, text, Rect(x, y, bw, bh), color, scale, text_color)
    return out


def place_and_draw_labels(
    img: np.ndarray,
    items: Sequence[tuple[str, np.ndarray, RGB]],
    placer: LabelPlacer,
    scale: float | None = None,
) -> list[Rect | None]:
    """Place each ``(text, box [4], colour)`` label with ``placer`` (in the given order, so
    the first ones win the best spots) and draw those that found a free spot, in place.

    Returns:
        The rectangle of each label, ``None`` for one left out.
    """
    scale = font_scale(img.shape) if scale is None else scale
    placed: list[Rect | None] = []
    for text, box, color in items:
        (x1, y1), (x2, y2) = box_points(box, img.shape)
        w, h = label_size(text, scale)
        rect = placer.place((x1, y1, x2, y2), w, h)
        if rect is not None:
            draw_label(img, text, rect, tuple(int(c) for c in color), scale)  # type: ignore[arg-type]
        placed.append(rect)
    return placed


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
        labels: optional text per box (``None`` or ``""`` entries draw no label); labels
            never overlap (one without a free spot is left out).
        alpha: opacity of the lines, ``< 1`` blends them with the image (labels
            are always opaque).
    """
    out = check_image(image)
    arr = as_boxes(boxes)
    if len(arr) == 0:
        return out
    per_box = isinstance(colors, Sequence) and len(colors) > 0 and isinstance(colors[0], Sequence)
    cols: list[Sequence[int]] = list(colors) if per_box else [colors] * len(arr)  # type: ignore[list-item, arg-type]
    if len(cols) != len(arr):
        raise ValueError(f"draw_boxes: {len(arr)} boxes but {len(cols)} colours")
    t = line_thickness(out.shape) if thickness is None else thickness
    canvas = out.copy() if alpha < 1.0 else out
    for box, col in zip(arr, cols, strict=True):
        p1, p2 = box_points(box, out.shape)
        cv2.rectangle(canvas, p1, p2, tuple(int(c) for c in col), t, cv2.LINE_8)
    if alpha < 1.0:
        out = cv2.addWeighted(canvas, alpha, out, 1.0 - alpha, 0.0)
    if labels is not None:
        items = [(text, box, col) for box, col, text in zip(arr, cols, labels, strict=True) if text]
        place_and_draw_labels(out, items, LabelPlacer(out.shape[1], out.shape[0]))  # type: ignore[arg-type]
    return out


def legend_panel(
    width: int,
    entries: Sequence[LegendEntry],
    header: str | None = None,
    scale: float = 0.5,
) -> tuple[np.ndarray, list[Rect]]:
    """A legend panel ``width`` px wide: the ``header`` wrapped onto lines, then one swatch +
    text per entry, flowing left to right and wrapping.

    Returns:
        ``(panel [h, width, 3] uint8 RGB, rects)``: the rectangle of every header line and
        entry (swatch and text), in panel pixels; no two overlap.
    """
    thick = _thickness(scale)
    (_, th), base = cv2.getTextSize("Ag", FONT, scale, thick)
    row_h = th + base + 8
    sw = th + 2  # swatch side
    rows: list[list[tuple[int, str, RGB | np.ndarray, int]]] = [[]]
    x = 6
    for text, swatch in entries:
        swatch_w = sw * 5 if isinstance(swatch, np.ndarray) else sw
        tw = cv2.getTextSize(text, FONT, scale, thick)[0][0]
        item_w = swatch_w + 4 + tw
        if rows[-1] and x + item_w > width - 6:
            rows.append([])
            x = 6
        rows[-1].append((x, text, swatch, swatch_w))
        x += item_w + 14
    lines = wrap_text(header, width - 12, scale, thick) if header else []
    if not rows[-1]:
        rows.pop()
    panel = np.empty((row_h * (len(lines) + len(rows)) + 6, width, 3), dtype=np.uint8)
    panel[:] = LEGEND_BG
    rects: list[Rect] = []
    y = 4
    for line in lines:
        tw = cv2.getTextSize(line, FONT, scale, thick)[0][0]
        cv2.putText(panel, line, (6, y + th), FONT, scale, TEXT_COLOR, thick, cv2.LINE_AA)
        rects.append(Rect(6, y, min(tw, width - 6), th + base))
        y += row_h
    for row in rows:
        for x0, text, swatch, swatch_w in row:
            if isinstance(swatch, np.ndarray):
                panel[y : y + sw, x0 : x0 + swatch_w] = cv2.resize(swatch, (swatch_w, sw))
            else:
                cv2.rectangle(panel, (x0, y), (x0 + sw - 1, y + sw - 1), tuple(int(c) for c in swatch), -1)
            tx = x0 + swatch_w + 4
            cv2.putText(panel, text, (tx, y + th), FONT, scale, TEXT_COLOR, thick, cv2.LINE_AA)
            tw = cv2.getTextSize(text, FONT, scale, thick)[0][0]
            rects.append(Rect(x0, y, min(tx + tw, width) - x0, max(sw, th + base)))
        y += row_h
    return panel, rects


def draw_legend(
    image: np.ndarray,
    entries: Sequence[LegendEntry],
    header: str | None = None,
) -> np.ndarray:
    """Append a legend panel (:func:`legend_panel`) below the image.

    Returns an image of shape ``[H + panel_height, W, 3]``; the top ``H`` rows are
    the input image unchanged.
    """
    img = check_image(image)
    panel, _ = legend_panel(img.shape[1], entries, header, font_scale(img.shape))
    return np.concatenate([img, panel], axis=0)


def wrap_text(text: str, width: int, scale: float, thick: int) -> list[str]:
    """Split ``text`` into lines at most ``width`` px wide: at its ``" | "`` separators first,
    then, for a part that is still too wide, at its spaces."""

    def fits(s: str) -> bool:
        return cv2.getTextSize(s, FONT, scale, thick)[0][0] <= width

    lines: list[str] = []
    current = ""
    for part in text.split(" | "):
        candidate = f"{current} | {part}" if current else part
        if fits(candidate):
            current = candidate
            continue
        if current:
            lines.append(current)
        current = ""
        for word in part.split(" "):  # a part too wide on its own goes word by word
            candidate = f"{current} {word}" if current else word
            if current and not fits(candidate):
                lines.append(current)
                current = word
            else:
                current = candidate
    return [*lines, current]


def upscale(image: np.ndarray, min_side: int = 0, min_long_side: int = 0) -> tuple[np.ndarray, float]:
    """Resize so the shorter side is at least ``min_side`` and the longer one at least
    ``min_long_side`` (small inputs get crisp lines and readable labels, drawn after the
    resize). Returns ``(image, factor)``; factor 1.0 and a copy when already large enough."""
    h, w = image.shape[:2]
    factor = 1.0
    if min_side > 0 and min(h, w) > 0:
        factor = max(factor, min_side / float(min(h, w)))
    if min_long_side > 0 and max(h, w) > 0:
        factor = max(factor, min_long_side / float(max(h, w)))
    if factor <= 1.0:
        return image.copy(), 1.0
    size = (int(round(w * factor)), int(round(h * factor)))
    return cv2.resize(image, size, interpolation=cv2.INTER_LINEAR), factor
