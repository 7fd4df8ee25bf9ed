"""The named builders' signatures (what configs are checked against) and the shared ResNet RetinaNet."""

from __future__ import annotations

import inspect
import pickle
from types import SimpleNamespace

import pytest
import torch

from detmine.errors import ConfigError
from detmine.modeling import MODELS, build_model, model_options
from detmine.modeling.zoo import _resnet_recipe, retinanet_resnet_fpn

RESNETS = {"retinanet_resnet50_fpn": (50, 640), "retinanet_resnet18_fpn": (18, 320)}


def _state(model):
    return {k: tuple(v.shape) for k, v in model.state_dict().items()}


@pytest.mark.parametrize("name", list(MODELS))
def test_every_builder_signature_lists_its_options(name):
    builder = MODELS[name]
    params = list(inspect.signature(builder).parameters.values())
    assert params[0].name == "num_classes"
    assert params[0].kind is inspect.Parameter.POSITIONAL_OR_KEYWORD
    options = params[1:]
    assert options, name
    assert all(p.kind is inspect.Parameter.KEYWORD_ONLY for p in options), name
    assert all(p.default is not inspect.Parameter.empty for p in options), name
    assert "self" not in {p.name for p in params}
    assert model_options(name) == [p.name for p in options]
    assert builder.__name__ == name  # config errors name the builder
    assert pickle.loads(pickle.dumps(builder)) is builder  # by reference, as a module-level function


def test_resnet_recipes_are_the_shared_builder_less_depth():
    shared = inspect.signature(retinanet_resnet_fpn).parameters
    assert shared["depth"].default == 50
    for name, (_, image_size) in RESNETS.items():
        params = inspect.signature(MODELS[name]).parameters
        assert list(params) == [p for p in shared if p != "depth"]
        for p in params.values():
            expected = image_size if p.name == "image_size" else shared[p.name].default
            assert p.default == expected, (name, p.name)
            assert p.annotation == shared[p.name].annotation


def test_resnet18_recipe_is_the_shared_builder_at_depth_18():
    torch.manual_seed(0)
    named = MODELS["retinanet_resnet18_fpn"](3, p6_from="c5", trainable_layers=3)
    torch.manual_seed(0)
    shared = retinanet_resnet_fpn(3, depth=18, image_size=320, p6_from="c5", trainable_layers=3)
    assert named.image_size == 320 and named.size_divisible == 32
    assert repr(named) == repr(shared)
    a, b = named.state_dict(), shared.state_dict()
    assert list(a) == list(b)
    for key in a:
        torch.testing.assert_close(a[key], b[key], rtol=0, atol=0, msg=key)
    assert [n for n, p in named.named_parameters() if p.requires_grad] == [
        n for n, p in shared.named_parameters() if p.requires_grad
    ]
    # options and num_classes also work by keyword; image_size can still be set
    model = MODELS["retinanet_resnet18_fpn"](num_classes=2, image_size=256, fpn_channels=32, head_convs=1)
    assert model.image_size == 256 and model.num_classes == 2 and model.neck.out_channels == [32] * 5


def test_resnet_recipes_share_their_neck_and_head_names():
    r50, r18 = build_model("retinanet_resnet50_fpn", 3), build_model("retinanet_resnet18_fpn", 3)
    assert (r50.image_size, r18.image_size) == (640, 320)
    s50, s18 = _state(r50), _state(r18)
    assert {k.split(".")[0] for k in s50} == {k.split(".")[0] for k in s18}
    for part in ("neck.", "head."):
        assert [k for k in s50 if k.startswith(part)] == [k for k in s18 if k.startswith(part)], part
    head = {k: v for k, v in s50.items() if k.startswith("head.")}
    assert head == {k: v for k, v in s18.items() if k.startswith("head.")}
    # only the backbone (BasicBlock vs Bottleneck) and the FPN's lateral inputs differ
    assert r50.backbone.out_channels == [512, 1024, 2048] and r18.backbone.out_channels == [128, 256, 512]


@pytest.mark.parametrize("name", list(RESNETS))
def test_unknown_option_or_depth_is_refused(name):
    with pytest.raises(TypeError, match="fpn_chanels"):
        MODELS[name](3, fpn_chanels=32)
    with pytest.raises(TypeError, match="depth"):
        MODELS[name](3, depth=34)  # the name fixes the depth
    with pytest.raises(
        ConfigError,
        match=rf"unknown config key 'model\.options\.depth' for {name}; valid options: image_size, fpn_channels",
    ):
        build_model(name, 3, depth=34)
    with pytest.raises(
        ConfigError,
        match=r"'model\.options\.fpn_chanels'.*did you mean 'model\.options\.fpn_channels'\? valid options: .*fpn_channels",
    ):
        build_model(name, 3, fpn_chanels=32)


def test_config_checks_name_the_builder_and_its_options():
    from detmine.engine.builders import build_model_from_config

    cfg = SimpleNamespace(
        model=SimpleNamespace(name="retinanet_resnet18_fpn", options={"depth": 50}, weights=None)
    )
    with pytest.raises(ConfigError, match=r"'model\.options\.depth' for retinanet_resnet18_fpn;.*frozen_bn"):
        build_model_from_config(cfg, 3)
    cfg.model.options = {"frozen_bn": True, "fpn_chanels": 64}
    with pytest.raises(ConfigError, match=r"did you mean 'model\.options\.fpn_channels'"):
        build_model_from_config(cfg, 3)


def test_a_recipe_cannot_default_depth_or_a_missing_option():
    with pytest.raises(TypeError, match="depth"):
        _resnet_recipe("r34", 34, "doc", depth=18)
    with pytest.raises(TypeError, match="fpn_chanels"):
        _resnet_recipe("r34", 34, "doc", fpn_chanels=64)
    r34 = _resnet_recipe("retinanet_resnet34_fpn", 34, "doc", image_size=512)
    assert inspect.signature(r34).parameters["image_size"].default == 512
    assert r34.__name__ == "retinanet_resnet34_fpn" and r34.__doc__ == "doc"
