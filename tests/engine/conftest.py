"""Small fakes of the dataset, detector and criterion contracts for engine tests.

They follow the contracts of docs/architecture.md (``HeadOutputs``, ``Target``,
``Detections``, ``MiningRecord``) and draw random numbers in the data (noise) and the
model (dropout), so a resume test also checks that the RNG states come back.
"""

from __future__ import annotations

import sys

import pytest
import torch
from torch import nn
from torch.utils.data import DataLoader, Dataset, DistributedSampler

from detmine.config import Config, load_config
from detmine.mining.record import MiningRecord
from detmine.structures import HeadOutputs

SIZE = 32


class FakeDetectionDataset(Dataset):
    """``n`` images of SIZE x SIZE with one or no box; random noise is drawn per access."""

    num_classes = 2
    class_names = ["a", "b"]
    contiguous_to_category_id = {1: 11, 2: 12}
    category_id_to_contiguous = {11: 1, 12: 2}

    def __init__(self, n: int = 12, noise: bool = True) -> None:
        self.n = n
        self.noise = noise
        self.image_ids = list(range(1, n + 1))

    def __len__(self) -> int:
        return self.n

    def _box(self, i: int) -> list[list[float]]:
        if i % 3 == 2:
            return []
        x = 2.0 + (i * 5) % 14
        return [[x, x, x + 12.0, x + 12.0]]

    def __getitem__(self, i: int):
        image = torch.full((3, SIZE, SIZE), 40, dtype=torch.uint8)
        for x1, y1, x2, y2 in self._box(i):
            image[:, int(y1) : int(y2), int(x1) : int(x2)] = 200 if i % 2 else 120
        if self.noise:
            image = (image.float() + torch.randint(0, 20, image.shape)).clamp(0, 255).to(torch.uint8)
        boxes = torch.tensor(self._box(i), dtype=torch.float32).reshape(-1, 4)
        target = {
            "boxes": boxes,
            "labels": torch.full((len(boxes),), 1 + i % 2, dtype=torch.int64),
            "ignore_boxes": torch.zeros((0, 4)),
            "image_id": self.image_ids[i],
            "orig_size": (SIZE, SIZE),
            "input_size": (SIZE, SIZE),
        }
        return image, target

    def coco_gt_dict(self) -> dict:
        images, anns = [], []
        for i, image_id in enumerate(self.image_ids):
            images.append({"id": image_id, "width": SIZE, "height": SIZE, "file_name": f"{image_id}.png"})
            for x1, y1, x2, y2 in self._box(i):
                anns.append(
                    {
                        "id": len(anns) + 1,
                        "image_id": image_id,
                        "category_id": self.contiguous_to_category_id[1 + i % 2],
                        "bbox": [x1, y1, x2 - x1, y2 - y1],
                        "area": (x2 - x1) * (y2 - y1),
                        "iscrowd": 0,
                    }
                )
        cats = [{"id": 11, "name": "a"}, {"id": 12, "name": "b"}]
        return {"images": images, "annotations": anns, "categories": cats}


def collate(samples):
    images = torch.stack([s[0] for s in samples])
    return images, [s[1] for s in samples]


def make_loader(dataset, batch_size: int, seed: int = 0, num_replicas: int = 1, rank: int = 0, shuffle=True):
    sampler = DistributedSampler(dataset, num_replicas=num_replicas, rank=rank, shuffle=shuffle, seed=seed)
    return DataLoader(dataset, batch_size=batch_size, sampler=sampler, collate_fn=collate, drop_last=shuffle)


class FakeDetector(nn.Module):
    """A 2-layer conv "detector" on a fixed 8x8 grid of 8x8-px anchors (A = 64)."""

    cls_activation = "sigmoid"

    def __init__(self, num_classes: int = 2, dropout: float = 0.1, batchnorm: bool = True) -> None:
        super().__init__()
        self.num_classes = num_classes
        layers = [nn.Conv2d(3, 8, 3, stride=4, padding=1)]
        layers += [nn.BatchNorm2d(8)] if batchnorm else []
        layers += [nn.ReLU(), nn.Dropout(dropout)]
        self.body = nn.Sequential(*layers)
        self.cls = nn.Conv2d(8, num_classes, 1)
        self.box = nn.Conv2d(8, 4, 1)
        ys, xs = torch.meshgrid(torch.arange(8.0), torch.arange(8.0), indexing="ij")
        cells = torch.stack([xs, ys, xs + 1, ys + 1], dim=-1).reshape(-1, 4) * 4.0
        self.register_buffer("anchors", cells, persistent=False)

    def forward(self, images: torch.Tensor) -> HeadOutputs:
        x = self.body(images.float() / 255.0)
        b = x.shape[0]
        cls = self.cls(x).permute(0, 2, 3, 1).reshape(b, -1, self.num_classes)
        box = self.box(x).permute(0, 2, 3, 1).reshape(b, -1, 4)
        return HeadOutputs(
            cls, box, self.anchors, cls_activation="sigmoid", level_counts=(len(self.anchors),)
        )

    @torch.no_grad()
    def predict(self, images, input_sizes=None, orig_sizes=None, *, detections_per_img=5, **postprocess):
        out = self(images)
        dets = []
        for logits, deltas in zip(out.cls_logits, out.box_deltas, strict=True):
            scores, labels = logits.sigmoid().max(dim=1)
            keep = scores.topk(min(5, detections_per_img)).indices
            boxes = (out.anchors + deltas)[keep].clamp(0, SIZE)
            boxes[:, 2:] = torch.maximum(boxes[:, 2:], boxes[:, :2] + 1)
            dets.append({"boxes": boxes, "scores": scores[keep], "labels": labels[keep] + 1})
        return dets


class FakeCriterion(nn.Module):
    """Labels = class of the box covering the anchor centre; sigmoid BCE + L1 on positives,
    normalised by the positives of the batch (or by the images with ``per_image``)."""

    def __init__(self, nan_at: int | None = None, per_image: bool = False) -> None:
        super().__init__()
        self.nan_at = nan_at
        self.per_image = per_image
        self.calls = 0

    def forward(self, outputs: HeadOutputs, targets):
        self.calls += 1
        anchors = outputs.anchors
        centres = (anchors[:, :2] + anchors[:, 2:]) / 2
        labels = torch.zeros(outputs.cls_logits.shape[:2], dtype=torch.int64, device=anchors.device)
        box_t = torch.zeros_like(outputs.box_deltas)
        for i, t in enumerate(targets):
            for box, label in zip(t["boxes"], t["labels"], strict=True):
                inside = (centres >= box[:2]).all(1) & (centres <= box[2:]).all(1)
                labels[i, inside] = label
                box_t[i, inside] = box - anchors[inside]
        onehot = nn.functional.one_hot(labels.clamp(min=0), outputs.cls_logits.shape[-1] + 1)[..., 1:].float()
        per_anchor = nn.functional.binary_cross_entropy_with_logits(
            outputs.cls_logits, onehot, reduction="none"
        ).sum(-1)
        pos = labels > 0
        # per_image: average over the local images, so DDP gradient averaging is exact
        n = torch.tensor(float(len(targets))) if self.per_image else pos.sum().clamp(min=1)
        cls = per_anchor.sum() / n
        box = (outputs.box_deltas - box_t).abs().sum(-1)[pos].sum() / n
        if self.nan_at is not None and self.calls == self.nan_at:
            cls = cls * float("nan")
        record = MiningRecord(labels=labels, selected=labels >= 0, cls_loss=per_anchor.detach())
        return {"cls": cls, "box": box}, record


def tiny_config(tmp_path, *overrides: str) -> Config:
    return load_config(
        None,
        [
            f"output_dir={tmp_path / 'run'}",
            "train.max_iters=6",
            "train.batch_size=4",
            "train.lr=0.05",
            "train.warmup_iters=2",
            "train.steps=[4]",
            "train.log_period=2",
            "train.checkpoint_period=3",
            "data.num_workers=0",
            *overrides,
        ],
    )


@pytest.fixture
def fakes():
    """This module: the fake dataset, loader, detector, criterion and config helpers."""
    return sys.modules[__name__]
