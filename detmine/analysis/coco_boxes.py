"""Overlaps of COCO ``xywh`` boxes in numpy, pycocotools' rules: the one place the analysis and
the evaluation views (TIDE errors, confusion matrix, thresholds, background false positives)
compute them. (Inside the package, on ``xyxy`` tensors, ``torchvision.ops.box_iou`` and the
matcher's batched IoU serve.)"""

from __future__ import annotations

import numpy as np

# Divides only where the denominator is positive; the floor keeps numpy from warning.
_TINY = 1e-300


def intersection_xywh(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """Intersection areas ``[N, M]`` of ``xywh`` boxes ``a [N, 4]`` and ``b [M, 4]``."""
    w = np.minimum((a[:, 0] + a[:, 2])[:, None], (b[:, 0] + b[:, 2])[None]) - np.maximum(
        a[:, 0][:, None], b[:, 0][None]
    )
    h = np.minimum((a[:, 1] + a[:, 3])[:, None], (b[:, 1] + b[:, 3])[None]) - np.maximum(
        a[:, 1][:, None], b[:, 1][None]
    )
    return np.clip(w, 0.0, None) * np.clip(h, 0.0, None)


def iou_xywh(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """IoU ``[N, M]`` of ``xywh`` boxes ``a [N, 4]`` and ``b [M, 4]`` (0 for an empty union)."""
    inter = intersection_xywh(a, b)
    union = (a[:, 2] * a[:, 3])[:, None] + (b[:, 2] * b[:, 3])[None] - inter
    return np.where(union > 0, inter / np.maximum(union, _TINY), 0.0)


def crowd_cover_xywh(detections: np.ndarray, crowds: np.ndarray) -> np.ndarray:
    """COCO's overlap with a crowd region ``[N, M]``: the intersection of detection ``n`` with
    region ``m`` over the detection's own area (0 for an empty detection)."""
    area = (detections[:, 2] * detections[:, 3])[:, None]
    return np.where(area > 0, intersection_xywh(detections, crowds) / np.maximum(area, _TINY), 0.0)
