"""A hard-negative pool as training samples: background-only images (whole, or crops around
the mined boxes) appended to the training set.

:class:`PoolDataset` turns each :class:`~detmine.data.hard_negatives.PoolEntry` into a sample
with no boxes, so the matcher makes every anchor on it background and every miner sees it as
negatives through the unchanged miner signature. :class:`WithHardNegatives` is the training
set followed by the pool (indices ``N .. N + P - 1``), what the training sampler mixes at the
configured ratio (:class:`~detmine.data.samplers.TrainingBatchSampler`).
"""

from __future__ import annotations

import math
from typing import Any

import numpy as np
import torch
from torch.utils.data import ConcatDataset, Dataset

from detmine.data._common import (
    _NOT_FOUND,
    ImageRecord,
    RecordDataset,
    SkippedSample,
    Transform,
    as_boxes,
    as_labels,
    read_rgb,
)
from detmine.data.hard_negatives import HardNegativePool, PoolEntry
from detmine.structures import Target

Window = tuple[int, int, int, int]


def _span(lo: float, hi: float, grow: float, minimum: int, limit: int) -> tuple[int, int]:
    """An integer interval around ``[lo, hi]`` grown by ``grow * (hi - lo)`` on each side, at
    least ``minimum`` long (or ``limit`` when shorter), shifted to lie inside ``[0, limit]``."""
    extent = hi - lo
    length = min(limit, max(minimum, math.ceil(extent * (1.0 + 2.0 * grow))))
    start = math.floor((lo + hi) / 2.0 - length / 2.0)
    start = min(max(start, 0), limit - length)
    return start, start + length


def crop_window(
    box: tuple[float, float, float, float], width: int, height: int, *, context: float, min_size: int
) -> Window:
    """The crop ``(x0, y0, x1, y1)`` (integer pixels) around ``box`` in a ``width`` x ``height``
    image: the box grown by ``context`` times its width / height on each side, each side at
    least ``min_size`` (the image's side when that is smaller), kept inside the image by
    shifting (not clipping), so its size does not depend on where the box lies."""
    x0, x1 = _span(box[0], box[2], context, min_size, width)
    y0, y1 = _span(box[1], box[3], context, min_size, height)
    return x0, y0, x1, y1


class PoolDataset(RecordDataset):
    """The entries of a pool as background-only samples.

    ``pool[j] -> (image uint8 [3, H, W], Target)`` with empty ``boxes`` / ``labels`` /
    ``ignore_boxes``, ``image_id = -(j + 1)`` (never a dataset's id) and ``orig_size`` the
    image's, or the crop's with ``crop``; the ``transform`` is the training one. A missing or
    undecodable image, or one whose size is no longer the pool's, is a
    :class:`~detmine.data._common.SkippedSample` (``on_bad_image="skip"``) counted by the
    loader like any other. ``image_size(j)`` / ``image_labels(j)`` (empty) read no image.

    Args:
        pool: the pool (:func:`~detmine.data.hard_negatives.read_pool`).
        transform: the training transform.
        crop: a crop around each mined box (:func:`crop_window`) instead of the whole image.
        crop_context, crop_min_size: the crop's geometry.
    """

    def __init__(
        self,
        pool: HardNegativePool,
        *,
        transform: Transform | None,
        on_bad_image: str = "skip",
        crop: bool = False,
        crop_context: float = 0.5,
        crop_min_size: int = 64,
    ) -> None:
        super().__init__(transform=transform, on_bad_image=on_bad_image)
        self.class_names = list(pool.class_names)
        self.crop = crop
        self.records = [self._record(j, e, crop_context, crop_min_size) for j, e in enumerate(pool.entries)]
        self._finish_init("the hard-negative pool")

    def _record(self, j: int, entry: PoolEntry, context: float, min_size: int) -> ImageRecord:
        window = (0, 0, entry.width, entry.height)
        if self.crop:
            window = crop_window(entry.box, entry.width, entry.height, context=context, min_size=min_size)
        return ImageRecord(
            path=entry.path,
            image_id=-(j + 1),
            height=window[3] - window[1],
            width=window[2] - window[0],
            boxes=as_boxes([]),
            labels=as_labels([]),
            ignore_boxes=as_boxes([]),
            extra={"window": window, "image_size": (entry.height, entry.width)},
        )

    def __getitem__(self, i: int) -> tuple[torch.Tensor, Target] | SkippedSample:
        rec = self.records[i]
        image, reason = read_rgb(rec.path)
        if image is None:
            return self._bad_image(i, rec.path, reason, "missing" if reason == _NOT_FOUND else "unreadable")
        expected = rec.extra["image_size"]
        if image.shape[:2] != expected:
            return self._bad_image(
                i,
                rec.path,
                f"decoded size {image.shape[0]}x{image.shape[1]} differs from the pool's {expected[0]}x{expected[1]}",
                "size mismatch",
            )
        x0, y0, x1, y1 = rec.extra["window"]
        image = np.ascontiguousarray(image[y0:y1, x0:x1])
        empty = as_boxes([])
        if self.transform is not None:
            image = self.transform(image=image, boxes=empty, labels=as_labels([]), ignore_boxes=empty)[
                "image"
            ]
        target: Target = {
            "boxes": torch.zeros((0, 4), dtype=torch.float32),
            "labels": torch.zeros(0, dtype=torch.int64),
            "ignore_boxes": torch.zeros((0, 4), dtype=torch.float32),
            "image_id": rec.image_id,
            "orig_size": (rec.height, rec.width),
            "input_size": (int(image.shape[0]), int(image.shape[1])),
        }
        return torch.from_numpy(np.ascontiguousarray(image)).permute(2, 0, 1).contiguous(), target


class WithHardNegatives(ConcatDataset):
    """The training set (indices ``0 .. N - 1``) followed by a pool (``N .. N + P - 1``).

    Everything else (``class_names``, ``coco_gt_dict``, ``transform`` ...) is the training
    set's, so hooks and tools see the training set; ``image_size`` / ``image_labels`` answer
    for both parts without decoding. ``num_images`` is ``N``, ``pool_size`` is ``P``.
    """

    def __init__(self, train_set: Dataset, pool: PoolDataset) -> None:
        super().__init__([train_set, pool])
        self.num_images = len(train_set)  # type: ignore[arg-type]
        self.pool_size = len(pool)

    def __getattr__(self, name: str) -> Any:
        if name.startswith("_") or name in ("datasets", "cumulative_sizes", "num_images", "pool_size"):
            raise AttributeError(name)
        return getattr(self.datasets[0], name)

    def _part(self, i: int) -> tuple[Any, int]:
        return (self.datasets[0], i) if i < self.num_images else (self.datasets[1], i - self.num_images)

    def image_size(self, i: int) -> tuple[int, int]:
        part, j = self._part(i)
        return part.image_size(j)

    def image_labels(self, i: int) -> set[int]:
        part, j = self._part(i)
        return part.image_labels(j)
