"""COCO-format detection dataset (any ``instances_*.json`` + image folder; the synthetic set too).

The file is read into columns (:mod:`detmine.data.coco_tables`), the records are made from them
in a few vectorised steps and kept in flat buffers (:class:`~detmine.data.flat_records.FlatRecords`),
and the file's contents are released: what stays is the records and the columns the evaluation
ground truth needs (ids, original boxes, area, iscrowd), a few dozen bytes per annotation.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from detmine.data._common import DegenerateBoxes, RecordDataset, Transform
from detmine.data.coco_tables import CocoTables, load_coco_json, read_coco_tables
from detmine.data.flat_records import FlatRecords

__all__ = ["CocoDetection", "load_coco_json"]


@dataclass(frozen=True)
class _GroundTruth:
    """The kept annotations the evaluation scores against (``V`` of them, in record order)."""

    ids: np.ndarray  # [V] as written (int64, or object)
    image_ids: np.ndarray  # int64 [V]
    category_ids: np.ndarray  # int64 [V], original ids
    bboxes: np.ndarray  # float64 [V, 4] xywh as written
    areas: np.ndarray  # float64 [V]
    crowd: np.ndarray  # bool [V]


def _last_of_each_id(ids: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """``(sorted unique ids, the row of each one's last occurrence)``: a repeated image id
    names one image, its last entry (as pycocotools' index has it)."""
    order = np.argsort(ids, kind="stable")
    sorted_ids = ids[order]
    last = np.ones(len(ids), dtype=bool)
    last[:-1] = sorted_ids[1:] != sorted_ids[:-1]
    return sorted_ids[last], order[last]


def _clipped_boxes(t: CocoTables, height: np.ndarray, width: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """``(valid bool [A], xyxy float64 [A, 4] clipped to the image)``: the rule of
    :func:`~detmine.data._common.clean_box`, over all annotations at once."""
    x0, y0, w, h = t.bboxes.T
    with np.errstate(invalid="ignore", over="ignore"):
        x1, y1 = x0 + w, y0 + h
        finite = np.isfinite(x0) & np.isfinite(y0) & np.isfinite(x1) & np.isfinite(y1)
        boxes = np.stack(
            [
                np.minimum(np.maximum(x0, 0.0), width),
                np.minimum(np.maximum(y0, 0.0), height),
                np.minimum(np.maximum(x1, 0.0), width),
                np.minimum(np.maximum(y1, 0.0), height),
            ],
            axis=1,
        )
        valid = finite & (x1 > x0) & (y1 > y0) & (boxes[:, 2] > boxes[:, 0]) & (boxes[:, 3] > boxes[:, 1])
    return valid, boxes


class CocoDetection(RecordDataset):
    """Detection dataset over a COCO instances JSON and a folder of images.

    Category ids are mapped to contiguous ``1..K`` in increasing id order; boxes are
    converted from ``xywh`` to ``xyxy`` and clipped to the image; ``iscrowd`` annotations
    become ``ignore_boxes``; degenerate boxes (non-finite, ``w`` or ``h <= 0``, outside the
    image) are dropped with one counted warning. Images without annotations are kept
    unless ``keep_empty=False`` (they are where background-only negatives come from).
    Images are in increasing id order (a repeated id is one image, its last entry).

    ``dataset[i]`` -> ``(image uint8 [3, H, W], Target)``, or a falsy
    :class:`~detmine.data._common.SkippedSample` (path, reason, kind) for a missing / corrupt
    image when ``on_bad_image="skip"`` (counted in ``num_bad_images``, logged at DEBUG level;
    the loader counts skips over all its workers, see ``DetectionDataLoader.skipped_summary``).
    ``records`` is a :class:`~detmine.data.flat_records.FlatRecords`; the annotation file's
    contents are not kept (segmentations are never read).
    """

    def __init__(
        self,
        img_dir: str | Path,
        ann_file: str | Path,
        *,
        transform: Transform | None = None,
        on_bad_image: str = "skip",
        keep_empty: bool = True,
    ) -> None:
        super().__init__(transform=transform, on_bad_image=on_bad_image)
        self.img_dir = str(img_dir)
        self.ann_file = str(ann_file)
        tables = read_coco_tables(ann_file)
        cats = sorted(tables.categories, key=lambda c: c["id"])
        self.class_names = [str(c["name"]) for c in cats]
        self.contiguous_to_category_id = {k + 1: c["id"] for k, c in enumerate(cats)}
        self.category_id_to_contiguous = {c: k for k, c in self.contiguous_to_category_id.items()}
        self._categories = [dict(c) for c in tables.categories]
        dropped = DegenerateBoxes(self.ann_file)
        self.records, self._gt = self._build(tables, keep_empty, dropped)
        del tables  # the file's contents: only the records and the ground truth's columns stay
        dropped.warn()
        self.num_degenerate_boxes = dropped.count
        self._finish_init(self.ann_file)

    def _build(
        self, t: CocoTables, keep_empty: bool, dropped: DegenerateBoxes
    ) -> tuple[FlatRecords, _GroundTruth]:
        image_ids, rows = _last_of_each_id(t.image_ids)
        height, width = t.heights[rows], t.widths[rows]
        image = np.searchsorted(image_ids, t.ann_image_ids)  # [A]: each annotation's image
        valid, boxes = _clipped_boxes(t, height[image].astype(np.float64), width[image].astype(np.float64))
        order = np.argsort(image, kind="stable")  # image by image, file order within
        bad = order[~valid[order]]
        if len(bad):
            j = int(bad[0])
            where = f"{t.file_names[rows[image[j]]]} annotation id {t.ann_ids[j]} bbox"
            dropped.add(where, t.bbox_as_written(j), count=len(bad))
        kept = order[valid[order]]
        objects, ignore = kept[~t.crowd[kept]], kept[t.crowd[kept]]
        box_counts = np.bincount(image[objects], minlength=len(image_ids))
        ignore_counts = np.bincount(image[ignore], minlength=len(image_ids))
        keep = np.ones(len(image_ids), bool) if keep_empty else box_counts > 0
        if not keep.all():
            objects, ignore, kept = (a[keep[image[a]]] for a in (objects, ignore, kept))
        cat_ids = np.array(sorted(self.category_id_to_contiguous), np.int64)
        contiguous = np.array([self.category_id_to_contiguous[int(c)] for c in cat_ids], np.int64)
        records = FlatRecords(
            root=self.img_dir,
            file_names=[t.file_names[r] for r in rows[keep]],
            image_ids=image_ids[keep],
            heights=height[keep],
            widths=width[keep],
            box_counts=box_counts[keep],
            boxes=boxes[objects],
            labels=contiguous[np.searchsorted(cat_ids, t.ann_category_ids[objects])],
            ignore_counts=ignore_counts[keep],
            ignore_boxes=boxes[ignore],
        )
        gt = _GroundTruth(
            ids=t.ann_ids[kept],
            image_ids=image_ids[image[kept]],
            category_ids=t.ann_category_ids[kept],
            bboxes=t.bboxes[kept],
            areas=t.areas[kept],
            crowd=t.crowd[kept],
        )
        return records, gt

    def coco_gt_dict(self) -> dict[str, Any]:
        """COCO ground truth of the kept images: original pixels, original category ids, a new
        dict each call.

        Images carry ``id``, ``file_name``, ``height``, ``width``; annotations ``id``,
        ``image_id``, ``category_id``, ``bbox`` (``xywh`` as written), ``area`` (``w * h``
        where the file has none) and ``iscrowd`` (0 / 1). Degenerate annotations are left out.
        """
        rec = self.records
        assert isinstance(rec, FlatRecords)
        images = [
            {"id": i, "file_name": rec.file_name(k), "height": h, "width": w}
            for k, (i, h, w) in enumerate(
                zip(rec.image_ids.tolist(), rec.heights.tolist(), rec.widths.tolist(), strict=True)
            )
        ]
        g = self._gt
        anns = [
            {"id": a, "image_id": i, "category_id": c, "bbox": b, "area": s, "iscrowd": int(z)}
            for a, i, c, b, s, z in zip(
                g.ids.tolist(),
                g.image_ids.tolist(),
                g.category_ids.tolist(),
                g.bboxes.tolist(),
                g.areas.tolist(),
                g.crowd.tolist(),
                strict=True,
            )
        ]
        return {"images": images, "annotations": anns, "categories": [dict(c) for c in self._categories]}
