"""The numbers of a finished cell, read from its run folder (however it was produced: here,
by ``--print-commands`` on a cluster, or by submitit).

From ``metrics.jsonl``: the final ``eval`` record (AP, AP50, AP75, APs, APm, APl, per-class AP)
and the ``train`` records (training time = the logged windows' iterations x seconds per
iteration, evaluation excluded; images per second). From ``detections_final.json`` with the
validation split's ground truth: background false positives per image
(:func:`detmine.analysis.background_false_positives`) and the per-image matches the bootstrap
over images resamples (:func:`detmine.evaluation.image_matches.image_matches`).
"""

from __future__ import annotations

import json
import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from detmine.ablation.cells import CellStatus
from detmine.analysis import background_false_positives
from detmine.config import Config
from detmine.engine.run_folder import FINAL_DETECTIONS
from detmine.errors import DataError

#: the COCO numbers a table shows per strategy (the first six of COCOeval's summary), then AP by
#: class-frequency bucket of the training split (the ``frequency`` evaluation view).
COCO_COLUMNS = ("AP", "AP50", "AP75", "APs", "APm", "APl")
BUCKET_COLUMNS = ("AP_rare", "AP_common", "AP_frequent")


@dataclass
class CellResult:
    """A finished cell's numbers.

    Attributes:
        stats: ``COCO_COLUMNS`` and ``BUCKET_COLUMNS`` of the final evaluation (0..1; NaN where
            a range or bucket has no object).
        per_class_ap: class name -> AP (None for a class without objects in the split).
        train_seconds: training time (the logged windows; evaluation not included).
        images_per_s: training images per second over those windows.
        background_fp: background false positives per validation image at score 0.5.
        matches: the per-image matches of the final detections (for the bootstrap).
    """

    strategy: str
    seed: int
    path: Path
    stats: dict[str, float]
    per_class_ap: dict[str, float]
    train_seconds: float
    images_per_s: float
    background_fp: float
    matches: Any = field(default=None, repr=False)


def _metric(value: Any) -> float:
    """A logged metric; NaN for pycocotools' -1 (no object in that range) and a missing value."""
    if value is None or not isinstance(value, (int, float)) or value < 0:
        return math.nan
    return float(value)


def _records(path: Path) -> list[dict[str, Any]]:
    out = []
    for line in (path / "metrics.jsonl").read_text().splitlines():
        try:
            record = json.loads(line)
        except ValueError:
            continue
        if isinstance(record, dict):
            out.append(record)
    return out


def _training_time(records: list[dict[str, Any]], batch_size: int) -> tuple[float, float]:
    """``(seconds, images per second)`` of the logged training windows."""
    seconds = images = 0.0
    previous = 0
    for record in records:
        if record.get("type") != "train":
            continue
        iteration = int(record.get("iteration", previous))
        steps = max(0, iteration - previous)
        seconds += steps * float(record.get("sec_per_iter", 0.0))
        images += steps * batch_size
        previous = iteration
    return seconds, (images / seconds if seconds > 0 else 0.0)


class GroundTruth:
    """The validation split's COCO ground truth per data config, built once (no image is
    decoded: the dataset reads its annotations)."""

    def __init__(self) -> None:
        self._cache: dict[str, dict[str, Any]] = {}

    def __call__(self, cfg: Config) -> dict[str, Any]:
        from detmine.engine.builders import build_dataset_split, prepare_data

        key = json.dumps(
            [cfg.data.kind, str(cfg.data.root), cfg.data.val_split, cfg.data.options], default=str
        )
        if key not in self._cache:
            prepare_data(cfg)
            self._cache[key] = build_dataset_split(cfg, cfg.data.val_split, False).coco_gt_dict()
        return self._cache[key]


def read_cell(status: CellStatus, cfg: Config, ground_truth: GroundTruth) -> CellResult:
    """The numbers of a finished cell (see the module docstring).

    Raises:
        DataError: the folder lacks its final evaluation (one line naming the file).
    """
    from detmine.evaluation.image_matches import image_matches

    path = status.cell.path
    max_iters = cfg.train.max_iters
    records = _records(path)
    final = [r for r in records if r.get("type") == "eval" and r.get("iteration") == max_iters]
    if not final:
        raise DataError(f"{path / 'metrics.jsonl'} has no evaluation of iteration {max_iters}")
    record = final[-1]
    try:
        detections = json.loads((path / FINAL_DETECTIONS).read_text())
    except (OSError, ValueError) as exc:
        raise DataError(f"{path / FINAL_DETECTIONS} cannot be read: {exc}") from None
    gt = ground_truth(cfg)
    keep = {int(i) for i in detections["image_ids"]}
    gt = {
        **gt,
        "images": [img for img in gt["images"] if int(img["id"]) in keep],
        "annotations": [a for a in gt["annotations"] if int(a["image_id"]) in keep],
    }
    seconds, rate = _training_time(records, cfg.train.batch_size)
    background = background_false_positives(gt, detections["detections"], image_ids=sorted(keep))
    return CellResult(
        strategy=status.cell.strategy,
        seed=status.cell.seed,
        path=path,
        stats={
            **{k: _metric(record[k]) for k in COCO_COLUMNS if k in record},
            **{k: _metric(record[f"frequency/{k}"]) for k in BUCKET_COLUMNS if f"frequency/{k}" in record},
        },
        per_class_ap={k[3:]: _metric(v) for k, v in record.items() if k.startswith("AP/")},
        train_seconds=seconds,
        images_per_s=rate,
        background_fp=background.per_image,
        matches=image_matches(gt, detections["detections"]),
    )
