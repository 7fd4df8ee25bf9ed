"""Augmentation presets: boxes stay consistent with the pixels of their objects.

Each fake sample carries one binary mask per object and per ignore region; the
mask goes through the very same albumentations geometry (``masks=``) and the tight
bbox of what is left of it must equal the transformed box.
"""

from __future__ import annotations

import albumentations as A
import numpy as np
import pytest
import torch
from torchvision.ops import box_iou

from detmine.data.min_iou_crop import MinIoURandomCrop
from detmine.data.transforms import ResizeShortestEdge, ZoomOut, build_transforms
from detmine.errors import ConfigError, DataError

TOL = 2.0  # px: nearest-neighbour mask resampling vs exact box arithmetic


def make_sample(
    rng: np.random.Generator,
    height: int,
    width: int,
    n_obj: int,
    n_ignore: int,
    big: bool = False,
    ellipses: bool = False,
):
    """Image with filled rectangles (or ellipses); boxes are the shapes' exact pixel extents."""
    image = rng.integers(0, 255, (height, width, 3), dtype=np.uint8)
    rects, masks = [], []
    for _ in range(n_obj + n_ignore):
        w = int(rng.integers(width // 2 if big else 6, width if big else width // 2))
        h = int(rng.integers(height // 2 if big else 6, height if big else height // 2))
        x0 = int(rng.integers(0, width - w))
        y0 = int(rng.integers(0, height - h))
        mask = np.zeros((height, width), np.uint8)
        if ellipses:
            yy, xx = np.mgrid[:height, :width]
            inside = ((xx + 0.5 - x0 - w / 2) / (w / 2)) ** 2 + ((yy + 0.5 - y0 - h / 2) / (h / 2)) ** 2 <= 1
            mask[inside] = 1
        else:
            mask[y0 : y0 + h, x0 : x0 + w] = 1
        image[mask > 0] = rng.integers(0, 255, 3, dtype=np.uint8)
        rects.append([x0, y0, x0 + w, y0 + h])
        masks.append(mask)
    rects_np = np.array(rects, np.float32).reshape(-1, 4)
    boxes, ignore = rects_np[:n_obj], rects_np[n_obj:]
    labels = np.arange(1, n_obj + 1, dtype=np.int64)  # label k <-> masks[k - 1]
    return image, boxes, labels, ignore, masks


def tight_box(mask: np.ndarray) -> np.ndarray | None:
    ys, xs = np.nonzero(mask)
    if len(xs) == 0:
        return None
    return np.array([xs.min(), ys.min(), xs.max() + 1, ys.max() + 1], np.float32)


def check_consistent(out: dict, n_obj: int, *, all_kept: bool) -> None:
    image, boxes, labels, ignore = out["image"], out["boxes"], out["labels"], out["ignore_boxes"]
    masks = out["masks"]
    height, width = image.shape[:2]
    assert image.dtype == np.uint8 and image.shape[2] == 3
    assert boxes.dtype == np.float32 and boxes.shape == (len(labels), 4)
    assert labels.dtype == np.int64 and ignore.dtype == np.float32 and ignore.shape[1] == 4
    for b in np.concatenate([boxes, ignore]):
        assert 0 <= b[0] < b[2] <= width and 0 <= b[1] < b[3] <= height, b
    assert len(set(labels.tolist())) == len(labels) and ((labels >= 1) & (labels <= n_obj)).all()
    for box, label in zip(boxes, labels, strict=True):
        tight = tight_box(masks[label - 1])
        if tight is None:  # object thinner than a pixel after downscaling
            assert min(box[2] - box[0], box[3] - box[1]) < TOL
            continue
        np.testing.assert_allclose(box, tight, atol=TOL, err_msg=f"label {label}")
    ignore_tight = [tight_box(m) for m in masks[n_obj:]]
    for box in ignore:
        dists = [np.abs(box - t).max() for t in ignore_tight if t is not None]
        assert dists and min(dists) <= TOL, (box, ignore_tight)
    if all_kept:  # no crop: every object / region with visible pixels keeps its box
        visible = [k + 1 for k in range(n_obj) if masks[k].any()]
        big = [t for t in ignore_tight if t is not None and min(t[2] - t[0], t[3] - t[1]) >= TOL + 1]
        assert sorted(labels.tolist()) == visible
        assert len(ignore) >= len(big)


@pytest.mark.parametrize(
    ("preset", "opts", "all_kept"),
    [
        ("ssd", {}, False),
        ("retinanet", {"max_size": 100}, True),
        ("retinanet", {"square": True}, True),
        ("eval", {}, True),
        ("eval", {"square": False, "max_size": 100}, True),
    ],
)
def test_boxes_follow_object_pixels(preset: str, opts: dict, all_kept: bool) -> None:
    rng = np.random.default_rng(0)
    transform = build_transforms(preset, 64, seed=0, **opts)
    kept = 0
    for _ in range(150):
        h, w = int(rng.integers(48, 128)), int(rng.integers(48, 128))
        n_obj, n_ign = int(rng.integers(0, 5)), int(rng.integers(0, 3))
        image, boxes, labels, ignore, masks = make_sample(rng, h, w, n_obj, n_ign)
        out = transform(image, boxes, labels, ignore, masks=masks)
        check_consistent(out, n_obj, all_kept=all_kept)
        kept += len(out["boxes"])
        oh, ow = out["image"].shape[:2]
        if preset == "ssd" or opts.get("square") or (preset == "eval" and "square" not in opts):
            assert (oh, ow) == (64, 64)
        else:
            scale = min(64 / min(h, w), 100 / max(h, w))
            assert (oh, ow) == (round(h * scale), round(w * scale))
    assert kept > 100  # the check above ran on real boxes


def test_ssd_preset_is_random_but_seeded() -> None:
    rng = np.random.default_rng(1)
    image, boxes, labels, ignore, _ = make_sample(rng, 96, 96, 3, 1)
    outs = [build_transforms("ssd", 64, seed=5)(image, boxes, labels, ignore) for _ in range(2)]
    np.testing.assert_array_equal(outs[0]["image"], outs[1]["image"])
    np.testing.assert_array_equal(outs[0]["boxes"], outs[1]["boxes"])
    transform = build_transforms("ssd", 64, seed=5)
    runs = [transform(image, boxes, labels, ignore)["boxes"] for _ in range(10)]
    assert any(r.shape != runs[0].shape or not np.allclose(r, runs[0]) for r in runs[1:])


def test_eval_is_deterministic_and_flip_flips() -> None:
    rng = np.random.default_rng(2)
    image, boxes, labels, ignore, _ = make_sample(rng, 80, 120, 3, 1)
    a = build_transforms("eval", 64, square=False, seed=1)(image, boxes, labels, ignore)
    b = build_transforms("eval", 64, square=False, seed=2)(image, boxes, labels, ignore)
    np.testing.assert_array_equal(a["image"], b["image"])
    np.testing.assert_allclose(a["boxes"], boxes * (64 / 80), rtol=1e-2)
    flip = build_transforms("retinanet", 80, flip_p=1.0, max_size=1000)(image, boxes, labels, ignore)
    expected = boxes.copy()
    expected[:, [0, 2]] = 120 - boxes[:, [2, 0]]
    np.testing.assert_allclose(flip["boxes"], expected, atol=1e-3)
    np.testing.assert_array_equal(flip["image"], image[:, ::-1])


@pytest.mark.parametrize("preset", ["ssd", "retinanet"])
def test_boxes_enclose_cut_ellipses(preset: str) -> None:
    """Non-rectangular objects: a box cut by the crop is clipped, so it must enclose what is left."""
    rng = np.random.default_rng(4)
    transform = build_transforms(preset, 64, seed=1, max_size=100)
    checked = 0
    for _ in range(80):
        n_obj = int(rng.integers(1, 5))
        image, boxes, labels, ignore, masks = make_sample(rng, 96, 112, n_obj, 0, ellipses=True)
        out = transform(image, boxes, labels, ignore, masks=masks)
        for box, label in zip(out["boxes"], out["labels"], strict=True):
            tight = tight_box(out["masks"][label - 1])
            if tight is None:
                continue
            assert (tight[:2] >= box[:2] - TOL).all() and (tight[2:] <= box[2:] + TOL).all(), (box, tight)
            checked += 1
    assert checked > 80


def test_images_without_objects_survive_every_preset() -> None:
    image = np.full((70, 90, 3), 100, np.uint8)
    for preset in ("ssd", "retinanet", "eval"):
        transform = build_transforms(preset, 64, seed=0)
        for _ in range(30):
            out = transform(image, np.zeros((0, 4), np.float32), np.zeros(0, np.int64), None)
            assert out["boxes"].shape == (0, 4) and out["labels"].shape == (0,)
            assert out["ignore_boxes"].shape == (0, 4)
            assert out["image"].dtype == np.uint8 and min(out["image"].shape[:2]) == 64


def crop_compose(**kwargs) -> A.Compose:
    return A.Compose(
        [MinIoURandomCrop(**kwargs)],
        bbox_params=A.BboxParams(format="pascal_voc", label_fields=["labels"]),
        seed=0,
        save_applied_params=True,
    )


@pytest.mark.parametrize(("threshold", "big"), [(0.1, False), (0.5, False), (0.7, True), (0.9, True)])
def test_min_iou_crop_honours_its_threshold(threshold: float, big: bool) -> None:
    rng = np.random.default_rng(3)
    crop = crop_compose(min_ious=(threshold,))
    cropped = 0
    for _ in range(60):
        image, boxes, labels, _, _ = make_sample(rng, 100, 120, int(rng.integers(1, 4)), 0, big=big)
        out = crop(image=image, bboxes=boxes, labels=labels)
        x0, y0, x1, y1 = out["applied_transforms"][0][1]["crop_coords"]
        assert out["image"].shape[:2] == (y1 - y0, x1 - x0)
        if (x0, y0, x1, y1) == (0, 0, 120, 100):
            continue  # every attempt failed: the image is left whole
        cropped += 1
        assert 0.5 <= (x1 - x0) / (y1 - y0) <= 2.0
        assert x1 - x0 >= int(0.3 * 120) and y1 - y0 >= int(0.3 * 100)
        cx, cy = (boxes[:, 0] + boxes[:, 2]) / 2, (boxes[:, 1] + boxes[:, 3]) / 2
        inside = (x0 < cx) & (cx < x1) & (y0 < cy) & (cy < y1)
        assert inside.any()
        iou = box_iou(torch.tensor([[x0, y0, x1, y1]], dtype=torch.float32), torch.from_numpy(boxes[inside]))
        assert iou.max() >= threshold - 1e-6
        # exactly the boxes whose centre is inside survive, clipped and shifted, labels aligned
        assert sorted(out["labels"].tolist()) == sorted(labels[inside].tolist())
        expected = boxes[inside] - np.array([x0, y0, x0, y0], np.float32)
        expected[:, 0::2] = expected[:, 0::2].clip(0, x1 - x0)
        expected[:, 1::2] = expected[:, 1::2].clip(0, y1 - y0)
        order = np.argsort(out["labels"])
        np.testing.assert_allclose(
            np.asarray(out["bboxes"])[order], expected[np.argsort(labels[inside])], atol=1e-3
        )
    assert cropped >= 20


def test_min_iou_crop_none_option_and_ignore_regions() -> None:
    image = np.zeros((100, 100, 3), np.uint8)
    boxes = np.array([[10, 10, 40, 40], [0, 50, 100, 100]], np.float32)
    out = crop_compose(min_ious=(None,))(image=image, bboxes=boxes, labels=np.array([1, 2]))
    assert out["image"].shape == (100, 100, 3) and len(out["bboxes"]) == 2
    # ignore regions (label -1) neither satisfy the IoU rule nor need their centre inside
    crop = crop_compose(min_ious=(0.0,), ignore_label=-1)
    for _ in range(20):
        out = crop(image=image, bboxes=boxes, labels=np.array([1, -1]))
        x0, y0, x1, y1 = out["applied_transforms"][0][1]["crop_coords"]
        assert x0 <= 25 <= x1 and y0 <= 25 <= y1  # centre of the only real box (float32 round trip)
        assert (-1 in out["labels"]) == (y1 > 50)


def test_zoom_out_and_shortest_edge() -> None:
    compose = A.Compose(
        [ZoomOut(max_scale=3.0, fill=(7, 8, 9), p=1.0)],
        bbox_params=A.BboxParams(format="pascal_voc", label_fields=["labels"]),
        seed=0,
    )
    image = np.full((40, 50, 3), 200, np.uint8)
    for _ in range(10):
        out = compose(image=image, bboxes=np.array([[0, 0, 50, 40]], np.float32), labels=[1])
        h, w = out["image"].shape[:2]
        assert 40 <= h <= 120 and 50 <= w <= 150 and abs(h / w - 0.8) < 0.05
        x0, y0, x1, y1 = np.asarray(out["bboxes"][0]).round().astype(int)
        assert (out["image"][y0:y1, x0:x1] == 200).all() and (x1 - x0, y1 - y0) == (50, 40)
        assert (out["image"] != 200).any(axis=2).sum() == h * w - 2000
    resize = A.Compose([ResizeShortestEdge(60, max_size=100)])
    assert resize(image=image)["image"].shape[:2] == (60, 75)
    assert resize(image=np.zeros((40, 200, 3), np.uint8))["image"].shape[:2] == (20, 100)


def test_bad_arguments_are_one_line_errors() -> None:
    with pytest.raises(
        ConfigError, match=r"config key 'data\.train_transform' is 'yolo'; valid: 'ssd', 'retinanet', 'eval'"
    ):
        build_transforms("yolo", 64)
    with pytest.raises(ConfigError, match="image_size"):
        build_transforms("ssd", 0)
    with pytest.raises(ConfigError, match="square"):
        build_transforms("ssd", 64, square=False)
    transform = build_transforms("eval", 64)
    with pytest.raises(DataError, match="uint8"):
        transform(np.zeros((10, 10), np.uint8), np.zeros((0, 4)), np.zeros(0), None)
    with pytest.raises(DataError, match="2 boxes but 1 labels"):
        transform(np.zeros((10, 10, 3), np.uint8), np.zeros((2, 4)), np.zeros(1), None)


def test_retinanet_multiscale_picks_each_short_side() -> None:
    transform = build_transforms("retinanet", [48, 64], max_size=1000, seed=0)
    image = np.zeros((60, 90, 3), np.uint8)
    boxes = np.array([[30, 15, 60, 45]], np.float32)
    shorts = set()
    for _ in range(20):
        out = transform(image, boxes, np.array([1]), None)
        short = out["image"].shape[0]
        shorts.add(short)
        assert out["image"].shape[1] == round(90 * short / 60)
        np.testing.assert_allclose(
            out["boxes"], boxes * short / 60, atol=0.5
        )  # symmetric box: flip-invariant
    assert shorts == {48, 64}
    with pytest.raises(ConfigError, match="takes one image_size"):
        build_transforms("eval", [48, 64])
