"""AP by class-frequency bucket of the training split: rare, common, frequent.

Long-tail results are read per bucket (LVIS, Gupta et al., CVPR 2019: AP_r / AP_c / AP_f): a
remedy for class imbalance should lift the rare classes without giving up the frequent ones.
The buckets are made from the number of *training images* holding a class
(:class:`~detmine.analysis.ClassCounts` ``images``), never from the evaluated split.

Two splits:

- ``"tertiles"``: the classes sorted by their training images (ties by name) and cut into three
  parts as equal as possible -- for any dataset, whatever its counts;
- ``"lvis"``: LVIS's fixed thresholds on training images: 1-10 rare, 11-100 common, more than
  100 frequent (a class with no training image is rare).
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence

from detmine.analysis import ClassCounts

__all__ = ["BUCKETS", "SPLITS", "bucket_ap", "bucket_table", "frequency_buckets"]

#: the bucket names, least frequent first (the keys of every result here, in this order).
BUCKETS: tuple[str, str, str] = ("rare", "common", "frequent")
#: the splits :func:`frequency_buckets` knows.
SPLITS: tuple[str, ...] = ("tertiles", "lvis")

# LVIS (v1) bucket bounds on training images: rare <= 10 < common <= 100 < frequent.
_LVIS_RARE_MAX = 10
_LVIS_COMMON_MAX = 100


def _tertile_sizes(num_classes: int) -> tuple[int, int, int]:
    """Sizes of (rare, common, frequent) for ``num_classes`` classes: ``n // 3`` each, one
    left over goes to common, two to rare and frequent (so 1 class is common, 2 are rare and
    frequent, 7 are 2 / 3 / 2)."""
    base, left = divmod(num_classes, 3)
    if left == 1:
        return base, base + 1, base
    if left == 2:
        return base + 1, base, base + 1
    return base, base, base


def frequency_buckets(
    images_per_class: Sequence[int], class_names: Sequence[str], *, split: str = "tertiles"
) -> dict[str, list[str]]:
    """The classes of each frequency bucket.

    Args:
        images_per_class: ``[K]`` training images holding each class (class ``k`` at ``k - 1``).
        class_names: ``[K]`` the class names, in the same order.
        split: ``"tertiles"``: the classes sorted by training images, ties by name, cut into
            three parts as equal as possible (``K // 3`` each; one class left over goes to
            common, two go to rare and frequent), so with 3 classes or more no bucket is empty;
            one class alone is common, two classes are one rare and one frequent; classes with
            the same count may fall on both sides of a cut (by name). ``"lvis"``: 0-10 training
            images rare (a class with none is rare), 11-100 common, more than 100 frequent.

    Returns:
        ``{"rare": [...], "common": [...], "frequent": [...]}`` (in that order), each list
        ordered by training images, then by name.

    Raises:
        ValueError: an unknown ``split``, or counts and names of different lengths.
    """
    if split not in SPLITS:
        raise ValueError(f"unknown frequency split {split!r}; expected one of {', '.join(SPLITS)}")
    if len(images_per_class) != len(class_names):
        raise ValueError(
            f"{len(images_per_class)} image counts for {len(class_names)} class names (one per class)"
        )
    ordered = sorted(zip((int(c) for c in images_per_class), (str(n) for n in class_names), strict=True))
    if split == "lvis":
        return {
            "rare": [name for count, name in ordered if count <= _LVIS_RARE_MAX],
            "common": [name for count, name in ordered if _LVIS_RARE_MAX < count <= _LVIS_COMMON_MAX],
            "frequent": [name for count, name in ordered if count > _LVIS_COMMON_MAX],
        }
    rare, common, _ = _tertile_sizes(len(ordered))
    names = [name for _, name in ordered]
    return {"rare": names[:rare], "common": names[rare : rare + common], "frequent": names[rare + common :]}


def bucket_ap(per_class_ap: Mapping[str, float], buckets: Mapping[str, Sequence[str]]) -> dict[str, float]:
    """The mean AP of each bucket's classes.

    Args:
        per_class_ap: class name -> AP (NaN when the class has no ground truth in the evaluated
            split; a class missing from the mapping counts the same).
        buckets: bucket name -> class names (:func:`frequency_buckets`).

    Returns:
        bucket name -> the mean AP of its classes with a number, NaN-valued classes left out;
        NaN for a bucket with no such class (empty, or none of its classes evaluated).
    """
    result: dict[str, float] = {}
    for bucket, names in buckets.items():
        values = [float(per_class_ap.get(n, math.nan)) for n in names]
        valid = [v for v in values if not math.isnan(v)]
        result[bucket] = sum(valid) / len(valid) if valid else math.nan
    return result


def _split_title(split: str) -> str:
    if split == "lvis":
        return (
            f"LVIS buckets of training images: rare <= {_LVIS_RARE_MAX}, common "
            f"{_LVIS_RARE_MAX + 1}-{_LVIS_COMMON_MAX}, frequent > {_LVIS_COMMON_MAX}"
        )
    return "tertiles of the classes by training images"


def bucket_table(
    buckets: Mapping[str, Sequence[str]], ap: Mapping[str, float], counts: ClassCounts, *, split: str
) -> str:
    """A printable table: per bucket its AP (x100, one decimal; ``n/a`` when NaN), its number
    of classes and the classes with their training images, ``name (images)``.

    Args:
        buckets: bucket name -> class names (:func:`frequency_buckets`).
        ap: bucket name -> AP (:func:`bucket_ap`).
        counts: the training split's class counts (for the images per class).
        split: the split the buckets were made with (named in the title).
    """
    images = dict(zip(counts.class_names, counts.images, strict=True))
    width = max([len("bucket"), *(len(b) for b in buckets)])
    lines = [
        f"AP by class frequency ({_split_title(split)})",
        f"{'bucket':<{width}}     AP  classes  (class: training images)",
    ]
    for bucket, names in buckets.items():
        value = ap.get(bucket, math.nan)
        shown = "  n/a" if math.isnan(value) else f"{100.0 * value:5.1f}"
        members = ", ".join(f"{n} ({images.get(n, 0)})" for n in names) if names else "(none)"
        lines.append(f"{bucket:<{width}}  {shown}  {len(names):7d}  {members}")
    return "\n".join(lines)
