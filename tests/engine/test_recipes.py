"""Every shipped recipe on tiny folders laid out like the real COCO / VOC ones, with a
non-square image: the evaluation geometry is the training geometry, the anchors the model
sees through the real loader are the published counts, and ground truth fed back as
detections through the real post-processing and evaluator scores AP 1.0."""

from __future__ import annotations

import json
import math
from pathlib import Path

import cv2
import numpy as np
import pytest
import torch

from detmine.config import load_config
from detmine.engine import builders
from detmine.evaluation.evaluator import evaluate
from detmine.structures import HeadOutputs

ROOT = Path(__file__).resolve().parents[2]
RECIPES = sorted((ROOT / "configs").glob("*.yaml"))

# (height, width) of the fixture images: one landscape, one portrait, one square.
SIZES = [(100, 250), (250, 100), (120, 120)]
NAMES = ["dog", "cat", "car"]  # VOC class names, also the COCO categories (ids 1, 3, 7)
CAT_IDS = [1, 3, 7]


def _boxes(h: int, w: int) -> list[tuple[int, list[float]]]:
    """Two objects per image: (class index 0..2, xyxy)."""
    return [(0, [0.1 * w, 0.1 * h, 0.5 * w, 0.6 * h]), (2, [0.55 * w, 0.3 * h, 0.95 * w, 0.9 * h])]


def _image(h: int, w: int, seed: int) -> np.ndarray:
    rng = np.random.default_rng(seed)
    img = rng.integers(0, 60, size=(h, w, 3), dtype=np.uint8)
    for _, (x0, y0, x1, y1) in _boxes(h, w):
        img[int(y0) : int(y1), int(x0) : int(x1)] = 200
    return img


def _write_coco(root: Path, split: str) -> None:
    (root / split).mkdir(parents=True)
    images, anns = [], []
    for i, (h, w) in enumerate(SIZES):
        name = f"{i:012d}.jpg"
        cv2.imwrite(str(root / split / name), _image(h, w, i))
        images.append({"id": i + 1, "file_name": name, "height": h, "width": w})
        for c, (x0, y0, x1, y1) in _boxes(h, w):
            anns.append(
                {
                    "id": len(anns) + 1,
                    "image_id": i + 1,
                    "category_id": CAT_IDS[c],
                    "bbox": [x0, y0, x1 - x0, y1 - y0],
                    "area": (x1 - x0) * (y1 - y0),
                    "iscrowd": 0,
                }
            )
    categories = [{"id": cid, "name": n} for cid, n in zip(CAT_IDS, NAMES, strict=True)]
    (root / "annotations").mkdir(exist_ok=True)
    payload = {"images": images, "annotations": anns, "categories": categories}
    (root / "annotations" / f"instances_{split}.json").write_text(json.dumps(payload))


def _write_voc_year(devkit: Path, year: str, splits: tuple[str, ...]) -> None:
    base = devkit / f"VOC{year}"
    for sub in ("Annotations", "JPEGImages", "ImageSets/Main"):
        (base / sub).mkdir(parents=True)
    ids = []
    for i, (h, w) in enumerate(SIZES):
        stem = f"{year}_{i:06d}"
        ids.append(stem)
        cv2.imwrite(str(base / "JPEGImages" / f"{stem}.jpg"), _image(h, w, i))
        objects = "".join(
            f"<object><name>{NAMES[c]}</name><difficult>0</difficult><bndbox>"
            f"<xmin>{x0 + 1:.0f}</xmin><ymin>{y0 + 1:.0f}</ymin><xmax>{x1:.0f}</xmax><ymax>{y1:.0f}</ymax>"
            "</bndbox></object>"
            for c, (x0, y0, x1, y1) in _boxes(h, w)
        )
        xml = (
            f"<annotation><filename>{stem}.jpg</filename><size><width>{w}</width><height>{h}</height>"
            f"<depth>3</depth></size>{objects}</annotation>"
        )
        (base / "Annotations" / f"{stem}.xml").write_text(xml)
    for split in splits:
        (base / "ImageSets" / "Main" / f"{split}.txt").write_text("\n".join(ids) + "\n")


@pytest.fixture(scope="module")
def fixture_roots(tmp_path_factory) -> dict[str, Path]:
    root = tmp_path_factory.mktemp("recipes")
    coco = root / "coco"
    for split in ("train2017", "val2017"):
        _write_coco(coco, split)
    devkit = root / "VOCdevkit"
    _write_voc_year(devkit, "2007", ("trainval", "test"))
    _write_voc_year(devkit, "2012", ("trainval",))
    return {"coco": coco, "voc": devkit}


def recipe_config(path: Path, roots: dict[str, Path], tmp_path: Path):
    raw = load_config(path)
    overrides = ["data.num_workers=0", f"output_dir={tmp_path / 'run'}"]
    if "weights" in raw.model.options:
        overrides.append("model.options.weights=null")
    if raw.data.kind == "voc":
        overrides.append(f"data.root={roots['voc']}")
    else:  # the synthetic recipes read the same COCO layout
        overrides += [
            "data.kind=coco",
            f"data.root={roots['coco']}",
            "data.train_split=train2017",
            "data.val_split=val2017",
        ]
    return load_config(path, overrides)


def expected_eval_size(cfg, h: int, w: int) -> tuple[int, int]:
    """The training geometry, from first principles: SSD-style recipes a fixed square, the
    retinanet preset the shorter side at image_size with the longer capped at max_size."""
    side = cfg.data.image_size
    if cfg.data.train_transform != "retinanet":
        return side, side
    max_size = cfg.data.transform_options.get("max_size", 1333)
    scale = min(side / min(h, w), max_size / max(h, w))
    return round(h * scale), round(w * scale)


def expected_anchor_count(model, height: int, width: int) -> int | None:
    """Published anchor counts for the fixed-size SSDs; for FPN models the stride-2 pyramid
    ``ceil(H / s) x ceil(W / s)`` cells per level with the generator's anchors per cell."""
    name = type(model.backbone).__name__.lower()
    if (height, width) == (300, 300) and "vgg" in name:
        return 8732  # SSD paper / torchvision ssd300_vgg16
    if (height, width) == (320, 320) and "mobilenet" in name:
        return 3234  # torchvision ssdlite320_mobilenet_v3_large
    strides = getattr(model.anchor_generator, "strides", None)
    if strides is None:
        return None
    per_cell = model.anchor_generator.num_anchors_per_location()
    return sum(
        math.ceil(height / s) * math.ceil(width / s) * a for s, a in zip(strides, per_cell, strict=True)
    )


@pytest.mark.parametrize("recipe", RECIPES, ids=lambda p: p.stem)
def test_recipe_geometry_and_anchor_count(recipe, fixture_roots, tmp_path):
    cfg = recipe_config(recipe, fixture_roots, tmp_path)
    train_set, val_set = builders.build_datasets(cfg)
    for i, (h, w) in enumerate(SIZES):
        exp_h, exp_w = expected_eval_size(cfg, h, w)
        for _ in range(5):  # no random flip or crop at evaluation: boxes only scale
            _, target = val_set[i]
            got_h, got_w = target["input_size"]
            assert abs(got_h - exp_h) <= 1 and abs(got_w - exp_w) <= 1, (recipe.stem, (h, w), (got_h, got_w))
            assert target["orig_size"] == (h, w)
            scale = torch.tensor([got_w / w, got_h / h, got_w / w, got_h / h])
            expected = torch.tensor([b for _, b in _boxes(h, w)]) * scale
            # VOC is 1-based on disk: its x0/y0 come back one pixel apart at most
            torch.testing.assert_close(target["boxes"], expected, atol=1.0 + 2 * scale.max().item(), rtol=0)

    model = builders.build_model_from_config(cfg, train_set.num_classes).eval()
    loader = builders.build_val_loader(cfg, val_set, model)
    images, targets = next(iter(loader))
    height, width = images.shape[-2:]
    divisible = model.size_divisible
    assert height % divisible == 0 and width % divisible == 0
    biggest = (max(t["input_size"][0] for t in targets), max(t["input_size"][1] for t in targets))
    assert height - biggest[0] < divisible and width - biggest[1] < divisible
    with torch.no_grad():
        anchors = model(images[:1]).anchors
    expected = expected_anchor_count(model, height, width)
    if expected is not None:
        assert anchors.shape[0] == expected, recipe.stem
    if cfg.data.train_transform == "ssd":
        assert (height, width) == (cfg.data.image_size, cfg.data.image_size)


class GroundTruthDetector:
    """Feeds each batch's ground truth back as detections through the recipe model's real
    ``postprocess``: one anchor per GT box, zero deltas, a confident logit for its class."""

    training = False

    def __init__(self, model, loader) -> None:
        self.model, self.batches = model, iter(loader)

    def eval(self):
        return self

    def train(self, mode: bool = True):
        return self

    def parameters(self):
        return iter(())

    def predict(self, images, input_sizes=None, orig_sizes=None, **options):
        _, targets = next(self.batches)
        boxes = torch.cat([t["boxes"] for t in targets])
        owner = torch.cat([torch.full((len(t["boxes"]),), b) for b, t in enumerate(targets)])
        labels = torch.cat([t["labels"] for t in targets])
        softmax = self.model.cls_activation == "softmax"
        columns = self.model.num_classes + (1 if softmax else 0)
        logits = torch.full((len(targets), len(boxes), columns), -12.0)
        column = labels if softmax else labels - 1
        logits[owner, torch.arange(len(boxes)), column] = 12.0
        if softmax:
            logits[..., 0] = torch.where(logits.amax(-1) > 0, -12.0, 12.0)
        outputs = HeadOutputs(
            logits,
            torch.zeros(len(targets), len(boxes), 4),
            boxes,
            cls_activation=self.model.cls_activation,
            level_counts=(len(boxes),),
        )
        return self.model.postprocess(
            outputs,
            image_shape=tuple(images.shape[-2:]),
            input_sizes=input_sizes,
            orig_sizes=orig_sizes,
            **options,
        )


@pytest.mark.parametrize("recipe", RECIPES, ids=lambda p: p.stem)
def test_ground_truth_as_detections_scores_ap_one(recipe, fixture_roots, tmp_path):
    cfg = recipe_config(recipe, fixture_roots, tmp_path)
    train_set, val_set = builders.build_datasets(cfg)
    model = builders.build_model_from_config(cfg, train_set.num_classes)
    loader = builders.build_val_loader(cfg, val_set, model)
    result = evaluate(
        GroundTruthDetector(model, builders.build_val_loader(cfg, val_set, model)),
        loader,
        val_set,
        device="cpu",
        progress=False,
        predict_options=cfg.eval.postprocess.options(),
    )
    assert result.stats["AP"] == pytest.approx(1.0)
