"""Class weights from the training set's frequencies (``class_weights: inverse | inverse_sqrt |
effective_number``) for ``softmax_ce``, ``focal`` and ``balanced_ce``."""

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
    BalancedCrossEntropy,
    FocalLoss,
    SoftmaxCrossEntropy,
    frequency_weights,
)
from detmine.structures import TrainingSetFacts


@dataclass
class FakeFacts:
    """A training set of ``K = 3`` classes with 100, 10 and 1 objects."""

    instances: list[int] = field(default_factory=lambda: [100, 10, 1])
    anchors: list[int] = field(default_factory=lambda: [5000, 400, 30, 2])

    @property
    def class_names(self) -> list[str]:
        return [f"c{k}" for k in range(1, len(self.instances) + 1)]

    def instances_per_class(self) -> list[int]:
        return list(self.instances)

    def images_per_class(self) -> list[int]:
        return [min(n, 5) for n in self.instances]

    def anchor_label_counts(self) -> list[int]:
        return list(self.anchors)


# Worked by hand from counts n = [100, 10, 1], then scaled to mean 1 (x 3 / sum):
#   inverse:       1/n = [0.01, 0.1, 1], sum 1.11           -> [3/111, 30/111, 300/111]
#   inverse_sqrt:  1/sqrt(n) = [0.1, 0.3162278, 1], sum 1.4162278 -> [0.2118303, 0.6698663, 2.1183033]
#   effective_number, beta 0.9: (1 - b)/(1 - b^n) = 0.1/[0.99997344, 0.65132156, 0.1]
#                  = [0.10000266, 0.15353399, 1], sum 1.25353665 -> [0.2393292, 0.3674420, 2.3932288]
EXPECTED = {
    ("inverse", 0.9): [3 / 111, 30 / 111, 300 / 111],
    ("inverse_sqrt", 0.9): [0.2118303, 0.6698663, 2.1183033],
    ("effective_number", 0.9): [0.2393292, 0.3674420, 2.3932288],
}


def test_fake_facts_implement_the_protocol():
    assert isinstance(FakeFacts(), TrainingSetFacts)


@pytest.mark.parametrize(("scheme", "beta"), list(EXPECTED))
def test_each_scheme_against_hand_computed_numbers(scheme, beta):
    weights = frequency_weights([100, 10, 1], scheme, beta)
    assert weights == pytest.approx(EXPECTED[scheme, beta], rel=1e-6)
    assert sum(weights) / len(weights) == pytest.approx(1.0)


@pytest.mark.parametrize("scheme", ["inverse", "inverse_sqrt", "effective_number"])
def test_weights_have_mean_one_and_order_rare_classes_first(scheme):
    counts = [7, 3000, 1, 45, 45, 800]
    weights = frequency_weights(counts, scheme, 0.99)
    assert np.mean(weights) == pytest.approx(1.0)
    assert weights[3] == weights[4]  # equal counts, equal weights
    order = np.argsort(counts)
    assert np.all(np.diff(np.asarray(weights)[order]) <= 0)  # fewer objects, more weight


def test_effective_number_limits_and_absent_classes():
    # beta = 0: every class's effective number is 1 -> equal weights
    assert frequency_weights([100, 10, 1], "effective_number", 0.0) == pytest.approx([1.0, 1.0, 1.0])
    # beta -> 1: (1 - b)/(1 - b^n) -> 1/n, the inverse frequency
    assert frequency_weights([100, 10, 1], "effective_number", 1 - 1e-9) == pytest.approx(
        EXPECTED["inverse", 0.9], rel=1e-6
    )
    # a class absent from the training set counts as one object: [1, 4] -> 1/[1, 4], x 2 / 1.25
    assert frequency_weights([0, 4], "inverse", 0.9) == pytest.approx([1.6, 0.4])
    with pytest.raises(ValueError, match="beta"):
        frequency_weights([1, 2], "effective_number", 1.0)
    with pytest.raises(ValueError, match="unknown class weight scheme"):
        frequency_weights([1, 2], "log", 0.9)


@pytest.mark.parametrize("loss_cls", [FocalLoss, BalancedCrossEntropy])
def test_sigmoid_losses_get_the_k_scheme_weights(loss_cls):
    loss = loss_cls(class_weights="inverse", facts=FakeFacts())
    assert loss.class_weights.tolist() == pytest.approx(EXPECTED["inverse", 0.9])
    loss = loss_cls(class_weights="effective_number", class_weights_beta=0.9, facts=FakeFacts())
    assert loss.class_weights.tolist() == pytest.approx(EXPECTED["effective_number", 0.9], rel=1e-6)


def test_softmax_gets_background_one_first_and_weighted_values():
    loss = SoftmaxCrossEntropy(class_weights="inverse_sqrt", facts=FakeFacts())
    expected = [1.0, *EXPECTED["inverse_sqrt", 0.9]]
    assert loss.class_weights.tolist() == pytest.approx(expected, rel=1e-6)
    # the value: w[y] * -log softmax(x)[y], written out for every anchor
    gen = torch.Generator().manual_seed(0)
    logits = torch.randn(2, 9, 4, generator=gen, dtype=torch.float64) * 2
    labels = torch.tensor([[0, 1, 2, 3, -1, 0, 3, 2, 1], [3, 3, 0, -1, 1, 2, 0, 0, 1]])
    out = loss(logits, labels)
    x = logits.numpy()
    for b in range(2):
        for a in range(9):
            y = int(labels[b, a])
            ref = 0.0 if y < 0 else expected[y] * (math.log(np.exp(x[b, a]).sum()) - x[b, a, y])
            assert float(out[b, a]) == pytest.approx(ref, rel=1e-6, abs=1e-12)


def test_hand_given_lists_ignore_the_facts():
    loss = FocalLoss(class_weights=[1, 2, 3], facts=FakeFacts())
    assert loss.class_weights.tolist() == [1.0, 2.0, 3.0]
    assert SoftmaxCrossEntropy(class_weights=None, facts=FakeFacts()).class_weights is None
    # kept out of checkpoints as before
    assert dict(SoftmaxCrossEntropy(class_weights="inverse", facts=FakeFacts()).state_dict()) == {}


def test_a_scheme_without_facts_says_it_is_counted_from_the_training_set():
    with pytest.raises(OptionError, match="counted from the training set") as info:
        FocalLoss(class_weights="inverse")
    assert info.value.option == "class_weights"
    with pytest.raises(ConfigError, match=r"^loss\.softmax_ce\.class_weights 'effective_number' is counted"):
        CLS_LOSSES.build("softmax_ce", {"class_weights": "effective_number"}, key="loss.softmax_ce")
    with pytest.raises(ConfigError, match=r"^loss\.focal\.class_weights_beta must lie in \[0, 1\)"):
        CLS_LOSSES.build("focal", {"class_weights_beta": 1.0}, key="loss.focal", facts=FakeFacts())
    with pytest.raises(OptionError, match="must be a list of weights or one of"):
        BalancedCrossEntropy(class_weights="inverse_frequency", facts=FakeFacts())


def test_the_table_checks_the_scheme_name_and_hides_facts():
    assert "facts" not in CLS_LOSSES.options("focal")
    assert CLS_LOSSES.options("focal") == ["alpha", "gamma", "class_weights", "class_weights_beta"]
    with pytest.raises(ConfigError, match=r"loss\.focal\.class_weights.*did you mean 'inverse_sqrt'"):
        CLS_LOSSES.check("focal", {"class_weights": "inverse_sqr"}, key="loss.focal", name_key="loss.cls")
    with pytest.raises(ConfigError, match=r"unknown config key 'loss\.focal\.facts'"):
        CLS_LOSSES.check("focal", {"facts": 1}, key="loss.focal", name_key="loss.cls")


def test_build_through_the_table_with_facts_equals_the_hand_given_weights():
    loss = CLS_LOSSES.build("focal", {"class_weights": "inverse"}, key="loss.focal", facts=FakeFacts())
    gen = torch.Generator().manual_seed(1)
    logits = torch.randn(2, 20, 3, generator=gen) * 2
    labels = torch.randint(-1, 4, (2, 20), generator=gen)
    by_hand = FocalLoss(class_weights=EXPECTED["inverse", 0.9])(logits, labels)
    torch.testing.assert_close(loss(logits, labels), by_hand)


@pytest.mark.parametrize(
    ("activation", "name", "expected"),
    [
        ("softmax", "softmax_ce", [1.0, *EXPECTED["inverse", 0.9]]),
        ("sigmoid", "focal", EXPECTED["inverse", 0.9]),
        ("sigmoid", "balanced_ce", EXPECTED["inverse", 0.9]),
    ],
)
def test_build_criterion_hands_the_facts_to_the_loss(activation, name, expected):
    criterion = build_criterion(
        activation,
        BoxCoder(weights=(1.0, 1.0, 1.0, 1.0)),
        loss={"cls": name, name: {"class_weights": "inverse"}},
        facts=FakeFacts(),
    )
    assert criterion.cls_loss.class_weights.tolist() == pytest.approx(expected)
    with pytest.raises(ConfigError, match=rf"^loss\.{name}\.class_weights 'inverse' is counted"):
        build_criterion(
            activation,
            BoxCoder(weights=(1.0, 1.0, 1.0, 1.0)),
            loss={"cls": name, name: {"class_weights": "inverse"}},
        )
