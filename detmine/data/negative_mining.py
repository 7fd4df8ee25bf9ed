"""Offline hard-negative mining: a trained detector run over images without objects; every
detection there is a false positive, and the highest-scoring ones make the pool
(:mod:`detmine.data.hard_negatives`).

The images are a split's background-only images (chosen from the annotations:
:func:`background_indices`, no image decoded) or a folder of images that are all background
(:class:`ImageFolder`). :func:`mine_false_positives` is the loop; ``tools/mine_hard_negatives.py``
is the command line around it.
"""

from __future__ import annotations

import heapq
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch.utils.data import Dataset

from detmine.data._common import _NOT_FOUND, SkippedSample, Transform, read_rgb
from detmine.data.hard_negatives import PoolEntry
from detmine.errors import DataError
from detmine.structures import Target

#: the file name endings :class:`ImageFolder` reads (any case).
IMAGE_SUFFIXES = (".jpg", ".jpeg", ".png", ".bmp", ".webp", ".tif", ".tiff")


def background_indices(dataset: Any) -> list[int]:
    """Indices of the images with no annotation at all (no object, no ignore region), read from
    the dataset's records (or ``image_labels`` when it has none) without decoding an image."""
    records = getattr(dataset, "records", None)
    if records is not None:
        return [i for i, r in enumerate(records) if len(r.labels) == 0 and len(r.ignore_boxes) == 0]
    return [i for i in range(len(dataset)) if not dataset.image_labels(i)]


def find_images(folder: str | Path) -> list[Path]:
    """The image files under ``folder`` (recursively, by :data:`IMAGE_SUFFIXES`), sorted.

    Raises:
        DataError: ``folder`` is not a folder, or holds no image file.
    """
    root = Path(folder)
    if not root.is_dir():
        raise DataError(f"--images {root}: {'not a folder' if root.exists() else 'no such folder'}")
    paths = sorted(p for p in root.rglob("*") if p.suffix.lower() in IMAGE_SUFFIXES and p.is_file())
    if not paths:
        raise DataError(f"--images {root}: no images found (looked for {', '.join(IMAGE_SUFFIXES)})")
    return paths


class ImageFolder(Dataset):
    """Every image of a folder as a background-only sample (no annotations exist).

    ``folder[i] -> (image uint8 [3, H, W], Target)`` with no boxes, ``image_id = i`` and
    ``orig_size`` the decoded size, or a :class:`~detmine.data._common.SkippedSample` for a file
    that cannot be decoded (the loader counts it). ``paths[i]`` is the file.
    """

    def __init__(self, folder: str | Path, *, transform: Transform | None) -> None:
        self.paths = [str(p) for p in find_images(folder)]
        self.transform = transform

    def __len__(self) -> int:
        return len(self.paths)

    def __getitem__(self, i: int) -> tuple[torch.Tensor, Target] | SkippedSample:
        image, reason = read_rgb(self.paths[i])
        if image is None:
            kind = "missing" if reason == _NOT_FOUND else "unreadable"
            return SkippedSample(path=self.paths[i], reason=reason, kind=kind, index=int(i))
        orig = (int(image.shape[0]), int(image.shape[1]))
        if self.transform is not None:
            empty = np.zeros((0, 4), np.float32)
            image = self.transform(
                image=image, boxes=empty, labels=np.zeros(0, np.int64), ignore_boxes=empty
            )["image"]
        target: Target = {
            "boxes": torch.zeros((0, 4), dtype=torch.float32),
            "labels": torch.zeros(0, dtype=torch.int64),
            "ignore_boxes": torch.zeros((0, 4), dtype=torch.float32),
            "image_id": int(i),
            "orig_size": orig,
            "input_size": (int(image.shape[0]), int(image.shape[1])),
        }
        return torch.from_numpy(np.ascontiguousarray(image)).permute(2, 0, 1).contiguous(), target


@dataclass
class MiningResult:
    """What a mining pass found.

    Attributes:
        entries: the ``top`` highest-scoring false positives, highest first.
        num_images: the images searched (decoded and run through the detector).
        num_false_positives: every detection at or above the threshold on them.
    """

    entries: list[PoolEntry]
    num_images: int
    num_false_positives: int


def mine_false_positives(
    model: Any,
    loader: Any,
    locate: Mapping[int, str],
    *,
    source: str,
    top: int,
    score_thresh: float,
    per_image: int | None = None,
    predict_options: Mapping[str, Any] | None = None,
    device: torch.device | str = "cpu",
    on_batch: Callable[[int], None] | None = None,
) -> MiningResult:
    """Run ``model`` over background-only images and keep the ``top`` highest-scoring detections.

    Args:
        model: a detector with ``predict(images, input_sizes, orig_sizes, **options)`` (in
            eval mode here) returning per image ``{boxes [D, 4] xyxy original pixels, scores
            [D], labels [D]}``.
        loader: batches ``(images uint8 [B, 3, H, W], targets)`` of images WITHOUT objects.
        locate: image id -> image file, for the entries.
        source: what the entries record as their source (a split name or ``"folder"``).
        top: entries kept (>= 1).
        score_thresh: the lowest score kept (overrides ``predict_options``).
        per_image: at most this many entries per image, its highest-scoring ones (1 for a
            pool of whole images: one entry per image); None = every detection.
        predict_options: post-processing options (``eval.postprocess``: top-k, NMS, detections
            per image); per-class operating thresholds are not applied.
        device: where the model runs.
        on_batch: called with the number of images of each batch (a progress bar).

    Returns:
        The entries sorted by score (ties: image order, then detection order) and the counts.
    """
    options = {**(predict_options or {}), "score_thresh": float(score_thresh), "class_thresholds": None}
    heap: list[tuple[float, int, PoolEntry]] = []  # min-heap of (score, -order): the top entries
    order = found = searched = 0
    model.eval()
    with torch.no_grad():
        for images, targets in loader:
            detections = model.predict(
                images.to(device),
                input_sizes=[t["input_size"] for t in targets],
                orig_sizes=[t["orig_size"] for t in targets],
                **options,
            )
            for target, det in zip(targets, detections, strict=True):
                entries = _entries(target, det, locate, source)
                found += len(entries)
                for entry in entries[:per_image]:
                    order += 1
                    item = (entry.score, -order, entry)
                    if len(heap) < top:
                        heapq.heappush(heap, item)
                    elif item[:2] > heap[0][:2]:
                        heapq.heapreplace(heap, item)
            searched += len(targets)
            if on_batch is not None:
                on_batch(len(targets))
    ranked = sorted(heap, key=lambda item: (-item[0], -item[1]))
    return MiningResult([entry for _, _, entry in ranked], searched, found)


def _entries(
    target: Target, det: Mapping[str, torch.Tensor], locate: Mapping[int, str], source: str
) -> list[PoolEntry]:
    """The detections of one image as pool entries, highest score first (boxes clipped to the
    image; boxes under a pixel wide or high are left out)."""
    height, width = (int(v) for v in target["orig_size"])
    image_id = int(target["image_id"])
    boxes = det["boxes"].detach().cpu().double()
    boxes[:, 0::2] = boxes[:, 0::2].clamp(0, width)
    boxes[:, 1::2] = boxes[:, 1::2].clamp(0, height)
    out = []
    for box, score, label in zip(boxes.tolist(), det["scores"].tolist(), det["labels"].tolist(), strict=True):
        if box[2] - box[0] < 1 or box[3] - box[1] < 1:
            continue
        out.append(
            PoolEntry(
                path=locate[image_id],
                width=width,
                height=height,
                box=(box[0], box[1], box[2], box[3]),
                score=float(score),
                label=int(label),
                source=source,
                image_id=None if source == "folder" else image_id,
            )
        )
    return sorted(out, key=lambda e: -e.score)  # stable: detection order among equal scores
