"""The gallery's web page: every crop with its score, class and source image, offline links."""

import cv2
import numpy as np
import torch

from detmine.viz.gallery import HardNegativeGallery
from detmine.viz.gallery_html import gallery_page, write_gallery_page


def _gallery():
    img = np.zeros((64, 64, 3), np.uint8)
    img[40:60, 40:60] = (0, 0, 255)
    g = HardNegativeGallery(max_items=3, tile_size=48, class_names=["cat", "<dog & co>"])
    target = {"boxes": torch.tensor([[10.0, 10.0, 30.0, 30.0]]), "labels": torch.tensor([1]),
              "ignore_boxes": torch.zeros((0, 4)), "image_id": "a/b c"}  # fmt: skip
    dets = {
        "boxes": torch.tensor([[40.0, 40.0, 60.0, 60.0], [0.0, 40.0, 20.0, 60.0], [10.0, 10.0, 30.0, 30.0]]),
        "scores": torch.tensor([0.9, 0.6, 0.99]),  # the last one is a true positive
        "labels": torch.tensor([2, 1, 1]),
    }
    g.add(img, dets, target)
    g.add(img, {k: v[:1] for k, v in dets.items()}, {**target, "image_id": 7})
    return g


def test_index_links_every_crop_and_source(tmp_path, check_page):
    g = _gallery()
    files = gallery_page(g.items, class_names=g.class_names, summary="3 of 3 false positives")
    index = write_gallery_page(tmp_path / "gallery", files)
    page = check_page(index)
    assert page.images == ["crops/001.png", "crops/002.png", "crops/003.png"]
    # ties keep the earlier image first; the crop and the "source image" link both go to the source
    assert sorted(set(page.links)) == [
        "sources/001_imga_b_c.jpg",
        "sources/002_img7.jpg",
        "sources/003_imga_b_c.jpg",
    ]
    assert len(page.links) == 6
    text = index.read_text()
    assert "&lt;dog &amp; co&gt;" in text and "<dog" not in text  # escaped
    assert "0.900" in text and "0.600" in text and "image a/b c" in text and "3 of 3" in text
    assert "http" not in text and "<script" not in text  # nothing to fetch, nothing to run
    crop = cv2.imread(str(tmp_path / "gallery" / "crops" / "001.png"))
    assert crop.shape == (48, 48, 3)  # the crop alone, its caption is the page's
    source = cv2.imread(str(tmp_path / "gallery" / "sources" / "002_img7.jpg"))
    assert max(source.shape[:2]) == 512  # small inputs upscaled so the box reads


def test_an_empty_gallery_is_a_page_too(tmp_path, check_page):
    index = write_gallery_page(tmp_path, gallery_page([]))
    page = check_page(index)
    assert page.images == [] and "No false positives" in index.read_text()
