"""Logit-adjusted losses (Menon et al., ICLR 2021): ``base(x + tau * log(pi), y)`` with the
priors counted from the training set's anchors."""

from __future__ import annotations

import math
from dataclasses import dataclass, field

import numpy as np
import pytest
import torch

from detmine.box_coder import BoxCoder
from detmine.criterion import build_criterion
from detmine.errors import ConfigError, OptionError
from detmine.losses import (
    CLS_LOSSES,
    FocalLoss,
    LogitAdjustedCrossEntropy,
    LogitAdjustedFocalLoss,
    SoftmaxCrossEntropy,
)


@dataclass
class FakeFacts:
    """``K = 3`` classes; anchors: 1000 background, 50 / 5 / 0 matched to classes 1 / 2 / 3."""

    anchors: list[int] = field(default_factory=lambda: [1000, 50, 5, 0])

    @property
    def class_names(self) -> list[str]:
        return ["a", "b", "c"]

    def instances_per_class(self) -> list[int]:
        return [20, 3, 1]

    def images_per_class(self) -> list[int]:
        return [10, 2, 1]

    def anchor_label_counts(self) -> list[int]:
        return list(self.anchors)


# The class with no anchor is clamped to a count of 1 before normalising:
#   softmax: [1000, 50, 5, 1] / 1056 over the K + 1 columns (background first)
#   sigmoid: [50, 5, 1] / 56 over the K classes (the positive anchors)
SOFTMAX_PRIOR = [1000 / 1056, 50 / 1056, 5 / 1056, 1 / 1056]
SIGMOID_PRIOR = [50 / 56, 5 / 56, 1 / 56]

LABELS = torch.tensor([[0, 1, 2, 3, -1, 0, 3, 2], [3, 0, 0, -1, 1, 2, 0, 1]])


def _logits(columns: int, seed: int = 0, dtype=torch.float64) -> torch.Tensor:
    gen = torch.Generator().manual_seed(seed)
    return torch.randn(2, 8, columns, generator=gen, dtype=dtype) * 2


def reference_ce(logits, labels, tau):
    """``-log softmax(x + tau log pi)[y]`` anchor by anchor (0 on ignored anchors)."""
    x = logits.double().numpy() + tau * np.log(SOFTMAX_PRIOR)
    out = np.zeros(labels.shape)
    for b, a in np.ndindex(*labels.shape):
        y = int(labels[b, a])
        if y >= 0:
            out[b, a] = math.log(np.exp(x[b, a]).sum()) - x[b, a, y]
    return torch.from_numpy(out)


def reference_focal(logits, labels, tau, alpha, gamma):
    """Lin et al.'s focal loss (eq. 5) on ``x + tau log pi``, one element at a time."""
    x = logits.double().numpy() + tau * np.log(SIGMOID_PRIOR)
    out = np.zeros(labels.shape)
    for b, a, k in np.ndindex(*x.shape):
        y = int(labels[b, a])
        if y < 0:
            continue
        p = 1.0 / (1.0 + math.exp(-x[b, a, k]))
        if y == k + 1:
            out[b, a] += -alpha * (1 - p) ** gamma * math.log(p)
        else:
            out[b, a] += -(1 - alpha) * p**gamma * math.log(1 - p)
    return torch.from_numpy(out)


@pytest.mark.parametrize("tau", [1.0, 0.5, 2.0])
def test_logit_adjusted_ce_against_the_definition(tau):
    logits = _logits(4)
    loss = LogitAdjustedCrossEntropy(tau=tau, facts=FakeFacts())
    torch.testing.assert_close(loss(logits, LABELS), reference_ce(logits, LABELS, tau))


@pytest.mark.parametrize(("tau", "alpha", "gamma"), [(1.0, 0.25, 2.0), (0.7, 0.4, 1.5), (1.0, 0.25, 0.0)])
def test_logit_adjusted_focal_against_the_definition(tau, alpha, gamma):
    logits = _logits(3, seed=1)
    loss = LogitAdjustedFocalLoss(alpha=alpha, gamma=gamma, tau=tau, facts=FakeFacts())
    torch.testing.assert_close(loss(logits, LABELS), reference_focal(logits, LABELS, tau, alpha, gamma))


def test_the_offset_is_tau_log_prior():
    ce = LogitAdjustedCrossEntropy(tau=0.5, facts=FakeFacts())
    focal = LogitAdjustedFocalLoss(tau=1.5, facts=FakeFacts())
    torch.testing.assert_close(ce.prior, torch.tensor(SOFTMAX_PRIOR))
    torch.testing.assert_close(focal.prior, torch.tensor(SIGMOID_PRIOR))
    torch.testing.assert_close(
        ce.offset(_logits(4)), 0.5 * torch.log(torch.tensor(SOFTMAX_PRIOR, dtype=torch.float64))
    )
    torch.testing.assert_close(
        focal.offset(_logits(3)), 1.5 * torch.log(torch.tensor(SIGMOID_PRIOR, dtype=torch.float64))
    )
    # removing the offset from the logits gives back the base loss
    logits = _logits(4, seed=2)
    torch.testing.assert_close(
        ce(logits - 0.5 * torch.log(torch.tensor(SOFTMAX_PRIOR, dtype=torch.float64)), LABELS),
        SoftmaxCrossEntropy()(logits, LABELS),
    )


def test_tau_zero_is_the_base_loss():
    softmax_logits, sigmoid_logits = _logits(4, seed=3), _logits(3, seed=4)
    torch.testing.assert_close(
        LogitAdjustedCrossEntropy(tau=0.0, facts=FakeFacts())(softmax_logits, LABELS),
        SoftmaxCrossEntropy()(softmax_logits, LABELS),
    )
    torch.testing.assert_close(
        LogitAdjustedFocalLoss(alpha=0.3, gamma=1.0, tau=0.0, facts=FakeFacts())(sigmoid_logits, LABELS),
        FocalLoss(alpha=0.3, gamma=1.0)(sigmoid_logits, LABELS),
    )


@pytest.mark.parametrize("name", ["logit_adjusted_ce", "logit_adjusted_focal"])
def test_ignored_anchors_give_zero_and_no_gradient_and_the_logits_are_untouched(name):
    columns = 4 if name == "logit_adjusted_ce" else 3
    logits = _logits(columns, seed=5).requires_grad_(True)
    before = logits.detach().clone()
    loss = CLS_LOSSES.build(name, {}, key=f"loss.{name}", facts=FakeFacts())(logits, LABELS)
    loss.sum().backward()
    assert (loss[LABELS < 0] == 0).all()
    assert (logits.grad[LABELS < 0] == 0).all()
    assert (logits.grad[LABELS >= 0] != 0).any()
    assert torch.equal(logits.detach(), before)  # prediction uses the raw logits: no in-place offset


@pytest.mark.parametrize("name", ["logit_adjusted_ce", "logit_adjusted_focal"])
def test_gradcheck(name):
    columns = 4 if name == "logit_adjusted_ce" else 3
    loss = CLS_LOSSES.build(name, {"tau": 0.8}, key=f"loss.{name}", facts=FakeFacts())
    logits = _logits(columns, seed=6).requires_grad_(True)
    assert torch.autograd.gradcheck(lambda x: loss(x, LABELS), (logits,))


def test_without_facts_or_with_a_bad_tau_the_config_key_is_named():
    with pytest.raises(OptionError, match="counted from the training set") as info:
        LogitAdjustedCrossEntropy()
    assert info.value.option == "tau"
    with pytest.raises(
        ConfigError, match=r"^loss\.logit_adjusted_focal\.tau adjusts the logits by class priors"
    ):
        CLS_LOSSES.build("logit_adjusted_focal", {}, key="loss.logit_adjusted_focal")
    with pytest.raises(ConfigError, match=r"^loss\.logit_adjusted_ce\.tau must be >= 0"):
        CLS_LOSSES.build("logit_adjusted_ce", {"tau": -1.0}, key="loss.logit_adjusted_ce", facts=FakeFacts())
    with pytest.raises(ConfigError, match=r"^loss\.logit_adjusted_focal\.gamma must be >= 0"):
        CLS_LOSSES.build(
            "logit_adjusted_focal", {"gamma": -1.0}, key="loss.logit_adjusted_focal", facts=FakeFacts()
        )
    with pytest.raises(ConfigError, match=r"^loss\.logit_adjusted_focal\.alpha must lie in \[0, 1\]"):
        CLS_LOSSES.build(
            "logit_adjusted_focal", {"alpha": 1.5}, key="loss.logit_adjusted_focal", facts=FakeFacts()
        )


def test_the_priors_must_fit_the_head_and_stay_out_of_checkpoints():
    loss = CLS_LOSSES.build("logit_adjusted_ce", {}, key="loss.logit_adjusted_ce", facts=FakeFacts())
    with pytest.raises(
        ConfigError, match=r"loss\.logit_adjusted_ce\.tau: .* 4 priors but the softmax head has 6"
    ):
        loss(_logits(6), LABELS)
    assert dict(loss.state_dict()) == {}
    assert loss.to(torch.float64).prior.dtype == torch.float64
    assert CLS_LOSSES.options("logit_adjusted_focal") == ["alpha", "gamma", "tau"]
    assert CLS_LOSSES.options("logit_adjusted_ce") == ["tau"]


@pytest.mark.parametrize(
    ("activation", "name", "columns"),
    [("softmax", "logit_adjusted_ce", 4), ("sigmoid", "logit_adjusted_focal", 3)],
)
def test_build_criterion_hands_the_facts_over(activation, name, columns):
    criterion = build_criterion(
        activation,
        BoxCoder(weights=(1.0, 1.0, 1.0, 1.0)),
        loss={"cls": name, name: {"tau": 1.0}},
        facts=FakeFacts(),
    )
    assert criterion.cls_loss.prior.shape == (columns,)
    with pytest.raises(ConfigError, match=rf"^loss\.{name}\.tau adjusts the logits"):
        build_criterion(activation, BoxCoder(weights=(1.0, 1.0, 1.0, 1.0)), loss={"cls": name})
