"""TIDE's decomposition of the AP50 lost to each kind of detection error.

TIDE (Bolya et al., "TIDE: A General Toolbox for Identifying Object Detection Errors", ECCV
2020) with its defaults: AP at foreground IoU ``t_f = 0.5`` (AP50), background IoU
``t_b = 0.1``, and the "main errors". Each false positive gets one type, from its largest IoU
``s`` with an object of its own class and ``o`` with an object of another class, tested in
TIDE's order:

- Loc: ``t_b <= s <= t_f`` (right class, poorly localised);
- Cls: ``o >= t_f`` (right place, wrong class);
- Dupe: ``s >= t_f`` with an object a higher-scored detection already matched;
- Bkg: ``max(s, o) <= t_b`` (every false positive of an image without objects);
- Both: the rest (wrong class and poorly localised, ``t_b < o < t_f``);

and Miss: an object no detection matched and no Loc / Cls error points at. ``dAP`` of a type is
``AP50(that type fixed) - AP50``, one type at a time, by TIDE's oracles: a Loc / Cls error
becomes a true positive of the object it points at (Cls: in the object's class) -- unless
that object is matched already or a higher-scored error *of the same type* points at it, then
it is suppressed as a duplicate; Dupe, Bkg and Both errors are suppressed; Miss removes the
missed objects from the ground-truth count (a class left without objects leaves the mean; with
no object left at all the AP is 0).

Matching and AP are COCO's (pycocotools): detections by score, each to the unmatched object of
its class with the largest IoU >= ``t_f``; 101-point interpolated AP; the mean over the classes
that have objects. TIDE keeps an image's 100 highest-scored detections (all classes together).
So ``ap50`` is pycocotools' AP50 whenever no image has more than 100 detections. Crowd
annotations are what TIDE makes of COCO's: ignore regions of their class. A detection that
matches no object but covers such a region (intersection over its own area >= ``t_f``, COCO's
crowd rule) is neither a true nor a false positive, and no error; a crowd region is never a
target of a Loc / Cls error.

Implemented here rather than wrapping a library. Measured on the 8 fixtures of
``tests/evaluation/test_tide.py`` (random detections on 40 images of 3 classes: 5 / 30 % crowd,
none, half the images empty, up to 6 duplicates, 50 % wrong classes, box jitter 0.3, no
detections) and 3 more (``image_ids``, a class with detections but no objects, 150 detections
per image), our AP50 is pycocotools' to 1e-16 on all but the last (0.1 points apart there:
TIDE's cap is per image, COCO's per class and image); neither library is right and identical:

- tidecv 1.0.1 (the paper's code) divides by zero without detections; averages a class with
  detections but no objects in as AP 0 (AP50 12 points below COCO's); samples recall at
  ``k / 100``, an ulp off COCO's ``np.linspace`` grid (dMiss 0.09 points off on duplicates);
  counts the detections crowd regions ignore as errors (9 to 44 more on the crowd fixtures);
  and lets one object take one fixed error for Loc and Cls together, so fixing Loc alone
  suppresses a Loc error when a higher-scored Cls error points at the same object (dLoc / dCls
  0.8 to 1.3 points off on 5 fixtures). It also prints, pulls in opencv / pandas / seaborn and
  is lightly maintained. With its recall grid and that rule swapped into ours, AP50 and every
  dAP agree to 1e-13 points on the 9 other fixtures it runs on.
- hotcoco 1.3.0 (``COCOeval.tide_errors``) has COCO's grid and AP but the same shared Loc / Cls
  rule; makes a detection partly over a crowd region a Loc error of the crowd, fixed into a true
  positive (dBkg 0.13 points off at 5 % crowd); and caps 100 detections per class and image
  (575 more errors, dLoc 1.8 points off at 150 per image). With that rule swapped into ours, it
  agrees to 1e-13 points, counts included, on the 9 other fixtures.

The tests check ours against both where their rules are ours, and against hand-worked answers.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

from detmine.analysis.coco_boxes import crowd_cover_xywh, iou_xywh
from detmine.evaluation.coco_eval import prepare_gt

__all__ = ["ERROR_TYPES", "TideErrors", "tide_errors"]

#: the main error types in TIDE's order (its summary table and plots).
ERROR_TYPES: tuple[str, ...] = ("cls", "loc", "both", "dupe", "bkg", "miss")
_TITLES = {"cls": "Cls", "loc": "Loc", "both": "Both", "dupe": "Dupe", "bkg": "Bkg", "miss": "Miss"}
MAX_DETS = 100  # per image, all classes together (TIDE's cap)
_RECALLS = np.linspace(0.0, 1.0, 101)

# status of a detection
_TP, _IGNORED, _CLS, _LOC, _BOTH, _DUPE, _BKG = range(7)
_STATUS = {"cls": _CLS, "loc": _LOC, "both": _BOTH, "dupe": _DUPE, "bkg": _BKG}


@dataclass
class TideErrors:
    """TIDE's main errors of a set of detections.

    Attributes:
        ap50: the AP50 TIDE computes (0..1; pycocotools' AP50 up to 100 detections per image).
        dap: error type -> AP50 gained by fixing that type alone (0..1), keys :data:`ERROR_TYPES`.
        counts: error type -> how many errors of that type (false positives; Miss: objects).
    """

    ap50: float
    dap: dict[str, float]
    counts: dict[str, int]

    def table(self) -> str:
        """A printable table: AP50 and each type's dAP in AP points (x100), TIDE's order."""
        lines = [
            f"TIDE errors: AP50 {100 * self.ap50:.2f}; dAP50 = AP50 gained by fixing one type",
            f"  {'type':<5} {'dAP50':>6} {'count':>7}",
        ]
        for key in ERROR_TYPES:
            lines.append(f"  {_TITLES[key]:<5} {100 * self.dap[key]:6.2f} {self.counts[key]:7d}")
        return "\n".join(lines)


@dataclass
class _Matches:
    """Every kept detection and object of the evaluated images, after matching.

    Detections (``[N]``) are in image order, by score within an image; objects ``[M]``.
    """

    det_class: np.ndarray  # [N] int64 category id
    det_score: np.ndarray  # [N] float64
    det_status: np.ndarray  # [N] int64 (_TP, _IGNORED or an error)
    det_target: np.ndarray  # [N] int64 object a Loc / Cls error points at, else -1
    gt_class: np.ndarray  # [M] int64 category id
    gt_used: np.ndarray  # [M] bool: matched by a detection


def _match_image(
    boxes: np.ndarray,
    classes: np.ndarray,
    gt_boxes: np.ndarray,
    gt_classes: np.ndarray,
    crowd_boxes: np.ndarray,
    crowd_classes: np.ndarray,
    pos_iou: float,
    background_iou: float,
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """One image's detections ``[D]`` (sorted by score) against its objects ``[G]``.

    Returns the status ``[D]`` and target ``[D]`` of each detection, and whether each object
    was matched ``[G]``.
    """
    num_dets, num_gt = len(boxes), len(gt_boxes)
    status = np.full(num_dets, -1, dtype=np.int64)
    target = np.full(num_dets, -1, dtype=np.int64)
    used = np.zeros(num_gt, dtype=bool)
    iou = iou_xywh(boxes, gt_boxes)  # [D, G]
    same = classes[:, None] == gt_classes[None]
    same_iou = np.where(same, iou, 0.0)
    # Greedy by score (COCO's matching): only a detection with some IoU >= t_f can match.
    for d in np.flatnonzero((same_iou >= pos_iou).any(axis=1)):
        row = np.where(used, -1.0, same_iou[d])
        g = int(np.argmax(row))
        if row[g] >= pos_iou:
            used[g] = True
            status[d] = _TP
    unmatched = status < 0
    if len(crowd_boxes):
        cover = np.where(classes[:, None] == crowd_classes[None], crowd_cover_xywh(boxes, crowd_boxes), 0.0)
        status[unmatched & (cover >= pos_iou).any(axis=1)] = _IGNORED
    fp = status < 0
    if num_gt == 0:
        status[fp] = _BKG
        return status, target, used
    other_iou = np.where(same, 0.0, iou)
    s_max, o_max = same_iou.max(axis=1), other_iou.max(axis=1)
    loc = fp & same.any(axis=1) & (background_iou <= s_max) & (s_max <= pos_iou)
    cls = fp & ~loc & (o_max >= pos_iou)
    dupe = fp & ~loc & ~cls & (used[None] & (same_iou >= pos_iou)).any(axis=1)
    bkg = fp & ~loc & ~cls & ~dupe & (iou.max(axis=1) <= background_iou)
    status[fp] = _BOTH
    status[loc], status[cls], status[dupe], status[bkg] = _LOC, _CLS, _DUPE, _BKG
    target[loc] = np.argmax(same_iou[loc], axis=1)
    target[cls] = np.argmax(other_iou[cls], axis=1)
    return status, target, used


def _match(
    gt: dict,
    detections: Sequence[dict],
    image_ids: Sequence[int] | None,
    pos_iou: float,
    background_iou: float,
) -> _Matches:
    """Match the detections of the evaluated images (sorted image ids) image by image."""
    gt = prepare_gt(gt)
    images = sorted(
        {int(i) for i in image_ids} if image_ids is not None else {int(im["id"]) for im in gt["images"]}
    )
    keep = set(images)
    objects: dict[int, list[dict]] = {i: [] for i in images}
    for ann in gt["annotations"]:
        if int(ann["image_id"]) in keep:
            objects[int(ann["image_id"])].append(ann)
    dets: dict[int, list[dict]] = {i: [] for i in images}
    for det in detections:
        if int(det["image_id"]) in keep:
            dets[int(det["image_id"])].append(det)

    det_parts: list[tuple[np.ndarray, ...]] = []
    gt_classes, gt_used = [], []
    offset = 0
    for image in images:
        anns = objects[image]
        plain = [a for a in anns if not a["iscrowd"]]
        crowd = [a for a in anns if a["iscrowd"]]
        g_boxes = np.asarray([a["bbox"] for a in plain], dtype=np.float64).reshape(-1, 4)
        g_classes = np.asarray([a["category_id"] for a in plain], dtype=np.int64)
        c_boxes = np.asarray([a["bbox"] for a in crowd], dtype=np.float64).reshape(-1, 4)
        c_classes = np.asarray([a["category_id"] for a in crowd], dtype=np.int64)
        ds = dets[image]
        scores = np.asarray([float(d["score"]) for d in ds], dtype=np.float64)
        order = np.argsort(-scores, kind="mergesort")[:MAX_DETS]
        boxes = np.asarray([ds[i]["bbox"] for i in order], dtype=np.float64).reshape(-1, 4)
        classes = np.asarray([int(ds[i]["category_id"]) for i in order], dtype=np.int64)
        status, target, used = _match_image(
            boxes, classes, g_boxes, g_classes, c_boxes, c_classes, pos_iou, background_iou
        )
        det_parts.append((classes, scores[order], status, np.where(target >= 0, target + offset, -1)))
        gt_classes.append(g_classes)
        gt_used.append(used)
        offset += len(plain)

    def cat(i: int, dtype: Any) -> np.ndarray:
        return np.concatenate([p[i] for p in det_parts]).astype(dtype) if det_parts else np.zeros(0, dtype)

    return _Matches(
        det_class=cat(0, np.int64),
        det_score=cat(1, np.float64),
        det_status=cat(2, np.int64),
        det_target=cat(3, np.int64),
        gt_class=np.concatenate(gt_classes).astype(np.int64) if gt_classes else np.zeros(0, np.int64),
        gt_used=np.concatenate(gt_used).astype(bool) if gt_used else np.zeros(0, bool),
    )


def _average_precision(scores: np.ndarray, true: np.ndarray, num_gt: int) -> float:
    """COCO's 101-point interpolated AP of one class: ``mean_r max_{r' >= r} precision(r')``."""
    if len(scores) == 0:
        return 0.0
    order = np.argsort(-scores, kind="mergesort")
    tp = np.cumsum(true[order])
    fp = np.cumsum(~true[order])
    recall = tp / num_gt
    precision = np.maximum.accumulate((tp / (tp + fp))[::-1])[::-1]
    index = np.searchsorted(recall, _RECALLS, side="left")
    inside = index < len(precision)
    return float(np.where(inside, precision[np.minimum(index, len(precision) - 1)], 0.0).mean())


def _mean_ap(classes: np.ndarray, scores: np.ndarray, true: np.ndarray, num_gt: dict[int, int]) -> float:
    """Mean AP over the classes with objects (``num_gt``: class -> objects); ``classes``,
    ``scores``, ``true`` ``[N]``, one entry per detection in the global order."""
    order = np.argsort(classes, kind="stable")  # keeps the global order within a class
    classes, scores, true = classes[order], scores[order], true[order]
    aps = []
    for c, n in num_gt.items():
        if n > 0:
            lo, hi = np.searchsorted(classes, [c, c + 1])
            aps.append(_average_precision(scores[lo:hi], true[lo:hi], n))
    return float(np.mean(aps)) if aps else 0.0


def _missed(m: _Matches) -> np.ndarray:
    """Miss errors ``[M]``: objects neither matched nor pointed at by a Loc / Cls error."""
    missed = ~m.gt_used
    missed[m.det_target[(m.det_status == _LOC) | (m.det_status == _CLS)]] = False
    return missed


def _fixed_ap(m: _Matches, error: str, num_gt: dict[int, int]) -> float:
    """AP50 with the errors of one type fixed by TIDE's oracle."""
    status = m.det_status
    keep = status != _IGNORED
    classes = m.det_class.copy()
    true = status == _TP
    if error == "miss":
        fixed_gt = dict(num_gt)
        for c in m.gt_class[_missed(m)]:
            fixed_gt[int(c)] -= 1
        return _mean_ap(classes[keep], m.det_score[keep], true[keep], fixed_gt)
    errors = status == _STATUS[error]
    keep &= ~errors
    if error in ("loc", "cls"):
        # The highest-scored error pointing at an unmatched object becomes its true positive;
        # the others would be duplicates of it (or of the object's match): suppressed.
        best: dict[int, int] = {}
        for d in np.flatnonzero(errors).tolist():
            t = int(m.det_target[d])
            if not m.gt_used[t] and (t not in best or m.det_score[d] > m.det_score[best[t]]):
                best[t] = d
        winners = np.asarray(list(best.values()), dtype=np.int64)
        keep[winners] = True
        true[winners] = True
        classes[winners] = m.gt_class[m.det_target[winners]]
    return _mean_ap(classes[keep], m.det_score[keep], true[keep], num_gt)


def tide_errors(
    gt: dict,
    detections: list[dict],
    *,
    image_ids: list[int] | None = None,
    pos_iou: float = 0.5,
    background_iou: float = 0.1,
) -> TideErrors:
    """TIDE's main errors of COCO results (see the module docstring).

    Args:
        gt: COCO ground truth (``images``, ``annotations`` with ``bbox`` xywh / ``iscrowd``,
            ``categories``).
        detections: COCO results (``image_id``, ``category_id``, ``bbox`` xywh, ``score``);
            those on other images than the evaluated ones are left out.
        image_ids: the images to evaluate (default: every ground-truth image).
        pos_iou: foreground IoU ``t_f`` (TIDE: 0.5, so the AP is AP50).
        background_iou: background IoU ``t_b`` (TIDE: 0.1).

    Returns:
        :class:`TideErrors`: AP50, dAP50 and the count of each error type.
    """
    m = _match(gt, detections, image_ids, pos_iou, background_iou)
    num_gt = {int(c): int(n) for c, n in zip(*np.unique(m.gt_class, return_counts=True), strict=True)}
    keep = m.det_status != _IGNORED
    ap50 = _mean_ap(m.det_class[keep], m.det_score[keep], m.det_status[keep] == _TP, num_gt)
    # A fix never lowers the AP; TIDE clips what rounding makes negative.
    dap = {e: max(_fixed_ap(m, e, num_gt) - ap50, 0.0) for e in ERROR_TYPES}
    counts = {e: int((m.det_status == _STATUS[e]).sum()) for e in ERROR_TYPES if e != "miss"}
    counts["miss"] = int(_missed(m).sum())
    return TideErrors(ap50=ap50, dap=dap, counts=counts)
