"""An evaluation as TensorBoard items: the COCO table, per-class AP scalars and the
precision-recall curves, written to anything with ``SummaryWriter``'s ``add_*`` methods (the
training run's event storage, or a writer)."""

from __future__ import annotations

from typing import Any

import numpy as np

from detmine.evaluation.evaluator import EvalResult
from detmine.viz.plots import draw_pr_grid


def log_evaluation(writer: Any, result: EvalResult, step: int, prefix: str = "eval") -> None:
    """Write an evaluation to TensorBoard.

    Tags: ``<prefix>/coco_table`` (text, the COCO table as a code block),
    ``<prefix>/pr_curve_iou50`` (image: one precision-recall plot per class at
    IoU 0.5, plus the mean over classes; only when ``result.precision`` is set),
    ``<prefix>/per_class_AP/<class name>`` (spaces become ``_``) and, with VOC
    metrics, ``<prefix>/per_class_VOC_AP/<class name>``.
    """
    table = "\n".join("    " + line for line in result.table.splitlines())  # markdown code block
    writer.add_text(f"{prefix}/coco_table", table, step)
    for name, value in result.per_class_ap.items():
        writer.add_scalar(f"{prefix}/per_class_AP/{name.replace(' ', '_')}", float(value), step)
    for name, value in getattr(result, "per_class_voc_ap", {}).items():
        writer.add_scalar(f"{prefix}/per_class_VOC_AP/{name.replace(' ', '_')}", float(value), step)
    if result.precision is not None:
        grid = draw_pr_grid(np.asarray(result.precision), result.class_names, iou=0.5)
        writer.add_image(f"{prefix}/pr_curve_iou50", grid, step, dataformats="HWC")
