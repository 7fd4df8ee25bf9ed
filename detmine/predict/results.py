"""What a prediction run writes besides pictures: ``results.json`` (COCO results: ``image_id``,
``file_name``, ``category_id`` -- the dataset's original id --, ``bbox`` xywh in original
pixels, ``score``) and ``index.json`` (the inputs, the image ids each gave, each image's file,
size, frame and picture, the categories and how the run was made)."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from detmine.errors import DataError

RESULTS_FILE = "results.json"
INDEX_FILE = "index.json"


@dataclass
class ImageDetections:
    """One image's kept detections on the CPU: ``boxes [D, 4]`` float64 xyxy in original
    pixels, ``scores [D]`` float64, ``labels [D]`` int64 contiguous ``1..K``."""

    boxes: torch.Tensor
    scores: torch.Tensor
    labels: torch.Tensor

    def __len__(self) -> int:
        return int(self.scores.numel())


def keep_detections(det: Mapping[str, torch.Tensor], score_thresh: float | None = None) -> ImageDetections:
    """The detections ``predict`` returned for one image (``boxes [D, 4]``, ``scores [D]``,
    ``labels [D]``), on the CPU, those with a non-finite box or score left out and, with
    ``score_thresh``, those scoring below it."""
    boxes = det["boxes"].detach().to("cpu", torch.float64).reshape(-1, 4)
    scores = det["scores"].detach().to("cpu", torch.float64).reshape(-1)
    labels = det["labels"].detach().to("cpu", torch.int64).reshape(-1)
    keep = torch.isfinite(boxes).all(dim=1) & torch.isfinite(scores)
    if score_thresh is not None:
        keep &= scores >= score_thresh
    return ImageDetections(boxes[keep], scores[keep], labels[keep])


def coco_results(
    det: ImageDetections, *, image_id: int, file_name: str, category_ids: Mapping[int, int]
) -> list[dict[str, Any]]:
    """COCO results of one image: ``{"image_id", "file_name", "category_id", "bbox": [x, y, w, h],
    "score"}`` per detection, in ``det``'s order.

    Args:
        category_ids: contiguous label -> the dataset's original category id
            (``dataset.contiguous_to_category_id``).

    Raises:
        DataError: a label without a category id (a model with more classes than the dataset).
    """
    xywh = torch.cat([det.boxes[:, :2], det.boxes[:, 2:] - det.boxes[:, :2]], dim=1).tolist()
    out = []
    for box, score, label in zip(xywh, det.scores.tolist(), det.labels.tolist(), strict=True):
        category_id = category_ids.get(int(label))
        if category_id is None:
            raise DataError(
                f"detection label {label} on {file_name} has no category id in the dataset's mapping "
                f"(labels 1..{len(category_ids)})"
            )
        out.append(
            {
                "image_id": int(image_id),
                "file_name": file_name,
                "category_id": int(category_id),
                "bbox": box,
                "score": float(score),
            }
        )
    return out


class PictureNames:
    """File names of the pictures in the output folder: ``<stem><suffix>`` of the input, or
    ``<stem>_<image id><suffix>`` when an earlier input took that name."""

    def __init__(self) -> None:
        self.taken: set[str] = set()

    def __call__(self, source: str | Path, image_id: int, suffix: str) -> str:
        stem = Path(source).stem or "image"
        name = f"{stem}{suffix}"
        if name in self.taken:
            name = f"{stem}_{image_id}{suffix}"
        self.taken.add(name)
        return name


def index_document(
    items: list[dict[str, Any]],
    images: list[dict[str, Any]],
    categories: Mapping[int, tuple[int, str]],
    info: Mapping[str, Any],
) -> dict[str, Any]:
    """The ``index.json`` payload.

    Args:
        items: per INPUT ``{"input", "kind", "image_ids": [...]}`` (``"problem"`` when it named
            nothing).
        images: per image ``{"id", "file_name", "width", "height"}`` (``"video"``, ``"frame"``
            for a video frame, ``"picture"`` when one was written), or ``{"id", "file_name",
            "skipped": true}`` for an image that could not be read.
        categories: contiguous label -> ``(original category id, name)``.
        info: how the run was made (config, checkpoint, thresholds ...).
    """
    return {
        "info": dict(info),
        "categories": [
            {"id": int(cat), "name": name, "label": int(label)}
            for label, (cat, name) in sorted(categories.items())
        ],
        "inputs": items,
        "images": images,
    }
