"""tools/export_weights.py: a checkpoint exported to .safetensors evaluates to the same AP as
the checkpoint itself; refused / old checkpoints; one-line errors."""

from __future__ import annotations

import json
import random
from pathlib import Path

import numpy as np
import pytest
import torch

ROOT = Path(__file__).resolve().parents[2]


@pytest.fixture(scope="module")
def tiny_run(tmp_path_factory):
    """A recipe on a tiny synthetic COCO set and a checkpoint of a fresh tiny RetinaNet whose
    EMA weights differ from its raw weights."""
    from detmine.config import config_to_dict, load_config
    from detmine.data.synthetic import ensure_synthetic
    from detmine.engine.checkpoint import save_checkpoint
    from detmine.modeling import build_model

    tmp = tmp_path_factory.mktemp("export")
    root = ensure_synthetic(tmp / "synth", num_train=1, num_val=4, size=64, workers=0, progress=False)
    config = tmp / "tiny.yaml"
    config.write_text(
        f"data: {{kind: coco, root: {root}, image_size: 64, num_workers: 0}}\n"
        "model: {name: retinanet_tiny_fpn, options: {prior_prob: 0.2, image_size: 64}}\n"
        f"train: {{max_iters: 1, device: cpu}}\neval: {{batch_size: 2}}\noutput_dir: {tmp / 'run'}\n"
    )
    torch.manual_seed(0)
    model = build_model("retinanet_tiny_fpn", 6, prior_prob=0.2, image_size=64)
    ema = {
        k: (v + 0.01 * torch.randn_like(v)) if v.is_floating_point() else v
        for k, v in model.state_dict().items()
    }
    ckpt = save_checkpoint(
        tmp / "run" / "model_0000001.pth",
        {
            "model": model.state_dict(),
            "ema": {"module": ema, "updates": 1},
            "iteration": 1,
            "config": config_to_dict(load_config(config)),
        },
    )
    return config, ckpt


def _evaluate(load_tool, config, checkpoint, out, capsys, *extra):
    assert (
        load_tool("evaluate").main([str(config), str(checkpoint), "--out", str(out), "--no-progress", *extra])
        == 0
    )
    capsys.readouterr()
    return json.loads(out.with_name(out.stem + ".metrics.json").read_text())


def test_exported_weights_evaluate_like_the_checkpoint(tiny_run, tmp_path, capsys, load_tool):
    from detmine.config import config_from_dict, load_config
    from detmine.engine.checkpoint import load_checkpoint

    config, ckpt = tiny_run
    out = tmp_path / "detector.safetensors"
    assert load_tool("export_weights").main([str(ckpt), str(out)]) == 0
    printed = capsys.readouterr().out
    assert (
        f"wrote {out}: ema weights" in printed and "iteration 1" in printed and "config embedded" in printed
    )

    exported = load_checkpoint(out)
    assert config_from_dict(exported["config"]) == load_config(config)  # rebuilds the model
    original = _evaluate(load_tool, config, ckpt, tmp_path / "a" / "res.json", capsys)
    again = _evaluate(load_tool, config, out, tmp_path / "b" / "res.json", capsys)
    assert original["weights"] == again["weights"] == "ema"
    assert original["stats"]["AP"] > 0 and original["stats"] == again["stats"]
    assert original["per_class_ap"] == again["per_class_ap"]

    raw = tmp_path / "raw.safetensors"
    assert load_tool("export_weights").main([str(ckpt), str(raw), "--weights", "model"]) == 0
    capsys.readouterr()
    raw_metrics = _evaluate(load_tool, config, raw, tmp_path / "c" / "res.json", capsys)
    assert (
        raw_metrics["stats"]
        == _evaluate(load_tool, config, ckpt, tmp_path / "d" / "res.json", capsys, "--weights", "model")[
            "stats"
        ]
    )


def test_refused_checkpoint_is_one_line_and_trust_flag_opts_in(tiny_run, tmp_path, capsys, load_tool):
    _, ckpt = tiny_run
    state = torch.load(ckpt, weights_only=True)
    state["rng"] = [{"python": random.getstate(), "numpy": np.random.get_state()}]  # as the old main wrote
    old = tmp_path / "old.pth"
    torch.save(state, old)
    out = tmp_path / "old.safetensors"
    tool = load_tool("export_weights")
    assert tool.main([str(old), str(out)]) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith(f"error: checkpoint {old} is refused: loading it needs the global numpy.")
    assert "--trust-checkpoint" in err and "\n" not in err and not out.exists()
    assert tool.main([str(old), str(out), "--trust-checkpoint"]) == 0
    assert "wrote" in capsys.readouterr().out and out.is_file()


def test_user_errors_are_one_line(tmp_path, capsys, load_tool):
    tool = load_tool("export_weights")
    assert tool.main([str(tmp_path / "missing.pth"), str(tmp_path / "x.safetensors")]) == 2
    assert capsys.readouterr().err.strip() == f"error: checkpoint {tmp_path / 'missing.pth'} does not exist"
    torch.save({"model": {"w": torch.zeros(1)}, "ema": None}, tmp_path / "a.pth")
    assert tool.main([str(tmp_path / "a.pth"), str(tmp_path / "x.safetensors"), "--weights", "ema"]) == 2
    assert "has no EMA weights" in capsys.readouterr().err
    blocker = tmp_path / "file"
    blocker.write_text("")
    assert tool.main([str(tmp_path / "a.pth"), str(blocker / "x.safetensors")]) == 2
    err = capsys.readouterr().err.strip()
    assert (
        err.startswith(f"error: cannot write exported weights {blocker / 'x.safetensors'}")
        and "\n" not in err
    )
