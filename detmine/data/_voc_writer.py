"""Write generated records in the real PASCAL VOC layout (used by the synthetic generator)."""

from __future__ import annotations

import os
import shutil
import xml.etree.ElementTree as ET
from pathlib import Path
from typing import Any


def _sub(parent: ET.Element, tag: str, text: Any = None) -> ET.Element:
    el = ET.SubElement(parent, tag)
    if text is not None:
        el.text = str(text)
    return el


def _annotation_xml(rec: dict[str, Any], name: str, class_names: list[str]) -> ET.ElementTree:
    """VOC XML for one record; boxes are 1-based inclusive pixel indices as in the real VOC files."""
    root = ET.Element("annotation")
    _sub(root, "folder", "VOC2007")
    _sub(root, "filename", f"{name}.jpg")
    size = _sub(root, "size")
    _sub(size, "width", rec["width"])
    _sub(size, "height", rec["height"])
    _sub(size, "depth", 3)
    _sub(root, "segmented", 0)
    for obj in rec["objects"]:
        x0, y0, x1, y1 = obj["box"]  # continuous xyxy: pixels x0..x1-1 are covered
        o = _sub(root, "object")
        _sub(o, "name", class_names[obj["label"] - 1])
        _sub(o, "pose", "Unspecified")
        _sub(o, "truncated", 0)
        _sub(o, "difficult", int(obj["difficult"]))
        bb = _sub(o, "bndbox")
        for tag, v in (("xmin", x0 + 1), ("ymin", y0 + 1), ("xmax", x1), ("ymax", y1)):
            _sub(bb, tag, int(v))
    ET.indent(root)
    return ET.ElementTree(root)


def write_voc_layout(out: Path, records: dict[str, list[dict[str, Any]]], class_names: list[str]) -> None:
    """Write ``out/VOCdevkit/VOC2007`` for records already written as ``out/images/<split>/*.jpg``.

    Images are hard-linked (copied where links are not possible); split files ``train.txt``,
    ``val.txt`` and ``trainval.txt`` go to ``ImageSets/Main``.
    """
    year_dir = Path(out) / "VOCdevkit" / "VOC2007"
    for sub in ("Annotations", "JPEGImages", "ImageSets/Main"):
        (year_dir / sub).mkdir(parents=True, exist_ok=True)
    names: dict[str, list[str]] = {}
    for split, recs in records.items():
        names[split] = []
        for rec in recs:
            name = Path(rec["file_name"]).stem
            names[split].append(name)
            src = Path(out) / "images" / split / rec["file_name"]
            dst = year_dir / "JPEGImages" / f"{name}.jpg"
            try:
                os.link(src, dst)
            except OSError:
                shutil.copyfile(src, dst)
            _annotation_xml(rec, name, class_names).write(year_dir / "Annotations" / f"{name}.xml")
    names["trainval"] = names.get("train", []) + names.get("val", [])
    for split, lst in names.items():
        (year_dir / "ImageSets" / "Main" / f"{split}.txt").write_text("".join(n + "\n" for n in lst))
