"""What the run's matcher makes of the annotations: background and positive anchors per class.

Counted at the evaluation geometry (the deterministic resize the recipe evaluates with: the
training geometry without its random steps), each image padded to the model's
``size_divisible`` on its own, from the annotation records (no image is decoded). Training
batches see randomly augmented, batch-padded images, so these counts are the expected shares
of the geometry, not a replay of training.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
from torch import Tensor

from detmine import console
from detmine.analysis.class_counts import count_classes
from detmine.matching import Matcher, pad_targets

AnchorsFn = Callable[[tuple[int, int]], Tensor]


class EvalGeometry:
    """The network-input size of an image of a given annotated size, read off the evaluation
    transform itself (run once per distinct size on a blank image), so it follows whatever the
    recipe's evaluation resize does.

    Args:
        transform: the evaluation transform (``DetectionTransform``: ``transform(image=...,
            boxes=..., labels=..., ignore_boxes=...)``), deterministic.
    """

    def __init__(self, transform: Callable[..., dict[str, Any]]) -> None:
        self.transform = transform
        self._sizes: dict[tuple[int, int], tuple[int, int]] = {}

    def input_size(self, height: int, width: int) -> tuple[int, int]:
        """``(H, W)`` the network sees for an annotated ``height x width`` image."""
        key = (int(height), int(width))
        if key not in self._sizes:
            out = self.transform(
                image=np.zeros((*key, 3), np.uint8),
                boxes=np.zeros((0, 4), np.float32),
                labels=np.zeros((0,), np.int64),
                ignore_boxes=np.zeros((0, 4), np.float32),
            )
            self._sizes[key] = (int(out["image"].shape[0]), int(out["image"].shape[1]))
        return self._sizes[key]


@dataclass(frozen=True)
class AnchorCounts:
    """Anchor labels the matcher gives over a split (class ``k`` at index ``k``).

    Attributes:
        labels: ``K + 1`` counts: ``[0]`` background anchors, ``[k]`` anchors matched to class
            ``k``; ignored anchors (the matcher's band and ignore regions) are not counted.
        ignored: the ignored anchors.
        num_images: images counted.
    """

    labels: list[int]
    ignored: int
    num_images: int


def _padded(size: tuple[int, int], divisible: int) -> tuple[int, int]:
    return tuple(-(-s // divisible) * divisible for s in size)  # type: ignore[return-value]


def count_anchor_labels(
    dataset: Any,
    *,
    anchors_for: AnchorsFn,
    matcher: Matcher,
    geometry: EvalGeometry,
    size_divisible: int = 1,
    progress: bool = False,
) -> AnchorCounts:
    """Match every image's annotations to the anchors of its padded evaluation-size input.

    Args:
        dataset: a detmine dataset with annotation ``records`` (boxes in original pixels).
        anchors_for: ``(H, W) -> anchors [A, 4]`` of a padded input (``DenseDetector.anchors_for``).
        matcher: the run's matcher.
        geometry: the evaluation geometry (:class:`EvalGeometry`).
        size_divisible: inputs are padded up to multiples of this (the model's).
        progress: print progress lines.
    """
    num_classes = len(count_classes(dataset).instances)  # validates the labels once
    totals = np.zeros(num_classes + 1, dtype=np.int64)
    ignored = 0
    anchors_cache: dict[tuple[int, int], Tensor] = {}
    records = dataset.records
    for rec in console.progress(records, "anchor counts", unit="img", enabled=progress):
        height, width = geometry.input_size(rec.height, rec.width)
        scale = np.array([width / rec.width, height / rec.height] * 2, dtype=np.float32)
        size = _padded((height, width), size_divisible)
        if size not in anchors_cache:
            anchors_cache[size] = anchors_for(size)
        target = {
            "boxes": torch.from_numpy(rec.boxes.reshape(-1, 4) * scale),
            "labels": torch.from_numpy(rec.labels.reshape(-1)),
            "ignore_boxes": torch.from_numpy(rec.ignore_boxes.reshape(-1, 4) * scale),
        }
        labels = matcher(anchors_cache[size], pad_targets([target])).labels[0]  # type: ignore[list-item]
        ignored += int((labels < 0).sum())
        totals += np.bincount(labels[labels >= 0].numpy(), minlength=num_classes + 1)[: num_classes + 1]
    return AnchorCounts(labels=[int(v) for v in totals], ignored=ignored, num_images=len(records))
