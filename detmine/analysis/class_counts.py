"""Objects and images per class, counted from the annotations without decoding an image.

The one class counter of the project: class weights from frequencies (the losses), AP by
class-frequency bucket (evaluation) and the data report all read a :class:`ClassCounts`.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

from detmine.errors import DataError


@dataclass(frozen=True)
class ClassCounts:
    """Per-class counts of a split (class ``k``, 1-based, at index ``k - 1``).

    Attributes:
        class_names: the ``K`` class names.
        instances: objects per class (ignore regions, COCO ``iscrowd`` and VOC ``difficult``
            boxes excluded).
        images: images holding at least one object of the class.
        num_images: images in the split.
        images_without_objects: images with no object at all (background-only).
    """

    class_names: list[str]
    instances: list[int]
    images: list[int]
    num_images: int
    images_without_objects: int

    @property
    def num_instances(self) -> int:
        return int(sum(self.instances))


def _tally(per_image_labels: Iterable[np.ndarray], class_names: Sequence[str]) -> ClassCounts:
    """Count ``per_image_labels`` (one int array of labels ``1..K`` per image)."""
    num_classes = len(class_names)
    instances = np.zeros(num_classes + 1, dtype=np.int64)
    images = np.zeros(num_classes + 1, dtype=np.int64)
    num_images = empty = 0
    for labels in per_image_labels:
        labels = np.asarray(labels, dtype=np.int64).reshape(-1)
        num_images += 1
        if labels.size == 0:
            empty += 1
            continue
        if labels.min() < 1 or labels.max() > num_classes:
            bad = labels[(labels < 1) | (labels > num_classes)][0]
            raise DataError(f"label {int(bad)} is outside 1..{num_classes} (the {num_classes} class names)")
        instances += np.bincount(labels, minlength=num_classes + 1)
        images[np.unique(labels)] += 1
    return ClassCounts(
        class_names=list(class_names),
        instances=[int(v) for v in instances[1:]],
        images=[int(v) for v in images[1:]],
        num_images=num_images,
        images_without_objects=empty,
    )


def count_classes(dataset: Any) -> ClassCounts:
    """:class:`ClassCounts` of a detmine dataset (COCO, VOC, synthetic), from its annotation
    records: no image is decoded.

    Raises:
        DataError: the dataset keeps no annotation records (``records``) to count from.
    """
    records = getattr(dataset, "records", None)
    if records is None:
        raise DataError(
            f"{type(dataset).__name__} keeps no annotation records ('records'), so its classes cannot "
            "be counted without decoding images"
        )
    return _tally((r.labels for r in records), dataset.class_names)


def count_classes_coco(gt: dict[str, Any], category_ids: Sequence[int] | None = None) -> ClassCounts:
    """:class:`ClassCounts` of a COCO-format dict (``images``, ``annotations``, ``categories``):
    class ``k`` is ``category_ids[k - 1]`` (default: the sorted category ids); crowd
    annotations are not counted."""
    names = {int(c["id"]): str(c.get("name", c["id"])) for c in gt.get("categories", [])}
    ids = sorted(names) if category_ids is None else [int(c) for c in category_ids]
    label_of = {cat: k + 1 for k, cat in enumerate(ids)}
    per_image: dict[int, list[int]] = {int(img["id"]): [] for img in gt.get("images", [])}
    for ann in gt.get("annotations", []):
        if ann.get("iscrowd", 0) or ann.get("ignore", 0):
            continue
        cat = int(ann["category_id"])
        if cat not in label_of:
            raise DataError(f"annotation {ann.get('id')} has category_id {cat}, not one of {ids}")
        per_image.setdefault(int(ann["image_id"]), []).append(label_of[cat])
    return _tally((np.asarray(v, np.int64) for v in per_image.values()), [names.get(c, str(c)) for c in ids])
