"""COCO AP with image weights, from per-image match records (:mod:`.image_matches`).

:func:`coco_ap` computes what pycocotools' ``accumulate`` + ``summarize`` compute (AP, AP50,
AP75, APs, APm, APl and the per-category AP), except that every image ``i`` counts with a
weight ``w_i >= 0``: each of its detections adds ``w_i`` (not 1) to the cumulative TP or FP
count, and its non-ignored GT add ``w_i * num_gt_i`` to the number of positives ``npig``.
With all weights 1 the numbers are pycocotools' (to ~1e-16). :func:`coco_metric_batch` does
the same for a batch of weight vectors at once (the image bootstrap of
:mod:`.intervals`).

Per category ``k``, area range ``a`` and IoU threshold ``t``, over the records ranked by
score (see "Ties" below)::

    tp_j = sum_{l <= j} w_{img(l)} * [matched_l and not ignored_l]
    fp_j = sum_{l <= j} w_{img(l)} * [not matched_l and not ignored_l]
    rc_j = tp_j / npig,   npig = sum_i w_i * num_gt[k, a, i]
    pr_j = tp_j / (tp_j + fp_j + eps)                       (eps = np.spacing(1), as pycocotools)
    q_r  = max_{j >= j_r} pr_j,  j_r = min {j : rc_j >= recThrs[r]}  (0 when there is none)
    precision[t, r, k, a] = q_r, or -1 when npig == 0

and a statistic is the mean of ``precision`` over the entries that are not -1 (AP: all ``t``,
area "all"; AP50 / AP75: one ``t``; APs / APm / APl: area small / medium / large), -1 when
all are; ``max_j`` from the right is pycocotools' "precision made monotone", and ``j_r`` its
``np.searchsorted(rc, recThrs, side="left")``.

Ties. Records are ranked as ``accumulate`` ranks them: a stable sort on ``-score`` of the
image-ordered concatenation, so equal scores are ordered by the image's position in
``ImageMatches.image_ids`` (sorted ids), then by the image's own order (pycocotools' stable
per-image sort on ``-score`` of the results in input order). A weight multiplies a record in
place: the record of image ``i`` stands for ``w_i`` consecutive copies of itself. COCOeval
on a dataset in which image ``i`` appears ``w_i`` times (copies re-id'd so that they sort
right after the original, results copied with them) ranks the copies in the same place,
so for integer weights the result is exactly that COCOeval's -- the cumulative counts are
integers, computed exactly -- with one exception: when one image has two or more detections
of one category (within one area range's records) with exactly equal scores, COCOeval
interleaves the copies (d1 d2 d1 d2) where the weights keep each record's copies together
(d1 d1 d2 d2); the precision-recall points between the two differ, so there the equality
holds only up to the order of those tied detections (which pycocotools itself leaves to the
input order). Copies re-id'd elsewhere (e.g. after every original image) change the order of
ties *across* images the same way: exact without any tied scores, up to tie order otherwise.

Non-integer weights are allowed (the same formulas, to floating-point rounding).

Only the true positives are evaluated as points: an ignored record adds 0 to tp and fp (it
repeats the previous point), and a false positive has the recall of the TP before it and a
precision no higher (or recall and precision 0 before the first TP), so neither can raise a
``q_r`` -- whatever the weights. The false positives still count in the ``fp`` of the TPs
after them (see ``_Category``). Cost per weight vector and category: ``O(points + records)``
numpy work, or a ``[B, I] @ [I, U]`` product where cheaper; 1000 bootstrap weight vectors on
500 images with 100 detections each take ~0.5 s per run for AP on 2 CPU cores.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TypedDict

import numpy as np

from detmine.evaluation.image_matches import ImageMatches

__all__ = ["STAT_NAMES", "CocoAP", "coco_ap", "coco_metric_batch"]

STAT_NAMES: tuple[str, ...] = ("AP", "AP50", "AP75", "APs", "APm", "APl")

# stat name -> (area index, IoU threshold or None for all of .50:.95), as summarize() reads them.
_STATS: dict[str, tuple[int, float | None]] = {
    "AP": (0, None),
    "AP50": (0, 0.5),
    "AP75": (0, 0.75),
    "APs": (1, None),
    "APm": (2, None),
    "APl": (3, None),
}

_EPS = float(np.spacing(1))
# Weight rows x records of one category processed at once (a few float64 arrays that size).
_CHUNK_ELEMENTS = 2_000_000
# The product is used when I * U <= _MATMUL_RATIO * Lb (measured: ~30 GFlop/s dgemm against
# ~5-8 ns per element for a gather and a running sum, on 2 cores), and I * U is not too large.
_MATMUL_RATIO = 200
_MATMUL_MAX_ELEMENTS = 4_000_000


class CocoAP(TypedDict):
    """:func:`coco_ap`'s result: ``summarize()``'s stats[0:6] (-1 where undefined) and the
    per-category AP (IoU .50:.95, area all; category id -> AP, -1 for a category without GT)."""

    AP: float
    AP50: float
    AP75: float
    APs: float
    APm: float
    APl: float
    per_category: dict[int, float]


def coco_ap(matches: ImageMatches, image_weights: np.ndarray | None = None) -> CocoAP:
    """COCO AP of one run with image weights.

    Args:
        matches: the run's match records (:func:`~detmine.evaluation.image_matches.image_matches`).
        image_weights: ``[I]`` weights ``>= 0`` aligned with ``matches.image_ids`` (an image's
            multiplicity; 0 drops it); None = all 1, pycocotools' numbers.

    Returns:
        :class:`CocoAP`. With integer weights it equals COCOeval on the dataset where image
        ``i`` appears ``w_i`` times, exactly or up to the order of tied scores (module
        docstring, "Ties").
    """
    weights = _check_weights(matches, image_weights)[None, :]
    t50, t75 = _iou_index(matches, 0.5), _iou_index(matches, 0.75)
    all_t = tuple(range(len(matches.iou_thresholds)))
    stats: dict[str, float] = {}
    per_category: dict[int, float] = {}
    for a, area_stat in enumerate(("AP", "APs", "APm", "APl")):
        q, valid = _precision(matches, weights, a, all_t)  # [1, K, T, R], [1, K]
        stats[area_stat] = float(_mean_valid(q, valid)[0])
        if a == 0:
            stats["AP50"] = float(_mean_valid(q[:, :, [t50]], valid)[0])
            stats["AP75"] = float(_mean_valid(q[:, :, [t75]], valid)[0])
            for k, cat in enumerate(matches.category_ids):
                per_category[int(cat)] = float(q[0, k].mean()) if valid[0, k] else -1.0
    return CocoAP(
        AP=stats["AP"],
        AP50=stats["AP50"],
        AP75=stats["AP75"],
        APs=stats["APs"],
        APm=stats["APm"],
        APl=stats["APl"],
        per_category=per_category,
    )


def coco_metric_batch(matches: ImageMatches, weights: np.ndarray, metric: str = "AP") -> np.ndarray:
    """One COCO statistic of one run under each of ``B`` image-weight vectors.

    Args:
        matches: the run's match records.
        weights: ``[B, I]`` weights ``>= 0``, columns aligned with ``matches.image_ids``.
        metric: one of :data:`STAT_NAMES`.

    Returns:
        ``[B]`` float64: row ``b`` is ``coco_ap(matches, weights[b])[metric]``.
    """
    if metric not in _STATS:
        raise ValueError(f"metric '{metric}' is unknown; valid: {', '.join(STAT_NAMES)}")
    weights = np.asarray(weights, dtype=np.float64)
    if weights.ndim != 2 or weights.shape[1] != matches.num_images:
        raise ValueError(f"weights must have shape [B, {matches.num_images}], got {list(weights.shape)}")
    if not np.all(np.isfinite(weights)) or np.any(weights < 0):
        raise ValueError("weights must be finite and >= 0")
    area, iou = _STATS[metric]
    t_indices = tuple(range(len(matches.iou_thresholds))) if iou is None else (_iou_index(matches, iou),)
    longest = max((len(c.base_image) for c in _plan(matches, area, t_indices)), default=0)
    chunk = max(1, _CHUNK_ELEMENTS // max(longest, 1))
    out = np.empty(len(weights), dtype=np.float64)
    for start in range(0, len(weights), chunk):
        q, valid = _precision(matches, weights[start : start + chunk], area, t_indices)
        out[start : start + chunk] = _mean_valid(q, valid)
    return out


def _check_weights(matches: ImageMatches, image_weights: np.ndarray | None) -> np.ndarray:
    if image_weights is None:
        return np.ones(matches.num_images, dtype=np.float64)
    w = np.asarray(image_weights, dtype=np.float64)
    if w.shape != (matches.num_images,):
        raise ValueError(f"image_weights must have shape [{matches.num_images}], got {list(w.shape)}")
    if not np.all(np.isfinite(w)) or np.any(w < 0):
        raise ValueError("image_weights must be finite and >= 0")
    return w


def _iou_index(matches: ImageMatches, iou: float) -> int:
    # summarize() selects with ``iouThr == p.iouThrs``: the same exact comparison.
    found = np.flatnonzero(matches.iou_thresholds == iou)
    if len(found) != 1:
        raise ValueError(f"IoU threshold {iou} is not one of {matches.iou_thresholds.tolist()}")
    return int(found[0])


def _mean_valid(q: np.ndarray, valid: np.ndarray) -> np.ndarray:
    """``[B]``: the mean of ``q [B, K, T, R]`` over the categories where ``valid [B, K]``;
    -1 where no category is valid (summarize's ``mean(s[s > -1])``, or -1)."""
    per_k = q.sum(axis=(2, 3))
    count = valid.sum(axis=1) * (q.shape[2] * q.shape[3])
    total = np.where(valid, per_k, 0.0).sum(axis=1)
    return np.where(count > 0, total / np.maximum(count, 1), -1.0)


@dataclass(frozen=True)
class _Segment:
    """The points of one (category, IoU threshold): its ``n`` true positives, in rank order.

    Attributes:
        tp_image: ``[n]`` image index of each TP.
        point: ``[n]`` index in ``_Category.points`` of each TP's number of base records up to
            and including it.
        ignored_image: ``[Q]`` image index of the base records ignored at this threshold.
        ignored_hi: ``[n]`` how many of those precede each TP.
    """

    tp_image: np.ndarray
    point: np.ndarray
    ignored_image: np.ndarray
    ignored_hi: np.ndarray


@dataclass(frozen=True)
class _Category:
    """One category's records of one area range that matter, for some IoU thresholds.

    AP depends on the precision-recall points of the true positives only: a false positive
    or an ignored record has the recall of the TP before it and a precision no higher (or
    recall and precision 0 before the first TP). At a TP, ``tp`` is the running total of the
    TP weights; ``tp + fp`` that of the weights of the "base" records (the category's records
    not ignored at every threshold, up to its last TP at any threshold) minus that of the
    base records ignored at this threshold.

    The running totals of the base weights at the TPs come either from a cumulative sum over
    the ``Lb`` base records or, cheaper when ``I * U`` is small against ``Lb`` (BLAS does
    far more multiply-adds per second than numpy does gathers and running sums), from the
    product ``weights [B, I] @ counts [I, U]``: ``counts[i, u]`` base records of image ``i``
    among the first ``points[u]``.

    Attributes:
        base_image: ``[Lb]`` image index of each base record, in rank order.
        points: ``[U]`` the distinct numbers of base records up to and including a TP (of
            any segment), increasing.
        counts: ``[I, U]`` int32, or None to use the cumulative sum.
        segments: one :class:`_Segment` per IoU threshold.
    """

    base_image: np.ndarray
    points: np.ndarray
    counts: np.ndarray | None
    segments: tuple[_Segment, ...]


def _plan(matches: ImageMatches, a: int, t_indices: tuple[int, ...]) -> tuple[_Category, ...]:
    """The :class:`_Category` records of area ``a`` and thresholds ``t_indices`` (cached)."""
    key = ("plan", a, t_indices)
    cached = matches._cache.get(key)
    if cached is not None:
        return cached
    plan = []
    for k in range(matches.num_categories):
        block = matches.block(k, a)
        image = matches.image_index[block]
        matched = matches.matched[list(t_indices), block]  # [T', n]
        ignored = matches.ignored[list(t_indices), block]
        tp = matched & ~ignored
        any_tp = tp.any(axis=0)
        hits = np.flatnonzero(any_tp)
        in_base = np.logical_not(ignored.all(axis=0))
        in_base[(hits[-1] + 1 if len(hits) else 0) :] = False
        base_count = np.cumsum(in_base)  # base records up to and including each record
        base_image = image[in_base]
        points = np.unique(base_count[any_tp])
        segments = []
        for t in range(len(t_indices)):
            tp_records = np.flatnonzero(tp[t])
            ignored_records = np.flatnonzero(ignored[t] & in_base)
            segments.append(
                _Segment(
                    tp_image=image[tp_records],
                    point=np.searchsorted(points, base_count[tp_records]),
                    ignored_image=image[ignored_records],
                    ignored_hi=np.searchsorted(ignored_records, tp_records),
                )
            )
        counts = None
        size = matches.num_images * len(points)
        if size <= min(_MATMUL_RATIO * len(base_image), _MATMUL_MAX_ELEMENTS):
            # base record r counts at the points u with points[u] >= r + 1
            first = np.searchsorted(points, np.arange(1, len(base_image) + 1))
            gaps = np.zeros((matches.num_images, len(points) + 1), dtype=np.int32)
            np.add.at(gaps, (base_image, first), 1)
            counts = np.cumsum(gaps[:, :-1], axis=1, dtype=np.int32)
        plan.append(_Category(base_image=base_image, points=points, counts=counts, segments=tuple(segments)))
    result = tuple(plan)
    matches._cache[key] = result
    return result


def _running_totals(weights: np.ndarray, image: np.ndarray) -> np.ndarray:
    """``[B, n + 1]``: ``[0, cumsum(weights[:, image])]`` along each row."""
    out = np.empty((len(weights), len(image) + 1))
    out[:, 0] = 0.0
    np.cumsum(weights[:, image], axis=1, out=out[:, 1:])
    return out


def _recall_bucket(recall: np.ndarray, recall_thresholds: np.ndarray) -> np.ndarray:
    """``#{r : recall_thresholds[r] <= recall}`` elementwise for recall >= 0:
    ``np.searchsorted(recall_thresholds, recall, side="right")``, computed faster for evenly
    spaced thresholds 0..1 (pycocotools' 0:.01:1): ``c = floor(100 * recall)`` is the count
    give or take one, so two comparisons with the thresholds themselves settle it exactly.
    """
    num_r = len(recall_thresholds)
    if not np.array_equal(recall_thresholds, np.linspace(0.0, 1.0, num_r)):
        return np.searchsorted(recall_thresholds, recall, side="right")
    c = np.minimum((recall * (num_r - 1)).astype(np.intp), num_r - 1)
    extended = np.concatenate([recall_thresholds, [np.inf, np.inf]])
    return c + (extended[c] <= recall) + (extended[c + 1] <= recall)


def _precision(
    matches: ImageMatches, weights: np.ndarray, a: int, t_indices: tuple[int, ...]
) -> tuple[np.ndarray, np.ndarray]:
    """Interpolated precision under each weight row.

    Args:
        weights: ``[B, I]``.
        a: area index.
        t_indices: IoU threshold indices (``T'`` of them).

    Returns:
        ``q [B, K, T', R]`` (meaningful where valid) and ``valid [B, K]`` (``npig > 0``).
    """
    recall_thresholds = matches.recall_thresholds
    num_b, num_r = len(weights), len(recall_thresholds)
    # Integer-valued products and sums (bootstrap counts, all-ones) are exact in float64.
    npig = weights @ matches.num_gt[:, a, :].T.astype(np.float64)  # [B, K]
    valid = npig > 0
    q = np.zeros((num_b, matches.num_categories, len(t_indices), num_r))
    rows = np.arange(num_b)[:, None]
    row_offset = rows * (num_r + 1)
    for k, category in enumerate(_plan(matches, a, t_indices)):
        if not valid[:, k].any():
            continue
        npig_k = np.where(valid[:, k], npig[:, k], 1.0)[:, None]
        if category.counts is not None:
            at_points = weights @ category.counts.astype(np.float64)  # [B, U]
        else:
            at_points = _running_totals(weights, category.base_image)[:, category.points]
        for t, seg in enumerate(category.segments):
            n = len(seg.tp_image)
            if n == 0:
                continue
            tp = np.cumsum(weights[:, seg.tp_image], axis=1)  # [B, n]
            counted = at_points[:, seg.point]  # tp + fp
            if len(seg.ignored_image):
                counted -= _running_totals(weights, seg.ignored_image)[:, seg.ignored_hi]
            recall = tp / npig_k
            # tp / (fp + tp + eps) as pycocotools, fp + tp being exactly ``counted`` for
            # integer weights (to rounding otherwise)
            counted += _EPS
            precision = np.divide(tp, counted, out=counted)
            # q_r = max of pr from the first point with rc >= recThrs[r] on (0 if none): the
            # suffix maximum at j_r = #{points with rc < recThrs[r]} = #{bucket <= r}.
            bucket = _recall_bucket(recall, recall_thresholds)
            counts = np.bincount((row_offset + bucket).ravel(), minlength=num_b * (num_r + 1))
            j = np.cumsum(counts.reshape(num_b, num_r + 1), axis=1)[:, :num_r]
            suffix_max = np.zeros((num_b, n + 1))
            suffix_max[:, :n] = np.maximum.accumulate(precision[:, ::-1], axis=1)[:, ::-1]
            q[:, k, t] = suffix_max[rows, j]
    return q, valid
