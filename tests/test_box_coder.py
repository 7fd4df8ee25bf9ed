"""detmine.box_coder against torchvision's BoxCoder."""

import math

import pytest
import torch
from torchvision.models.detection._utils import BoxCoder as TVBoxCoder

from detmine.box_coder import BoxCoder


def random_boxes(n: int, gen: torch.Generator, size: float = 300.0) -> torch.Tensor:
    xy = torch.rand(n, 2, generator=gen) * size
    wh = torch.rand(n, 2, generator=gen) * size / 3 + 1.0
    return torch.cat([xy, xy + wh], dim=1)


@pytest.mark.parametrize("weights", [(10.0, 10.0, 5.0, 5.0), (1.0, 1.0, 1.0, 1.0), (2.0, 3.0, 0.5, 4.0)])
def test_encode_decode_equal_torchvision(weights):
    gen = torch.Generator().manual_seed(0)
    anchors = random_boxes(257, gen)
    gt = random_boxes(257, gen)
    ours, ref = BoxCoder(weights), TVBoxCoder(weights)
    torch.testing.assert_close(ours.encode(gt, anchors), ref.encode_single(gt, anchors), rtol=0, atol=0)
    deltas = torch.randn(257, 4, generator=gen) * 2
    torch.testing.assert_close(
        ours.decode(deltas, anchors), ref.decode_single(deltas, anchors), rtol=0, atol=0
    )


def test_broadcast_over_batch():
    gen = torch.Generator().manual_seed(1)
    anchors = random_boxes(50, gen)
    deltas = torch.randn(3, 50, 4, generator=gen)
    coder = BoxCoder((10, 10, 5, 5))
    decoded = coder.decode(deltas, anchors)
    assert decoded.shape == (3, 50, 4)
    for b in range(3):
        torch.testing.assert_close(decoded[b], coder.decode(deltas[b], anchors), rtol=0, atol=0)
    gt = random_boxes(150, gen).view(3, 50, 4)
    encoded = coder.encode(gt, anchors)
    for b in range(3):
        torch.testing.assert_close(encoded[b], coder.encode(gt[b], anchors), rtol=0, atol=0)


def test_round_trip():
    gen = torch.Generator().manual_seed(2)
    anchors = random_boxes(100, gen)
    gt = random_boxes(100, gen)
    coder = BoxCoder((10, 10, 5, 5))
    torch.testing.assert_close(coder.decode(coder.encode(gt, anchors), anchors), gt, rtol=1e-5, atol=1e-3)


def test_decode_clamps_log_scale():
    anchors = torch.tensor([[0.0, 0.0, 10.0, 10.0]])
    coder = BoxCoder((1, 1, 1, 1))
    boxes = coder.decode(torch.tensor([[0.0, 0.0, 1e4, 1e4]]), anchors)
    assert torch.isfinite(boxes).all()
    width = float(boxes[0, 2] - boxes[0, 0])
    assert width == pytest.approx(10.0 * math.exp(math.log(1000.0 / 16)), rel=1e-5)


def test_bad_weights():
    with pytest.raises(ValueError, match="4 values"):
        BoxCoder((1.0, 1.0))
