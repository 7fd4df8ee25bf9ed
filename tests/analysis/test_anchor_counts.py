"""The matcher's anchor counts from the annotations alone equal those of the real path: each
image decoded through the evaluation transform and the loader (padded), the model's forward
anchors, the matcher."""

from __future__ import annotations

import json
from pathlib import Path

import cv2
import numpy as np
import pytest
import torch

from detmine.analysis import EvalGeometry, count_anchor_labels
from detmine.config import load_config
from detmine.data.transforms import build_transforms
from detmine.engine import builders
from detmine.engine.builders.data import eval_transform_options
from detmine.matching import build_matcher, pad_targets

ROOT = Path(__file__).resolve().parents[2]
SIZES = [(100, 250), (250, 100), (120, 120), (90, 160)]
CATEGORIES = [{"id": 1, "name": "dog"}, {"id": 3, "name": "cat"}, {"id": 7, "name": "car"}]


def _coco(root: Path, split: str) -> None:
    """A COCO-layout split: images of several sizes, objects of several sizes and a crowd."""
    rng = np.random.default_rng(0)
    (root / split).mkdir(parents=True)
    images, anns = [], []
    for i, (h, w) in enumerate(SIZES):
        name = f"{i:012d}.jpg"
        cv2.imwrite(str(root / split / name), rng.integers(0, 255, (h, w, 3), dtype=np.uint8))
        images.append({"id": i + 1, "file_name": name, "height": h, "width": w})
        for j in range(i + 1):
            bw, bh = float(rng.uniform(8, w / 2)), float(rng.uniform(8, h / 2))
            x0, y0 = float(rng.uniform(0, w - bw)), float(rng.uniform(0, h - bh))
            anns.append(
                {
                    "id": len(anns) + 1,
                    "image_id": i + 1,
                    "category_id": CATEGORIES[j % 3]["id"],
                    "bbox": [x0, y0, bw, bh],
                    "area": bw * bh,
                    "iscrowd": int(i == 3 and j == 0),
                }
            )
    (root / "annotations").mkdir(exist_ok=True)
    payload = {"images": images, "annotations": anns, "categories": CATEGORIES}
    (root / "annotations" / f"instances_{split}.json").write_text(json.dumps(payload))


@pytest.fixture(scope="module")
def coco_root(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("coco")
    _coco(root, "train2017")
    return root


def _config(recipe: str, root: Path):
    return load_config(
        ROOT / "configs" / recipe,
        [
            "data.kind=coco",
            f"data.root={root}",
            "data.train_split=train2017",
            "data.val_split=train2017",
            "data.num_workers=0",
        ],
    )


def _reference(cfg, model, matcher) -> list[int]:
    """Decode every image through the evaluation transform and the real loader (one image per
    batch), take the model's own anchors, match."""
    dataset = builders.build_dataset_split(cfg, cfg.data.train_split, False)
    cfg.eval.batch_size = 1  # each image padded on its own, as the counts assume
    loader = builders.build_val_loader(cfg, dataset, model)
    totals = torch.zeros(model.num_classes + 1, dtype=torch.long)
    for images, targets in loader:
        with torch.no_grad():
            anchors = model(images).anchors
        labels = matcher(anchors, pad_targets(list(targets))).labels[0]
        totals += torch.bincount(labels[labels >= 0], minlength=model.num_classes + 1)
    return totals.tolist()


@pytest.mark.parametrize("recipe", ["quickstart.yaml", "quickstart_ssd.yaml"])
def test_counts_equal_the_decoded_path(recipe, coco_root):
    cfg = _config(recipe, coco_root)
    train_set = builders.build_dataset_split(cfg, cfg.data.train_split, True)
    model = builders.build_model_from_config(cfg, train_set.num_classes).eval()
    options = {k: v for k, v in cfg.matching.matcher_options().items() if v is not None}
    matcher = build_matcher(options.pop("preset", None), cls_activation=model.cls_activation, **options)
    geometry = EvalGeometry(build_transforms("eval", cfg.data.image_size, **eval_transform_options(cfg)))
    counts = count_anchor_labels(
        train_set,
        anchors_for=model.anchors_for,
        matcher=matcher,
        geometry=geometry,
        size_divisible=model.size_divisible,
    )
    assert counts.labels == _reference(cfg, model, matcher)
    assert counts.num_images == len(SIZES)
    assert all(c > 0 for c in counts.labels)  # background and every class matched somewhere
    facts = builders.training_set_facts(cfg, model, train_set)
    assert facts.anchor_label_counts() == counts.labels
    assert facts.instances_per_class() == [4, 3, 2]  # the crowd box of the last image is no object


def test_facts_build_the_training_split_only_when_asked(coco_root):
    cfg = _config("quickstart.yaml", coco_root)
    model = builders.build_model_from_config(cfg, 3)
    facts = builders.training_set_facts(cfg, model)
    assert "not built yet" in repr(facts)
    assert facts.images_per_class() == [4, 3, 2]
    assert "not built yet" not in repr(facts)


def test_class_weights_from_frequencies_reach_the_criterion(coco_root):
    cfg = load_config(
        ROOT / "configs" / "quickstart.yaml",
        [
            "data.kind=coco",
            f"data.root={coco_root}",
            "data.train_split=train2017",
            "data.val_split=train2017",
            "loss.focal.class_weights=inverse",
        ],
    )
    model = builders.build_model_from_config(cfg, 3)
    criterion = builders.build_criterion_from_config(cfg, model, builders.training_set_facts(cfg, model))
    inverse = np.array([1 / 4, 1 / 3, 1 / 2])
    np.testing.assert_allclose(criterion.cls_loss.class_weights.numpy(), inverse / inverse.mean(), rtol=1e-6)
