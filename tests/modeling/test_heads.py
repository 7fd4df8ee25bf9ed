"""Heads: flattening order, equality with torchvision's heads, RetinaNet prior bias."""

from __future__ import annotations

import pytest
import torch
from torchvision.models.detection.retinanet import RetinaNetHead as TVRetinaNetHead
from torchvision.models.detection.ssd import SSDHead as TVSSDHead
from torchvision.models.detection.ssdlite import SSDLiteHead as TVSSDLiteHead

from detmine.errors import ConfigError
from detmine.modeling import build_model
from detmine.modeling.anchors import GridAnchors
from detmine.modeling.heads import RetinaNetHead, SSDHead, SSDLiteHead


def _features(channels, sizes, batch=2):
    g = torch.Generator().manual_seed(0)
    return [torch.randn(batch, c, h, w, generator=g) for c, (h, w) in zip(channels, sizes, strict=True)]


def test_flattening_puts_anchor_type_and_column_where_the_anchor_order_says():
    """Bias-only convs: channel a*C + c carries 100*a + c; each output row must match its anchor."""
    num_anchors, columns, sizes = [2, 3], 4, [(3, 5), (2, 2)]
    head = SSDHead(in_channels=[1, 1], num_anchors=num_anchors, num_columns=columns)
    for conv, a in zip(head.cls, num_anchors, strict=True):
        torch.nn.init.zeros_(conv.weight)
        with torch.no_grad():
            conv.bias.copy_(torch.tensor([100.0 * i + c for i in range(a) for c in range(columns)]))
    logits, deltas = head(_features([1, 1], sizes))
    assert logits.shape == (2, 3 * 5 * 2 + 2 * 2 * 3, columns) and deltas.shape == (2, logits.shape[1], 4)
    row = 0
    for (h, w), a in zip(sizes, num_anchors, strict=True):
        for _y in range(h):
            for _x in range(w):
                for t in range(a):
                    assert logits[1, row].tolist() == [100.0 * t + c for c in range(columns)]
                    row += 1


def test_retinanet_head_order_matches_anchor_generator_centres():
    """Regression channels fed the anchor's own centre (x, y) through a coordinate map line up."""
    gen = GridAnchors(sizes=[[8, 10], [16, 20]], aspect_ratios=[0.5, 1.0])
    head = RetinaNetHead(in_channels=2, num_anchors=4, num_columns=1, num_convs=0)
    sizes = [(4, 6), (2, 3)]
    with torch.no_grad():
        head.box_deltas.weight.zero_()
        head.box_deltas.bias.zero_()
        for k in range(4):  # delta channel (anchor k, coord 0) = x, (k, 1) = y: centre pixel tap
            head.box_deltas.weight[4 * k + 0, 0, 1, 1] = 1.0
            head.box_deltas.weight[4 * k + 1, 1, 1, 1] = 1.0
    feats = []
    for h, w in sizes:
        ys, xs = torch.meshgrid(torch.arange(h), torch.arange(w), indexing="ij")
        feats.append(torch.stack((xs, ys)).float().unsqueeze(0))
    _, deltas = head(feats)
    anchors, counts = gen(sizes, (32, 48))
    strides = [8, 16]
    level = torch.repeat_interleave(torch.arange(2), torch.tensor(counts))
    stride = torch.tensor(strides, dtype=torch.float32)[level]
    centre = (anchors[:, :2] + anchors[:, 2:]) / 2  # torchvision anchors centre on cell corners
    torch.testing.assert_close(deltas[0, :, :2] * stride[:, None], centre)


def _copy(dst: torch.nn.Module, src: torch.nn.Module) -> None:
    dst_params = list(dst.state_dict().values())
    src_params = list(src.state_dict().values())
    assert [p.shape for p in dst_params] == [p.shape for p in src_params]
    dst.load_state_dict(dict(zip(dst.state_dict(), src_params, strict=True)))


def test_ssd_head_equals_torchvision():
    channels, anchors, sizes = [8, 16], [4, 6], [(5, 5), (3, 3)]
    ours = SSDHead(in_channels=channels, num_anchors=anchors, num_columns=7)
    ref = TVSSDHead(channels, anchors, 7)
    _copy(ours.cls, ref.classification_head.module_list)
    _copy(ours.reg, ref.regression_head.module_list)
    feats = _features(channels, sizes)
    logits, deltas = ours(feats)
    out = ref(feats)
    torch.testing.assert_close(logits, out["cls_logits"])
    torch.testing.assert_close(deltas, out["bbox_regression"])


def test_ssdlite_head_equals_torchvision():
    channels, anchors, sizes = [8, 16], [6, 6], [(4, 4), (2, 2)]
    ours = SSDLiteHead(in_channels=channels, num_anchors=anchors, num_columns=5).eval()
    norm = torch.nn.BatchNorm2d
    ref = TVSSDLiteHead(channels, anchors, 5, lambda c: norm(c, eps=0.001, momentum=0.03)).eval()
    _copy(ours.cls, ref.classification_head.module_list)
    _copy(ours.reg, ref.regression_head.module_list)
    feats = _features(channels, sizes)
    logits, deltas = ours(feats)
    out = ref(feats)
    torch.testing.assert_close(logits, out["cls_logits"])
    torch.testing.assert_close(deltas, out["bbox_regression"])


def test_retinanet_head_equals_torchvision():
    ours = RetinaNetHead(in_channels=32, num_anchors=9, num_columns=3)
    ref = TVRetinaNetHead(32, 9, 3)
    _copy(ours.cls_tower, ref.classification_head.conv)
    _copy(ours.reg_tower, ref.regression_head.conv)
    _copy(ours.cls_logits, ref.classification_head.cls_logits)
    _copy(ours.box_deltas, ref.regression_head.bbox_reg)
    feats = _features([32, 32], [(6, 6), (3, 3)])
    logits, deltas = ours(feats)
    out = ref(feats)
    torch.testing.assert_close(logits, out["cls_logits"])
    torch.testing.assert_close(deltas, out["bbox_regression"])


def test_retinanet_prior_bias_gives_sigmoid_near_pi_at_init():
    torch.manual_seed(0)
    head = RetinaNetHead(in_channels=32, num_anchors=9, num_columns=4, num_convs=4, prior_prob=0.01)
    assert head.cls_logits.bias.detach().sigmoid().allclose(torch.full((36,), 0.01))
    assert len(head.cls_tower) == 4
    logits, _ = head(_features([32], [(8, 8)]))
    probs = logits.sigmoid()
    assert abs(probs.mean().item() - 0.01) < 1e-3 and probs.max().item() < 0.02
    model = build_model("retinanet_tiny_fpn", 3)
    probs = model(torch.randint(0, 256, (2, 3, 64, 64), dtype=torch.uint8)).cls_logits.sigmoid()
    assert abs(probs.mean().item() - 0.01) < 2e-3


def test_retinanet_head_options():
    head = RetinaNetHead(in_channels=64, num_anchors=9, num_columns=2, num_convs=2, group_norm=True)
    assert len(head.cls_tower) == 2
    assert sum(isinstance(m, torch.nn.GroupNorm) for m in head.modules()) == 4
    with pytest.raises(ValueError, match="divisible by 32"):
        RetinaNetHead(in_channels=48, num_anchors=9, num_columns=2, group_norm=True)
    with pytest.raises(ConfigError, match="retinanet_tiny_fpn.*divisible by 32"):
        build_model("retinanet_tiny_fpn", 2, fpn_channels=48, group_norm=True)
