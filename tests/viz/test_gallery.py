import numpy as np
import pytest
import torch

from detmine.viz.gallery import HardNegativeGallery, false_positive_mask

GT = torch.tensor([[10.0, 10.0, 30.0, 30.0]])
GT_LABELS = torch.tensor([1])


def _target(boxes=GT, labels=GT_LABELS, ignore=None, image_id=1):
    return {
        "boxes": boxes,
        "labels": labels,
        "ignore_boxes": torch.zeros((0, 4)) if ignore is None else ignore,
        "image_id": image_id,
        "orig_size": (64, 64),
        "input_size": (64, 64),
    }


def _dets(boxes, scores, labels):
    return {
        "boxes": torch.tensor(boxes, dtype=torch.float32).reshape(-1, 4),
        "scores": torch.tensor(scores, dtype=torch.float32),
        "labels": torch.tensor(labels, dtype=torch.long),
    }


def test_false_positive_mask_by_hand():
    preds = torch.tensor(
        [
            [10.0, 10.0, 30.0, 30.0],  # on the GT: IoU 1 -> not FP
            [12.0, 12.0, 32.0, 32.0],  # IoU 324/476 = 0.68 -> not FP
            [20.0, 10.0, 40.0, 30.0],  # IoU 200/600 = 0.33 -> FP
            [40.0, 40.0, 60.0, 60.0],  # background -> FP
            [45.0, 0.0, 55.0, 10.0],  # inside the ignore region -> not FP
            [10.0, 10.0, 30.0, 30.0],  # on the GT with the wrong class
        ]
    )
    labels = torch.tensor([1, 1, 1, 2, 1, 2])
    ignore = torch.tensor([[40.0, 0.0, 64.0, 12.0]])
    fp = false_positive_mask(preds, labels, GT, GT_LABELS, ignore)
    assert fp.tolist() == [False, False, True, True, False, False]
    fp_cls = false_positive_mask(preds, labels, GT, GT_LABELS, ignore, class_aware=True)
    assert fp_cls.tolist() == [False, False, True, True, False, True]
    # without GT every prediction off the ignore regions is a false positive
    assert false_positive_mask(preds, labels, GT[:0], GT_LABELS[:0]).all()
    assert false_positive_mask(preds[:0], labels[:0], GT, GT_LABELS).numel() == 0


def test_ignore_region_rule_uses_area_of_the_prediction():
    big_region = torch.tensor([[0.0, 0.0, 64.0, 64.0]])
    pred = torch.tensor([[40.0, 40.0, 50.0, 50.0], [50.0, 50.0, 80.0, 80.0]])  # inside / 14^2/30^2 = 0.22
    fp = false_positive_mask(pred, torch.tensor([1, 1]), GT[:0], GT_LABELS[:0], big_region)
    assert fp.tolist() == [False, True]


def test_gallery_keeps_the_highest_scoring_false_positives_sorted():
    img = np.zeros((64, 64, 3), np.uint8)
    g = HardNegativeGallery(max_items=3, tile_size=48, class_names=["cat", "dog"])
    # image 1: a true positive with the highest score of all, and two FPs
    n1 = g.add(
        img,
        _dets([[10, 10, 30, 30], [40, 40, 60, 60], [0, 40, 20, 60]], [0.99, 0.5, 0.9], [1, 2, 1]),
        _target(),
    )
    # image 2 (background only): three FPs
    n2 = g.add(
        img,
        _dets([[5, 5, 20, 20], [30, 30, 50, 50], [40, 0, 60, 20]], [0.7, 0.2, 0.95], [2, 1, 1]),
        _target(GT[:0], GT_LABELS[:0], image_id=2),
    )
    assert (n1, n2) == (2, 3) and g.num_false_positives == 5
    assert [round(it.score, 2) for it in g.items] == [0.95, 0.9, 0.7]
    assert [(it.image_id, it.label) for it in g.items] == [(2, 1), (1, 1), (2, 2)]
    js = g.to_json()
    assert js[0] == {
        "image_id": 2,
        "label": 1,
        "class": "cat",
        "score": pytest.approx(0.95),
        "box_xyxy": [40, 0, 60, 20],
    }
    assert js[2]["class"] == "dog"
    grid = g.render(columns=2)
    th, tw = g.items[0].tile.shape[:2]
    assert tw == 48 and th > 48
    assert grid.shape == (2 * th, 2 * tw, 3)
    np.testing.assert_array_equal(grid[:th, :tw], g.items[0].tile)
    np.testing.assert_array_equal(grid[:th, tw:], g.items[1].tile)


def test_tile_is_a_crop_around_the_false_positive():
    img = np.zeros((128, 128, 3), np.uint8)
    img[70:90, 20:40] = (0, 0, 255)  # a blue patch where the model fires
    g = HardNegativeGallery(max_items=4, tile_size=64)
    g.add(img, _dets([[20, 70, 40, 90]], [0.8], [1]), _target())
    tile = g.items[0].tile
    assert tuple(tile[32, 32]) == (0, 0, 255)  # centre of the crop area is the patch
    # the context margin (25% of the box) around it is image background, not the patch
    assert tuple(tile[32, 3]) != (0, 0, 255)


def test_ties_keep_the_earlier_and_empty_gallery_renders_a_notice():
    img = np.zeros((64, 64, 3), np.uint8)
    g = HardNegativeGallery(max_items=1, tile_size=32)
    g.add(img, _dets([[40, 40, 60, 60]], [0.5], [1]), _target(image_id=1))
    g.add(img, _dets([[40, 40, 60, 60]], [0.5], [1]), _target(image_id=2))
    assert [it.image_id for it in g.items] == [1]
    empty = HardNegativeGallery().render()
    assert empty.ndim == 3 and empty.shape[0] > 0 and empty.any()
    with pytest.raises(ValueError, match="max_items"):
        HardNegativeGallery(max_items=0)
