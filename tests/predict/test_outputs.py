"""detmine.predict.results and .drawing: COCO results with the original category ids and xywh
boxes; the picture keeps the image's size, one colour per class."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from detmine.errors import DataError
from detmine.predict.drawing import class_caption, draw_detections
from detmine.predict.results import PictureNames, coco_results, index_document, keep_detections
from detmine.viz.colors import class_color

DET = {
    "boxes": torch.tensor([[10.0, 20.0, 50.0, 60.0], [0.0, 0.0, float("nan"), 5.0], [5.0, 5.0, 9.0, 30.0]]),
    "scores": torch.tensor([0.9, 0.8, 0.3]),
    "labels": torch.tensor([2, 1, 3]),
}


def test_keep_detections_drops_non_finite_and_low_scores() -> None:
    kept = keep_detections(DET)
    assert len(kept) == 2 and kept.labels.tolist() == [2, 3] and kept.boxes.dtype == torch.float64
    assert keep_detections(DET, score_thresh=0.3).labels.tolist() == [2, 3]  # at or above
    assert keep_detections(DET, score_thresh=0.31).labels.tolist() == [2]


def test_coco_results_original_ids_and_xywh() -> None:
    results = coco_results(
        keep_detections(DET), image_id=4, file_name="a.jpg", category_ids={1: 5, 2: 7, 3: 9}
    )
    assert results == [
        {
            "image_id": 4,
            "file_name": "a.jpg",
            "category_id": 7,
            "bbox": [10.0, 20.0, 40.0, 40.0],
            "score": pytest.approx(0.9),
        },
        {
            "image_id": 4,
            "file_name": "a.jpg",
            "category_id": 9,
            "bbox": [5.0, 5.0, 4.0, 25.0],
            "score": pytest.approx(0.3),
        },
    ]
    with pytest.raises(DataError, match="detection label 3 on a.jpg has no category id"):
        coco_results(keep_detections(DET), image_id=4, file_name="a.jpg", category_ids={1: 5, 2: 7})


def test_picture_names_never_collide() -> None:
    names = PictureNames()
    assert names("x/a.png", 1, ".jpg") == "a.jpg"
    assert names("y/a.jpg", 2, ".jpg") == "a_2.jpg"
    assert names("clip.avi", 3, ".avi") == "clip.avi"


def test_index_document_lists_categories_in_class_order() -> None:
    doc = index_document([], [], {2: (7, "dog"), 1: (5, "cat")}, {"device": "cpu"})
    assert doc["categories"] == [{"id": 5, "name": "cat", "label": 1}, {"id": 7, "name": "dog", "label": 2}]
    assert doc["info"] == {"device": "cpu"} and doc["inputs"] == [] and doc["images"] == []


def test_draw_detections_keeps_the_size_and_colours_by_class() -> None:
    image = np.full((80, 100, 3), 40, np.uint8)
    kept = keep_detections(DET)
    out = draw_detections(
        image, kept.boxes.numpy(), kept.scores.numpy(), kept.labels.numpy(), ["a", "b", "c"]
    )
    assert out.shape == image.shape and out.dtype == np.uint8
    assert np.all(image == 40)  # the input is untouched
    assert tuple(out[60, 30]) == class_color(2)  # the bottom edge of the class-2 box
    assert tuple(out[27, 5]) == class_color(3)  # the left edge of the class-3 box
    assert class_color(2) != class_color(3)
    assert np.array_equal(draw_detections(image, np.zeros((0, 4)), [], [], ["a"]), image)
    assert class_caption(2, 0.874, ["a", "b"]) == "b 0.87" and class_caption(9, 0.5, ["a"]) == "9 0.50"
