"""VOC07 11-point and area-under-curve AP: hand-computed cases and a from-the-definition reference."""

from __future__ import annotations

import math

import numpy as np
import pytest

from detmine.errors import DataError
from detmine.evaluation.voc_eval import voc_ap_11point, voc_ap_area, voc_evaluate


def _gt(annotations: list[tuple[int, int, list[float], int]], num_images: int = 3, cats=(1, 2)) -> dict:
    """COCO GT from (image_id, category_id, xywh, difficult) tuples."""
    return {
        "images": [{"id": i, "width": 200, "height": 200} for i in range(1, num_images + 1)],
        "annotations": [
            {"id": k + 1, "image_id": i, "category_id": c, "bbox": b, "area": b[2] * b[3], "iscrowd": d}
            for k, (i, c, b, d) in enumerate(annotations)
        ],
        "categories": [{"id": c, "name": f"c{c}"} for c in cats],
    }


def _det(image_id: int, category_id: int, xywh: list[float], score: float) -> dict:
    return {"image_id": image_id, "category_id": category_id, "bbox": xywh, "score": score}


def test_ap_formulas_on_a_hand_computed_curve():
    # Ranked TP, FP, TP, FP over 2 positives: recall .5, .5, 1, 1; precision 1, .5, 2/3, .5.
    recall = np.array([0.5, 0.5, 1.0, 1.0])
    precision = np.array([1.0, 0.5, 2 / 3, 0.5])
    # 11-point: t = 0..0.5 (6 points) -> 1; t = 0.6..1 (5 points) -> 2/3.
    assert voc_ap_11point(recall, precision) == pytest.approx((6 + 5 * 2 / 3) / 11)
    # Area: envelope 1 on (0, .5], 2/3 on (.5, 1].
    assert voc_ap_area(recall, precision) == pytest.approx(0.5 + 0.5 * 2 / 3)
    assert voc_ap_11point(np.zeros(0), np.zeros(0)) == 0.0
    assert voc_ap_area(np.zeros(0), np.zeros(0)) == 0.0


def test_known_case_with_difficult_duplicate_and_miss():
    box_a, box_b, box_c = [10, 10, 40, 40], [100, 100, 50, 50], [0, 100, 30, 60]
    gt = _gt(
        [
            (1, 1, box_a, 0),
            (2, 1, box_b, 0),
            (2, 1, box_c, 1),  # difficult: never counted, detections on it ignored
            (3, 2, box_a, 0),  # class 2: one box, detected perfectly
        ]
    )
    results = [
        _det(1, 1, box_a, 0.9),  # TP
        _det(2, 1, box_c, 0.85),  # on the difficult box: ignored
        _det(1, 1, [11, 11, 40, 40], 0.8),  # duplicate of box_a: FP
        _det(2, 1, box_b, 0.7),  # TP
        _det(3, 1, [150, 0, 20, 20], 0.6),  # nothing there: FP
        _det(3, 2, box_a, 0.5),  # TP (class 2)
    ]
    out = voc_evaluate(gt, results)
    # Class 1, ranked without the ignored one: TP, FP, TP, FP with 2 positives (as above).
    assert out.per_class_ap07[1] == pytest.approx((6 + 5 * 2 / 3) / 11)
    assert out.per_class_ap[1] == pytest.approx(0.5 + 0.5 * 2 / 3)
    assert out.per_class_ap07[2] == pytest.approx(1.0)
    assert out.per_class_ap[2] == pytest.approx(1.0)
    assert out.voc07_map == pytest.approx(((6 + 5 * 2 / 3) / 11 + 1) / 2)
    assert out.voc_map == pytest.approx((0.5 + 0.5 * 2 / 3 + 1) / 2)


def test_best_match_already_taken_is_a_false_positive():
    # Two overlapping boxes; the second detection's best box is the one already taken, so it is an
    # FP even though it overlaps the free box by more than 0.5 (devkit semantics).
    b1, b2 = [0, 0, 100, 100], [0, 10, 100, 100]
    gt = _gt([(1, 1, b1, 0), (1, 1, b2, 0)], num_images=1, cats=(1,))
    out = voc_evaluate(gt, [_det(1, 1, b1, 0.9), _det(1, 1, [0, 2, 100, 100], 0.8)])
    # TP, FP over 2 positives: recall .5 with precision 1 -> area AP .5; 11-point 6/11.
    assert out.per_class_ap[1] == pytest.approx(0.5)
    assert out.per_class_ap07[1] == pytest.approx(6 / 11)


def test_class_without_positives_is_nan_and_left_out_of_the_mean():
    gt = _gt([(1, 1, [0, 0, 10, 10], 0), (1, 2, [50, 50, 10, 10], 1)], num_images=1)
    out = voc_evaluate(gt, [_det(1, 1, [0, 0, 10, 10], 0.9), _det(1, 2, [50, 50, 10, 10], 0.9)])
    assert math.isnan(out.per_class_ap[2]) and math.isnan(out.per_class_ap07[2])
    assert out.voc_map == pytest.approx(1.0) and out.voc07_map == pytest.approx(1.0)


def test_no_detections_gives_zero():
    gt = _gt([(1, 1, [0, 0, 10, 10], 0)], num_images=1, cats=(1,))
    out = voc_evaluate(gt, [])
    assert out.voc_map == 0.0 and out.voc07_map == 0.0


def test_unknown_ids_are_reported():
    gt = _gt([(1, 1, [0, 0, 10, 10], 0)], num_images=1, cats=(1,))
    with pytest.raises(DataError, match="category_id 9"):
        voc_evaluate(gt, [_det(1, 9, [0, 0, 10, 10], 0.9)])
    with pytest.raises(DataError, match="image_id 5"):
        voc_evaluate(gt, [_det(5, 1, [0, 0, 10, 10], 0.9)])


# ---- reference written from the definition (plain Python loops) --------------------------------


def _iou(a: list[float], b: list[float]) -> float:
    ax2, ay2, bx2, by2 = a[0] + a[2], a[1] + a[3], b[0] + b[2], b[1] + b[3]
    iw = max(0.0, min(ax2, bx2) - max(a[0], b[0]))
    ih = max(0.0, min(ay2, by2) - max(a[1], b[1]))
    inter = iw * ih
    return inter / (a[2] * a[3] + b[2] * b[3] - inter)


def _reference(gt: dict, results: list[dict], cat: int) -> tuple[float, float]:
    boxes = [a for a in gt["annotations"] if a["category_id"] == cat]
    npos = sum(1 for a in boxes if not a["iscrowd"])
    dets = sorted((d for d in results if d["category_id"] == cat), key=lambda d: -d["score"])
    taken: set[int] = set()
    flags = []  # True = TP, False = FP (ignored detections are skipped)
    for d in dets:
        best, best_iou = None, 0.0
        for a in boxes:
            if a["image_id"] == d["image_id"]:
                iou = _iou(d["bbox"], a["bbox"])
                if best is None or iou > best_iou:
                    best, best_iou = a, iou
        if best is not None and best_iou > 0.5:
            if best["iscrowd"]:
                continue
            flags.append(best["id"] not in taken)
            taken.add(best["id"])
        else:
            flags.append(False)
    tp = np.cumsum(flags)
    rec = tp / npos
    prec = tp / np.arange(1, len(flags) + 1)
    # Thresholds as the devkit spells them (np.arange(0, 1.1, 0.1): 0.30000000000000004, ...).
    thresholds = [0.1 * i for i in range(11)]
    ap07 = sum(max([p for r, p in zip(rec, prec, strict=True) if r >= t] or [0.0]) for t in thresholds) / 11
    ap = 0.0
    prev_r = 0.0
    for i in range(len(rec)):
        ap += (rec[i] - prev_r) * max(prec[i:])
        prev_r = rec[i]
    return ap07, ap


def test_matches_reference_on_random_data():
    rng = np.random.default_rng(0)
    annotations = []
    for image_id in range(1, 21):
        for _ in range(rng.integers(0, 5)):
            x, y = rng.uniform(0, 150, 2)
            w, h = rng.uniform(10, 50, 2)
            annotations.append((image_id, int(rng.integers(1, 4)), [x, y, w, h], int(rng.random() < 0.15)))
    gt = _gt(annotations, num_images=20, cats=(1, 2, 3))
    results = []
    for a in gt["annotations"]:
        for _ in range(rng.integers(0, 3)):  # 0..2 noisy copies: misses, TPs and duplicates
            x, y, w, h = a["bbox"]
            jitter = rng.normal(0, 0.15, 4) * [w, h, w, h]
            results.append(
                _det(a["image_id"], a["category_id"], list(np.add([x, y, w, h], jitter)), rng.random())
            )
    for _ in range(30):  # pure false positives
        results.append(
            _det(
                int(rng.integers(1, 21)),
                int(rng.integers(1, 4)),
                [*rng.uniform(0, 150, 2), 20, 20],
                rng.random(),
            )
        )
    out = voc_evaluate(gt, results)
    for cat in (1, 2, 3):
        ref07, ref = _reference(gt, results, cat)
        assert out.per_class_ap07[cat] == pytest.approx(ref07, abs=1e-12)
        assert out.per_class_ap[cat] == pytest.approx(ref, abs=1e-12)
    assert 0.2 < out.voc_map < 0.95  # the fixture really mixes hits and misses
