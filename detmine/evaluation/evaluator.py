"""COCO (and VOC) evaluation of a detector's predictions over a dataset.

Detections arrive in original-image pixels with contiguous labels ``1..K``; they are written
as COCO results (``xywh`` boxes, the dataset's own category ids) and scored against
``dataset.coco_gt_dict()`` with hotcoco (default), faster-coco-eval or pycocotools -- all three
give the same numbers (tested on every fixture); hotcoco ~45x and faster-coco-eval ~10x faster
than pycocotools (bench/eval_speed.py). VOC datasets also get the VOC07 11-point and
area-under-curve mAP at IoU 0.5 (``detmine.evaluation.voc_eval``).

Distributed use: every rank calls :meth:`CocoEvaluator.process` on its shard, then
:meth:`CocoEvaluator.summarize` (a collective call when ``gather_fn`` is given); rank 0 gets
the :class:`EvalResult`, the others ``None``.
"""

from __future__ import annotations

import json
import math
import os
import warnings
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch

from detmine import console, distributed
from detmine.errors import ConfigError, DataError
from detmine.evaluation.coco_eval import BACKENDS, coco_bbox_eval, prepare_gt
from detmine.evaluation.coco_table import (
    COCO_STAT_NAMES,
    format_coco_summary,
    format_per_class_table,
    format_voc_summary,
)
from detmine.evaluation.voc_eval import voc_evaluate
from detmine.structures import Detections, Target

__all__ = ["BACKENDS", "CocoEvaluator", "EvalResult", "coco_bbox_eval", "evaluate"]

METRICS: tuple[str, ...] = ("coco", "voc")

GatherFn = Callable[[list], list]


@dataclass
class EvalResult:
    """What an evaluation produces.

    Attributes:
        stats: the 12 COCO numbers (``AP, AP50, AP75, APs, APm, APl, AR1, AR10, AR100, ARs,
            ARm, ARl``, in 0..1; -1 where the split has no ground truth in that range, as
            pycocotools reports it) plus ``VOC07_mAP`` / ``VOC_mAP`` when VOC metrics ran.
        per_class_ap: class name -> COCO AP@[.5:.95] (NaN when the class has no ground truth).
        table: the printable COCO summary + VOC lines + per-class AP table.
        precision: COCOeval ``eval["precision"]``, ``[T=10 IoUs, R=101 recalls, K classes,
            A=4 areas, M=3 maxDets]``, -1 = undefined; K follows sorted category ids.
            None when COCO metrics did not run.
        class_names: names of the K classes in the order of ``precision``'s K axis.
        per_class_voc_ap: class name -> VOC area-under-curve AP (empty without VOC metrics).
        results: the COCO result dicts scored (:meth:`CocoEvaluator.results_json`; set by
            :func:`evaluate`, so a caller can show the numbers before writing them).
        image_ids: the ids of the images scored (with or without detections).
        views: the analysis views' outputs by name (:mod:`detmine.evaluation.views`); their
            tables are part of ``table``.
    """

    stats: dict[str, float]
    per_class_ap: dict[str, float]
    table: str
    precision: np.ndarray | None
    class_names: list[str]
    per_class_voc_ap: dict[str, float] = field(default_factory=dict)
    results: list[dict] = field(default_factory=list, repr=False)
    image_ids: list[int] = field(default_factory=list, repr=False)
    views: dict[str, Any] = field(default_factory=dict, repr=False)

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready metrics (NaN -> None); ``precision`` and ``table`` are left out."""

        def clean(values: dict[str, float]) -> dict[str, float | None]:
            return {k: (None if math.isnan(v) else float(v)) for k, v in values.items()}

        views = {name: clean(dict(out.scalars)) for name, out in self.views.items() if out.scalars}
        return {
            "stats": clean(self.stats),
            "per_class_ap": clean(self.per_class_ap),
            "per_class_voc_ap": clean(self.per_class_voc_ap),
            **({"views": views} if views else {}),
        }


def _default_is_main() -> bool:
    return distributed.is_main_process()


def _is_voc_dataset(dataset: Any) -> bool:
    return "voc" in type(dataset).__name__.lower()


class CocoEvaluator:
    """Accumulates detections over a dataset and computes COCO (and VOC) metrics.

    Args:
        dataset: a detmine dataset (``coco_gt_dict()``, ``contiguous_to_category_id``,
            ``category_id_to_contiguous``, ``class_names``).
        backend: "hotcoco" (default), "faster_coco_eval" or "pycocotools"; identical numbers.
        iou_type: only "bbox" (dense detectors predict boxes).
        metrics: subset of ("coco", "voc"); default ("coco", "voc") for VOC datasets, else
            ("coco",).
        gather_fn: all-gather of a picklable object across ranks, returning the list of every
            rank's object (``torch.distributed.all_gather_object`` semantics); a flat list of
            the gathered items is accepted too. None = single process.
        is_main: whether this rank summarises (default: rank 0, or True without
            torch.distributed).
    """

    def __init__(
        self,
        dataset: Any,
        backend: str = "hotcoco",
        iou_type: str = "bbox",
        metrics: Iterable[str] | None = None,
        gather_fn: GatherFn | None = None,
        is_main: bool | None = None,
    ) -> None:
        if backend not in BACKENDS:
            raise ConfigError(f"evaluation backend '{backend}' is unknown; valid: {', '.join(BACKENDS)}")
        if iou_type != "bbox":
            raise ConfigError(f"evaluation iou_type '{iou_type}' is not supported; valid: bbox")
        if metrics is None:
            metrics = ("coco", "voc") if _is_voc_dataset(dataset) else ("coco",)
        self.metrics = tuple(metrics)
        for m in self.metrics:
            if m not in METRICS:
                raise ConfigError(f"evaluation metric '{m}' is unknown; valid: {', '.join(METRICS)}")
        self.backend = backend
        self.gather_fn = gather_fn
        self.is_main = _default_is_main() if is_main is None else is_main
        self._gt = prepare_gt(dataset.coco_gt_dict())
        self._gt_image_ids = {int(img["id"]) for img in self._gt["images"]}
        self._contiguous_to_cat = {int(k): int(v) for k, v in dataset.contiguous_to_category_id.items()}
        names = list(dataset.class_names)
        cat_to_contiguous = {int(k): int(v) for k, v in dataset.category_id_to_contiguous.items()}
        gt_names = {int(c["id"]): str(c.get("name", c["id"])) for c in self._gt["categories"]}
        self._cat_names = {
            cat: names[cat_to_contiguous[cat] - 1] if cat in cat_to_contiguous else gt_names[cat]
            for cat in gt_names
        }
        #: the ``K`` class names and their category ids, class ``k`` (1-based) at ``k - 1``.
        self.class_names = names
        self.category_ids = [self._contiguous_to_cat[k] for k in range(1, len(names) + 1)]
        self.reset()

    def ground_truth(self) -> dict[str, Any]:
        """The COCO ground truth scored against (``prepare_gt``'d: annotation ids 1..N)."""
        return self._gt

    def reset(self) -> None:
        """Forget all processed detections."""
        self._results: dict[int, list[dict]] = {}
        self._synchronized = False
        self.num_nonfinite = 0  # detections dropped for a NaN / Inf box or score (this rank)

    def process(self, targets: Sequence[Target], detections: Sequence[Detections]) -> None:
        """Add the detections of one batch.

        Args:
            targets: per image, at least ``image_id``.
            detections: per image, ``boxes [D, 4]`` xyxy in original pixels, ``scores [D]``,
                ``labels [D]`` contiguous ``1..K``.
        """
        if len(targets) != len(detections):
            raise DataError(
                f"evaluator got {len(targets)} targets but {len(detections)} detections for one batch"
            )
        for target, det in zip(targets, detections, strict=True):
            image_id = int(target["image_id"])
            if image_id not in self._gt_image_ids:
                raise DataError(f"evaluator: image_id {image_id} is not in the dataset's ground truth")
            if image_id in self._results:  # a distributed sampler pads with repeated images
                continue
            boxes = det["boxes"].detach().to("cpu", torch.float64).reshape(-1, 4)
            scores = det["scores"].detach().to("cpu", torch.float64).reshape(-1)
            labels = det["labels"].detach().to("cpu").reshape(-1)
            finite = torch.isfinite(boxes).all(dim=1) & torch.isfinite(scores)
            if not bool(finite.all()):  # a diverged model: NaN would poison the JSON and the metrics
                self.num_nonfinite += int((~finite).sum())
                boxes, scores, labels = boxes[finite], scores[finite], labels[finite]
            xywh = torch.cat([boxes[:, :2], boxes[:, 2:] - boxes[:, :2]], dim=1).tolist()
            scores, labels = scores.tolist(), labels.tolist()
            entries = []
            for box, score, label in zip(xywh, scores, labels, strict=True):
                category_id = self._contiguous_to_cat.get(int(label))
                if category_id is None:
                    raise DataError(
                        f"evaluator: detection label {label} on image {image_id} is not a contiguous class id "
                        f"(valid: 1..{len(self._contiguous_to_cat)})"
                    )
                entries.append(
                    {"image_id": image_id, "category_id": category_id, "bbox": box, "score": score}
                )
            self._results[image_id] = entries

    def synchronize(self) -> None:
        """Gather every rank's results (collective when ``gather_fn`` is set; idempotent)."""
        if self._synchronized or self.gather_fn is None:
            self._synchronized = True
            return
        payload = [{"image_id": k, "results": v} for k, v in self._results.items()]
        gathered = self.gather_fn(payload)
        items = (
            [x for part in gathered for x in part] if gathered and isinstance(gathered[0], list) else gathered
        )
        merged: dict[int, list[dict]] = {}
        for item in items:
            merged.setdefault(int(item["image_id"]), item["results"])  # first occurrence wins
        self._results = merged
        self._synchronized = True

    @property
    def image_ids(self) -> list[int]:
        """Ids of the images processed so far (on this rank, or all ranks after synchronize)."""
        return sorted(self._results)

    def results_json(self) -> list[dict]:
        """COCO result dicts ``{"image_id", "category_id", "bbox": [x, y, w, h], "score"}``."""
        return [r for image_id in sorted(self._results) for r in self._results[image_id]]

    def write_results(self, path: str | os.PathLike) -> Path:
        """Write :meth:`results_json` as a COCO results file; returns the path."""
        from detmine.safe_io import atomic_write_text

        path = Path(path)
        try:
            path.parent.mkdir(parents=True, exist_ok=True)
        except OSError as exc:
            from detmine.safe_io import write_error

            raise write_error(path.parent, exc, "results folder") from None
        atomic_write_text(path, json.dumps(self.results_json()), what="COCO results")
        return path

    def summarize(self) -> EvalResult | None:
        """Gather (all ranks must call it) and compute the metrics; None on non-main ranks."""
        self.synchronize()
        if not self.is_main:
            return None
        if self.num_nonfinite:
            warnings.warn(
                f"evaluator: dropped {self.num_nonfinite} detections with a non-finite box or score "
                "(on this rank); the model may have diverged",
                stacklevel=2,
            )
        results = self.results_json()
        image_ids = self.image_ids
        if not image_ids:
            warnings.warn("evaluator: no image was processed; scoring an empty result set", stacklevel=2)
            image_ids = sorted(self._gt_image_ids)
        elif len(image_ids) < len(self._gt_image_ids):
            warnings.warn(
                f"evaluator: {len(image_ids)} of {len(self._gt_image_ids)} ground-truth images were processed; "
                "the metrics cover those images only",
                stacklevel=2,
            )
        stats: dict[str, float] = {}
        per_class_ap: dict[str, float] = {}
        precision = None
        cat_ids = sorted(self._cat_names)
        if "coco" in self.metrics:
            values, precision, cat_ids = coco_bbox_eval(self._gt, results, self.backend, image_ids)
            stats.update({name: float(v) for name, v in zip(COCO_STAT_NAMES, values, strict=True)})
            for k, cat in enumerate(cat_ids):
                p = precision[:, :, k, 0, -1]  # all IoUs and recalls, area "all", maxDets 100
                per_class_ap[self._cat_names[cat]] = (
                    float(p[p > -1].mean()) if (p > -1).any() else float("nan")
                )
        per_class_voc: dict[str, float] = {}
        if "voc" in self.metrics:
            gt = self._gt
            if len(image_ids) < len(self._gt_image_ids):
                keep = set(image_ids)
                gt = {
                    **gt,
                    "images": [img for img in gt["images"] if img["id"] in keep],
                    "annotations": [a for a in gt["annotations"] if a["image_id"] in keep],
                }
            voc = voc_evaluate(gt, results)
            stats["VOC07_mAP"] = voc.voc07_map
            stats["VOC_mAP"] = voc.voc_map
            per_class_voc = {self._cat_names[c]: v for c, v in voc.per_class_ap.items()}
        class_names = [self._cat_names[c] for c in cat_ids]
        return EvalResult(
            stats=stats,
            per_class_ap=per_class_ap,
            table=self._table(stats, per_class_ap, per_class_voc, class_names),
            precision=precision,
            class_names=class_names,
            per_class_voc_ap=per_class_voc,
            image_ids=list(image_ids),
        )

    @staticmethod
    def _table(
        stats: dict[str, float],
        per_class_ap: dict[str, float],
        per_class_voc: dict[str, float],
        class_names: list[str],
    ) -> str:
        parts = []
        if "AP" in stats:
            parts.append(format_coco_summary(stats))
        voc = format_voc_summary(stats)
        if voc:
            parts.append(voc)
        columns = {}
        if per_class_ap:
            columns["AP"] = {n: per_class_ap[n] for n in class_names}
        if per_class_voc:
            columns["VOC AP"] = {n: per_class_voc[n] for n in class_names}
        if columns:
            parts.append("Per-class AP (%):\n" + format_per_class_table(columns))
        return "\n\n".join(parts)


def evaluate(
    model: torch.nn.Module,
    loader: Iterable,
    dataset: Any,
    backend: str = "hotcoco",
    device: torch.device | str | None = None,
    gather_fn: GatherFn | None = None,
    progress: bool = True,
    metrics: Iterable[str] | None = None,
    is_main: bool | None = None,
    results_path: str | os.PathLike | None = None,
    predict_options: dict[str, Any] | None = None,
    views: Sequence[tuple[str, Any]] = (),
    train_counts: Any = None,
) -> EvalResult | None:
    """Predict over ``loader`` and score the detections with :class:`CocoEvaluator`.

    Args:
        model: a detector with ``predict(images, input_sizes=..., orig_sizes=...) ->
            list[Detections]`` (DDP-wrapped is fine); put in eval mode for the run, then back
            in the mode it had.
        loader: yields ``(images uint8 [B, 3, H, W], targets: list[Target])``.
        dataset: the dataset behind ``loader`` (ground truth + category mapping).
        backend, metrics, gather_fn, is_main: see :class:`CocoEvaluator`.
        device: where to run the model (default: the device of its first parameter).
        progress: show progress (a bar on a terminal, lines in a log file; main rank only).
        results_path: also write the COCO results JSON there (main rank, all ranks' detections).
        predict_options: post-processing keywords of ``predict`` (``score_thresh``,
            ``topk_candidates``, ``topk_per``, ``nms_thresh``, ``detections_per_img``: the
            config's ``eval.postprocess``, ``class_thresholds`` read); None = the model's
            defaults.
        views: ``(name, view)`` analysis views (:func:`detmine.evaluation.views.build_views`)
            run on the main rank after the metrics; their tables join ``result.table``.
        train_counts: the training split's :class:`~detmine.analysis.ClassCounts` (the
            ``frequency`` view's buckets).

    Returns:
        :class:`EvalResult` on the main rank, None on the others.
    """
    evaluator = CocoEvaluator(dataset, backend=backend, metrics=metrics, gather_fn=gather_fn, is_main=is_main)
    net = distributed.unwrap(model)
    if device is None:
        param = next(iter(net.parameters()), None)
        device = param.device if param is not None else torch.device("cpu")
    was_training = model.training
    model.eval()
    try:
        batches = console.progress(loader, "eval", unit="batch", enabled=progress and evaluator.is_main)
        for images, targets in batches:
            if len(targets) == 0:
                continue
            with torch.no_grad():
                detections = net.predict(
                    images.to(device, non_blocking=True),
                    input_sizes=[tuple(t["input_size"]) for t in targets],
                    orig_sizes=[tuple(t["orig_size"]) for t in targets],
                    **(predict_options or {}),
                )
            evaluator.process(targets, detections)
    finally:
        model.train(was_training)
    result = evaluator.summarize()
    if result is not None:
        result.results = evaluator.results_json()
        if views:
            _run_views(result, evaluator, views, train_counts, predict_options)
    if result is not None and results_path is not None:
        evaluator.write_results(results_path)
    return result


def _run_views(
    result: EvalResult,
    evaluator: CocoEvaluator,
    views: Sequence[tuple[str, Any]],
    train_counts: Any,
    predict_options: dict[str, Any] | None,
) -> None:
    """Run the analysis views on the scored images; their outputs go into ``result.views``
    and their tables after the COCO table."""
    from detmine.evaluation.views import ViewInput, run_views, views_table

    keep = set(result.image_ids)
    gt = evaluator.ground_truth()
    gt = {
        **gt,
        "images": [img for img in gt["images"] if int(img["id"]) in keep],
        "annotations": [a for a in gt["annotations"] if int(a["image_id"]) in keep],
    }
    view_input = ViewInput(
        gt=gt,
        detections=result.results,
        image_ids=list(result.image_ids),
        class_names=list(evaluator.class_names),
        category_ids=list(evaluator.category_ids),
        result=result,
        train_counts=train_counts,
        class_thresholds=(predict_options or {}).get("class_thresholds"),
    )
    result.views = run_views(views, view_input)
    extra = views_table(result.views)
    if extra:
        result.table = f"{result.table}\n\n{extra}"
