import pytest
import torch

from detmine.errors import ConfigError
from detmine.mining import (
    BOX_SOURCES,
    MINERS,
    NORMALIZE_BY,
    AllAnchorsMiner,
    OHEMMiner,
    RandomMiner,
    SSDMiner,
    build_miner,
)


@pytest.mark.parametrize(
    "name, cls, box_source, normalize_by",
    [
        ("all", AllAnchorsMiner, None, "positives"),
        ("ssd", SSDMiner, None, "positives"),
        ("ohem", OHEMMiner, "anchors", "selected"),
        ("random", RandomMiner, None, "selected"),
    ],
)
def test_table_names_the_classes(name, cls, box_source, normalize_by):
    assert MINERS[name] is cls
    miner = build_miner(name)
    assert isinstance(miner, cls)
    assert miner.box_source == box_source
    assert miner.normalize_by == normalize_by


@pytest.mark.parametrize("name", sorted(MINERS))
def test_every_miner_declares_the_interface(name):
    miner = build_miner(name)
    assert miner.box_source in BOX_SOURCES
    assert miner.normalize_by in NORMALIZE_BY
    assert not hasattr(miner, "needs_boxes")  # replaced by box_source
    if name != "ohem":  # a class attribute, except ohem's (per instance, from nms_boxes)
        assert MINERS[name].box_source == miner.box_source
    assert MINERS[name].normalize_by == miner.normalize_by


def test_ohem_box_source_follows_nms_boxes():
    assert build_miner("ohem", nms_boxes="predictions").box_source == "predictions"
    assert build_miner("ohem", nms_boxes="anchors").box_source == "anchors"


def test_options_reach_the_constructor():
    ssd = build_miner("ssd", neg_pos_ratio=2, min_negatives=16)
    assert (ssd.neg_pos_ratio, ssd.min_negatives) == (2, 16)
    ohem = build_miner(
        "ohem",
        batch_size_per_image=64,
        nms_iou=0.5,
        pos_fraction=0.25,
        pre_nms_topk=256,
        nms_boxes="predictions",
    )
    assert (
        ohem.batch_size_per_image,
        ohem.nms_iou,
        ohem.pos_fraction,
        ohem.pre_nms_topk,
        ohem.nms_boxes,
    ) == (64, 0.5, 0.25, 256, "predictions")
    rnd = build_miner("random", batch_size_per_image=32, pos_fraction=0.25, seed=3)
    assert (rnd.batch_size_per_image, rnd.pos_fraction, rnd.seed) == (32, 0.25, 3)


def test_ohem_defaults():
    ohem = build_miner("ohem")
    assert (
        ohem.batch_size_per_image,
        ohem.nms_iou,
        ohem.pos_fraction,
        ohem.pre_nms_topk,
        ohem.nms_boxes,
    ) == (128, 0.7, None, 1024, "anchors")


def test_unknown_type_names_value_and_choices():
    with pytest.raises(ConfigError, match=r"'mining\.type' is 'hard'; valid: 'all', 'ssd', 'ohem', 'random'"):
        build_miner("hard")
    with pytest.raises(ConfigError, match=r"'mining\.type' is 'ohm'; did you mean 'ohem'\?"):
        build_miner("ohm")


def test_unknown_option_names_it_and_the_valid_ones():
    with pytest.raises(
        ConfigError,
        match=r"'mining\.ssd\.neg_ratio' for SSDMiner; did you mean 'mining\.ssd\.neg_pos_ratio'\? "
        r"valid options: neg_pos_ratio, min_negatives$",
    ):
        build_miner("ssd", neg_ratio=3)
    with pytest.raises(
        ConfigError, match=r"'mining\.all\.seed' for AllAnchorsMiner; valid options: \(none\)"
    ):
        build_miner("all", seed=1)


@pytest.mark.parametrize(
    "name, options, key",
    [
        ("ssd", {"neg_pos_ratio": -1}, "neg_pos_ratio"),
        ("ssd", {"neg_pos_ratio": "3"}, "neg_pos_ratio"),
        ("ssd", {"min_negatives": 1.5}, "min_negatives"),
        ("ohem", {"batch_size_per_image": 0}, "batch_size_per_image"),
        ("ohem", {"nms_iou": 0.0}, "nms_iou"),
        ("ohem", {"pos_fraction": 1.5}, "pos_fraction"),
        ("ohem", {"batch_size_per_image": 512, "pre_nms_topk": 256}, "pre_nms_topk"),
        ("random", {"pos_fraction": -0.1}, "pos_fraction"),
        ("random", {"seed": "x"}, "seed"),
    ],
)
def test_bad_values_are_config_errors_naming_the_key(name, options, key):
    with pytest.raises(ConfigError, match=rf"mining\.{name}\.{key}"):
        build_miner(name, **options)


@pytest.mark.parametrize("value", ["rois", "Anchors", None, 1])
def test_bad_nms_boxes_names_key_value_and_valid_ones(value):
    with pytest.raises(ConfigError) as info:
        build_miner("ohem", nms_boxes=value)
    message = str(info.value)
    assert "\n" not in message
    assert "mining.ohem.nms_boxes" in message and repr(value) in message
    assert "'anchors'" in message and "'predictions'" in message


@pytest.mark.parametrize("name", sorted(MINERS))
@pytest.mark.parametrize(
    "labels",
    [
        torch.tensor([[1]]),  # a single anchor, positive
        torch.tensor([[0]]),  # a single anchor, background
        torch.tensor([[-1, -1, -1]]),  # an all-ignore image
        torch.zeros((0, 5), dtype=torch.long),  # an empty batch
        torch.zeros((2, 0), dtype=torch.long),  # no anchors
    ],
)
def test_degenerate_inputs(name, labels):
    loss = torch.rand(labels.shape, dtype=torch.float16)  # AMP losses too
    boxes = torch.tensor([0.0, 0.0, 10.0, 10.0]).expand(*labels.shape, 4)
    quota = name in ("ssd", "soft", "pool")  # SSD-like quotas keep no negative without a positive
    selected = build_miner(name, min_negatives=1) if quota else build_miner(name)
    out = selected(loss, labels, boxes)
    assert out.shape == labels.shape and out.dtype == torch.bool
    assert torch.equal(out, labels >= 0)  # here every non-ignored anchor fits every miner's budget
