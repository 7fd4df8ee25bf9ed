"""Asymmetric loss (Ridnik et al., "Asymmetric Loss For Multi-Label Classification", ICCV 2021).

Per class column, with ``p = sigmoid(x)`` and the shifted probability ``p_m = max(p - m, 0)``::

    positive (target 1):  L+ = -(1 - p)^gamma_pos * log(p)
    negative (target 0):  L- = -p_m^gamma_neg * log(1 - p_m)

summed over the ``K`` columns of an anchor; the target column is the anchor's class for a
foreground anchor, every column is negative for a background anchor. Focusing is asymmetric
(``gamma_neg > gamma_pos`` down-weights the easy negatives more than the positives) and the
probability margin ``m`` discards the negatives with ``p <= m`` entirely (loss and gradient 0).

The full gradient is used: the focusing weights are not detached (the paper's reference code
can detach them, ``disable_torch_grad_focal_loss``). The terms use stable log-sigmoid forms::

    log p = logsigmoid(x),  log(1 - p) = logsigmoid(-x),  (1 - p)^g = exp(g * logsigmoid(-x)),
    1 - p_m = sigmoid(-x) + m  (>= m > 0 where p > m)
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from detmine.errors import OptionError


def _focusing(log_base: Tensor, gamma: float) -> Tensor | None:
    """``base^gamma`` as ``exp(gamma * log(base))`` (finite gradient where ``base`` underflows
    to 0); None for ``gamma = 0``."""
    return None if gamma == 0 else torch.exp(gamma * log_base)


def asymmetric_loss_per_anchor(
    logits: Tensor, labels: Tensor, gamma_pos: float = 0.0, gamma_neg: float = 4.0, margin: float = 0.05
) -> Tensor:
    """Asymmetric loss summed over the classes, per anchor (formula: module docstring).

    Args:
        logits: ``[B, A, K]`` (no background column).
        labels: ``[B, A]`` int64 in ``-1..K`` (label ``k`` is column ``k - 1``).
        gamma_pos: focusing exponent of the positive terms, ``>= 0``.
        gamma_neg: focusing exponent of the negative terms, ``>= 0``.
        margin: probability margin ``m`` of the negative terms, in ``[0, 1)``.

    Returns:
        ``[B, A]`` loss, 0 (with zero gradient) where ``labels == -1``.
    """
    num_classes = logits.shape[-1]
    classes = torch.arange(1, num_classes + 1, device=labels.device)
    target = labels.unsqueeze(-1) == classes  # [B, A, K] bool; background / ignore rows all False

    log_p = F.logsigmoid(logits)
    log_q = F.logsigmoid(-logits)  # log(1 - p)
    positive = -log_p
    weight_pos = _focusing(log_q, gamma_pos)
    if weight_pos is not None:
        positive = positive * weight_pos

    if margin == 0:
        negative = -log_q
        weight_neg = _focusing(log_p, gamma_neg)
        if weight_neg is not None:
            negative = negative * weight_neg
    else:
        p = torch.sigmoid(logits)
        shifted = p > margin
        # a safe 1 where p <= m: those terms are replaced by 0 below, and their gradient must
        # not pass through log(0) (0 * inf = NaN)
        p_m = torch.where(shifted, p - margin, torch.ones_like(p))
        negative = -torch.log(torch.sigmoid(-logits) + margin)
        weight_neg = _focusing(torch.log(p_m), gamma_neg)
        if weight_neg is not None:
            negative = negative * weight_neg
        negative = torch.where(shifted, negative, torch.zeros_like(negative))

    loss = torch.where(target, positive, negative).sum(dim=-1)
    return torch.where(labels >= 0, loss, torch.zeros_like(loss))


class AsymmetricLoss(nn.Module):
    """Asymmetric loss per anchor (Ridnik et al., ICCV 2021), see
    :func:`asymmetric_loss_per_anchor`.

    Call: ``loss(logits [B, A, K], labels [B, A]) -> [B, A]``.

    Args:
        gamma_pos: focusing exponent of the positive terms ``gamma+``, ``>= 0``.
        gamma_neg: focusing exponent of the negative terms ``gamma-``, ``>= 0``.
        margin: probability margin ``m`` shifting the negatives' probabilities, in ``[0, 1)``.
    """

    activation = "sigmoid"
    config_key: str = ""

    def __init__(self, *, gamma_pos: float = 0.0, gamma_neg: float = 4.0, margin: float = 0.05) -> None:
        super().__init__()
        for name, value in (("gamma_pos", gamma_pos), ("gamma_neg", gamma_neg)):
            if value < 0:
                raise OptionError(name, f"must be >= 0, got {value}")
        if not 0.0 <= margin < 1.0:
            raise OptionError("margin", f"must lie in [0, 1), got {margin}")
        self.gamma_pos = float(gamma_pos)
        self.gamma_neg = float(gamma_neg)
        self.margin = float(margin)

    def extra_repr(self) -> str:
        return f"gamma_pos={self.gamma_pos}, gamma_neg={self.gamma_neg}, margin={self.margin}"

    def forward(self, logits: Tensor, labels: Tensor) -> Tensor:
        return asymmetric_loss_per_anchor(
            logits, labels, gamma_pos=self.gamma_pos, gamma_neg=self.gamma_neg, margin=self.margin
        )


__all__ = ["AsymmetricLoss", "asymmetric_loss_per_anchor"]
