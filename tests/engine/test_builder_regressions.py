"""What the builders must hand on, checked through the real builders.

- the loaders pad batches with the model's declared ``pad_value`` (its normalisation mean in
  pixels), not with 0;
- the training-time evaluation post-processes with ``eval.postprocess``, not with ``predict``'s
  defaults.
"""

from __future__ import annotations

import pytest
import torch

from detmine.config import load_config
from detmine.data.synthetic import CLASS_NAMES
from detmine.engine import builders
from detmine.engine.run_state import seed_everything

#: ImageNet's mean (0.485, 0.456, 0.406) x 255 = (123.675, 116.28, 103.53), rounded to uint8.
IMAGENET_PAD_UINT8 = (124, 116, 104)

TINY = [
    "data.kind=synthetic",
    "data.image_size=48",  # 48 px inputs, padded up to the FPN's multiple of 32: 64
    "data.train_transform=retinanet",
    "data.num_workers=0",
    "model.name=retinanet_tiny_fpn",
    "model.options={image_size: 48, widths: [8, 8, 16, 16, 32], fpn_channels: 16, head_convs: 1}",
    "train.max_iters=1",
    "train.batch_size=3",
    "train.optimizer=adamw",
    "train.lr=0.001",
    "train.lr_schedule=constant",
    "train.warmup_iters=0",
    "train.checkpoint_period=0",
    "train.log_period=1",
    "eval.period=0",
    "eval.batch_size=3",
    "eval.val_loss=false",
    "vis.period=0",
]


def _config(tiny_synthetic_root, tmp_path, *overrides):
    return load_config(
        None, [*TINY, f"data.root={tiny_synthetic_root}", f"output_dir={tmp_path / 'run'}", *overrides]
    )


def _assert_padded_with(images: torch.Tensor, targets: list, fill: tuple[int, ...], which: str) -> None:
    """Every pixel right of / below an image's ``input_size`` holds ``fill`` per channel."""
    assert images.dtype == torch.uint8
    padded = 0
    for image, target in zip(images, targets, strict=True):
        h, w = target["input_size"]
        for channel, value in enumerate(fill):
            below, right = image[channel, h:, :], image[channel, :, w:]
            assert below.eq(value).all() and right.eq(value).all(), (which, channel, value, h, w)
            padded += below.numel() + right.numel()
    assert padded > 0, "no padding in the batch: the check would prove nothing"


def test_both_loaders_pad_with_the_models_pad_value(tiny_synthetic_root, tmp_path):
    cfg = _config(tiny_synthetic_root, tmp_path)
    train_set, val_set = builders.build_datasets(cfg)
    model = builders.build_model_from_config(cfg, train_set.num_classes)
    assert model.size_divisible == 32
    loaders = {
        "train": builders.build_train_loader(cfg, train_set, model),
        "val": builders.build_val_loader(cfg, val_set, model),
    }
    for which, loader in loaders.items():
        images, targets = next(iter(loader))
        assert tuple(images.shape[-2:]) == (64, 64), which
        assert all(tuple(t["input_size"]) == (48, 48) for t in targets), which
        _assert_padded_with(images, targets, IMAGENET_PAD_UINT8, which)


def _train_and_record(cfg, monkeypatch) -> list[list[dict]]:
    """Train ``cfg`` (one step, then the end-of-training evaluation) and return what the
    model's real ``predict`` produced for each evaluation batch."""
    seed_everything(cfg.train.seed)
    train_set, val_set = builders.build_datasets(cfg)
    model = builders.build_model_from_config(cfg, train_set.num_classes)
    criterion = builders.build_criterion_from_config(cfg, model)
    produced: list[list[dict]] = []
    predict = model.predict

    def recording_predict(*args, **kwargs):
        detections = predict(*args, **kwargs)
        produced.append(detections)
        return detections

    monkeypatch.setattr(model, "predict", recording_predict)
    trainer = builders.build_trainer(cfg, model, criterion, train_set, val_set)
    trainer.train()
    assert "eval" in trainer.storage, "the training-time evaluation did not run"
    return produced


def _detections_per_image(produced: list[list[dict]]) -> list[int]:
    return [len(d["scores"]) for batch in produced for d in batch]


def test_training_time_evaluation_uses_eval_postprocess(tiny_synthetic_root, tmp_path, monkeypatch):
    # score 0: every (anchor, class) pair clears the threshold, so NMS leaves many boxes per
    # image and detections_per_img decides how many survive.
    many = _train_and_record(
        _config(tiny_synthetic_root, tmp_path / "a", "eval.postprocess.score_thresh=0.0"), monkeypatch
    )
    assert len(_detections_per_image(many)) == 6  # the val split
    assert min(_detections_per_image(many)) > 1
    one = _train_and_record(
        _config(
            tiny_synthetic_root,
            tmp_path / "b",
            "eval.postprocess.score_thresh=0.0",
            "eval.postprocess.detections_per_img=1",
        ),
        monkeypatch,
    )
    assert _detections_per_image(one) == [1] * 6


@pytest.mark.parametrize("rule", ["level", "class"])
def test_training_time_evaluation_uses_eval_topk_per(tiny_synthetic_root, tmp_path, monkeypatch, rule):
    """``topk_per`` reaches predict too: with a top-k of 1 and no suppression the per-level
    rule keeps one candidate per pyramid level (5), the per-class rule one per class (6)."""
    cfg = _config(
        tiny_synthetic_root,
        tmp_path,
        "eval.postprocess.score_thresh=0.0",
        "eval.postprocess.topk_candidates=1",
        "eval.postprocess.nms_thresh=1.0",
        f"eval.postprocess.topk_per={rule}",
    )
    produced = _train_and_record(cfg, monkeypatch)
    expected = 5 if rule == "level" else len(CLASS_NAMES)
    assert _detections_per_image(produced) == [expected] * 6
