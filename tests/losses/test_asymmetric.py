"""Asymmetric loss (Ridnik et al., ICCV 2021) per anchor, against the paper's definition."""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F

from detmine.errors import ConfigError
from detmine.losses import CLS_LOSSES, AsymmetricLoss

LABELS = torch.tensor([[0, 1, 2, 3, -1, 0, 3, 2, 0, 1], [3, 0, 0, -1, 1, 2, 0, 1, 2, 0]])


def _logits(seed: int, dtype=torch.float64, scale: float = 2.5) -> torch.Tensor:
    gen = torch.Generator().manual_seed(seed)
    return torch.randn(2, 10, 3, generator=gen, dtype=dtype) * scale


def reference(logits, labels, gamma_pos, gamma_neg, margin):
    """The paper's definition, one element at a time: ``L+ = -(1-p)^g+ log p`` on the anchor's
    class column, ``L- = -p_m^g- log(1 - p_m)``, ``p_m = max(p - m, 0)`` on the others."""
    x = logits.double().tolist()
    out = torch.zeros(labels.shape, dtype=torch.float64)
    for b, row in enumerate(x):
        for a, columns in enumerate(row):
            y = int(labels[b, a])
            if y < 0:
                continue
            total = 0.0
            for k, value in enumerate(columns):
                p = 1.0 / (1.0 + math.exp(-value))
                if y == k + 1:
                    total += -((1 - p) ** gamma_pos) * math.log(p)
                else:
                    p_m = max(p - margin, 0.0)
                    total += -(p_m**gamma_neg) * math.log(1 - p_m)
            out[b, a] = total
    return out


CASES = [
    (0.0, 4.0, 0.05),
    (1.0, 4.0, 0.05),
    (0.5, 2.5, 0.2),
    (0.0, 0.0, 0.0),
    (2.0, 0.5, 0.0),
    (0.0, 1.0, 0.1),
]


@pytest.mark.parametrize(("gamma_pos", "gamma_neg", "margin"), CASES)
def test_values_against_the_definition(gamma_pos, gamma_neg, margin):
    logits = _logits(seed=int(10 * gamma_neg + 100 * margin))
    loss = AsymmetricLoss(gamma_pos=gamma_pos, gamma_neg=gamma_neg, margin=margin)
    torch.testing.assert_close(loss(logits, LABELS), reference(logits, LABELS, gamma_pos, gamma_neg, margin))


def test_without_focusing_or_margin_it_is_bce():
    logits = _logits(seed=7)
    target = torch.zeros_like(logits)
    pos = LABELS > 0
    target[pos, LABELS[pos] - 1] = 1.0
    bce = F.binary_cross_entropy_with_logits(logits, target, reduction="none").sum(-1) * (LABELS >= 0)
    torch.testing.assert_close(AsymmetricLoss(gamma_pos=0, gamma_neg=0, margin=0)(logits, LABELS), bce)


def _away_from_the_kink(logits: torch.Tensor, margin: float) -> torch.Tensor:
    """Nudge logits whose probability lies within 0.02 of the margin (where L- has a kink)."""
    p = torch.sigmoid(logits)
    return torch.where((p - margin).abs() < 0.02, logits + 0.5, logits)


@pytest.mark.parametrize(("gamma_pos", "gamma_neg", "margin"), CASES)
def test_gradcheck(gamma_pos, gamma_neg, margin):
    loss = AsymmetricLoss(gamma_pos=gamma_pos, gamma_neg=gamma_neg, margin=margin)
    logits = _away_from_the_kink(_logits(seed=11, scale=1.5), margin).requires_grad_(True)
    assert torch.autograd.gradcheck(lambda x: loss(x, LABELS), (logits,))


def test_full_gradient_equals_autograd_of_the_plain_formula():
    """The focusing weights are not detached: the gradient is that of the naive formula."""
    gamma_pos, gamma_neg, margin = 1.0, 3.0, 0.05
    logits = _away_from_the_kink(_logits(seed=12), margin)
    x = logits.clone().requires_grad_(True)
    AsymmetricLoss(gamma_pos=gamma_pos, gamma_neg=gamma_neg, margin=margin)(x, LABELS).sum().backward()
    ref_x = logits.clone().requires_grad_(True)
    p = torch.sigmoid(ref_x)
    target = torch.zeros_like(p, dtype=torch.bool)
    pos = LABELS > 0
    target[pos, LABELS[pos] - 1] = True
    p_m = (p - margin).clamp(min=0)
    naive = torch.where(
        target, -((1 - p) ** gamma_pos) * torch.log(p), -(p_m**gamma_neg) * torch.log(1 - p_m)
    )
    (naive.sum(-1) * (LABELS >= 0)).sum().backward()
    torch.testing.assert_close(x.grad, ref_x.grad)


def test_ignored_anchors_and_negatives_below_the_margin_get_nothing():
    logits = _logits(seed=13).requires_grad_(True)
    loss = AsymmetricLoss(gamma_pos=1.0, gamma_neg=4.0, margin=0.2)
    out = loss(logits, LABELS)
    out.sum().backward()
    assert (out[LABELS < 0] == 0).all()
    assert (logits.grad[LABELS < 0] == 0).all()
    # a background anchor whose probabilities all lie at or below the margin: loss 0, gradient 0
    x = torch.full((1, 1, 3), -3.0, dtype=torch.float64, requires_grad=True)  # p = 0.047 < 0.2
    value = loss(x, torch.tensor([[0]]))
    value.sum().backward()
    assert value.item() == 0.0 and (x.grad == 0).all()


@pytest.mark.parametrize(
    ("gamma_pos", "gamma_neg", "margin"), [(0.0, 4.0, 0.05), (0.5, 0.5, 0.0), (1.0, 2.0, 0.1)]
)
def test_saturated_logits_stay_finite(gamma_pos, gamma_neg, margin):
    logits = torch.tensor([[[120.0, -120.0, 40.0], [-120.0, 120.0, -40.0]]], requires_grad=True)
    labels = torch.tensor([[1, 1]])  # a confident right and a confident wrong positive
    out = AsymmetricLoss(gamma_pos=gamma_pos, gamma_neg=gamma_neg, margin=margin)(logits, labels)
    out.sum().backward()
    assert torch.isfinite(out).all() and torch.isfinite(logits.grad).all()
    assert out[0, 1] > 100  # -log sigmoid(-120) = 120, not an overflow to inf


def test_options_are_checked_and_named():
    assert CLS_LOSSES["asymmetric"].activation == "sigmoid"
    assert CLS_LOSSES.options("asymmetric") == ["gamma_pos", "gamma_neg", "margin"]
    with pytest.raises(ConfigError, match=r"^loss\.asymmetric\.gamma_neg must be >= 0"):
        CLS_LOSSES.build("asymmetric", {"gamma_neg": -1.0}, key="loss.asymmetric")
    with pytest.raises(ConfigError, match=r"^loss\.asymmetric\.margin must lie in \[0, 1\)"):
        CLS_LOSSES.build("asymmetric", {"margin": 1.0}, key="loss.asymmetric")
    with pytest.raises(ConfigError, match=r"^loss\.asymmetric\.gamma_pos must be >= 0"):
        CLS_LOSSES.build("asymmetric", {"gamma_pos": -0.5}, key="loss.asymmetric")
