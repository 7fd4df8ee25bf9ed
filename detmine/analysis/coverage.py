"""How well the anchors cover the objects, and the anchor labels per image, from one matching
pass (:class:`~detmine.analysis.anchor_counts.AnchorMatches`).

Box sizes follow COCO's area ranges: small ``area < 32^2``, medium ``32^2 <= area < 96^2``,
large ``area >= 96^2``, with ``area = w * h`` of the box. (pycocotools' evaluation reads the
annotation's ``area`` field -- the mask area on COCO instances -- and counts a value exactly on
a boundary in both neighbouring ranges; here every box is in exactly one.)
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

from detmine.analysis.anchor_counts import AnchorMatches

#: COCO's object sizes: ``(name, lowest area, area bound)``; an area is in a range when
#: ``lowest <= area < bound``.
SIZE_RANGES: tuple[tuple[str, float, float], ...] = (
    ("small", 0.0, 32.0**2),
    ("medium", 32.0**2, 96.0**2),
    ("large", 96.0**2, float("inf")),
)
SIZE_NAMES: tuple[str, ...] = tuple(name for name, _, _ in SIZE_RANGES)
#: finer bins of the box side ``sqrt(w * h)`` at the network input, in pixels: where the
#: smallest anchors stop seeing objects.
SIDE_EDGES: tuple[float, ...] = (8.0, 16.0, 32.0, 64.0, 128.0, 256.0, 512.0)


def size_index(area: np.ndarray) -> np.ndarray:
    """int64 ``[N]``: ``0`` small, ``1`` medium, ``2`` large for box areas ``[N]`` (pixels^2)."""
    bounds = np.array([bound for _, _, bound in SIZE_RANGES[:-1]])
    return np.searchsorted(bounds, np.asarray(area, np.float64), side="right").astype(np.int64)


@dataclass(frozen=True)
class CoverageRow:
    """How the anchors cover one group of boxes (all, a size range, a class).

    Attributes:
        name: the group.
        boxes: boxes in it.
        below_fg: boxes whose best anchor IoU is below the matcher's foreground threshold (a
            positive only through a low-quality / forced match, if at all).
        unmatched: boxes the matcher gives no positive anchor.
        unmatched_overlapping: of those, boxes that do overlap an anchor (best IoU > 0): their
            low-quality / forced anchor went to another box.
        median_best_iou: the median best anchor IoU (NaN for an empty group or without IoUs).
        mean_positives: positive anchors per box.
    """

    name: str
    boxes: int
    below_fg: int
    unmatched: int
    unmatched_overlapping: int
    median_best_iou: float
    mean_positives: float

    @property
    def below_fg_share(self) -> float:
        return self.below_fg / self.boxes if self.boxes else 0.0

    @property
    def unmatched_share(self) -> float:
        return self.unmatched / self.boxes if self.boxes else 0.0


def coverage_row(matches: AnchorMatches, name: str, mask: np.ndarray | None = None) -> CoverageRow:
    """:class:`CoverageRow` of the boxes selected by the bool ``mask [N]`` (all when None)."""
    select = np.ones(matches.num_boxes, bool) if mask is None else np.asarray(mask, bool)
    best = matches.best_iou[select]
    positives = matches.box_positives[select]
    unmatched = positives == 0
    return CoverageRow(
        name=name,
        boxes=int(select.sum()),
        below_fg=int((best < matches.fg_iou_thresh).sum()),
        unmatched=int(unmatched.sum()),
        unmatched_overlapping=int((unmatched & (best > 0)).sum()),
        median_best_iou=float(np.median(best)) if best.size and not np.isnan(best).all() else float("nan"),
        mean_positives=float(positives.mean()) if positives.size else 0.0,
    )


def coverage_by_size(matches: AnchorMatches, *, at_input: bool = False) -> list[CoverageRow]:
    """``all`` then one row per COCO size range, the sizes at the original resolution (what
    COCO's AP_small / medium / large bins) or, ``at_input``, at the network input."""
    sizes = size_index(matches.box_input_area if at_input else matches.box_area)
    rows = [coverage_row(matches, "all")]
    return rows + [coverage_row(matches, name, sizes == k) for k, name in enumerate(SIZE_NAMES)]


def coverage_by_class(matches: AnchorMatches, class_names: Sequence[str]) -> list[CoverageRow]:
    """One row per class (class ``k`` is ``class_names[k - 1]``)."""
    return [coverage_row(matches, name, matches.box_label == k + 1) for k, name in enumerate(class_names)]


def side_names(edges: Sequence[float] = SIDE_EDGES) -> list[str]:
    """``["< 8 px", "8-16 px", ..., ">= 512 px"]`` for the bin ``edges``."""
    inner = [f"{lo:g}-{hi:g} px" for lo, hi in zip(edges[:-1], edges[1:], strict=True)]
    return [f"< {edges[0]:g} px", *inner, f">= {edges[-1]:g} px"]


def coverage_by_side(matches: AnchorMatches, edges: Sequence[float] = SIDE_EDGES) -> list[CoverageRow]:
    """One row per bin of the box side ``sqrt(w * h)`` at the network input (empty bins left
    out): the anchors' smallest scale shows here."""
    bins = np.searchsorted(np.asarray(edges), np.sqrt(matches.box_input_area), side="right")
    names = side_names(edges)
    return [coverage_row(matches, names[k], bins == k) for k in range(len(names)) if (bins == k).any()]


def size_counts(area: np.ndarray) -> list[int]:
    """Boxes per COCO size range (small, medium, large) of the areas ``[N]``."""
    return [int(v) for v in np.bincount(size_index(area), minlength=len(SIZE_RANGES))]


@dataclass(frozen=True)
class AnchorLabelStats:
    """Anchor labels per image over a split.

    Attributes:
        positives / negatives / ignored: ``(mean, median, max)`` per image.
        total_positives / total_negatives / total_ignored: over the split.
        images_without_positives: images with at least one object but no positive anchor.
    """

    positives: tuple[float, float, int]
    negatives: tuple[float, float, int]
    ignored: tuple[float, float, int]
    total_positives: int
    total_negatives: int
    total_ignored: int
    images_without_positives: int

    @property
    def negative_positive_ratio(self) -> float:
        """Background anchors per positive one (inf without positives)."""
        return self.total_negatives / self.total_positives if self.total_positives else float("inf")


def _spread(values: np.ndarray) -> tuple[float, float, int]:
    if values.size == 0:
        return 0.0, 0.0, 0
    return float(values.mean()), float(np.median(values)), int(values.max())


def anchor_label_stats(matches: AnchorMatches) -> AnchorLabelStats:
    """:class:`AnchorLabelStats` of the split."""
    has_objects = np.bincount(matches.box_image, minlength=matches.num_images) > 0
    return AnchorLabelStats(
        positives=_spread(matches.positives),
        negatives=_spread(matches.negatives),
        ignored=_spread(matches.ignored),
        total_positives=int(matches.positives.sum()),
        total_negatives=int(matches.negatives.sum()),
        total_ignored=int(matches.ignored.sum()),
        images_without_positives=int((has_objects & (matches.positives == 0)).sum()),
    )
