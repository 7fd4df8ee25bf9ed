"""Anchor generators against torchvision's DefaultBoxGenerator / AnchorGenerator."""

from __future__ import annotations

import pytest
import torch
from torchvision.models.detection.anchor_utils import AnchorGenerator, DefaultBoxGenerator
from torchvision.models.detection.image_list import ImageList

from detmine.modeling.anchors import DefaultBoxes, GridAnchors, retinanet_anchor_sizes


def _torchvision(generator, feature_sizes, image_size):
    images = ImageList(torch.zeros(1, 3, *image_size), [image_size])
    maps = [torch.zeros(1, 1, h, w) for h, w in feature_sizes]
    return generator(images, maps)[0]


SSD300 = dict(
    aspect_ratios=[[2], [2, 3], [2, 3], [2, 3], [2], [2]],
    scales=[0.07, 0.15, 0.33, 0.51, 0.69, 0.87, 1.05],
    steps=[8, 16, 32, 64, 100, 300],
)


def test_ssd300_default_boxes_equal_torchvision():
    sizes = [(38, 38), (19, 19), (10, 10), (5, 5), (3, 3), (1, 1)]
    ours, counts = DefaultBoxes(**SSD300)(sizes, (300, 300))
    ref = _torchvision(DefaultBoxGenerator(**SSD300), sizes, (300, 300))
    assert ours.shape == (8732, 4)
    assert counts == [38 * 38 * 4, 19 * 19 * 6, 10 * 10 * 6, 5 * 5 * 6, 3 * 3 * 4, 1 * 4]
    torch.testing.assert_close(ours, ref)


@pytest.mark.parametrize("image_size", [(320, 320), (200, 296)])
def test_ssdlite_default_boxes_equal_torchvision(image_size):
    gen_kwargs = dict(aspect_ratios=[[2, 3]] * 6, min_ratio=0.2, max_ratio=0.95)
    h, w = image_size
    sizes = [(-(-h // s), -(-w // s)) for s in (16, 32, 64, 128, 256, 512)]
    ours, counts = DefaultBoxes(**gen_kwargs)(sizes, image_size)
    ref = _torchvision(DefaultBoxGenerator(**gen_kwargs), sizes, image_size)
    assert sum(counts) == sum(fh * fw * 6 for fh, fw in sizes) == ours.shape[0]
    torch.testing.assert_close(ours, ref)


def test_default_boxes_scales_follow_the_paper_formula():
    boxes = DefaultBoxes(aspect_ratios=[[2]] * 3, min_ratio=0.2, max_ratio=0.8)
    assert boxes.scales == pytest.approx([0.2, 0.5, 0.8, 1.0])
    with pytest.raises(ValueError, match="scales"):
        DefaultBoxes(aspect_ratios=[[2]] * 3, scales=[0.1, 0.2])


@pytest.mark.parametrize(
    "image_size, feature_sizes",
    [
        ((640, 640), [(80, 80), (40, 40), (20, 20), (10, 10), (5, 5)]),
        ((96, 128), [(12, 16), (6, 8), (3, 4), (2, 2), (1, 1)]),
    ],
)
def test_retinanet_anchors_equal_torchvision(image_size, feature_sizes):
    sizes = retinanet_anchor_sizes()
    assert sizes[0] == [32, 40, 50] and sizes[-1] == [512, 645, 812]
    ours, counts = GridAnchors(sizes=sizes)(feature_sizes, image_size)
    ref = _torchvision(
        AnchorGenerator(tuple(map(tuple, sizes)), ((0.5, 1.0, 2.0),) * 5), feature_sizes, image_size
    )
    assert counts == [h * w * 9 for h, w in feature_sizes]
    torch.testing.assert_close(ours, ref)


def test_anchors_are_cached_per_sizes_device_and_dtype():
    gen = GridAnchors(sizes=retinanet_anchor_sizes((16, 32)))
    a, _ = gen([(8, 8), (4, 4)], (64, 64))
    b, _ = gen([(8, 8), (4, 4)], (64, 64))
    c, _ = gen([(8, 8), (4, 4)], (64, 64), dtype=torch.float64)
    d, _ = gen([(4, 4), (2, 2)], (32, 32))
    assert a is b
    assert c.dtype == torch.float64 and c is not a
    assert d.shape[0] == (16 + 4) * 9
    with pytest.raises(ValueError, match="2 levels, got 1"):
        gen([(8, 8)], (64, 64))


def _padded_conv_cells(size: int, stride: int) -> int:
    """Cells of a map reached by stride-2 padded convs: each halves rounding up -> ceil(size / stride)."""
    for _ in range(stride.bit_length() - 1):
        size = -(-size // 2)
    return size


RETINANET_STRIDES = [8, 16, 32, 64, 128]


def test_retinanet_anchors_sit_at_the_true_strides_for_an_800x1216_input():
    """P3-P7 anchor centres are (x * stride, y * stride) of each cell, for any input size."""
    image_size = (800, 1216)
    feature_sizes = [tuple(_padded_conv_cells(n, s) for n in image_size) for s in RETINANET_STRIDES]
    assert feature_sizes == [(100, 152), (50, 76), (25, 38), (13, 19), (7, 10)]
    gen = GridAnchors(sizes=retinanet_anchor_sizes(), strides=RETINANET_STRIDES)
    anchors, counts = gen(feature_sizes, image_size)
    for level, (stride, (fh, fw), count) in enumerate(
        zip(RETINANET_STRIDES, feature_sizes, anchors.split(counts), strict=True)
    ):
        centres = ((count[:, :2] + count[:, 2:]) / 2).view(fh, fw, 9, 2)
        ys, xs = torch.meshgrid(torch.arange(fh) * stride, torch.arange(fw) * stride, indexing="ij")
        expected = torch.stack((xs, ys), dim=-1).float()[:, :, None].expand(fh, fw, 9, 2)
        torch.testing.assert_close(centres, expected, msg=f"level {level}")
    # P7's last row / column: 6 * 128 = 768 and 9 * 128 = 1152 (torchvision: 6 * 114, 9 * 121).
    p7 = ((anchors[-counts[-1] :, :2] + anchors[-counts[-1] :, 2:]) / 2).view(7, 10, 9, 2)
    assert p7[-1, -1, 0].tolist() == [1152.0, 768.0]
    ref = _torchvision(
        AnchorGenerator(tuple(map(tuple, retinanet_anchor_sizes())), ((0.5, 1.0, 2.0),) * 5),
        feature_sizes,
        image_size,
    )
    assert ref.shape == anchors.shape
    assert (anchors - ref).abs().max().item() == 84.0  # the drift torchvision's floor rule causes


@pytest.mark.parametrize("image_size", [(640, 640), (512, 768), (128, 128)], ids=["640", "512x768", "128"])
def test_retinanet_true_strides_equal_torchvision_on_inputs_divisible_by_128(image_size):
    feature_sizes = [tuple(_padded_conv_cells(n, s) for n in image_size) for s in RETINANET_STRIDES]
    sizes = retinanet_anchor_sizes()
    ours, counts = GridAnchors(sizes=sizes, strides=RETINANET_STRIDES)(feature_sizes, image_size)
    ref = _torchvision(
        AnchorGenerator(tuple(map(tuple, sizes)), ((0.5, 1.0, 2.0),) * 5), feature_sizes, image_size
    )
    assert counts == [h * w * 9 for h, w in feature_sizes]
    torch.testing.assert_close(ours, ref)


def test_grid_anchor_strides_are_checked():
    with pytest.raises(ValueError, match="strides has 1 entries, expected one per level"):
        GridAnchors(sizes=[[16], [32]], strides=[8])
    with pytest.raises(ValueError, match="positive integers"):
        GridAnchors(sizes=[[16], [32]], strides=[8, 12.5])
    gen = GridAnchors(sizes=[[16], [32]], strides=[8, 16])
    assert gen([(13, 13), (7, 7)], (100, 100))[0].shape == ((169 + 49) * 3, 4)  # ceil(100 / s)
    assert gen([(12, 12), (6, 6)], (100, 100))[0].shape == ((144 + 36) * 3, 4)  # floor(100 / s)
    with pytest.raises(ValueError, match=r"feature map 0 is 25x25 for a 100x100 input.*stride 8 "):
        gen([(25, 25), (13, 13)], (100, 100))  # maps at strides 4, 8


def test_ssd_default_boxes_without_steps_spread_the_cells_over_the_image():
    """``steps=None`` (SSDlite, the paper's formula): centres at ``(i + 0.5) / f_k`` of the image."""
    boxes, counts = DefaultBoxes(aspect_ratios=[[2]], scales=[0.2, 0.4])([(3, 5)], (300, 500))
    centres = ((boxes[:, :2] + boxes[:, 2:]) / 2).view(3, 5, 4, 2)[:, :, 0]
    ys, xs = torch.meshgrid((torch.arange(3) + 0.5) * 100, (torch.arange(5) + 0.5) * 100, indexing="ij")
    torch.testing.assert_close(centres, torch.stack((xs, ys), dim=-1))
