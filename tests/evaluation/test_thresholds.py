"""Per-class operating thresholds: the best F1 and the precision rule on a class whose
detections' scores and correctness are chosen here (answers worked out below), ties, crowd
regions, the classes with no detection or no object, the file read back, and the chosen
thresholds applied to the detections giving the reported precision and recall."""

from __future__ import annotations

import json

import numpy as np
import pytest

from detmine.errors import ConfigError
from detmine.evaluation.confusion import confusion_matrix
from detmine.evaluation.thresholds import (
    THRESHOLDS_FILE,
    choose_thresholds,
    load_class_thresholds,
    predict_options,
    thresholds_file,
    thresholds_table,
)

A, B, C = 1, 2, 5
CATEGORY_IDS = [A, B, C]
NAMES = ["a", "b", "c"]
OBJECT = [0.0, 0.0, 10.0, 10.0]
NOTHING = [150.0, 150.0, 10.0, 10.0]


def _gt(annotations: list[tuple[int, int, list[float], int]], num_images: int) -> dict:
    """COCO GT from (image_id, category_id, xywh, iscrowd) tuples."""
    return {
        "images": [{"id": i, "width": 200, "height": 200} for i in range(1, num_images + 1)],
        "annotations": [
            {"id": k + 1, "image_id": i, "category_id": c, "bbox": b, "area": b[2] * b[3], "iscrowd": crowd}
            for k, (i, c, b, crowd) in enumerate(annotations)
        ],
        "categories": [{"id": c, "name": n} for c, n in zip(CATEGORY_IDS, NAMES, strict=True)],
    }


def _det(image_id: int, category_id: int, xywh: list[float], score: float) -> dict:
    return {"image_id": image_id, "category_id": category_id, "bbox": xywh, "score": score}


# Class a: five objects (images 1-5, one each) and a crowd region of a on image 6; class b: one
# object (image 6) and no detection; class c: no object, one detection scoring 1.0.
GT = _gt(
    [(i, A, OBJECT, 0) for i in range(1, 6)] + [(6, A, [0, 0, 50, 50], 1), (6, B, [100, 0, 10, 10], 0)],
    num_images=6,
)
# Class a's detections, by score: TP .9, TP .8, FP .7, TP .6, FP .5, TP .4, FP .3 (object 5 is
# never found), and one scoring .85 inside the crowd region (ignored). With 5 objects
# (TP, FP at each score -> precision, recall, F1 = 2 TP / (TP + FP + 5)):
#   .9: 1, 0 -> 1,   .2, 2/6     .6: 3, 1 -> .75, .6, 6/9     .4: 4, 2 -> 4/6, .8, 8/11 (best F1)
#   .8: 2, 0 -> 1,   .4, 4/7     .5: 3, 2 -> .6,  .6, 6/10    .3: 4, 3 -> 4/7, .8, 8/12
#   .7: 2, 1 -> 2/3, .4, 4/8
DETS = [
    _det(1, A, OBJECT, 0.9),
    _det(2, A, OBJECT, 0.8),
    _det(1, A, NOTHING, 0.7),
    _det(3, A, OBJECT, 0.6),
    _det(2, A, NOTHING, 0.5),
    _det(4, A, OBJECT, 0.4),
    _det(3, A, NOTHING, 0.3),
    _det(6, A, [10, 10, 10, 10], 0.85),
    _det(6, C, NOTHING, 1.0),
]


def _by_name(entries: list[dict]) -> dict[str, dict]:
    return {e["name"]: e for e in entries}


def test_best_f1():
    entries = choose_thresholds(GT, DETS, category_ids=CATEGORY_IDS, class_names=NAMES, rule="f1")
    assert [e["name"] for e in entries] == NAMES
    assert [e["category_id"] for e in entries] == CATEGORY_IDS
    a = entries[0]
    assert a["threshold"] == 0.4
    assert a["precision"] == pytest.approx(4 / 6)
    assert a["recall"] == pytest.approx(0.8)
    assert a["f1"] == pytest.approx(8 / 11)
    assert a["support"] == 5  # the crowd region is not an object


@pytest.mark.parametrize(
    ("target", "threshold", "precision", "recall"),
    [
        (0.7, 0.6, 0.75, 0.6),  # .9, .8, .6 reach 0.7; .6 has the highest recall
        (0.9, 0.8, 1.0, 0.4),  # .9 and .8 reach 0.9 (the crowd detection at .85 is not an FP)
        (1.0, 0.8, 1.0, 0.4),
        (0.6, 0.4, 4 / 6, 0.8),  # recall .8 first reached at .4 (precision 4/6), not at .3 (4/7)
    ],
)
def test_precision_rule(target, threshold, precision, recall):
    entries = choose_thresholds(
        GT, DETS, category_ids=CATEGORY_IDS, class_names=NAMES, rule="precision", target_precision=target
    )
    a = entries[0]
    assert a["threshold"] == threshold
    assert a["precision"] == pytest.approx(precision)
    assert a["recall"] == pytest.approx(recall)
    assert a["f1"] == pytest.approx(2 * precision * recall / (precision + recall))


def test_classes_without_detections_or_objects_get_threshold_one():
    for rule in ("f1", "precision"):
        entries = _by_name(
            choose_thresholds(GT, DETS, category_ids=CATEGORY_IDS, class_names=NAMES, rule=rule)
        )
        # b: one object, no detection.
        assert entries["b"] == {
            "name": "b",
            "category_id": B,
            "threshold": 1.0,
            "precision": 0.0,
            "recall": 0.0,
            "f1": 0.0,
            "support": 1,
        }
        # c: no object; its detection scores 1.0, so it is kept at 1.0 and is a false positive.
        c = entries["c"]
        assert (c["threshold"], c["precision"], c["recall"], c["f1"], c["support"]) == (1.0, 0.0, 0.0, 0.0, 0)


def test_precision_never_reached_gives_threshold_one():
    # Class a's best precision is 1.0 at .9 / .8; with only its false positives it is 0.
    only_fp = [d for d in DETS if d["bbox"] == NOTHING and d["category_id"] == A]
    a = choose_thresholds(GT, only_fp, category_ids=CATEGORY_IDS, class_names=NAMES, rule="precision")[0]
    assert (a["threshold"], a["precision"], a["recall"]) == (1.0, 0.0, 0.0)
    a = choose_thresholds(GT, only_fp, category_ids=CATEGORY_IDS, class_names=NAMES, rule="f1")[0]
    assert (a["threshold"], a["f1"]) == (1.0, 0.0)


def test_f1_ties_take_the_higher_threshold():
    # Two objects; TP .9, FP .8, FP .7, TP .6: F1 at .9 = 2 / (1 + 0 + 2) = 2/3, at .6 =
    # 4 / (2 + 2 + 2) = 2/3 -> .9.
    gt = _gt([(1, A, OBJECT, 0), (2, A, OBJECT, 0)], num_images=2)
    dets = [
        _det(1, A, OBJECT, 0.9),
        _det(1, A, NOTHING, 0.8),
        _det(2, A, NOTHING, 0.7),
        _det(2, A, OBJECT, 0.6),
    ]
    a = choose_thresholds(gt, dets, category_ids=CATEGORY_IDS, class_names=NAMES)[0]
    assert (a["threshold"], a["precision"], a["recall"]) == (0.9, 1.0, 0.5)


def test_equal_scores_are_kept_together_and_matching_is_by_class():
    # Object a on image 1; a TP and an FP both scoring .7, and a b detection on the a object
    # (not a's business, an FP of b). At .7 a keeps both: precision 1/2, recall 1.
    gt = _gt([(1, A, OBJECT, 0)], num_images=1)
    dets = [_det(1, A, NOTHING, 0.7), _det(1, A, OBJECT, 0.7), _det(1, B, OBJECT, 0.95)]
    a, b, _ = choose_thresholds(gt, dets, category_ids=CATEGORY_IDS, class_names=NAMES)
    assert (a["threshold"], a["precision"], a["recall"], a["f1"]) == (0.7, 0.5, 1.0, pytest.approx(2 / 3))
    assert (b["threshold"], b["support"]) == (1.0, 0)


def test_a_duplicate_is_a_false_positive_and_a_crowd_of_another_class_ignores_nothing():
    # One a object and a crowd region of b over it: the second a detection on the object is a
    # duplicate (FP; a's crowd rule only looks at a's crowd regions) -> best F1 at .9
    # (2 / 3 vs 2 / 4 at .8).
    gt = _gt([(1, A, OBJECT, 0), (1, B, [0, 0, 100, 100], 1)], num_images=1)
    dets = [_det(1, A, OBJECT, 0.9), _det(1, A, [1, 0, 10, 10], 0.8)]
    a = choose_thresholds(gt, dets, category_ids=CATEGORY_IDS, class_names=NAMES)[0]
    assert (a["threshold"], a["precision"], a["recall"]) == (0.9, 1.0, 1.0)
    precision = choose_thresholds(
        gt, dets, category_ids=CATEGORY_IDS, class_names=NAMES, rule="precision", target_precision=0.5
    )[0]
    assert precision["threshold"] == 0.9  # recall 1 first reached at .9; .8 adds only the FP


def test_image_ids_restrict_the_split():
    entries = choose_thresholds(GT, DETS, category_ids=CATEGORY_IDS, class_names=NAMES, image_ids=[1, 2])
    # Images 1-2: TP .9, TP .8, FP .7, FP .5 over 2 objects -> F1 1 at .8.
    a = entries[0]
    assert (a["threshold"], a["precision"], a["recall"], a["support"]) == (0.8, 1.0, 1.0, 2)


def test_bad_arguments():
    with pytest.raises(ValueError, match="unknown threshold rule 'recall'"):
        choose_thresholds(GT, DETS, category_ids=CATEGORY_IDS, class_names=NAMES, rule="recall")
    with pytest.raises(ValueError, match="target_precision"):
        choose_thresholds(
            GT, DETS, category_ids=CATEGORY_IDS, class_names=NAMES, rule="precision", target_precision=1.5
        )


def _precision_recall_by_hand(
    gt: dict, dets: list[dict], thresholds: list[float]
) -> list[tuple[float, float]]:
    """Per class, precision and recall of the detections kept at ``thresholds`` in a scene where
    every detection overlaps at most one object of its class (so a kept detection is a true
    positive when it is the first kept one on an unmatched object at IoU >= 0.5) -- read off
    the confusion matrix's diagonal, column and row (crowd regions are of no class here)."""
    matrix = confusion_matrix(gt, dets, category_ids=CATEGORY_IDS, class_thresholds=thresholds)
    out = []
    for k in range(len(CATEGORY_IDS)):
        tp, kept, objects = matrix[k, k], matrix[:, k].sum(), matrix[k, :].sum()
        out.append((tp / kept if kept else 0.0, tp / objects if objects else 0.0))
    return out


@pytest.mark.parametrize(("rule", "target"), [("f1", 0.9), ("precision", 0.8), ("precision", 0.5)])
def test_applying_the_thresholds_reproduces_precision_and_recall(rule, target):
    # A grid of well separated objects of three classes, each detected by jittered boxes of its
    # own class (some below IoU 0.5, some duplicates) and by detections on background.
    rng = np.random.default_rng(0)
    annotations, dets = [], []
    for image_id in range(1, 9):
        for cell in range(6):
            category = CATEGORY_IDS[int(rng.integers(3))]
            box = [40.0 * cell, 0.0, 20.0, 20.0]
            annotations.append((image_id, category, box, 0))
            for _ in range(int(rng.integers(0, 3))):
                dx, dy = rng.uniform(-4, 4, size=2)
                dets.append(
                    _det(image_id, category, [box[0] + dx, dy, 20, 20], round(rng.uniform(0.3, 1.0), 2))
                )
        for _ in range(3):
            category = CATEGORY_IDS[int(rng.integers(3))]
            dets.append(
                _det(image_id, category, [rng.uniform(0, 200), 100, 15, 15], round(rng.uniform(0.0, 0.8), 2))
            )
    gt = _gt(annotations, num_images=8)
    entries = choose_thresholds(
        gt, dets, category_ids=CATEGORY_IDS, class_names=NAMES, rule=rule, target_precision=target
    )
    thresholds = [e["threshold"] for e in entries]
    assert all(t < 1.0 for t in thresholds)  # every class got a real threshold
    for entry, (precision, recall) in zip(
        entries, _precision_recall_by_hand(gt, dets, thresholds), strict=True
    ):
        assert entry["precision"] == pytest.approx(precision)
        assert entry["recall"] == pytest.approx(recall)
        if rule == "precision":
            assert entry["precision"] >= target


def test_file_round_trip_and_predict_options(tmp_path):
    entries = choose_thresholds(GT, DETS, category_ids=CATEGORY_IDS, class_names=NAMES, rule="f1")
    text = thresholds_file(entries, rule="f1", iou=0.5, target_precision=0.9)
    payload = json.loads(text)
    assert (payload["rule"], payload["iou"], payload["target_precision"]) == ("f1", 0.5, None)
    assert payload["classes"] == entries
    path = tmp_path / THRESHOLDS_FILE
    path.write_text(text)
    assert load_class_thresholds(path) == [0.4, 1.0, 1.0]
    assert load_class_thresholds(tmp_path) == [0.4, 1.0, 1.0]  # a folder: its thresholds.json
    options = predict_options({"score_thresh": 0.05, "class_thresholds": str(path)})
    assert options == {"score_thresh": 0.05, "class_thresholds": [0.4, 1.0, 1.0]}
    assert predict_options({"score_thresh": 0.05})["class_thresholds"] is None

    precision = thresholds_file(entries, rule="precision", iou=0.5, target_precision=0.8)
    assert json.loads(precision)["target_precision"] == 0.8
    (tmp_path / "broken.json").write_text('{"classes": [{"threshold": 2.0}]}')
    with pytest.raises(ConfigError, match=r"in \[0, 1\]"):
        load_class_thresholds(tmp_path / "broken.json")


def test_table_lists_every_class():
    entries = choose_thresholds(GT, DETS, category_ids=CATEGORY_IDS, class_names=NAMES, rule="f1")
    table = thresholds_table(entries, rule="f1", target_precision=0.9)
    lines = table.splitlines()
    assert "F1" in lines[0]
    assert lines[1].split() == ["class", "threshold", "precision", "recall", "F1", "support"]
    assert lines[2].split() == ["a", "0.400", "66.7", "80.0", "72.7", "5"]
    assert lines[3].split() == ["b", "1.000", "0.0", "0.0", "0.0", "1"]
    assert "no lower score qualified" in lines[-1]
    title = thresholds_table(entries, rule="precision", target_precision=0.9).splitlines()[0]
    assert "precision >= 0.9" in title
