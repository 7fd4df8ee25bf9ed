"""Config: YAML + overrides, one-line errors naming the key, the saved resolved config."""

from __future__ import annotations

import pytest
import yaml

from detmine.config import Config, config_from_dict, config_to_dict, load_config, save_config
from detmine.errors import ConfigError


def write(tmp_path, text: str):
    path = tmp_path / "recipe.yaml"
    path.write_text(text)
    return path


def test_yaml_and_overrides(tmp_path):
    path = write(
        tmp_path,
        "model: {name: ssdlite_tiny, options: {image_size: 128}}\n"
        "mining: {type: ssd, ssd: {neg_pos_ratio: 3, min_negatives: 8}}\n"
        "train: {max_iters: 100, lr: 0.1, steps: [60, 80]}\n",
    )
    cfg = load_config(
        path,
        [
            "train.lr=1e-3",  # YAML 1.1 reads this as a string: still a float
            "mining=ohem",  # shortcut for mining.type
            "mining.ohem.nms_iou=0.5",
            "model.options.widths=[8, 16]",
            "data.train_split=2017",  # str field keeps the text
            "train.steps=[10, 20]",
            "model.weights=null",
        ],
    )
    assert isinstance(cfg, Config)
    assert cfg.model.name == "ssdlite_tiny" and cfg.model.options == {"image_size": 128, "widths": [8, 16]}
    assert cfg.train.lr == 1e-3 and cfg.train.max_iters == 100 and cfg.train.steps == [10.0, 20.0]
    assert cfg.mining.type == "ohem" and cfg.mining.components["ssd"]["min_negatives"] == 8
    assert cfg.mining.components["ohem"] == {"nms_iou": 0.5}  # unset options: the miner's defaults
    assert cfg.mining.criterion_options() == {
        "type": "ohem",
        "ssd": {"neg_pos_ratio": 3, "min_negatives": 8},
        "ohem": {"nms_iou": 0.5},
    }
    assert cfg.data.train_split == "2017" and cfg.model.weights is None
    assert isinstance(cfg.train.momentum, float)


@pytest.mark.parametrize(
    "override, expected",
    [
        ("train.lr_shedule=cosine", ["'train.lr_schedule'", "did you mean 'train.lr_schedule'"]),
        ("trian.lr=0.1", ["'trian'", "did you mean 'train'", "valid keys: data, model"]),
        ("mining.ohem.nms=0.5", ["'mining.ohem.nms'", "did you mean 'mining.ohem.nms_iou'"]),
        ("train.lr=fast", ["'train.lr'", "expects float", "'fast'"]),
        ("train.max_iters=1.5", ["'train.max_iters'", "expects int"]),
        ("train.ema=yes please", ["'train.ema'", "expects bool"]),
        ("mining.type=ohm", ["'mining.type'", "'all', 'ssd', 'ohem', 'random'", "did you mean 'ohem'"]),
        ("train.optimizer=adam", ["'train.optimizer'", "'sgd', 'adamw'"]),
        ("train.steps=5", ["'train.steps'", "a list of float"]),
        ("train.lr.value=1", ["'train.lr'", "not a section"]),
        ("train.lr", ["key.sub=value"]),
        ("train.steps=[3, 1]", ["train.steps must be increasing"]),
    ],
)
def test_override_errors_are_one_line_and_name_the_key(override, expected):
    with pytest.raises(ConfigError) as info:
        load_config(None, ["train.max_iters=10", override])
    message = str(info.value)
    assert "\n" not in message
    for part in expected:
        assert part in message


def test_file_errors_name_the_file_and_key(tmp_path):
    with pytest.raises(ConfigError, match=r"unknown config key 'train.warmup'.*in .*recipe.yaml"):
        load_config(write(tmp_path, "train: {max_iters: 10, warmup: 5}\n"))
    with pytest.raises(ConfigError, match=r"'data.image_size' expects int, got 'big'"):
        load_config(write(tmp_path, "train: {max_iters: 10}\ndata: {image_size: big}\n"))
    with pytest.raises(ConfigError, match="'train' is a section and expects a mapping"):
        load_config(write(tmp_path, "train: 3\n"))
    with pytest.raises(ConfigError, match=r"recipe.yaml line \d+ is not valid YAML"):
        load_config(write(tmp_path, "train:\n  lr: [0.1\n"))
    with pytest.raises(ConfigError, match="does not exist"):
        load_config(tmp_path / "missing.yaml")
    with pytest.raises(ConfigError, match="train.max_iters .* or train.epochs"):
        load_config(write(tmp_path, "train: {lr: 0.1}\n"))


def test_saved_config_round_trips(tmp_path):
    cfg = load_config(None, ["train.max_iters=10", "mining=random", "model.options={fpn_channels: 64}"])
    path = save_config(cfg, tmp_path / "run" / "config.yaml")
    again = load_config(path)
    assert again == cfg
    assert config_from_dict(yaml.safe_load(path.read_text())) == cfg
    assert config_to_dict(cfg)["mining"]["type"] == "random"


def test_shipped_recipes_load():
    from pathlib import Path

    configs = sorted(Path(__file__).resolve().parents[1].joinpath("configs").glob("*.yaml"))
    for path in configs:
        load_config(path)


def test_shipped_recipes_build_their_model_options():
    """Every recipe's model name and options are valid for its builder (no model is built)."""
    from pathlib import Path

    from detmine import modeling
    from detmine.components import check_options

    for path in sorted(Path(__file__).resolve().parents[1].joinpath("configs").glob("*.yaml")):
        cfg = load_config(path)
        assert cfg.model.name in modeling.MODELS, path
        check_options(
            modeling.MODELS[cfg.model.name], cfg.model.options, "model.options", skip=("num_classes",)
        )


def test_component_sections_are_checked_against_their_constructors(tmp_path):
    cfg = load_config(
        write(
            tmp_path,
            "train: {max_iters: 10}\nloss: {cls: focal, focal: {gamma: 3.0}, smooth_l1: {beta: 0.5}}\n",
        ),
        ["loss.focal.alpha=0.5", "mining.random.pos_fraction=0.5"],
    )
    assert cfg.loss.components == {"focal": {"gamma": 3.0, "alpha": 0.5}, "smooth_l1": {"beta": 0.5}}
    saved = config_to_dict(cfg)
    assert saved["loss"]["focal"] == {"gamma": 3.0, "alpha": 0.5} and "components" not in saved["loss"]
    assert load_config(save_config(cfg, tmp_path / "again.yaml")) == cfg
    cases = [
        ("loss.focal.gama=3", ["'loss.focal.gama'", "did you mean 'loss.focal.gamma'"]),
        ("loss.cls=focl", ["'loss.cls'", "did you mean 'focal'"]),
        ("loss.focl.gamma=3", ["'loss.focl'", "did you mean 'loss.focal'"]),
        ("loss.gamma=3", ["'loss.gamma'"]),
        ("mining.ohem.batch_size=3", ["'mining.ohem.batch_size'", "batch_size_per_image"]),
    ]
    for override, expected in cases:
        with pytest.raises(ConfigError) as info:
            load_config(None, ["train.max_iters=10", override])
        assert "\n" not in str(info.value)
        for part in expected:
            assert part in str(info.value), (override, str(info.value))


def test_a_null_matching_option_means_the_presets_value():
    """config.yaml files written before matching options were checked carry explicit nulls."""
    from detmine.box_coder import BoxCoder
    from detmine.criterion import build_criterion

    cfg = load_config(None, ["train.max_iters=1", "matching.preset=retinanet", "matching.fg_iou_thresh=null"])
    assert cfg.matching.options == {"fg_iou_thresh": None}
    matcher = build_criterion("sigmoid", BoxCoder(), matching=cfg.matching.matcher_options()).matcher
    assert matcher.fg_iou_thresh == 0.5 and matcher.bg_iou_thresh == 0.4


def test_resume_treats_empty_lists_as_unset_and_plugins_hooks_as_free():
    from detmine.engine.resume import diff_configs

    old = {"train": {"lr": 0.01}, "matching": {"preset": "ssd", "fg_iou_thresh": None}}
    new = {"train": {"lr": 0.01}, "matching": {"preset": "ssd"}, "plugins": [], "hooks": []}
    assert not diff_configs(old, new).other  # a checkpoint of before plugins / hooks existed
    changed = diff_configs({**new, "plugins": ["a.py"]}, {**new, "plugins": ["a.py", "b.py"]})
    assert not changed.other and "plugins" in changed.free
    changed = diff_configs(new, {**new, "hooks": [{"name": "counter", "period": 5}]})
    assert not changed.other and "hooks" in changed.free
    assert diff_configs(new, {**new, "train": {"lr": 0.02}}).other == {"train.lr": (0.01, 0.02)}
