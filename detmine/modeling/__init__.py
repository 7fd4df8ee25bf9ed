"""Dense detectors: backbones, necks, heads, anchors, ``DenseDetector`` and named recipes.

``build_model(name, num_classes, **options)`` is the one way configs and scripts make a model;
:data:`MODELS` is the explicit table of names.
"""

from __future__ import annotations

import inspect
from collections.abc import Callable

from detmine.errors import ConfigError
from detmine.modeling.anchors import DefaultBoxes, GridAnchors, retinanet_anchor_sizes
from detmine.modeling.detector import DenseDetector
from detmine.modeling.zoo import (
    retinanet_resnet18_fpn,
    retinanet_resnet50_fpn,
    retinanet_tiny_fpn,
    ssd300_vgg16,
    ssdlite320_mobilenet_v3,
    ssdlite_tiny,
)

#: name -> builder ``(num_classes, **options) -> DenseDetector``.
MODELS: dict[str, Callable[..., DenseDetector]] = {
    "ssd300_vgg16": ssd300_vgg16,
    "ssdlite320_mobilenet_v3": ssdlite320_mobilenet_v3,
    "retinanet_resnet50_fpn": retinanet_resnet50_fpn,
    "retinanet_resnet18_fpn": retinanet_resnet18_fpn,
    "retinanet_tiny_fpn": retinanet_tiny_fpn,
    "ssdlite_tiny": ssdlite_tiny,
}


def model_options(name: str) -> list[str]:
    """The keyword options the builder ``name`` accepts."""
    params = inspect.signature(MODELS[name]).parameters
    return [p for p, spec in params.items() if spec.kind is inspect.Parameter.KEYWORD_ONLY]


def build_model(name: str, num_classes: int, **options) -> DenseDetector:
    """Build the named detector for ``num_classes`` object classes (labels 1..K).

    Raises:
        ConfigError: unknown name or option (naming the valid ones), or an invalid option value.
        CheckpointError: the ``weights`` file is missing or does not fit the backbone.
    """
    if name not in MODELS:
        raise ConfigError(f"unknown model '{name}'; valid models: {', '.join(MODELS)}")
    valid = model_options(name)
    unknown = [k for k in options if k not in valid]
    if unknown:
        raise ConfigError(f"model '{name}' has no option '{unknown[0]}'; valid options: {', '.join(valid)}")
    if not isinstance(num_classes, int) or isinstance(num_classes, bool) or num_classes < 1:
        raise ConfigError(f"model '{name}': num_classes must be a positive integer, got {num_classes!r}")
    try:
        return MODELS[name](num_classes, **options)
    except (ValueError, TypeError) as exc:
        raise ConfigError(f"model '{name}': invalid options {options}: {exc}") from None


__all__ = [
    "MODELS",
    "DefaultBoxes",
    "DenseDetector",
    "GridAnchors",
    "build_model",
    "model_options",
    "retinanet_anchor_sizes",
]
