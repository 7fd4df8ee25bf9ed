"""Datasets (COCO, VOC, bundled synthetic) and :func:`build_dataset`.

Every dataset returns ``(image uint8 [3, H, W], Target)`` per item (a falsy
:class:`SkippedSample` for a skipped bad image) and exposes the class-id mapping, ``image_labels`` / ``image_size`` without decoding,
and ``coco_gt_dict()`` for evaluation (see docs/architecture.md, "Contracts").
"""

from __future__ import annotations

import importlib
import inspect
from pathlib import Path
from typing import TYPE_CHECKING, Any

from detmine.errors import ConfigError, DataError

if TYPE_CHECKING:
    from detmine.data._common import (
        BadImageWarning,
        DegenerateBoxWarning,
        RecordDataset,
        SkippedSample,
        Transform,
    )
    from detmine.data.coco import CocoDetection
    from detmine.data.hard_negatives import HardNegativePool, read_pool, write_pool
    from detmine.data.voc import VOC_CLASSES, VOCDetection

# Imported lazily so that `python -m detmine.data.synthetic` and its worker processes do not
# pay for importing torch.
_LAZY = {
    "BadImageWarning": "detmine.data._common",
    "DegenerateBoxWarning": "detmine.data._common",
    "SkippedSample": "detmine.data._common",
    "CocoDetection": "detmine.data.coco",
    "HardNegativePool": "detmine.data.hard_negatives",
    "read_pool": "detmine.data.hard_negatives",
    "write_pool": "detmine.data.hard_negatives",
    "VOCDetection": "detmine.data.voc",
    "VOC_CLASSES": "detmine.data.voc",
}


def __getattr__(name: str) -> Any:
    if name in _LAZY:
        return getattr(importlib.import_module(_LAZY[name]), name)
    raise AttributeError(f"module 'detmine.data' has no attribute {name!r}")


__all__ = [
    "BadImageWarning",
    "CocoDetection",
    "DATASET_KINDS",
    "DegenerateBoxWarning",
    "HardNegativePool",
    "SkippedSample",
    "VOCDetection",
    "VOC_CLASSES",
    "build_dataset",
    "read_pool",
    "write_pool",
]

DATASET_KINDS = ("coco", "voc", "synthetic")


def _coco_paths(
    root: Path, split: str, img_dir: str | Path | None, ann_file: str | Path | None
) -> tuple[Path, Path]:
    ann = Path(ann_file) if ann_file is not None else root / "annotations" / f"instances_{split}.json"
    if img_dir is not None:
        return Path(img_dir), ann
    candidates = [root / split, root / "images" / split]
    for c in candidates:
        if c.is_dir():
            return c, ann
    raise DataError(
        f"no image folder for split {split!r}: tried {[str(c) for c in candidates]} (set img_dir)"
    )


def build_dataset(
    kind: str, root: str | Path, split: str, transform: Transform | None = None, **opts: Any
) -> RecordDataset:
    """Build a dataset by kind.

    - ``"coco"``: ``root/annotations/instances_{split}.json`` with images in ``root/{split}``
      or ``root/images/{split}``; options ``img_dir``, ``ann_file``, ``keep_empty``, ``on_bad_image``.
    - ``"synthetic"``: the bundled set in COCO layout at ``root``. It is generated with the
      default parameters when ``root`` holds no synthetic set yet; ``generate={...}`` passes
      generation options to :func:`detmine.data.synthetic.ensure_synthetic` (regenerating if
      they differ). Other options as for ``"coco"``.
    - ``"voc"``: ``root`` is ``VOCdevkit`` (or a year dir / list of year dirs); options
      ``years``, ``class_names``, ``keep_difficult_as_ignore``, ``keep_empty``, ``on_bad_image``.
    """
    from detmine.data.coco import CocoDetection
    from detmine.data.voc import VOCDetection

    if kind not in DATASET_KINDS:
        raise ConfigError(f"unknown dataset kind {kind!r}; valid: {list(DATASET_KINDS)}")
    root_path = Path(root) if not isinstance(root, (list, tuple)) else root
    cls = VOCDetection if kind == "voc" else CocoDetection
    extra = {"coco": ("img_dir", "ann_file"), "synthetic": ("img_dir", "ann_file", "generate"), "voc": ()}[
        kind
    ]
    valid = {n for n, p in inspect.signature(cls).parameters.items() if p.kind is p.KEYWORD_ONLY} - {
        "transform",
        "split",
    }
    unknown = set(opts) - valid - set(extra)
    if unknown:
        raise ConfigError(
            f"dataset kind {kind!r}: unknown option(s) {sorted(unknown)}; valid: {sorted(valid | set(extra))}"
        )
    if kind == "voc":
        return VOCDetection(root_path, split=split, transform=transform, **opts)
    if kind == "synthetic":
        from detmine.data import synthetic

        gen = opts.pop("generate", None)
        if gen is not None or not (root_path / synthetic.MARKER_NAME).is_file():
            synthetic.ensure_synthetic(root_path, **(gen or {}))
    img_dir, ann = _coco_paths(root_path, split, opts.pop("img_dir", None), opts.pop("ann_file", None))
    return CocoDetection(img_dir, ann, transform=transform, **opts)
