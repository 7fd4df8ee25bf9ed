"""CocoDetection and build_dataset("coco" | "synthetic") on tiny data in the real COCO layout."""

from __future__ import annotations

import contextlib
import io
import json
import shutil
import warnings
from pathlib import Path

import cv2
import numpy as np
import pytest
import torch
from pycocotools.coco import COCO
from pycocotools.cocoeval import COCOeval

from detmine.data import CocoDetection, DegenerateBoxWarning, SkippedSample, build_dataset
from detmine.errors import ConfigError, DataError

CATS = [{"id": 3, "name": "cat"}, {"id": 17, "name": "dog"}, {"id": 90, "name": "toaster"}]


def _write_set(root: Path, anns: list[dict], n_images: int = 3, cats=CATS) -> tuple[Path, Path]:
    """Images of 48x64 (h x w) in root/images/train and an instances json; returns (img_dir, ann_file)."""
    img_dir = root / "images" / "train"
    img_dir.mkdir(parents=True, exist_ok=True)
    images = []
    for i in range(1, n_images + 1):
        cv2.imwrite(str(img_dir / f"{i:04d}.jpg"), np.full((48, 64, 3), 40 * i, np.uint8))
        images.append({"id": i, "file_name": f"{i:04d}.jpg", "height": 48, "width": 64})
    ann_file = root / "annotations" / "instances_train.json"
    ann_file.parent.mkdir(parents=True, exist_ok=True)
    ann_file.write_text(json.dumps({"images": images, "annotations": anns, "categories": cats}))
    return img_dir, ann_file


def _ann(aid, image_id, cat, bbox, **kw):
    return {
        "id": aid,
        "image_id": image_id,
        "category_id": cat,
        "bbox": bbox,
        "area": 1.0,
        "iscrowd": 0,
        **kw,
    }


def test_synthetic_set_reads_with_mapping_boxes_and_empty_images(tiny_coco_root):
    ds = build_dataset("synthetic", tiny_coco_root, "train")
    raw = json.loads((tiny_coco_root / "annotations" / "instances_train.json").read_text())
    assert len(ds) == len(raw["images"]) == 12
    assert ds.num_classes == 6 and ds.class_names[0] == "circle"
    # non-contiguous category ids 1,2,3,5,7,9 <-> contiguous 1..6, both ways
    assert ds.contiguous_to_category_id == {1: 1, 2: 2, 3: 3, 4: 5, 5: 7, 6: 9}
    assert all(ds.contiguous_to_category_id[ds.category_id_to_contiguous[c]] == c for c in (1, 2, 3, 5, 7, 9))
    by_image: dict[int, list] = {}
    for a in raw["annotations"]:
        by_image.setdefault(a["image_id"], []).append(a)
    n_empty = 0
    for i in range(len(ds)):
        image, target = ds[i]
        assert image.dtype == torch.uint8 and image.shape == (3, 128, 128)
        assert target["orig_size"] == target["input_size"] == ds.image_size(i) == (128, 128)
        anns = sorted(by_image.get(ds.image_ids[i], []), key=lambda a: a["id"])
        expect = torch.tensor([[x, y, x + w, y + h] for x, y, w, h in (a["bbox"] for a in anns)]).reshape(
            -1, 4
        )
        torch.testing.assert_close(target["boxes"], expect.float())
        cats = [ds.contiguous_to_category_id[int(v)] for v in target["labels"]]
        assert cats == [a["category_id"] for a in anns]
        assert ds.image_labels(i) == set(target["labels"].tolist())
        assert target["image_id"] == ds.image_ids[i]
        n_empty += len(anns) == 0
    assert n_empty == 4  # images without objects are kept


def test_coco_gt_dict_is_original_ground_truth(tiny_coco_root):
    """Scoring the ground truth against itself with pycocotools gives AP = 1 (ids/pixels preserved)."""
    ds = build_dataset("coco", tiny_coco_root, "val")
    gt_dict = ds.coco_gt_dict()
    raw = json.loads((tiny_coco_root / "annotations" / "instances_val.json").read_text())
    assert gt_dict["annotations"] == raw["annotations"]
    assert [c["id"] for c in gt_dict["categories"]] == [1, 2, 3, 5, 7, 9]
    with contextlib.redirect_stdout(io.StringIO()):
        gt = COCO()
        gt.dataset = gt_dict
        gt.createIndex()
        dets = [{"image_id": a["image_id"], "category_id": a["category_id"], "bbox": a["bbox"], "score": 1.0}
                for a in gt_dict["annotations"]]  # fmt: skip
        ev = COCOeval(gt, gt.loadRes(dets), "bbox")
        ev.evaluate()
        ev.accumulate()
        ev.summarize()
    assert ev.stats[0] == pytest.approx(1.0)


def test_crowd_becomes_ignore_and_degenerate_boxes_dropped_with_one_warning(tmp_path):
    anns = [
        _ann(1, 1, 17, [10, 5, 20, 10]),
        _ann(2, 1, 3, [0, 0, 64, 48], iscrowd=1),
        _ann(3, 2, 90, [5, 5, 0, 10]),  # zero width
        _ann(4, 2, 90, [5, 5, 10, -3]),  # negative height
        _ann(5, 2, 3, [100, 100, 5, 5]),  # fully outside the 64x48 image
        _ann(6, 3, 3, [50, 40, 30, 30]),  # partly outside: clipped to the image
    ]
    img_dir, ann_file = _write_set(tmp_path, anns)
    with pytest.warns(DegenerateBoxWarning) as rec:
        ds = CocoDetection(img_dir, ann_file)
    assert len(rec) == 1
    msg = str(rec[0].message)
    assert "dropped 3 degenerate" in msg and "annotation id 3" in msg and "0002.jpg" in msg
    assert ds.num_degenerate_boxes == 3
    _, t0 = ds[0]
    torch.testing.assert_close(t0["boxes"], torch.tensor([[10.0, 5.0, 30.0, 15.0]]))
    assert t0["labels"].tolist() == [2]  # category 17 -> contiguous 2
    torch.testing.assert_close(t0["ignore_boxes"], torch.tensor([[0.0, 0.0, 64.0, 48.0]]))
    _, t1 = ds[1]
    assert t1["boxes"].shape == (0, 4) and t1["labels"].shape == (0,) and t1["ignore_boxes"].shape == (0, 4)
    _, t2 = ds[2]
    torch.testing.assert_close(t2["boxes"], torch.tensor([[50.0, 40.0, 64.0, 48.0]]))
    assert ds.image_labels(0) == {2} and ds.image_labels(1) == set()
    assert {a["id"] for a in ds.coco_gt_dict()["annotations"]} == {1, 2, 6}
    with pytest.warns(DegenerateBoxWarning):
        kept = CocoDetection(img_dir, ann_file, keep_empty=False)
    assert kept.image_ids == [1, 3]


def test_non_finite_bbox_is_dropped(tmp_path):
    img_dir, ann_file = _write_set(
        tmp_path, [_ann(1, 1, 3, [1, 2, 3, 4]), _ann(2, 1, 3, [float("nan"), 2, 3, 4])]
    )
    with pytest.warns(DegenerateBoxWarning, match="dropped 1 .*annotation id 2"):
        ds = CocoDetection(img_dir, ann_file)
    assert len(ds[0][1]["boxes"]) == 1


def test_missing_and_corrupt_images_are_skipped_and_counted_or_raise(tmp_path):
    img_dir, ann_file = _write_set(tmp_path, [_ann(1, 1, 3, [1, 2, 3, 4])])
    (img_dir / "0002.jpg").write_bytes(b"\x00garbage, not a jpeg" * 10)
    (img_dir / "0003.jpg").unlink()
    ds = CocoDetection(img_dir, ann_file)
    assert ds[0]
    # a skip is a falsy marker with the reason (it travels back from loader workers), no warning
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        corrupt, missing = ds[1], ds[2]
    assert isinstance(corrupt, SkippedSample) and not corrupt
    assert corrupt.path.endswith("0002.jpg") and "decoded" in corrupt.reason
    assert (corrupt.kind, corrupt.index) == ("unreadable", 1)
    assert str(missing).endswith("0003.jpg (file not found)") and missing.kind == "missing"
    assert ds.num_bad_images == 2 and len(ds.bad_images) == 2
    strict = CocoDetection(img_dir, ann_file, on_bad_image="error")
    with pytest.raises(DataError, match="0002.jpg"):
        strict[1]
    with pytest.raises(DataError, match="0003.jpg"):
        strict[2]
    with pytest.raises(DataError, match="on_bad_image"):
        CocoDetection(img_dir, ann_file, on_bad_image="ignore")


@pytest.mark.parametrize(
    "bad_ann, expected",
    [
        (_ann(7, 1, 4, [1, 2, 3, 4]), r"annotation id 7: unknown category_id 4"),
        (_ann(7, 1, 3, [1, 2, 3]), r"annotation id 7: malformed bbox \[1, 2, 3\]"),
        (_ann(7, 1, 3, [1, 2, "3", 4]), r"annotation id 7: malformed bbox"),
        (_ann(7, 1, 3, None), r"annotation id 7: malformed bbox None"),
        (_ann(7, 99, 3, [1, 2, 3, 4]), r"annotation id 7: unknown image_id 99"),
    ],
)
def test_bad_annotations_give_one_line_data_error(tmp_path, bad_ann, expected):
    img_dir, ann_file = _write_set(tmp_path, [_ann(1, 1, 3, [1, 2, 3, 4]), bad_ann])
    with pytest.raises(DataError, match=expected) as e:
        CocoDetection(img_dir, ann_file)
    assert str(ann_file) in str(e.value) and "\n" not in str(e.value)


def test_unreadable_invalid_or_empty_json(tmp_path):
    img_dir, ann_file = _write_set(tmp_path, [])
    with pytest.raises(DataError, match="nothing.json: cannot read"):
        CocoDetection(img_dir, tmp_path / "nothing.json")
    ann_file.write_text('{"images": [')
    with pytest.raises(DataError, match="instances_train.json: not valid JSON"):
        CocoDetection(img_dir, ann_file)
    ann_file.write_text(json.dumps({"images": [], "annotations": [], "categories": CATS}))
    with pytest.raises(DataError, match="empty"):
        CocoDetection(img_dir, ann_file)
    ann_file.write_text(json.dumps({"annotations": [], "categories": CATS}))
    with pytest.raises(DataError, match="'images'"):
        CocoDetection(img_dir, ann_file)


def test_transform_runs_on_numpy_then_tensors(tmp_path):
    img_dir, ann_file = _write_set(
        tmp_path, [_ann(1, 1, 90, [10, 5, 20, 10]), _ann(2, 1, 3, [0, 0, 8, 8], iscrowd=1)]
    )
    seen = {}

    def hflip(image, boxes, labels, ignore_boxes):
        seen.update(image=type(image), dtype=image.dtype, boxes=boxes.dtype, labels=labels.dtype)
        w = image.shape[1]
        flip = lambda b: np.stack([w - b[:, 2], b[:, 1], w - b[:, 0], b[:, 3]], 1)  # noqa: E731
        return dict(
            image=image[:, ::-1, :][:32], boxes=flip(boxes), labels=labels, ignore_boxes=flip(ignore_boxes)
        )

    _, target = CocoDetection(img_dir, ann_file, transform=hflip)[0]
    assert seen == dict(image=np.ndarray, dtype=np.uint8, boxes=np.float32, labels=np.int64)
    torch.testing.assert_close(target["boxes"], torch.tensor([[34.0, 5.0, 54.0, 15.0]]))
    torch.testing.assert_close(target["ignore_boxes"], torch.tensor([[56.0, 0.0, 64.0, 8.0]]))
    assert target["labels"].dtype == torch.int64 and target["labels"].tolist() == [3]
    assert target["orig_size"] == (48, 64) and target["input_size"] == (32, 64)


def test_build_dataset_layouts_and_errors(tmp_path, tiny_coco_root):
    img_dir, ann_file = _write_set(tmp_path, [_ann(1, 1, 3, [1, 2, 3, 4])])
    assert len(build_dataset("coco", tmp_path, "train")) == 3  # root/images/train
    flat = tmp_path / "flat"
    shutil.copytree(img_dir, flat / "train")
    shutil.copytree(ann_file.parent, flat / "annotations")
    assert build_dataset("coco", flat, "train")[0][1]["labels"].tolist() == [1]  # root/train
    assert len(build_dataset("coco", tmp_path / "x", "train", img_dir=img_dir, ann_file=ann_file)) == 3
    with pytest.raises(DataError, match="no image folder for split 'val'"):
        build_dataset("coco", tmp_path, "val")
    with pytest.raises(ConfigError, match="unknown dataset kind 'yolo'"):
        build_dataset("yolo", tmp_path, "train")
    with pytest.raises(ConfigError, match=r"unknown option\(s\) \['keep_difficult_as_ignore'\]"):
        build_dataset("coco", tmp_path, "train", keep_difficult_as_ignore=True)
    # an existing synthetic set is read as is (no regeneration with default parameters)
    assert len(build_dataset("synthetic", tiny_coco_root, "val")) == 6
