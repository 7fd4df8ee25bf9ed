"""Plugins: a miner, a classification loss, a matcher preset and a hook with state, each a few
lines in a user's own ``.py`` file, registered without editing ``detmine/``, named through
``plugins:``; they train through the unmodified ``tools/train.py``, the hook's state survives
``--resume``, ``tools/evaluate.py`` reads the run folder (config.yaml carries the plugin), and a
typo or a wrong type in each one's option is one line naming the key."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from detmine.config import load_config
from detmine.errors import ConfigError
from detmine.plugins import import_plugin, normalize_plugin

PLUGIN = """
import torch
from detmine.engine.hooks import HOOKS
from detmine.engine.trainer import PeriodicHook
from detmine.losses import CLS_LOSSES
from detmine.matching import MATCHER_PRESETS, retinanet_matcher
from detmine.mining import MINERS


@MINERS.register("strided")
class StridedNegatives:
    box_source, normalize_by = None, "positives"

    def __init__(self, *, stride: int = 2):
        self.stride = stride

    def __call__(self, cls_loss, labels, boxes=None):
        index = torch.arange(labels.shape[1], device=labels.device)
        return (labels > 0) | ((labels == 0) & (index % self.stride == 0))


@CLS_LOSSES.register("scaled_bce")
class ScaledBCE(torch.nn.Module):
    activation = "sigmoid"

    def __init__(self, *, scale: float = 1.0):
        super().__init__()
        self.scale = scale

    def forward(self, logits, labels):
        onehot = torch.zeros_like(logits)
        positive = labels > 0
        onehot[positive, labels[positive] - 1] = 1.0
        loss = torch.nn.functional.binary_cross_entropy_with_logits(logits, onehot, reduction="none")
        return self.scale * loss.sum(-1) * (labels >= 0)


def loose(*, fg_iou_thresh: float = 0.4, bg_iou_thresh: float = 0.3):
    return retinanet_matcher(fg_iou_thresh=fg_iou_thresh, bg_iou_thresh=bg_iou_thresh)


MATCHER_PRESETS["loose"] = loose


@HOOKS.register("counter")
class Counter(PeriodicHook):
    def __init__(self, *, period: int = 1):
        super().__init__(period, at_end=False)
        self.count = 0

    def run(self, trainer):
        self.count += 1
        trainer.events.put_record("counter", {"count": self.count})

    def state_dict(self):
        return {"count": self.count}

    def load_state_dict(self, state):
        self.count = state["count"]
"""

RECIPE = """\
data:
  kind: synthetic
  root: {root}
  synthetic: {{num_train: 8, num_val: 4, size: 64, seed: 0}}
  image_size: 64
  num_workers: 0
model:
  name: retinanet_tiny_fpn
  options: {{image_size: 64, widths: [8, 8, 16, 16, 32], fpn_channels: 16, head_convs: 1}}
matching: {{preset: loose, fg_iou_thresh: 0.45}}
loss: {{cls: scaled_bce, scaled_bce: {{scale: 0.5}}}}
mining: {{type: strided, strided: {{stride: 3}}}}
hooks: [{{name: counter, period: 1}}]
plugins: [{plugin}]
train: {{max_iters: 2, batch_size: 4, optimizer: adamw, lr: 0.002, warmup_iters: 1, checkpoint_period: 1, log_period: 1}}
eval: {{batch_size: 4, val_loss: false}}
"""


@pytest.fixture(autouse=True)
def tables_restored(monkeypatch):
    """Plugins imported in this process register into the global tables: put them back after
    each test (and forget the import), so other tests see the built-in entries only."""
    from detmine import plugins
    from detmine.engine.hooks import HOOKS
    from detmine.losses import BOX_LOSSES, CLS_LOSSES
    from detmine.matching import MATCHER_PRESETS
    from detmine.mining import MINERS

    tables = (MINERS, CLS_LOSSES, BOX_LOSSES, MATCHER_PRESETS, HOOKS)
    saved = [dict(table) for table in tables]
    monkeypatch.setattr(plugins, "_imported", {})
    yield
    for table, entries in zip(tables, saved, strict=True):
        for name in [n for n in table if n not in entries]:
            del table[name]


@pytest.fixture(scope="module")
def plugin_recipe(tmp_path_factory):
    from detmine.data.synthetic import ensure_synthetic

    base = tmp_path_factory.mktemp("plugin")
    data = ensure_synthetic(base / "data", num_train=8, num_val=4, size=64, seed=0, workers=0, progress=False)
    plugin = base / "my_parts.py"
    plugin.write_text(PLUGIN)
    recipe = base / "recipe.yaml"
    recipe.write_text(RECIPE.format(root=data, plugin=plugin))
    return base, recipe, plugin


def counts(run: Path) -> list[tuple[int, int]]:
    records = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
    return [(r["iteration"], r["count"]) for r in records if r["type"] == "counter"]


def test_plugin_components_train_resume_and_evaluate(plugin_recipe, tool_process):
    tool = tool_process
    base, recipe, plugin = plugin_recipe
    run = base / "run"
    first = tool("train.py", recipe, "--output-dir", run)
    assert first.returncode == 0, first.stderr[-3000:]
    assert counts(run) == [(1, 1), (2, 2)]
    saved = load_config(run / "config.yaml")  # the run folder names the plugin: it is imported again
    assert saved.plugins == [str(plugin)] and saved.mining.type == "strided"
    assert saved.matching.options == {"fg_iou_thresh": 0.45}

    resumed = tool("train.py", recipe, "--output-dir", run, "--resume", "train.max_iters=4")
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    assert counts(run) == [(1, 1), (2, 2), (3, 3), (4, 4)]  # the count went on from the checkpoint's 2

    # evaluation reads the run folder's own config (the plugin travels with it)
    evaluated = tool(
        "evaluate.py", run / "config.yaml", run / "model_0000004.pth", "--out", base / "results.json"
    )
    assert evaluated.returncode == 0, evaluated.stderr[-3000:]
    assert "Average Precision" in evaluated.stdout


@pytest.mark.parametrize(
    "override, expected",
    [
        ("mining.strided.strid=3", ["'mining.strided.strid'", "did you mean 'mining.strided.stride'"]),
        ("mining.strided.stride=abc", ["'mining.strided.stride'", "expects int", "'abc'"]),
        ("loss.scaled_bce.scael=2", ["'loss.scaled_bce.scael'", "did you mean 'loss.scaled_bce.scale'"]),
        ("loss.scaled_bce.scale=big", ["'loss.scaled_bce.scale'", "expects float", "'big'"]),
        ("matching.fg_iou=0.5", ["'matching.fg_iou'", "did you mean 'matching.fg_iou_thresh'"]),
        ("matching.fg_iou_thresh=high", ["'matching.fg_iou_thresh'", "expects float", "'high'"]),
        ("hooks=[{name: counter, perod: 2}]", ["'hooks[0].perod'", "did you mean 'hooks[0].period'"]),
        ("hooks=[{name: counter, period: often}]", ["'hooks[0].period'", "expects int", "'often'"]),
        ("hooks=[{name: countr}]", ["'hooks[0].name'", "did you mean 'counter'"]),
        ("loss.gamma=2", ["'loss.gamma'", "did you mean 'loss.focal.gamma'"]),
    ],
)
def test_a_typo_or_a_wrong_type_is_one_line_naming_the_key(plugin_recipe, override, expected):
    _, recipe, _ = plugin_recipe
    with pytest.raises(ConfigError) as info:
        load_config(recipe, [override])
    message = str(info.value)
    assert "\n" not in message
    for part in expected:
        assert part in message, (override, message)


def test_the_command_line_says_it_in_one_line_before_any_data_is_read(plugin_recipe, tmp_path, tool_process):
    tool = tool_process
    _, recipe, _ = plugin_recipe
    proc = tool("train.py", recipe, "--output-dir", tmp_path / "run", "mining.strided.stride=abc")
    assert proc.returncode == 2
    assert proc.stderr.strip().splitlines() == [
        "error: config key 'mining.strided.stride' expects int, got 'abc' (str)"
    ]
    assert not (tmp_path / "run").exists()


def test_plugin_on_the_command_line_and_bad_plugins(tmp_path):
    plugin = tmp_path / "late.py"
    plugin.write_text("from detmine.mining import MINERS, SSDMiner\nMINERS['late_ssd'] = SSDMiner\n")
    cfg = load_config(None, ["train.max_iters=1", "mining=late_ssd"], plugins=[str(plugin)])
    assert cfg.plugins == [normalize_plugin(str(plugin))]
    with pytest.raises(
        ConfigError, match=r"plugin 'no_such_module_xyz': no module named 'no_such_module_xyz'"
    ):
        import_plugin("no_such_module_xyz")
    with pytest.raises(ConfigError, match=r"plugin .*missing\.py.*does not exist"):
        import_plugin(str(tmp_path / "missing.py"))
    broken = tmp_path / "broken.py"
    broken.write_text("raise RuntimeError('half-written plugin')\n")
    with pytest.raises(ConfigError, match=r"failed to import: RuntimeError: half-written plugin"):
        import_plugin(str(broken))
