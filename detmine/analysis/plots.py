"""The data report's pictures (matplotlib's Agg canvas, no pyplot state, so no display and
no global figure list): each function returns a :class:`~matplotlib.figure.Figure`;
:func:`figure_png` / :func:`figure_rgb` turn it into a PNG file's bytes / an RGB array."""

from __future__ import annotations

import io
from collections.abc import Sequence

import numpy as np
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure

from detmine.analysis.anchor_counts import AnchorMatches
from detmine.analysis.class_counts import ClassCounts
from detmine.analysis.coverage import SIZE_NAMES, SIZE_RANGES, CoverageRow, size_index
from detmine.analysis.mining_quota import MinerQuota
from detmine.analysis.mining_replay import MiningReplay

SIZE_COLOURS = ("#d62728", "#ff7f0e", "#2ca02c")  # small, medium, large
DPI = 90
#: class names are written under the bars up to this many classes
MAX_NAMED_CLASSES = 40


def _figure(width: float, height: float) -> Figure:
    fig = Figure(figsize=(width, height), dpi=DPI)
    FigureCanvasAgg(fig)
    return fig


def figure_png(fig: Figure) -> bytes:
    """The figure as PNG bytes."""
    buffer = io.BytesIO()
    fig.savefig(buffer, format="png", dpi=DPI)
    return buffer.getvalue()


def figure_rgb(fig: Figure) -> np.ndarray:
    """The figure as uint8 ``[H, W, 3]`` RGB (TensorBoard's ``HWC``)."""
    canvas = fig.canvas
    canvas.draw()
    return np.asarray(canvas.buffer_rgba())[..., :3].copy()  # type: ignore[attr-defined]


def _class_ticks(ax, names: Sequence[str]) -> None:
    if len(names) <= MAX_NAMED_CLASSES:
        ax.set_xticks(np.arange(len(names)), list(names), rotation=60, ha="right", fontsize=8)
    else:
        ax.set_xlabel("classes, sorted")


def class_long_tail(counts: ClassCounts) -> Figure:
    """Objects and images per class, classes sorted by objects (the long tail); log scale when
    the counts span more than a factor 20."""
    order = np.argsort(-np.asarray(counts.instances), kind="stable")
    instances = np.asarray(counts.instances)[order]
    images = np.asarray(counts.images)[order]
    x = np.arange(len(order))
    fig = _figure(max(5.0, min(14.0, 0.25 * len(order) + 3.0)), 3.8)
    ax = fig.add_subplot()
    ax.bar(x - 0.2, instances, width=0.4, label="objects", color="#1f77b4")
    ax.bar(x + 0.2, images, width=0.4, label="images with the class", color="#9ecae1")
    positive = instances[instances > 0]
    if positive.size and positive.max() > 20 * positive.min():
        ax.set_yscale("log")
    _class_ticks(ax, [counts.class_names[k] for k in order])
    empty = counts.images_without_objects / counts.num_images if counts.num_images else 0.0
    ax.set_title(
        f"{counts.num_instances} objects in {counts.num_images} images ({empty:.0%} without objects)",
        fontsize=10,
    )
    ax.legend(fontsize=8)
    fig.tight_layout()
    return fig


def _log_bins(values: Sequence[np.ndarray]) -> list[float]:
    joined = np.concatenate([np.asarray(v, np.float64) for v in values])
    joined = joined[joined > 0]
    low, high = (joined.min(), joined.max()) if joined.size else (1.0, 1024.0)
    return np.geomspace(max(low, 0.5) * 0.9, max(high, 2.0) * 1.1, 40).tolist()


def _count_bins(values: np.ndarray) -> list[float]:
    """Bins for counts: one per integer up to 60, else 50 even bins."""
    top = int(values.max(initial=0))
    bins = np.arange(top + 2) - 0.5 if top <= 60 else np.linspace(-0.5, top + 0.5, 51)
    return bins.tolist()


def box_size_histogram(matches: AnchorMatches) -> Figure:
    """Box sizes ``sqrt(w * h)`` at the original resolution and at the network input, with
    COCO's small / medium / large bounds (32 and 96 px)."""
    original, network = np.sqrt(matches.box_area), np.sqrt(matches.box_input_area)
    fig = _figure(6.0, 3.6)
    ax = fig.add_subplot()
    bins = _log_bins([original, network])
    ax.hist(original, bins=bins, histtype="step", linewidth=1.8, label="original image")
    ax.hist(network, bins=bins, histtype="step", linewidth=1.8, linestyle="--", label="network input")
    for bound in (32, 96):
        ax.axvline(bound, color="grey", linestyle="--", linewidth=1)
    ax.set_xscale("log")
    ax.set_xlabel("box size sqrt(w x h), pixels (COCO: small < 32 <= medium < 96 <= large)")
    ax.set_ylabel("boxes")
    ax.legend(fontsize=8)
    ax.set_title("object sizes", fontsize=10)
    fig.tight_layout()
    return fig


def _share_bars(ax, rows: Sequence[CoverageRow], fg_iou_thresh: float, xlabel: str) -> None:
    """Grouped bars: per row the share below the foreground threshold and without a positive anchor."""
    x = np.arange(len(rows))
    below = [r.below_fg_share for r in rows]
    unmatched = [r.unmatched_share for r in rows]
    ax.bar(x - 0.2, below, width=0.4, label=f"best IoU < {fg_iou_thresh:g}", color="#ff7f0e")
    ax.bar(x + 0.2, unmatched, width=0.4, label="no positive anchor", color="#d62728")
    for xi, share, row in zip(x, below, rows, strict=True):
        if row.boxes:
            ax.text(xi - 0.2, share, f"{share:.0%}", ha="center", va="bottom", fontsize=7)
    ax.set_xticks(x, [f"{r.name}\n({r.boxes})" for r in rows], fontsize=7)
    ax.set_ylim(0, max(1e-3, *below, *unmatched) * 1.2)
    ax.yaxis.set_major_formatter(lambda v, _: f"{v:.0%}")
    ax.set_xlabel(xlabel, fontsize=8)
    ax.set_ylabel("share of boxes")


def anchor_coverage(
    matches: AnchorMatches, by_size: Sequence[CoverageRow], by_side: Sequence[CoverageRow], title: str = ""
) -> Figure:
    """Left: each box's best anchor IoU, stacked by COCO size (at the original resolution), with
    the matcher's thresholds. Middle: per COCO size, right: per box side at the network input,
    the share of boxes whose best IoU is below the foreground threshold and the share left
    without any positive anchor (``by_size`` / ``by_side``: rows of
    :func:`~detmine.analysis.coverage.coverage_by_size` / ``coverage_by_side``)."""
    sizes = size_index(matches.box_area)
    fig = _figure(13.0, 3.8)
    left, middle, right = fig.subplots(1, 3, gridspec_kw={"width_ratios": [1.4, 1.0, 1.3]})
    left.hist(
        [matches.best_iou[sizes == k] for k in range(len(SIZE_RANGES))],
        bins=np.linspace(0.0, 1.0, 41).tolist(),
        stacked=True,
        color=SIZE_COLOURS,
        label=[f"{name} ({int((sizes == k).sum())})" for k, name in enumerate(SIZE_NAMES)],
    )
    left.axvline(matches.fg_iou_thresh, color="black", linewidth=1.2, label=f"fg {matches.fg_iou_thresh:g}")
    if matches.bg_iou_thresh < matches.fg_iou_thresh:
        left.axvline(matches.bg_iou_thresh, color="black", linestyle=":", linewidth=1.2, label="bg")
    left.set_xlabel("best anchor IoU of a ground-truth box", fontsize=8)
    left.set_ylabel("boxes")
    left.legend(fontsize=7)
    _share_bars(middle, by_size, matches.fg_iou_thresh, "COCO size (original image)")
    middle.legend(fontsize=7)
    _share_bars(right, by_side, matches.fg_iou_thresh, "box side sqrt(w x h) at the network input")
    fig.suptitle(title or "anchor coverage", fontsize=10)
    fig.tight_layout()
    return fig


def coverage_by_class(rows: Sequence[CoverageRow], fg_iou_thresh: float) -> Figure:
    """Per class the share of boxes below the foreground threshold and without a positive
    anchor, classes sorted by the first."""
    order = sorted(range(len(rows)), key=lambda k: -rows[k].below_fg_share)
    x = np.arange(len(order))
    fig = _figure(max(5.0, min(14.0, 0.25 * len(order) + 3.0)), 3.6)
    ax = fig.add_subplot()
    below = [rows[k].below_fg_share for k in order]
    ax.bar(x - 0.2, below, width=0.4, label=f"best IoU < {fg_iou_thresh:g}", color="#ff7f0e")
    ax.bar(
        x + 0.2,
        [rows[k].unmatched_share for k in order],
        width=0.4,
        label="no positive anchor",
        color="#d62728",
    )
    _class_ticks(ax, [rows[k].name for k in order])
    ax.yaxis.set_major_formatter(lambda v, _: f"{v:.0%}")
    ax.set_ylabel("share of the class's boxes")
    ax.set_title("anchor coverage by class", fontsize=10)
    ax.legend(fontsize=8)
    fig.tight_layout()
    return fig


def anchors_per_image(matches: AnchorMatches, quota: MinerQuota | None) -> Figure:
    """Left: positive anchors per image (images with objects). Right: background anchors per
    image and, with the miner's quota, the negatives it keeps."""
    fig = _figure(10.0, 3.4)
    left, right = fig.subplots(1, 2)
    has_objects = np.bincount(matches.box_image, minlength=matches.num_images) > 0
    positives = matches.positives[has_objects]
    left.hist(positives, bins=_count_bins(positives), color="#1f77b4")
    left.set_xlabel("positive anchors per image (images with objects)")
    left.set_ylabel("images")
    values = [np.maximum(matches.negatives, 1)]
    labels = ["background anchors"]
    if quota is not None:
        values.append(np.maximum(quota.negatives, 1))
        labels.append("negatives the miner keeps" + ("" if quota.exact else " (at most)"))
    bins = _log_bins(values)
    for k, (v, label) in enumerate(zip(values, labels, strict=True)):
        right.hist(
            v, bins=bins, histtype="step", linewidth=1.8, linestyle="-" if k == 0 else "--", label=label
        )
    right.set_xscale("log")
    right.xaxis.set_major_formatter(lambda v, _: f"{v:,.0f}")
    right.xaxis.set_minor_formatter(lambda v, _: "")
    right.set_xlabel("anchors per image (0 drawn at 1)")
    right.set_ylabel("images")
    right.legend(fontsize=8)
    fig.tight_layout()
    return fig


def mining_replay(replay: MiningReplay) -> Figure:
    """The checkpoint's real selection: selected negatives per image, and per image the share
    of its negatives' loss that they carry."""
    fig = _figure(10.0, 3.4)
    left, right = fig.subplots(1, 2)
    selected = replay.selected_negatives
    left.hist(selected, bins=_count_bins(selected), color="#1f77b4")
    left.set_xlabel("selected negatives per image")
    left.set_ylabel("images")
    with np.errstate(invalid="ignore", divide="ignore"):
        share = replay.selected_negative_loss / replay.negative_loss
    right.hist(share[np.isfinite(share)], bins=np.linspace(0, 1, 26).tolist(), color="#ff7f0e")
    right.set_xlabel("share of the image's negative loss in the selected negatives")
    fig.suptitle(
        f"selected negatives carry {replay.selected_loss_share:.1%} of the negatives' loss", fontsize=10
    )
    fig.tight_layout()
    return fig
