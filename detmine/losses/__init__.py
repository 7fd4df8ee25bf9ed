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

The research toolbox's losses for class imbalance: class weights from the training set's
frequencies (``class_weights: inverse | inverse_sqrt | effective_number`` of ``softmax_ce``,
``focal``, ``balanced_ce``; :mod:`detmine.losses.class_weights`), logit adjustment
(``logit_adjusted_ce``, ``logit_adjusted_focal``; :mod:`detmine.losses.logit_adjustment`), the
asymmetric loss (``asymmetric``; :mod:`detmine.losses.asymmetric`) and GHM-C (``ghm_c``;
:mod:`detmine.losses.ghm`). Those counted from the training set get its ``facts`` from the
builder (the table's ``provided`` parameter).

``sigmoid_focal_loss`` keeps ``torchvision.ops.sigmoid_focal_loss``'s signature; the
detection path uses the fused :func:`focal_loss_per_anchor` (see
:mod:`detmine.losses.functional`).
"""

from __future__ import annotations

from detmine.components import ComponentTable
from detmine.losses.asymmetric import AsymmetricLoss, asymmetric_loss_per_anchor
from detmine.losses.box import GIoULoss, L1Loss, SmoothL1Loss
from detmine.losses.class_weights import CLASS_WEIGHT_SCHEMES, frequency_weights
from detmine.losses.classification import BalancedCrossEntropy, FocalLoss, SoftmaxCrossEntropy
from detmine.losses.functional import (
    balanced_cross_entropy_per_anchor,
    focal_loss_per_anchor,
    sigmoid_focal_loss,
    softmax_cross_entropy,
)
from detmine.losses.ghm import GHMCLoss
from detmine.losses.logit_adjustment import LogitAdjustedCrossEntropy, LogitAdjustedFocalLoss

#: name -> classification loss class (``loss.cls``; options under ``loss.<name>``).
CLS_LOSSES = ComponentTable(
    "classification loss",
    {
        "softmax_ce": SoftmaxCrossEntropy,
        "focal": FocalLoss,
        "balanced_ce": BalancedCrossEntropy,
        "logit_adjusted_ce": LogitAdjustedCrossEntropy,
        "logit_adjusted_focal": LogitAdjustedFocalLoss,
        "asymmetric": AsymmetricLoss,
        "ghm_c": GHMCLoss,
    },
    provided=("facts",),
)

#: name -> box regression loss class (``loss.box``; options under ``loss.<name>``).
BOX_LOSSES = ComponentTable("box loss", {"smooth_l1": SmoothL1Loss, "l1": L1Loss, "giou": GIoULoss})

__all__ = [
    "BOX_LOSSES",
    "CLASS_WEIGHT_SCHEMES",
    "CLS_LOSSES",
    "AsymmetricLoss",
    "BalancedCrossEntropy",
    "FocalLoss",
    "GHMCLoss",
    "GIoULoss",
    "L1Loss",
    "LogitAdjustedCrossEntropy",
    "LogitAdjustedFocalLoss",
    "SmoothL1Loss",
    "SoftmaxCrossEntropy",
    "asymmetric_loss_per_anchor",
    "balanced_cross_entropy_per_anchor",
    "focal_loss_per_anchor",
    "frequency_weights",
    "sigmoid_focal_loss",
    "softmax_cross_entropy",
]
