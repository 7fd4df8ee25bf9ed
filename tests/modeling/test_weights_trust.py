"""``--trust-checkpoint`` reaches backbone files (``model.options.weights``) at every entry
point: a file that needs the full unpickler is refused without it and loads with it."""

from __future__ import annotations

import collections
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
import yaml

from detmine.config import load_config
from detmine.engine import builders
from detmine.engine.checkpoint import UnsafeCheckpointError
from detmine.modeling.backbones import TinyBackbone

ROOT = Path(__file__).resolve().parents[2]
WIDTHS = (8, 8, 16, 16, 32)


@pytest.fixture(scope="module")
def userdict_weights(tmp_path_factory):
    """A TinyBackbone state dict saved as a ``collections.UserDict``: harmless, but not a type
    weights-only loading allows. Returns ``(path, the tensors)``."""
    torch.manual_seed(3)
    state = TinyBackbone(widths=WIDTHS).state_dict()
    path = tmp_path_factory.mktemp("weights") / "tiny_backbone.pth"
    torch.save(collections.UserDict(state), path)
    return path, state


def _cfg(path, *extra):
    return load_config(
        None,
        [
            "model.name=retinanet_tiny_fpn",
            f"model.options={{image_size: 64, widths: {list(WIDTHS)}, fpn_channels: 16, head_convs: 1, "
            f"weights: '{path}'}}",
            "data.image_size=64",
            "train.max_iters=1",
            *extra,
        ],
    )


def _assert_backbone_is(model, state):
    mine = model.state_dict()
    for k, v in state.items():
        torch.testing.assert_close(mine[f"backbone.{k}"], v, rtol=0, atol=0, msg=k)


def test_builder_refuses_then_trusts(userdict_weights):
    path, state = userdict_weights
    with pytest.raises(UnsafeCheckpointError) as info:
        builders.build_model_from_config(_cfg(path), 3)
    assert str(path) in str(info.value) and "--trust-checkpoint" in str(info.value)
    _assert_backbone_is(builders.build_model_from_config(_cfg(path), 3, trust_checkpoint=True), state)
    with pytest.raises(UnsafeCheckpointError):  # the trust does not outlive the call
        builders.build_model_from_config(_cfg(path), 3)


def test_tools_over_a_detector_pass_the_trust(userdict_weights, tmp_path):
    path, _ = userdict_weights
    detector = builders.build_model_from_config(_cfg(path), 3, trust_checkpoint=True)
    checkpoint = tmp_path / "detector.pth"
    torch.save({"model": detector.state_dict()}, checkpoint)
    weights = builders.read_detector_weights(checkpoint)
    with pytest.raises(UnsafeCheckpointError):
        builders.load_detector(_cfg(path), 3, weights)
    model = builders.load_detector(_cfg(path), 3, weights, trusted=True)
    for k, v in detector.state_dict().items():  # the checkpoint's weights, all of them
        torch.testing.assert_close(model.state_dict()[k], v, rtol=0, atol=0, msg=k)


def test_train_tool_with_trust_checkpoint(userdict_weights, tmp_path):
    path, _ = userdict_weights
    recipe = tmp_path / "tiny.yaml"
    options = {"image_size": 64, "widths": list(WIDTHS), "fpn_channels": 16, "head_convs": 1}
    recipe_dict = {
        "data": {
            "kind": "synthetic",
            "root": str(tmp_path / "data"),
            "synthetic": {"num_train": 4, "num_val": 2, "size": 64, "seed": 0},
            "image_size": 64,
            "num_workers": 0,
        },
        "model": {"name": "retinanet_tiny_fpn", "options": {**options, "weights": str(path)}},
        "train": {"max_iters": 1, "batch_size": 2, "warmup_iters": 0, "log_period": 1},
        "eval": {"batch_size": 2},
    }
    recipe.write_text(yaml.safe_dump(recipe_dict))

    def train(*flags):
        return subprocess.run(
            [sys.executable, str(ROOT / "tools" / "train.py"), str(recipe), *flags],
            cwd=ROOT,
            env=dict(os.environ, OMP_NUM_THREADS="1"),
            capture_output=True,
            text=True,
            timeout=300,
        )

    refused = train("--output-dir", str(tmp_path / "a"))
    assert refused.returncode == 2 and "is refused" in refused.stderr.strip().splitlines()[-1]
    trusted = train("--output-dir", str(tmp_path / "b"), "--trust-checkpoint")
    assert trusted.returncode == 0, trusted.stderr[-3000:]
    assert (tmp_path / "b" / "model_0000001.pth").is_file()
