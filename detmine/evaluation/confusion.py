"""The detection confusion matrix, with a background row and column.

Rows are the true class (``K`` classes, then ``background``: detections that match no object),
columns the predicted class (``K`` classes, then ``background``: objects no detection matched).
The diagonal holds the right detections, the rest of the ``K x K`` block the detections of an
object with the wrong class, the last row the false positives on background (and duplicates),
the last column the missed objects. The corner (background, background) is always 0.

The matching rule (per image, class-agnostic) is the usual one of a detection confusion matrix
(ultralytics' ``ConfusionMatrix``, mmdetection's ``tools/analysis_tools/confusion_matrix.py``):

1. detections count from ``score_thresh`` (``score >= score_thresh``), or from their class's
   operating threshold when ``class_thresholds`` is given;
2. every (object, detection) pair with ``IoU >= iou_thresh`` is a candidate; the pairs are
   taken greedily by descending IoU (ties: the higher-scored detection, then detection and
   object order), each object and each detection used once;
3. a detection left unmatched that lies in a crowd region (``iscrowd`` / ``ignore``
   annotation) of any class -- the region covers ``>= iou_thresh`` of the detection's own area
   (COCO's crowd rule: intersection over the detection's area) -- is ignored: neither a right
   nor a false detection. A crowd region is never an object, so never a missed one.

Differences from those tools: ultralytics keeps the pairs with ``IoU > iou_thresh``, and its
two ``np.unique`` passes (first per detection, then per object) can leave a pair unmatched that
the greedy one-to-one matching here keeps; mmdetection lets one detection count against every
object it overlaps. Neither ignores crowd regions, and both index the matrix [predicted, true]
or print it transposed; here it is [true, predicted].

The geometry helpers (:func:`iou_xywh`, :func:`crowd_cover_xywh`) and the per-image ground
truth (:func:`image_ground_truth`) are shared with :mod:`detmine.evaluation.thresholds`.
"""

from __future__ import annotations

import csv
import io
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

from detmine.analysis.coco_boxes import crowd_cover_xywh, iou_xywh
from detmine.errors import DataError

__all__ = [
    "BACKGROUND",
    "ImageGroundTruth",
    "category_label",
    "class_label_of",
    "confusion_csv",
    "confusion_matrix",
    "confusion_picture",
    "crowd_cover_xywh",
    "evaluated_image_ids",
    "greedy_pairs",
    "image_ground_truth",
    "iou_xywh",
]

BACKGROUND = "background"

# Above this many rows the cells are too small to hold their counts: the picture is colours only.
_MAX_ANNOTATED = 40


@dataclass(frozen=True)
class ImageGroundTruth:
    """The ground truth of one image.

    Attributes:
        boxes: ``[N, 4]`` float64 ``xywh`` of the objects (not crowd).
        labels: ``[N]`` int64 contiguous class (1..K) of each object.
        crowd_boxes: ``[M, 4]`` float64 ``xywh`` of the crowd / ignore regions.
        crowd_labels: ``[M]`` int64 contiguous class of each region.
    """

    boxes: np.ndarray
    labels: np.ndarray
    crowd_boxes: np.ndarray
    crowd_labels: np.ndarray


def class_label_of(category_ids: Sequence[int]) -> dict[int, int]:
    """Category id -> contiguous class (1..K)."""
    return {int(c): k + 1 for k, c in enumerate(category_ids)}


def category_label(label_of: dict[int, int], category: Any, what: str) -> int:
    """The class of ``category`` (``what`` names the annotation or detection in the error).

    Raises:
        DataError: a category that is not one of the classes'.
    """
    label = label_of.get(int(category))
    if label is None:
        raise DataError(f"{what} has category_id {category}, not one of the classes' {sorted(label_of)}")
    return label


def evaluated_image_ids(gt: dict[str, Any], image_ids: Sequence[int] | None) -> list[int]:
    """``image_ids`` as ints, or every image of ``gt`` when None."""
    return [int(i) for i in (image_ids if image_ids is not None else [img["id"] for img in gt["images"]])]


def image_ground_truth(
    gt: dict[str, Any], *, category_ids: Sequence[int], image_ids: Sequence[int] | None = None
) -> dict[int, ImageGroundTruth]:
    """Per evaluated image its objects and crowd regions (annotations with ``iscrowd`` or
    ``ignore`` set), labelled with the contiguous classes of ``category_ids``; annotations of
    other images are left out.

    Raises:
        DataError: an annotation whose category is not one of ``category_ids``.
    """
    label_of = class_label_of(category_ids)
    ids = evaluated_image_ids(gt, image_ids)
    objects: dict[int, list[tuple[list[float], int]]] = {i: [] for i in ids}
    crowds: dict[int, list[tuple[list[float], int]]] = {i: [] for i in ids}
    for ann in gt.get("annotations", []):
        image_id = int(ann["image_id"])
        if image_id not in objects:
            continue
        label = category_label(label_of, ann["category_id"], f"annotation {ann.get('id')}")
        target = crowds if ann.get("iscrowd", 0) or ann.get("ignore", 0) else objects
        target[image_id].append(([float(v) for v in ann["bbox"]], label))

    def arrays(items: list[tuple[list[float], int]]) -> tuple[np.ndarray, np.ndarray]:
        boxes = np.asarray([b for b, _ in items], dtype=np.float64).reshape(-1, 4)
        return boxes, np.asarray([label for _, label in items], dtype=np.int64)

    return {i: ImageGroundTruth(*arrays(objects[i]), *arrays(crowds[i])) for i in ids}


def _kept_detections(
    detections: Iterable[dict[str, Any]],
    label_of: dict[int, int],
    images: set[int],
    score_thresh: float,
    class_thresholds: Sequence[float] | None,
) -> dict[int, list[tuple[list[float], int, float]]]:
    """Per evaluated image the ``(xywh, label, score)`` of the detections that count."""
    kept: dict[int, list[tuple[list[float], int, float]]] = {i: [] for i in images}
    for det in detections:
        image_id = int(det["image_id"])
        if image_id not in kept:
            continue
        label = category_label(label_of, det["category_id"], f"a detection on image {image_id}")
        score = float(det["score"])
        threshold = score_thresh if class_thresholds is None else class_thresholds[label - 1]
        if score >= threshold:
            kept[image_id].append(([float(v) for v in det["bbox"]], label, score))
    return kept


def greedy_pairs(iou: np.ndarray, scores: np.ndarray, iou_thresh: float) -> list[tuple[int, int]]:
    """One-to-one ``(detection, object)`` pairs of an IoU matrix ``[D, G]``: the pairs with
    ``IoU >= iou_thresh`` taken by descending IoU (ties: the higher ``scores [D]``, then the
    lower detection index, then the lower object index), each detection and object once."""
    det_index, obj_index = np.nonzero(iou >= iou_thresh)
    # np.lexsort sorts by its last key first.
    order = np.lexsort((obj_index, det_index, -scores[det_index], -iou[det_index, obj_index]))
    used_dets: set[int] = set()
    used_objs: set[int] = set()
    pairs = []
    for d, g in zip(det_index[order].tolist(), obj_index[order].tolist(), strict=True):
        if d not in used_dets and g not in used_objs:
            used_dets.add(d)
            used_objs.add(g)
            pairs.append((d, g))
    return pairs


def confusion_matrix(
    gt: dict[str, Any],
    detections: Iterable[dict[str, Any]],
    *,
    category_ids: Sequence[int],
    image_ids: Sequence[int] | None = None,
    iou_thresh: float = 0.5,
    score_thresh: float = 0.5,
    class_thresholds: Sequence[float] | None = None,
) -> np.ndarray:
    """The confusion matrix of ``detections`` against ``gt`` (the rule: the module docstring).

    Args:
        gt: COCO ground truth (``images``, ``annotations`` with ``bbox`` xywh and ``iscrowd``).
        detections: COCO results (``image_id``, ``category_id``, ``bbox`` xywh, ``score``);
            those on images that are not evaluated are left out.
        category_ids: ``[K]`` the dataset category id of each class (class ``k`` at ``k - 1``).
        image_ids: the evaluated images (None: every image of ``gt``).
        iou_thresh: the IoU at which a detection matches an object (and the crowd cover at
            which an unmatched one is ignored).
        score_thresh: the lowest score of a detection that counts.
        class_thresholds: ``[K]`` per-class lowest scores, used instead of ``score_thresh``.

    Returns:
        int64 ``[K + 1, K + 1]``: ``[true, predicted]``, index ``K`` the background row / column.

    Raises:
        DataError: an annotation or detection whose category is not one of ``category_ids``.
        ValueError: ``class_thresholds`` without one value per class.
    """
    num_classes = len(category_ids)
    if class_thresholds is not None and len(class_thresholds) != num_classes:
        raise ValueError(
            f"class_thresholds needs {num_classes} values (one per class), got {len(class_thresholds)}"
        )
    truth = image_ground_truth(gt, category_ids=category_ids, image_ids=image_ids)
    kept = _kept_detections(
        detections, class_label_of(category_ids), set(truth), score_thresh, class_thresholds
    )
    matrix = np.zeros((num_classes + 1, num_classes + 1), dtype=np.int64)
    for image_id, image in truth.items():
        dets = kept[image_id]
        boxes = np.asarray([b for b, _, _ in dets], dtype=np.float64).reshape(-1, 4)
        predicted = np.asarray([label for _, label, _ in dets], dtype=np.int64)
        scores = np.asarray([s for _, _, s in dets], dtype=np.float64)
        pairs = greedy_pairs(iou_xywh(boxes, image.boxes), scores, iou_thresh)
        for d, g in pairs:
            matrix[image.labels[g] - 1, predicted[d] - 1] += 1
        matched_dets = {d for d, _ in pairs}
        matched_objs = {g for _, g in pairs}
        covered = crowd_cover_xywh(boxes, image.crowd_boxes).max(axis=1, initial=0.0) >= iou_thresh
        for d in range(len(dets)):
            if d not in matched_dets and not covered[d]:
                matrix[num_classes, predicted[d] - 1] += 1
        for g in range(len(image.labels)):
            if g not in matched_objs:
                matrix[image.labels[g] - 1, num_classes] += 1
    return matrix


def _check_names(matrix: np.ndarray, class_names: Sequence[str]) -> list[str]:
    size = len(class_names) + 1
    if matrix.shape != (size, size):
        raise ValueError(
            f"a confusion matrix of {len(class_names)} classes is [{size}, {size}], got {list(matrix.shape)}"
        )
    return [*map(str, class_names), BACKGROUND]


def confusion_picture(matrix: np.ndarray, class_names: Sequence[str]) -> np.ndarray:
    """The matrix drawn (matplotlib's Agg canvas, no pyplot state): each row normalised to sum
    1 as the colours (an empty row stays white), the counts written in the cells (up to 40
    rows; a larger matrix is colours only -- its counts are in :func:`confusion_csv`), rows
    labelled ``true``, columns ``predicted``, the last of each ``background``.

    Args:
        matrix: int ``[K + 1, K + 1]`` (:func:`confusion_matrix`).
        class_names: ``[K]`` the class names.

    Returns:
        uint8 ``[H, W, 3]`` RGB.
    """
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    labels = _check_names(matrix, class_names)
    counts = np.asarray(matrix, dtype=np.int64)
    totals = counts.sum(axis=1, keepdims=True)
    shares = np.divide(counts, totals, out=np.zeros(counts.shape, dtype=np.float64), where=totals > 0)
    size = len(labels)
    side = float(np.clip(0.45 * size + 2.5, 4.0, 16.0))
    fig = Figure(figsize=(side + 1.0, side), dpi=100)
    canvas = FigureCanvasAgg(fig)
    ax = fig.add_subplot()
    shown = ax.imshow(shares, cmap="Blues", vmin=0.0, vmax=1.0)
    fig.colorbar(shown, ax=ax, fraction=0.046, pad=0.04, label="share of the row")
    ticks = np.arange(size)
    font = float(np.clip(160.0 / size, 5.0, 10.0))
    ax.set_xticks(ticks, labels, rotation=45, ha="right", fontsize=font)
    ax.set_yticks(ticks, labels, fontsize=font)
    ax.set_xlabel("predicted")
    ax.set_ylabel("true")
    ax.set_title("confusion matrix (rows normalised)")
    if size <= _MAX_ANNOTATED:
        for row in range(size):
            for col in range(size):
                colour = "white" if shares[row, col] > 0.5 else "black"
                ax.text(
                    col, row, str(counts[row, col]), ha="center", va="center", color=colour, fontsize=font
                )
    fig.tight_layout()
    canvas.draw()
    return np.asarray(canvas.buffer_rgba())[..., :3].copy()


def confusion_csv(matrix: np.ndarray, class_names: Sequence[str]) -> str:
    """The matrix as CSV: a header ``true \\ predicted, <classes...>, background`` and one row
    per true class (``background`` last), the counts as integers."""
    labels = _check_names(matrix, class_names)
    out = io.StringIO()
    writer = csv.writer(out, lineterminator="\n")
    writer.writerow(["true \\ predicted", *labels])
    for label, row in zip(labels, np.asarray(matrix).tolist(), strict=True):
        writer.writerow([label, *(int(v) for v in row)])
    return out.getvalue()
