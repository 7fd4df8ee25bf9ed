"""Necks: turn backbone maps into the detector's pyramid (FPN with P6/P7, SSD extra layers).

A neck is an ``nn.Module`` with ``forward(features: list[Tensor]) -> list[Tensor]`` (finest first)
and ``out_channels: list[int]``.
"""

from __future__ import annotations

from collections import OrderedDict
from collections.abc import Sequence
from functools import partial

from torch import Tensor, nn
from torchvision.ops import FeaturePyramidNetwork
from torchvision.ops.feature_pyramid_network import LastLevelP6P7
from torchvision.ops.misc import Conv2dNormActivation

from detmine.modeling.backbones import normal_init, xavier_init


class FPN(nn.Module):
    """torchvision ``FeaturePyramidNetwork`` over C3-C5, plus P6/P7 (``LastLevelP6P7``) for RetinaNet.

    Args:
        in_channels: channels of C3, C4, C5.
        out_channels: channels of every pyramid level (RetinaNet: 256).
        extra_levels: add P6 and P7 (3x3 stride-2 convs, ReLU before P7) -> 5 levels.
        p6_from: ``"p5"`` (torchvision ``retinanet_resnet50_fpn``) or ``"c5"`` (the focal-loss paper,
            torchvision v2). When C5 already has ``out_channels`` channels torchvision uses P5.
    """

    def __init__(
        self,
        *,
        in_channels: Sequence[int],
        out_channels: int = 256,
        extra_levels: bool = True,
        p6_from: str = "p5",
    ) -> None:
        super().__init__()
        if p6_from not in ("p5", "c5"):
            raise ValueError(f"p6_from must be 'p5' or 'c5', got {p6_from!r}")
        extra = None
        if extra_levels:
            extra = LastLevelP6P7(out_channels if p6_from == "p5" else in_channels[-1], out_channels)
        self.fpn = FeaturePyramidNetwork(list(in_channels), out_channels, extra_blocks=extra)
        self.out_channels = [out_channels] * (len(in_channels) + (2 if extra_levels else 0))

    def forward(self, features: list[Tensor]) -> list[Tensor]:
        named = OrderedDict((str(i), f) for i, f in enumerate(features))
        return list(self.fpn(named).values())


class _ExtraLayers(nn.Module):
    """Maps appended after the backbone's: each block of ``self.extra`` (an ``nn.Sequential``
    of blocks, set by the subclass) runs on the previous block's output, starting from the last
    input map. ``forward(features [maps]) -> features + [one map per block]``."""

    extra: nn.Sequential

    def forward(self, features: list[Tensor]) -> list[Tensor]:
        out = list(features)
        x = out[-1]
        for block in self.extra:
            x = block(x)
            out.append(x)
        return out


class SSDExtraLayers(_ExtraLayers):
    """SSD300's extra feature layers conv8_2 .. conv11_2 (SSD paper Fig. 2, torchvision layout).

    Appends four maps computed from the last input map: two 1x1 -> 3x3 stride-2 blocks (512, 256
    channels) then two 1x1 -> 3x3 unpadded blocks (256, 256). At 300 px: 10, 5, 3, 1 cells.
    """

    def __init__(self, *, in_channels: Sequence[int]) -> None:
        super().__init__()

        def block(cin: int, mid: int, cout: int, **conv3: int) -> nn.Sequential:
            return nn.Sequential(
                nn.Conv2d(cin, mid, kernel_size=1),
                nn.ReLU(inplace=True),
                nn.Conv2d(mid, cout, kernel_size=3, **conv3),
                nn.ReLU(inplace=True),
            )

        self.extra = nn.ModuleList(
            [
                block(in_channels[-1], 256, 512, padding=1, stride=2),
                block(512, 128, 256, padding=1, stride=2),
                block(256, 128, 256),
                block(256, 128, 256),
            ]
        )
        xavier_init(self.extra)
        self.out_channels = list(in_channels) + [512, 256, 256, 256]


class SSDLiteExtraLayers(_ExtraLayers):
    """SSDlite extra layers (MobileNetV2 paper, section 6.2; torchvision ``ssdlite``).

    Each block: 1x1 conv to half the output channels, 3x3 depthwise stride 2, 1x1 conv to the output
    channels, each with BatchNorm and ReLU6; Normal(0, 0.03) init.

    Args:
        in_channels: channels of the input maps; blocks start from the last one.
        channels: output channels of the appended maps (torchvision: 512, 256, 256, 128).
    """

    def __init__(self, *, in_channels: Sequence[int], channels: Sequence[int] = (512, 256, 256, 128)) -> None:
        super().__init__()
        norm = partial(nn.BatchNorm2d, eps=0.001, momentum=0.03)
        conv = partial(Conv2dNormActivation, norm_layer=norm, activation_layer=nn.ReLU6)
        blocks = []
        cin = in_channels[-1]
        for cout in channels:
            mid = cout // 2
            blocks.append(
                nn.Sequential(
                    conv(cin, mid, kernel_size=1),
                    conv(mid, mid, kernel_size=3, stride=2, groups=mid),
                    conv(mid, cout, kernel_size=1),
                )
            )
            cin = cout
        self.extra = nn.ModuleList(blocks)
        normal_init(self.extra, std=0.03)
        self.out_channels = list(in_channels) + list(channels)
