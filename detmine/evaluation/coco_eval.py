"""The COCO bbox protocol with a choice of backend: faster-coco-eval, pycocotools or hotcoco.

All backends get the same prepared ground truth and the same results (a private copy where
the backend annotates its input) through the same calls (:func:`_summarized`: their APIs are
pycocotools'), and give the same numbers (to ~1e-15: pycocotools adds an epsilon to the
precision denominator). faster-coco-eval does the per-image matching and accumulation in C++,
~10x faster than pycocotools; hotcoco in Rust (bench/README.md has the figures).
"""

from __future__ import annotations

import contextlib
import io
from collections.abc import Sequence
from typing import Any

import numpy as np

from detmine.errors import ConfigError, DataError
from detmine.evaluation.coco_table import COCO_STAT_NAMES

__all__ = ["BACKENDS", "coco_bbox_eval", "prepare_gt"]

BACKENDS: tuple[str, ...] = ("faster_coco_eval", "pycocotools", "hotcoco")


def prepare_gt(gt: dict) -> dict:
    """A copy of a COCO GT dict fit for both backends.

    Annotation ids are renumbered 1..N (pycocotools treats a GT id of 0 as "unmatched", a
    silent bug); a missing ``area`` becomes ``w * h``, a missing ``iscrowd`` 0.
    """
    for key in ("images", "annotations", "categories"):
        if key not in gt:
            raise DataError(f"coco_gt_dict() has no '{key}' list; expected COCO ground truth")
    annotations = []
    for i, ann in enumerate(gt["annotations"], start=1):
        x, y, w, h = (float(v) for v in ann["bbox"])
        annotations.append(
            {
                "id": i,
                "image_id": ann["image_id"],
                "category_id": ann["category_id"],
                "bbox": [x, y, w, h],
                "area": float(ann.get("area", w * h)),
                "iscrowd": int(ann.get("iscrowd", 0)),
            }
        )
    return {
        "info": dict(gt.get("info", {})),
        "images": [dict(img) for img in gt["images"]],
        "annotations": annotations,
        "categories": [dict(c) for c in gt["categories"]],
    }


def pycocotools_eval(gt: dict, results: list[dict]) -> Any:
    """pycocotools' ``COCOeval`` (bbox, default params) of ``results`` on ``gt``, not yet run;
    its prints are silenced. ``loadRes`` annotates the result dicts in place: pass copies
    where that matters."""
    from pycocotools.coco import COCO
    from pycocotools.cocoeval import COCOeval

    with contextlib.redirect_stdout(io.StringIO()):
        coco_gt = COCO()
        coco_gt.dataset = gt
        coco_gt.createIndex()
        if results:
            coco_dt = coco_gt.loadRes(results)
        else:  # pycocotools' loadRes indexes anns[0]: build the empty result set ourselves
            coco_dt = COCO()
            coco_dt.dataset = {"images": gt["images"], "categories": gt["categories"], "annotations": []}
            coco_dt.createIndex()
    return COCOeval(coco_gt, coco_dt, iouType="bbox")


def _run_pycocotools(gt: dict, results: list[dict], image_ids: Sequence[int] | None) -> Any:
    coco_eval = pycocotools_eval(gt, results)
    with contextlib.redirect_stdout(io.StringIO()):
        return _summarized(coco_eval, image_ids)


def _run_faster_coco_eval(gt: dict, results: list[dict], image_ids: Sequence[int] | None) -> Any:
    from faster_coco_eval import COCO, COCOeval_faster

    def quiet(*_: Any) -> None:
        return None

    coco_gt = COCO(gt, print_function=quiet)
    # What loadRes does for boxes (id, area, iscrowd) without its per-box polygon, which bbox
    # evaluation never reads: ~15% of the whole evaluation time.
    annotations = [
        {**r, "id": i, "area": float(r["bbox"][2]) * float(r["bbox"][3]), "iscrowd": 0}
        for i, r in enumerate(results, start=1)
    ]
    coco_dt = COCO(print_function=quiet)
    coco_dt.dataset = {"images": gt["images"], "categories": gt["categories"], "annotations": annotations}
    coco_dt.createIndex()
    return _summarized(COCOeval_faster(coco_gt, coco_dt, iouType="bbox", print_function=quiet), image_ids)


def _run_hotcoco(gt: dict, results: list[dict], image_ids: Sequence[int] | None) -> Any:
    from hotcoco import COCO, COCOeval

    coco_gt = COCO()
    coco_gt.dataset = gt  # indexes on assignment; load_res copies, never annotates, the results
    # COCO scores the ground truth's categories only; hotcoco would warn on stderr about others.
    categories = {int(c["id"]) for c in gt["categories"]}
    coco_dt = coco_gt.load_res([r for r in results if int(r["category_id"]) in categories])
    with contextlib.redirect_stdout(io.StringIO()):
        return _summarized(COCOeval(coco_gt, coco_dt, "bbox"), image_ids)


def _summarized(coco_eval: Any, image_ids: Sequence[int] | None) -> Any:
    """Any backend's evaluator, restricted to ``image_ids`` when given, evaluated,
    accumulated and summarised (the same calls for all: their APIs are the same)."""
    if image_ids is not None:
        coco_eval.params.imgIds = sorted(image_ids)
    coco_eval.evaluate()
    coco_eval.accumulate()
    coco_eval.summarize()
    return coco_eval


def coco_bbox_eval(
    gt: dict, results: list[dict], backend: str = "faster_coco_eval", image_ids: Sequence[int] | None = None
) -> tuple[np.ndarray, np.ndarray, list[int]]:
    """Run COCO bbox evaluation with one backend.

    Args:
        gt: COCO ground-truth dict (passed through :func:`prepare_gt`).
        results: COCO result dicts ``{"image_id", "category_id", "bbox" xywh, "score"}``; not
            modified.
        backend: "faster_coco_eval", "pycocotools" or "hotcoco".
        image_ids: restrict the evaluation to these images (default: all GT images).

    Returns:
        stats ``[12]`` (COCOeval.stats order), precision ``[T, R, K, A, M]``, the sorted
        category ids of the K axis.
    """
    if backend not in BACKENDS:
        raise ConfigError(f"evaluation backend '{backend}' is unknown; valid: {', '.join(BACKENDS)}")
    gt = prepare_gt(gt)
    known = {img["id"] for img in gt["images"]}
    unknown = {r["image_id"] for r in results} - known
    if unknown:
        raise DataError(f"COCO results name image ids {sorted(unknown)[:5]} that are not in the ground truth")
    if backend == "pycocotools":
        results = [dict(r) for r in results]  # its loadRes annotates the dicts in place
    runner = {
        "faster_coco_eval": _run_faster_coco_eval,
        "pycocotools": _run_pycocotools,
        "hotcoco": _run_hotcoco,
    }[backend]
    coco_eval = runner(gt, results, image_ids)
    stats = np.asarray(coco_eval.stats[: len(COCO_STAT_NAMES)], dtype=np.float64)
    precision = np.asarray(coco_eval.eval["precision"], dtype=np.float64)
    return stats, precision, [int(c) for c in coco_eval.params.catIds]
