"""Logit-adjusted losses (Menon et al., "Long-tail learning via logit adjustment", ICLR 2021).

The base loss is evaluated on the logits shifted by the log class priors::

    loss(x, y) = base(x + tau * log(pi), y)

broadcast over the class columns. A frequent class gets a small offset, a rare one a large
negative offset, so training must raise a rare class's raw logit more to reach the same loss:
the margin of each class grows as its prior shrinks. Only the loss is adjusted; the model
predicts with its raw logits (``DenseDetector.predict`` never sees the offset), which is the
paper's "logit-adjusted loss" (as opposed to post-hoc adjustment of a trained model's logits).

The priors are counted from the training set's anchors (``facts.anchor_label_counts()``, the
run's matcher over the training annotations, ``[0]`` background and ``[k]`` class ``k``), not
from the objects: what the classifier sees is anchors.

- :class:`LogitAdjustedCrossEntropy` (``logit_adjusted_ce``, softmax): ``pi`` over the ``K + 1``
  columns is each label's share of the non-ignored anchors, background at column 0.
- :class:`LogitAdjustedFocalLoss` (``logit_adjusted_focal``, sigmoid): ``pi`` over the ``K``
  class columns is each class's share of the positive anchors (``anchor_label_counts()[1:]``
  over their sum), a per-class bias offset of the focal loss; ``gamma = 0`` gives a
  logit-adjusted alpha-balanced BCE.

A count of 0 (a class no anchor matched) is clamped to 1 before normalising, so its log prior
is finite (the largest offset any class can get, not an infinite one).
"""

from __future__ import annotations

import torch
from torch import Tensor, nn

from detmine.errors import ConfigError, OptionError
from detmine.losses.classification import alpha_tensor
from detmine.losses.functional import focal_loss_per_anchor, softmax_cross_entropy
from detmine.structures import CLS_ACTIVATIONS, TrainingSetFacts


def anchor_priors(facts: TrainingSetFacts, *, background: bool) -> Tensor:
    """The class priors ``pi`` from ``facts.anchor_label_counts()`` (``K + 1`` counts,
    background first), each count clamped to at least 1.

    Args:
        facts: the training set's counts.
        background: ``True``: ``K + 1`` priors over every non-ignored anchor, background first
            (softmax); ``False``: ``K`` priors over the positive anchors only (sigmoid).

    Returns:
        float32 ``[K + 1]`` or ``[K]`` priors summing to 1.
    """
    counts = torch.as_tensor(list(facts.anchor_label_counts()), dtype=torch.float64)
    if not background:
        counts = counts[1:]
    if counts.numel() == 0:
        raise OptionError("tau", "needs the anchor counts of at least one class; the training set has none")
    counts = counts.clamp(min=1.0)
    return (counts / counts.sum()).to(torch.float32)


def _missing_facts() -> OptionError:
    return OptionError(
        "tau",
        "adjusts the logits by class priors counted from the training set's anchors, which the "
        "builder did not hand over (no training-set facts)",
    )


class _LogitAdjustment(nn.Module):
    """The offset ``tau * log(pi)`` of a head's columns; ``pi`` is a non-persistent buffer
    (it follows ``.to()``, checkpoints do not hold it: the facts give it again)."""

    activation: str
    config_key: str = ""
    prior: Tensor

    def _init_prior(self, tau: float, facts: TrainingSetFacts | None) -> None:
        if tau < 0:
            raise OptionError("tau", f"must be >= 0, got {tau}")
        if facts is None:
            raise _missing_facts()
        self.tau = float(tau)
        prior = anchor_priors(facts, background=self.activation == "softmax")
        self.register_buffer("prior", prior, persistent=False)

    def offset(self, logits: Tensor) -> Tensor:
        """``tau * log(pi)``, ``[K']`` in the logits' dtype, after checking there is one prior
        per column."""
        if self.prior.shape[0] != logits.shape[-1]:
            raise ConfigError(
                f"{self.config_key or type(self).__name__}.tau: the training set's anchor counts give "
                f"{self.prior.shape[0]} priors but the {self.activation} head has {logits.shape[-1]} "
                f"columns ({getattr(CLS_ACTIVATIONS[self.activation], 'columns', '')})"
            )
        return self.tau * torch.log(self.prior.to(logits.dtype))

    def extra_repr(self) -> str:
        return f"tau={self.tau}"


class LogitAdjustedCrossEntropy(_LogitAdjustment):
    """Logit-adjusted softmax cross-entropy per anchor (Menon et al., ICLR 2021)::

        loss = -log softmax(x + tau * log(pi))[y]

    with ``pi`` over the ``K + 1`` columns (background first) each label's share of the
    training set's non-ignored anchors.

    Call: ``loss(logits [B, A, K + 1], labels [B, A]) -> [B, A]`` (0 and no gradient on
    ignored anchors).

    Args:
        tau: scale of the log priors, ``>= 0`` (0: plain softmax CE; the paper uses 1).
        facts: the training set's counts, handed over by the builder (not an option).
    """

    activation = "softmax"

    def __init__(self, *, tau: float = 1.0, facts: TrainingSetFacts | None = None) -> None:
        super().__init__()
        self._init_prior(tau, facts)

    def forward(self, logits: Tensor, labels: Tensor) -> Tensor:
        return softmax_cross_entropy(logits + self.offset(logits), labels)


class LogitAdjustedFocalLoss(_LogitAdjustment):
    """Sigmoid focal loss per anchor on logit-adjusted logits::

        loss = focal(x + tau * log(pi), y)     (summed over the K classes)

    with ``pi`` over the ``K`` classes each class's share of the training set's positive
    anchors: a per-class bias offset. ``gamma = 0``: logit-adjusted alpha-balanced BCE.

    Call: ``loss(logits [B, A, K], labels [B, A]) -> [B, A]``.

    Args:
        alpha: as :class:`~detmine.losses.FocalLoss`.
        gamma: as :class:`~detmine.losses.FocalLoss`.
        tau: scale of the log priors, ``>= 0`` (0: the plain focal loss).
        facts: the training set's counts, handed over by the builder (not an option).
    """

    activation = "sigmoid"
    alpha: Tensor

    def __init__(
        self,
        *,
        alpha: float | list[float] = 0.25,
        gamma: float = 2.0,
        tau: float = 1.0,
        facts: TrainingSetFacts | None = None,
    ) -> None:
        super().__init__()
        self.register_buffer("alpha", alpha_tensor(alpha), persistent=False)
        if gamma < 0:
            raise OptionError("gamma", f"must be >= 0, got {gamma}")
        self.gamma = float(gamma)
        self._init_prior(tau, facts)

    def extra_repr(self) -> str:
        return f"gamma={self.gamma}, tau={self.tau}"

    def forward(self, logits: Tensor, labels: Tensor) -> Tensor:
        alpha = self.alpha.to(logits.dtype)
        return focal_loss_per_anchor(logits + self.offset(logits), labels, alpha=alpha, gamma=self.gamma)


__all__ = ["LogitAdjustedCrossEntropy", "LogitAdjustedFocalLoss", "anchor_priors"]
