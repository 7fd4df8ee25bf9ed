"""build_criterion: the config sections -> a Criterion, the head's defaults, and one-line
"did you mean" errors for every name and option (checked against the constructors)."""

import pytest
import torch

from detmine.box_coder import BoxCoder
from detmine.criterion import HEAD_DEFAULTS, Criterion, build_criterion
from detmine.errors import ConfigError
from detmine.losses import FocalLoss, L1Loss, SmoothL1Loss, SoftmaxCrossEntropy
from detmine.matching import Matcher, build_matcher
from detmine.mining import build_miner
from detmine.structures import HeadOutputs


def make_outputs(gen, num_anchors, columns, activation="softmax"):
    """One image, ``num_anchors`` random 20 px anchors, random logits; and its target (one box)."""
    xy = torch.rand(num_anchors, 2, generator=gen) * 100
    anchors = torch.cat([xy, xy + 20], 1)
    logits = torch.randn(1, num_anchors, columns, generator=gen)
    outputs = HeadOutputs(logits, torch.zeros(1, num_anchors, 4), anchors, activation, (num_anchors,))
    targets = [{"boxes": anchors[:1] + 1, "labels": torch.tensor([1]), "ignore_boxes": torch.zeros(0, 4)}]
    return outputs, targets


def test_build_criterion_config_errors():
    coder = BoxCoder()

    def build(activation, matching=None, loss=None, mining=None):
        return build_criterion(activation, coder, matching=matching, loss=loss, mining=mining)

    with pytest.raises(
        ConfigError,
        match=r"unknown config key 'matching\.fg_iou'; did you mean 'matching\.fg_iou_thresh'\? "
        r"valid options: preset, fg_iou_thresh",
    ):
        build("softmax", {"fg_iou": 0.5})
    with pytest.raises(ConfigError, match=r"unknown config key 'loss\.focal_alpha'.*valid options: cls, box"):
        build("sigmoid", loss={"focal_alpha": 0.3})
    with pytest.raises(ConfigError, match=r"'loss\.beta'; did you mean 'loss\.smooth_l1\.beta'\?"):
        build("softmax", loss={"beta": 0.3})  # an option at the section level is pointed to its loss
    with pytest.raises(
        ConfigError, match=r"'mining\.ssd\.neg_pos' for SSDMiner; did you mean 'mining\.ssd\.neg_pos_ratio'"
    ):
        build("softmax", mining={"type": "ssd", "ssd": {"neg_pos": 3}})
    with pytest.raises(ConfigError, match="does not fit a softmax head; valid: softmax_ce"):
        build("softmax", loss={"cls": "focal"})
    with pytest.raises(
        ConfigError, match=r"config key 'matching\.preset' is 'yolo'; valid: 'ssd', 'retinanet'"
    ):
        build("softmax", {"preset": "yolo"})
    with pytest.raises(ConfigError, match="bg_iou_thresh"):
        build("softmax", {"fg_iou_thresh": 0.3, "bg_iou_thresh": 0.6})
    with pytest.raises(ConfigError, match="normalizer"):
        build("softmax", loss={"normalizer": "image"})
    with pytest.raises(ConfigError, match=r"config key 'loss\.box' is 'iou'; did you mean 'giou'\?"):
        build("softmax", loss={"box": "iou"})
    with pytest.raises(ConfigError, match=r"loss\.focal\.gamma must be >= 0"):
        build("sigmoid", loss={"focal": {"gamma": -1}})
    with pytest.raises(ConfigError, match=r"loss\.focal\.alpha must lie in \[0, 1\]"):
        build("sigmoid", loss={"focal": {"alpha": 1.5}})
    criterion = build("softmax", loss={"softmax_ce": {"class_weights": [1.0, 2.0]}})
    with pytest.raises(ConfigError, match="class_weights has 2 values"):
        criterion(*make_outputs(torch.Generator().manual_seed(0), 20, 4))
    # defaults follow the head: softmax -> ssd matcher / ssd miner; sigmoid -> retinanet / all / focal / l1
    soft = build_criterion("softmax", coder)
    sig = build("sigmoid", {"fg_iou_thresh": None}, {}, {})
    assert soft.matcher.force_best_match and type(soft.miner).__name__ == "SSDMiner"
    assert isinstance(soft.cls_loss, SoftmaxCrossEntropy) and isinstance(soft.box_loss, SmoothL1Loss)
    assert sig.matcher.allow_low_quality and isinstance(sig.cls_loss, FocalLoss)
    assert isinstance(sig.box_loss, L1Loss)
    assert type(sig.miner).__name__ == "AllAnchorsMiner"
    assert type(build_miner("all")).__name__ == "AllAnchorsMiner"


def test_options_of_components_not_chosen_are_checked_and_ignored():
    coder = BoxCoder()
    loss = {"focal": {"alpha": 0.5, "gamma": 3.0}, "smooth_l1": {"beta": 0.2}, "l1": {}}
    mining = {"type": "ssd", "ohem": {"nms_iou": 0.5}, "ssd": {"neg_pos_ratio": 2}}
    criterion = build_criterion("softmax", coder, loss=loss, mining=mining)
    assert isinstance(criterion.cls_loss, SoftmaxCrossEntropy)  # loss.focal is kept, not used
    assert criterion.box_loss.beta == 0.2 and criterion.miner.neg_pos_ratio == 2
    focal = build_criterion("sigmoid", coder, loss=loss, mining={"type": "all", **mining})
    assert focal.cls_loss.gamma == 3.0 and isinstance(focal.box_loss, L1Loss)
    with pytest.raises(
        ConfigError, match=r"'loss\.focal\.alpah' for FocalLoss; did you mean 'loss\.focal\.alpha'"
    ):
        build_criterion("softmax", coder, loss={"focal": {"alpah": 0.5}})
    with pytest.raises(
        ConfigError, match=r"'mining\.ohem\.nms' for OHEMMiner; did you mean 'mining\.ohem\.nms_iou'"
    ):
        build_criterion("softmax", coder, mining={"type": "ssd", "ohem": {"nms": 0.5}})
    # None = the default, for a component, a setting and an option alike
    default = build_criterion(
        "sigmoid", coder, loss={"cls": None, "box_weight": None, "focal": {"gamma": None}}
    )
    assert (
        isinstance(default.cls_loss, FocalLoss)
        and default.cls_loss.gamma == 2.0
        and default.box_weight == 1.0
    )


def test_a_loss_that_does_not_fit_the_head_outputs_is_refused():
    criterion = Criterion(
        matcher=Matcher.retinanet(),
        box_coder=BoxCoder(),
        miner=build_miner("all"),
        cls_loss=FocalLoss(),
        box_loss=L1Loss(),
    )
    with pytest.raises(ConfigError, match="does not fit a softmax head; valid: softmax_ce"):
        criterion(*make_outputs(torch.Generator().manual_seed(14), 30, 4))
    with pytest.raises(ConfigError, match="activation"):
        Criterion(
            matcher=Matcher.ssd(),
            box_coder=BoxCoder(),
            miner=build_miner("all"),
            cls_loss=L1Loss(),
            box_loss=L1Loss(),
        )


def test_head_defaults_and_build_matcher():
    assert HEAD_DEFAULTS == {
        "softmax": {"matching": "ssd", "cls": "softmax_ce", "box": "smooth_l1", "mining": "ssd"},
        "sigmoid": {"matching": "retinanet", "cls": "focal", "box": "l1", "mining": "all"},
    }
    ssd, retina = Matcher.ssd(), Matcher.retinanet()
    assert repr(build_matcher()) == repr(ssd) == repr(build_matcher("ssd", fg_iou_thresh=None))
    assert repr(build_matcher(cls_activation="sigmoid")) == repr(retina)
    assert build_matcher("retinanet", fg_iou_thresh=0.6).fg_iou_thresh == 0.6
    with pytest.raises(ConfigError, match=r"unknown cls_activation 'tanh'; valid: softmax, sigmoid"):
        build_matcher(cls_activation="tanh")
    with pytest.raises(ConfigError, match=r"unknown cls_activation 'tanh'"):
        build_criterion("tanh", BoxCoder())
