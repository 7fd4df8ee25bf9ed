"""TIDE errors: hand-worked answers, pycocotools' AP50, and hotcoco / tidecv where their rules
are ours (see detmine/evaluation/tide.py for where and why they are not)."""

from __future__ import annotations

import contextlib
import io

import numpy as np
import pytest

from detmine.evaluation import tide
from detmine.evaluation.coco_eval import coco_bbox_eval, prepare_gt
from detmine.evaluation.tide import ERROR_TYPES, tide_errors

CATS = (1, 3, 7)
BOX = [50.0, 50.0, 40.0, 40.0]
BOX2 = [120.0, 120.0, 40.0, 40.0]


def _shift(box: list[float], dx: float) -> list[float]:
    """``box`` moved right by ``dx``: IoU ``(w - dx) / (w + dx)`` with it (40 px: 40/9 -> .8,
    5 -> .78, 20 -> 1/3)."""
    return [box[0] + dx, *box[1:]]


def _gt(num_images: int, objects: list[tuple[int, int, list[float], int]]) -> dict:
    """COCO GT of ``num_images`` 200 px images from ``(image, category, xywh, iscrowd)``."""
    return {
        "images": [{"id": i, "width": 200, "height": 200} for i in range(1, num_images + 1)],
        "annotations": [
            {"id": k + 1, "image_id": i, "category_id": c, "bbox": b, "area": b[2] * b[3], "iscrowd": crowd}
            for k, (i, c, b, crowd) in enumerate(objects)
        ],
        "categories": [{"id": c, "name": f"class{c}"} for c in CATS],
    }


def _det(image: int, category: int, box: list[float], score: float) -> dict:
    return {"image_id": image, "category_id": category, "bbox": box, "score": score}


def _check(errors, ap50: float, dap: dict[str, float], counts: dict[str, int]) -> None:
    """``dap`` / ``counts`` list the non-zero entries; every other type must be 0."""
    assert errors.ap50 == pytest.approx(ap50, abs=1e-12)
    assert errors.dap == pytest.approx({e: dap.get(e, 0.0) for e in ERROR_TYPES}, abs=1e-12)
    assert errors.counts == {e: counts.get(e, 0) for e in ERROR_TYPES}


# ---- hand-worked answers -------------------------------------------------------------------


def test_wrong_class_at_iou_08_loses_everything_to_cls():
    gt = _gt(1, [(1, 1, BOX, 0)])
    # The object's class has no true positive (AP 0); class 3 has no object (left out of the mean).
    # Fixed, the detection is class 1's true positive: AP 1.
    errors = tide_errors(gt, [_det(1, 3, _shift(BOX, 40 / 9), 0.9)])  # IoU .8
    _check(errors, 0.0, {"cls": 1.0}, {"cls": 1})  # the object is not a Miss: the Cls error covers it


def test_poor_box_of_the_right_class_is_loc():
    errors = tide_errors(_gt(1, [(1, 1, BOX, 0)]), [_det(1, 1, _shift(BOX, 20), 0.9)])
    _check(errors, 0.0, {"loc": 1.0}, {"loc": 1})


def test_duplicate_costs_the_ap_of_the_false_positive_it_is():
    gt = _gt(1, [(1, 1, BOX, 0), (1, 1, BOX2, 0)])
    dets = [_det(1, 1, BOX, 0.9), _det(1, 1, _shift(BOX, 5), 0.8), _det(1, 1, BOX2, 0.7)]
    # TP, FP, TP: precision envelope 1 up to recall .5 (51 of 101 recall points), 2/3 after.
    ap = (51 + 50 * 2 / 3) / 101
    _check(tide_errors(gt, dets), ap, {"dupe": 1 - ap}, {"dupe": 1})


def test_detections_on_background_and_on_an_empty_image_are_bkg():
    gt = _gt(2, [(1, 1, BOX, 0)])  # image 2 has no object
    dets = [_det(1, 1, BOX, 0.5), _det(1, 1, [150.0, 5.0, 30.0, 30.0], 0.9), _det(2, 1, BOX, 0.95)]
    # FP, FP, TP: precision 1/3 at recall 1 everywhere.
    _check(tide_errors(gt, dets), 1 / 3, {"bkg": 2 / 3}, {"bkg": 2})


def test_an_undetected_object_is_a_miss():
    gt = _gt(1, [(1, 1, BOX, 0), (1, 1, BOX2, 0)])
    # Recall stops at .5 (51 recall points of precision 1); fixed, one object of one is found.
    _check(tide_errors(gt, [_det(1, 1, BOX, 0.9)]), 51 / 101, {"miss": 50 / 101}, {"miss": 1})


def test_wrong_class_and_poor_box_is_both():
    gt = _gt(1, [(1, 1, BOX, 0), (1, 3, BOX2, 0)])
    dets = [_det(1, 3, _shift(BOX, 20), 0.9), _det(1, 3, BOX2, 0.5), _det(1, 1, BOX, 0.6)]
    # class 1: AP 1; class 3: FP then TP -> .5; the class-1 object is matched, so no Miss.
    _check(tide_errors(gt, dets), 0.75, {"both": 0.25}, {"both": 1})


def test_one_type_is_fixed_at_a_time():
    """A Cls error (.9) and a Loc error (.5) on the same object: fixing Loc alone makes the Loc
    detection the object's true positive (the Cls one stays a class-3 false positive, no
    duplicate of it). tidecv and hotcoco let the higher-scored Cls error claim the object for
    both types and report dLoc 0 here."""
    gt = _gt(1, [(1, 1, BOX, 0)])
    dets = [_det(1, 3, _shift(BOX, 5), 0.9), _det(1, 1, _shift(BOX, 20), 0.5)]
    _check(tide_errors(gt, dets), 0.0, {"cls": 1.0, "loc": 1.0}, {"cls": 1, "loc": 1})


def test_errors_on_a_matched_object_are_suppressed_not_made_true():
    gt = _gt(1, [(1, 1, BOX, 0), (1, 1, BOX2, 0)])
    # The Loc error (.9) points at the object the .8 detection matched: fixed, it is a duplicate.
    dets = [_det(1, 1, _shift(BOX, 20), 0.9), _det(1, 1, BOX, 0.8)]
    ap = 51 / 101 * 0.5  # FP, TP: precision .5 up to recall .5
    # Fixing the Miss: one object of one, precision .5 at recall 1.
    _check(tide_errors(gt, dets), ap, {"loc": 51 / 101 - ap, "miss": 0.5 - ap}, {"loc": 1, "miss": 1})


def test_crowd_regions_are_ignore_regions_of_their_class():
    crowd = [100.0, 100.0, 60.0, 60.0]
    gt = _gt(1, [(1, 1, BOX, 0), (1, 1, crowd, 1)])
    inside = [110.0, 110.0, 40.0, 40.0]
    # Inside a class-1 crowd region: ignored, no error (tidecv counts it as Bkg).
    _check(tide_errors(gt, [_det(1, 1, BOX, 0.5), _det(1, 1, inside, 0.9)]), 1.0, {}, {})
    # Of another class: a false positive on background (class 3 has no object: AP of class 1).
    _check(tide_errors(gt, [_det(1, 1, BOX, 0.5), _det(1, 3, inside, 0.9)]), 1.0, {}, {"bkg": 1})
    # A quarter over the region (COCO's crowd rule wants half): background, not a Loc error of
    # the crowd that a fix would turn into a true positive (hotcoco does).
    partly = [130.0, 130.0, 60.0, 60.0]
    _check(tide_errors(gt, [_det(1, 1, BOX, 0.5), _det(1, 1, partly, 0.9)]), 0.5, {"bkg": 0.5}, {"bkg": 1})


def test_the_100_highest_scored_detections_of_an_image_count():
    gt = _gt(1, [(1, 1, BOX, 0)])
    noise = [_det(1, 3, [150.0, 5.0, 20.0, 20.0], 0.5 + i / 1000) for i in range(100)]
    errors = tide_errors(gt, [*noise, _det(1, 1, BOX, 0.1)])  # the hit is the 101st
    _check(errors, 0.0, {}, {"bkg": 100, "miss": 1})  # dMiss 0: no object left, AP 0
    assert tide_errors(gt, [*noise[1:], _det(1, 1, BOX, 0.1)]).ap50 == pytest.approx(1.0)


def test_no_detections_and_image_restriction():
    gt = _gt(2, [(1, 1, BOX, 0), (2, 3, BOX, 0)])
    _check(tide_errors(gt, []), 0.0, {}, {"miss": 2})
    dets = [_det(1, 1, BOX, 0.9), _det(2, 1, BOX, 0.8)]  # the one on image 2 is a Cls error
    _check(tide_errors(gt, dets, image_ids=[1]), 1.0, {}, {})
    _check(tide_errors(gt, dets), 0.5, {"cls": 0.5}, {"cls": 1})


def test_table_lists_the_types_in_tide_order_in_ap_points():
    errors = tide.TideErrors(
        ap50=0.5, dap=dict(zip(ERROR_TYPES, (0.01, 0.02, 0.03, 0.04, 0.05, 0.06), strict=True)),
        counts=dict(zip(ERROR_TYPES, range(1, 7), strict=True)),
    )  # fmt: skip
    lines = errors.table().splitlines()
    assert "AP50 50.00" in lines[0]
    rows = [line.split() for line in lines[2:]]
    assert [r[0] for r in rows] == ["Cls", "Loc", "Both", "Dupe", "Bkg", "Miss"]
    assert [r[1] for r in rows] == ["1.00", "2.00", "3.00", "4.00", "5.00", "6.00"]
    assert [int(r[2]) for r in rows] == [1, 2, 3, 4, 5, 6]


# ---- references on random fixtures -----------------------------------------------------------


def _random(
    seed: int,
    *,
    crowd: float = 0.05,
    empty: float = 0.0,
    wrong: float = 0.15,
    jitter: float = 0.1,
    copies: int = 3,
    num_images: int = 40,
) -> tuple[dict, list[dict]]:
    """Objects of 3 classes (log-uniform sizes), 0-``copies`` jittered detections each (a
    ``wrong`` share with a random class), 0-4 background detections per image."""
    rng = np.random.default_rng(seed)
    objects, dets = [], []
    for image in range(1, num_images + 1):
        for _ in range(0 if rng.random() < empty else int(rng.integers(0, 6))):
            w, h = np.exp(rng.uniform(np.log(8), np.log(150), 2))
            box = [rng.uniform(0, 200 - w), rng.uniform(0, 200 - h), w, h]
            cat = int(rng.choice(CATS))
            objects.append((image, cat, [float(v) for v in box], int(rng.random() < crowd)))
            for _ in range(int(rng.integers(0, copies + 1))):
                b = np.abs(np.add(box, rng.normal(0, jitter, 4) * [w, h, w, h]))
                label = cat if rng.random() > wrong else int(rng.choice(CATS))
                dets.append(_det(image, label, [float(v) for v in b], float(rng.random())))
        for _ in range(int(rng.integers(0, 5))):
            box = [*rng.uniform(0, 150, 2), *rng.uniform(5, 50, 2)]
            dets.append(_det(image, int(rng.choice(CATS)), [float(v) for v in box], float(rng.random())))
    return _gt(num_images, objects), dets


FIXTURES = {
    "5% crowd": lambda: _random(0),
    "no crowd": lambda: _random(1, crowd=0.0),
    "30% crowd": lambda: _random(2, crowd=0.3),
    "half the images empty": lambda: _random(3, crowd=0.0, empty=0.5),
    "duplicates": lambda: _random(4, crowd=0.0, copies=6, jitter=0.05),
    "50% wrong class": lambda: _random(5, crowd=0.0, wrong=0.5),
    "poor boxes": lambda: _random(6, crowd=0.0, jitter=0.3),
    "no detections": lambda: (_random(7)[0], []),
}


@pytest.mark.parametrize("name", FIXTURES)
def test_ap50_is_pycocotools_ap50(name):
    gt, dets = FIXTURES[name]()
    for image_ids in (None, list(range(1, 21))):
        stats, _, _ = coco_bbox_eval(gt, dets, backend="pycocotools", image_ids=image_ids)
        assert tide_errors(gt, dets, image_ids=image_ids).ap50 == pytest.approx(stats[1], abs=1e-12)


def _same_rules(gt: dict, dets: list[dict]) -> tuple[str, ...]:
    """The dAP keys where hotcoco's and tidecv's rules give ours on this fixture: all but Cls
    and Loc when an unmatched object has both a Loc and a Cls error pointing at it (they let the
    higher-scored one claim it for both types: test_one_type_is_fixed_at_a_time)."""
    m = tide._match(gt, dets, None, 0.5, 0.1)
    loc = set(m.det_target[m.det_status == tide._LOC].tolist()) - set(np.flatnonzero(m.gt_used).tolist())
    cls = set(m.det_target[m.det_status == tide._CLS].tolist())
    return tuple(e for e in ERROR_TYPES if not (loc & cls and e in ("cls", "loc")))


def _hotcoco(gt: dict, dets: list[dict]) -> tuple[float, dict[str, float], dict[str, int]]:
    hotcoco = pytest.importorskip("hotcoco")
    coco_gt = hotcoco.COCO()
    coco_gt.dataset = prepare_gt(gt)
    coco_dt = coco_gt.load_res([dict(d) for d in dets])
    ev = hotcoco.COCOeval(coco_gt, coco_dt, "bbox")
    ev.evaluate()
    out = ev.tide_errors(pos_thr=0.5, bg_thr=0.1)
    return (
        out["ap_base"],
        {e: out["delta_ap"][e.capitalize()] for e in ERROR_TYPES},
        {e: out["counts"][e.capitalize()] for e in ERROR_TYPES},
    )


@pytest.mark.parametrize("name", [n for n in FIXTURES if "crowd" not in n])
def test_equals_hotcoco_without_crowd(name):
    """Without crowd regions (hotcoco makes a detection partly over one a Loc error of it:
    test_crowd_regions_are_ignore_regions_of_their_class) and at <= 100 detections per image."""
    gt, dets = FIXTURES[name]()
    ap, dap, counts = _hotcoco(gt, dets)
    ours = tide_errors(gt, dets)
    same = _same_rules(gt, dets)
    assert ours.ap50 == pytest.approx(ap, abs=1e-12)
    assert {e: ours.dap[e] for e in same} == pytest.approx({e: dap[e] for e in same}, abs=1e-12)
    assert ours.counts == counts
    assert max(ours.dap.values()) > 0.01 or not dets  # errors that cost AP to compare


def _tidecv(gt: dict, dets: list[dict]) -> tuple[float, dict[str, float], dict[str, int]]:
    tidecv = pytest.importorskip("tidecv")
    from tidecv.errors import main_errors as tidecv_errors

    truth, preds = tidecv.Data("gt"), tidecv.Data("dets")
    for image in gt["images"]:
        truth.add_image(image["id"], str(image["id"]))
    for ann in gt["annotations"]:
        add = truth.add_ignore_region if ann["iscrowd"] else truth.add_ground_truth
        add(ann["image_id"], ann["category_id"], ann["bbox"])
    for d in dets:
        preds.add_detection(d["image_id"], d["category_id"], d["score"], d["bbox"])
    with contextlib.redirect_stdout(io.StringIO()):
        run = tidecv.TIDE().evaluate(truth, preds, mode=tidecv.TIDE.BOX)
        fixed = run.fix_main_errors()
    names = {
        tidecv_errors.ClassError: "cls", tidecv_errors.BoxError: "loc", tidecv_errors.OtherError: "both",
        tidecv_errors.DuplicateError: "dupe", tidecv_errors.BackgroundError: "bkg",
        tidecv_errors.MissedError: "miss",
    }  # fmt: skip
    return (
        run.ap / 100,
        {names[k]: v / 100 for k, v in fixed.items()},
        {names[k]: len(v) for k, v in run.error_dict.items()},
    )


@pytest.mark.parametrize("name", [n for n in FIXTURES if n != "no detections"])  # tidecv divides by 0
def test_equals_tidecv_on_its_recall_grid(name, monkeypatch):
    """tidecv samples recall at k / 100, one ulp off COCO's np.linspace at some points (its dMiss
    is 0.09 points off on "duplicates"); on its grid, ours gives its numbers. It also counts the
    detections that a crowd region ignores as errors (of no dAP)."""
    gt, dets = FIXTURES[name]()
    ap, dap, counts = _tidecv(gt, dets)
    monkeypatch.setattr(tide, "_RECALLS", np.array([k / 100 for k in range(101)]))
    ours = tide_errors(gt, dets)
    same = _same_rules(gt, dets)
    assert ours.ap50 == pytest.approx(ap, abs=1e-12)
    assert {e: ours.dap[e] for e in same} == pytest.approx({e: dap[e] for e in same}, abs=1e-12)
    if not any(a["iscrowd"] for a in gt["annotations"]):
        assert ours.counts == counts


def test_the_references_are_compared_on_every_type():
    compared = {e for name, make in FIXTURES.items() if name != "no detections" for e in _same_rules(*make())}
    assert compared == set(ERROR_TYPES)
