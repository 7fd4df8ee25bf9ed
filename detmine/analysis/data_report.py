"""The data report of a split (``tools/analyze_data.py``): the numbers of one matching pass,
the class counts, the miner's quota and optionally a checkpoint's real selection, as a
Markdown summary, pictures and scalars."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
from matplotlib.figure import Figure

from detmine.analysis import plots
from detmine.analysis.anchor_counts import AnchorMatches
from detmine.analysis.class_counts import ClassCounts
from detmine.analysis.coverage import (
    SIZE_NAMES,
    CoverageRow,
    anchor_label_stats,
    coverage_by_class,
    coverage_by_side,
    coverage_by_size,
    size_counts,
)
from detmine.analysis.mining_quota import MinerQuota
from detmine.analysis.mining_replay import MiningReplay


@dataclass(frozen=True)
class DataReport:
    """Everything the report shows.

    Attributes:
        title: what was analysed (the recipe and the split).
        command: the command line that made it.
        date: when (ISO 8601).
        cpu: the CPU model (``detmine.env.cpu_model``).
        classes: the split's class counts (:func:`~detmine.analysis.count_classes`).
        matches: the matching pass (:func:`~detmine.analysis.match_annotations`).
        matcher: the matcher (its repr).
        model: the detector whose anchors were matched (its name).
        quota: the miner's quota (None: no rule known for the configured miner).
        miner: the configured miner (its repr).
        seconds: wall time of the matching pass.
        replay: a checkpoint's real selection, or None.
        replay_source: the checkpoint (and images) of ``replay``.
    """

    title: str
    command: str
    date: str
    cpu: str
    classes: ClassCounts
    matches: AnchorMatches
    matcher: str
    model: str
    quota: MinerQuota | None
    miner: str
    seconds: float
    replay: MiningReplay | None = None
    replay_source: str = ""

    @property
    def seconds_per_10k(self) -> float:
        """The matching pass extrapolated to 10,000 images."""
        return self.seconds / max(1, self.matches.num_images) * 1e4


def _table(header: Sequence[str], rows: Sequence[Sequence[object]]) -> list[str]:
    lines = ["| " + " | ".join(header) + " |", "|" + "|".join("---" for _ in header) + "|"]
    return lines + ["| " + " | ".join(str(v) for v in row) + " |" for row in rows] + [""]


def _pct(part: float, whole: float) -> str:
    return f"{part / whole:.1%}" if whole else "-"


def _num(value: float, digits: int = 1) -> str:
    return f"{value:,.{digits}f}" if np.isfinite(value) else "-"


def _coverage_table(rows: Sequence[CoverageRow], fg: float, first: str) -> list[str]:
    header = [
        first,
        "boxes",
        "median best IoU",
        f"best IoU < {fg:g}",
        "no positive anchor",
        "of which overlapping",
        "positive anchors / box",
    ]
    return _table(
        header,
        [
            [
                r.name,
                r.boxes,
                _num(r.median_best_iou, 3),
                f"{r.below_fg} ({_pct(r.below_fg, r.boxes)})",
                f"{r.unmatched} ({_pct(r.unmatched, r.boxes)})",
                r.unmatched_overlapping,
                _num(r.mean_positives, 2),
            ]
            for r in rows
        ],
    )


def _classes_section(c: ClassCounts) -> list[str]:
    lines = ["## Images and classes", ""]
    lines += _table(
        ["images", "objects", "images without objects", "objects per image"],
        [
            [
                c.num_images,
                c.num_instances,
                f"{c.images_without_objects} ({_pct(c.images_without_objects, c.num_images)})",
                _num(c.num_instances / max(1, c.num_images), 2),
            ]
        ],
    )
    order = np.argsort(-np.asarray(c.instances), kind="stable")
    rows = [
        [c.class_names[k], c.instances[k], _pct(c.instances[k], c.num_instances), c.images[k]] for k in order
    ]
    lines += _table(["class", "objects", "share of objects", "images with the class"], rows)
    return lines + ["![long tail](class_long_tail.png)", ""]


def _sizes_section(m: AnchorMatches) -> list[str]:
    original, network = size_counts(m.box_area), size_counts(m.box_input_area)
    sizes, counts = np.unique(m.input_size, axis=0, return_counts=True)
    common = sizes[int(np.argmax(counts))] if len(sizes) else (0, 0)
    lines = [
        "## Object sizes",
        "",
        "COCO's ranges by box area `w x h`: small < 32^2 <= medium < 96^2 <= large.",
        f"Network input (evaluation geometry): {len(sizes)} distinct size(s), most often "
        f"{int(common[0])} x {int(common[1])} (H x W).",
        "",
    ]
    rows = [
        [name, original[k], _pct(original[k], m.num_boxes), network[k], _pct(network[k], m.num_boxes)]
        for k, name in enumerate(SIZE_NAMES)
    ]
    lines += _table(["size", "boxes (original)", "share", "boxes (network input)", "share"], rows)
    return lines + ["![box sizes](box_sizes.png)", ""]


def _coverage_section(r: DataReport) -> list[str]:
    m = r.matches
    fg = m.fg_iou_thresh
    anchors = m.positives + m.negatives + m.ignored
    lines = [
        "## Anchor coverage",
        "",
        f"Model `{r.model}`: {_num(float(anchors.mean()) if anchors.size else 0.0, 0)} anchors per image "
        f"(evaluation geometry). Matcher: `{r.matcher}`.",
        f"Per ground-truth box: its best IoU with any anchor, and the positive anchors the matcher gives "
        f"it. A box below {fg:g} is positive only through a low-quality / forced match; a box with no "
        'positive anchor teaches nothing ("of which overlapping": its best anchor went to another box).',
        "",
        "By size at the original resolution (COCO's AP_small / medium / large):",
        "",
    ]
    lines += _coverage_table(coverage_by_size(m), fg, "size (original)")
    lines += ["By size at the network input:", ""]
    lines += _coverage_table(coverage_by_size(m, at_input=True)[1:], fg, "size (input)")
    lines += ["By box side `sqrt(w x h)` at the network input:", ""]
    lines += _coverage_table(coverage_by_side(m), fg, "side (input)")
    lines += ["By class:", ""]
    lines += _coverage_table(coverage_by_class(m, r.classes.class_names), fg, "class")
    return lines + ["![anchor coverage](anchor_coverage.png)", "", "![by class](coverage_by_class.png)", ""]


def _labels_section(r: DataReport) -> list[str]:
    s = anchor_label_stats(r.matches)
    rows = [
        [name, _num(spread[0]), _num(spread[1]), spread[2], total]
        for name, spread, total in (
            ("positive", s.positives, s.total_positives),
            ("negative (background)", s.negatives, s.total_negatives),
            ("ignored", s.ignored, s.total_ignored),
        )
    ]
    lines = ["## Anchor labels per image", ""]
    lines += _table(["anchors", "mean / image", "median", "max", "total"], rows)
    lines += [
        f"Negative : positive = {_num(s.negative_positive_ratio)} : 1 over the split. "
        f"Images with objects but no positive anchor: {s.images_without_positives}.",
        "",
    ]
    return lines + ["![anchors per image](anchors_per_image.png)", ""]


def _quota_section(r: DataReport) -> list[str]:
    lines = ["## What the miner keeps (its quota rule)", "", f"Miner `{r.miner}`."]
    q = r.quota
    if q is None:
        return lines + [
            "No quota rule is known for this miner: run with `--checkpoint` for its real selection.",
            "",
        ]
    m = r.matches
    bound = "" if q.exact else " (at most)"
    lines += [f"Rule: {q.rule}." + ("" if q.exact else " The counts are upper bounds."), ""]
    total_pos, total_neg = int(q.positives.sum()), int(q.negatives.sum())
    rows = [
        [
            "positives" + bound,
            _num(float(q.positives.mean()) if q.positives.size else 0.0),
            total_pos,
            _pct(total_pos, int(m.positives.sum())),
        ],
        [
            "negatives" + bound,
            _num(float(q.negatives.mean()) if q.negatives.size else 0.0),
            total_neg,
            _pct(total_neg, int(m.negatives.sum())),
        ],
    ]
    lines += _table(["kept", "per image (mean)", "total", "share of the split's"], rows)
    return lines + [
        f"Kept negatives per kept positive: {_num(total_neg / total_pos if total_pos else float('inf'))}.",
        "",
    ]


def _replay_section(r: DataReport) -> list[str]:
    p = r.replay
    if p is None:
        return []
    rows = [
        [
            p.num_images,
            _num(float(p.selected_negatives.mean()) if p.num_images else 0.0),
            _num(float(np.median(p.selected_negatives)) if p.num_images else 0.0),
            _num(float(p.selected_positives.mean()) if p.num_images else 0.0),
            _num(float(p.negatives.mean()) if p.num_images else 0.0),
            f"{p.selected_loss_share:.1%}",
        ]
    ]
    lines = ["## The real selection", "", f"{r.replay_source}", ""]
    lines += _table(
        [
            "images",
            "selected negatives / image",
            "median",
            "selected positives / image",
            "negatives / image",
            "negatives' loss in the selected",
        ],
        rows,
    )
    return lines + ["![mining replay](mining_replay.png)", ""]


def summary_markdown(report: DataReport) -> str:
    """``summary.md``: the tables, the command, the date and the CPU, the pictures linked."""
    m = report.matches
    lines = [
        f"# Data analysis: {report.title}",
        "",
        f"`{report.command}`",
        "",
        f"{report.date} on {report.cpu}. No image decoded for the statistics: the annotations at the "
        "evaluation geometry.",
        "",
    ]
    lines += _classes_section(report.classes)
    lines += _sizes_section(m)
    lines += _coverage_section(report)
    lines += _labels_section(report)
    lines += _quota_section(report)
    lines += _replay_section(report)
    lines += [
        "## Timing",
        "",
        f"Matching pass: {report.seconds:.2f} s for {m.num_images} images "
        f"({1e3 * report.seconds / max(1, m.num_images):.2f} ms per image, "
        f"{report.seconds_per_10k:.1f} s per 10k images) on {report.cpu}.",
        "",
    ]
    return "\n".join(lines)


def headline(report: DataReport) -> list[str]:
    """The few lines the tool prints."""
    c, m = report.classes, report.matches
    by_size = coverage_by_size(m)
    s = anchor_label_stats(m)
    lines = [
        f"{report.title}: {c.num_images} images ({_pct(c.images_without_objects, c.num_images)} without objects), "
        f"{c.num_instances} objects in {len(c.class_names)} classes",
        "best anchor IoU < {:g}: {}".format(
            m.fg_iou_thresh, ", ".join(f"{r.name} {_pct(r.below_fg, r.boxes)}" for r in by_size)
        ),
        "no positive anchor: " + ", ".join(f"{r.name} {_pct(r.unmatched, r.boxes)}" for r in by_size),
        f"anchors per image: {_num(s.positives[0])} positive, {_num(s.negatives[0])} negative, "
        f"{_num(s.ignored[0])} ignored (negative:positive {_num(s.negative_positive_ratio)}:1)",
    ]
    if report.quota is not None:
        q = report.quota
        lines.append(
            f"miner keeps{'' if q.exact else ' at most'} {_num(float(q.negatives.mean()) if q.negatives.size else 0.0)} "
            "negatives per image"
        )
    if report.replay is not None:
        p = report.replay
        lines.append(
            f"checkpoint: {_num(float(p.selected_negatives.mean()) if p.num_images else 0.0)} selected negatives "
            f"per image carry {p.selected_loss_share:.1%} of the negatives' loss ({p.num_images} images)"
        )
    lines.append(
        f"matching: {report.seconds:.2f} s for {m.num_images} images = {report.seconds_per_10k:.1f} s per 10k images"
    )
    return lines


def report_figures(report: DataReport) -> dict[str, Figure]:
    """``{file name: figure}`` of the report's pictures."""
    m = report.matches
    figures = {
        "class_long_tail.png": plots.class_long_tail(report.classes),
        "box_sizes.png": plots.box_size_histogram(m),
        "anchor_coverage.png": plots.anchor_coverage(
            m, coverage_by_size(m), coverage_by_side(m), f"anchor coverage: {report.title}"
        ),
        "coverage_by_class.png": plots.coverage_by_class(
            coverage_by_class(m, report.classes.class_names), m.fg_iou_thresh
        ),
        "anchors_per_image.png": plots.anchors_per_image(m, report.quota),
    }
    if report.replay is not None:
        figures["mining_replay.png"] = plots.mining_replay(report.replay)
    return figures


def report_scalars(report: DataReport) -> dict[str, float]:
    """TensorBoard scalars: ``data/*``, ``coverage/*``, ``anchors/*``, ``quota/*``, ``replay/*``."""
    c, m = report.classes, report.matches
    s = anchor_label_stats(m)
    out = {
        "data/images": float(c.num_images),
        "data/objects": float(c.num_instances),
        "data/images_without_objects_share": c.images_without_objects / max(1, c.num_images),
        "anchors/positives_per_image": s.positives[0],
        "anchors/negatives_per_image": s.negatives[0],
        "anchors/ignored_per_image": s.ignored[0],
        "anchors/negative_positive_ratio": s.negative_positive_ratio,
        "timing/matching_seconds_per_10k_images": report.seconds_per_10k,
    }
    for k, name in enumerate(SIZE_NAMES):
        out[f"data/{name}_share"] = size_counts(m.box_area)[k] / max(1, m.num_boxes)
    for row in coverage_by_size(m):
        out[f"coverage/below_fg_share/{row.name}"] = row.below_fg_share
        out[f"coverage/unmatched_share/{row.name}"] = row.unmatched_share
    if report.quota is not None:
        out["quota/positives_per_image"] = float(report.quota.positives.mean()) if m.num_images else 0.0
        out["quota/negatives_per_image"] = float(report.quota.negatives.mean()) if m.num_images else 0.0
    if report.replay is not None and report.replay.num_images:
        out["replay/selected_negatives_per_image"] = float(report.replay.selected_negatives.mean())
        out["replay/negative_loss_share"] = report.replay.selected_loss_share
    return out
