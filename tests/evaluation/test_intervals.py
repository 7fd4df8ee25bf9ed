"""Student-t quantiles and intervals, and the paired image bootstrap of COCO AP differences."""

from __future__ import annotations

import math

import numpy as np
import pytest

from detmine.evaluation.image_matches import ImageMatches, image_matches
from detmine.evaluation.intervals import (
    Interval,
    paired_bootstrap,
    regularized_incomplete_beta,
    student_t_cdf,
    student_t_ppf,
    t_interval,
)
from detmine.evaluation.weighted_ap import coco_ap

# t_{0.975, df} as printed in the usual tables (3 decimals)
T_TABLE_975 = {1: 12.706, 2: 4.303, 4: 2.776, 10: 2.228, 30: 2.042}


@pytest.mark.parametrize("df, expected", sorted(T_TABLE_975.items()))
def test_t_quantile_matches_the_table(df, expected):
    assert abs(student_t_ppf(0.975, df) - expected) <= 5e-4  # the table's rounding


def test_t_quantile_other_table_values_and_limits():
    assert abs(student_t_ppf(0.95, 5) - 2.015) <= 5e-4
    assert abs(student_t_ppf(0.995, 10) - 3.169) <= 5e-4
    assert abs(student_t_ppf(0.9, 20) - 1.325) <= 5e-4
    assert abs(student_t_ppf(0.975, 1e7) - 1.959964) <= 1e-5  # -> the normal quantile
    assert student_t_ppf(0.5, 3) == 0.0


@pytest.mark.parametrize("p", [0.6, 0.9, 0.975, 0.995, 0.9995])
def test_t_quantile_closed_forms(p):
    # df = 1 (Cauchy): tan(pi (p - 1/2)); df = 2: (2p - 1) / sqrt(2 p (1 - p)).
    assert student_t_ppf(p, 1) == pytest.approx(math.tan(math.pi * (p - 0.5)), rel=1e-11)
    assert student_t_ppf(p, 2) == pytest.approx((2 * p - 1) / math.sqrt(2 * p * (1 - p)), rel=1e-11)
    for df in (1, 3, 7.5, 50):
        t = student_t_ppf(p, df)
        assert student_t_ppf(1 - p, df) == -t
        assert student_t_cdf(t, df) == pytest.approx(p, abs=1e-13)
        assert student_t_cdf(-t, df) == pytest.approx(1 - p, abs=1e-13)


def test_incomplete_beta_known_values():
    for x in (0.0, 0.1, 0.37, 0.5, 0.9, 1.0):
        assert regularized_incomplete_beta(1, 1, x) == pytest.approx(x, abs=1e-15)
        assert regularized_incomplete_beta(3, 1, x) == pytest.approx(x**3, abs=1e-14)
        assert regularized_incomplete_beta(1, 4, x) == pytest.approx(1 - (1 - x) ** 4, abs=1e-14)
    assert regularized_incomplete_beta(2.5, 2.5, 0.5) == pytest.approx(0.5, abs=1e-14)
    with pytest.raises(ValueError):
        regularized_incomplete_beta(0, 1, 0.5)
    with pytest.raises(ValueError):
        student_t_ppf(1.0, 3)


def test_t_interval_by_hand():
    # mean 2, s = 1, n = 3: 2 +- 4.3027 / sqrt(3)
    iv = t_interval([1.0, 2.0, 3.0])
    half = student_t_ppf(0.975, 2) / math.sqrt(3)
    assert (iv.mean, iv.low, iv.high, iv.confidence) == pytest.approx((2.0, 2.0 - half, 2.0 + half, 0.95))
    assert not iv.excludes_zero
    assert t_interval([1.0, 1.1, 0.9, 1.05]).excludes_zero
    assert t_interval([-1.0, -1.1, -0.9, -1.05]).excludes_zero
    assert t_interval([0.5, 0.5, 0.5]) == Interval(0.5, 0.5, 0.5, 0.95)  # no spread: a point


def test_t_interval_of_one_value_is_unbounded():
    iv = t_interval([0.3])
    assert (iv.mean, iv.low, iv.high) == (0.3, -math.inf, math.inf)
    assert not iv.excludes_zero


def test_t_interval_rejects_bad_input():
    with pytest.raises(ValueError, match="at least one"):
        t_interval([])
    with pytest.raises(ValueError, match="finite"):
        t_interval([1.0, float("nan")])
    with pytest.raises(ValueError, match="confidence"):
        t_interval([1.0, 2.0], confidence=1.0)


@pytest.mark.parametrize("n", [3, 5])
def test_t_interval_coverage(n):
    # 4000 seeded normal samples of size n: the 95% interval holds the true mean in a fraction
    # whose standard error is sqrt(.95 * .05 / 4000) = 0.0034; allow 0.015 (4.4 standard errors).
    # The normal quantile 1.96 in its place covers far less at these n (0.83 at n = 3).
    rng = np.random.default_rng(n)
    true_mean, repeats = 0.3, 4000
    samples = rng.normal(true_mean, 2.0, size=(repeats, n))
    covered = [(iv := t_interval(x)).low <= true_mean <= iv.high for x in samples]
    assert abs(np.mean(covered) - 0.95) < 0.015
    half_z = 1.959964 * samples.std(axis=1, ddof=1) / math.sqrt(n)
    z_covered = np.abs(samples.mean(axis=1) - true_mean) <= half_z
    assert np.mean(z_covered) < 0.93


# --- paired bootstrap ---------------------------------------------------------------------

NUM_IMAGES = 40
CATS = (1, 2, 3)


def _gt() -> dict:
    rng = np.random.default_rng(100)
    annotations = []
    for image_id in range(1, NUM_IMAGES + 1):
        for _ in range(rng.integers(1, 5)):  # every image has GT
            w, h = rng.uniform(10, 150, size=2)
            x, y = rng.uniform(0, 300 - w), rng.uniform(0, 300 - h)
            annotations.append(
                {
                    "image_id": image_id,
                    "category_id": int(rng.choice(CATS)),
                    "bbox": [x, y, w, h],
                    "iscrowd": 0,
                }
            )
    return {
        "images": [{"id": i, "width": 300, "height": 300} for i in range(1, NUM_IMAGES + 1)],
        "annotations": annotations,
        "categories": [{"id": c, "name": f"c{c}"} for c in CATS],
    }


GT = _gt()


def _run(seed: int, noise: float, gt: dict = GT) -> ImageMatches:
    """A run's match records: one detection per GT, its box jittered by ``noise``, plus two
    random false positives per image; ``noise=0``: perfect, the false positives ranked last."""
    rng = np.random.default_rng(seed)
    results = []
    for a in gt["annotations"]:
        x, y, w, h = a["bbox"]
        jitter = rng.normal(0, noise, size=4) * [w, h, w, h]
        box = [x + jitter[0], y + jitter[1], max(w + jitter[2], 1.0), max(h + jitter[3], 1.0)]
        results.append({"image_id": a["image_id"], "category_id": a["category_id"], "bbox": box,
                        "score": float(rng.uniform(0.3, 1.0))})  # fmt: skip
    for img in gt["images"]:
        for _ in range(2):
            results.append({"image_id": img["id"], "category_id": int(rng.choice(CATS)),
                            "bbox": [*rng.uniform(0, 200, size=2), 40.0, 40.0],
                            "score": float(rng.uniform(0.0, 0.6 if noise else 0.25))})  # fmt: skip
    return image_matches(gt, results)


@pytest.fixture(scope="module")
def runs() -> dict[str, list[ImageMatches]]:
    return {
        "baseline": [_run(s, 0.12) for s in range(3)],
        "baseline_again": [_run(s, 0.12) for s in range(3)],  # equal records, other objects
        "better": [_run(10 + s, 0.06) for s in range(3)],
        "perfect": [_run(20 + s, 0.0) for s in range(3)],
    }


def test_identical_runs_give_exactly_zero(runs):
    iv = paired_bootstrap(runs["baseline_again"], runs["baseline"], num_samples=300)
    assert (iv.mean, iv.low, iv.high) == (0.0, 0.0, 0.0)
    assert not iv.excludes_zero


def test_better_on_every_image_gives_an_interval_above_zero(runs):
    # Perfect boxes on every image: AP 1 on any resample; the baseline's jittered boxes miss at
    # the high IoU thresholds on every image.
    ap_perfect = [coco_ap(r)["AP"] for r in runs["perfect"]]
    assert min(ap_perfect) == pytest.approx(1.0, abs=1e-12)
    iv = paired_bootstrap(runs["perfect"], runs["baseline"], num_samples=300)
    assert iv.excludes_zero and iv.low > 0 and iv.low <= iv.mean <= iv.high
    worse = paired_bootstrap(runs["baseline"], runs["perfect"], num_samples=300)
    assert worse.high < 0 and worse.mean == pytest.approx(-iv.mean, abs=1e-15)


def test_mean_is_the_mean_paired_difference_over_seeds(runs):
    iv = paired_bootstrap(runs["better"], runs["baseline"], metric="AP75", num_samples=50)
    diffs = [
        coco_ap(s)["AP75"] - coco_ap(b)["AP75"] for s, b in zip(runs["better"], runs["baseline"], strict=True)
    ]
    assert iv.mean == pytest.approx(np.mean(diffs), abs=1e-12)
    assert iv.confidence == 0.95


def test_bootstrap_equals_a_one_resample_at_a_time_reference(runs):
    # The reference: draw the same resamples, score each run with coco_ap, take the quantiles.
    num_samples, seed, confidence = 40, 5, 0.9
    strategy, baseline = runs["better"], runs["baseline"]
    iv = paired_bootstrap(
        strategy, baseline, "AP50", num_samples=num_samples, seed=seed, confidence=confidence
    )
    rng = np.random.default_rng(seed)
    weights = rng.multinomial(NUM_IMAGES, np.full(NUM_IMAGES, 1 / NUM_IMAGES), size=num_samples)
    stats = [
        np.mean(
            [coco_ap(s, w)["AP50"] - coco_ap(b, w)["AP50"] for s, b in zip(strategy, baseline, strict=True)]
        )
        for w in weights
    ]
    low, high = np.quantile(stats, [0.05, 0.95])
    assert (iv.low, iv.high) == pytest.approx((low, high), abs=1e-12)


def test_bootstrap_is_reproducible(runs):
    a = paired_bootstrap(runs["better"], runs["baseline"], num_samples=200, seed=3)
    fresh_strategy = [_run(10 + s, 0.06) for s in range(3)]  # nothing cached on these
    fresh_baseline = [_run(s, 0.12) for s in range(3)]
    b = paired_bootstrap(fresh_strategy, fresh_baseline, num_samples=200, seed=3)
    assert a == b
    c = paired_bootstrap(runs["better"], runs["baseline"], num_samples=200, seed=4)
    assert (c.low, c.high) != (a.low, a.high) and c.mean == a.mean
    narrow = paired_bootstrap(runs["better"], runs["baseline"], num_samples=200, seed=3, confidence=0.5)
    assert a.low <= narrow.low <= narrow.high <= a.high


def test_mismatched_runs_raise(runs):
    fewer = {**GT, "images": GT["images"][:-1]}
    fewer["annotations"] = [a for a in GT["annotations"] if a["image_id"] != NUM_IMAGES]
    other = _run(0, 0.12, gt=fewer)
    with pytest.raises(ValueError, match="other images"):
        paired_bootstrap([other, *runs["better"][1:]], runs["baseline"], num_samples=10)
    renumbered = {**GT, "images": [{**img, "id": img["id"] + 1000} for img in GT["images"]]}
    renumbered["annotations"] = [{**a, "image_id": a["image_id"] + 1000} for a in GT["annotations"]]
    with pytest.raises(ValueError, match="other images"):
        paired_bootstrap(
            runs["better"], [_run(0, 0.12, gt=renumbered), *runs["baseline"][1:]], num_samples=10
        )
    with pytest.raises(ValueError, match="as many"):
        paired_bootstrap(runs["better"], runs["baseline"][:2])
    with pytest.raises(ValueError, match="as many"):
        paired_bootstrap([], [])
    with pytest.raises(ValueError, match="unknown"):
        paired_bootstrap(runs["better"], runs["baseline"], metric="AR100")
    with pytest.raises(ValueError, match="num_samples"):
        paired_bootstrap(runs["better"], runs["baseline"], num_samples=0)
