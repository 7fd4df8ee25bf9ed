"""Every entry point that reads a checkpoint (``--resume``, tools/evaluate.py,
tools/export_weights.py) refuses a malformed one -- loads weights-only, wrong structure -- with
one ``error:`` line naming the file and the field, exit 2, no traceback; the same for an
exported file with absurd metadata and for a plain pickle."""

from __future__ import annotations

import collections
import pickle
import shutil
from pathlib import Path

import pytest
import torch
from safetensors.torch import save_file

from detmine.config import load_config, save_config


class OrderedSubclass(collections.OrderedDict):
    """Pickling it names this class as a global."""


@pytest.fixture(scope="module")
def trained(tmp_path_factory, tiny_synthetic_root, load_tool):
    """A tiny recipe and the real run folder of one training iteration (EMA on)."""
    tmp = tmp_path_factory.mktemp("malformed")
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
            "train.ema=true",
            "train.device=cpu",
            "eval.max_images=2",
            f"output_dir={tmp / 'run'}",
        ],
    )
    config = save_config(cfg, tmp / "tiny.yaml")
    assert load_tool("train").main([str(config)]) == 0
    ckpt = tmp / "run" / "model_0000001.pth"
    state = torch.load(ckpt, weights_only=True)
    assert {"model", "ema", "optimizer", "sampler", "rng", "config"} <= set(state)
    return config, tmp / "run", state


#: (case id, field changed, new value, words the message must hold)
CASES = [
    ("config_str", "config", "train: {max_iters: 1}", "'config' is a str"),
    ("iteration_abc", "iteration", "abc", "'iteration' is a str ('abc')"),
    ("ema_str", "ema", "weights", "'ema' is a str"),
    ("ema_list", "ema", [1, 2], "'ema' is a list"),
    ("model_list", "model", [torch.zeros(1)], "'model' is a list"),
]
RESUME_ONLY = [
    ("rng_str", "rng", [{"python": "x", "numpy": "y", "torch": torch.zeros(2)}], "'rng[0].python'"),
    ("rng_no_torch", "rng", [{"python": (3, (0,) * 625, None), "numpy": None}], "'rng[0]'"),
    ("sampler_str", "sampler", {"epoch": "one", "batch_in_epoch": 1}, "'sampler.epoch' is a str"),
    ("sampler_list", "sampler", [0, 1], "'sampler' is a list"),
]


def _one_error_line(capsys, *needles: str) -> str:
    captured = capsys.readouterr()
    assert "Traceback" not in captured.err and "Traceback" not in captured.out
    lines = [ln for ln in captured.err.splitlines() if ln.strip()]
    errors = [ln for ln in lines if ln.startswith("error: ")]
    assert len(errors) == 1, captured.err
    for needle in needles:
        assert needle in errors[0], errors[0]
    return errors[0]


def _resume(load_tool, config: Path, run: Path, tmp_path: Path, state: dict) -> tuple[int, Path]:
    """Copy the run folder, put ``state`` in its newest checkpoint, resume it."""
    copy = tmp_path / "run"
    shutil.copytree(run, copy)
    torch.save(state, copy / "model_0000001.pth")
    return load_tool("train").main(
        [str(config), "--resume", f"output_dir={copy}"]
    ), copy / "model_0000001.pth"


@pytest.mark.parametrize(("key", "value", "needle"), [c[1:] for c in CASES + RESUME_ONLY],
                         ids=[c[0] for c in CASES + RESUME_ONLY])  # fmt: skip
def test_resume_refuses_a_malformed_checkpoint(trained, tmp_path, capsys, load_tool, key, value, needle):
    config, run, state = trained
    capsys.readouterr()
    code, path = _resume(load_tool, config, run, tmp_path, {**state, key: value})
    assert code == 2
    _one_error_line(capsys, str(path), needle)


@pytest.mark.parametrize("tool", ["evaluate", "export_weights"])
@pytest.mark.parametrize(("key", "value", "needle"), [c[1:] for c in CASES], ids=[c[0] for c in CASES])
def test_tools_refuse_a_malformed_checkpoint(trained, tmp_path, capsys, load_tool, tool, key, value, needle):
    config, run, state = trained
    path = tmp_path / "bad.pth"
    torch.save({**state, key: value}, path)
    capsys.readouterr()
    assert _run_tool(load_tool, tool, config, path, tmp_path) == 2
    _one_error_line(capsys, str(path), needle)
    assert not (tmp_path / "out.safetensors").exists() and not (tmp_path / "r.json").exists()


def _run_tool(load_tool, tool: str, config: Path, path: Path, tmp_path: Path) -> int:
    if tool == "evaluate":
        argv = [str(config), str(path), "--no-progress", "--device", "cpu", "--out", str(tmp_path / "r.json")]
        return load_tool("evaluate").main(argv)
    return load_tool("export_weights").main([str(path), str(tmp_path / "out.safetensors")])


@pytest.mark.parametrize("tool", ["evaluate", "export_weights"])
def test_tools_refuse_deeply_nested_safetensors_metadata(trained, tmp_path, capsys, load_tool, tool):
    config, _, state = trained
    path = tmp_path / "deep.safetensors"
    deep = "[" * 50_000 + "]" * 50_000  # json.loads: RecursionError
    save_file(state["model"], path, metadata={"detmine.config": deep, "detmine.weights": "model"})
    capsys.readouterr()
    assert _run_tool(load_tool, tool, config, path, tmp_path) == 2
    _one_error_line(capsys, str(path), "detmine.config", "nested deeper")


@pytest.mark.parametrize("tool", ["evaluate", "export_weights"])
def test_tools_name_the_global_of_a_plain_pickle(trained, tmp_path, capsys, load_tool, tool):
    config, _, state = trained
    path = tmp_path / "weights.pkl"
    path.write_bytes(pickle.dumps(OrderedSubclass(state["model"]), protocol=4))
    capsys.readouterr()
    assert _run_tool(load_tool, tool, config, path, tmp_path) == 2
    line = _one_error_line(capsys, str(path), f"{OrderedSubclass.__module__}.OrderedSubclass", "plain pickle")
    assert "corrupt" not in line and "file an issue" not in line


@pytest.mark.parametrize("empty", [{}, "model"], ids=["bare_empty_dict", "empty_model"])
def test_export_without_weights_writes_nothing(trained, tmp_path, capsys, load_tool, empty):
    _, _, state = trained
    path = tmp_path / "empty.pth"
    torch.save({} if empty == {} else {**state, "model": {}, "ema": None}, path)
    out = tmp_path / "out.safetensors"
    capsys.readouterr()
    assert load_tool("export_weights").main([str(path), str(out)]) == 2
    _one_error_line(capsys, str(path), "no model weights", "not written")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["empty.pth"]
