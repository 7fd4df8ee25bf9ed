"""The extension points: a miner and a classification loss registered from outside the
package (one class and one table line each) are named in a config, checked like the built-in
ones and train."""

from __future__ import annotations

import pytest
import torch

from detmine.config import load_config
from detmine.engine import builders
from detmine.engine.run_state import seed_everything
from detmine.errors import ConfigError
from detmine.losses import CLS_LOSSES
from detmine.mining import MINERS


class StridedNegatives:
    """Every positive plus every ``stride``-th background anchor (a deliberately simple miner)."""

    box_source = None
    normalize_by = "positives"

    def __init__(self, *, stride: int = 2) -> None:
        self.stride = stride

    def __call__(self, cls_loss, labels, boxes):
        index = torch.arange(labels.shape[1], device=labels.device)
        return (labels > 0) | ((labels == 0) & (index % self.stride == 0))


class ScaledBCE:
    """Sigmoid binary cross-entropy against one-hot labels, times ``scale``."""

    activation = "sigmoid"

    def __init__(self, *, scale: float = 1.0) -> None:
        self.scale = scale

    def __call__(self, logits, labels):
        onehot = torch.zeros_like(logits)
        positive = labels > 0
        onehot[positive, labels[positive] - 1] = 1.0
        loss = torch.nn.functional.binary_cross_entropy_with_logits(logits, onehot, reduction="none").sum(-1)
        return self.scale * loss * (labels >= 0)


@pytest.fixture
def registered(monkeypatch):
    monkeypatch.setitem(MINERS, "strided", StridedNegatives)
    monkeypatch.setitem(CLS_LOSSES, "scaled_bce", ScaledBCE)


def config(tmp_path, root, *overrides):
    return load_config(
        None,
        [
            "data.kind=coco",
            f"data.root={root}",
            "data.image_size=64",
            "data.num_workers=0",
            "model.name=retinanet_tiny_fpn",
            "model.options={image_size: 64, widths: [8, 8, 16, 16, 32], fpn_channels: 16, head_convs: 1}",
            "train.max_iters=2",
            "train.batch_size=2",
            "eval.max_images=2",
            f"output_dir={tmp_path / 'run'}",
            *overrides,
        ],
    )


def test_a_miner_and_a_loss_from_outside_train(registered, tmp_path, tiny_coco_root):
    cfg = config(
        tmp_path,
        tiny_coco_root,
        "mining=strided",
        "mining.strided.stride=3",
        "loss.cls=scaled_bce",
        "loss.scaled_bce.scale=0.5",
    )
    seed_everything(0)
    train_set, val_set = builders.build_datasets(cfg)
    model = builders.build_model_from_config(cfg, train_set.num_classes)
    criterion = builders.build_criterion_from_config(cfg, model)
    assert isinstance(criterion.miner, StridedNegatives) and criterion.miner.stride == 3
    trainer = builders.build_trainer(cfg, model, criterion, train_set, val_set)
    trainer.train()
    assert trainer.iteration == 2
    assert all(torch.isfinite(p).all() for p in model.parameters())


def test_their_options_are_checked_like_the_built_in_ones(registered, tmp_path, tiny_coco_root):
    with pytest.raises(
        ConfigError, match=r"mining\.strided\.strid\b.*did you mean 'mining\.strided\.stride'"
    ):
        config(tmp_path, tiny_coco_root, "mining=strided", "mining.strided.strid=3")
    with pytest.raises(ConfigError, match=r"scaled_bc\b.*did you mean 'scaled_bce'"):
        config(tmp_path, tiny_coco_root, "loss.cls=scaled_bc")
