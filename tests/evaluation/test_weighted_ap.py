"""Weighted COCO AP from per-image match records: pycocotools as the reference.

All weights 1 must give pycocotools' ``summarize()`` stats[0:6] and per-category AP; integer
weights must give COCOeval on a dataset with duplicated images (exactly when no image has
tied scores within a category, see ``detmine.evaluation.weighted_ap``, "Ties").
"""

from __future__ import annotations

import contextlib
import io
import pickle

import numpy as np
import pytest
from pycocotools.coco import COCO
from pycocotools.cocoeval import COCOeval

from detmine.errors import DataError
from detmine.evaluation import weighted_ap
from detmine.evaluation.coco_eval import prepare_gt
from detmine.evaluation.image_matches import ImageMatches, image_matches
from detmine.evaluation.weighted_ap import STAT_NAMES, coco_ap, coco_metric_batch

CAT_IDS = (2, 5, 7, 11)  # 11 has detections but never any GT
IMAGE_SIZE = 640.0


def synthetic(
    seed: int,
    num_images: int = 36,
    unique_scores: bool = False,
    crowd: bool = True,
    many_dets: bool = True,
) -> tuple[dict, list[dict]]:
    """A COCO GT dict and noisy results: small / medium / large boxes, crowd GT, images
    without GT, a category without GT, tied scores (scores on a grid of 40 values, so ties
    within and across images) or, with ``unique_scores``, scores unique within each (image,
    category) but on a grid of 100 values (ties across images), and more than 100 detections
    of one category on a few images.
    """
    rng = np.random.default_rng(seed)
    # non-contiguous ids, listed out of order: pycocotools sorts them
    image_ids = rng.permutation(np.arange(num_images) * 3 + 7).tolist()
    images = [{"id": int(i), "width": IMAGE_SIZE, "height": IMAGE_SIZE} for i in image_ids]
    annotations: list[dict] = []
    results: list[dict] = []

    def box(scale: str) -> list[float]:
        lo, hi = {"small": (4, 30), "medium": (34, 90), "large": (100, 300)}[scale]
        w, h = rng.uniform(lo, hi, size=2)
        x, y = rng.uniform(0, IMAGE_SIZE - w), rng.uniform(0, IMAGE_SIZE - h)
        return [float(x), float(y), float(w), float(h)]

    def jitter(b: list[float], amount: float) -> list[float]:
        x, y, w, h = b
        dx, dy = rng.normal(0, amount * w), rng.normal(0, amount * h)
        sw, sh = np.exp(rng.normal(0, amount, size=2))
        return [float(x + dx), float(y + dy), float(w * sw), float(h * sh)]

    for n, image_id in enumerate(image_ids):
        with_gt = n % 4 != 0  # a quarter of the images have no GT
        dets: dict[int, list[list[float]]] = {c: [] for c in CAT_IDS}
        if with_gt:
            for _ in range(rng.integers(1, 7)):
                cat = int(rng.choice(CAT_IDS[:3]))
                b = box(str(rng.choice(["small", "medium", "large"])))
                is_crowd = crowd and rng.random() < 0.1
                annotations.append(
                    {
                        "image_id": image_id,
                        "category_id": cat,
                        "bbox": b,
                        # a segmentation's area, a bit under the box's: area ranges read it
                        "area": b[2] * b[3] * float(rng.uniform(0.6, 1.0)),
                        "iscrowd": int(is_crowd),
                    }
                )
                for _ in range(rng.integers(0, 3)):  # 0-2 detections per GT, some good, some poor
                    dets[cat].append(jitter(b, float(rng.choice([0.02, 0.08, 0.2]))))
        for _ in range(rng.integers(0, 6)):  # false positives anywhere, any category
            dets[int(rng.choice(CAT_IDS))].append(box(str(rng.choice(["small", "medium", "large"]))))
        if many_dets and n % 9 == 1:  # over maxDets=100 of one category on this image
            cat = CAT_IDS[n % 3]
            for _ in range(130):
                dets[cat].append(box(str(rng.choice(["small", "medium"]))))
        for cat, boxes in dets.items():
            if unique_scores:
                grid = np.linspace(0.01, 0.99, 100)
                scores = rng.choice(grid, size=len(boxes), replace=False)
            else:
                scores = rng.integers(1, 41, size=len(boxes)) / 40.0
            for b, s in zip(boxes, scores, strict=True):
                results.append({"image_id": image_id, "category_id": cat, "bbox": b, "score": float(s)})
    order = rng.permutation(len(results))  # results in no particular order
    gt = {
        "images": images,
        "annotations": annotations,
        "categories": [{"id": c, "name": f"c{c}"} for c in CAT_IDS],
    }
    return gt, [results[i] for i in order]


def pycocotools_eval(gt: dict, results: list[dict]) -> tuple[np.ndarray, dict[int, float]]:
    """pycocotools' stats[0:6] and per-category AP (IoU .50:.95, area all, maxDets 100)."""
    with contextlib.redirect_stdout(io.StringIO()):
        coco_gt = COCO()
        coco_gt.dataset = prepare_gt(gt)
        coco_gt.createIndex()
        coco_dt = coco_gt.loadRes([dict(r) for r in results])
        ev = COCOeval(coco_gt, coco_dt, iouType="bbox")
        ev.evaluate()
        ev.accumulate()
        ev.summarize()
    precision = ev.eval["precision"][:, :, :, 0, -1]
    per_cat = {}
    for k, cat in enumerate(ev.params.catIds):
        p = precision[:, :, k]
        per_cat[int(cat)] = float(np.mean(p[p > -1])) if np.any(p > -1) else -1.0
    return np.asarray(ev.stats[:6]), per_cat


def as_array(ap: dict) -> np.ndarray:
    return np.array([ap[name] for name in STAT_NAMES])


def duplicated(
    gt: dict, results: list[dict], weights: dict[int, int], adjacent: bool = True
) -> tuple[dict, list[dict]]:
    """The dataset where image ``i`` appears ``weights[i]`` times (0 = dropped), copies with
    new ids; ``adjacent``: ids ``id * 10 + c``, so the copies of an image sort next to each
    other in their original order; else the copies go after all originals."""
    top = max(img["id"] for img in gt["images"]) + 1
    id_of: dict[tuple[int, int], int] = {}
    for n, img in enumerate(sorted(gt["images"], key=lambda x: x["id"])):
        for c in range(weights[img["id"]]):
            id_of[img["id"], c] = img["id"] * 10 + c if adjacent else (img["id"] if c == 0 else top * c + n)
    images = [{**img, "id": id_of[img["id"], c]} for img in gt["images"] for c in range(weights[img["id"]])]
    anns = [
        {**a, "image_id": id_of[a["image_id"], c]}
        for a in gt["annotations"]
        for c in range(weights[a["image_id"]])
    ]
    res = [{**r, "image_id": id_of[r["image_id"], c]} for r in results for c in range(weights[r["image_id"]])]
    return {**gt, "images": images, "annotations": anns}, res


@pytest.fixture(scope="module")
def tied() -> tuple[dict, list[dict], ImageMatches]:
    gt, results = synthetic(seed=0)
    return gt, results, image_matches(gt, results)


@pytest.fixture(scope="module")
def untied() -> tuple[dict, list[dict], ImageMatches]:
    gt, results = synthetic(seed=1, num_images=24, unique_scores=True, many_dets=False)
    return gt, results, image_matches(gt, results)


def test_fixture_covers_the_cases(tied):
    gt, results, m = tied
    per_image_cat: dict[tuple[int, int], list[float]] = {}
    for r in results:
        per_image_cat.setdefault((r["image_id"], r["category_id"]), []).append(r["score"])
    assert max(len(v) for v in per_image_cat.values()) > 100
    assert any(len(set(v)) < len(v) for v in per_image_cat.values())  # ties within an image
    assert any(a["iscrowd"] for a in gt["annotations"])
    assert len({a["image_id"] for a in gt["annotations"]}) < len(gt["images"])
    assert 11 not in {a["category_id"] for a in gt["annotations"]}
    areas = [a["area"] for a in gt["annotations"]]
    assert min(areas) < 32**2 and max(areas) > 96**2 and any(32**2 < x < 96**2 for x in areas)
    assert m.num_images == len(gt["images"]) and list(m.category_ids) == sorted(CAT_IDS)
    assert m.matched.shape == m.ignored.shape == (10, len(m.scores))


@pytest.mark.parametrize("seed", [0, 2, 3, 4])
def test_all_ones_equal_pycocotools(seed):
    gt, results = synthetic(seed=seed, crowd=seed != 3)
    stats, per_cat = pycocotools_eval(gt, results)
    ap = coco_ap(image_matches(gt, results))
    np.testing.assert_allclose(as_array(ap), stats, rtol=0, atol=1e-12)
    assert ap["per_category"].keys() == per_cat.keys()
    np.testing.assert_allclose(list(ap["per_category"].values()), list(per_cat.values()), rtol=0, atol=1e-12)
    assert ap["per_category"][11] == -1.0


def test_all_ones_equal_pycocotools_with_unique_scores(untied):
    gt, results, m = untied
    stats, per_cat = pycocotools_eval(gt, results)
    ap = coco_ap(m, np.ones(m.num_images))
    np.testing.assert_allclose(as_array(ap), stats, rtol=0, atol=1e-12)
    np.testing.assert_allclose(list(ap["per_category"].values()), list(per_cat.values()), rtol=0, atol=1e-12)


def test_only_small_gt_leaves_other_areas_undefined():
    # One small GT, one detection on it: APm and APl are -1 in pycocotools too.
    gt = {
        "images": [{"id": 1, "width": 100, "height": 100}, {"id": 2, "width": 100, "height": 100}],
        "annotations": [{"image_id": 1, "category_id": 1, "bbox": [10, 10, 20, 20], "iscrowd": 0}],
        "categories": [{"id": 1, "name": "a"}],
    }
    results = [
        {"image_id": 1, "category_id": 1, "bbox": [10, 10, 20, 20], "score": 0.9},
        {"image_id": 2, "category_id": 1, "bbox": [10, 10, 50, 50], "score": 0.95},
    ]
    stats, _ = pycocotools_eval(gt, results)
    ap = coco_ap(image_matches(gt, results))
    np.testing.assert_allclose(as_array(ap), stats, rtol=0, atol=1e-12)
    assert ap["APm"] == ap["APl"] == -1.0
    assert coco_ap(image_matches(gt, results), np.array([0.0, 1.0]))["AP"] == -1.0  # no GT left


def test_no_results():
    gt, _ = synthetic(seed=5, num_images=8)
    ap = coco_ap(image_matches(gt, []))
    assert [ap[n] for n in STAT_NAMES] == [0.0] * 6
    assert ap["per_category"] == {2: 0.0, 5: 0.0, 7: 0.0, 11: -1.0}


@pytest.mark.parametrize("adjacent", [True, False])
def test_integer_weights_equal_duplicated_images_exactly_without_ties_in_an_image(untied, adjacent):
    gt, results, m = untied
    rng = np.random.default_rng(7)
    weights = rng.integers(0, 4, size=m.num_images)
    weights[:3] = (0, 1, 3)
    by_id = {int(i): int(w) for i, w in zip(m.image_ids, weights, strict=True)}
    gt2, results2 = duplicated(gt, results, by_id, adjacent=adjacent)
    ap = coco_ap(m, weights.astype(float))
    if adjacent:  # tie order across images the same as COCOeval's: equal to rounding
        stats, per_cat = pycocotools_eval(gt2, results2)
        np.testing.assert_allclose(as_array(ap), stats, rtol=0, atol=1e-12)
        np.testing.assert_allclose(
            list(ap["per_category"].values()), list(per_cat.values()), rtol=0, atol=1e-12
        )
        # the records of the duplicated dataset give the same numbers with weights 1
        np.testing.assert_allclose(as_array(coco_ap(image_matches(gt2, results2))), stats, rtol=0, atol=1e-12)
    else:  # copies after all originals reorder the ties across images: equal up to tie order
        stats, _ = pycocotools_eval(gt2, results2)
        assert 1e-9 < np.abs(as_array(ap) - stats).max() < 0.02
    # without any tied score at all, where the copies go does not matter
    no_ties = [{**r, "score": 0.5 + 0.4 * np.sin(j + 0.5)} for j, r in enumerate(results)]
    assert len({r["score"] for r in no_ties}) == len(no_ties)
    stats, _ = pycocotools_eval(*duplicated(gt, no_ties, by_id, adjacent=adjacent))
    np.testing.assert_allclose(
        as_array(coco_ap(image_matches(gt, no_ties), weights)), stats, rtol=0, atol=1e-12
    )


def test_ties_within_an_image_make_the_equality_hold_up_to_tie_order(tied):
    gt, results, m = tied
    weights = np.full(m.num_images, 2)
    stats, _ = pycocotools_eval(*duplicated(gt, results, {int(i): 2 for i in m.image_ids}))
    ap = as_array(coco_ap(m, weights))
    assert np.abs(ap - stats).max() < 0.02  # close, not (in general) equal: d1 d1 d2 d2 vs d1 d2 d1 d2


def test_zero_weight_drops_the_image(tied):
    gt, results, m = tied
    weights = np.ones(m.num_images)
    weights[::5] = 0
    kept = {int(i) for i in m.image_ids[weights > 0]}
    gt2 = {**gt, "images": [img for img in gt["images"] if img["id"] in kept]}
    gt2["annotations"] = [a for a in gt["annotations"] if a["image_id"] in kept]
    stats, _ = pycocotools_eval(gt2, [r for r in results if r["image_id"] in kept])
    np.testing.assert_allclose(as_array(coco_ap(m, weights)), stats, rtol=0, atol=1e-12)


def test_scaling_all_weights_changes_nothing(tied):
    _, _, m = tied
    rng = np.random.default_rng(3)
    weights = rng.integers(0, 3, size=m.num_images).astype(float)
    np.testing.assert_allclose(
        as_array(coco_ap(m, 4 * weights)), as_array(coco_ap(m, weights)), rtol=0, atol=1e-12
    )


def test_batch_equals_one_at_a_time(tied):
    _, _, m = tied
    rng = np.random.default_rng(4)
    weights = rng.multinomial(m.num_images, np.full(m.num_images, 1 / m.num_images), size=7).astype(float)
    for metric in STAT_NAMES:
        batch = coco_metric_batch(m, weights, metric)
        one = [coco_ap(m, w)[metric] for w in weights]
        np.testing.assert_allclose(batch, one, rtol=0, atol=1e-12)


def test_save_load_and_pickle_round_trip(tied, tmp_path):
    _, _, m = tied
    m.save(tmp_path / "m.npz")
    loaded = ImageMatches.load(tmp_path / "m.npz")
    assert loaded.max_dets == 100
    assert as_array(coco_ap(loaded)).tolist() == as_array(coco_ap(m)).tolist()
    assert m._cache  # coco_ap cached its derived arrays ...
    unpickled = pickle.loads(pickle.dumps(m))
    assert unpickled._cache == {}  # ... which a pickle leaves behind
    assert as_array(coco_ap(unpickled)).tolist() == as_array(coco_ap(m)).tolist()
    assert repr(m) == f"ImageMatches(images=36, categories=4, records={len(m.scores)})"


def test_bad_input():
    gt, results = synthetic(seed=6, num_images=4)
    m = image_matches(gt, results)
    with pytest.raises(DataError, match="not in the ground truth"):
        image_matches(gt, results + [{**results[0], "image_id": 10_000}])
    with pytest.raises(ValueError, match="shape"):
        coco_ap(m, np.ones(3))
    with pytest.raises(ValueError, match=">= 0"):
        coco_ap(m, -np.ones(4))
    with pytest.raises(ValueError, match="unknown"):
        coco_metric_batch(m, np.ones((1, 4)), "AR100")


def test_both_ways_to_count_the_base_records(tied, monkeypatch):
    # The running totals at the TPs come from a matrix product when it is cheap, else from a
    # cumulative sum: the fixtures are small enough for the product; force the sum.
    gt, results, m = tied
    stats, _ = pycocotools_eval(gt, results)
    rng = np.random.default_rng(8)
    weights = rng.multinomial(m.num_images, np.full(m.num_images, 1 / m.num_images), size=5).astype(float)
    by_product = {metric: coco_metric_batch(m, weights, metric) for metric in STAT_NAMES}
    assert all(c.counts is not None for c in weighted_ap._plan(m, 0, tuple(range(10))))
    monkeypatch.setattr(weighted_ap, "_MATMUL_RATIO", 0)
    m2 = image_matches(gt, results)
    assert all(c.counts is None for c in weighted_ap._plan(m2, 0, tuple(range(10))) if len(c.points))
    np.testing.assert_allclose(as_array(coco_ap(m2)), stats, rtol=0, atol=1e-12)
    for metric in STAT_NAMES:
        np.testing.assert_array_equal(coco_metric_batch(m2, weights, metric), by_product[metric])


def test_recall_bucket_is_searchsorted():
    thresholds = np.linspace(0.0, 1.0, 101)  # pycocotools' recThrs
    # recalls as pycocotools forms them (tp / npig), many exactly at or next to a threshold
    npig = np.arange(1, 400)
    tp = np.concatenate([np.arange(0, n + 1) for n in npig]).astype(float)
    recall = tp / np.repeat(npig, npig + 1)
    recall = np.concatenate(
        [recall, thresholds, np.nextafter(thresholds, -1)[1:], np.nextafter(thresholds, 2)]
    )
    expected = np.searchsorted(thresholds, recall, side="right")
    np.testing.assert_array_equal(weighted_ap._recall_bucket(recall, thresholds), expected)
    other = np.array([0.0, 0.3, 0.7, 1.0])  # not evenly spaced: the plain search
    np.testing.assert_array_equal(
        weighted_ap._recall_bucket(recall, other), np.searchsorted(other, recall, "right")
    )
