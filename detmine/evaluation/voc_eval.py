"""PASCAL VOC detection metrics: VOC07 11-point and area-under-curve (VOC2010+) AP at one IoU.

Semantics of the official devkit (``voc_eval``): per class, all detections of the split are
sorted by score (descending); each detection is matched to the ground-truth box of its image
with the highest IoU. If that IoU exceeds the threshold (strictly, ``> 0.5``):

- the box is *difficult* -> the detection is ignored (neither true nor false positive);
- the box is not yet taken -> true positive, the box is taken;
- the box is already taken -> false positive (no fallback to the second-best box).

Otherwise the detection is a false positive. Recall is divided by the number of
non-difficult boxes of the class. Boxes are continuous pixel coordinates (the dataset
converted VOC's 1-based inclusive corners once), so the IoU has no ``+1`` term.

Ground truth comes from a COCO-format dict (``dataset.coco_gt_dict()``): VOC difficult
objects are stored there as ``iscrowd=1``; COCO crowd regions are treated the same way.
"""

from __future__ import annotations

from collections import defaultdict
from dataclasses import dataclass

import numpy as np
import torch
from torchvision.ops import box_iou

from detmine.errors import DataError

__all__ = ["VocResult", "voc_ap_11point", "voc_ap_area", "voc_evaluate"]


@dataclass
class VocResult:
    """VOC metrics of one split.

    Attributes:
        voc07_map: mean over classes of the VOC07 11-point AP.
        voc_map: mean over classes of the area-under-curve AP (VOC2010+).
        per_class_ap07: category id -> 11-point AP (NaN when the class has no non-difficult box).
        per_class_ap: category id -> area-under-curve AP (NaN likewise).
    """

    voc07_map: float
    voc_map: float
    per_class_ap07: dict[int, float]
    per_class_ap: dict[int, float]


def voc_ap_11point(recall: np.ndarray, precision: np.ndarray) -> float:
    """VOC2007 AP: mean of the best precision at recall >= t for t in 0, 0.1, ..., 1.

    Args:
        recall: ``[D]`` cumulative recall after each detection (score-sorted).
        precision: ``[D]`` cumulative precision after each detection.
    """
    ap = 0.0
    # The devkit's thresholds, float quirks included (0.30000000000000004, ...): a recall of
    # exactly 3/10 does not reach "0.3", as in the published VOC07 numbers.
    for t in np.arange(0.0, 1.1, 0.1):
        above = precision[recall >= t]
        ap += (float(above.max()) if above.size else 0.0) / 11.0
    return ap


def voc_ap_area(recall: np.ndarray, precision: np.ndarray) -> float:
    """VOC2010+ AP: area under the precision envelope (precision made monotone from the right).

    Args:
        recall: ``[D]`` cumulative recall after each detection (score-sorted).
        precision: ``[D]`` cumulative precision after each detection.
    """
    mrec = np.concatenate(([0.0], recall, [1.0]))
    mpre = np.concatenate(([0.0], precision, [0.0]))
    mpre = np.maximum.accumulate(mpre[::-1])[::-1]
    steps = np.nonzero(mrec[1:] != mrec[:-1])[0]
    return float(np.sum((mrec[steps + 1] - mrec[steps]) * mpre[steps + 1]))


def _xywh_to_xyxy(boxes: list[list[float]]) -> torch.Tensor:
    b = torch.as_tensor(boxes, dtype=torch.float64).reshape(-1, 4)
    return torch.cat([b[:, :2], b[:, :2] + b[:, 2:]], dim=1)


def _class_pr(
    gt: dict[int, tuple[torch.Tensor, np.ndarray]], dets: list[dict], iou_threshold: float
) -> tuple[np.ndarray, np.ndarray, int]:
    """Cumulative recall / precision of one class.

    Args:
        gt: image id -> (boxes ``[G, 4]`` xyxy, difficult ``[G]`` bool) for this class.
        dets: COCO result dicts of this class (``image_id``, ``bbox`` xywh, ``score``).

    Returns:
        recall ``[D']``, precision ``[D']`` (D' = detections that are not ignored), npos.
    """
    npos = int(sum(int((~difficult).sum()) for _, difficult in gt.values()))
    if not dets:
        return np.zeros(0), np.zeros(0), npos
    scores = np.array([d["score"] for d in dets], dtype=np.float64)
    order = np.argsort(-scores, kind="stable")
    image_ids = [dets[i]["image_id"] for i in order]
    boxes = _xywh_to_xyxy([dets[i]["bbox"] for i in order])

    # IoU of every detection with the boxes of its own image, one box_iou call per image.
    by_image: dict[int, list[int]] = defaultdict(list)
    for rank, image_id in enumerate(image_ids):
        by_image[image_id].append(rank)
    best_iou = np.full(len(order), -np.inf)
    best_gt = np.full(len(order), -1, dtype=np.int64)
    for image_id, ranks in by_image.items():
        if image_id not in gt:
            continue
        gt_boxes, _ = gt[image_id]
        iou = box_iou(boxes[ranks], gt_boxes)  # [d, G]
        value, index = iou.max(dim=1)
        best_iou[ranks] = value.numpy()
        best_gt[ranks] = index.numpy()

    taken = {image_id: np.zeros(len(difficult), dtype=bool) for image_id, (_, difficult) in gt.items()}
    tp = np.zeros(len(order))
    fp = np.zeros(len(order))
    ignored = np.zeros(len(order), dtype=bool)
    for rank, image_id in enumerate(image_ids):
        if best_iou[rank] > iou_threshold:
            g = best_gt[rank]
            if gt[image_id][1][g]:
                ignored[rank] = True
            elif not taken[image_id][g]:
                taken[image_id][g] = True
                tp[rank] = 1.0
            else:
                fp[rank] = 1.0
        else:
            fp[rank] = 1.0
    tp = np.cumsum(tp[~ignored])
    fp = np.cumsum(fp[~ignored])
    recall = tp / max(npos, 1)
    precision = tp / np.maximum(tp + fp, np.finfo(np.float64).eps)
    return recall, precision, npos


def voc_evaluate(gt_dict: dict, results: list[dict], iou_threshold: float = 0.5) -> VocResult:
    """VOC07 11-point and area-under-curve AP of COCO-format results against COCO-format GT.

    Args:
        gt_dict: COCO ground truth (``images``, ``annotations`` with ``bbox`` xywh and
            ``iscrowd`` = difficult, ``categories``), original pixels and category ids.
        results: COCO result dicts ``{"image_id", "category_id", "bbox" (xywh), "score"}``.
        iou_threshold: a detection matches when IoU is strictly above it (VOC: 0.5).

    Returns:
        :class:`VocResult`; the means are over classes with at least one non-difficult box.
    """
    category_ids = sorted(c["id"] for c in gt_dict["categories"])
    image_ids = {img["id"] for img in gt_dict["images"]}
    gt_lists: dict[int, dict[int, tuple[list, list]]] = {
        c: defaultdict(lambda: ([], [])) for c in category_ids
    }
    for ann in gt_dict["annotations"]:
        boxes, difficult = gt_lists[ann["category_id"]][ann["image_id"]]
        boxes.append(ann["bbox"])
        difficult.append(bool(ann.get("iscrowd", 0)))
    dets_by_class: dict[int, list[dict]] = defaultdict(list)
    for det in results:
        if det["category_id"] not in gt_lists:
            raise DataError(
                f"VOC evaluation: result category_id {det['category_id']} is not in the ground truth "
                f"categories {category_ids}"
            )
        if det["image_id"] not in image_ids:
            raise DataError(f"VOC evaluation: result image_id {det['image_id']} is not in the ground truth")
        dets_by_class[det["category_id"]].append(det)

    ap07: dict[int, float] = {}
    ap: dict[int, float] = {}
    for cat in category_ids:
        gt = {
            image_id: (_xywh_to_xyxy(boxes), np.array(difficult, dtype=bool))
            for image_id, (boxes, difficult) in gt_lists[cat].items()
        }
        recall, precision, npos = _class_pr(gt, dets_by_class[cat], iou_threshold)
        if npos == 0:
            ap07[cat] = ap[cat] = float("nan")
            continue
        ap07[cat] = voc_ap_11point(recall, precision)
        ap[cat] = voc_ap_area(recall, precision)

    def _mean(values: dict[int, float]) -> float:
        valid = [v for v in values.values() if not np.isnan(v)]
        return float(np.mean(valid)) if valid else 0.0

    return VocResult(voc07_map=_mean(ap07), voc_map=_mean(ap), per_class_ap07=ap07, per_class_ap=ap)
