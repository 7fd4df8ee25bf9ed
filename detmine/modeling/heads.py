"""Dense prediction heads: SSD, SSDlite and RetinaNet.

Every head maps the pyramid ``list[Tensor [B, C_l, H_l, W_l]]`` to
``(cls_logits [B, A, K'], box_deltas [B, A, 4])`` with anchors flattened level-major, then row
``y``, column ``x``, then anchor type -- the order of :mod:`detmine.modeling.anchors` and of
torchvision's heads. Channel ``a * C + c`` of a level's conv output is column ``c`` of anchor type
``a``.

Every head declares its ``cls_activation`` (``"softmax"``: ``K + 1`` columns, column 0
background; ``"sigmoid"``: ``K``; see :data:`detmine.structures.CLS_ACTIVATIONS`), which the
detector puts on every ``HeadOutputs``.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from functools import partial

import torch
from torch import Tensor, nn
from torchvision.ops.misc import Conv2dNormActivation

from detmine.modeling.backbones import normal_init, xavier_init


def flatten_level(x: Tensor, columns: int) -> Tensor:
    """``[B, A_loc * columns, H, W] -> [B, H * W * A_loc, columns]`` (y, x, anchor type order)."""
    b, c, h, w = x.shape
    return (
        x.view(b, c // columns, columns, h, w)
        .permute(0, 3, 4, 1, 2)
        .reshape(b, h * w * (c // columns), columns)
    )


class _PerLevelHead(nn.Module):
    """One classification and one regression predictor per level (no weight sharing)."""

    def __init__(self, cls: nn.ModuleList, reg: nn.ModuleList, num_columns: int) -> None:
        super().__init__()
        self.cls = cls
        self.reg = reg
        self.num_columns = num_columns

    def forward(self, features: list[Tensor]) -> tuple[Tensor, Tensor]:
        if len(features) != len(self.cls):
            raise ValueError(
                f"{type(self).__name__} expects {len(self.cls)} feature maps, got {len(features)}"
            )
        logits = [flatten_level(p(f), self.num_columns) for p, f in zip(self.cls, features, strict=True)]
        deltas = [flatten_level(p(f), 4) for p, f in zip(self.reg, features, strict=True)]
        return torch.cat(logits, dim=1), torch.cat(deltas, dim=1)


class SSDHead(_PerLevelHead):
    """SSD head: per level a 3x3 conv to ``anchors * num_columns`` logits and one to ``anchors * 4``.

    A softmax head (``cls_activation``): column 0 is the background.

    Args:
        in_channels: channels per level.
        num_anchors: anchors per location per level.
        num_columns: classification columns (softmax: ``K + 1``, column 0 background).
    """

    cls_activation = "softmax"

    def __init__(self, *, in_channels: Sequence[int], num_anchors: Sequence[int], num_columns: int) -> None:
        cls = nn.ModuleList(
            nn.Conv2d(c, a * num_columns, 3, padding=1) for c, a in zip(in_channels, num_anchors, strict=True)
        )
        reg = nn.ModuleList(
            nn.Conv2d(c, a * 4, 3, padding=1) for c, a in zip(in_channels, num_anchors, strict=True)
        )
        xavier_init(cls)
        xavier_init(reg)
        super().__init__(cls, reg, num_columns)


class SSDLiteHead(_PerLevelHead):
    """SSDlite head: 3x3 depthwise conv + BN + ReLU6, then a 1x1 conv, per level and output.

    Same arguments as :class:`SSDHead` (a softmax head); Normal(0, 0.03) init as torchvision.
    """

    cls_activation = "softmax"

    def __init__(self, *, in_channels: Sequence[int], num_anchors: Sequence[int], num_columns: int) -> None:
        norm = partial(nn.BatchNorm2d, eps=0.001, momentum=0.03)

        def block(c: int, out: int) -> nn.Sequential:
            return nn.Sequential(
                Conv2dNormActivation(
                    c, c, kernel_size=3, groups=c, norm_layer=norm, activation_layer=nn.ReLU6
                ),
                nn.Conv2d(c, out, kernel_size=1),
            )

        cls = nn.ModuleList(block(c, a * num_columns) for c, a in zip(in_channels, num_anchors, strict=True))
        reg = nn.ModuleList(block(c, a * 4) for c, a in zip(in_channels, num_anchors, strict=True))
        normal_init(cls, std=0.03)
        normal_init(reg, std=0.03)
        super().__init__(cls, reg, num_columns)


class RetinaNetHead(nn.Module):
    """RetinaNet head (Lin et al. 2017): two conv towers shared across levels.

    Each tower is ``num_convs`` 3x3 convs (+ optional GroupNorm(32)) + ReLU, then a 3x3 predictor.
    Convs are Normal(0, 0.01) with zero bias; the classification bias is ``-log((1 - pi) / pi)`` so
    every sigmoid starts at ``prior_prob`` (the paper's fix for the first steps being swamped by
    background).

    Args:
        in_channels: channels of every pyramid level.
        num_anchors: anchors per location (same on every level).
        num_columns: classification columns (sigmoid: ``K``).
        num_convs: convs per tower (paper: 4).
        group_norm: GroupNorm(32) after each tower conv (torchvision's RetinaNet v2).
        prior_prob: pi of the classification bias.
    """

    #: one sigmoid per class column, no background column (the focal-loss head).
    cls_activation = "sigmoid"

    def __init__(
        self,
        *,
        in_channels: int,
        num_anchors: int,
        num_columns: int,
        num_convs: int = 4,
        group_norm: bool = False,
        prior_prob: float = 0.01,
    ) -> None:
        super().__init__()
        if group_norm and in_channels % 32:
            raise ValueError(f"group_norm needs channels divisible by 32, got {in_channels}")
        norm = partial(nn.GroupNorm, 32) if group_norm else None

        def tower() -> nn.Sequential:
            return nn.Sequential(
                *[Conv2dNormActivation(in_channels, in_channels, norm_layer=norm) for _ in range(num_convs)]
            )

        self.cls_tower = tower()
        self.reg_tower = tower()
        self.cls_logits = nn.Conv2d(in_channels, num_anchors * num_columns, 3, padding=1)
        self.box_deltas = nn.Conv2d(in_channels, num_anchors * 4, 3, padding=1)
        normal_init(self, std=0.01)
        nn.init.constant_(self.cls_logits.bias, -math.log((1 - prior_prob) / prior_prob))
        self.num_columns = num_columns

    def forward(self, features: list[Tensor]) -> tuple[Tensor, Tensor]:
        logits = [flatten_level(self.cls_logits(self.cls_tower(f)), self.num_columns) for f in features]
        deltas = [flatten_level(self.box_deltas(self.reg_tower(f)), 4) for f in features]
        return torch.cat(logits, dim=1), torch.cat(deltas, dim=1)
