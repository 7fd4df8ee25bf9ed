"""False positives on background: detections that touch no annotated object.

A detection is a background false positive when its IoU with every ground-truth box of its
image (any class, crowd / ignore regions included) is below ``iou_thresh`` -- TIDE's
background error (Bolya et al., ECCV 2020, background threshold 0.1) -- and its score is at
least ``score_thresh``. The count per image says how often a detector fires on nothing; on
background-only images every detection at that score is one.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

from detmine.analysis.coco_boxes import iou_xywh


@dataclass(frozen=True)
class BackgroundFalsePositives:
    """Background false positives of a set of detections.

    Attributes:
        per_image: background false positives per evaluated image.
        on_empty_images: per background-only image (None when no image is background-only).
        count: the background false positives in all.
        num_images: the evaluated images.
        num_empty_images: the background-only ones among them.
        score_thresh, iou_thresh: the rule's settings.
    """

    per_image: float
    on_empty_images: float | None
    count: int
    num_images: int
    num_empty_images: int
    score_thresh: float
    iou_thresh: float


def background_false_positives(
    gt: dict[str, Any],
    detections: Iterable[dict[str, Any]],
    *,
    image_ids: Sequence[int] | None = None,
    score_thresh: float = 0.5,
    iou_thresh: float = 0.1,
    category_thresholds: dict[int, float] | None = None,
) -> BackgroundFalsePositives:
    """Count background false positives (see the module docstring).

    Args:
        gt: COCO-format ground truth (``images``, ``annotations`` with ``bbox`` xywh).
        detections: COCO results (``image_id``, ``bbox`` xywh, ``score``).
        image_ids: the evaluated images (default: every image of ``gt``); detections on other
            images are ignored.
        score_thresh: detections below this score are not counted.
        iou_thresh: below this IoU with every object a detection is on background.
        category_thresholds: per category id, the score a detection of that category must reach
            instead of ``score_thresh`` (the per-class operating thresholds).
    """
    ids = [int(i) for i in (image_ids if image_ids is not None else [img["id"] for img in gt["images"]])]
    boxes: dict[int, list[list[float]]] = {i: [] for i in ids}
    for ann in gt.get("annotations", []):
        if int(ann["image_id"]) in boxes:
            boxes[int(ann["image_id"])].append([float(v) for v in ann["bbox"]])
    fired: dict[int, list[list[float]]] = {i: [] for i in ids}
    for det in detections:
        threshold = score_thresh
        if category_thresholds is not None:
            threshold = category_thresholds.get(int(det["category_id"]), score_thresh)
        if float(det["score"]) >= threshold and int(det["image_id"]) in fired:
            fired[int(det["image_id"])].append([float(v) for v in det["bbox"]])
    count = on_empty = 0
    for image_id in ids:
        dets = np.asarray(fired[image_id], dtype=np.float64).reshape(-1, 4)
        objects = np.asarray(boxes[image_id], dtype=np.float64).reshape(-1, 4)
        if len(objects) == 0:
            found = len(dets)
            on_empty += found
        else:
            found = int((iou_xywh(dets, objects).max(axis=1, initial=0.0) < iou_thresh).sum())
        count += found
    empty_images = sum(1 for i in ids if not boxes[i])
    return BackgroundFalsePositives(
        per_image=count / max(1, len(ids)),
        on_empty_images=on_empty / empty_images if empty_images else None,
        count=count,
        num_images=len(ids),
        num_empty_images=empty_images,
        score_thresh=float(score_thresh),
        iou_thresh=float(iou_thresh),
    )
