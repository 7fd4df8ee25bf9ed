"""A cell's run folder: new, interrupted, finished, or trained with another config."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import pytest

from detmine.ablation.cells import (
    FINISHED,
    INTERRUPTED,
    MISMATCHED,
    NEW,
    cell_status,
    config_differences,
    train_command,
)
from detmine.ablation.spec import load_ablation
from detmine.config import config_to_dict, save_config

ROOT = Path(__file__).resolve().parents[2]


@pytest.fixture
def spec(tmp_path):
    path = tmp_path / "grid.yaml"
    path.write_text(
        f"recipe: {ROOT / 'configs' / 'quickstart.yaml'}\noutput_dir: {tmp_path / 'out'}\nseeds: [0]\n"
        "overrides: {train.max_iters: 4}\nstrategies:\n  focal: {}\n  ohem: {mining: ohem, loss.cls: balanced_ce}\n"
    )
    return load_ablation(path)


def _finish(path: Path, iteration: int, *, detections: bool = True) -> None:
    records = [{"type": "train", "iteration": iteration}, {"type": "eval", "iteration": iteration, "AP": 0.5}]
    (path / "metrics.jsonl").write_text("".join(json.dumps(r) + "\n" for r in records))
    if detections:
        payload = {"iteration": iteration, "image_ids": [1], "detections": []}
        (path / "detections_final.json").write_text(json.dumps(payload))


def test_the_states_of_a_run_folder(spec):
    cell = spec.cells()[1]
    cfg = spec.cell_config(cell)
    assert cell_status(cell, cfg).state == NEW
    cell.path.mkdir(parents=True)
    save_config(cfg, cell.path / "config.yaml", header=["resumed at iteration 2"])
    assert cell_status(cell, cfg).state == INTERRUPTED  # a run without its final evaluation
    _finish(cell.path, 3)
    assert cell_status(cell, cfg).state == INTERRUPTED  # evaluated, but not at the last iteration
    _finish(cell.path, 4, detections=False)
    assert cell_status(cell, cfg).state == INTERRUPTED  # no final detections kept
    _finish(cell.path, 4)
    assert cell_status(cell, cfg).state == FINISHED
    other = spec.cell_config(spec.cells()[0])  # the grid now asks for another strategy there
    status = cell_status(cell, other)
    assert status.state == MISMATCHED
    assert (
        "mining.type: 'ohem' -> 'all'" in status.detail
        and "loss.cls: 'balanced_ce' -> 'focal'" in status.detail
    )


def test_watching_keys_do_not_count_but_evaluation_does(spec):
    cfg = spec.cell_config(spec.cells()[0])
    saved = config_to_dict(cfg)
    saved.update(output_dir="/elsewhere")
    saved["train"] = {**saved["train"], "log_period": 1, "checkpoint_period": 1, "keep_last": 9}
    saved["data"] = {**saved["data"], "num_workers": 7, "options": {"class_names": ["a", "b"]}}
    saved["vis"] = {**saved["vis"], "period": 3}
    saved["eval"] = {
        **saved["eval"],
        "backend": "pycocotools",
        "views": [{"name": "confusion", "enabled": False}],
    }
    assert config_differences(saved, cfg) == ""  # the backends give identical numbers
    saved["eval"] = {**saved["eval"], "postprocess": {**saved["eval"]["postprocess"], "score_thresh": 0.3}}
    assert "eval.postprocess.score_thresh" in config_differences(saved, cfg)


def test_the_commands(spec, tmp_path):
    cells = spec.cells()
    cfg = spec.cell_config(cells[0])
    tool = tmp_path / "train.py"
    command = train_command(spec, cell_status(cells[0], cfg), train_tool=tool)
    assert command[:3] == [sys.executable, str(tool), str(spec.recipe)] and "--resume" not in command
    assert f"output_dir={cells[0].path}" in command and "train.seed=0" in command
    cells[0].path.mkdir(parents=True)
    save_config(cfg, cells[0].path / "config.yaml")
    resumed = train_command(spec, cell_status(cells[0], cfg), train_tool=tool, nproc_per_node=4)
    assert resumed[1:4] == ["-m", "torch.distributed.run", "--nproc_per_node=4"] and resumed[-1] == "--resume"
