"""Losses: one ``name -> class`` table per kind, and the fused functions behind them.

:data:`CLS_LOSSES` -- per-anchor classification losses, called
``loss(logits [B, A, K'], labels [B, A]) -> [B, A]``, each with an ``activation`` class
attribute naming the head it fits (``"softmax"`` or ``"sigmoid"``).

:data:`BOX_LOSSES` -- box regression losses over the positive anchors, called
``loss(deltas [P, 4], matched_boxes [P, 4], anchors [P, 4], box_coder) -> scalar sum``.

The config's ``loss.cls`` / ``loss.box`` name entries of these tables and ``loss.<name>.*``
holds the constructor's keyword options (``loss.focal.gamma``, ``loss.smooth_l1.beta``).
A new loss is one class plus one table line; registering one from outside the package
(``CLS_LOSSES["my_loss"] = MyLoss``) works the same.

``sigmoid_focal_loss`` keeps ``torchvision.ops.sigmoid_focal_loss``'s signature; the
detection path uses the fused :func:`focal_loss_per_anchor` (see
:mod:`detmine.losses.functional`).
"""

from __future__ import annotations

from detmine.components import ComponentTable
from detmine.losses.box import GIoULoss, L1Loss, SmoothL1Loss
from detmine.losses.classification import BalancedCrossEntropy, FocalLoss, SoftmaxCrossEntropy
from detmine.losses.functional import (
    balanced_cross_entropy_per_anchor,
    focal_loss_per_anchor,
    sigmoid_focal_loss,
    softmax_cross_entropy,
)

#: name -> classification loss class (``loss.cls``; options under ``loss.<name>``).
CLS_LOSSES = ComponentTable(
    "classification loss",
    {"softmax_ce": SoftmaxCrossEntropy, "focal": FocalLoss, "balanced_ce": BalancedCrossEntropy},
    provided=("facts",),
)

#: name -> box regression loss class (``loss.box``; options under ``loss.<name>``).
BOX_LOSSES = ComponentTable("box loss", {"smooth_l1": SmoothL1Loss, "l1": L1Loss, "giou": GIoULoss})

__all__ = [
    "BOX_LOSSES",
    "CLS_LOSSES",
    "BalancedCrossEntropy",
    "FocalLoss",
    "GIoULoss",
    "L1Loss",
    "SmoothL1Loss",
    "SoftmaxCrossEntropy",
    "balanced_cross_entropy_per_anchor",
    "focal_loss_per_anchor",
    "sigmoid_focal_loss",
    "softmax_cross_entropy",
]
