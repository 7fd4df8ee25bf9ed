"""The classification losses of :data:`detmine.losses.CLS_LOSSES`: small modules over the fused
functions of :mod:`detmine.losses.functional`.

Each one is called ``loss(logits [B, A, K'], labels [B, A]) -> [B, A]`` (per-anchor loss, 0 on
ignored anchors, ``labels`` in ``-1..K``) and declares the head it fits in its ``activation``
attribute (``"softmax"``: ``K' = K + 1`` columns, background first; ``"sigmoid"``: ``K' = K``).
Its options are its constructor's keyword arguments (the config's ``loss.<name>.*``), checked
there; the tensors it keeps are non-persistent buffers, so ``criterion.to(device)`` moves them
and checkpoints do not hold them.

``class_weights`` is a list of weights, or the name of a scheme computed from the training set's
objects per class (:func:`~detmine.losses.class_weights.frequency_weights`: ``inverse``,
``inverse_sqrt``, ``effective_number`` with ``class_weights_beta``), counted from the
``facts`` the builder hands over (:class:`~detmine.structures.TrainingSetFacts`).
"""

from __future__ import annotations

import torch
from torch import Tensor, nn

from detmine.errors import ConfigError, OptionError
from detmine.losses.class_weights import CLASS_WEIGHT_SCHEMES, ClassWeightScheme, frequency_weights
from detmine.losses.functional import (
    balanced_cross_entropy_per_anchor,
    focal_loss_per_anchor,
    softmax_cross_entropy,
)
from detmine.structures import CLS_ACTIVATIONS, TrainingSetFacts

#: the type of the ``class_weights`` option: weights, a frequency scheme, or none.
ClassWeights = list[float] | ClassWeightScheme | None


def resolve_class_weights(
    class_weights: ClassWeights, beta: float, facts: TrainingSetFacts | None, *, background: bool
) -> list[float] | None:
    """The per-column weights of a ``class_weights`` option: a list as given; a scheme's ``K``
    weights from ``facts.instances_per_class()`` (mean 1, see
    :func:`~detmine.losses.class_weights.frequency_weights`), with a background weight of 1
    first when ``background`` (a softmax head's ``K + 1`` columns).

    Raises:
        OptionError: ``class_weights_beta`` outside ``[0, 1)``, an unknown scheme, or a scheme
            without ``facts`` (it is counted from the training set).
    """
    if not 0.0 <= beta < 1.0:
        raise OptionError("class_weights_beta", f"must lie in [0, 1), got {beta}")
    if not isinstance(class_weights, str):
        return None if class_weights is None else [float(w) for w in class_weights]
    if class_weights not in CLASS_WEIGHT_SCHEMES:
        raise OptionError(
            "class_weights",
            f"must be a list of weights or one of {', '.join(map(repr, CLASS_WEIGHT_SCHEMES))}, "
            f"got {class_weights!r}",
        )
    if facts is None:
        raise OptionError(
            "class_weights",
            f"{class_weights!r} is counted from the training set's objects per class, which the "
            "builder did not hand over (no training-set facts); give a list of weights instead",
        )
    weights = frequency_weights(facts.instances_per_class(), class_weights, beta)
    return [1.0, *weights] if background else weights


def alpha_tensor(alpha: float | list[float]) -> Tensor:
    """The focal paper's ``alpha`` (a float or ``K`` per-class values) as a float32 tensor,
    after checking it lies in [0, 1] (:class:`OptionError` naming ``alpha``)."""
    alpha_t = torch.as_tensor(alpha, dtype=torch.float32)
    if bool(((alpha_t < 0) | (alpha_t > 1)).any()):
        raise OptionError("alpha", f"must lie in [0, 1], got {alpha}")
    return alpha_t


class _ClassWeightedLoss(nn.Module):
    """Shared by the built-in losses: the optional per-column ``class_weights`` (a list, or a
    scheme resolved by :func:`resolve_class_weights`), whose length is checked against the head
    at call time (the loss is built before the model's ``K`` is looked at).

    Class attributes:
        activation: the head the loss fits (``"softmax"`` / ``"sigmoid"``).
        config_key: where the loss's options live in the config, for messages; the component
            table that builds the loss sets it to the key the user wrote (``"loss.focal"``).
    """

    activation: str
    config_key: str = ""

    def __init__(
        self, class_weights: ClassWeights, beta: float = 0.999, facts: TrainingSetFacts | None = None
    ) -> None:
        super().__init__()
        resolved = resolve_class_weights(class_weights, beta, facts, background=self.activation == "softmax")
        weights = None if resolved is None else torch.as_tensor(resolved, dtype=torch.float32)
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
            multiplying each anchor's loss; or a scheme (``inverse``, ``inverse_sqrt``,
            ``effective_number``) giving the ``K`` classes weights of mean 1 from the training
            set's objects per class, background 1.
        class_weights_beta: ``β`` of ``effective_number``, in ``[0, 1)``.
        facts: the training set's counts, handed over by the builder (not an option).
    """

    activation = "softmax"

    def __init__(
        self,
        *,
        class_weights: ClassWeights = None,
        class_weights_beta: float = 0.999,
        facts: TrainingSetFacts | None = None,
    ) -> None:
        super().__init__(class_weights, class_weights_beta, facts)

    def forward(self, logits: Tensor, labels: Tensor) -> Tensor:
        return softmax_cross_entropy(logits, labels, class_weights=self._weights(logits))


class _AlphaLoss(_ClassWeightedLoss):
    """A sigmoid loss with the focal paper's ``alpha``: a float or ``K`` per-class values in [0, 1]."""

    activation = "sigmoid"

    def __init__(
        self,
        alpha: float | list[float],
        class_weights: ClassWeights,
        beta: float = 0.999,
        facts: TrainingSetFacts | None = None,
    ) -> None:
        super().__init__(class_weights, beta, facts)
        self.register_buffer("alpha", alpha_tensor(alpha), persistent=False)


class FocalLoss(_AlphaLoss):
    """Sigmoid focal loss summed over the ``K`` classes, per anchor (RetinaNet), see
    :func:`~detmine.losses.functional.focal_loss_per_anchor`.

    Call: ``loss(logits [B, A, K], labels [B, A]) -> [B, A]``.

    Args:
        alpha: weight of the positive terms (negatives get ``1 - alpha``), a float or ``K``
            per-class values, in [0, 1].
        gamma: focusing exponent, ``>= 0`` (0: alpha-balanced BCE).
        class_weights: optional ``K`` multipliers of every term of a class column; or a scheme
            (``inverse``, ``inverse_sqrt``, ``effective_number``) giving them, mean 1, from the
            training set's objects per class.
        class_weights_beta: ``β`` of ``effective_number``, in ``[0, 1)``.
        facts: the training set's counts, handed over by the builder (not an option).
    """

    def __init__(
        self,
        *,
        alpha: float | list[float] = 0.25,
        gamma: float = 2.0,
        class_weights: ClassWeights = None,
        class_weights_beta: float = 0.999,
        facts: TrainingSetFacts | None = None,
    ) -> None:
        super().__init__(alpha, class_weights, class_weights_beta, facts)
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
        class_weights_beta: as :class:`FocalLoss`.
        facts: the training set's counts, handed over by the builder (not an option).
    """

    def __init__(
        self,
        *,
        alpha: float | list[float] = 0.25,
        class_weights: ClassWeights = None,
        class_weights_beta: float = 0.999,
        facts: TrainingSetFacts | None = None,
    ) -> None:
        super().__init__(alpha, class_weights, class_weights_beta, facts)

    def forward(self, logits: Tensor, labels: Tensor) -> Tensor:
        weights = self._weights(logits)
        alpha = self.alpha.to(logits.dtype)
        return balanced_cross_entropy_per_anchor(logits, labels, alpha=alpha, class_weights=weights)
