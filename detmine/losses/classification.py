"""The classification losses of :data:`detmine.losses.CLS_LOSSES`: small modules over the fused
functions of :mod:`detmine.losses.functional`.

Each one is called ``loss(logits [B, A, K'], labels [B, A]) -> [B, A]`` (per-anchor loss, 0 on
ignored anchors, ``labels`` in ``-1..K``) and declares the head it fits in its ``activation``
attribute (``"softmax"``: ``K' = K + 1`` columns, background first; ``"sigmoid"``: ``K' = K``).
Its options are its constructor's keyword arguments (the config's ``loss.<name>.*``), checked
there; the tensors it keeps are non-persistent buffers, so ``criterion.to(device)`` moves them
and checkpoints do not hold them.
"""

from __future__ import annotations

import torch
from torch import Tensor, nn

from detmine.errors import ConfigError, OptionError
from detmine.losses.functional import (
    balanced_cross_entropy_per_anchor,
    focal_loss_per_anchor,
    softmax_cross_entropy,
)
from detmine.structures import CLS_ACTIVATIONS


class _ClassWeightedLoss(nn.Module):
    """Shared by the built-in losses: the optional per-column ``class_weights``, whose length
    is checked against the head at call time (the loss is built before the model's ``K`` is
    looked at).

    Class attributes:
        activation: the head the loss fits (``"softmax"`` / ``"sigmoid"``).
        config_key: where the loss's options live in the config, for messages; the component
            table that builds the loss sets it to the key the user wrote (``"loss.focal"``).
    """

    activation: str
    config_key: str = ""

    def __init__(self, class_weights: list[float] | None) -> None:
        super().__init__()
        weights = None if class_weights is None else torch.as_tensor(class_weights, dtype=torch.float32)
        self.register_buffer("class_weights", weights, persistent=False)

    def _weights(self, logits: Tensor) -> Tensor | None:
        """The class weights in the logits' dtype, after checking there is one per column."""
        weights = self.class_weights
        if weights is None:
            return None
        if weights.shape[0] != logits.shape[-1]:
            raise ConfigError(
                f"{self.config_key or type(self).__name__}.class_weights has {weights.shape[0]} values but the {self.activation} head "
                f"has {logits.shape[-1]} columns ({CLS_ACTIVATIONS[self.activation].columns})"
            )
        return weights.to(logits.dtype)


class SoftmaxCrossEntropy(_ClassWeightedLoss):
    """Softmax cross-entropy per anchor (SSD), see
    :func:`~detmine.losses.functional.softmax_cross_entropy`.

    Call: ``loss(logits [B, A, K + 1], labels [B, A]) -> [B, A]``.

    Args:
        class_weights: optional ``K + 1`` weights of the target classes (background first),
            multiplying each anchor's loss.
    """

    activation = "softmax"

    def __init__(self, *, class_weights: list[float] | None = None) -> None:
        super().__init__(class_weights)

    def forward(self, logits: Tensor, labels: Tensor) -> Tensor:
        return softmax_cross_entropy(logits, labels, class_weights=self._weights(logits))


class _AlphaLoss(_ClassWeightedLoss):
    """A sigmoid loss with the focal paper's ``alpha``: a float or ``K`` per-class values in [0, 1]."""

    activation = "sigmoid"

    def __init__(self, alpha: float | list[float], class_weights: list[float] | None) -> None:
        super().__init__(class_weights)
        alpha_t = torch.as_tensor(alpha, dtype=torch.float32)
        if bool(((alpha_t < 0) | (alpha_t > 1)).any()):
            raise OptionError("alpha", f"must lie in [0, 1], got {alpha}")
        self.register_buffer("alpha", alpha_t, persistent=False)


class FocalLoss(_AlphaLoss):
    """Sigmoid focal loss summed over the ``K`` classes, per anchor (RetinaNet), see
    :func:`~detmine.losses.functional.focal_loss_per_anchor`.

    Call: ``loss(logits [B, A, K], labels [B, A]) -> [B, A]``.

    Args:
        alpha: weight of the positive terms (negatives get ``1 - alpha``), a float or ``K``
            per-class values, in [0, 1].
        gamma: focusing exponent, ``>= 0`` (0: alpha-balanced BCE).
        class_weights: optional ``K`` multipliers of every term of a class column.
    """

    def __init__(
        self,
        *,
        alpha: float | list[float] = 0.25,
        gamma: float = 2.0,
        class_weights: list[float] | None = None,
    ) -> None:
        super().__init__(alpha, class_weights)
        if gamma < 0:
            raise OptionError("gamma", f"must be >= 0, got {gamma}")
        self.gamma = float(gamma)

    def extra_repr(self) -> str:
        return f"gamma={self.gamma}"

    def forward(self, logits: Tensor, labels: Tensor) -> Tensor:
        weights = self._weights(logits)
        alpha = self.alpha.to(logits.dtype)
        return focal_loss_per_anchor(logits, labels, alpha=alpha, gamma=self.gamma, class_weights=weights)


class BalancedCrossEntropy(_AlphaLoss):
    """Alpha-balanced sigmoid BCE per anchor (the focal paper's baseline: focal with
    ``gamma = 0``), see :func:`~detmine.losses.functional.balanced_cross_entropy_per_anchor`.

    Call: ``loss(logits [B, A, K], labels [B, A]) -> [B, A]``.

    Args:
        alpha: as :class:`FocalLoss`.
        class_weights: as :class:`FocalLoss`.
    """

    def __init__(
        self, *, alpha: float | list[float] = 0.25, class_weights: list[float] | None = None
    ) -> None:
        super().__init__(alpha, class_weights)

    def forward(self, logits: Tensor, labels: Tensor) -> Tensor:
        weights = self._weights(logits)
        alpha = self.alpha.to(logits.dtype)
        return balanced_cross_entropy_per_anchor(logits, labels, alpha=alpha, class_weights=weights)
