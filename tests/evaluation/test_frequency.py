"""AP by class-frequency bucket: tertiles and LVIS buckets of hand-chosen counts, NaN classes
left out of a bucket's mean, the printed table."""

from __future__ import annotations

import math

import pytest

from detmine.analysis import ClassCounts
from detmine.evaluation.frequency import bucket_ap, bucket_table, frequency_buckets


def _counts(images: dict[str, int]) -> ClassCounts:
    names = list(images)
    return ClassCounts(
        class_names=names,
        instances=[2 * images[n] for n in names],
        images=[images[n] for n in names],
        num_images=1000,
        images_without_objects=0,
    )


def test_tertiles_of_six_classes_sort_by_training_images():
    # Sorted by images: b 1, f 2, c 3, d 3, a 5, e 100 -> two classes per bucket.
    names = ["a", "b", "c", "d", "e", "f"]
    buckets = frequency_buckets([5, 1, 3, 3, 100, 2], names)
    assert list(buckets) == ["rare", "common", "frequent"]
    assert buckets == {"rare": ["b", "f"], "common": ["c", "d"], "frequent": ["a", "e"]}


def test_tertiles_of_seven_two_and_one_classes():
    # 7 = 2 + 3 + 2: the one left over goes to common.
    names = [f"c{i}" for i in range(7)]
    buckets = frequency_buckets([70, 60, 50, 40, 30, 20, 10], names)
    assert buckets == {"rare": ["c6", "c5"], "common": ["c4", "c3", "c2"], "frequent": ["c1", "c0"]}
    # Two classes: one rare, one frequent, common empty.
    assert frequency_buckets([9, 3], ["many", "few"]) == {"rare": ["few"], "common": [], "frequent": ["many"]}
    # One class alone is common.
    assert frequency_buckets([4], ["only"]) == {"rare": [], "common": ["only"], "frequent": []}
    assert frequency_buckets([], []) == {"rare": [], "common": [], "frequent": []}


def test_tertiles_break_ties_by_name_and_fill_every_bucket():
    assert frequency_buckets([4, 4, 4], ["z", "y", "x"]) == {
        "rare": ["x"],
        "common": ["y"],
        "frequent": ["z"],
    }
    # 8 = 3 + 2 + 3; equal counts on both sides of a cut are split by name.
    buckets = frequency_buckets([1] * 8, list("hgfedcba"))
    assert buckets == {"rare": ["a", "b", "c"], "common": ["d", "e"], "frequent": ["f", "g", "h"]}


def test_lvis_thresholds_at_their_bounds():
    names = ["none", "one", "ten", "eleven", "hundred", "hundred_one"]
    buckets = frequency_buckets([0, 1, 10, 11, 100, 101], names, split="lvis")
    assert buckets == {
        "rare": ["none", "one", "ten"],
        "common": ["eleven", "hundred"],
        "frequent": ["hundred_one"],
    }
    # LVIS buckets may be empty.
    assert frequency_buckets([500, 200], ["x", "y"], split="lvis") == {
        "rare": [],
        "common": [],
        "frequent": ["y", "x"],
    }


def test_bad_split_or_lengths_are_value_errors():
    with pytest.raises(ValueError, match="unknown frequency split 'quartiles'"):
        frequency_buckets([1, 2, 3], ["a", "b", "c"], split="quartiles")
    with pytest.raises(ValueError, match="2 image counts for 3 class names"):
        frequency_buckets([1, 2], ["a", "b", "c"])


def test_bucket_ap_leaves_nan_classes_out():
    buckets = {"rare": ["b", "f"], "common": ["c", "d"], "frequent": ["a", "e"]}
    ap = bucket_ap({"a": math.nan, "b": 0.2, "c": 0.4, "d": 0.6, "e": math.nan, "f": math.nan}, buckets)
    assert list(ap) == ["rare", "common", "frequent"]
    assert ap["rare"] == pytest.approx(0.2)  # f has no ground truth: b alone
    assert ap["common"] == pytest.approx(0.5)  # (0.4 + 0.6) / 2
    assert math.isnan(ap["frequent"])  # no class with a number
    # A class missing from the mapping counts as NaN; an empty bucket is NaN.
    ap = bucket_ap({"x": 0.3}, {"rare": ["x", "missing"], "common": [], "frequent": ["missing"]})
    assert ap["rare"] == pytest.approx(0.3)
    assert math.isnan(ap["common"]) and math.isnan(ap["frequent"])


def test_bucket_table_names_each_bucket_its_ap_and_classes():
    counts = _counts({"a": 5, "b": 1, "c": 3, "d": 3, "e": 100, "f": 2})
    buckets = frequency_buckets(counts.images, counts.class_names)
    ap = {"rare": 0.2, "common": 0.5, "frequent": math.nan}
    table = bucket_table(buckets, ap, counts, split="tertiles")
    lines = table.splitlines()
    assert "tertiles" in lines[0]
    rare = next(line for line in lines if line.startswith("rare"))
    assert "20.0" in rare and "b (1), f (2)" in rare
    common = next(line for line in lines if line.startswith("common"))
    assert "50.0" in common and "c (3), d (3)" in common
    frequent = next(line for line in lines if line.startswith("frequent"))
    assert "n/a" in frequent and "a (5), e (100)" in frequent

    lvis = bucket_table({"rare": [], "common": [], "frequent": ["e"]}, ap, counts, split="lvis")
    assert "LVIS" in lvis.splitlines()[0]
    assert "(none)" in next(line for line in lvis.splitlines() if line.startswith("rare"))
