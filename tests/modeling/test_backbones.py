"""Backbones and necks: map sizes, channels, strides, SSD's VGG pieces."""

from __future__ import annotations

import pytest
import torch

from detmine.modeling.backbones import MobileNetV3SSDLite, ResNetBackbone, TinyBackbone, VGG16Atrous
from detmine.modeling.necks import FPN, SSDExtraLayers, SSDLiteExtraLayers


def _check(backbone, size, batch=2):
    feats = backbone(torch.randn(batch, 3, size, size))
    assert [f.shape[1] for f in feats] == backbone.out_channels
    assert [f.shape[-1] for f in feats] == [-(-size // s) for s in backbone.strides]
    return feats


def test_tiny_backbone_is_small_with_strides_8_16_32():
    backbone = TinyBackbone()
    params = sum(p.numel() for p in backbone.parameters())
    assert 0.5e6 <= params <= 1.5e6
    assert backbone.strides == [8, 16, 32]
    _check(backbone, 64)


@pytest.mark.parametrize(
    "depth, channels", [(18, [128, 256, 512]), (34, [128, 256, 512]), (50, [512, 1024, 2048])]
)
def test_resnet_backbones_return_c3_c5(depth, channels):
    backbone = ResNetBackbone(depth=depth)
    assert backbone.out_channels == channels
    assert backbone.body.fc is None
    _check(backbone, 64)


def test_resnet_trainable_layers_and_frozen_bn():
    backbone = ResNetBackbone(depth=18, trainable_layers=3, frozen_bn=True)
    trainable = {n.split(".")[0] for n, p in backbone.body.named_parameters() if p.requires_grad}
    assert trainable == {"layer2", "layer3", "layer4"}
    assert not any(isinstance(m, torch.nn.BatchNorm2d) for m in backbone.modules())


def test_mobilenet_v3_ssdlite_taps():
    backbone = MobileNetV3SSDLite()
    assert backbone.out_channels == [672, 480]  # C4 expansion layer, reduced tail
    _check(backbone, 64)


def test_vgg16_atrous_ssd300_maps_and_l2norm():
    backbone = VGG16Atrous().eval()
    with torch.no_grad():
        conv4_3, fc7 = backbone(torch.randn(1, 3, 300, 300))
    assert conv4_3.shape == (1, 512, 38, 38) and fc7.shape == (1, 1024, 19, 19)
    norms = conv4_3.norm(dim=1)
    torch.testing.assert_close(norms[norms > 0], torch.full_like(norms[norms > 0], 20.0))
    fc6 = backbone.fc7[-1][1]
    assert fc6.dilation == (6, 6) and fc6.padding == (6, 6)
    pool5 = backbone.fc7[-1][0]
    assert pool5.kernel_size == 3 and pool5.stride == 1
    with torch.no_grad():
        maps = SSDExtraLayers(in_channels=backbone.out_channels)([conv4_3, fc7])
    assert [m.shape[-1] for m in maps] == [38, 19, 10, 5, 3, 1]
    assert [m.shape[1] for m in maps] == [512, 1024, 512, 256, 256, 256]


def test_fpn_with_p6_p7():
    feats = [torch.randn(2, c, s, s) for c, s in [(16, 8), (32, 4), (64, 2)]]
    for p6_from in ("p5", "c5"):
        fpn = FPN(in_channels=[16, 32, 64], out_channels=24, p6_from=p6_from)
        maps = fpn(feats)
        assert [tuple(m.shape[1:]) for m in maps] == [
            (24, 8, 8),
            (24, 4, 4),
            (24, 2, 2),
            (24, 1, 1),
            (24, 1, 1),
        ]
        assert fpn.out_channels == [24] * 5
    assert fpn.fpn.extra_blocks.p6.in_channels == 64
    assert len(FPN(in_channels=[16, 32, 64], out_channels=24, extra_levels=False)(feats)) == 3


def test_ssdlite_extra_layers_halve_the_map():
    extra = SSDLiteExtraLayers(in_channels=[8, 16], channels=(32, 16))
    maps = extra([torch.randn(2, 8, 8, 8), torch.randn(2, 16, 4, 4)])
    assert [tuple(m.shape[1:]) for m in maps] == [(8, 8, 8), (16, 4, 4), (32, 2, 2), (16, 1, 1)]
    assert extra.out_channels == [8, 16, 32, 16]
