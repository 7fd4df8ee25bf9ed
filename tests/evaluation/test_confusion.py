"""The detection confusion matrix on hand-made scenes (every cell worked out below), its
matching rule (greedy by IoU, one-to-one, IoU >= the threshold, crowd regions ignored), the
picture and the CSV."""

from __future__ import annotations

import numpy as np
import pytest

from detmine.errors import DataError
from detmine.evaluation.confusion import confusion_csv, confusion_matrix, confusion_picture

# Class 1 "a" is category 7, class 2 "b" is category 3: the matrix follows the class order.
CATEGORY_IDS = [7, 3]
A, B = 7, 3


def _gt(annotations: list[tuple[int, int, list[float], int]], image_ids=(1, 2)) -> dict:
    """COCO GT from (image_id, category_id, xywh, iscrowd) tuples."""
    return {
        "images": [{"id": i, "width": 200, "height": 200} for i in image_ids],
        "annotations": [
            {"id": k + 1, "image_id": i, "category_id": c, "bbox": b, "area": b[2] * b[3], "iscrowd": crowd}
            for k, (i, c, b, crowd) in enumerate(annotations)
        ],
        "categories": [{"id": A, "name": "a"}, {"id": B, "name": "b"}],
    }


def _det(image_id: int, category_id: int, xywh: list[float], score: float) -> dict:
    return {"image_id": image_id, "category_id": category_id, "bbox": xywh, "score": score}


# One image holding every case; image 2 is there to be left out by image_ids.
SCENE_GT = _gt(
    [
        (1, A, [0, 0, 10, 10], 0),  # object a1: detected right
        (1, B, [20, 0, 10, 10], 0),  # object b1: detected as a
        (1, A, [0, 40, 10, 10], 0),  # object a2: missed (its detection is below the score)
        (1, B, [60, 0, 10, 10], 0),  # object b2: detected twice
        (1, B, [100, 100, 50, 50], 1),  # crowd region
        (2, A, [0, 0, 10, 10], 0),  # another image's object
    ]
)
SCENE_DETS = [
    _det(1, A, [0, 0, 10, 10], 0.9),  # right
    _det(1, A, [20, 0, 10, 10], 0.8),  # wrong class on b1
    _det(1, B, [150, 0, 10, 10], 0.7),  # on background
    _det(1, A, [110, 110, 10, 10], 0.9),  # inside the crowd region: ignored
    _det(1, B, [0, 40, 10, 10], 0.3),  # on a2 but below the score
    _det(1, B, [60, 0, 10, 10], 0.95),  # b2, IoU 1: matched
    _det(1, B, [61, 0, 10, 10], 0.6),  # b2 again, IoU 90 / 110: the duplicate is background
    _det(2, B, [0, 0, 10, 10], 0.9),  # on an image not evaluated
]


def test_hand_made_scene():
    matrix = confusion_matrix(SCENE_GT, SCENE_DETS, category_ids=CATEGORY_IDS, image_ids=[1])
    assert matrix.dtype == np.int64 and matrix.shape == (3, 3)
    expected = np.array(
        [
            # predicted: a, b, background
            [1, 0, 1],  # true a: a1 right, a2 missed
            [1, 1, 0],  # true b: b1 taken for a, b2 right
            [0, 2, 0],  # background: the detection on nothing and b2's duplicate
        ]
    )
    np.testing.assert_array_equal(matrix, expected)


def test_all_images_by_default():
    # Image 2 adds its object a matched by a b detection: [a, b] += 1.
    matrix = confusion_matrix(SCENE_GT, SCENE_DETS, category_ids=CATEGORY_IDS)
    np.testing.assert_array_equal(matrix, [[1, 1, 1], [1, 1, 0], [0, 2, 0]])


def test_class_thresholds_replace_the_score():
    # a counts from 0.95 (all a detections drop out), b from 0.25 (its 0.3 detection on a2 counts).
    matrix = confusion_matrix(
        SCENE_GT, SCENE_DETS, category_ids=CATEGORY_IDS, image_ids=[1], class_thresholds=[0.95, 0.25]
    )
    expected = np.array(
        [
            [0, 1, 1],  # a1 missed, a2 taken for b
            [0, 1, 1],  # b1 missed, b2 right
            [0, 2, 0],  # the b on nothing, b2's duplicate
        ]
    )
    np.testing.assert_array_equal(matrix, expected)
    with pytest.raises(ValueError, match="2 values"):
        confusion_matrix(SCENE_GT, SCENE_DETS, category_ids=CATEGORY_IDS, class_thresholds=[0.5])


def test_score_threshold_is_inclusive():
    gt = _gt([(1, A, [0, 0, 10, 10], 0)], image_ids=[1])
    at = confusion_matrix(gt, [_det(1, A, [0, 0, 10, 10], 0.5)], category_ids=CATEGORY_IDS, score_thresh=0.5)
    np.testing.assert_array_equal(at, [[1, 0, 0], [0, 0, 0], [0, 0, 0]])
    below = confusion_matrix(
        gt, [_det(1, A, [0, 0, 10, 10], 0.49)], category_ids=CATEGORY_IDS, score_thresh=0.5
    )
    np.testing.assert_array_equal(below, [[0, 0, 1], [0, 0, 0], [0, 0, 0]])


def test_pairs_are_taken_by_iou_not_by_score():
    # One a object; a b detection scoring 0.9 with IoU 80 / 120, an a detection scoring 0.6 with
    # IoU 1. Greedy by IoU gives the object to the a detection: the b one is on background.
    gt = _gt([(1, A, [0, 0, 10, 10], 0)], image_ids=[1])
    dets = [_det(1, B, [2, 0, 10, 10], 0.9), _det(1, A, [0, 0, 10, 10], 0.6)]
    matrix = confusion_matrix(gt, dets, category_ids=CATEGORY_IDS)
    np.testing.assert_array_equal(matrix, [[1, 0, 0], [0, 0, 0], [0, 1, 0]])


def test_one_detection_matches_one_object_at_iou_from_the_threshold():
    # Objects a [0, 0, 10, 10] and b [5, 0, 10, 10]; one a detection [0, 0, 10, 20]: IoU with
    # the a object 100 / 200 = 0.5 (counts: >=), with the b object 50 / 250 = 0.2.
    gt = _gt([(1, A, [0, 0, 10, 10], 0), (1, B, [5, 0, 10, 10], 0)], image_ids=[1])
    dets = [_det(1, A, [0, 0, 10, 20], 0.9)]
    matrix = confusion_matrix(gt, dets, category_ids=CATEGORY_IDS, iou_thresh=0.5)
    np.testing.assert_array_equal(matrix, [[1, 0, 0], [0, 0, 1], [0, 0, 0]])
    # Above 0.5 the detection matches nothing: it is on background and both objects are missed.
    strict = confusion_matrix(gt, dets, category_ids=CATEGORY_IDS, iou_thresh=0.51)
    np.testing.assert_array_equal(strict, [[0, 0, 1], [0, 0, 1], [1, 0, 0]])


def test_crowd_rule_is_intersection_over_the_detection_area():
    # A 10 x 10 detection half inside a large crowd region (of the other class): its IoU with the
    # region is 50 / 10050, its cover 50 / 100 = 0.5 -> ignored at 0.5; a 0.4 cover is background.
    half = _gt([(1, B, [5, 0, 100, 100], 1)], image_ids=[1])
    less = _gt([(1, B, [6, 0, 100, 100], 1)], image_ids=[1])
    dets = [_det(1, A, [0, 0, 10, 10], 0.9)]
    np.testing.assert_array_equal(confusion_matrix(half, dets, category_ids=CATEGORY_IDS), np.zeros((3, 3)))
    np.testing.assert_array_equal(
        confusion_matrix(less, dets, category_ids=CATEGORY_IDS), [[0, 0, 0], [0, 0, 0], [1, 0, 0]]
    )
    # A crowd region with no detection is never a missed object.
    np.testing.assert_array_equal(confusion_matrix(half, [], category_ids=CATEGORY_IDS), np.zeros((3, 3)))


def test_unknown_categories_are_data_errors():
    gt = _gt([(1, A, [0, 0, 10, 10], 0)], image_ids=[1])
    with pytest.raises(DataError, match="category_id 99"):
        confusion_matrix(gt, [_det(1, 99, [0, 0, 10, 10], 0.9)], category_ids=CATEGORY_IDS)
    with pytest.raises(DataError, match="annotation 1 has category_id 7"):
        confusion_matrix(gt, [], category_ids=[3])


def test_csv_has_a_header_and_one_row_per_true_class():
    matrix = np.array([[1, 0, 1], [1, 1, 0], [0, 2, 0]], dtype=np.int64)
    text = confusion_csv(matrix, ["a", "b"])
    assert text == "true \\ predicted,a,b,background\na,1,0,1\nb,1,1,0\nbackground,0,2,0\n"
    with pytest.raises(ValueError, match=r"\[3, 3\]"):
        confusion_csv(matrix, ["a"])


def test_picture_is_an_rgb_image():
    matrix = np.array([[1, 0, 1], [1, 1, 0], [0, 2, 0]], dtype=np.int64)
    picture = confusion_picture(matrix, ["a", "b"])
    assert picture.dtype == np.uint8 and picture.ndim == 3 and picture.shape[2] == 3
    assert picture.shape[0] >= 300 and picture.shape[1] >= 300
    assert len(np.unique(picture.reshape(-1, 3), axis=0)) > 10  # drawn, not blank
    # An empty matrix (no row with a count) still draws.
    assert confusion_picture(np.zeros((3, 3), np.int64), ["a", "b"]).shape[2] == 3
