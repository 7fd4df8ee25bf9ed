"""Weights into a detector: fine-tuning with another number of classes (``model.weights``),
one-line refusals of weights that do not fit, the input-size warning, and the skipped-image
summary at the end of a run."""

from __future__ import annotations

import shutil

import pytest
import torch

from detmine.config import load_config
from detmine.engine import builders
from detmine.engine.run_state import seed_everything
from detmine.errors import CheckpointError

TINY_MODEL = [
    "model.name=retinanet_tiny_fpn",
    "model.options={image_size: 64, widths: [8, 8, 16, 16, 32], fpn_channels: 16, head_convs: 1}",
    "data.image_size=64",
    "train.max_iters=2",
]


def tiny(*overrides):
    return load_config(None, [*TINY_MODEL, *overrides])


def test_model_weights_fine_tunes_with_another_number_of_classes(tmp_path, capsys):
    source = builders.build_model_from_config(tiny(), 3)
    path = tmp_path / "three_classes.pth"
    torch.save({"model": source.state_dict(), "ema": None, "config": {"data": {"image_size": 64}}}, path)

    model = builders.build_model_from_config(tiny(f"model.weights={path}"), 5)
    note = capsys.readouterr().err  # a diagnostic: stderr
    theirs, ours = source.state_dict(), model.state_dict()
    changed = sorted(k for k in ours if ours[k].shape != theirs[k].shape)
    assert changed and all("cls" in k for k in changed)  # only the classifier depends on K
    assert f"{len(changed)} tensors do not fit" in note and changed[0] in note
    for k, v in ours.items():
        if k not in changed:
            torch.testing.assert_close(v, theirs[k], rtol=0, atol=0, msg=k)


def test_tools_refuse_weights_that_do_not_fit_in_one_line(tmp_path):
    path = tmp_path / "three_classes.pth"
    torch.save({"model": builders.build_model_from_config(tiny(), 3).state_dict()}, path)
    weights = builders.read_detector_weights(path)
    with pytest.raises(CheckpointError) as info:
        builders.load_detector(tiny(), 5, weights)
    message = str(info.value)
    assert "\n" not in message and str(path) in message
    assert "in the checkpoint" in message and "in the model" in message  # both shapes


def test_another_input_size_is_a_warning(tmp_path, capsys):
    path = tmp_path / "at_128.pth"
    torch.save(
        {
            "model": builders.build_model_from_config(tiny(), 3).state_dict(),
            "config": {"data": {"image_size": 128}},
        },
        path,
    )
    builders.load_detector(tiny(), 3, builders.read_detector_weights(path))
    assert "trained at data.image_size=128, this run uses 64" in capsys.readouterr().err


def test_skipped_images_are_summed_up_once_at_the_end(tmp_path, tiny_coco_root, capsys):
    root = tmp_path / "coco"
    shutil.copytree(tiny_coco_root, root)
    images = sorted((root / "images" / "train").iterdir())
    images[0].unlink()
    images[1].write_bytes(b"not a jpeg")
    cfg = tiny(
        "data.kind=coco",
        f"data.root={root}",
        "data.num_workers=0",
        "train.batch_size=4",
        "train.max_iters=3",
        "eval.max_images=2",
        f"output_dir={tmp_path / 'run'}",
    )
    seed_everything(cfg.train.seed)
    train_set, val_set = builders.build_datasets(cfg)
    model = builders.build_model_from_config(cfg, train_set.num_classes)
    trainer = builders.build_trainer(
        cfg, model, builders.build_criterion_from_config(cfg, model), train_set, val_set
    )
    trainer.train()
    captured = capsys.readouterr()
    lines = [line for line in (captured.out + captured.err).splitlines() if "images skipped" in line]
    assert len(lines) == 1, lines
    assert "1 missing" in lines[0] and "1 unreadable" in lines[0] and str(images[0]) in lines[0]
