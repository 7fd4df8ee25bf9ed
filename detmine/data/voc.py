"""PASCAL VOC detection dataset for the real ``VOCdevkit`` layout (one or several years),
and for custom data in that layout (LabelImg / CVAT "Pascal VOC" exports) with its own class names.

Class names: given (``data.options.class_names``), or discovered from the split's annotations
when not given -- see :func:`choose_class_names` for the rule.
"""

from __future__ import annotations

import os
import xml.etree.ElementTree as ET
from collections.abc import Iterable, Sequence
from pathlib import Path
from typing import Any

from detmine.data._common import (
    DegenerateBoxes,
    ImageRecord,
    RecordDataset,
    Transform,
    as_boxes,
    as_labels,
    clean_box,
)
from detmine.errors import DataError

CLASS_NAMES_OPTION = "data.options.class_names"

VOC_CLASSES: tuple[str, ...] = (
    "aeroplane", "bicycle", "bird", "boat", "bottle", "bus", "car", "cat", "chair", "cow",
    "diningtable", "dog", "horse", "motorbike", "person", "pottedplant", "sheep", "sofa", "train", "tvmonitor",
)  # fmt: skip


def _resolve_year_dirs(root: str | Path | Sequence[str | Path], years: Sequence[str]) -> list[Path]:
    if isinstance(root, (list, tuple)):
        dirs = [Path(p) for p in root]
    elif (Path(root) / "ImageSets").is_dir():  # root is already a year directory
        dirs = [Path(root)]
    else:
        dirs = [Path(root) / f"VOC{y}" for y in ([years] if isinstance(years, str) else years)]
    for d in dirs:
        if not (d / "ImageSets" / "Main").is_dir():
            raise DataError(f"{d}: not a VOC year directory (expected {d / 'ImageSets' / 'Main'})")
    return dirs


def _read_split(year_dir: Path, split: str) -> list[str]:
    path = year_dir / "ImageSets" / "Main" / f"{split}.txt"
    if not path.is_file():
        found = sorted(p.stem for p in (year_dir / "ImageSets" / "Main").glob("*.txt") if "_" not in p.stem)
        raise DataError(f"{path}: split file not found (available splits: {found})")
    names = [line.split()[0] for line in path.read_text().splitlines() if line.strip()]
    if not names:
        raise DataError(f"{path}: split file lists no images")
    return names


def _number(xml: Path, idx: int, obj: ET.Element, tag: str) -> float:
    text = obj.findtext(f"bndbox/{tag}")
    try:
        return float(text)  # type: ignore[arg-type]
    except (TypeError, ValueError):
        raise DataError(
            f"{xml}: object {idx}: malformed bndbox <{tag}> value {text!r} (expected a number)"
        ) from None


def _parse_raw(xml: Path) -> dict[str, Any]:
    """Parse one VOC annotation, class names kept as text (see :func:`parse_voc_xml`)."""
    try:
        root = ET.parse(xml).getroot()
    except FileNotFoundError:
        raise DataError(f"{xml}: annotation file not found") from None
    except (ET.ParseError, OSError) as e:
        raise DataError(f"{xml}: malformed XML ({e})") from None
    try:
        width, height = int(root.findtext("size/width")), int(root.findtext("size/height"))  # type: ignore[arg-type]
    except (TypeError, ValueError):
        width = height = 0
    if width <= 0 or height <= 0:
        raise DataError(f"{xml}: missing or invalid <size> (width={root.findtext('size/width')!r}, "
                        f"height={root.findtext('size/height')!r})")  # fmt: skip
    objects = []
    for idx, obj in enumerate(root.findall("object")):
        name = (obj.findtext("name") or "").strip()
        if not name:
            raise DataError(f"{xml}: object {idx}: missing or empty <name>")
        diff_text = (obj.findtext("difficult") or "0").strip()
        if diff_text not in ("0", "1"):
            raise DataError(
                f"{xml}: object {idx}: malformed <difficult> value {diff_text!r} (expected 0 or 1)"
            )
        xmin, ymin, xmax, ymax = (_number(xml, idx, obj, t) for t in ("xmin", "ymin", "xmax", "ymax"))
        objects.append(dict(index=idx, name=name, difficult=diff_text == "1",
                            box=(xmin - 1.0, ymin - 1.0, xmax, ymax)))  # fmt: skip
    return dict(width=width, height=height, objects=objects)


def _label_objects(xml: Path, ann: dict[str, Any], class_index: dict[str, int]) -> dict[str, Any]:
    objects = []
    for obj in ann["objects"]:
        name = obj["name"]
        if name not in class_index:
            raise DataError(
                f"{xml}: object {obj['index']}: unknown class name {name!r} (expected one of "
                f"{sorted(class_index)}; list every class name of the data set in {CLASS_NAMES_OPTION})"
            )
        objects.append(
            dict(index=obj["index"], label=class_index[name], difficult=obj["difficult"], box=obj["box"])
        )
    return dict(width=ann["width"], height=ann["height"], objects=objects)


def parse_voc_xml(xml: Path, class_index: dict[str, int]) -> dict[str, Any]:
    """Parse one VOC annotation. Boxes come back 0-based continuous xyxy (``xmin - 1, ymin - 1, xmax, ymax``).

    VOC stores 1-based inclusive pixel indices, so ``(1, W)`` covers the whole image, i.e. ``(0, W)``.
    ``class_index`` maps a class name to its label; a name not in it is a :class:`DataError`.
    """
    return _label_objects(xml, _parse_raw(xml), class_index)


def choose_class_names(found: Iterable[str]) -> list[str]:
    """The class list for names discovered in annotations (``class_names`` not given).

    If every discovered name is one of the 20 PASCAL VOC classes (or none was found), the
    result is the standard :data:`VOC_CLASSES` in the standard order, so a real ``VOCdevkit``
    keeps the usual class ids (and a split that lacks some classes still gets all 20). Otherwise
    it is the sorted unique discovered names: class ``k`` (1-based) is the ``k``-th name in
    alphabetical (code point) order.
    """
    names = set(found)
    if names <= set(VOC_CLASSES):
        return list(VOC_CLASSES)
    return sorted(names)


def _split_entries(
    root: str | Path | Sequence[str | Path], years: Sequence[str], split: str
) -> tuple[list[Path], list[tuple[Path, str]]]:
    year_dirs = _resolve_year_dirs(root, years)
    return year_dirs, [(d, n) for d in year_dirs for n in _read_split(d, split)]


def discover_class_names(
    root: str | Path | Sequence[str | Path], *, years: Sequence[str] = ("2007",), split: str = "trainval"
) -> list[str]:
    """The class names :class:`VOCDetection` would use for ``split`` without ``class_names``
    (reads the split's XML files only, no images). Use it to give another split -- or a tool
    that only builds the validation split -- the training split's mapping."""
    _, entries = _split_entries(root, years, split)
    found = {o["name"] for d, n in entries for o in _parse_raw(d / "Annotations" / f"{n}.xml")["objects"]}
    return choose_class_names(found)


def _announce(message: str) -> None:
    """Print one line, from the main process only under torch.distributed."""
    from detmine import distributed

    if distributed.is_main_process():
        print(message, flush=True)


def _image_ids(names: list[str]) -> list[int]:
    """Stable ids: the digits of the VOC names ("000005" -> 5, "2008_000008" -> 2008000008) when
    they are all numeric and distinct, else 1..N in split-file order."""
    digits = [n.replace("_", "") for n in names]
    if all(d.isdigit() for d in digits):
        ids = [int(d) for d in digits]
        if len(set(ids)) == len(ids):
            return ids
    return list(range(1, len(names) + 1))


class VOCDetection(RecordDataset):
    """PASCAL VOC detection dataset; several years are concatenated (e.g. 07+12).

    Args:
        root: the ``VOCdevkit`` directory (years taken from ``years``), one year directory,
            or a list of year directories.
        years: year suffixes under ``root``, e.g. ``("2007", "2012")``.
        split: split file name in ``ImageSets/Main`` (``train``, ``val``, ``trainval``, ``test``).
        class_names: class names; class ``k`` (1-based) is ``class_names[k-1]``. None (the
            default): discovered from this split's annotations by :func:`choose_class_names`
            (the 20 standard VOC classes in their usual order when every name found is one of
            them, else the sorted names found), with one line printed naming them. Pass the
            training split's ``dataset.class_names`` to the other splits so that they share
            its mapping.
        keep_difficult_as_ignore: ``difficult`` objects become ignore regions (True) or are
            dropped altogether (False). ``coco_gt_dict`` lists them as ``iscrowd=1`` either way.
    """

    def __init__(
        self,
        root: str | Path | Sequence[str | Path],
        *,
        years: Sequence[str] = ("2007",),
        split: str = "trainval",
        class_names: Sequence[str] | None = None,
        keep_difficult_as_ignore: bool = True,
        keep_empty: bool = True,
        transform: Transform | None = None,
        on_bad_image: str = "skip",
    ) -> None:
        super().__init__(transform=transform, on_bad_image=on_bad_image)
        self.year_dirs, entries = _split_entries(root, years, split)
        raw = [(d, n, d / "Annotations" / f"{n}.xml") for d, n in entries]
        anns = [_parse_raw(xml) for _, _, xml in raw]
        #: True when the class names were discovered from the annotations (``class_names`` None).
        self.class_names_discovered = class_names is None
        if class_names is None:
            found = {o["name"] for ann in anns for o in ann["objects"]}
            class_names = choose_class_names(found)
            if not found:
                what = "none, so the standard 20 PASCAL VOC classes are used"
            elif found <= set(VOC_CLASSES):
                what = (
                    f"{len(found)}, all PASCAL VOC classes, so the standard 20 in their usual order are used"
                )
            else:
                what = f"{len(found)}, used in sorted order: {class_names}"
            _announce(
                f"VOC split {split!r}: class_names not given; class names in the annotations: {what}. "
                f"Set {CLASS_NAMES_OPTION} to choose the names and their order."
            )
        elif isinstance(class_names, str) or not class_names:
            raise DataError(f"{CLASS_NAMES_OPTION} must be a non-empty list of names, got {class_names!r}")
        self.class_names = [str(c) for c in class_names]
        if len(set(self.class_names)) != len(self.class_names):
            raise DataError(f"{CLASS_NAMES_OPTION} lists a name twice: {self.class_names}")
        self.contiguous_to_category_id = {k: k for k in range(1, len(self.class_names) + 1)}
        self.category_id_to_contiguous = dict(self.contiguous_to_category_id)
        class_index = {n: k + 1 for k, n in enumerate(self.class_names)}
        ids = _image_ids([n for _, n in entries])
        self.records = []
        dropped = DegenerateBoxes(f"VOC {split} in {', '.join(str(d) for d in self.year_dirs)}")
        for (year_dir, name, xml), raw_ann, image_id in zip(raw, anns, ids, strict=True):
            ann = _label_objects(xml, raw_ann, class_index)
            boxes, labels, ignore, objects = [], [], [], []
            for obj in ann["objects"]:
                box = clean_box(*obj["box"], ann["width"], ann["height"])
                if box is None:
                    dropped.add(f"{xml} object {obj['index']} box", obj["box"])
                    continue
                objects.append((box, obj["label"], obj["difficult"]))
                if not obj["difficult"]:
                    boxes.append(box)
                    labels.append(obj["label"])
                elif keep_difficult_as_ignore:
                    ignore.append(box)
            if keep_empty or labels:
                path = os.path.join(year_dir, "JPEGImages", f"{name}.jpg")
                self.records.append(ImageRecord(path, image_id, ann["height"], ann["width"], as_boxes(boxes),
                                                as_labels(labels), as_boxes(ignore), extra={"objects": objects}))  # fmt: skip
        dropped.warn()
        self.num_degenerate_boxes = dropped.count
        self._finish_init(f"VOC split {split!r} of {[str(d) for d in self.year_dirs]}")

    def coco_gt_dict(self) -> dict[str, Any]:
        """COCO-format ground truth (original pixels, category id = contiguous id, difficult -> iscrowd=1)."""
        images, anns = [], []
        for rec in self.records:
            images.append(dict(id=rec.image_id, file_name=rec.path, height=rec.height, width=rec.width))
            for (x0, y0, x1, y1), label, difficult in rec.extra["objects"]:
                w, h = x1 - x0, y1 - y0
                anns.append(dict(id=len(anns) + 1, image_id=rec.image_id, category_id=label,
                                 bbox=[x0, y0, w, h], area=w * h, iscrowd=int(difficult)))  # fmt: skip
        cats = [dict(id=k + 1, name=n, supercategory="voc") for k, n in enumerate(self.class_names)]
        return {"images": images, "annotations": anns, "categories": cats}
