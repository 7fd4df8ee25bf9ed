"""COCO-format detection dataset (any ``instances_*.json`` + image folder; the synthetic set too)."""

from __future__ import annotations

import contextlib
import io
import json
import numbers
import os
from pathlib import Path
from typing import Any

from pycocotools.coco import COCO

from detmine.data._common import (
    DegenerateBoxes,
    ImageRecord,
    RecordDataset,
    Transform,
    as_boxes,
    as_labels,
    clean_box,
)
from detmine.errors import DataError


def _is_number(v: Any) -> bool:
    return isinstance(v, numbers.Real) and not isinstance(v, bool)


def load_coco_json(ann_file: str | Path) -> dict[str, Any]:
    """Read and structurally validate a COCO instances file; DataError (one line) on any problem."""
    try:
        with open(ann_file, encoding="utf-8") as f:
            data = json.load(f)
    except OSError as e:
        raise DataError(f"{ann_file}: cannot read annotation file ({e.strerror or e})") from None
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        raise DataError(f"{ann_file}: not valid JSON ({e})") from None
    if not isinstance(data, dict):
        raise DataError(
            f"{ann_file}: expected a JSON object with 'images' and 'categories', got {type(data).__name__}"
        )
    for key in ("images", "categories"):
        if not isinstance(data.get(key), list):
            raise DataError(f"{ann_file}: missing or non-list key {key!r}")
    data.setdefault("annotations", [])
    if not isinstance(data["annotations"], list):
        raise DataError(f"{ann_file}: key 'annotations' must be a list")
    for cat in data["categories"]:
        if not isinstance(cat, dict) or not isinstance(cat.get("id"), int) or "name" not in cat:
            raise DataError(f"{ann_file}: category needs an integer 'id' and a 'name', got {cat!r}")
    for img in data["images"]:
        ok = (
            isinstance(img, dict) and isinstance(img.get("id"), int) and isinstance(img.get("file_name"), str)
        )
        if not ok or not all(isinstance(img.get(k), int) and img[k] > 0 for k in ("height", "width")):
            raise DataError(
                f"{ann_file}: image entry needs int 'id', 'file_name' and positive 'height'/'width', got {img!r}"
            )
    cat_ids = {c["id"] for c in data["categories"]}
    img_ids = {i["id"] for i in data["images"]}
    for ann in data["annotations"]:
        aid = ann.get("id") if isinstance(ann, dict) else None
        if aid is None:
            raise DataError(f"{ann_file}: annotation without an 'id': {ann!r}")
        if ann.get("image_id") not in img_ids:
            raise DataError(f"{ann_file}: annotation id {aid}: unknown image_id {ann.get('image_id')!r}")
        if ann.get("category_id") not in cat_ids:
            raise DataError(
                f"{ann_file}: annotation id {aid}: unknown category_id {ann.get('category_id')!r} "
                f"(categories: {sorted(cat_ids)})"
            )
        bbox = ann.get("bbox")
        if not isinstance(bbox, list) or len(bbox) != 4 or not all(_is_number(v) for v in bbox):
            raise DataError(
                f"{ann_file}: annotation id {aid}: malformed bbox {bbox!r} (expected 4 numbers x, y, w, h)"
            )
    return data


class CocoDetection(RecordDataset):
    """Detection dataset over a COCO instances JSON and a folder of images.

    Category ids are mapped to contiguous ``1..K`` in increasing id order; boxes are
    converted from ``xywh`` to ``xyxy`` and clipped to the image; ``iscrowd`` annotations
    become ``ignore_boxes``; degenerate boxes (non-finite, ``w`` or ``h <= 0``, outside the
    image) are dropped with one counted warning. Images without annotations are kept
    unless ``keep_empty=False`` (they are where background-only negatives come from).

    ``dataset[i]`` -> ``(image uint8 [3, H, W], Target)``, or a falsy
    :class:`~detmine.data._common.SkippedSample` (path, reason, kind) for a missing / corrupt
    image when ``on_bad_image="skip"`` (counted in ``num_bad_images``, logged at DEBUG level;
    the loader counts skips over all its workers, see ``DetectionDataLoader.skipped_summary``).
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
        data = load_coco_json(ann_file)
        self.coco = COCO()
        self.coco.dataset = data
        with contextlib.redirect_stdout(io.StringIO()):  # pycocotools prints progress
            self.coco.createIndex()
        cats = sorted(data["categories"], key=lambda c: c["id"])
        self.class_names = [str(c["name"]) for c in cats]
        self.contiguous_to_category_id = {k + 1: c["id"] for k, c in enumerate(cats)}
        self.category_id_to_contiguous = {c: k for k, c in self.contiguous_to_category_id.items()}
        dropped = DegenerateBoxes(self.ann_file)
        self._valid_anns: dict[int, list[dict[str, Any]]] = {}
        self.records = []
        for img_id in sorted(self.coco.imgs):
            rec = self._record(self.coco.imgs[img_id], self.coco.imgToAnns.get(img_id, []), dropped)
            if keep_empty or len(rec.labels):
                self.records.append(rec)
        dropped.warn()
        self.num_degenerate_boxes = dropped.count
        self._finish_init(self.ann_file)
        self._gt_dict: dict[str, Any] | None = None

    def _record(
        self, img: dict[str, Any], anns: list[dict[str, Any]], dropped: DegenerateBoxes
    ) -> ImageRecord:
        h, w = img["height"], img["width"]
        boxes, labels, ignore, valid = [], [], [], []
        for ann in anns:
            x, y, bw, bh = (float(v) for v in ann["bbox"])
            box = clean_box(x, y, x + bw, y + bh, w, h)
            if box is None:
                dropped.add(f"{img['file_name']} annotation id {ann['id']} bbox", ann["bbox"])
                continue
            valid.append(ann)
            if ann.get("iscrowd", 0):
                ignore.append(box)
            else:
                boxes.append(box)
                labels.append(self.category_id_to_contiguous[ann["category_id"]])
        self._valid_anns[img["id"]] = valid
        return ImageRecord(
            path=os.path.join(self.img_dir, img["file_name"]),
            image_id=img["id"],
            height=h,
            width=w,
            boxes=as_boxes(boxes),
            labels=as_labels(labels),
            ignore_boxes=as_boxes(ignore),
        )

    def coco_gt_dict(self) -> dict[str, Any]:
        """COCO ground truth of the kept images: original pixels, original category ids.

        Degenerate annotations are left out; ``area`` and ``iscrowd`` are filled in when absent.
        """
        if self._gt_dict is None:
            images = [self.coco.imgs[i] for i in self.image_ids]
            anns = []
            for i in self.image_ids:
                for a in self._valid_anns[i]:
                    a = dict(a)
                    a.setdefault("iscrowd", 0)
                    a.setdefault("area", float(a["bbox"][2]) * float(a["bbox"][3]))
                    anns.append(a)
            cats = [dict(c) for c in self.coco.dataset["categories"]]
            self._gt_dict = {"images": images, "annotations": anns, "categories": cats}
        return self._gt_dict
