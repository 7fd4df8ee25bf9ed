"""The synthetic generator: determinism, idempotence, render_sample, and the dataset's statistics."""

from __future__ import annotations

import collections
import hashlib
import json
import os
from pathlib import Path

import cv2
import numpy as np
import pytest

from detmine.data import synthetic
from detmine.data.synthetic import CATEGORY_IDS, MARKER_NAME, ensure_synthetic, render_sample
from detmine.errors import DataError

SMALL = dict(num_train=6, num_val=3, size=96, seed=3)


def _tree(root: Path) -> dict[str, bytes]:
    return {str(p.relative_to(root)): p.read_bytes() for p in sorted(root.rglob("*")) if p.is_file()}


def test_same_seed_gives_identical_files_in_and_out_of_process(tmp_path):
    a = _tree(ensure_synthetic(tmp_path / "a", workers=0, progress=False, voc=True, **SMALL))
    b = _tree(ensure_synthetic(tmp_path / "b", workers=2, progress=False, voc=True, **SMALL))
    assert a == b
    assert len([k for k in a if k.endswith(".jpg")]) == 2 * 9  # COCO images + VOC JPEGImages
    other = _tree(ensure_synthetic(tmp_path / "c", workers=0, progress=False, **{**SMALL, "seed": 4}))
    key = "annotations/instances_train.json"
    assert other[key] != a[key]


def test_ensure_is_idempotent_and_regenerates_on_change(tmp_path):
    root = tmp_path / "syn"
    ensure_synthetic(root, workers=0, progress=False, **SMALL)
    marker = root / MARKER_NAME
    stamp = marker.stat().st_mtime_ns
    ensure_synthetic(root, workers=0, progress=False, **SMALL)
    assert marker.stat().st_mtime_ns == stamp  # nothing rewritten
    next((root / "images" / "train").iterdir()).unlink()  # incomplete set -> regenerated
    ensure_synthetic(root, workers=0, progress=False, **SMALL)
    assert len(list((root / "images" / "train").iterdir())) == 6
    ensure_synthetic(
        root, workers=0, progress=False, **{**SMALL, "num_val": 4}
    )  # other params -> regenerated
    assert json.loads(marker.read_text())["params"]["num_val"] == 4
    assert len(json.loads((root / "annotations" / "instances_val.json").read_text())["images"]) == 4
    assert not [p for p in tmp_path.iterdir() if ".tmp-" in p.name]  # temp dir renamed away
    foreign = tmp_path / "mine"
    foreign.mkdir()
    (foreign / "notes.txt").write_text("keep me")
    with pytest.raises(DataError, match="not a detmine synthetic dataset"):
        ensure_synthetic(foreign, workers=0, progress=False, **SMALL)
    with pytest.raises(DataError, match="unknown option"):
        ensure_synthetic(root, num_images=3)


def test_cli_writes_the_coco_layout(tmp_path):
    synthetic.main(["--out", str(tmp_path / "cli"), "--num-train", "2", "--num-val", "1", "--size", "64",
                    "--workers", "0"])  # fmt: skip
    assert (tmp_path / "cli" / "annotations" / "instances_val.json").is_file()
    assert not (tmp_path / "cli" / "VOCdevkit").exists()


def test_render_sample_matches_disk_and_masks(tiny_coco_root):
    """Image i of a split is render_sample((seed, split_code, i)); boxes are tight around the masks."""
    ann = json.loads((tiny_coco_root / "annotations" / "instances_train.json").read_text())
    empty = {img["id"] for img in ann["images"]} - {a["image_id"] for a in ann["annotations"]}
    for index in range(4):
        image_id = index + 1
        image, boxes, labels, masks = render_sample((0, 0, index), 128, empty=image_id in empty)
        disk = cv2.cvtColor(cv2.imread(str(tiny_coco_root / "images" / "train" / f"{image_id:012d}.jpg")),
                            cv2.COLOR_BGR2RGB)  # fmt: skip
        blur = lambda im: cv2.GaussianBlur(im, (5, 5), 0).astype(int)  # noqa: E731  (JPEG drops the grain)
        assert np.abs(blur(disk) - blur(image)).mean() < 3
        anns = [a for a in ann["annotations"] if a["image_id"] == image_id]
        assert [a["bbox"] for a in anns] == [[b[0], b[1], b[2] - b[0], b[3] - b[1]] for b in boxes.tolist()]
        assert [a["category_id"] for a in anns] == [CATEGORY_IDS[k - 1] for k in labels]
        assert masks.shape == (len(boxes), 128, 128) and masks.dtype == bool
        assert masks.sum(0).max(initial=0) <= 1  # objects never overlap
        for box, mask in zip(boxes, masks, strict=True):
            ys, xs = np.nonzero(mask)
            assert box.tolist() == [xs.min(), ys.min(), xs.max() + 1, ys.max() + 1]
    image, boxes, labels, masks = render_sample(5, 96, empty=True)
    assert image.shape == (96, 96, 3) and boxes.shape == (0, 4) and masks.shape == (0, 96, 96)


def test_statistics_long_tail_small_objects_empty_share():
    counts: collections.Counter = collections.Counter()
    n_empty, sides, areas = 0, [], []
    for i in range(200):
        _, boxes, labels, _ = render_sample((11, i), 256)
        n_empty += len(labels) == 0
        counts.update(labels.tolist())
        wh = boxes[:, 2:] - boxes[:, :2]
        sides += wh.max(1).tolist()
        areas += (wh[:, 0] * wh[:, 1]).tolist()
    assert set(counts) == set(range(1, 7))
    assert counts.most_common()[0][0] == 1 and counts[1] >= 10 * counts[6]
    assert 0.25 <= n_empty / 200 <= 0.42
    small = np.mean(np.array(areas) < 32 * 32)
    assert 0.35 <= small <= 0.7, small  # a good share of small objects ...
    assert max(sides) > 256 / 4 and max(sides) <= 256 / 3 + 2  # ... and some up to a third of the image
    assert min(sides) >= 8


def test_exactly_a_third_of_images_on_disk_are_empty(tiny_coco_root):
    for split, n in (("train", 12), ("val", 6)):
        ann = json.loads((tiny_coco_root / "annotations" / f"instances_{split}.json").read_text())
        with_objects = {a["image_id"] for a in ann["annotations"]}
        assert len(ann["images"]) == n and n - len(with_objects) == round(n / 3)
        assert sorted(c["id"] for c in ann["categories"]) == [1, 2, 3, 5, 7, 9]
    assert os.path.isfile(tiny_coco_root / "VOCdevkit" / "VOC2007" / "ImageSets" / "Main" / "trainval.txt")


def test_generator_version_pins_the_pixels():
    """The bytes of GENERATOR_VERSION 1 (digest taken from the generator as first released,
    before its speed-ups): any change to what is drawn must bump GENERATOR_VERSION, so that
    existing ``data/synthetic`` folders are regenerated and published APs stay comparable."""
    digest = hashlib.sha256()
    for i in range(6):
        for array in render_sample((0, 0, i), 256, empty=(i == 5)):
            digest.update(np.ascontiguousarray(array).tobytes())
    assert synthetic.GENERATOR_VERSION == 1
    assert digest.hexdigest() == "4dd937e34725df32fd40ea2eb76f192c36bd72f8894671db085c2056cc86b3f1"
