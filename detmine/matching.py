"""Anchor-to-ground-truth matching, batched over the images of a batch.

Ground truth is padded to ``[B, G, 4]`` with a validity mask and compared with
the anchors (shared by every image) in one IoU computation of shape
``[A, B, G]`` -- no Python loop over images (images are split into at most three
groups of similar box counts so that one crowded image does not pad all the
others). The IoU is bit-for-bit ``torchvision.ops.box_iou`` (same operations in
the same order), so the matcher's decisions equal torchvision's ``Matcher`` /
``SSDMatcher`` image by image, ties included.

Rules, in order (``q`` = best IoU of an anchor over the image's GT boxes):

1. ``q >= fg_iou_thresh`` -> positive (label of the best GT);
   ``bg_iou_thresh <= q < fg_iou_thresh`` -> ignore (-1); ``q < bg_iou_thresh``
   -> background (0).
2. ``allow_low_quality``: for every GT, the anchors with the highest IoU with it
   (all of them on ties) become positive, matched to *their own* best GT
   (torchvision's ``set_low_quality_matches_``).
3. ``force_best_match`` (SSD): every GT's best anchor (first on ties) is matched
   to that GT, the later GT winning when two share an anchor
   (torchvision's ``SSDMatcher``).
4. Ignore regions (COCO ``iscrowd``, VOC ``difficult``): a non-positive anchor
   whose intersection with an ignore region covers at least
   ``ignore_iof_thresh`` of the anchor's own area becomes ignore (-1).

One deliberate difference from torchvision: steps 2 and 3 skip a GT whose best
IoU is 0 (a box outside the image or smaller than any overlap). torchvision
would then tie that GT with *every* anchor (low-quality) or force anchor 0
(SSD); here such a box simply matches nothing.
"""

from __future__ import annotations

import functools
from dataclasses import dataclass
from typing import Any

import torch
from torch import Tensor

from detmine.components import ComponentTable, check_names
from detmine.errors import DataError, OptionError
from detmine.structures import Target, head_defaults


@dataclass
class MatchResult:
    """Output of :class:`Matcher`.

    Attributes:
        labels: ``[B, A]`` int64: ``-1`` ignore, ``0`` background, ``1..K`` class.
        matched_gt: ``[B, A]`` int64 index into the image's (padded) GT boxes of
            the matched box; meaningful where ``labels > 0``.
    """

    labels: Tensor
    matched_gt: Tensor


@dataclass
class PaddedTargets:
    """Ground truth of a batch padded to a common number of boxes.

    Build it with :func:`pad_targets`: the matcher relies on the valid rows of each
    image coming first and on padding rows being all-zero boxes (IoU exactly 0).

    Attributes:
        boxes: ``[B, G, 4]`` float xyxy (padding rows are zeros).
        labels: ``[B, G]`` int64 (padding 0).
        valid: ``[B, G]`` bool, False on padding rows.
        ignore_boxes: ``[B, M, 4]`` float xyxy ignore regions (padding zeros).
        ignore_valid: ``[B, M]`` bool.
    """

    boxes: Tensor
    labels: Tensor
    valid: Tensor
    ignore_boxes: Tensor
    ignore_valid: Tensor


def _pad(
    tensors: list[Tensor], trailing: tuple[int, ...], dtype: torch.dtype, device
) -> tuple[Tensor, Tensor]:
    n = max((int(t.shape[0]) for t in tensors), default=0)
    out = torch.zeros((len(tensors), n, *trailing), dtype=dtype, device=device)
    valid = torch.zeros((len(tensors), n), dtype=torch.bool, device=device)
    for i, t in enumerate(tensors):
        k = int(t.shape[0])
        if k:
            out[i, :k] = t.to(device=device, dtype=dtype)
            valid[i, :k] = True
    return out, valid


def _check_boxes(boxes: Tensor, valid: Tensor, what: str) -> None:
    """One vectorised check (one host sync) for non-finite or inverted boxes."""
    if boxes.numel() == 0:
        return
    bad = (
        ~torch.isfinite(boxes).all(-1) | (boxes[..., 2] < boxes[..., 0]) | (boxes[..., 3] < boxes[..., 1])
    ) & valid
    if bool(bad.any()):
        b, g = (int(v) for v in bad.nonzero()[0])
        raise DataError(
            f"target {b}: {what} {g} = {boxes[b, g].tolist()} is not a finite xyxy box with x2 >= x1 and y2 >= y1"
        )


def pad_targets(targets: list[Target], device: torch.device | str | None = None) -> PaddedTargets:
    """Stack a list of :class:`~detmine.structures.Target` into padded tensors.

    Raises:
        DataError: a box or ignore region is non-finite or has ``x2 < x1`` / ``y2 < y1``.
    """
    empty = torch.zeros((0, 4))
    boxes, valid = _pad([t["boxes"].reshape(-1, 4) for t in targets], (4,), torch.float32, device)
    labels, _ = _pad([t["labels"].reshape(-1) for t in targets], (), torch.int64, device)
    ign = [t.get("ignore_boxes", empty) for t in targets]
    ignore_boxes, ignore_valid = _pad(
        [(empty if i is None else i).reshape(-1, 4) for i in ign], (4,), torch.float32, device
    )
    _check_boxes(boxes, valid, "box")
    _check_boxes(ignore_boxes, ignore_valid, "ignore box")
    return PaddedTargets(boxes, labels, valid, ignore_boxes, ignore_valid)


@dataclass
class AnchorIntervals:
    """The anchors' distinct x and y extents, so overlaps are computed once per extent.

    Grid anchors repeat the same ``(x1, x2)`` along a column and ``(y1, y2)`` along
    a row (SSD300: 334 distinct of 8732; RetinaNet 640: 1395 of 76725), so the
    1-D overlaps cost ``[B, G, U]`` and only their product is ``[B, G, A]``.

    Attributes:
        x: ``[2, Ux]`` distinct ``(x1, x2)``; ``x_index``: ``[A]`` column of each anchor.
        y: ``[2, Uy]`` distinct ``(y1, y2)``; ``y_index``: ``[A]``.
    """

    x: Tensor
    x_index: Tensor
    y: Tensor
    y_index: Tensor

    @classmethod
    def of(cls, anchors: Tensor) -> AnchorIntervals:
        parts = []
        for cols in ((0, 2), (1, 3)):
            # (lo, hi) float32 pairs as one int64 key: exact, and a 1-D unique is fast
            pairs = anchors[:, cols].to(torch.float32).contiguous()
            keys, index = torch.unique(pairs.view(torch.int64).squeeze(-1), return_inverse=True)
            parts += [keys.unsqueeze(-1).view(torch.float32).t().contiguous(), index]
        return cls(*parts)


def _overlap_1d(lo: Tensor, hi: Tensor, extents: Tensor) -> Tensor:
    """``[U, B, G]`` 1-D overlap of box extents ``lo, hi [B, G]`` with ``extents [2, U]``."""
    e_lo, e_hi = extents[0].view(-1, 1, 1), extents[1].view(-1, 1, 1)
    return torch.minimum(hi, e_hi).sub_(torch.maximum(lo, e_lo)).clamp_(min=0)


class _BoxOverlaps:
    """The overlaps of ``boxes [B, G, 4]`` with the anchors, evaluated per distinct anchor
    extent and expanded to rows of anchors on demand.

    Same arithmetic as ``torchvision.ops.box_iou`` (``clamp(min(x2) - max(x1), 0)`` times the
    same in y, then ``inter / (area_a + area_b - inter)``), hence bit-identical. Anchors are the
    outer dimension so that the gathers copy contiguous ``B * G`` rows and the reductions over
    ``G`` run on the inner one.
    """

    def __init__(self, boxes: Tensor, anchors: Tensor, intervals: AnchorIntervals) -> None:
        x1, y1, x2, y2 = (c.contiguous() for c in boxes.unbind(-1))  # [B, G]
        self.w = _overlap_1d(x1, x2, intervals.x)  # [Ux, B, G]
        self.h = _overlap_1d(y1, y2, intervals.y)  # [Uy, B, G]
        self.intervals = intervals
        self.box_area = _area(boxes)  # [B, G]
        self.anchors = anchors

    def intersection(self, start: int = 0, stop: int | None = None) -> Tensor:
        """``[a, B, G]`` intersection areas of anchors ``start:stop`` with the boxes."""
        inter = self.w.index_select(0, self.intervals.x_index[start:stop])
        return inter.mul_(self.h.index_select(0, self.intervals.y_index[start:stop]))

    def iou(self, start: int = 0, stop: int | None = None) -> Tensor:
        """``[a, B, G]`` IoU of anchors ``start:stop`` with the boxes."""
        inter = self.intersection(start, stop)
        union = torch.add(self.box_area, _area(self.anchors[start:stop]).view(-1, 1, 1)).sub_(inter)
        return inter.div_(union)


def _area(boxes: Tensor) -> Tensor:
    return (boxes[..., 2] - boxes[..., 0]) * (boxes[..., 3] - boxes[..., 1])


def batched_box_iou(boxes: Tensor, anchors: Tensor) -> Tensor:
    """``torchvision.ops.box_iou`` of each image's boxes with shared anchors.

    Args:
        boxes: ``[B, G, 4]`` xyxy.
        anchors: ``[A, 4]`` xyxy.

    Returns:
        ``[B, G, A]`` IoU (a permuted view), equal to ``box_iou(boxes[b], anchors)``
        for every ``b`` (same operations in the same order, so bit-identical).
    """
    return _BoxOverlaps(boxes, anchors, AnchorIntervals.of(anchors)).iou().permute(1, 2, 0)


#: IoU elements per chunk of anchors (``chunk x B x G`` float32 = 1 MiB): the chunk's
#: intersection, union and IoU stay in the L2 cache while they are reduced.
_IOU_CHUNK_ELEMENTS = 1 << 18
_MIN_CHUNK_ANCHORS = 128


@dataclass
class ReducedIoU:
    """What matching needs of the ``[A, B, G]`` IoU, without keeping it.

    Attributes:
        best_iou: ``[B, A]`` each anchor's best IoU over the image's boxes.
        best_gt: ``[B, A]`` int64, the box giving it (the first on ties).
        best_per_gt: ``[B, G]`` each box's best IoU over the anchors (0 for padding).
        first_best_anchor: ``[B, G]`` int64, the first anchor reaching it.
        ties: ``(image, anchor)`` int64 ``[T]`` each: every anchor reaching some valid
            overlapping box's best IoU (torchvision's low-quality matches), when asked for.
    """

    best_iou: Tensor
    best_gt: Tensor
    best_per_gt: Tensor
    first_best_anchor: Tensor
    ties: tuple[Tensor, Tensor] | None


def _reduce_iou(
    boxes: Tensor, valid: Tensor, anchors: Tensor, intervals: AnchorIntervals, ties: bool
) -> ReducedIoU:
    """The reductions of the ``[A, B, G]`` IoU (:class:`_BoxOverlaps`) that matching uses, one cache-sized chunk of anchors
    at a time (bit-identical: the same element-wise IoU, reduced in anchor order).

    Materialising the whole ``[A, B, G]`` IoU (SSD300 x 32 images x 20 boxes: 22 MB) and
    reducing it twice costs five or six passes through memory; a chunk is computed and
    reduced while it is in cache. ``ties`` (low-quality matches) needs each box's best IoU
    over *all* anchors first, so it recomputes the chunks in a second pass.

    Args:
        boxes: ``[B, G, 4]`` padded xyxy boxes (padding rows are zero boxes: IoU 0).
        valid: ``[B, G]`` bool, False on padding rows.
        anchors: ``[A, 4]`` float32 xyxy.
    """
    num_images, num_gt = boxes.shape[:2]
    num_anchors = anchors.shape[0]
    device = anchors.device
    overlaps = _BoxOverlaps(boxes, anchors, intervals)
    # at least _MIN_CHUNK_ANCHORS rows: with many boxes a cache-sized chunk would be a few
    # anchors, and the per-chunk operations would cost more than the memory traffic saved
    chunk = max(_MIN_CHUNK_ANCHORS, _IOU_CHUNK_ELEMENTS // max(1, num_images * num_gt))
    spans = [(a, min(a + chunk, num_anchors)) for a in range(0, num_anchors, chunk)]
    dtype = torch.promote_types(boxes.dtype, anchors.dtype)
    best_iou = torch.empty((num_anchors, num_images), dtype=dtype, device=device)
    best_gt = torch.empty((num_anchors, num_images), dtype=torch.int64, device=device)
    best_per_gt = torch.full((num_images, num_gt), -1.0, dtype=dtype, device=device)
    first_best = torch.zeros((num_images, num_gt), dtype=torch.int64, device=device)
    for start, stop in spans:
        iou = overlaps.iou(start, stop)  # [a, B, G]
        torch.max(iou, dim=2, out=(best_iou[start:stop], best_gt[start:stop]))
        value, index = iou.max(dim=0)  # [B, G]; the chunk's first maximal anchor
        better = value > best_per_gt  # strictly: an earlier chunk keeps its anchor on ties
        best_per_gt = torch.where(better, value, best_per_gt)
        first_best = torch.where(better, index + start, first_best)
    tie_index = None
    if ties:
        # GTs without any overlap (and padding) are excluded by comparing with 2 > any IoU
        target = torch.where(valid & (best_per_gt > 0), best_per_gt, 2.0)
        found_b, found_a = [], []
        for start, stop in spans:
            tie_a, tie_b, _ = (overlaps.iou(start, stop) == target).nonzero(as_tuple=True)
            found_b.append(tie_b)
            found_a.append(tie_a + start)
        tie_index = (torch.cat(found_b), torch.cat(found_a))
    return ReducedIoU(best_iou.t().contiguous(), best_gt.t().contiguous(), best_per_gt, first_best, tie_index)


def _padding_groups(counts: list[int], max_groups: int = 3) -> list[tuple[list[int], int]]:
    """Split the images with ground truth into at most ``max_groups`` groups of similar
    box counts, each padded only to its own largest count: ``[(image indices, width)]``.

    One crowded image would otherwise pad the IoU matrix of every image to its size
    (COCO: 7 boxes per image on average, 50+ in some). A new group starts when the
    count falls to half of the current group's largest; images without boxes need no
    IoU at all. A loop over <= 3 groups, not over images.
    """
    order = sorted((i for i, c in enumerate(counts) if c > 0), key=lambda i: -counts[i])
    groups: list[tuple[list[int], int]] = []
    for i in order:
        if groups and (counts[i] * 2 > groups[-1][1] or len(groups) == max_groups):
            groups[-1][0].append(i)
        else:
            groups.append(([i], counts[i]))
    return groups


class Matcher:
    """IoU matcher with an ignore band, low-quality / forced matches and ignore regions.

    Args:
        fg_iou_thresh: IoU at or above which an anchor is positive.
        bg_iou_thresh: IoU below which an anchor is background; anchors in
            ``[bg_iou_thresh, fg_iou_thresh)`` are ignored (-1).
        allow_low_quality: each GT also keeps its best anchor(s), ties included
            (torchvision ``Matcher(allow_low_quality_matches=True)``).
        force_best_match: each GT's single best anchor is matched to it (SSD).
        ignore_iof_thresh: fraction of an anchor's area inside an ignore region
            at which a non-positive anchor becomes ignore.
    """

    def __init__(
        self,
        *,
        fg_iou_thresh: float,
        bg_iou_thresh: float,
        allow_low_quality: bool = False,
        force_best_match: bool = False,
        ignore_iof_thresh: float = 0.5,
    ) -> None:
        if not 0.0 <= bg_iou_thresh <= fg_iou_thresh <= 1.0:
            raise OptionError(
                "bg_iou_thresh",
                f"must lie in [0, fg_iou_thresh] with fg_iou_thresh <= 1, "
                f"got bg_iou_thresh={bg_iou_thresh}, fg_iou_thresh={fg_iou_thresh}",
            )
        self.fg_iou_thresh = float(fg_iou_thresh)
        self.bg_iou_thresh = float(bg_iou_thresh)
        self.allow_low_quality = bool(allow_low_quality)
        self.force_best_match = bool(force_best_match)
        self.ignore_iof_thresh = float(ignore_iof_thresh)
        self._cache: tuple[Tensor, AnchorIntervals] | None = None

    @classmethod
    def ssd(cls, **overrides: Any) -> Matcher:
        """SSD: 0.5 / 0.5 (no ignore band) plus each GT's forced best anchor (:func:`ssd_matcher`)."""
        return ssd_matcher(**overrides)

    @classmethod
    def retinanet(cls, **overrides: Any) -> Matcher:
        """RetinaNet: 0.5 / 0.4 with low-quality matches (:func:`retinanet_matcher`)."""
        return retinanet_matcher(**overrides)

    def __repr__(self) -> str:
        return (
            f"Matcher(fg_iou_thresh={self.fg_iou_thresh}, bg_iou_thresh={self.bg_iou_thresh}, "
            f"allow_low_quality={self.allow_low_quality}, force_best_match={self.force_best_match}, "
            f"ignore_iof_thresh={self.ignore_iof_thresh})"
        )

    def match_targets(self, anchors: Tensor, targets: list[Target]) -> MatchResult:
        """Pad ``targets`` (see :func:`pad_targets`) and match them to ``anchors [A, 4]``."""
        return self(anchors, pad_targets(targets, device=anchors.device))

    def __call__(self, anchors: Tensor, gt: PaddedTargets) -> MatchResult:
        """Match padded ground truth to anchors.

        Args:
            anchors: ``[A, 4]`` xyxy, shared by all images.
            gt: padded boxes ``[B, G, 4]``, labels ``[B, G]``, ignore regions ``[B, M, 4]``.

        Returns:
            :class:`MatchResult` with ``labels`` and ``matched_gt`` of shape ``[B, A]``.
        """
        anchors = anchors.to(torch.float32)
        num_images, num_gt = gt.valid.shape
        num_anchors = anchors.shape[0]
        device = anchors.device
        labels = torch.zeros((num_images, num_anchors), dtype=torch.int64, device=device)
        matched = torch.zeros_like(labels)
        if num_gt > 0:
            groups = _padding_groups(gt.valid.sum(1).tolist())
            if len(groups) == 1 and len(groups[0][0]) == num_images:
                labels, matched = self._match_boxes(anchors, gt)
            else:
                for images, width in groups:
                    index = torch.tensor(images, device=device)
                    sub = PaddedTargets(
                        gt.boxes[index, :width],
                        gt.labels[index, :width],
                        gt.valid[index, :width],
                        gt.ignore_boxes[index],
                        gt.ignore_valid[index],
                    )
                    labels[index], matched[index] = self._match_boxes(anchors, sub)
        if gt.ignore_boxes.shape[1] > 0:
            self._apply_ignore_regions(anchors, gt, labels)
        return MatchResult(labels=labels, matched_gt=matched)

    def _intervals(self, anchors: Tensor) -> AnchorIntervals:
        """Anchor intervals, cached while the same anchors come back (the usual case)."""
        cached = self._cache
        if cached is not None and cached[0].shape == anchors.shape and cached[0].device == anchors.device:
            if torch.equal(cached[0], anchors):
                return cached[1]
        intervals = AnchorIntervals.of(anchors)
        self._cache = (anchors.clone(), intervals)
        return intervals

    def _match_boxes(self, anchors: Tensor, gt: PaddedTargets) -> tuple[Tensor, Tensor]:
        num_images, num_gt = gt.valid.shape
        num_anchors = anchors.shape[0]
        reduced = _reduce_iou(gt.boxes, gt.valid, anchors, self._intervals(anchors), self.allow_low_quality)
        best_iou, matched = reduced.best_iou, reduced.best_gt  # [B, A]; first GT on ties
        positive = best_iou >= self.fg_iou_thresh
        ignore = (best_iou >= self.bg_iou_thresh) & ~positive
        if self.allow_low_quality:
            assert reduced.ties is not None
            tie_b, tie_a = reduced.ties
            positive[tie_b, tie_a] = True
        if self.force_best_match:
            # each GT's first best anchor (torchvision's max(dim=1): max returns the first
            # maximal index), then the last GT wins on a shared anchor, like torchvision's
            # indexed assignment; a GT without any overlap (or padding) forces nothing
            has_best = (gt.valid & (reduced.best_per_gt > 0)).view(-1)
            best_anchor = reduced.first_best_anchor.view(-1)
            gt_index = torch.arange(num_gt, device=anchors.device).repeat(num_images)
            forced = torch.full((num_images, num_anchors + 1), -1, dtype=torch.int64, device=anchors.device)
            forced.view(-1).scatter_reduce_(
                0,
                torch.arange(num_images, device=anchors.device).repeat_interleave(num_gt) * (num_anchors + 1)
                + best_anchor,
                torch.where(has_best, gt_index, -1),
                reduce="amax",
            )
            forced = forced[:, :num_anchors]
            is_forced = forced >= 0
            matched = torch.where(is_forced, forced, matched)
            positive |= is_forced
        labels = torch.where(positive, gt.labels.gather(1, matched), 0)
        labels.masked_fill_(ignore & ~positive, -1)
        return labels, matched

    def _apply_ignore_regions(self, anchors: Tensor, gt: PaddedTargets, labels: Tensor) -> None:
        inter = _BoxOverlaps(gt.ignore_boxes, anchors, self._intervals(anchors)).intersection()  # [A, B, M]
        area_a = _area(anchors).clamp(min=1e-6)
        iof = inter.amax(dim=2).t() / area_a  # [B, A]; padding rows (zero boxes) have inter 0
        labels.masked_fill_((iof >= self.ignore_iof_thresh) & (labels <= 0), -1)


#: the built-in presets: :class:`Matcher` with the preset's values as the defaults of its
#: keyword options (so a preset's signature is the schema of the ``matching.*`` overrides).
ssd_matcher = functools.partial(
    Matcher, fg_iou_thresh=0.5, bg_iou_thresh=0.5, allow_low_quality=False, force_best_match=True
)
retinanet_matcher = functools.partial(
    Matcher, fg_iou_thresh=0.5, bg_iou_thresh=0.4, allow_low_quality=True, force_best_match=False
)


#: name -> preset builder (``matching.preset``); a preset's keyword signature is the schema of
#: the other ``matching.*`` keys (overrides of its values).
MATCHER_PRESETS = ComponentTable("matcher preset", {"ssd": ssd_matcher, "retinanet": retinanet_matcher})


def build_matcher(preset: str | None = None, *, cls_activation: str = "softmax", **overrides: Any) -> Matcher:
    """The :data:`MATCHER_PRESETS` entry ``preset`` with keyword ``overrides`` of its options.

    Args:
        preset: ``"ssd"`` (0.5 / 0.5 + each GT's forced best anchor) or ``"retinanet"``
            (0.5 / 0.4 + low-quality matches), or a registered preset; ``None``: the head's
            default (:data:`~detmine.structures.HEAD_DEFAULTS`: ``ssd`` for softmax heads,
            ``retinanet`` for sigmoid ones).
        cls_activation: the head's activation, for the default preset.
        overrides: the preset's options (``fg_iou_thresh``, ``bg_iou_thresh``,
            ``allow_low_quality``, ``force_best_match``, ``ignore_iof_thresh`` for the built-in
            ones); ``None`` values are dropped (the preset's).

    Raises:
        ConfigError: unknown preset or option ("did you mean"), a wrong type, or inconsistent
            thresholds -- naming the ``matching.*`` key.
    """
    if preset is None:
        preset = head_defaults(cls_activation)["matching"]
    overrides = {k: v for k, v in overrides.items() if v is not None}
    check_names(
        overrides,
        ["preset", *MATCHER_PRESETS.get_entry_options(preset, name_key="matching.preset")],
        "matching",
    )
    return MATCHER_PRESETS.build(preset, overrides, key="matching", name_key="matching.preset")
