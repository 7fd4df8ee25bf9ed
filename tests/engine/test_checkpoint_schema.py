"""Malformed files that load weights-only are refused in one line naming the file and the first
bad field (no traceback later, when a part of the run uses the field); plain pickles name the
global they need; safetensors metadata is bounded in size and depth."""

from __future__ import annotations

import collections
import json
import pickle
import random
from pathlib import Path

import numpy as np
import pytest
import torch
from safetensors.torch import save_file

from detmine import safe_io
from detmine.engine.checkpoint import load_checkpoint, save_checkpoint, validate_checkpoint
from detmine.engine.run_state import rng_state
from detmine.errors import CheckpointError


class OrderedSubclass(collections.OrderedDict):
    """A dict subclass: pickling it names this class as a global."""


class PlainObject:
    def __init__(self) -> None:
        self.weights = [1.0, 2.0]


def _model() -> dict[str, torch.Tensor]:
    return {"conv.weight": torch.ones(2, 3), "conv.bias": torch.zeros(2)}


def _training_state() -> dict:
    """A checkpoint shaped like Trainer.state_dict()'s (independent hand-written copy)."""
    return {
        "model": _model(),
        "optimizer": {"state": {}, "param_groups": [{"lr": 0.1, "params": [0, 1]}]},
        "scheduler": {"iteration": 3, "base_lrs": [0.1]},
        "scaler": None,
        "ema": {"module": _model(), "updates": 3},
        "criterion": None,
        "iteration": 3,
        "epoch": 0,
        "sampler": {"epoch": 0, "batch_in_epoch": 3, "loader": {"epoch": 0, "batches_consumed": 3}},
        "rng": [rng_state()],
        "skipped_nonfinite": 0,
        "hooks": {"evaluation": {"best_metric": 0.5}},
        "config": {"train": {"max_iters": 6}},
    }


#: (field changed, new value, the field the message names, words of what was expected)
COMMON_CASES = [
    ("config", "train: {max_iters: 6}", "'config'", "a dict"),
    ("iteration", "abc", "'iteration'", "integer"),
    ("ema", "ema weights", "'ema'", "None or a dict"),
    ("ema", [1, 2], "'ema'", "None or a dict"),
    ("model", [torch.ones(2)], "'model'", "a dict of tensors"),
    ("model", {"conv.weight": "w"}, "'model.conv.weight'", "a tensor"),
    ("class_names", "cat", "'class_names'", "list of class-name strings"),
]
TRAINING_CASES = [
    ("rng", [{"python": "x", "numpy": None, "torch": torch.zeros(3)}], "'rng[0].python'", "random.getstate"),
    ("rng", [{"python": (3, (1, 2), None)}], "'rng[0]'", "'python', 'numpy' and 'torch'"),
    ("rng", "seed", "'rng'", "list of random-generator states"),
    ("sampler", {"epoch": "x", "batch_in_epoch": 0}, "'sampler.epoch'", "integer >= 0"),
    ("sampler", [0, 3], "'sampler'", "a dict"),
    ("sampler", {"epoch": 0, "batch_in_epoch": 1, "loader": {"epoch": -1, "batches_consumed": 0}},
     "'sampler.loader.epoch'", "integer >= 0"),
    ("optimizer", "adamw", "'optimizer'", "optimizer state dict"),
    ("scheduler", {"iteration": 2.5}, "'scheduler.iteration'", "integer"),
    ("hooks", {"evaluation": {"best_metric": "high"}}, "'hooks.evaluation.best_metric'", "number"),
]  # fmt: skip


def _refused(path: Path, field: str, expected: str, **kwargs) -> str:
    with pytest.raises(CheckpointError) as info:
        load_checkpoint(path, **kwargs)
    msg = str(info.value)
    assert "\n" not in msg and str(path) in msg and field in msg and expected in msg, msg
    return msg


def test_well_formed_checkpoints_pass(tmp_path):
    state = _training_state()
    assert validate_checkpoint(state, "x.pth", training=True) is state
    old = {
        **state,
        "rng": [
            {"python": random.getstate(), "numpy": np.random.get_state(), "torch": torch.get_rng_state()}
        ],
    }
    assert validate_checkpoint(old, "old.pth", training=True) is old  # detmine 0.1's tuple form
    bare = {"rng": [rng_state()], "w": torch.zeros(1)}  # no "model": a bare dict, checked when used
    assert validate_checkpoint(bare, "b.pth", training=False) is bare
    path = save_checkpoint(tmp_path / "m.pth", state)
    assert load_checkpoint(path, training=True)["iteration"] == 3


@pytest.mark.parametrize(("key", "value", "field", "expected"), COMMON_CASES)
def test_malformed_fields_are_refused_for_every_reader(tmp_path, key, value, field, expected):
    path = save_checkpoint(tmp_path / "bad.pth", {**_training_state(), key: value})
    _refused(path, field, expected)
    _refused(path, field, expected, training=True)


@pytest.mark.parametrize(("key", "value", "field", "expected"), TRAINING_CASES)
def test_malformed_resume_state_is_refused_for_a_resume(tmp_path, key, value, field, expected):
    path = save_checkpoint(tmp_path / "bad.pth", {**_training_state(), key: value})
    assert load_checkpoint(path)["model"]  # the tools do not read it
    _refused(path, field, expected, training=True)


def test_a_checkpoint_that_is_not_a_dict_is_refused(tmp_path):
    torch.save([1, 2], tmp_path / "list.pth")
    _refused(tmp_path / "list.pth", "a list", "expected a dict")


# ----------------------------------------------------------------------------- plain pickles


@pytest.mark.parametrize(
    ("obj", "cls"), [(OrderedSubclass(w=1), OrderedSubclass), ({"model": PlainObject()}, PlainObject)]
)
@pytest.mark.parametrize("protocol", [0, 2, pickle.HIGHEST_PROTOCOL])
def test_a_plain_pickle_names_the_global_it_needs(tmp_path, obj, cls, protocol):
    path = tmp_path / "weights.pkl"
    with open(path, "wb") as f:
        pickle.dump(obj, f, protocol=protocol)
    with pytest.raises(safe_io.UnsafeCheckpointError) as info:
        load_checkpoint(path)
    msg = str(info.value)
    assert "\n" not in msg and str(path) in msg and "corrupt" not in msg and "file an issue" not in msg
    assert "plain pickle" in msg and "torch.save" in msg
    if protocol >= 2:  # protocol 0 pickles an object through copyreg._reconstructor first
        assert info.value.global_name == f"{cls.__module__}.{cls.__qualname__}"
        assert f"needs the global {cls.__module__}.{cls.__qualname__}" in msg
    with pytest.raises(CheckpointError, match="plain pickle"):  # trusting it does not help torch.load
        load_checkpoint(path, trusted=True)


def test_a_plain_pickle_of_plain_data_is_not_called_corrupt(tmp_path):
    path = tmp_path / "weights.pkl"
    path.write_bytes(pickle.dumps({"w": [1.0, 2.0]}, protocol=4))
    msg = _refused(path, "plain pickle", "torch.save")
    assert "corrupt" not in msg and "file an issue" not in msg


def test_garbage_is_still_corrupt(tmp_path):
    path = tmp_path / "x.pth"
    path.write_bytes(b"\x80\x04garbage that is not a pickle" * 3)
    _refused(path, "corrupt", "not loaded")


# ----------------------------------------------------------------------------- safetensors metadata


def _exported(tmp_path: Path, config_json: str) -> Path:
    path = tmp_path / "w.safetensors"
    save_file(_model(), path, metadata={"detmine.config": config_json, "detmine.weights": "model"})
    return path


def test_deeply_nested_metadata_is_refused(tmp_path):
    depth = 100_000
    with pytest.raises(RecursionError):  # what json.loads itself does with it
        json.loads("[" * depth + "]" * depth)
    _refused(_exported(tmp_path, "[" * depth + "]" * depth), "'detmine.config'", "nested deeper")


def test_huge_or_broken_metadata_is_refused(tmp_path):
    big = json.dumps({"x": "a" * (safe_io.MAX_META_CHARS + 1)})
    _refused(_exported(tmp_path, big), "'detmine.config'", "characters")
    _refused(_exported(tmp_path, '{"a": '), "'detmine.config'", "not valid JSON")
    _refused(_exported(tmp_path, '"a string"'), "'config'", "a dict")


def test_config_metadata_at_the_depth_of_a_real_config_loads(tmp_path):
    nested = {"a": {"b": {"c": {"d": [[1, 2], {"e": "[[[{{{"}]}}}}
    assert load_checkpoint(_exported(tmp_path, json.dumps(nested)))["config"] == nested
