"""Printable tables for evaluation results: the 12-line COCO summary and per-class AP."""

from __future__ import annotations

import math

__all__ = ["COCO_STAT_NAMES", "format_coco_summary", "format_per_class_table", "format_voc_summary"]

# Order of COCOeval.stats (bbox): the names EvalResult.stats uses.
COCO_STAT_NAMES: tuple[str, ...] = (
    "AP",
    "AP50",
    "AP75",
    "APs",
    "APm",
    "APl",
    "AR1",
    "AR10",
    "AR100",
    "ARs",
    "ARm",
    "ARl",
)

# (title, iou, area, maxDets) of each line, as pycocotools prints them.
_COCO_LINES: tuple[tuple[str, str, str, int], ...] = (
    ("Average Precision  (AP)", "0.50:0.95", "all", 100),
    ("Average Precision  (AP)", "0.50", "all", 100),
    ("Average Precision  (AP)", "0.75", "all", 100),
    ("Average Precision  (AP)", "0.50:0.95", "small", 100),
    ("Average Precision  (AP)", "0.50:0.95", "medium", 100),
    ("Average Precision  (AP)", "0.50:0.95", "large", 100),
    ("Average Recall     (AR)", "0.50:0.95", "all", 1),
    ("Average Recall     (AR)", "0.50:0.95", "all", 10),
    ("Average Recall     (AR)", "0.50:0.95", "all", 100),
    ("Average Recall     (AR)", "0.50:0.95", "small", 100),
    ("Average Recall     (AR)", "0.50:0.95", "medium", 100),
    ("Average Recall     (AR)", "0.50:0.95", "large", 100),
)


def format_coco_summary(stats: dict[str, float]) -> str:
    """The standard COCO summary (same layout as ``COCOeval.summarize()``); -1 = no GT in range."""
    lines = []
    for name, (title, iou, area, max_dets) in zip(COCO_STAT_NAMES, _COCO_LINES, strict=True):
        lines.append(
            f" {title} @[ IoU={iou:<9} | area={area:>6s} | maxDets={max_dets:>3d} ] = {stats[name]:0.3f}"
        )
    return "\n".join(lines)


def format_voc_summary(stats: dict[str, float]) -> str:
    """Two lines with the VOC mAPs, or an empty string when they were not computed."""
    lines = []
    if "VOC07_mAP" in stats:
        lines.append(f" VOC07 11-point mAP @[ IoU=0.50 ] = {stats['VOC07_mAP']:0.3f}")
    if "VOC_mAP" in stats:
        lines.append(f" VOC area mAP       @[ IoU=0.50 ] = {stats['VOC_mAP']:0.3f}")
    return "\n".join(lines)


def _fmt(value: float) -> str:
    return "  n/a" if math.isnan(value) else f"{100.0 * value:5.1f}"


def format_per_class_table(columns: dict[str, dict[str, float]], num_pairs: int = 3) -> str:
    """A per-class table in percent, ``num_pairs`` (class, value...) groups per row.

    Args:
        columns: column title -> (class name -> value in 0..1, NaN = class has no GT).
            All columns must have the same class names in the same order.
        num_pairs: how many classes to put side by side in one row.
    """
    titles = list(columns)
    if not titles:
        return ""
    names = list(columns[titles[0]])
    if not names:
        return ""
    width = max(5, max(len(n) for n in names))
    col_w = max(5, max(len(t) for t in titles))
    cell = f"{'class':<{width}} " + " ".join(f"{t:>{col_w}}" for t in titles)
    header = " | ".join([cell] * min(num_pairs, len(names)))
    rows = [header, "-" * len(header)]
    for start in range(0, len(names), num_pairs):
        cells = []
        for name in names[start : start + num_pairs]:
            values = " ".join(f"{_fmt(columns[t][name]):>{col_w}}" for t in titles)
            cells.append(f"{name:<{width}} {values}")
        rows.append(" | ".join(cells))
    return "\n".join(rows)
