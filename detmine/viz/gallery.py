"""Hard-negative gallery: crops of the highest-scoring false positives of a dataset.

A prediction is a *false positive* here when it overlaps no ground-truth box at
IoU >= ``iou_threshold`` (of any class by default: the gallery is about
background the model mistakes for objects, i.e. missing labels and confusing
background; ``class_aware=True`` also counts class confusions) and does not lie
on an ignore region (intersection over the prediction's area below
``ignore_ioa_threshold``, the COCO crowd rule).

:class:`HardNegativeGallery` keeps the ``max_items`` highest-scoring ones seen
over many images (cropping only those that make the cut) and renders them as a
grid sorted by score, each tile captioned with class, score and image id.
"""

from __future__ import annotations

import heapq
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import cv2
import numpy as np
import torch
from torch import Tensor
from torchvision.ops import box_area, box_iou

from detmine.structures import Detections, Target
from detmine.viz.colors import LEGEND_BG, TEXT_COLOR, class_color
from detmine.viz.draw import FONT, draw_boxes

SOURCE_LONG_SIDE = 800


def _intersection_over_area(boxes: Tensor, regions: Tensor) -> Tensor:
    """``[D, 4]`` x ``[M, 4]`` -> ``[D, M]`` intersection area / area of ``boxes``."""
    lt = torch.max(boxes[:, None, :2], regions[None, :, :2])
    rb = torch.min(boxes[:, None, 2:], regions[None, :, 2:])
    inter = (rb - lt).clamp(min=0).prod(dim=2)
    return inter / box_area(boxes).clamp(min=1e-6)[:, None]


def false_positive_mask(
    pred_boxes: Tensor,
    pred_labels: Tensor,
    gt_boxes: Tensor,
    gt_labels: Tensor,
    ignore_boxes: Tensor | None = None,
    *,
    iou_threshold: float = 0.5,
    ignore_ioa_threshold: float = 0.5,
    class_aware: bool = False,
) -> Tensor:
    """Which predictions are false positives (see the module docstring).

    Args:
        pred_boxes: ``[D, 4]`` xyxy; pred_labels: ``[D]`` classes ``1..K``.
        gt_boxes: ``[N, 4]`` xyxy in the same pixels; gt_labels: ``[N]``.
        ignore_boxes: ``[M, 4]`` ignore regions or ``None``.

    Returns:
        ``[D]`` bool.
    """
    pred_boxes = pred_boxes.float()
    fp = torch.ones(len(pred_boxes), dtype=torch.bool, device=pred_boxes.device)
    if len(pred_boxes) == 0:
        return fp
    if len(gt_boxes):
        iou = box_iou(pred_boxes, gt_boxes.float().to(pred_boxes.device))
        if class_aware:
            same = pred_labels.to(gt_labels.device)[:, None] == gt_labels[None, :]
            iou = iou.masked_fill(~same.to(iou.device), 0.0)
        fp &= iou.max(dim=1).values < iou_threshold
    if ignore_boxes is not None and len(ignore_boxes):
        ioa = _intersection_over_area(pred_boxes, ignore_boxes.float().to(pred_boxes.device))
        fp &= ioa.max(dim=1).values < ignore_ioa_threshold
    return fp


@dataclass
class GalleryItem:
    """One false positive: its score, class, box (pixels of the image it came
    from), image id, the rendered tile ``[h, w, 3]`` uint8 RGB (crop and caption), the crop
    alone ``[t, t, 3]`` and its source image with the box drawn, JPEG-encoded (kept small:
    only the items that make the cut hold one)."""

    score: float
    label: int
    box: tuple[float, float, float, float]
    image_id: Any
    tile: np.ndarray
    crop: np.ndarray | None = None
    source_jpeg: bytes | None = None

    def to_dict(self, class_names: Sequence[str] | None = None) -> dict[str, Any]:
        name = _class_name(self.label, class_names)
        return {"image_id": self.image_id, "label": self.label, "class": name, "score": self.score,
                "box_xyxy": [round(v, 2) for v in self.box]}  # fmt: skip


def _class_name(label: int, class_names: Sequence[str] | None) -> str:
    return class_names[label - 1] if class_names and 1 <= label <= len(class_names) else str(label)


class HardNegativeGallery:
    """Collects the highest-scoring false positives over a dataset.

    Args:
        max_items: how many to keep (the highest scores win).
        tile_size: side of the square crop area of a tile in pixels (a caption
            strip goes below it).
        context: margin around the box, as a fraction of its width / height.
        class_names: ``K`` names (index k-1 is class k) for the captions.
        iou_threshold, ignore_ioa_threshold, class_aware: see
            :func:`false_positive_mask`.
    """

    def __init__(
        self,
        max_items: int = 64,
        *,
        tile_size: int = 160,
        context: float = 0.25,
        class_names: Sequence[str] | None = None,
        iou_threshold: float = 0.5,
        ignore_ioa_threshold: float = 0.5,
        class_aware: bool = False,
    ) -> None:
        if max_items < 1:
            raise ValueError(f"max_items must be >= 1, got {max_items}")
        self.max_items = max_items
        self.tile_size = tile_size
        self.context = context
        self.class_names = list(class_names) if class_names else None
        self.iou_threshold = iou_threshold
        self.ignore_ioa_threshold = ignore_ioa_threshold
        self.class_aware = class_aware
        self._heap: list[tuple[float, int, GalleryItem]] = []
        self._seen = 0
        self.num_false_positives = 0

    def add(self, image: np.ndarray, detections: Detections, target: Target, image_id: Any = None) -> int:
        """Consider the predictions of one image.

        Args:
            image: ``[H, W, 3]`` uint8 RGB, in the pixels of both the detections
                and the target.
            detections: boxes ``[D, 4]``, scores ``[D]``, labels ``[D]``.
            target: its ground truth (``boxes``, ``labels``, ``ignore_boxes``).
            image_id: shown in the caption; default ``target["image_id"]``.

        Returns:
            The number of false positives in this image.
        """
        boxes, scores, labels = detections["boxes"], detections["scores"], detections["labels"]
        fp = false_positive_mask(
            boxes,
            labels,
            target["boxes"],
            target["labels"],
            target.get("ignore_boxes"),
            iou_threshold=self.iou_threshold,
            ignore_ioa_threshold=self.ignore_ioa_threshold,
            class_aware=self.class_aware,
        )
        idx = torch.nonzero(fp).squeeze(1).tolist()
        self.num_false_positives += len(idx)
        image_id = target.get("image_id") if image_id is None else image_id
        boxes_np = boxes.detach().float().cpu().numpy()
        scores_l, labels_l = scores.detach().float().cpu().tolist(), labels.detach().cpu().tolist()
        for i in idx:
            score = float(scores_l[i])
            if len(self._heap) >= self.max_items and score <= self._heap[0][0]:
                continue
            box = tuple(float(v) for v in boxes_np[i])
            label = int(labels_l[i])
            crop = self._crop(image, box, label)  # type: ignore[arg-type]
            tile = self._caption(crop, label, score, image_id)
            source = self._source(image, box, label)  # type: ignore[arg-type]
            item = GalleryItem(score, label, box, image_id, tile, crop, source)  # type: ignore[arg-type]
            self._seen += 1
            entry = (score, -self._seen, item)  # ties: the earlier one stays
            if len(self._heap) < self.max_items:
                heapq.heappush(self._heap, entry)
            else:
                heapq.heapreplace(self._heap, entry)
        return len(idx)

    @property
    def items(self) -> list[GalleryItem]:
        """The kept false positives, highest score first."""
        return [e[2] for e in sorted(self._heap, key=lambda e: (-e[0], -e[1]))]

    def to_json(self) -> list[dict[str, Any]]:
        """The kept items as JSON-ready dicts (image id, class, score, box), sorted."""
        return [it.to_dict(self.class_names) for it in self.items]

    def _crop(self, image: np.ndarray, box: tuple[float, ...], label: int) -> np.ndarray:
        """The box with its context margin, scaled into a ``tile_size`` square (dark border),
        the box drawn in its class colour."""
        h, w = image.shape[:2]
        x1, y1, x2, y2 = box
        mx = max((x2 - x1) * self.context, 4.0)
        my = max((y2 - y1) * self.context, 4.0)
        cx1, cy1 = int(max(0, np.floor(x1 - mx))), int(max(0, np.floor(y1 - my)))
        cx2, cy2 = int(min(w, np.ceil(x2 + mx))), int(min(h, np.ceil(y2 + my)))
        if cx2 <= cx1 or cy2 <= cy1:  # box entirely outside the image
            cx1, cy1, cx2, cy2 = 0, 0, w, h
        crop = image[cy1:cy2, cx1:cx2]
        t = self.tile_size
        f = t / max(crop.shape[0], crop.shape[1])
        nw, nh = max(1, int(round(crop.shape[1] * f))), max(1, int(round(crop.shape[0] * f)))
        resized = cv2.resize(crop, (nw, nh), interpolation=cv2.INTER_LINEAR if f > 1 else cv2.INTER_AREA)
        rel = np.array([[(x1 - cx1) * f, (y1 - cy1) * f, (x2 - cx1) * f, (y2 - cy1) * f]], dtype=np.float32)
        resized = draw_boxes(resized, rel, class_color(label), thickness=2)
        square = np.empty((t, t, 3), dtype=np.uint8)
        square[:] = LEGEND_BG
        oy, ox = (t - nh) // 2, (t - nw) // 2
        square[oy : oy + nh, ox : ox + nw] = resized
        return square

    def _caption(self, crop: np.ndarray, label: int, score: float, image_id: Any) -> np.ndarray:
        """The crop with a caption strip below: class, score, image id."""
        t = crop.shape[1]
        caption_h = 34
        color = class_color(label)
        tile = np.empty((crop.shape[0] + caption_h, t, 3), dtype=np.uint8)
        tile[:] = LEGEND_BG
        tile[: crop.shape[0]] = crop
        y0 = crop.shape[0]
        cv2.rectangle(tile, (0, y0), (t - 1, y0 + caption_h - 1), color, 2)
        name = _class_name(label, self.class_names)
        cv2.putText(tile, f"{name} {score:.2f}", (4, y0 + 14), FONT, 0.42, TEXT_COLOR, 1, cv2.LINE_AA)
        cv2.putText(tile, f"img {image_id}", (4, y0 + 28), FONT, 0.36, (190, 190, 190), 1, cv2.LINE_AA)
        return tile

    def _source(self, image: np.ndarray, box: tuple[float, ...], label: int) -> bytes:
        """The whole image with the false positive's box, at most ``SOURCE_LONG_SIDE`` px long,
        at least 512 px (small inputs are upscaled so the box reads), as JPEG bytes."""
        h, w = image.shape[:2]
        f = min(SOURCE_LONG_SIDE / max(h, w), max(1.0, 512 / max(h, w)))
        img = cv2.resize(image, (max(1, round(w * f)), max(1, round(h * f)))) if f != 1 else image
        drawn = draw_boxes(img, np.array([box], np.float32) * f, class_color(label), thickness=3)
        ok, data = cv2.imencode(
            ".jpg", np.ascontiguousarray(drawn[..., ::-1]), [cv2.IMWRITE_JPEG_QUALITY, 85]
        )
        return data.tobytes() if ok else b""

    def render(self, columns: int = 8) -> np.ndarray:
        """The gallery as one ``[rows * tile_h, columns * tile_w, 3]`` uint8 RGB image,
        highest score first (row-major). An empty gallery renders a one-line notice."""
        items = self.items
        if not items:
            img = np.empty((40, 360, 3), dtype=np.uint8)
            img[:] = LEGEND_BG
            cv2.putText(img, "no false positives found", (8, 26), FONT, 0.6, TEXT_COLOR, 1, cv2.LINE_AA)
            return img
        th, tw = items[0].tile.shape[:2]
        cols = max(1, min(columns, len(items)))
        rows = -(-len(items) // cols)
        grid = np.zeros((rows * th, cols * tw, 3), dtype=np.uint8)
        for i, it in enumerate(items):
            r, c = divmod(i, cols)
            grid[r * th : (r + 1) * th, c * tw : (c + 1) * tw] = it.tile
        return grid
