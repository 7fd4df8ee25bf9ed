"""The picture of what a miner chose on one image: boxes beside a heat map of the loss.

Layout (``[H', W']`` the image upscaled for readability)::

    +----------------------+---+----------------------+ ...
    | boxes panel [H', W'] |gap| heat panel [H', W']  |  (one heat panel per level with
    |                      |   |                      |   ``heat_mode="levels"``)
    +----------------------+---+----------------------+ ...
    | legend: the caption, then a key per colour (and the heat map's colour ramp)   |
    +--------------------------------------------------------------------------------+

The boxes panel: ignored anchors (thin, half-transparent grey), ignore regions (magenta),
positive anchors (blue), mined negatives coloured by loss rank (dark red -> pale yellow, the
``label_top`` hardest labelled ``#rank loss``), ground truth (green, thickest, labelled with the
class name). Every box is drawn before any label, and labels are placed so they never overlap
(:class:`detmine.viz.labels.LabelPlacer`; ground-truth labels first). The heat panel: the
mined negatives' loss per location (:mod:`detmine.viz.heatmap`) over a grey copy of the image,
with the ground truth outlined, so one sees whether the loss sits on object edges, on
distractors or on background.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Literal

import numpy as np

from detmine.viz.colors import (
    GT_COLOR,
    IGNORE_REGION_COLOR,
    IGNORED_COLOR,
    LEGEND_BG,
    POSITIVE_COLOR,
    RGB,
    negative_rank_colors,
)
from detmine.viz.draw import (
    LegendEntry,
    as_boxes,
    check_image,
    draw_boxes,
    font_scale,
    legend_panel,
    line_thickness,
    place_and_draw_labels,
    upscale,
)
from detmine.viz.heatmap import DEFAULT_CMAP, LevelMap, colour_ramp, heat_maps, normalise, overlay
from detmine.viz.labels import LabelPlacer, Rect

HeatMode = Literal["merged", "levels", "off"]
PANEL_GAP = 6


@dataclass
class MiningPicture:
    """A drawn mining picture and where its labels went.

    Attributes:
        image: ``[H, W, 3]`` uint8 RGB, the whole picture (panels and legend).
        label_rects: every label, level title and legend item, in picture pixels; no two
            intersect.
        skipped_labels: labels left out for want of a free spot.
        panels: ``name -> Rect`` of each panel (``"boxes"``, ``"heat"`` or ``"heat/<l>"``).
    """

    image: np.ndarray
    label_rects: list[Rect] = field(default_factory=list)
    skipped_labels: int = 0
    panels: dict[str, Rect] = field(default_factory=dict)


def _class_names(gt_labels: Sequence[int] | None, n: int, class_names: Sequence[str] | None) -> list[str]:
    names = []
    for lab in gt_labels if gt_labels is not None else [0] * n:
        k = int(lab)
        names.append(class_names[k - 1] if class_names and 1 <= k <= len(class_names) else str(k))
    return names


def _boxes_panel(
    img: np.ndarray,
    boxes: dict[str, np.ndarray],
    gt_names: list[str],
    negative_losses: Sequence[float] | None,
    label_top: int,
) -> tuple[np.ndarray, LabelPlacer]:
    """The boxes drawn on ``img`` (already upscaled; boxes in its pixels), then the labels."""
    t = line_thickness(img.shape)
    gt, neg = boxes["gt"], boxes["neg"]
    img = draw_boxes(img, boxes["ignored"], IGNORED_COLOR, thickness=1, alpha=0.5)
    img = draw_boxes(img, boxes["regions"], IGNORE_REGION_COLOR, thickness=t)
    img = draw_boxes(img, boxes["pos"], POSITIVE_COLOR, thickness=t)
    colors = negative_rank_colors(len(neg))
    if len(neg):  # the easiest first so the hardest end up on top
        img = draw_boxes(img, neg[::-1], colors[::-1], thickness=t)
    img = draw_boxes(img, gt, GT_COLOR, thickness=t + 1)
    items: list[tuple[str, np.ndarray, RGB]] = [(n, b, GT_COLOR) for n, b in zip(gt_names, gt, strict=True)]
    if negative_losses is not None:
        for r in range(min(label_top, len(neg))):
            items.append((f"#{r + 1} {float(negative_losses[r]):.3g}", neg[r], colors[r]))
    placer = LabelPlacer(img.shape[1], img.shape[0])
    place_and_draw_labels(img, items, placer)
    return img, placer


def _heat_panels(
    img: np.ndarray,
    levels: Sequence[LevelMap],
    input_hw: tuple[int, int],
    gt: np.ndarray,
    mode: HeatMode,
    cmap: str,
) -> tuple[list[tuple[str, np.ndarray, LabelPlacer]], float]:
    """One heat panel (merged) or one per level, each the size of ``img``, and the peak loss per
    input pixel. Per-level panels share one colour scale (so a level that carries little loss
    looks cold) and are titled with the level's share of the loss."""
    maps = heat_maps(levels, input_hw, img.shape[:2], merge=mode == "merged")
    peak = max((float(m.max()) for m in maps if m.size), default=0.0)
    totals = [float(lv.sums.sum()) for lv in levels]
    out = []
    for i, heat in enumerate(maps):
        panel = overlay(img, normalise(heat, peak), cmap=cmap)
        panel = draw_boxes(panel, gt, GT_COLOR, thickness=1)
        placer = LabelPlacer(panel.shape[1], panel.shape[0])
        if mode == "levels":
            sx, _ = levels[i].stride()
            stride = "" if np.isnan(sx) else f" (stride {sx:g})"
            share = f": {100 * totals[i] / sum(totals):.0f}% of the loss" if sum(totals) > 0 else ""
            title = f"level {i}{stride}{share}"
            whole = np.array([0, 0, panel.shape[1] - 1, panel.shape[0] - 1], np.float32)
            place_and_draw_labels(panel, [(title, whole, LEGEND_BG)], placer)
        out.append(("heat" if mode == "merged" else f"heat/{i}", panel, placer))
    return out, peak


def draw_mining_picture(
    image: np.ndarray,
    *,
    gt_boxes: np.ndarray | None = None,
    gt_labels: Sequence[int] | None = None,
    positive_boxes: np.ndarray | None = None,
    negative_boxes: np.ndarray | None = None,
    negative_losses: Sequence[float] | None = None,
    ignored_boxes: np.ndarray | None = None,
    ignore_regions: np.ndarray | None = None,
    class_names: Sequence[str] | None = None,
    header: str | None = None,
    label_top: int = 3,
    min_side: int = 0,
    min_long_side: int = 0,
    heat: Sequence[LevelMap] | None = None,
    heat_mode: HeatMode = "merged",
    cmap: str = DEFAULT_CMAP,
) -> MiningPicture:
    """The picture of what a miner chose on one image (see the module docstring).

    Args:
        image: ``[H, W, 3]`` uint8 RGB (input pixels: the boxes' and the anchors' pixels).
        gt_boxes: ``[N, 4]``; gt_labels: ``N`` class ids ``1..K``.
        positive_boxes: ``[P, 4]`` anchors; negative_boxes: ``[Q, 4]`` anchors,
            hardest first; negative_losses: ``Q`` losses (for the labels).
        ignored_boxes: ``[I, 4]`` ignored anchors; ignore_regions: ``[M, 4]``.
        header: the caption, first in the legend.
        min_side, min_long_side: upscale small images first (shorter / longer side at least
            this) so lines and labels are drawn crisp at a readable size.
        heat: :func:`detmine.viz.heatmap.location_losses` of the image; ``None`` or
            ``heat_mode="off"``: no heat panel.
        heat_mode: ``"merged"`` (the levels summed into one panel) or ``"levels"``.
        cmap: the heat map's matplotlib colour map.

    Returns:
        A :class:`MiningPicture` of ``[H' + legend, W' * panels + gaps, 3]``.
    """
    src = check_image(image)
    img, f = upscale(src, min_side, min_long_side)
    boxes = {
        "gt": as_boxes(gt_boxes) * f,
        "pos": as_boxes(positive_boxes) * f,
        "neg": as_boxes(negative_boxes) * f,
        "ignored": as_boxes(ignored_boxes) * f,
        "regions": as_boxes(ignore_regions) * f,
    }
    gt_names = _class_names(gt_labels, len(boxes["gt"]), class_names)
    boxes_img, boxes_placer = _boxes_panel(img, boxes, gt_names, negative_losses, label_top)
    panels: list[tuple[str, np.ndarray, LabelPlacer]] = [("boxes", boxes_img, boxes_placer)]
    peak: float | None = None
    if heat is not None and heat_mode != "off":
        heat_panels, peak = _heat_panels(img, heat, src.shape[:2], boxes["gt"], heat_mode, cmap)
        panels += heat_panels

    h, w = img.shape[:2]
    width = len(panels) * w + (len(panels) - 1) * PANEL_GAP
    top = np.empty((h, width, 3), dtype=np.uint8)
    top[:] = LEGEND_BG
    rects: list[Rect] = []
    where: dict[str, Rect] = {}
    skipped = 0
    for i, (name, panel, placer) in enumerate(panels):
        x0 = i * (w + PANEL_GAP)
        top[:, x0 : x0 + w] = panel
        rects += [r.shifted(x0, 0) for r in placer.rects]
        where[name] = Rect(x0, 0, w, h)
        skipped += placer.skipped

    ramp = negative_rank_colors(max(len(boxes["neg"]), 2))
    entries: list[LegendEntry] = [
        ("ground truth", GT_COLOR),
        ("positive", POSITIVE_COLOR),
        ("hardest neg", ramp[0]),
        ("easiest shown", ramp[-1]),
        ("ignored", IGNORED_COLOR),
    ]
    if len(boxes["regions"]):
        entries.append(("ignore region", IGNORE_REGION_COLOR))
    if peak is not None:
        what = "levels merged" if heat_mode == "merged" else "per level"
        text = f"counted negatives' loss per input pixel ({what}): 0 -> {peak:.3g}"
        entries.append((text, colour_ramp(64, 8, cmap)))
    legend, legend_rects = legend_panel(width, entries, header, font_scale(img.shape))
    rects += [r.shifted(0, h) for r in legend_rects]
    return MiningPicture(np.concatenate([top, legend], axis=0), rects, skipped, where)


def draw_mining(image: np.ndarray, **kwargs: object) -> np.ndarray:
    """:func:`draw_mining_picture`'s image alone."""
    return draw_mining_picture(image, **kwargs).image  # type: ignore[arg-type]
