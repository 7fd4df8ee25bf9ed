"""CocoDetection's flat records and ground truth equal what the per-image reading gave
(pycocotools' index, one ImageRecord per image, the annotation dicts kept), on the tiny
synthetic set and on generated files with crowd, degenerate and clipped boxes, empty images,
a repeated image id and segmentations; both readers (typed and stdlib) agree; the file's
contents are not kept."""

from __future__ import annotations

import contextlib
import gc
import io
import json
import math
import os
import pickle
import warnings
from pathlib import Path

import numpy as np
import pytest
from pycocotools.coco import COCO

from detmine.data import CocoDetection, DegenerateBoxWarning, build_dataset
from detmine.data._common import ImageRecord, clean_box
from detmine.data.coco_tables import _fast, _from_dict, load_coco_json
from detmine.data.flat_records import FlatRecords

CATEGORY_IDS = [1, 2, 5, 11, 13, 90]


def _reference(img_dir: str, ann_file: Path, keep_empty: bool = True) -> dict:
    """The per-image reading detmine did before the flat records (pycocotools' index)."""
    data = load_coco_json(ann_file)
    coco = COCO()
    coco.dataset = data
    with contextlib.redirect_stdout(io.StringIO()):
        coco.createIndex()
    cats = sorted(data["categories"], key=lambda c: c["id"])
    to_contiguous = {c: k for k, c in {k + 1: c["id"] for k, c in enumerate(cats)}.items()}
    records, anns, dropped = [], [], []
    for img_id in sorted(coco.imgs):
        img = coco.imgs[img_id]
        boxes, labels, ignore, valid = [], [], [], []
        for ann in coco.imgToAnns.get(img_id, []):
            x, y, bw, bh = (float(v) for v in ann["bbox"])
            box = clean_box(x, y, x + bw, y + bh, img["width"], img["height"])
            if box is None:
                dropped.append(f"{img['file_name']} annotation id {ann['id']} bbox: {ann['bbox']!r}")
                continue
            valid.append(ann)
            if ann.get("iscrowd", 0):
                ignore.append(box)
            else:
                boxes.append(box)
                labels.append(to_contiguous[ann["category_id"]])
        if keep_empty or labels:
            records.append(
                ImageRecord(
                    os.path.join(img_dir, img["file_name"]),
                    img["id"],
                    img["height"],
                    img["width"],
                    np.asarray(boxes, np.float32).reshape(-1, 4),
                    np.asarray(labels, np.int64),
                    np.asarray(ignore, np.float32).reshape(-1, 4),
                )  # fmt: skip
            )
            for a in valid:
                x, y, w, h = (float(v) for v in a["bbox"])
                anns.append(
                    {"id": a["id"], "image_id": a["image_id"], "category_id": a["category_id"],
                     "bbox": [x, y, w, h], "area": float(a.get("area", w * h)), "iscrowd": int(a.get("iscrowd", 0))}
                )  # fmt: skip
    return {
        "records": records,
        "annotations": anns,
        "dropped": dropped,
        "images": [r.image_id for r in records],
    }


def _assert_same(ds: CocoDetection, ref: dict) -> None:
    assert isinstance(ds.records, FlatRecords)
    assert len(ds) == len(ref["records"]) and ds.image_ids == ref["images"]
    for i, (got, want) in enumerate(zip(ds.records, ref["records"], strict=True)):
        assert (got.path, got.image_id, got.height, got.width) == (
            want.path,
            want.image_id,
            want.height,
            want.width,
        )
        for name in ("boxes", "labels", "ignore_boxes"):
            a, b = getattr(got, name), getattr(want, name)
            assert a.dtype == b.dtype and a.shape == b.shape and np.array_equal(a, b), (i, name)
        assert ds.image_labels(i) == {int(v) for v in want.labels}
        assert ds.image_size(i) == (want.height, want.width)
    gt = ds.coco_gt_dict()
    assert gt["annotations"] == ref["annotations"]
    assert [img["id"] for img in gt["images"]] == ref["images"]
    assert ds.num_degenerate_boxes == len(ref["dropped"])


def _generate(path: Path, num_images: int = 200, seed: int = 0, **extra_ann) -> Path:
    """A COCO file with everything the reading has to handle (no images needed)."""
    rng = np.random.default_rng(seed)
    ids = rng.choice(np.arange(1, 10_000), num_images, replace=False).tolist()
    images = []
    for k, i in enumerate(ids):
        h, w = [(480, 640), (640, 427), (100, 90)][k % 3]
        images.append({"id": i, "file_name": f"{i:012d}.jpg", "height": h, "width": w, "license": 3})
    images.append({**images[5], "file_name": "repeated.jpg", "height": 50})  # a repeated id: the last wins
    anns = []
    for img in images:
        for _ in range(int(rng.integers(0, 7)) if rng.random() > 0.2 else 0):
            x, y = rng.uniform(-20, img["width"]), rng.uniform(-20, img["height"])
            w, h = rng.uniform(1, 200), rng.uniform(1, 200)
            kind = rng.random()
            if kind < 0.05:
                w = 0.0
            elif kind < 0.08:
                h = -3.0
            elif kind < 0.1:
                x = img["width"] + 5.0
            bbox = (
                [int(v) for v in (x, y, w, h)] if rng.random() < 0.3 else [round(v, 2) for v in (x, y, w, h)]
            )
            ann = {
                "id": len(anns) + 1,
                "image_id": img["id"],
                "category_id": int(rng.choice(CATEGORY_IDS)),
                "bbox": bbox,
                "segmentation": [[round(float(v), 2) for v in rng.uniform(0, 100, 16)]],
            }
            if rng.random() < 0.8:
                ann["area"] = round(float(rng.uniform(1, 5000)), 3)
            if rng.random() < 0.9:
                ann["iscrowd"] = int(rng.random() < 0.12)
            anns.append({**ann, **extra_ann})
    rng.shuffle(anns)
    cats = [{"id": c, "name": f"class_{c}", "supercategory": "x"} for c in reversed(CATEGORY_IDS)]
    path.write_text(json.dumps({"info": {}, "images": images, "annotations": anns, "categories": cats}))
    return path


def _build(img_dir: str, ann_file: Path, **kw) -> tuple[CocoDetection, list[str]]:
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        ds = CocoDetection(img_dir, ann_file, **kw)
    return ds, [str(w.message) for w in caught if issubclass(w.category, DegenerateBoxWarning)]


@pytest.mark.parametrize("keep_empty", [True, False])
def test_flat_records_equal_the_per_image_records_on_a_generated_file(tmp_path, keep_empty):
    ann_file = _generate(tmp_path / "instances.json")
    ds, messages = _build(str(tmp_path / "images"), ann_file, keep_empty=keep_empty)
    ref = _reference(str(tmp_path / "images"), ann_file, keep_empty)
    _assert_same(ds, ref)
    assert ref["dropped"] and any(len(r.ignore_boxes) for r in ref["records"])
    assert any(len(r.labels) == 0 for r in ref["records"]) == keep_empty
    # one warning, the same count and the same first example (ints as written)
    assert len(messages) == 1
    assert f"dropped {len(ref['dropped'])} degenerate" in messages[0]
    assert messages[0].endswith(f"e.g. {ref['dropped'][0]}")
    repeated = json.loads(ann_file.read_text())["images"][-1]["id"]
    if keep_empty or repeated in ds.image_ids:
        rec = ds.records[ds.image_ids.index(repeated)]
        assert rec.path.endswith("repeated.jpg") and rec.height == 50


@pytest.mark.parametrize("split", ["train", "val"])
def test_flat_records_equal_the_per_image_records_on_the_tiny_set(tiny_coco_root, split):
    ds = build_dataset("coco", tiny_coco_root, split)
    ann_file = tiny_coco_root / "annotations" / f"instances_{split}.json"
    _assert_same(ds, _reference(ds.img_dir, ann_file))


def test_the_typed_and_the_stdlib_readers_agree(tmp_path):
    ann_file = _generate(tmp_path / "instances.json", seed=3)
    fast, slow = _fast(ann_file), _from_dict(ann_file, load_coco_json(ann_file))
    assert fast is not None
    for name in ("image_ids", "heights", "widths", "ann_ids", "ann_image_ids", "ann_category_ids", "crowd"):
        a, b = getattr(fast, name), getattr(slow, name)
        assert a.dtype == b.dtype and np.array_equal(a, b), name
    for name in ("bboxes", "areas"):
        np.testing.assert_array_equal(getattr(fast, name), getattr(slow, name))
    assert fast.file_names == slow.file_names and fast.categories == slow.categories
    assert all(fast.bbox_as_written(j) == slow.bbox_as_written(j) for j in range(len(fast.ann_ids)))


@pytest.mark.parametrize(
    "extra, typed",
    [
        ({"iscrowd": True}, True),
        ({"iscrowd": 1.0}, False),  # the typed decode refuses it: json reads it
        ({"area": "12.5"}, False),
        ({"id": "a string id"}, False),
    ],
)
def test_unusual_values_read_as_before(tmp_path, extra, typed):
    ann_file = _generate(tmp_path / "instances.json", num_images=40, seed=1, **extra)
    assert (_fast(ann_file) is not None) == typed
    ds, _ = _build(str(tmp_path), ann_file)
    ref = _reference(str(tmp_path), ann_file)
    if "id" in extra:  # every annotation has the same id: only the count and the boxes compare
        assert [a["bbox"] for a in ds.coco_gt_dict()["annotations"]] == [
            a["bbox"] for a in ref["annotations"]
        ]
        ref["annotations"] = ds.coco_gt_dict()["annotations"]
    _assert_same(ds, ref)


def test_nan_boxes_take_the_stdlib_path_and_are_dropped(tmp_path):
    ann_file = _generate(tmp_path / "instances.json", num_images=30, seed=2)
    data = json.loads(ann_file.read_text())
    data["annotations"][0]["bbox"][2] = math.nan
    ann_file.write_text(json.dumps(data))  # a NaN literal: valid for json, not for JSON
    assert _fast(ann_file) is None
    ds, messages = _build(str(tmp_path), ann_file)
    _assert_same(ds, _reference(str(tmp_path), ann_file))
    assert len(messages) == 1


def test_the_file_contents_are_not_kept(tmp_path):
    ann_file = _generate(tmp_path / "instances.json", seed=4)
    ds, _ = _build(str(tmp_path), ann_file)
    gc.collect()
    kept = [o for o in gc.get_objects() if type(o) is dict and "segmentation" in o and "bbox" in o]
    assert kept == []
    assert not any(
        isinstance(v, (list, dict)) and len(v) > 100 for v in vars(ds).values() if v is not ds.image_ids
    )
    # the records pickle as their buffers: a few dozen bytes per box, not per-object overhead
    boxes = len(ds.records.boxes) + len(ds.records.ignore_boxes)
    assert len(pickle.dumps(ds.records)) < 4096 + 64 * boxes + 64 * len(ds)


def test_flat_records_from_records_index_like_a_list():
    recs = [
        ImageRecord("a/1.jpg", 7, 10, 20, np.array([[1, 2, 3, 4]], np.float32), np.array([3]), np.zeros((0, 4), np.float32)),
        ImageRecord("b/ü.jpg", 9, 30, 40, np.zeros((0, 4), np.float32), np.zeros(0, np.int64), np.ones((2, 4), np.float32)),
    ]  # fmt: skip
    flat = FlatRecords.from_records(recs)
    assert len(flat) == 2 and flat[-1].path == "b/ü.jpg" and flat[0].image_id == 7
    assert [r.path for r in flat[0:2]] == ["a/1.jpg", "b/ü.jpg"]
    np.testing.assert_array_equal(flat[1].ignore_boxes, np.ones((2, 4)))
    assert flat.labels_of(0).tolist() == [3] and flat.size_of(1) == (30, 40)
    flat[0].boxes[:] = 0  # a record's arrays are copies
    assert flat[0].boxes.tolist() == [[1, 2, 3, 4]]
    with pytest.raises(IndexError):
        flat[2]
