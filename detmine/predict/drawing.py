"""The picture of one image's detections: each box in its class's colour, labelled with the
class name and the score, at the image's own size (no legend panel: the picture keeps the
input's geometry)."""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

from detmine.viz.colors import class_color
from detmine.viz.draw import draw_boxes


def class_caption(label: int, score: float, class_names: Sequence[str]) -> str:
    """``"circle 0.87"``; a label outside ``1..K`` is shown by its number."""
    name = class_names[label - 1] if 1 <= label <= len(class_names) else str(label)
    return f"{name} {score:.2f}"


def draw_detections(
    image: np.ndarray,
    boxes: np.ndarray,
    scores: np.ndarray,
    labels: np.ndarray,
    class_names: Sequence[str],
) -> np.ndarray:
    """Draw detections on a copy of ``image``.

    Args:
        image: uint8 ``[H, W, 3]`` RGB.
        boxes: ``[D, 4]`` xyxy in the pixels of ``image``.
        scores: ``[D]``.
        labels: ``[D]`` contiguous class ids ``1..K`` (one colour per class:
            :func:`detmine.viz.colors.class_color`).
        class_names: ``[K]``, class ``k`` at ``k - 1``.

    Returns:
        uint8 ``[H, W, 3]`` RGB. Labels are placed highest score first, so where they
        crowd the best detections keep theirs.
    """
    boxes = np.asarray(boxes, dtype=np.float32).reshape(-1, 4)
    scores = np.asarray(scores, dtype=np.float64).reshape(-1)
    labels = np.asarray(labels).reshape(-1).astype(np.int64)
    if len(boxes) == 0:
        return draw_boxes(image, boxes, (0, 0, 0))
    order = np.argsort(-scores, kind="stable")  # the best first: their labels get the free spots
    colors = [class_color(int(labels[i])) for i in order]
    captions = [class_caption(int(labels[i]), float(scores[i]), class_names) for i in order]
    return draw_boxes(image, boxes[order], colors, labels=captions)
