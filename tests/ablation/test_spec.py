"""The ablation file: strategies as override sets, every cell's config checked up front."""

from __future__ import annotations

from pathlib import Path

import pytest

from detmine.ablation.spec import load_ablation, override_items
from detmine.config import load_config
from detmine.errors import ConfigError

ROOT = Path(__file__).resolve().parents[2]
RECIPE = ROOT / "configs" / "quickstart.yaml"


def write(tmp_path: Path, text: str) -> Path:
    path = tmp_path / "grid.yaml"
    path.write_text(text)
    return path


def test_cells_are_strategies_by_seeds_with_every_override(tmp_path):
    spec = load_ablation(
        write(
            tmp_path,
            f"recipe: {RECIPE}\nseeds: [3, 5]\nbaseline: ohem\noutput_dir: {tmp_path / 'out'}\n"
            "overrides: {train.max_iters: 7, model.options: {image_size: 96}, train.lr: 1e-3}\n"
            "strategies:\n  focal: {loss.cls: focal}\n  ohem: {mining: ohem, loss.cls: balanced_ce}\n",
        )
    )
    cells = spec.cells()
    assert [c.name for c in cells] == ["focal/seed3", "focal/seed5", "ohem/seed3", "ohem/seed5"]
    assert cells[0].path == (tmp_path / "out" / "focal" / "seed3").resolve()
    cfg = spec.cell_config(cells[3])
    assert (cfg.train.max_iters, cfg.train.seed, cfg.train.lr) == (7, 5, 0.001)
    assert cfg.model.options == {"image_size": 96}
    assert (cfg.mining.type, cfg.loss.cls) == ("ohem", "balanced_ce")
    assert cfg.output_dir == str(cells[3].path)
    assert spec.baseline == "ohem"
    assert len(spec.check()) == 4


def test_override_items_read_back_to_the_same_values():
    values = {"train.lr": 0.001, "model.options": {"widths": [8, 16], "image_size": 64}, "mining": "ohem"}
    items = override_items(values)
    assert items[2] == "mining=ohem"
    cfg = load_config(RECIPE, items)
    assert (cfg.train.lr, cfg.model.options, cfg.mining.type) == (0.001, values["model.options"], "ohem")


@pytest.mark.parametrize(
    ("body", "message"),
    [
        ("strategies:\n  focal: {loss.cls: focal}\n  typo: {loss.focal.gama: 1}\n", "strategy 'typo': "),
        (
            "strategies:\n  bad: {mining.ohem.nms_iou: abc}\n",
            "strategy 'bad': config key 'mining.ohem.nms_iou' expects",
        ),
        (
            "strategies:\n  x: {mining: ohm}\n",
            "strategy 'x': config key 'mining.type' is 'ohm'; did you mean 'ohem'?",
        ),
    ],
)
def test_a_bad_key_in_a_strategy_names_the_strategy_and_the_key(tmp_path, body, message):
    spec = load_ablation(write(tmp_path, f"recipe: {RECIPE}\noutput_dir: {tmp_path / 'out'}\n{body}"))
    with pytest.raises(ConfigError) as info:
        spec.check()
    assert message in str(info.value) and "\n" not in str(info.value)
    assert not (tmp_path / "out").exists()  # before anything ran


@pytest.mark.parametrize(
    ("body", "message"),
    [
        ("strategies: {a: {}}\nseed: [1]\n", "unknown key 'seed'"),
        ("strategies: {a: {}}\nseeds: []\n", "'seeds' must be a non-empty list of distinct integers"),
        ("strategies: {a: {}}\nseeds: [1, 1]\n", "'seeds' must be a non-empty list of distinct integers"),
        ("strategies: {a: {}}\nbaseline: b\n", "baseline 'b' is not a strategy; valid: a"),
        ("strategies: {a/b: {}}\n", "strategy name 'a/b' must be"),
        ("strategies: {a: [x]}\n", "strategy 'a' must be a mapping"),
        ("strategies: {}\n", "'strategies' must map strategy names"),
    ],
)
def test_a_malformed_file_is_one_line(tmp_path, body, message):
    with pytest.raises(ConfigError, match=message.replace("[", r"\[").replace("]", r"\]")):
        load_ablation(write(tmp_path, f"recipe: {RECIPE}\n{body}"))


def test_a_missing_recipe_or_file(tmp_path):
    with pytest.raises(ConfigError, match="does not exist"):
        load_ablation(tmp_path / "nope.yaml")
    with pytest.raises(ConfigError, match="recipe nope.yaml does not exist"):
        load_ablation(write(tmp_path, "recipe: nope.yaml\nstrategies: {a: {}}\n"))
    with pytest.raises(ConfigError, match="'recipe' is missing"):
        load_ablation(write(tmp_path, "strategies: {a: {}}\n"))


def test_the_recipe_may_be_given_relative_to_the_file(tmp_path):
    (tmp_path / "r.yaml").write_text(RECIPE.read_text())
    spec = load_ablation(write(tmp_path, "recipe: r.yaml\nstrategies: {a: {}}\n"))
    assert spec.recipe == (tmp_path / "r.yaml").resolve()
