"""detmine.components: the constructor is the schema -- generic name / option checks with
"did you mean", and tables that accept components registered from outside the package."""

import pytest
import torch
from torch import nn

from detmine.box_coder import BoxCoder
from detmine.components import (
    build_component,
    check_component,
    check_names,
    check_options,
    component_options,
)
from detmine.criterion import build_criterion
from detmine.errors import ConfigError
from detmine.losses import BOX_LOSSES, CLS_LOSSES
from detmine.mining import MINERS
from detmine.structures import HeadOutputs


class Widget:
    def __init__(self, size, *, color="red", depth: int = 1) -> None:
        self.size, self.color, self.depth = size, color, depth


def builder(num_classes, *args, width=8, **kwargs):
    return num_classes, width, kwargs


def strict_builder(num_classes, *, width=8):
    return num_classes, width


def test_component_options_are_the_keyword_parameters():
    assert component_options(Widget) == ["size", "color", "depth"]  # no self
    assert component_options(builder) == ["num_classes", "width"]  # no *args / **kwargs
    assert component_options(CLS_LOSSES["focal"]) == [
        "alpha",
        "gamma",
        "class_weights",
        "class_weights_beta",
        "facts",
    ]
    assert CLS_LOSSES.options("focal") == ["alpha", "gamma", "class_weights", "class_weights_beta"]
    assert component_options(BOX_LOSSES["smooth_l1"]) == ["beta"]
    assert component_options(MINERS["all"]) == []
    assert component_options(MINERS["ssd"]) == ["neg_pos_ratio", "min_negatives"]


def test_check_names_is_one_line_with_did_you_mean():
    check_names(["color"], ["color", "depth"], "widget")  # fine
    with pytest.raises(ConfigError) as info:
        check_names(["colour"], ["color", "depth"], "widget", " for Widget", " (a note)")
    assert str(info.value) == (
        "unknown config key 'widget.colour' for Widget; did you mean 'widget.color'? "
        "valid options: color, depth (a note)"
    )
    with pytest.raises(ConfigError) as info:
        check_names(["zzz"], ["color"], "widget")
    assert str(info.value) == "unknown config key 'widget.zzz'; valid options: color"
    with pytest.raises(ConfigError, match=r"valid options: \(none\)$"):
        check_names({"a": 1}, [], "widget")
    with pytest.raises(ConfigError, match=r"'loss\.beta'; did you mean 'loss\.smooth_l1\.beta'\?"):
        check_names(
            ["beta"], ["cls", "smooth_l1"], "loss", nested={"focal": ["gamma"], "smooth_l1": ["beta"]}
        )


def test_check_options_reads_the_signature():
    check_options(Widget, {"color": "blue", "depth": 2}, "widget")
    with pytest.raises(ConfigError, match=r"'widget\.size' for Widget; valid options: color, depth$"):
        check_options(Widget, {"size": 3}, "widget", skip=("size",))
    with pytest.raises(
        ConfigError, match=r"'model\.options\.widht' for strict_builder; did you mean 'model\.options\.width'"
    ):
        check_options(strict_builder, {"widht": 3}, "model.options", skip=("num_classes",))
    check_options(builder, {"anything": 1}, "free")  # a **kwargs function checks its own


def test_check_component_names_the_key_the_value_and_the_table():
    with pytest.raises(ConfigError) as info:
        check_component(CLS_LOSSES, "focal", {"alpah": 1}, "loss")
    assert str(info.value) == (
        "unknown config key 'loss.focal.alpah' for FocalLoss; did you mean 'loss.focal.alpha'? "
        "valid options: alpha, gamma, class_weights, class_weights_beta"  # not 'facts': the builder's
    )
    with pytest.raises(ConfigError) as info:
        check_component(MINERS, "ohm", {}, "mining")
    assert (
        str(info.value)
        == "config key 'mining.type' is 'ohm'; did you mean 'ohem'? valid: 'all', 'ssd', 'ohem', 'random', 'soft', 'pool'"
    )
    with pytest.raises(ConfigError, match=r"^config key 'loss\.cls' is 'xyz'; valid: 'softmax_ce', 'focal'"):
        check_component(CLS_LOSSES, "xyz", {}, "loss", field="cls")
    miner = build_component(MINERS, "ssd", {"neg_pos_ratio": 2}, "mining")
    assert miner.neg_pos_ratio == 2


def test_a_table_entry_registered_later_is_valid(monkeypatch):
    table = {"a": Widget}
    with pytest.raises(ConfigError, match="valid: 'a'$"):
        check_component(table, "b", {}, "thing")
    monkeypatch.setitem(table, "b", builder)
    check_component(table, "b", {"width": 4}, "thing")  # read at call time


class ScaledCrossEntropy(nn.Module):
    """A classification loss from outside the package: softmax CE times ``scale``."""

    activation = "softmax"

    def __init__(self, *, scale: float = 1.0) -> None:
        super().__init__()
        self.scale = scale

    def forward(self, logits, labels):
        ce = nn.functional.cross_entropy(
            logits.flatten(0, 1), labels.clamp(min=0).flatten(), reduction="none"
        )
        return ce.view(labels.shape) * (labels >= 0) * self.scale


class FirstAnchors:
    """A miner from outside the package: the first ``k`` non-ignored anchors of each image."""

    box_source = None
    normalize_by = "selected"

    def __init__(self, *, k: int = 4) -> None:
        self.k = k

    def __call__(self, cls_loss, labels, boxes):
        eligible = labels >= 0
        return eligible & (eligible.cumsum(1) <= self.k)


def _batch():
    gen = torch.Generator().manual_seed(0)
    xy = torch.rand(50, 2, generator=gen) * 100
    anchors = torch.cat([xy, xy + 20], 1)
    targets = [{"boxes": anchors[:2] + 1, "labels": torch.tensor([1, 2]), "ignore_boxes": torch.zeros(0, 4)}]
    logits = torch.randn(1, 50, 3, generator=gen, requires_grad=True)
    deltas = torch.zeros(1, 50, 4, requires_grad=True)
    return HeadOutputs(logits, deltas, anchors, cls_activation="softmax", level_counts=(50,)), targets


def test_build_criterion_uses_components_registered_from_outside(monkeypatch):
    monkeypatch.setitem(CLS_LOSSES, "my_loss", ScaledCrossEntropy)
    monkeypatch.setitem(MINERS, "first", FirstAnchors)
    outputs, targets = _batch()
    criterion = build_criterion(
        "softmax",
        BoxCoder(),
        loss={"cls": "my_loss", "my_loss": {"scale": 2}},
        mining={"type": "first", "first": {"k": 5}},
    )
    assert isinstance(criterion.cls_loss, ScaledCrossEntropy) and criterion.cls_loss.scale == 2
    assert criterion.normalize_by == "selected"  # the miner's declaration
    losses, record = criterion(outputs, targets)
    assert int(record.selected.sum()) == 5
    reference = build_criterion("softmax", BoxCoder(), loss={}, mining={"type": "first", "first": {"k": 5}})
    expected, _ = reference(outputs, targets)
    torch.testing.assert_close(losses["cls"], 2 * expected["cls"])
    (losses["cls"] + losses["box"]).backward()
    with pytest.raises(
        ConfigError,
        match=r"'loss\.my_loss\.scael' for ScaledCrossEntropy; did you mean 'loss\.my_loss\.scale'",
    ):
        build_criterion("softmax", BoxCoder(), loss={"cls": "my_loss", "my_loss": {"scael": 2}})
    with pytest.raises(
        ConfigError,
        match="does not fit a sigmoid head; valid: focal, balanced_ce, logit_adjusted_focal, asymmetric, ghm_c$",
    ):
        build_criterion("sigmoid", BoxCoder(), loss={"cls": "my_loss"})


def test_registered_components_are_gone_after_the_test():
    assert "my_loss" not in CLS_LOSSES and "first" not in MINERS
