"""What the run's matcher makes of the annotations: background and positive anchors per class,
and per ground-truth box its best anchor IoU and the positive anchors it got.

Counted at the evaluation geometry (the deterministic resize the recipe evaluates with: the
training geometry without its random steps), each image padded to the model's
``size_divisible`` on its own, from the annotation records (no image is decoded). Training
batches see randomly augmented, batch-padded images, so these counts are the expected shares
of the geometry, not a replay of training.

One matching pass (:func:`match_annotations`) serves both the class priors
(:func:`count_anchor_labels`, the training-set facts) and the data report
(``tools/analyze_data.py``). Images of the same padded size share their anchors, so they are
matched together, a batch at a time, sorted by their number of boxes so that a crowded image
pads only its neighbours in count.
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
from detmine.errors import DataError
from detmine.matching import Matcher, PaddedTargets, batched_box_iou

AnchorsFn = Callable[[tuple[int, int]], Tensor]

#: At most this many ``anchors x images x boxes`` IoU entries per matched batch (float32: 64 MiB;
#: the matcher holds a few tensors of this size at once).
BATCH_ELEMENTS = 1 << 24
#: At most this many images per matched batch.
MAX_BATCH_IMAGES = 64


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


@dataclass(frozen=True)
class AnchorMatches:
    """What the matcher makes of every annotated box and image of a split (:func:`match_annotations`).

    Per box, ``N`` = the split's objects (ignore regions excluded), image by image in record
    order and in each image in annotation order:

    Attributes:
        box_image: int64 ``[N]``: the index of the box's image in the split.
        box_label: int64 ``[N]``: its class ``1..K``.
        box_area: float64 ``[N]``: ``w * h`` in original pixels.
        box_input_area: float64 ``[N]``: ``w * h`` at the network input.
        best_iou: float32 ``[N]``: its highest IoU with any anchor (the matcher's IoU, bit for
            bit); NaN when the pass was asked not to compute it.
        box_positives: int64 ``[N]``: the anchors the matcher made positive for this box (0 when
            it has none: no anchor reaches the foreground threshold and no low-quality / forced
            match landed on it).
        positives: int64 ``[I]``: positive anchors per image (``I`` = the split's images).
        negatives: int64 ``[I]``: background anchors per image.
        ignored: int64 ``[I]``: ignored anchors per image (the matcher's band, ignore regions).
        input_size: int64 ``[I, 2]``: ``(H, W)`` of each image at the network input (before padding).
        labels: ``K + 1`` anchor counts over the split, as :attr:`AnchorCounts.labels`.
        fg_iou_thresh: the matcher's foreground threshold.
        bg_iou_thresh: its background threshold.
    """

    box_image: np.ndarray
    box_label: np.ndarray
    box_area: np.ndarray
    box_input_area: np.ndarray
    best_iou: np.ndarray
    box_positives: np.ndarray
    positives: np.ndarray
    negatives: np.ndarray
    ignored: np.ndarray
    input_size: np.ndarray
    labels: list[int]
    fg_iou_thresh: float
    bg_iou_thresh: float

    @property
    def num_images(self) -> int:
        return int(self.positives.shape[0])

    @property
    def num_boxes(self) -> int:
        return int(self.box_label.shape[0])

    def counts(self) -> AnchorCounts:
        """The split's :class:`AnchorCounts`."""
        return AnchorCounts(
            labels=list(self.labels), ignored=int(self.ignored.sum()), num_images=self.num_images
        )


def _batches(members: list[int], widths: np.ndarray, num_anchors: int) -> list[list[int]]:
    """Split the images ``members`` (of one padded size) into batches of similar ``widths``
    (boxes or ignore regions per image: what a batch is padded to), each within
    :data:`BATCH_ELEMENTS` IoU entries and :data:`MAX_BATCH_IMAGES` images."""
    batches: list[list[int]] = []
    for i in sorted(members, key=lambda i: int(widths[i])):  # stable: record order within a width
        width = max(int(widths[i]), 1)  # the batch's largest so far: sorted ascending
        fits = batches and (len(batches[-1]) + 1) * width * num_anchors <= BATCH_ELEMENTS
        if fits and len(batches[-1]) < MAX_BATCH_IMAGES:
            batches[-1].append(i)
        else:
            batches.append([i])
    return batches


@dataclass(frozen=True)
class _Ragged:
    """Rows of all images concatenated: image ``i`` owns ``values[offsets[i]:offsets[i + 1]]``."""

    values: np.ndarray  # [N, ...]
    counts: np.ndarray  # int64 [I]
    offsets: np.ndarray  # int64 [I + 1]

    @classmethod
    def of(cls, parts: list[np.ndarray], trailing: tuple[int, ...], dtype: Any) -> _Ragged:
        counts = np.array([len(p) for p in parts], dtype=np.int64)
        values = (
            np.concatenate(parts).astype(dtype, copy=False)
            if counts.sum()
            else np.zeros((0, *trailing), dtype)
        )
        return cls(values, counts, np.concatenate([[0], np.cumsum(counts)]))

    def padded(self, batch: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """``(values [B, W, ...] zero-padded, valid [B, W], rows [B, W] into values)`` of the
        images ``batch``, ``W`` their largest count (valid rows first, as ``pad_targets``)."""
        counts = self.counts[batch]
        column = np.arange(int(counts.max(initial=0)))
        valid = column < counts[:, None]
        rows = np.where(valid, self.offsets[batch][:, None] + column, 0)
        values = self.values[rows] if len(self.values) else np.zeros((*rows.shape, *self.values.shape[1:]))
        mask = valid.reshape(*valid.shape, *(1,) * (values.ndim - 2))
        return np.where(mask, values, 0).astype(self.values.dtype), valid, rows


def _check_boxes(boxes: np.ndarray, owner: np.ndarray, records: Any, what: str) -> None:
    """:class:`DataError` for the first non-finite or inverted ``xyxy`` box (one vectorised test)."""
    bad = ~np.isfinite(boxes).all(1) | (boxes[:, 2] < boxes[:, 0]) | (boxes[:, 3] < boxes[:, 1])
    if bad.any():
        j = int(np.flatnonzero(bad)[0])
        rec = records[int(owner[j])]
        raise DataError(
            f"image {rec.image_id} ({rec.path}): {what} {boxes[j].tolist()} is not a finite xyxy box "
            "with x2 >= x1 and y2 >= y1"
        )


def match_annotations(
    dataset: Any,
    *,
    anchors_for: AnchorsFn,
    matcher: Matcher,
    geometry: EvalGeometry,
    size_divisible: int = 1,
    best_iou: bool = True,
    device: torch.device | str = "cpu",
    progress: bool = False,
) -> AnchorMatches:
    """Match every image's annotations to the anchors of its padded evaluation-size input:
    the one pass behind :func:`count_anchor_labels` and the data report.

    Args:
        dataset: a detmine dataset with annotation ``records`` (boxes in original pixels).
        anchors_for: ``(H, W) -> anchors [A, 4]`` of a padded input (``DenseDetector.anchors_for``).
        matcher: the run's matcher.
        geometry: the evaluation geometry (:class:`EvalGeometry`).
        size_divisible: inputs are padded up to multiples of this (the model's).
        best_iou: also compute each box's best anchor IoU (one more IoU per batch; without it
            :attr:`AnchorMatches.best_iou` is NaN).
        device: where the matching runs (the IoUs dominate; a GPU takes them in its stride).
        progress: a progress bar (or lines, off a terminal).

    Raises:
        DataError: a label outside ``1..K``, a non-finite or inverted box, or a dataset
            without annotation records.
    """
    num_classes = len(count_classes(dataset).instances)  # validates the labels once
    records = dataset.records
    num_images = len(records)
    boxes = _Ragged.of([r.boxes.reshape(-1, 4) for r in records], (4,), np.float32)
    labels = _Ragged.of([r.labels.reshape(-1) for r in records], (), np.int64)
    ignore = _Ragged.of([r.ignore_boxes.reshape(-1, 4) for r in records], (4,), np.float32)
    box_image = np.repeat(np.arange(num_images, dtype=np.int64), boxes.counts)
    _check_boxes(boxes.values, box_image, records, "box")
    _check_boxes(ignore.values, np.repeat(np.arange(num_images), ignore.counts), records, "ignore box")

    input_size = np.array([geometry.input_size(r.height, r.width) for r in records], np.int64).reshape(-1, 2)
    original = np.array([(r.height, r.width) for r in records], np.int64).reshape(-1, 2)
    # (sx, sy, sx, sy) per image, as float32 like the transform's boxes
    scale = np.tile((input_size / original)[:, ::-1], 2).astype(np.float32)
    input_boxes = _Ragged(boxes.values * scale[box_image], boxes.counts, boxes.offsets)
    input_ignore = _Ragged(
        ignore.values * np.repeat(scale, ignore.counts, axis=0), ignore.counts, ignore.offsets
    )
    area = (boxes.values[:, 2] - boxes.values[:, 0]).astype(np.float64) * (
        boxes.values[:, 3] - boxes.values[:, 1]
    )

    out: dict[str, np.ndarray] = {
        "best_iou": np.full(len(box_image), np.nan, np.float32),
        "box_positives": np.zeros(len(box_image), np.int64),
        "positives": np.zeros(num_images, np.int64),
        "negatives": np.zeros(num_images, np.int64),
        "ignored": np.zeros(num_images, np.int64),
    }
    totals = torch.zeros(num_classes + 1, dtype=torch.int64)
    by_size: dict[tuple[int, int], list[int]] = {}
    for i, (height, width) in enumerate(input_size.tolist()):
        by_size.setdefault(_padded((height, width), size_divisible), []).append(i)
    widths = np.maximum(boxes.counts, ignore.counts)
    bar = console.Progress(num_images, "anchor matching", unit="img", enabled=progress)
    try:
        for size, members in by_size.items():
            anchors = anchors_for(size).to(device)
            for batch in _batches(members, widths, int(anchors.shape[0])):
                index = np.asarray(batch, dtype=np.int64)
                gt_boxes, valid, rows = input_boxes.padded(index)
                gt_ignore, ignore_valid, _ = input_ignore.padded(index)
                gt = PaddedTargets(
                    *(
                        torch.from_numpy(a).to(device)
                        for a in (gt_boxes, labels.padded(index)[0], valid, gt_ignore, ignore_valid)
                    )
                )
                totals += _match_batch(anchors, gt, matcher, index, rows[valid], out, best_iou, num_classes)
                bar.update(len(batch))
    finally:
        bar.close()
    return AnchorMatches(
        box_image=box_image,
        box_label=labels.values,
        box_area=area,
        box_input_area=area * (scale[box_image, 0].astype(np.float64) * scale[box_image, 1]),
        input_size=input_size,
        **out,
        labels=[int(v) for v in totals],
        fg_iou_thresh=matcher.fg_iou_thresh,
        bg_iou_thresh=matcher.bg_iou_thresh,
    )


def _match_batch(
    anchors: Tensor,
    gt: PaddedTargets,
    matcher: Matcher,
    index: np.ndarray,
    box_rows: np.ndarray,
    out: dict[str, np.ndarray],
    best_iou: bool,
    num_classes: int,
) -> Tensor:
    """Match the images ``index`` (one padded size: ``anchors [A, 4]``, ``gt`` padded to
    ``[B, G]``) and fill their entries of ``out`` (``box_rows``: the split's rows of the valid
    ``[B, G]`` entries, row-major); returns their ``[K + 1]`` anchor label counts."""
    match = matcher(anchors, gt)
    labels = match.labels  # [B, A]
    num_images, num_gt = gt.valid.shape
    # one bincount for every count: column 0 ignored, 1 background, 1 + k class k, per image
    width = num_classes + 2
    flat = (labels + 1).add_(torch.arange(num_images, device=labels.device).unsqueeze(1) * width)
    per_image = torch.bincount(flat.view(-1), minlength=num_images * width).view(num_images, width).cpu()
    out["ignored"][index] = per_image[:, 0].numpy()
    out["negatives"][index] = per_image[:, 1].numpy()
    out["positives"][index] = per_image[:, 2:].sum(1).numpy()
    if num_gt:
        image, anchor = (labels > 0).nonzero(as_tuple=True)
        per_box = torch.bincount(
            image * num_gt + match.matched_gt[image, anchor], minlength=num_images * num_gt
        )
        out["box_positives"][box_rows] = per_box.view(num_images, num_gt)[gt.valid].cpu().numpy()
        if best_iou:
            best = batched_box_iou(gt.boxes, anchors).amax(dim=-1)  # [B, G]
            out["best_iou"][box_rows] = best[gt.valid].cpu().numpy()
    return per_image[:, 1:].sum(0)


def count_anchor_labels(
    dataset: Any,
    *,
    anchors_for: AnchorsFn,
    matcher: Matcher,
    geometry: EvalGeometry,
    size_divisible: int = 1,
    progress: bool = False,
) -> AnchorCounts:
    """Match every image's annotations to the anchors of its padded evaluation-size input and
    count the anchor labels (:func:`match_annotations` without the per-box IoU).

    Args:
        dataset: a detmine dataset with annotation ``records`` (boxes in original pixels).
        anchors_for: ``(H, W) -> anchors [A, 4]`` of a padded input (``DenseDetector.anchors_for``).
        matcher: the run's matcher.
        geometry: the evaluation geometry (:class:`EvalGeometry`).
        size_divisible: inputs are padded up to multiples of this (the model's).
        progress: print progress lines.
    """
    return match_annotations(
        dataset,
        anchors_for=anchors_for,
        matcher=matcher,
        geometry=geometry,
        size_divisible=size_divisible,
        best_iou=False,
        progress=progress,
    ).counts()
