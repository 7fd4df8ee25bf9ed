"""Per-image COCO match records: what pycocotools' ``accumulate`` reads, kept compactly.

:func:`image_matches` runs pycocotools' ``COCOeval.evaluate()`` once (bbox, default params)
and keeps, for every (category, area range), the detections of all images in the order
``accumulate`` ranks them, with their per-IoU-threshold match and ignore flags, plus the
number of non-ignored ground-truth boxes of every image. From these,
:func:`detmine.evaluation.weighted_ap.coco_ap` recomputes COCO AP with image weights
(multiplicities) without running COCOeval again -- what an image bootstrap needs.
"""

from __future__ import annotations

import contextlib
import io
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, ClassVar

import numpy as np

from detmine.errors import DataError
from detmine.evaluation.coco_eval import prepare_gt, pycocotools_eval

__all__ = ["AREA_LABELS", "ImageMatches", "image_matches"]

AREA_LABELS: tuple[str, ...] = ("all", "small", "medium", "large")


@dataclass(frozen=True, eq=False)
class ImageMatches:
    """COCO bbox match records of one run (one set of results) on one set of images.

    Shapes: ``I`` images, ``K`` categories, ``A`` area ranges (all, small, medium, large),
    ``T`` IoU thresholds (.50:.05:.95), ``R`` recall points (0:.01:1), ``N`` detection
    records (a detection appears once per area range, so ``N`` is about ``A`` times the
    number of kept detections).

    Attributes:
        image_ids: ``[I]`` int64, sorted (pycocotools' ``params.imgIds``).
        category_ids: ``[K]`` int64, sorted (pycocotools' ``params.catIds``).
        iou_thresholds: ``[T]`` float64.
        recall_thresholds: ``[R]`` float64.
        area_ranges: ``[A, 2]`` float64 ``(min, max)`` areas; labels :data:`AREA_LABELS`.
        max_dets: the detections kept per image and category (the best by score): 100.
        num_gt: ``[K, A, I]`` int64, non-ignored GT per category, area range and image
            (``gtIgnore == 0``: not crowd, area inside the range).
        offsets: ``[K * A + 1]`` int64; the records of (category ``k``, area ``a``) are
            ``offsets[k * A + a] : offsets[k * A + a + 1]``.
        image_index: ``[N]`` int64, index into ``image_ids`` of each record's image.
        scores: ``[N]`` float64; within a (k, a) block in ``accumulate``'s order: descending
            score, equal scores in image order (position in ``image_ids``), then in the order
            pycocotools ranks one image's detections (a stable sort on -score of the results
            in input order).
        matched: ``[T, N]`` bool, ``dtMatches != 0`` (matched to a GT, crowd or not).
        ignored: ``[T, N]`` bool, ``dtIgnore`` (matched to an ignored GT, or unmatched and
            outside the area range).
    """

    image_ids: np.ndarray
    category_ids: np.ndarray
    iou_thresholds: np.ndarray
    recall_thresholds: np.ndarray
    area_ranges: np.ndarray
    max_dets: int
    num_gt: np.ndarray
    offsets: np.ndarray
    image_index: np.ndarray
    scores: np.ndarray
    matched: np.ndarray
    ignored: np.ndarray
    # Derived arrays of detmine.evaluation.weighted_ap, built once per run on first use.
    _cache: dict[Any, Any] = field(default_factory=dict, init=False, repr=False)

    def __repr__(self) -> str:
        return (
            f"ImageMatches(images={self.num_images}, categories={self.num_categories}, "
            f"records={len(self.scores)})"
        )

    def __getstate__(self) -> dict[str, Any]:
        # a pickled copy (e.g. sent to a worker process) leaves the derived arrays behind
        return {**self.__dict__, "_cache": {}}

    @property
    def num_images(self) -> int:
        return int(self.image_ids.shape[0])

    @property
    def num_categories(self) -> int:
        return int(self.category_ids.shape[0])

    @property
    def num_areas(self) -> int:
        return int(self.area_ranges.shape[0])

    def block(self, k: int, a: int) -> slice:
        """The records of category index ``k`` and area index ``a`` (a slice of ``[N]``)."""
        i = k * self.num_areas + a
        return slice(int(self.offsets[i]), int(self.offsets[i + 1]))

    _ARRAYS: ClassVar[tuple[str, ...]] = (
        "image_ids",
        "category_ids",
        "iou_thresholds",
        "recall_thresholds",
        "area_ranges",
        "num_gt",
        "offsets",
        "image_index",
        "scores",
        "matched",
        "ignored",
    )

    def save(self, path: str | Path) -> None:
        """Write to an ``.npz`` file (uncompressed numpy arrays)."""
        np.savez(Path(path), max_dets=np.int64(self.max_dets), **{k: getattr(self, k) for k in self._ARRAYS})

    @classmethod
    def load(cls, path: str | Path) -> ImageMatches:
        """Read what :meth:`save` wrote."""
        with np.load(Path(path)) as data:
            arrays = {k: np.asarray(data[k]) for k in cls._ARRAYS}
            return cls(max_dets=int(data["max_dets"]), **arrays)


def image_matches(gt: dict, results: list[dict]) -> ImageMatches:
    """Run pycocotools' ``COCOeval.evaluate()`` (bbox, default params) once and keep the match
    records ``accumulate`` needs.

    Args:
        gt: COCO ground truth ``{"images", "annotations", "categories"}`` (passed through
            :func:`detmine.evaluation.coco_eval.prepare_gt`: annotation ids 1..N, so a GT id
            is never 0, which pycocotools would read as "unmatched").
        results: COCO results ``{"image_id", "category_id", "bbox" xywh, "score"}``; not
            modified. Results of categories not in ``gt`` are ignored, as COCOeval does.

    Returns:
        The :class:`ImageMatches` of these results on all images of ``gt``.

    Raises:
        DataError: a result names an image that is not in ``gt``.
    """
    gt = prepare_gt(gt)
    known = {img["id"] for img in gt["images"]}
    unknown = {r["image_id"] for r in results} - known
    if unknown:
        raise DataError(f"COCO results name image ids {sorted(unknown)[:5]} that are not in the ground truth")
    coco_eval = pycocotools_eval(gt, [dict(r) for r in results])  # copies: loadRes annotates them
    with contextlib.redirect_stdout(io.StringIO()):
        coco_eval.evaluate()
    return _from_eval_imgs(coco_eval)


def _from_eval_imgs(coco_eval: Any) -> ImageMatches:
    """Pack ``coco_eval.evalImgs`` (catId-major, then area range, then image) into arrays."""
    p = coco_eval.params
    image_ids = np.asarray(p.imgIds, dtype=np.int64)
    category_ids = np.asarray(p.catIds, dtype=np.int64)
    iou_thresholds = np.asarray(p.iouThrs, dtype=np.float64)
    num_i, num_k, num_a, num_t = len(image_ids), len(category_ids), len(p.areaRng), len(iou_thresholds)
    max_det = int(p.maxDets[-1])
    num_gt = np.zeros((num_k, num_a, num_i), dtype=np.int64)
    offsets = np.zeros(num_k * num_a + 1, dtype=np.int64)
    image_index: list[np.ndarray] = []
    scores: list[np.ndarray] = []
    matched: list[np.ndarray] = []
    ignored: list[np.ndarray] = []
    evals = coco_eval.evalImgs
    for k in range(num_k):
        for a in range(num_a):
            base = (k * num_a + a) * num_i
            blk_img, blk_score, blk_match, blk_ignore = [], [], [], []
            for i in range(num_i):
                e = evals[base + i]
                if e is None:
                    continue
                num_gt[k, a, i] = int(np.count_nonzero(np.asarray(e["gtIgnore"]) == 0))
                d = len(e["dtScores"][:max_det])
                if d == 0:
                    continue
                blk_img.append(np.full(d, i, dtype=np.int64))
                blk_score.append(np.asarray(e["dtScores"][:max_det], dtype=np.float64))
                blk_match.append(np.asarray(e["dtMatches"])[:, :max_det] != 0)
                blk_ignore.append(np.asarray(e["dtIgnore"])[:, :max_det].astype(bool))
            if blk_score:
                s = np.concatenate(blk_score)
                # accumulate's ranking: a stable sort of the image-ordered concatenation.
                order = np.argsort(-s, kind="mergesort")
                image_index.append(np.concatenate(blk_img)[order])
                scores.append(s[order])
                matched.append(np.concatenate(blk_match, axis=1)[:, order])
                ignored.append(np.concatenate(blk_ignore, axis=1)[:, order])
            offsets[k * num_a + a + 1] = offsets[k * num_a + a] + sum(len(x) for x in blk_score)
    return ImageMatches(
        image_ids=image_ids,
        category_ids=category_ids,
        iou_thresholds=iou_thresholds,
        recall_thresholds=np.asarray(p.recThrs, dtype=np.float64),
        area_ranges=np.asarray(p.areaRng, dtype=np.float64),
        max_dets=max_det,
        num_gt=num_gt,
        offsets=offsets,
        image_index=np.concatenate(image_index) if image_index else np.zeros(0, dtype=np.int64),
        scores=np.concatenate(scores) if scores else np.zeros(0, dtype=np.float64),
        matched=np.concatenate(matched, axis=1) if matched else np.zeros((num_t, 0), dtype=bool),
        ignored=np.concatenate(ignored, axis=1) if ignored else np.zeros((num_t, 0), dtype=bool),
    )
