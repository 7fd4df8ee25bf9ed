"""Feature extractors: torchvision networks cut into multi-scale feature maps, and a tiny CPU net.

Every backbone is an ``nn.Module`` whose ``forward(x [B, 3, H, W]) -> list[Tensor]`` returns the
feature maps finest first, and whose ``out_channels: list[int]`` and ``strides: list[int]`` describe
them. torchvision networks are always built with ``weights=None`` (nothing is downloaded); a local
``.pth`` file can be loaded with ``weights=`` before the network is cut (see
:mod:`detmine.modeling.weights`), so the file uses torchvision's own key names.
"""

from __future__ import annotations

import os
from functools import partial

import torch
import torch.nn.functional as F
import torchvision
from torch import Tensor, nn
from torchvision.ops.misc import Conv2dNormActivation, FrozenBatchNorm2d

from detmine.modeling.weights import load_backbone_weights

WeightsArg = str | os.PathLike | None


def normal_init(module: nn.Module, std: float) -> None:
    """Normal(0, std) conv weights, zero biases (torchvision's SSDlite / RetinaNet init)."""
    for layer in module.modules():
        if isinstance(layer, nn.Conv2d):
            nn.init.normal_(layer.weight, std=std)
            if layer.bias is not None:
                nn.init.zeros_(layer.bias)


def xavier_init(module: nn.Module) -> None:
    """Xavier-uniform conv weights, zero biases (torchvision's SSD init)."""
    for layer in module.modules():
        if isinstance(layer, nn.Conv2d):
            nn.init.xavier_uniform_(layer.weight)
            if layer.bias is not None:
                nn.init.zeros_(layer.bias)


class TinyBackbone(nn.Module):
    """A small conv-BN-ReLU net for tests and the CPU quickstart (about 1 M parameters).

    Stem and stage 2 are single stride-2 convs; stages 3-5 are a stride-2 conv followed by
    ``blocks - 1`` stride-1 convs. Outputs C3, C4, C5 at strides 8, 16, 32.

    Args:
        widths: channels of stem, stage 2, C3, C4, C5.
        blocks: convs per stage 3-5.
    """

    def __init__(self, *, widths: tuple[int, ...] = (16, 32, 64, 128, 256), blocks: int = 2) -> None:
        super().__init__()
        if len(widths) != 5 or blocks < 1:
            raise ValueError(f"TinyBackbone needs 5 widths and blocks >= 1, got {widths}, {blocks}")
        conv = partial(
            Conv2dNormActivation, kernel_size=3, norm_layer=nn.BatchNorm2d, activation_layer=nn.ReLU
        )
        self.stem = nn.Sequential(conv(3, widths[0], stride=2), conv(widths[0], widths[1], stride=2))

        def stage(cin: int, cout: int) -> nn.Sequential:
            return nn.Sequential(conv(cin, cout, stride=2), *[conv(cout, cout) for _ in range(blocks - 1)])

        self.stages = nn.ModuleList(stage(widths[i], widths[i + 1]) for i in range(1, 4))
        self.out_channels = list(widths[2:])
        self.strides = [8, 16, 32]
        for m in self.modules():
            if isinstance(m, nn.Conv2d):
                nn.init.kaiming_normal_(m.weight, mode="fan_out", nonlinearity="relu")

    def forward(self, x: Tensor) -> list[Tensor]:
        x = self.stem(x)
        out = []
        for stage in self.stages:
            x = stage(x)
            out.append(x)
        return out


_RESNETS = {18: torchvision.models.resnet18, 34: torchvision.models.resnet34, 50: torchvision.models.resnet50}


class ResNetBackbone(nn.Module):
    """torchvision ResNet-18/34/50 returning C3, C4, C5 (strides 8, 16, 32).

    Args:
        depth: 18, 34 or 50.
        weights: local torchvision ImageNet ``.pth`` (``fc.`` keys ignored), or None (random init).
        frozen_bn: use ``FrozenBatchNorm2d`` (torchvision's choice with pretrained weights and small
            batches).
        trainable_layers: how many of ``layer4, layer3, layer2, layer1, conv1`` train (0-5);
            the others are frozen.
    """

    def __init__(
        self,
        *,
        depth: int = 50,
        weights: WeightsArg = None,
        frozen_bn: bool = False,
        trainable_layers: int = 5,
    ) -> None:
        super().__init__()
        if depth not in _RESNETS:
            raise ValueError(f"ResNet depth must be one of {sorted(_RESNETS)}, got {depth}")
        if not 0 <= trainable_layers <= 5:
            raise ValueError(f"trainable_layers must be in 0..5, got {trainable_layers}")
        net = _RESNETS[depth](weights=None, norm_layer=FrozenBatchNorm2d if frozen_bn else nn.BatchNorm2d)
        if weights is not None:
            load_backbone_weights(net, weights, name=f"resnet{depth} backbone")
        net.fc = None  # the classifier is not part of the detector
        trainable = ["layer4", "layer3", "layer2", "layer1", "conv1"][:trainable_layers]
        for name, param in net.named_parameters():
            if not any(name.startswith(t) for t in trainable) and not (
                "conv1" in trainable and name.startswith("bn1")
            ):
                param.requires_grad_(False)
        self.body = net
        c = 512 if depth == 50 else 128
        self.out_channels = [c, 2 * c, 4 * c]
        self.strides = [8, 16, 32]

    def forward(self, x: Tensor) -> list[Tensor]:
        b = self.body
        x = b.maxpool(b.relu(b.bn1(b.conv1(x))))
        c3 = b.layer2(b.layer1(x))
        c4 = b.layer3(c3)
        return [c3, c4, b.layer4(c4)]


class MobileNetV3SSDLite(nn.Module):
    """MobileNetV3-Large cut as in SSDlite (MobileNetV3 paper, section 6.3; torchvision ssdlite).

    Returns two maps: the expansion layer of the last stride-16 block ("C4", 672 channels at stride
    16) and the final 1x1 conv ("C5", stride 32). Without weights the tail is reduced (Table 6 of
    the paper: 480 channels) and convs get Normal(0, 0.03), as torchvision does; with ``weights``
    the full tail (960 channels) is kept so the ImageNet file fits.
    """

    def __init__(self, *, weights: WeightsArg = None) -> None:
        super().__init__()
        norm = partial(nn.BatchNorm2d, eps=0.001, momentum=0.03)
        net = torchvision.models.mobilenet_v3_large(
            weights=None, norm_layer=norm, reduced_tail=weights is None
        )
        if weights is None:
            normal_init(net, std=0.03)
        else:
            load_backbone_weights(net, weights, name="mobilenet_v3_large backbone")
        features = net.features
        c4_pos = [i for i, block in enumerate(features) if getattr(block, "_is_cn", False)][-1]
        expand = features[c4_pos].block[0]
        self.features = nn.ModuleList(
            [
                nn.Sequential(*features[:c4_pos], expand),
                nn.Sequential(features[c4_pos].block[1:], *features[c4_pos + 1 :]),
            ]
        )
        self.out_channels = [expand.out_channels, features[-1].out_channels]
        self.strides = [16, 32]

    def forward(self, x: Tensor) -> list[Tensor]:
        out = []
        for block in self.features:
            x = block(x)
            out.append(x)
        return out


class L2Norm(nn.Module):
    """Channel-wise L2 normalisation with a learned per-channel scale (SSD's conv4_3, init 20)."""

    def __init__(self, channels: int, scale: float = 20.0) -> None:
        super().__init__()
        self.weight = nn.Parameter(torch.full((channels,), float(scale)))

    def forward(self, x: Tensor) -> Tensor:
        return self.weight.view(1, -1, 1, 1) * F.normalize(x, dim=1)


class VGG16Atrous(nn.Module):
    """VGG16 in SSD's form: conv4_3 (L2-normalised, stride 8) and fc7 (stride 16).

    pool3 uses ceil mode (38x38 conv4_3 at 300 px), pool5 becomes 3x3 stride 1, fc6 is a 3x3
    conv with dilation 6 and fc7 a 1x1 conv (both 1024 channels, Xavier init), as in the SSD paper
    and torchvision's ``ssd300_vgg16``. ``weights`` loads a torchvision ``vgg16`` ``.pth``
    (``classifier.`` keys ignored; fc6/fc7 stay randomly initialised).
    """

    def __init__(self, *, weights: WeightsArg = None) -> None:
        super().__init__()
        net = torchvision.models.vgg16(weights=None)
        if weights is not None:
            load_backbone_weights(net, weights, name="vgg16 backbone")
        layers = net.features
        pools = [i for i, layer in enumerate(layers) if isinstance(layer, nn.MaxPool2d)]
        layers[pools[2]].ceil_mode = True
        self.conv4_3 = nn.Sequential(*layers[: pools[3]])
        self.l2norm = L2Norm(512)
        fc = nn.Sequential(
            nn.MaxPool2d(kernel_size=3, stride=1, padding=1),
            nn.Conv2d(512, 1024, kernel_size=3, padding=6, dilation=6),
            nn.ReLU(inplace=True),
            nn.Conv2d(1024, 1024, kernel_size=1),
            nn.ReLU(inplace=True),
        )
        xavier_init(fc)
        self.fc7 = nn.Sequential(*layers[pools[3] : pools[4]], fc)
        self.out_channels = [512, 1024]
        self.strides = [8, 16]

    def forward(self, x: Tensor) -> list[Tensor]:
        c4 = self.conv4_3(x)
        return [self.l2norm(c4), self.fc7(c4)]
