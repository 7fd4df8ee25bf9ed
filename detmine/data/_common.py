"""Shared machinery of the dataset readers: image decoding, bad-image / bad-box accounting,
and the record-based ``Dataset`` both COCO and VOC readers derive from."""

from __future__ import annotations

import logging
import math
import os
import warnings
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

import cv2
import numpy as np
import torch
from torch.utils.data import Dataset

from detmine.errors import DataError
from detmine.structures import Target

Transform = Callable[..., dict[str, Any]]

logger = logging.getLogger(__name__)


class BadImageWarning(UserWarning):
    """Kept for imports; no longer emitted. A skipped image is a :class:`SkippedSample` that
    the loader counts (``DetectionDataLoader.skipped_summary()``); each skip is logged at
    DEBUG level by the ``detmine.data._common`` logger."""


#: ``SkippedSample.kind`` values, in the order summaries list them.
SKIP_KINDS: tuple[str, ...] = ("missing", "unreadable", "size mismatch", "other")


@dataclass(frozen=True)
class SkippedSample:
    """What a dataset returns instead of a sample it could not load (``on_bad_image="skip"``).

    It is falsy, travels back from DataLoader workers like a sample, and ``collate`` drops
    it; :class:`~detmine.data.loader.DetectionDataLoader` counts it by ``kind``.

    Attributes:
        path: the image file (or ``"<index i>"`` when the dataset gave no path).
        reason: what went wrong, e.g. ``"file not found"``.
        kind: one of :data:`SKIP_KINDS`: ``"missing"`` (no such file), ``"unreadable"``
            (cannot be decoded), ``"size mismatch"`` (decoded size differs from the
            annotation), ``"other"`` (e.g. a dataset that returned None).
        index: the dataset index that was asked for (None when unknown).
    """

    path: str
    reason: str
    kind: str = "other"
    index: int | None = None

    def __bool__(self) -> bool:
        return False

    def __str__(self) -> str:
        return f"{self.path} ({self.reason})"


class DegenerateBoxWarning(UserWarning):
    """Annotations with degenerate boxes were dropped while loading a dataset."""


_NOT_FOUND = "file not found"


def read_rgb(path: str) -> tuple[np.ndarray | None, str]:
    """Decode an image file with OpenCV. Returns (uint8 ``[H, W, 3]`` RGB, "") or (None, reason).

    EXIF orientation is ignored on purpose: COCO / VOC annotations refer to the stored pixels.
    """
    if not os.path.isfile(path):
        return None, _NOT_FOUND
    buf = np.fromfile(path, dtype=np.uint8)
    img = cv2.imdecode(buf, cv2.IMREAD_COLOR | cv2.IMREAD_IGNORE_ORIENTATION) if buf.size else None
    if img is None:
        return None, "cannot be decoded (corrupt or not an image)"
    return cv2.cvtColor(img, cv2.COLOR_BGR2RGB), ""


@dataclass
class DegenerateBoxes:
    """Counts boxes dropped while loading annotations, for ONE summary warning."""

    source: str
    count: int = 0
    example: str = ""

    def add(self, where: str, value: Any, count: int = 1) -> None:
        """Count ``count`` dropped boxes; the first call's ``where: value`` is the example."""
        self.count += count
        if not self.example:
            self.example = f"{where}: {value!r}"

    def warn(self) -> None:
        if self.count:
            warnings.warn(
                f"{self.source}: dropped {self.count} degenerate box(es) (non-finite, zero or negative size, "
                f"or outside the image), e.g. {self.example}",
                DegenerateBoxWarning,
                stacklevel=3,
            )


def clean_box(x0: float, y0: float, x1: float, y1: float, width: int, height: int) -> list[float] | None:
    """Clip an xyxy box to the image; None when it is non-finite, empty or fully outside."""
    if not all(math.isfinite(v) for v in (x0, y0, x1, y1)) or x1 <= x0 or y1 <= y0:
        return None
    cx0, cy0 = min(max(x0, 0.0), width), min(max(y0, 0.0), height)
    cx1, cy1 = min(max(x1, 0.0), width), min(max(y1, 0.0), height)
    if cx1 <= cx0 or cy1 <= cy0:
        return None
    return [cx0, cy0, cx1, cy1]


@dataclass
class ImageRecord:
    """Everything known about one image without decoding it (original pixels, contiguous labels)."""

    path: str
    image_id: int
    height: int
    width: int
    boxes: np.ndarray  # float32 [N, 4] xyxy
    labels: np.ndarray  # int64 [N] in 1..K
    ignore_boxes: np.ndarray  # float32 [M, 4] xyxy
    extra: dict[str, Any] = field(default_factory=dict)


def as_boxes(rows: list[list[float]]) -> np.ndarray:
    return np.asarray(rows, dtype=np.float32).reshape(-1, 4)


def as_labels(values: list[int]) -> np.ndarray:
    return np.asarray(values, dtype=np.int64).reshape(-1)


class RecordDataset(Dataset):
    """Base ``Dataset`` over a sequence of :class:`ImageRecord` (see docs/architecture.md, "Contracts").

    Subclasses fill ``self.records`` (a list, or a :class:`~detmine.data.flat_records.FlatRecords`
    whose buffers forked loader workers share without copying), ``self.class_names`` and the two
    id mappings, then call :meth:`_finish_init`.
    """

    records: Sequence[ImageRecord]
    class_names: list[str]
    contiguous_to_category_id: dict[int, int]
    category_id_to_contiguous: dict[int, int]

    def __init__(self, *, transform: Transform | None, on_bad_image: str) -> None:
        if on_bad_image not in ("skip", "error"):
            raise DataError(f"on_bad_image must be 'skip' or 'error', got {on_bad_image!r}")
        self.transform = transform
        self.on_bad_image = on_bad_image
        # counted in the process that decodes (each DataLoader worker has its own copy); the
        # loader's count over all workers is DetectionDataLoader.skipped_summary()
        self.num_bad_images = 0
        self.bad_images: list[str] = []

    def _finish_init(self, source: str) -> None:
        if not self.records:
            raise DataError(f"{source}: the dataset is empty (no images)")
        ids = getattr(self.records, "image_ids", None)  # FlatRecords: one array
        self.image_ids = ids.tolist() if ids is not None else [r.image_id for r in self.records]

    @property
    def num_classes(self) -> int:
        return len(self.class_names)

    def __len__(self) -> int:
        return len(self.records)

    def image_labels(self, i: int) -> set[int]:
        """Contiguous labels (1..K) present in image ``i`` (ignore regions excluded); no decoding."""
        labels_of = getattr(self.records, "labels_of", None)  # FlatRecords: no record built
        return {int(v) for v in (labels_of(i) if labels_of is not None else self.records[i].labels)}

    def image_size(self, i: int) -> tuple[int, int]:
        """``(height, width)`` of image ``i`` as given by the annotations; no decoding."""
        size_of = getattr(self.records, "size_of", None)
        if size_of is not None:
            return size_of(i)
        r = self.records[i]
        return r.height, r.width

    def _bad_image(self, i: int, path: str, reason: str, kind: str) -> SkippedSample:
        """DataError (``on_bad_image="error"``), else count, log at DEBUG and return the marker."""
        if self.on_bad_image == "error":
            raise DataError(f"{path}: {reason}")
        self.num_bad_images += 1
        self.bad_images.append(path)
        logger.debug("skipping image %s: %s (%d skipped in this process)", path, reason, self.num_bad_images)
        return SkippedSample(path=path, reason=reason, kind=kind, index=int(i))

    def __getitem__(self, i: int) -> tuple[torch.Tensor, Target] | SkippedSample:
        """``(image uint8 [3, H, W], Target)`` after the transform, or a :class:`SkippedSample`
        (falsy) for a missing / undecodable / wrongly sized image in ``on_bad_image="skip"`` mode."""
        rec = self.records[i]
        image, reason = read_rgb(rec.path)
        if image is None:
            return self._bad_image(i, rec.path, reason, "missing" if reason == _NOT_FOUND else "unreadable")
        if image.shape[:2] != (rec.height, rec.width):
            return self._bad_image(
                i,
                rec.path,
                f"decoded size {image.shape[0]}x{image.shape[1]} differs from the annotated {rec.height}x{rec.width}",
                "size mismatch",
            )
        boxes, labels, ignore = rec.boxes.copy(), rec.labels.copy(), rec.ignore_boxes.copy()
        if self.transform is not None:
            out = self.transform(image=image, boxes=boxes, labels=labels, ignore_boxes=ignore)
            image, boxes, labels, ignore = out["image"], out["boxes"], out["labels"], out["ignore_boxes"]
        target: Target = {
            "boxes": torch.as_tensor(np.asarray(boxes, np.float32).reshape(-1, 4)),
            "labels": torch.as_tensor(np.asarray(labels, np.int64).reshape(-1)),
            "ignore_boxes": torch.as_tensor(np.asarray(ignore, np.float32).reshape(-1, 4)),
            "image_id": rec.image_id,
            "orig_size": (rec.height, rec.width),
            "input_size": (int(image.shape[0]), int(image.shape[1])),
        }
        tensor = torch.from_numpy(np.ascontiguousarray(image)).permute(2, 0, 1).contiguous()
        return tensor, target
