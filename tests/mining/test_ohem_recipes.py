"""The OHEM recipes train (issue 19 F): a short run of each recipe's criterion and optimiser
on a set harder than the quickstart's lowers its classification loss and lifts the positives.

The set: 2x2 mosaics of 64 px synthetic renders in grey (four times the objects, half their
size, no colour cue; the clutter and the distractors as before), 4 images of 128 px, fitted
for 200 steps by a tiny RetinaNet with the recipe's loss, miner and optimiser (type, lr,
momentum, weight decay; a warm-up of 40 steps from the recipe's warm-up factor instead of
its thousand). Under SGD at lr 0.01, OHEM's classification loss divided by the selected
count (128 per image) scaled the classifier's gradient down by 128 x B / positives against
the box loss's: with the COCO OHEM recipe as it was, the positives' scores stayed at the
prior (0.0100 -> 0.0106) and the loss went 0.210 -> 0.194 (the benchmark's "0.21 from
iteration 50 to 1,500"); divided by the positives (EMA) it goes 1.53 -> 0.054 with the
positives at 0.99. The focal recipe in the same harness (1.13 -> 0.054, positives 0.63) is
the reference that the harness can train.
"""

from __future__ import annotations

from pathlib import Path

import cv2
import numpy as np
import pytest
import torch

from detmine.config import load_config
from detmine.data.synthetic import render_sample
from detmine.engine import builders

ROOT = Path(__file__).resolve().parents[2]
SIZE, IMAGES, STEPS, WARMUP = 128, 4, 200, 40


def _mosaic(seed: int) -> tuple[np.ndarray, list[list[float]], list[int]]:
    """A grey ``[SIZE, SIZE, 3]`` uint8 mosaic of four ``SIZE / 2`` renders, its boxes and labels."""
    tile = SIZE // 2
    image = np.zeros((SIZE, SIZE, 3), np.uint8)
    boxes, labels = [], []
    for t in range(4):
        part, b, lab, _ = render_sample((seed, t), size=tile)
        oy, ox = (t // 2) * tile, (t % 2) * tile
        image[oy : oy + tile, ox : ox + tile] = part
        boxes += [[x0 + ox, y0 + oy, x1 + ox, y1 + oy] for x0, y0, x1, y1 in b.tolist()]
        labels += lab.tolist()
    grey = cv2.cvtColor(cv2.cvtColor(image, cv2.COLOR_RGB2GRAY), cv2.COLOR_GRAY2RGB)
    return grey, boxes, labels


def _hard_batch() -> tuple[torch.Tensor, list[dict]]:
    """``IMAGES`` mosaics as uint8 ``[B, 3, SIZE, SIZE]`` and their targets."""
    images, targets = [], []
    for i in range(IMAGES):
        image, boxes, labels = _mosaic(1000 + i)
        images.append(torch.from_numpy(image).permute(2, 0, 1))
        targets.append(
            {
                "boxes": torch.tensor(boxes, dtype=torch.float32).reshape(-1, 4),
                "labels": torch.tensor(labels, dtype=torch.int64),
                "ignore_boxes": torch.zeros(0, 4),
                "image_id": i,
                "orig_size": (SIZE, SIZE),
                "input_size": (SIZE, SIZE),
            }
        )
    return torch.stack(images), targets


def _measure(model, criterion, images, targets) -> tuple[float, float]:
    """(the recipe's classification loss, median sigmoid score of the positives' own class)."""
    model.eval()
    criterion.eval()
    with torch.no_grad():
        outputs = model(images)
        losses, record = criterion(outputs, targets)
        positive = record.labels > 0
        scores = outputs.cls_logits.sigmoid()[positive]  # [P, K]
        own = scores.gather(1, record.labels[positive][:, None] - 1)
    model.train()
    criterion.train()
    return float(losses["cls"]), float(own.median())


def _fit(recipe: str) -> tuple[tuple[float, float], tuple[float, float]]:
    """Fit the hard batch with the recipe's loss, miner and optimiser; (before, after) measures."""
    cfg = load_config(
        ROOT / "configs" / recipe,
        ["model.name=retinanet_tiny_fpn", f"model.options={{image_size: {SIZE}}}", "model.weights=null"],
    )
    torch.manual_seed(0)
    model = builders.build_model_from_config(cfg, 6)
    criterion = builders.build_criterion_from_config(cfg, model).train()
    images, targets = _hard_batch()
    t = cfg.train
    if t.optimizer == "sgd":
        opt = torch.optim.SGD(model.parameters(), lr=t.lr, momentum=t.momentum, weight_decay=t.weight_decay)
    else:
        opt = torch.optim.AdamW(model.parameters(), lr=t.lr, weight_decay=t.weight_decay)
    before = _measure(model, criterion, images, targets)
    for step in range(STEPS):
        factor = 1.0 if step >= WARMUP else t.warmup_factor + (1 - t.warmup_factor) * step / WARMUP
        for group in opt.param_groups:
            group["lr"] = t.lr * factor
        losses, _ = criterion(model(images), targets)
        opt.zero_grad()
        sum(losses.values()).backward()
        opt.step()
    return before, _measure(model, criterion, images, targets)


@pytest.mark.parametrize(
    "recipe", ["retinanet_r50_fpn_ohem_coco.yaml", "quickstart_ohem.yaml", "retinanet_r50_fpn_1x_coco.yaml"]
)
def test_recipe_lowers_its_classification_loss_on_a_hard_set(recipe):
    (loss0, score0), (loss1, score1) = _fit(recipe)
    assert score0 == pytest.approx(0.01, rel=0.05)  # every sigmoid starts at the prior
    assert loss1 < 0.5 * loss0, (recipe, loss0, loss1)
    assert score1 > 0.2, (recipe, score0, score1)  # the positives were learned, not left at the prior
