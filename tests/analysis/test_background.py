"""Background false positives: detections touching no object (IoU < 0.1 with all of them)."""

from __future__ import annotations

import pytest

from detmine.analysis import background_false_positives

GT = {
    "images": [{"id": 1}, {"id": 2}, {"id": 3}],
    "annotations": [
        {"id": 1, "image_id": 1, "category_id": 1, "bbox": [0, 0, 10, 10]},
        {"id": 2, "image_id": 2, "category_id": 2, "bbox": [50, 50, 20, 20], "iscrowd": 1},
    ],
}


def det(image_id, box, score=0.9, category_id=1):
    return {"image_id": image_id, "category_id": category_id, "bbox": box, "score": score}


def test_counts_detections_that_touch_no_object():
    detections = [
        det(1, [0, 0, 10, 10]),  # on the object
        det(1, [9, 9, 10, 10]),  # IoU 1/199 < 0.1: background
        det(1, [5, 0, 10, 10]),  # IoU 50/150 >= 0.1, even of another class: not background
        det(1, [100, 100, 5, 5], score=0.3),  # background but below the score
        det(2, [50, 50, 20, 20]),  # on a crowd region: not background
        det(2, [0, 0, 5, 5]),  # background
        det(3, [0, 0, 5, 5]),  # an image without objects: every detection is one
        det(3, [1, 1, 5, 5]),
        det(99, [0, 0, 5, 5]),  # not an evaluated image
    ]
    fp = background_false_positives(GT, detections)
    assert (fp.count, fp.num_images, fp.num_empty_images) == (4, 3, 1)
    assert fp.per_image == pytest.approx(4 / 3)
    assert fp.on_empty_images == pytest.approx(2.0)
    low = background_false_positives(GT, detections, score_thresh=0.2)
    assert low.count == 5
    only = background_false_positives(GT, detections, image_ids=[1, 2])
    assert (only.count, only.on_empty_images) == (2, None)


def test_the_iou_threshold_is_the_rule():
    detections = [det(1, [5, 0, 10, 10])]  # IoU 1/3 with the object
    assert background_false_positives(GT, detections, iou_thresh=0.3).count == 0
    assert background_false_positives(GT, detections, iou_thresh=0.4).count == 1


def test_per_category_thresholds_replace_the_score():
    detections = [
        det(3, [0, 0, 5, 5], score=0.6, category_id=1),
        det(3, [1, 1, 5, 5], score=0.6, category_id=2),
    ]
    assert background_false_positives(GT, detections).count == 2
    assert background_false_positives(GT, detections, category_thresholds={1: 0.7, 2: 0.5}).count == 1
