"""Dense detectors: backbones, necks, heads, anchors, ``DenseDetector`` and named recipes.

``build_model(name, num_classes, **options)`` is the one way configs and scripts make a model;
:data:`MODELS` is the explicit table of names.
"""

from __future__ import annotations

from detmine.components import ComponentTable
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

#: name -> builder ``(num_classes, **options) -> DenseDetector`` (``model.name``; its keyword
#: signature is the schema of ``model.options``).
MODELS = ComponentTable(
    "model",
    {
        "ssd300_vgg16": ssd300_vgg16,
        "ssdlite320_mobilenet_v3": ssdlite320_mobilenet_v3,
        "retinanet_resnet50_fpn": retinanet_resnet50_fpn,
        "retinanet_resnet18_fpn": retinanet_resnet18_fpn,
        "retinanet_tiny_fpn": retinanet_tiny_fpn,
        "ssdlite_tiny": ssdlite_tiny,
    },
    passed=("num_classes",),
)


def model_options(name: str) -> list[str]:
    """The keyword options the builder ``name`` accepts."""
    return MODELS.options(name)


def build_model(name: str, num_classes: int, **options) -> DenseDetector:
    """Build the named detector for ``num_classes`` object classes (labels 1..K).

    Raises:
        ConfigError: unknown name or option ("did you mean", naming ``model.name`` /
            ``model.options.<option>``), a wrong type, or an invalid option value.
        CheckpointError: the ``weights`` file is missing or does not fit the backbone.
    """
    if not isinstance(num_classes, int) or isinstance(num_classes, bool) or num_classes < 1:
        raise ConfigError(f"model '{name}': num_classes must be a positive integer, got {num_classes!r}")
    try:  # a builder's OptionError names model.options.<option> (the table's construct)
        return MODELS.build(
            name, options, key="model.options", name_key="model.name", num_classes=num_classes
        )
    except (ValueError, TypeError) as exc:  # what a builder's parts raise without naming an option
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
