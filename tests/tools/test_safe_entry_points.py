"""Every command-line entry point that loads a file from elsewhere refuses a pickle payload
before it runs (a sentinel file is never created), in one line naming the file and the opt-in
flag; a checkpoint from detmine 0.1 (pickled numpy RNG state) loads with ``--trust-checkpoint``."""

from __future__ import annotations

import random
from pathlib import Path

import numpy as np
import pytest
import torch

from detmine.config import load_config, save_config
from detmine.data.synthetic import CLASS_NAMES
from detmine.engine import builders

ROOT = Path(__file__).resolve().parents[2]


class _Payload:
    def __init__(self, sentinel: Path) -> None:
        self.sentinel = sentinel

    def __reduce__(self):
        return (Path.touch, (self.sentinel,))


@pytest.fixture
def recipe(tmp_path, tiny_synthetic_root):
    cfg = load_config(
        None,
        [
            f"data.root={tiny_synthetic_root}",
            "data.synthetic={num_train: 12, num_val: 6, size: 128, seed: 0, voc: true}",
            "data.image_size=64",
            "data.num_workers=0",
            "model.name=retinanet_tiny_fpn",
            "model.options={image_size: 64, widths: [8, 8, 16, 16, 32], fpn_channels: 16, head_convs: 1}",
            "train.max_iters=1",
            "train.batch_size=2",
            "eval.max_images=2",
            f"output_dir={tmp_path / 'run'}",
        ],
    )
    path = tmp_path / "tiny.yaml"
    save_config(cfg, path)
    return path, cfg


@pytest.fixture
def evil(tmp_path, recipe):
    _, cfg = recipe
    model = builders.build_model_from_config(cfg, len(CLASS_NAMES))
    sentinel = tmp_path / "PWNED"
    path = tmp_path / "shared.pth"
    torch.save({"model": model.state_dict(), "ema": None, "iteration": 1, "x": _Payload(sentinel)}, path)
    return path, sentinel


def _refused(capsys, path: Path) -> None:
    err = capsys.readouterr().err.strip().splitlines()[-1]
    assert err.startswith("error: ") and str(path) in err and "--trust-checkpoint" in err


@pytest.mark.parametrize(
    "entry", ["evaluate", "visualize_negatives", "export_weights", "resume", "model.weights"]
)
def test_every_entry_point_refuses_a_payload(entry, recipe, evil, tmp_path, capsys, load_tool):
    config, _ = recipe
    path, sentinel = evil
    if entry in ("evaluate", "visualize_negatives"):
        code = load_tool(entry).main([str(config), str(path), "--no-progress", "--device", "cpu"])
    elif entry == "export_weights":
        code = load_tool(entry).main([str(path), str(tmp_path / "out.safetensors")])
    elif entry == "resume":
        run = tmp_path / "run"
        run.mkdir()
        (run / "model_0000001.pth").write_bytes(path.read_bytes())
        (run / "latest").write_text("model_0000001.pth\n")
        path = run / "model_0000001.pth"
        code = load_tool("train").main([str(config), "--resume"])
    else:
        code = load_tool("train").main([str(config), f"model.weights={path}"])
    assert code == 2
    _refused(capsys, path)
    assert not sentinel.exists()


def test_a_detmine_0_1_checkpoint_loads_with_the_opt_in(recipe, tmp_path, capsys, load_tool):
    config, cfg = recipe
    model = builders.build_model_from_config(cfg, len(CLASS_NAMES))
    old = tmp_path / "old.pth"
    rng = {"python": random.getstate(), "numpy": np.random.get_state(), "torch": torch.get_rng_state()}
    torch.save({"model": model.state_dict(), "ema": None, "iteration": 1, "rng": [rng]}, old)
    evaluate = load_tool("evaluate")
    args = [str(config), str(old), "--no-progress", "--device", "cpu", "--out", str(tmp_path / "r.json")]
    assert evaluate.main(args) == 2
    err = capsys.readouterr().err
    assert "numpy" in err and "--trust-checkpoint" in err  # names the disallowed global
    assert evaluate.main([*args, "--trust-checkpoint"]) == 0
    assert (tmp_path / "r.metrics.json").is_file()
