"""Named detector recipes. Each builder has an explicit keyword signature; ``build_model`` maps a
config's ``model.name`` to one of them (see :data:`detmine.modeling.MODELS`). The two ResNet
RetinaNets are one builder, :func:`retinanet_resnet_fpn`, with the depth fixed by the name.

CPU-friendly (tests, the quickstart): ``retinanet_tiny_fpn``, ``ssdlite_tiny`` (about 1 M
parameters at 256 px) and, more slowly, ``retinanet_resnet18_fpn`` at 320 px and
``ssdlite320_mobilenet_v3``. ``ssd300_vgg16`` and ``retinanet_resnet50_fpn`` are GPU recipes.

Input geometry (``DenseDetector.size_divisible``): the SSD models are fixed-size recipes (1: the
input is used as it is, so SSD300 sees 300 px and has 8732 default boxes); the RetinaNet models
need multiples of 32, the stride of C5 (see :func:`_retinanet`).
"""

from __future__ import annotations

import inspect
from collections.abc import Callable, Sequence
from typing import Any

from detmine.modeling.anchors import DefaultBoxes, GridAnchors, retinanet_anchor_sizes
from detmine.modeling.backbones import (
    MobileNetV3SSDLite,
    ResNetBackbone,
    TinyBackbone,
    VGG16Atrous,
    WeightsArg,
)
from detmine.modeling.detector import DenseDetector
from detmine.modeling.heads import RetinaNetHead, SSDHead, SSDLiteHead
from detmine.modeling.necks import FPN, SSDExtraLayers, SSDLiteExtraLayers
from detmine.modeling.weights import load_backbone_weights

SSD_BOX_WEIGHTS = (10.0, 10.0, 5.0, 5.0)
RETINANET_BOX_WEIGHTS = (1.0, 1.0, 1.0, 1.0)


def _box_coder(weights: tuple[float, ...]):
    from detmine.box_coder import BoxCoder  # imported late: the coder is its own module

    return BoxCoder(weights=weights)


def _ssd(backbone, neck, anchors: DefaultBoxes, head_cls, num_classes: int, image_size: int) -> DenseDetector:
    head = head_cls(
        in_channels=neck.out_channels,
        num_anchors=anchors.num_anchors_per_location(),
        num_columns=num_classes + 1,
    )
    return DenseDetector(
        backbone=backbone,
        neck=neck,
        head=head,
        anchor_generator=anchors,
        num_classes=num_classes,
        cls_activation="softmax",
        box_coder=_box_coder(SSD_BOX_WEIGHTS),
        image_size=image_size,
        size_divisible=1,  # fixed-size recipe: the loader resizes, padding would add anchors
    )


def ssd300_vgg16(num_classes: int, *, weights: WeightsArg = None) -> DenseDetector:
    """SSD300 (Liu et al. 2016) on atrous VGG16, as torchvision's ``ssd300_vgg16``: 8732 default boxes.

    Args:
        weights: local torchvision ``vgg16`` ImageNet ``.pth`` for the backbone.
    """
    backbone = VGG16Atrous(weights=weights)
    neck = SSDExtraLayers(in_channels=backbone.out_channels)
    anchors = DefaultBoxes(
        aspect_ratios=[[2], [2, 3], [2, 3], [2, 3], [2], [2]],
        scales=[0.07, 0.15, 0.33, 0.51, 0.69, 0.87, 1.05],
        steps=[8, 16, 32, 64, 100, 300],
    )
    return _ssd(backbone, neck, anchors, SSDHead, num_classes, 300)


def ssdlite320_mobilenet_v3(
    num_classes: int, *, weights: WeightsArg = None, image_size: int = 320
) -> DenseDetector:
    """SSDlite on MobileNetV3-Large, as torchvision's ``ssdlite320_mobilenet_v3_large`` (6 levels).

    Args:
        weights: local torchvision ``mobilenet_v3_large`` ImageNet ``.pth``.
        image_size: nominal square input size.
    """
    backbone = MobileNetV3SSDLite(weights=weights)
    neck = SSDLiteExtraLayers(in_channels=backbone.out_channels)
    anchors = DefaultBoxes(aspect_ratios=[[2, 3]] * 6, min_ratio=0.2, max_ratio=0.95)
    return _ssd(backbone, neck, anchors, SSDLiteHead, num_classes, image_size)


def ssdlite_tiny(
    num_classes: int,
    *,
    image_size: int = 256,
    widths: Sequence[int] = (16, 32, 64, 128, 256),
    extra_channels: Sequence[int] = (128, 128, 64),
    anchor_scales: Sequence[float] = (0.06, 0.12, 0.24, 0.4, 0.6, 0.8, 1.0),
    weights: WeightsArg = None,
) -> DenseDetector:
    """CPU-friendly SSDlite: tiny backbone C3-C5 + SSDlite extra layers, softmax head.

    Six levels at strides 8..256 (32, 16, 8, 4, 2, 1 cells at 256 px), 6 default boxes per cell,
    smallest boxes ``anchor_scales[0] * image_size`` (15 px at 256) for small objects.

    Args:
        widths: channels of the tiny backbone's five stages.
        extra_channels: one SSDlite extra block per entry (levels = 3 + len).
        anchor_scales: ``levels + 1`` default-box scales (fractions of the image side).
        weights: a state dict saved from a ``TinyBackbone`` of the same widths.
    """
    backbone = _tiny_backbone(widths, weights)
    neck = SSDLiteExtraLayers(in_channels=backbone.out_channels, channels=extra_channels)
    anchors = DefaultBoxes(aspect_ratios=[[2, 3]] * len(neck.out_channels), scales=anchor_scales)
    return _ssd(backbone, neck, anchors, SSDLiteHead, num_classes, image_size)


def _tiny_backbone(widths: Sequence[int], weights: WeightsArg) -> TinyBackbone:
    backbone = TinyBackbone(widths=tuple(widths))
    if weights is not None:
        load_backbone_weights(backbone, weights, ignore_prefixes=(), name="tiny backbone")
    return backbone


def _retinanet(
    backbone,
    num_classes: int,
    *,
    image_size: int,
    fpn_channels: int,
    head_convs: int,
    group_norm: bool,
    anchor_sizes: Sequence[int],
    p6_from: str,
    prior_prob: float,
) -> DenseDetector:
    """FPN P3-P7 + focal head on a C3-C5 backbone.

    Anchor strides are the levels' true strides: the backbone's for P3-P5 and 2x, 4x its last for
    P6, P7 (stride-2 convs): 8, 16, 32, 64, 128 for every backbone here.

    ``size_divisible`` is the stride of C5 (32), as torchvision's ``GeneralizedRCNNTransform``:
    then C3, C4, C5 are exact 2x multiples of each other and the FPN's nearest 2x upsampling
    lines P5 up with C4 and P4 with C3 cell for cell (a 19-cell C4 would be added to a 10-cell C5
    resampled to 19, shifted by up to half a C5 cell). P6 and P7 only go bottom-up (stride-2 convs
    of P5 or C5), so they need no more: their ``ceil(H / 64)``, ``ceil(H / 128)`` cells get anchors
    at their true strides (see ``GridAnchors``), and padding to 128 would only add up to 96 more
    rows and columns of padding to compute on.
    """
    neck = FPN(in_channels=backbone.out_channels, out_channels=fpn_channels, p6_from=p6_from)
    if len(anchor_sizes) != len(neck.out_channels):
        raise ValueError(
            f"anchor_sizes needs {len(neck.out_channels)} entries (P3-P7), got {list(anchor_sizes)}"
        )
    c5_stride = backbone.strides[-1]
    strides = [*backbone.strides, 2 * c5_stride, 4 * c5_stride]
    anchors = GridAnchors(sizes=retinanet_anchor_sizes(anchor_sizes), strides=strides)
    head = RetinaNetHead(
        in_channels=fpn_channels,
        num_anchors=anchors.num_anchors_per_location()[0],
        num_columns=num_classes,
        num_convs=head_convs,
        group_norm=group_norm,
        prior_prob=prior_prob,
    )
    return DenseDetector(
        backbone=backbone,
        neck=neck,
        head=head,
        anchor_generator=anchors,
        num_classes=num_classes,
        cls_activation="sigmoid",
        box_coder=_box_coder(RETINANET_BOX_WEIGHTS),
        image_size=image_size,
        size_divisible=c5_stride,
    )


def retinanet_resnet_fpn(
    num_classes: int,
    *,
    depth: int = 50,
    image_size: int = 640,
    fpn_channels: int = 256,
    head_convs: int = 4,
    group_norm: bool = False,
    anchor_sizes: Sequence[int] = (32, 64, 128, 256, 512),
    p6_from: str = "p5",
    prior_prob: float = 0.01,
    weights: WeightsArg = None,
    frozen_bn: bool = False,
    trainable_layers: int = 5,
) -> DenseDetector:
    """RetinaNet on a torchvision ResNet: FPN P3-P7, 9 anchors per cell, focal head. With the
    defaults (depth 50) it is torchvision's ``retinanet_resnet50_fpn``.

    The named recipes ``retinanet_resnet50_fpn`` and ``retinanet_resnet18_fpn`` are this builder
    with ``depth`` fixed by the name (see :func:`_resnet_recipe`); their options are these.

    Args:
        depth: ResNet depth, 18, 34 or 50.
        image_size: nominal input size. fpn_channels / head_convs / group_norm / prior_prob: see
            :class:`~detmine.modeling.heads.RetinaNetHead`. anchor_sizes: base size per level
            (octave scales 2^0, 2^1/3, 2^2/3 and ratios 0.5, 1, 2 added). p6_from: ``"p5"`` or
            ``"c5"``. weights / frozen_bn / trainable_layers: see
            :class:`~detmine.modeling.backbones.ResNetBackbone` (torchvision freezes BN and trains 3
            layers with pretrained weights).
    """
    backbone = ResNetBackbone(
        depth=depth, weights=weights, frozen_bn=frozen_bn, trainable_layers=trainable_layers
    )
    return _retinanet(
        backbone,
        num_classes,
        image_size=image_size,
        fpn_channels=fpn_channels,
        head_convs=head_convs,
        group_norm=group_norm,
        anchor_sizes=anchor_sizes,
        p6_from=p6_from,
        prior_prob=prior_prob,
    )


def _resnet_recipe(name: str, depth: int, doc: str, **defaults: Any) -> Callable[..., DenseDetector]:
    """:func:`retinanet_resnet_fpn` as the named builder ``name``: ``depth`` fixed, ``defaults``
    changed.

    Its ``__signature__`` is the shared one without ``depth`` (the name fixes it) and with these
    defaults, so ``inspect.signature`` (what ``build_model`` and the config checks read) lists
    exactly its options; calls are bound against it, so an unknown option, ``depth`` included, is
    the TypeError of any keyword-only signature.
    """
    shared = inspect.signature(retinanet_resnet_fpn)
    if bad := sorted(set(defaults) - set(shared.parameters).difference({"num_classes", "depth"})):
        raise TypeError(f"{name}: {bad} are not options to default")
    signature = shared.replace(
        parameters=[
            p.replace(default=defaults.get(p.name, p.default))
            for p in shared.parameters.values()
            if p.name != "depth"
        ]
    )

    def build(*args: Any, **options: Any) -> DenseDetector:
        bound = signature.bind(*args, **options)
        bound.apply_defaults()
        return retinanet_resnet_fpn(*bound.args, depth=depth, **bound.kwargs)

    build.__name__ = build.__qualname__ = name
    build.__doc__ = doc
    build.__signature__ = signature  # type: ignore[attr-defined]
    return build


retinanet_resnet50_fpn = _resnet_recipe(
    "retinanet_resnet50_fpn",
    50,
    """RetinaNet R50-FPN (P3-P7, 9 anchors per cell) at 640 px, as torchvision's
    ``retinanet_resnet50_fpn``. Options: :func:`retinanet_resnet_fpn`'s, less ``depth``.""",
)
retinanet_resnet18_fpn = _resnet_recipe(
    "retinanet_resnet18_fpn",
    18,
    """RetinaNet on ResNet-18 at 320 px: a small recipe that still trains on a CPU. Options:
    :func:`retinanet_resnet_fpn`'s, less ``depth``.""",
    image_size=320,
)


def retinanet_tiny_fpn(
    num_classes: int,
    *,
    image_size: int = 256,
    widths: Sequence[int] = (16, 32, 64, 128, 256),
    fpn_channels: int = 64,
    head_convs: int = 2,
    group_norm: bool = False,
    anchor_sizes: Sequence[int] = (16, 32, 64, 128, 256),
    p6_from: str = "p5",
    prior_prob: float = 0.01,
    weights: WeightsArg = None,
) -> DenseDetector:
    """CPU-friendly RetinaNet: tiny backbone, 64-channel FPN P3-P7, 2-conv focal head, 256 px.

    Anchor base sizes 16..256 (half the paper's, for a 256 px input with small objects).
    """
    backbone = _tiny_backbone(widths, weights)
    return _retinanet(
        backbone,
        num_classes,
        image_size=image_size,
        fpn_channels=fpn_channels,
        head_convs=head_convs,
        group_norm=group_norm,
        anchor_sizes=anchor_sizes,
        p6_from=p6_from,
        prior_prob=prior_prob,
    )
