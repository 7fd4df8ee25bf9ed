"""The one class counter: objects and images per class from the annotations, never decoding."""

from __future__ import annotations

import numpy as np
import pytest

from detmine.analysis import count_classes, count_classes_coco
from detmine.data._common import ImageRecord
from detmine.errors import DataError


class _Records:
    """A dataset that only has annotation records (reading an image would fail)."""

    class_names = ["a", "b", "c"]

    def __init__(self, per_image_labels: list[list[int]]) -> None:
        self.records = [
            ImageRecord(
                path="/nonexistent.jpg",
                image_id=i,
                height=10,
                width=10,
                boxes=np.zeros((len(labels), 4), np.float32),
                labels=np.asarray(labels, np.int64),
                ignore_boxes=np.zeros((0, 4), np.float32),
            )
            for i, labels in enumerate(per_image_labels)
        ]

    def __getitem__(self, i):
        raise AssertionError("the counter must not decode images")


def test_counts_objects_and_images_per_class():
    counts = count_classes(_Records([[1, 1, 3], [], [3], [1, 2, 2, 2], []]))
    assert counts.class_names == ["a", "b", "c"]
    assert counts.instances == [3, 3, 2]
    assert counts.images == [2, 1, 2]
    assert (counts.num_images, counts.images_without_objects, counts.num_instances) == (5, 2, 8)


def test_a_label_outside_the_classes_is_one_line():
    with pytest.raises(DataError, match=r"^label 4 is outside 1\.\.3"):
        count_classes(_Records([[1], [4]]))


def test_a_dataset_without_records_says_so():
    class NoRecords:
        class_names = ["a"]

    with pytest.raises(DataError, match="NoRecords keeps no annotation records"):
        count_classes(NoRecords())


def test_coco_dicts_count_alike_and_skip_crowds():
    gt = {
        "images": [{"id": 10}, {"id": 11}, {"id": 12}],
        "categories": [{"id": 7, "name": "car"}, {"id": 3, "name": "cat"}],
        "annotations": [
            {"id": 1, "image_id": 10, "category_id": 7, "iscrowd": 0},
            {"id": 2, "image_id": 10, "category_id": 7, "iscrowd": 0},
            {"id": 3, "image_id": 11, "category_id": 3, "iscrowd": 0},
            {"id": 4, "image_id": 12, "category_id": 3, "iscrowd": 1},  # a crowd region: no object
        ],
    }
    counts = count_classes_coco(gt)  # sorted ids: class 1 = cat (3), class 2 = car (7)
    assert counts.class_names == ["cat", "car"]
    assert counts.instances == [1, 2] and counts.images == [1, 1]
    assert counts.images_without_objects == 1
    assert count_classes_coco(gt, category_ids=[7, 3]).instances == [2, 1]
    with pytest.raises(DataError, match="category_id 3, not one of \\[7\\]"):
        count_classes_coco(gt, category_ids=[7])
