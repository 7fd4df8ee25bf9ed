"""VOCDetection on hand-written VOCdevkit trees and on the tiny synthetic VOC layout."""

from __future__ import annotations

from pathlib import Path

import cv2
import numpy as np
import pytest
import torch

from detmine.data import CocoDetection, DegenerateBoxWarning, VOCDetection, build_dataset
from detmine.data.synthetic import CLASS_NAMES
from detmine.data.voc import VOC_CLASSES, choose_class_names, discover_class_names
from detmine.errors import DataError


def _obj(name, box, difficult=0):
    xmin, ymin, xmax, ymax = box
    return (f"<object><name>{name}</name><difficult>{difficult}</difficult><bndbox><xmin>{xmin}</xmin>"
            f"<ymin>{ymin}</ymin><xmax>{xmax}</xmax><ymax>{ymax}</ymax></bndbox></object>")  # fmt: skip


def _year(devkit: Path, year: str, images: dict[str, list[str]], splits: dict[str, list[str]]) -> Path:
    """A VOC year dir with 40x50 (h x w) images; ``images`` maps name -> object XML snippets."""
    d = devkit / f"VOC{year}"
    for sub in ("Annotations", "JPEGImages", "ImageSets/Main"):
        (d / sub).mkdir(parents=True, exist_ok=True)
    for name, objs in images.items():
        cv2.imwrite(str(d / "JPEGImages" / f"{name}.jpg"), np.zeros((40, 50, 3), np.uint8))
        xml = f"<annotation><size><width>50</width><height>40</height><depth>3</depth></size>{''.join(objs)}</annotation>"
        (d / "Annotations" / f"{name}.xml").write_text(xml)
    for split, names in splits.items():
        (d / "ImageSets" / "Main" / f"{split}.txt").write_text("".join(n + "\n" for n in names))
    return d


@pytest.fixture
def devkit(tmp_path):
    images07 = {
        "000005": [_obj("dog", (1, 1, 50, 40)), _obj("cat", (10, 12, 20, 22), difficult=1)],
        "000007": [],
        "000009": [_obj("person", (5, 6, 7, 8))],
    }
    _year(tmp_path, "2007", images07, {"train": ["000005", "000007"], "val": ["000009"],
                                       "trainval": ["000005", "000007", "000009"]})  # fmt: skip
    _year(tmp_path, "2012", {"2008_000008": [_obj("horse", (2, 3, 30, 33))]}, {"trainval": ["2008_000008"]})
    return tmp_path


def test_one_based_coordinates_and_difficult_as_ignore(devkit):
    ds = VOCDetection(devkit, split="train")
    assert len(ds) == 2 and ds.num_classes == 20 and ds.image_ids == [5, 7]
    image, t = ds[0]
    assert image.shape == (3, 40, 50) and t["orig_size"] == (40, 50)
    # (1, 1, W, H) in VOC's 1-based inclusive pixels covers the whole image: (0, 0, W, H)
    torch.testing.assert_close(t["boxes"], torch.tensor([[0.0, 0.0, 50.0, 40.0]]))
    assert t["labels"].tolist() == [ds.class_names.index("dog") + 1]
    torch.testing.assert_close(t["ignore_boxes"], torch.tensor([[9.0, 11.0, 20.0, 22.0]]))
    assert ds.image_labels(0) == {12} and ds.image_labels(1) == set()
    assert ds[1][1]["boxes"].shape == (0, 4)  # image without objects is kept
    gt = ds.coco_gt_dict()
    crowd = [(a["bbox"], a["iscrowd"], a["category_id"]) for a in gt["annotations"]]
    assert crowd == [([0.0, 0.0, 50.0, 40.0], 0, 12), ([9.0, 11.0, 11.0, 11.0], 1, 8)]


def test_difficult_dropped_by_option(devkit):
    ds = VOCDetection(devkit, split="train", keep_difficult_as_ignore=False)
    t = ds[0][1]
    assert len(t["boxes"]) == 1 and t["ignore_boxes"].shape == (0, 4)
    assert [a["iscrowd"] for a in ds.coco_gt_dict()["annotations"]] == [0, 1]  # VOC eval still ignores it
    assert VOCDetection(devkit, split="train", keep_empty=False).image_ids == [5]


def test_years_concatenated_and_split_files(devkit):
    ds = VOCDetection(devkit, years=("2007", "2012"), split="trainval")
    assert ds.image_ids == [5, 7, 9, 2008000008]
    assert ds.records[-1].path.endswith("VOC2012/JPEGImages/2008_000008.jpg")
    torch.testing.assert_close(ds[3][1]["boxes"], torch.tensor([[1.0, 2.0, 30.0, 33.0]]))
    as_list = VOCDetection([devkit / "VOC2012", devkit / "VOC2007"], split="trainval")
    assert as_list.image_ids == [2008000008, 5, 7, 9]
    assert VOCDetection(devkit / "VOC2007", split="val").image_ids == [9]
    via_builder = build_dataset("voc", devkit, "trainval", years=["2007", "2012"])
    assert len(via_builder) == 4
    with pytest.raises(
        DataError, match=r"test.txt: split file not found \(available splits: \['trainval'\]\)"
    ):
        VOCDetection(devkit, years=("2012",), split="test")
    (devkit / "VOC2007" / "ImageSets" / "Main" / "val.txt").write_text("\n")
    with pytest.raises(DataError, match="val.txt: split file lists no images"):
        VOCDetection(devkit, split="val")
    with pytest.raises(DataError, match="VOC2010: not a VOC year directory"):
        VOCDetection(devkit, years=("2010",))


@pytest.mark.parametrize(
    "xml, expected",
    [
        ("<annotation><size><width>50", r"000009.xml: malformed XML"),
        (f"<annotation><size><width>50</width><height>40</height></size>{_obj('dog', (1, 1, 5, 5))}"
         f"{_obj('unicorn', (1, 1, 5, 5))}</annotation>", r"000009.xml: object 1: unknown class name 'unicorn'"),
        (f"<annotation><size><width>50</width><height>40</height></size>{_obj('dog', (1, 'a', 5, 5))}</annotation>",
         r"000009.xml: object 0: malformed bndbox <ymin> value 'a'"),
        ("<annotation><size><width>50</width></size></annotation>", r"000009.xml: missing or invalid <size>"),
    ],
)  # fmt: skip
def test_malformed_xml_gives_one_line_error(devkit, xml, expected):
    (devkit / "VOC2007" / "Annotations" / "000009.xml").write_text(xml)
    with pytest.raises(DataError, match=expected) as e:
        VOCDetection(devkit, split="val", class_names=VOC_CLASSES)
    assert "\n" not in str(e.value)


def test_degenerate_voc_box_dropped_with_warning(devkit):
    (devkit / "VOC2007" / "Annotations" / "000009.xml").write_text(
        f"<annotation><size><width>50</width><height>40</height></size>{_obj('dog', (9, 9, 5, 20))}</annotation>"
    )
    with pytest.warns(DegenerateBoxWarning, match="dropped 1 .*000009.xml object 0"):
        ds = VOCDetection(devkit, split="val")
    assert ds[0][1]["boxes"].shape == (0, 4)


def test_synthetic_voc_layout_matches_coco_layout(tiny_voc_root, tiny_coco_root):
    """The same images written as VOC (1-based) and COCO (xywh) read back to the same boxes."""
    voc = VOCDetection(tiny_voc_root, split="train", class_names=CLASS_NAMES)
    coco = CocoDetection(
        tiny_coco_root / "images" / "train", tiny_coco_root / "annotations" / "instances_train.json"
    )
    assert voc.image_ids == coco.image_ids
    n_difficult = 0
    for rv, rc in zip(voc.records, coco.records, strict=True):
        both = np.concatenate([rv.boxes, rv.ignore_boxes])
        order_v, order_c = np.lexsort(both.T[::-1]), np.lexsort(rc.boxes.T[::-1])
        np.testing.assert_array_equal(both[order_v], rc.boxes[order_c])
        assert set(rv.labels.tolist()) <= set(rc.labels.tolist())
        n_difficult += len(rv.ignore_boxes)
    splits = {s: VOCDetection(tiny_voc_root, split=s, class_names=CLASS_NAMES) for s in ("val", "trainval")}
    assert len(splits["val"]) == 6 and len(splits["trainval"]) == 18
    assert (
        n_difficult + sum(len(r.ignore_boxes) for r in splits["val"].records) >= 1
    )  # some tiny objects are difficult
    voc_img, _ = voc[0]
    coco_img, _ = coco[0]
    assert torch.equal(voc_img, coco_img)


# ----------------------------------------------------------------------------- custom class names


def _labelimg_xml(filename: str, objects: list[tuple[str, tuple[int, int, int, int]]]) -> str:
    """An annotation as LabelImg / CVAT write it (extra tags the reader must ignore)."""
    objs = "".join(
        f"<object><name>{name}</name><pose>Unspecified</pose><truncated>0</truncated><difficult>0</difficult>"
        f"<bndbox><xmin>{b[0]}</xmin><ymin>{b[1]}</ymin><xmax>{b[2]}</xmax><ymax>{b[3]}</ymax></bndbox></object>"
        for name, b in objects
    )
    return (f"<annotation><folder>JPEGImages</folder><filename>{filename}</filename><path>/home/me/{filename}</path>"
            f"<source><database>Unknown</database></source><size><width>50</width><height>40</height><depth>3</depth>"
            f"</size><segmented>0</segmented>{objs}</annotation>")  # fmt: skip


@pytest.fixture
def custom_voc(tmp_path):
    """One year-less folder in the VOC layout with the user's own class names (no VOC class)."""
    d = tmp_path / "my_digits"
    for sub in ("Annotations", "JPEGImages", "ImageSets/Main"):
        (d / sub).mkdir(parents=True)
    images = {
        "img_a": [("digit_8", (1, 1, 20, 20)), ("digit_1", (5, 5, 30, 30))],
        "img_b": [("zero", (2, 2, 10, 10))],
        "img_c": [("digit_8", (3, 3, 12, 12))],
    }
    for name, objs in images.items():
        cv2.imwrite(str(d / "JPEGImages" / f"{name}.jpg"), np.zeros((40, 50, 3), np.uint8))
        (d / "Annotations" / f"{name}.xml").write_text(_labelimg_xml(f"{name}.jpg", objs))
    (d / "ImageSets" / "Main" / "train.txt").write_text("img_a\nimg_b\n")
    (d / "ImageSets" / "Main" / "val.txt").write_text("img_c\n")
    return d


def test_custom_class_names_discovered_sorted_and_announced(custom_voc, capsys):
    ds = VOCDetection(custom_voc, split="train")
    assert ds.class_names == ["digit_1", "digit_8", "zero"] and ds.class_names_discovered
    assert (
        ds.num_classes == 3
        and ds.records[0].labels.tolist() == [2, 1]
        and ds.records[1].labels.tolist() == [3]
    )
    assert [c["name"] for c in ds.coco_gt_dict()["categories"]] == ds.class_names
    out = capsys.readouterr().out.strip().splitlines()
    assert len(out) == 1
    assert "'train'" in out[0] and "['digit_1', 'digit_8', 'zero']" in out[0]
    assert "data.options.class_names" in out[0]
    assert discover_class_names(custom_voc, split="train") == ds.class_names


def test_val_split_takes_the_training_mapping(custom_voc, capsys):
    train = build_dataset("voc", custom_voc, "train")
    capsys.readouterr()
    # val alone would discover ['digit_8'] (a different mapping); the training names are passed on
    assert VOCDetection(custom_voc, split="val").class_names == ["digit_8"]
    val = build_dataset("voc", custom_voc, "val", class_names=train.class_names)
    assert val.class_names == train.class_names and not val.class_names_discovered
    assert val.records[0].labels.tolist() == [train.class_names.index("digit_8") + 1]
    assert capsys.readouterr().out.count("class_names not given") == 1  # only the val-alone build


def test_class_missing_from_the_given_names_names_the_option(custom_voc):
    with pytest.raises(DataError, match=r"img_b.xml: object 0: unknown class name 'zero'") as e:
        VOCDetection(custom_voc, split="train", class_names=["digit_1", "digit_8"])
    assert "data.options.class_names" in str(e.value) and "\n" not in str(e.value)
    # with the names given, their order defines the ids
    ds = VOCDetection(custom_voc, split="train", class_names=["zero", "digit_8", "digit_1"])
    assert ds.records[0].labels.tolist() == [2, 3] and not ds.class_names_discovered


@pytest.mark.parametrize(
    "names, expected",
    [("digit_8", "must be a non-empty list of names"), ([], "must be a non-empty list of names"),
     (["zero", "digit_1", "digit_8", "zero"], "lists a name twice")],
)  # fmt: skip
def test_bad_class_names_option(custom_voc, names, expected):
    with pytest.raises(DataError, match=f"data.options.class_names {expected}"):
        VOCDetection(custom_voc, split="train", class_names=names)


def test_standard_voc_names_keep_the_standard_order(devkit, capsys):
    """A split whose names are all VOC classes (here 4 of 20) gets the standard 20-class list."""
    ds = VOCDetection(devkit, split="train")
    assert ds.class_names == list(VOC_CLASSES) and ds.class_names_discovered
    assert "the standard 20 in their usual order" in capsys.readouterr().out
    assert VOCDetection(devkit / "VOC2007", split="val").class_names == list(VOC_CLASSES)
    assert choose_class_names([]) == list(VOC_CLASSES)
    # one name outside VOC: sorted discovered names, VOC ones included
    (devkit / "VOC2007" / "Annotations" / "000009.xml").write_text(
        _labelimg_xml("000009.jpg", [("person", (1, 1, 5, 5)), ("forklift", (1, 1, 9, 9))])
    )
    mixed = VOCDetection(devkit, split="trainval")
    assert mixed.class_names == ["cat", "dog", "forklift", "person"]
    assert mixed.records[2].labels.tolist() == [4, 3]


def test_empty_object_name_is_an_error(custom_voc):
    (custom_voc / "Annotations" / "img_c.xml").write_text(_labelimg_xml("img_c.jpg", [(" ", (1, 1, 5, 5))]))
    with pytest.raises(DataError, match=r"img_c.xml: object 0: missing or empty <name>"):
        VOCDetection(custom_voc, split="val")
