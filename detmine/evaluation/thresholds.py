"""Per-class operating thresholds: the file the ``thresholds`` evaluation view writes next to a
checkpoint, and reading it back for ``eval.postprocess.class_thresholds`` (applied inside
``DenseDetector.predict``, so every tool reuses them).

File format (``thresholds.json``)::

    {"rule": "f1" | "precision", "iou": 0.5, "target_precision": 0.9 | null,
     "classes": [{"name": "circle", "category_id": 1, "threshold": 0.42,
                  "precision": 0.91, "recall": 0.88, "f1": 0.89, "support": 512}, ...]}

``classes`` is in the contiguous class order (class ``k`` at index ``k - 1``); ``target_precision``
is null under the ``f1`` rule.

Choosing them (:func:`choose_thresholds`), per class, on the evaluated split:

1. the class's detections are matched COCO-style, per image in descending score (equal scores
   in input order): each to the unmatched object of its class with the highest IoU (ties: the
   first in annotation order) at ``IoU >= iou``; one matching none that lies in a crowd region
   of its class (``iscrowd`` / ``ignore``: the region covers ``>= iou`` of the detection's own
   area, COCO's crowd rule) is ignored -- neither a true nor a false positive -- and a crowd
   region is never an object (not in ``support``). Greedy in score order, so the matches of
   the detections at or above any score do not depend on those below it: keeping the
   detections with ``score >= threshold`` (what ``predict`` does) gives the same matches;
2. each distinct score ``s`` of a true or false positive is a candidate threshold, with
   ``precision = TP / (TP + FP)``, ``recall = TP / support`` and
   ``F1 = 2 TP / (TP + FP + support)`` over the detections with ``score >= s``;
3. ``rule="f1"``: the threshold with the highest F1 (ties: the higher threshold);
   ``rule="precision"``: the highest recall whose precision reaches ``target_precision``, at
   the highest threshold giving it (so no detection is let in that adds only false positives);
4. no candidate qualifies (no detection, no object, no true positive, or the target precision
   never reached): the threshold is 1.0, and precision / recall / F1 are those of the
   detections scoring 1.0 (usually none: all 0; precision with no detection is 0).
"""

from __future__ import annotations

import json
import math
from collections.abc import Iterable, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from detmine.errors import ConfigError
from detmine.evaluation.confusion import (
    ImageGroundTruth,
    category_label,
    class_label_of,
    crowd_cover_xywh,
    image_ground_truth,
    iou_xywh,
)

THRESHOLDS_FILE = "thresholds.json"
#: the rules of :func:`choose_thresholds`.
RULES: tuple[str, ...] = ("f1", "precision")
#: the threshold of a class for which no score qualifies (keeps only detections scoring 1.0).
NO_THRESHOLD = 1.0


def load_class_thresholds(value: Sequence[float] | str | Path | None) -> list[float] | None:
    """The per-class thresholds of ``eval.postprocess.class_thresholds``: a list as it is, a
    path read as a ``thresholds.json`` (a folder means its ``thresholds.json``), None as None.

    Raises:
        ConfigError: an unreadable or malformed file, or a value that is not a number in [0, 1]
            (one line naming the file or key).
    """
    if value is None:
        return None
    if isinstance(value, (str, Path)):
        path = Path(value)
        if path.is_dir():
            path = path / THRESHOLDS_FILE
        try:
            payload: Any = json.loads(path.read_text())
            values = [entry["threshold"] for entry in payload["classes"]]
        except (OSError, ValueError, KeyError, TypeError) as exc:
            raise ConfigError(
                f"eval.postprocess.class_thresholds: {path} is not a readable thresholds file ({exc})"
            ) from None
        where = str(path)
    else:
        values, where = list(value), "eval.postprocess.class_thresholds"
    for v in values:
        if isinstance(v, bool) or not isinstance(v, (int, float)) or not (0.0 <= v <= 1.0) or math.isnan(v):
            raise ConfigError(f"{where}: a class threshold must be a number in [0, 1], got {v!r}")
    return [float(v) for v in values]


def predict_options(postprocess: dict[str, Any]) -> dict[str, Any]:
    """``eval.postprocess`` as keyword options of ``predict``, its ``class_thresholds`` read."""
    return {**postprocess, "class_thresholds": load_class_thresholds(postprocess.get("class_thresholds"))}


def _class_detections(
    detections: Iterable[dict[str, Any]], category_ids: Sequence[int], images: set[int]
) -> dict[int, dict[int, list[tuple[float, list[float]]]]]:
    """``label -> image_id -> [(score, xywh), ...]`` of the detections on the evaluated
    images, each image's in descending score (equal scores in input order)."""
    label_of = class_label_of(category_ids)
    grouped: dict[int, dict[int, list[tuple[float, list[float]]]]] = {}
    for det in detections:
        image_id = int(det["image_id"])
        if image_id not in images:
            continue
        label = category_label(label_of, det["category_id"], f"a detection on image {image_id}")
        per_image = grouped.setdefault(label, {}).setdefault(image_id, [])
        per_image.append((float(det["score"]), [float(v) for v in det["bbox"]]))
    for per_label in grouped.values():
        for items in per_label.values():
            items.sort(key=lambda item: -item[0])  # list.sort is stable
    return grouped


def _match_image(
    items: list[tuple[float, list[float]]], image: ImageGroundTruth, label: int, iou_thresh: float
) -> tuple[list[float], list[bool]]:
    """COCO matching of one class's detections on one image (``items`` in descending score):
    the scores and true-positive flags of the detections not ignored."""
    boxes = np.asarray([b for _, b in items], dtype=np.float64).reshape(-1, 4)
    objects = image.boxes[image.labels == label]
    iou = iou_xywh(boxes, objects)
    covered = crowd_cover_xywh(boxes, image.crowd_boxes[image.crowd_labels == label])
    in_crowd = covered.max(axis=1, initial=0.0) >= iou_thresh
    taken = np.zeros(len(objects), dtype=bool)
    scores: list[float] = []
    positive: list[bool] = []
    for d, (score, _) in enumerate(items):
        candidates = np.where(taken | (iou[d] < iou_thresh), -1.0, iou[d])
        best = int(np.argmax(candidates)) if len(objects) else -1
        if best >= 0 and candidates[best] >= 0.0:
            taken[best] = True
            scores.append(score)
            positive.append(True)
        elif not in_crowd[d]:
            scores.append(score)
            positive.append(False)
    return scores, positive


def _at(scores: np.ndarray, positive: np.ndarray, threshold: float, support: int) -> dict[str, float]:
    """Precision, recall and F1 of the detections with ``score >= threshold``."""
    kept = scores >= threshold
    tp = int(positive[kept].sum())
    fp = int(kept.sum()) - tp
    return {
        "precision": tp / (tp + fp) if tp + fp else 0.0,
        "recall": tp / support if support else 0.0,
        "f1": 2 * tp / (tp + fp + support) if tp + fp + support else 0.0,
    }


def _choose(
    scores: np.ndarray, positive: np.ndarray, support: int, rule: str, target_precision: float
) -> float:
    """The threshold of one class by ``rule`` (module docstring, steps 2-4); ``scores`` and
    ``positive`` ``[D]`` are the non-ignored detections in descending score."""
    if len(scores) == 0 or support == 0:
        return NO_THRESHOLD
    tp_cum = np.cumsum(positive, dtype=np.int64)
    # A level is a distinct score: its counts are those at the last detection with that score.
    last = np.flatnonzero(np.append(scores[1:] != scores[:-1], True))
    levels, tp = scores[last], tp_cum[last]
    fp = last + 1 - tp
    if rule == "f1":
        # Exact integer ratios: equal F1s are equal floats, so ties are seen as ties.
        f1 = 2 * tp / (tp + fp + support)
        best = float(f1.max())
        return float(levels[int(np.flatnonzero(f1 == best)[0])]) if best > 0 else NO_THRESHOLD
    ok = (tp > 0) & (tp / (tp + fp) >= target_precision)
    if not ok.any():
        return NO_THRESHOLD
    best_tp = tp[ok].max()
    # The first (highest) level reaching best_tp has its fewest false positives, so it qualifies.
    return float(levels[int(np.flatnonzero(tp == best_tp)[0])])


def choose_thresholds(
    gt: dict[str, Any],
    detections: Iterable[dict[str, Any]],
    *,
    category_ids: Sequence[int],
    class_names: Sequence[str],
    image_ids: Sequence[int] | None = None,
    iou_thresh: float = 0.5,
    rule: str = "f1",
    target_precision: float = 0.9,
) -> list[dict[str, Any]]:
    """Per-class operating thresholds chosen on the evaluated split (the rule: the module
    docstring).

    Args:
        gt: COCO ground truth (``images``, ``annotations`` with ``bbox`` xywh and ``iscrowd``).
        detections: COCO results (``image_id``, ``category_id``, ``bbox`` xywh, ``score``);
            those on images that are not evaluated are left out.
        category_ids: ``[K]`` the dataset category id of each class (class ``k`` at ``k - 1``).
        class_names: ``[K]`` the class names, in the same order.
        image_ids: the evaluated images (None: every image of ``gt``).
        iou_thresh: the IoU at which a detection is a true positive (and the crowd cover at
            which an unmatched one is ignored).
        rule: ``"f1"`` (the best F1) or ``"precision"`` (the highest recall at
            ``target_precision``).
        target_precision: the precision the ``"precision"`` rule must reach, in [0, 1].

    Returns:
        ``K`` entries in class order: ``{"name", "category_id", "threshold", "precision",
        "recall", "f1", "support"}`` -- precision, recall and F1 those the threshold gives on
        this split, ``support`` the class's non-crowd objects in the evaluated images.

    Raises:
        ValueError: an unknown ``rule``, a ``target_precision`` outside [0, 1], or names and
            category ids of different lengths.
        DataError: an annotation or detection whose category is not one of ``category_ids``.
    """
    if rule not in RULES:
        raise ValueError(f"unknown threshold rule {rule!r}; expected one of {', '.join(RULES)}")
    if not 0.0 <= target_precision <= 1.0:
        raise ValueError(f"target_precision must be in [0, 1], got {target_precision}")
    if len(class_names) != len(category_ids):
        raise ValueError(f"{len(class_names)} class names for {len(category_ids)} category ids")
    truth = image_ground_truth(gt, category_ids=category_ids, image_ids=image_ids)
    grouped = _class_detections(detections, category_ids, set(truth))
    support = np.zeros(len(category_ids) + 1, dtype=np.int64)
    for image in truth.values():
        support += np.bincount(image.labels, minlength=len(category_ids) + 1)
    entries = []
    for k, (name, category) in enumerate(zip(class_names, category_ids, strict=True)):
        label = k + 1
        scores: list[float] = []
        positive: list[bool] = []
        for image_id, items in grouped.get(label, {}).items():
            s, p = _match_image(items, truth[image_id], label, iou_thresh)
            scores += s
            positive += p
        order = np.argsort(-np.asarray(scores, dtype=np.float64), kind="stable")
        score_array = np.asarray(scores, dtype=np.float64)[order]
        positive_array = np.asarray(positive, dtype=bool)[order]
        threshold = _choose(score_array, positive_array, int(support[label]), rule, target_precision)
        entries.append(
            {
                "name": str(name),
                "category_id": int(category),
                "threshold": threshold,
                **_at(score_array, positive_array, threshold, int(support[label])),
                "support": int(support[label]),
            }
        )
    return entries


def thresholds_file(
    entries: Sequence[dict[str, Any]], *, rule: str, iou: float, target_precision: float | None
) -> str:
    """The ``thresholds.json`` text of ``entries`` (:func:`choose_thresholds`; format: the
    module docstring), read back by :func:`load_class_thresholds`. ``target_precision`` is
    written only under the ``precision`` rule (null otherwise)."""
    keys = ("name", "category_id", "threshold", "precision", "recall", "f1", "support")
    payload = {
        "rule": rule,
        "iou": float(iou),
        "target_precision": float(target_precision)
        if rule == "precision" and target_precision is not None
        else None,
        "classes": [{key: entry[key] for key in keys} for entry in entries],
    }
    return json.dumps(payload, indent=2) + "\n"


def thresholds_table(entries: Sequence[dict[str, Any]], *, rule: str, target_precision: float | None) -> str:
    """A printable table of ``entries``: class, threshold, precision, recall, F1 (in percent)
    and support, under a title naming the rule."""
    if rule == "precision":
        title = f"Per-class thresholds: the highest recall at precision >= {target_precision}"
    else:
        title = "Per-class thresholds: the best F1"
    width = max([len("class"), *(len(str(e["name"])) for e in entries)])
    lines = [title, f"{'class':<{width}}  threshold  precision  recall     F1  support"]
    for e in entries:
        lines.append(
            f"{e['name']:<{width}}  {e['threshold']:9.3f}  {100 * e['precision']:9.1f}  "
            f"{100 * e['recall']:6.1f}  {100 * e['f1']:5.1f}  {e['support']:7d}"
        )
    if any(e["threshold"] == NO_THRESHOLD for e in entries):
        lines.append(
            f"({NO_THRESHOLD:.3f}: no lower score qualified -- no detection, no object, or the rule never met)"
        )
    return "\n".join(lines)
