"""Analysis views of an evaluation: one table of entries (``EVAL_VIEWS``), run after every
evaluation -- during training (the ``evaluation`` hook) and in ``tools/evaluate.py``.

A view is a class with keyword options (the config's ``eval.views[i].<option>``), called with
a :class:`ViewInput` (the evaluated images' ground truth, the detections, the COCO result, the
training split's class counts, the operating thresholds in use) and returning a
:class:`ViewOutput`: scalars (in the ``eval`` record of ``metrics.jsonl`` as ``<view>/<key>``
and in TensorBoard as ``eval/<view>/<key>``), a table printed after the COCO table, pictures
(TensorBoard ``eval/<view>/<name>``) and files (written into the run folder, or next to
``tools/evaluate.py``'s ``--out``). The built-in views:

- ``errors``: TIDE's error decomposition (dAP50 per error type) and false positives per image on
  background-only images (:mod:`detmine.evaluation.tide`);
- ``frequency``: AP by class-frequency bucket of the training split (:mod:`~.frequency`);
- ``confusion``: the confusion matrix with a background row and column (:mod:`~.confusion`);
- ``thresholds``: per-class operating thresholds (``thresholds.json``, :mod:`~.thresholds`).

A user's own view is one class and one line: ``EVAL_VIEWS["mine"] = MyView`` (from a plugin),
then ``eval.views: [{name: mine}]``; a built-in one is switched off with ``{name: confusion,
enabled: false}``.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, Literal

import numpy as np

from detmine.analysis import ClassCounts, background_false_positives
from detmine.components import ComponentTable, check_entries
from detmine.console import warn


@dataclass
class ViewInput:
    """What a view sees of one evaluation.

    Attributes:
        gt: COCO ground truth of the evaluated images (``images``, ``annotations``,
            ``categories``; the dataset's own category ids).
        detections: the COCO results scored (``image_id``, ``category_id``, ``bbox`` xywh,
            ``score``).
        image_ids: the evaluated images.
        class_names: the ``K`` class names, class ``k`` (1-based) at ``k - 1``.
        category_ids: the dataset category id of each class, in the same order.
        result: the :class:`~detmine.evaluation.evaluator.EvalResult` (COCO stats, per-class AP).
        train_counts: the training split's class counts (None when unknown).
        class_thresholds: the per-class operating thresholds applied (None: none).
    """

    gt: dict[str, Any]
    detections: list[dict[str, Any]]
    image_ids: list[int]
    class_names: list[str]
    category_ids: list[int]
    result: Any = None
    train_counts: ClassCounts | None = None
    class_thresholds: list[float] | None = None


@dataclass
class ViewOutput:
    """What a view reports (every part optional)."""

    scalars: dict[str, float] = field(default_factory=dict)
    table: str = ""
    images: dict[str, np.ndarray] = field(default_factory=dict)
    files: dict[str, str | bytes] = field(default_factory=dict)


class ErrorsView:
    """TIDE's decomposition of the AP50 lost to each error type, and background false positives.

    Args:
        background_iou: below this IoU with every object a detection is a background error.
        score_thresh: the score at which false positives per background-only image are counted
            (also at the per-class thresholds when they are in use).
    """

    def __init__(self, *, background_iou: float = 0.1, score_thresh: float = 0.5) -> None:
        self.background_iou = float(background_iou)
        self.score_thresh = float(score_thresh)

    def __call__(self, view: ViewInput) -> ViewOutput:
        from detmine.evaluation.tide import tide_errors

        errors = tide_errors(
            view.gt, view.detections, image_ids=view.image_ids, background_iou=self.background_iou
        )
        scalars = {"AP50": errors.ap50, **{f"dAP_{k}": v for k, v in errors.dap.items()}}
        lines = [errors.table()]
        fp = background_false_positives(
            view.gt, view.detections, image_ids=view.image_ids, score_thresh=self.score_thresh
        )
        if fp.on_empty_images is not None:
            scalars["fp_per_empty_image"] = fp.on_empty_images
            lines.append(
                f"False positives per background-only image at score >= {self.score_thresh:g}: "
                f"{fp.on_empty_images:.3f} ({fp.num_empty_images} images)"
            )
            if view.class_thresholds is not None:
                per_category = dict(zip(view.category_ids, view.class_thresholds, strict=True))
                at = background_false_positives(
                    view.gt, view.detections, image_ids=view.image_ids, category_thresholds=per_category
                )
                scalars["fp_per_empty_image_at_thresholds"] = float(at.on_empty_images or 0.0)
                lines.append(f"  at the per-class operating thresholds: {at.on_empty_images:.3f}")
        return ViewOutput(scalars=scalars, table="\n".join(lines))


class FrequencyView:
    """AP by class-frequency bucket of the training split (rare / common / frequent).

    Args:
        split: ``"tertiles"`` (the classes in thirds by their training images; never an empty
            bucket with three or more classes) or ``"lvis"`` (LVIS: 1-10 / 11-100 / >100 images).
    """

    def __init__(self, *, split: Literal["tertiles", "lvis"] = "tertiles") -> None:
        self.split = split

    def __call__(self, view: ViewInput) -> ViewOutput:
        if view.train_counts is None or view.result is None:
            return ViewOutput()
        from detmine.evaluation.frequency import bucket_ap, bucket_table, frequency_buckets

        buckets = frequency_buckets(view.train_counts.images, view.train_counts.class_names, split=self.split)
        ap = bucket_ap(view.result.per_class_ap, buckets)
        return ViewOutput(
            scalars={f"AP_{name}": value for name, value in ap.items()},
            table=bucket_table(buckets, ap, view.train_counts, split=self.split),
        )


class ConfusionView:
    """The confusion matrix with a background row and column (detections matched at
    ``iou_thresh``, kept from ``score_thresh``, or from the per-class thresholds in use).

    Args:
        iou_thresh: the IoU at which a detection matches an object.
        score_thresh: the lowest score of a detection that counts.
    """

    def __init__(self, *, iou_thresh: float = 0.5, score_thresh: float = 0.5) -> None:
        self.iou_thresh = float(iou_thresh)
        self.score_thresh = float(score_thresh)

    def __call__(self, view: ViewInput) -> ViewOutput:
        from detmine.evaluation.confusion import confusion_csv, confusion_matrix, confusion_picture

        matrix = confusion_matrix(
            view.gt,
            view.detections,
            category_ids=view.category_ids,
            image_ids=view.image_ids,
            iou_thresh=self.iou_thresh,
            score_thresh=self.score_thresh,
            class_thresholds=view.class_thresholds,
        )
        picture = confusion_picture(matrix, view.class_names)
        import cv2

        png = cv2.imencode(".png", cv2.cvtColor(picture, cv2.COLOR_RGB2BGR))[1].tobytes()
        k = len(view.class_names)
        classes = matrix[:k, :k]
        scalars = {  # counts over the evaluated images
            "correct": float(np.trace(classes)),
            "confused": float(classes.sum() - np.trace(classes)),
            "on_background": float(matrix[k, :k].sum()),
            "missed": float(matrix[:k, k].sum()),
        }
        return ViewOutput(
            scalars=scalars,
            images={"matrix": picture},
            files={
                "confusion_matrix.csv": confusion_csv(matrix, view.class_names),
                "confusion_matrix.png": png,
            },
        )


class ThresholdsView:
    """Per-class operating thresholds chosen on this split: the best F1, or the lowest score
    reaching ``target_precision``; written as ``thresholds.json`` (next to the checkpoint in a
    run folder) for ``eval.postprocess.class_thresholds``.

    Args:
        rule: ``"f1"`` or ``"precision"``.
        target_precision: the precision the ``"precision"`` rule must reach.
        iou_thresh: the IoU at which a detection is a true positive.
    """

    def __init__(
        self,
        *,
        rule: Literal["f1", "precision"] = "f1",
        target_precision: float = 0.9,
        iou_thresh: float = 0.5,
    ) -> None:
        self.rule = rule
        self.target_precision = float(target_precision)
        self.iou_thresh = float(iou_thresh)

    def __call__(self, view: ViewInput) -> ViewOutput:
        from detmine.evaluation.thresholds import choose_thresholds, thresholds_file, thresholds_table

        chosen = choose_thresholds(
            view.gt,
            view.detections,
            category_ids=view.category_ids,
            class_names=view.class_names,
            image_ids=view.image_ids,
            iou_thresh=self.iou_thresh,
            rule=self.rule,
            target_precision=self.target_precision,
        )
        f1 = [c["f1"] for c in chosen if c["support"] > 0]
        return ViewOutput(
            scalars={"mean_f1": float(np.mean(f1)) if f1 else 0.0},
            table=thresholds_table(chosen, rule=self.rule, target_precision=self.target_precision),
            files={
                "thresholds.json": thresholds_file(
                    chosen, rule=self.rule, iou=self.iou_thresh, target_precision=self.target_precision
                )
            },  # fmt: skip
        )


#: name -> evaluation view class (``eval.views: [{name: ..., <option>: ...}]``).
EVAL_VIEWS = ComponentTable(
    "evaluation view",
    {
        "errors": ErrorsView,
        "frequency": FrequencyView,
        "confusion": ConfusionView,
        "thresholds": ThresholdsView,
    },
    entry_keys=("name", "enabled"),
)

#: the views every evaluation runs unless ``eval.views`` switches them off.
BUILTIN_VIEWS = ("errors", "frequency", "confusion", "thresholds")


def build_views(entries: Sequence[Mapping[str, Any]] | None = None) -> list[tuple[str, Any]]:
    """The built-in views with ``entries`` (``eval.views``) applied: an entry naming a built-in
    view changes its options or switches it off (``enabled: false``); another name adds a view
    of the table after them. Returns ``(name, view)`` pairs in running order."""
    checked = {e.name: e for e in check_entries(list(entries or []), EVAL_VIEWS, key="eval.views")}
    names = [*BUILTIN_VIEWS, *(n for n in checked if n not in BUILTIN_VIEWS)]
    views = []
    for name in names:
        entry = checked.get(name)
        if entry is not None and not entry.reserved.get("enabled", True):
            continue
        options = entry.options if entry is not None else {}
        key = entry.key if entry is not None else f"eval.views[{name}]"
        views.append((name, EVAL_VIEWS.build(name, options, key=key, name_key=f"{key}.name")))
    return views


def run_views(views: Sequence[tuple[str, Any]], view_input: ViewInput) -> dict[str, ViewOutput]:
    """Each view's output by name. A view that fails is a warning naming it, never the end of
    an evaluation (or of a training run)."""
    outputs: dict[str, ViewOutput] = {}
    for name, view in views:
        try:
            outputs[name] = view(view_input)
        except Exception as exc:  # noqa: BLE001 -- reported; the evaluation's numbers stand
            first = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
            warn(f"evaluation view {name!r} failed: {first}")
    return outputs


def views_table(outputs: Mapping[str, ViewOutput]) -> str:
    """The views' tables, each under its name, for printing after the COCO table."""
    return "\n\n".join(f"[{name}]\n{out.table}" for name, out in outputs.items() if out.table)


def views_scalars(outputs: Mapping[str, ViewOutput]) -> dict[str, float]:
    """Every view's scalars as ``<view>/<key>`` (the ``eval`` record's extra fields)."""
    return {f"{name}/{k}": float(v) for name, out in outputs.items() for k, v in out.scalars.items()}
