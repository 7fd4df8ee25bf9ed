"""HeadOutputs carries the head's facts: its activation (what the columns mean) and the anchors
per pyramid level, checked when it is made."""

import pytest
import torch

from detmine.structures import CLS_ACTIVATIONS, HEAD_DEFAULTS, HeadOutputs


def outputs(logits, activation, level_counts=None):
    num_anchors = logits.shape[1]
    counts = (num_anchors,) if level_counts is None else level_counts
    return HeadOutputs(
        logits, torch.zeros(*logits.shape[:2], 4), torch.zeros(num_anchors, 4), activation, counts
    )


def test_activation_table_says_what_the_columns_mean():
    assert set(CLS_ACTIVATIONS) == set(HEAD_DEFAULTS) == {"softmax", "sigmoid"}
    logits = torch.randn(2, 5, 4, generator=torch.Generator().manual_seed(0))
    soft, sig = outputs(logits, "softmax"), outputs(logits, "sigmoid")
    assert (soft.num_classes, sig.num_classes) == (3, 4)
    torch.testing.assert_close(soft.class_scores(), logits.softmax(-1)[..., 1:], rtol=0, atol=0)
    torch.testing.assert_close(sig.class_scores(), logits.sigmoid(), rtol=0, atol=0)
    torch.testing.assert_close(soft.foreground_scores(), 1 - logits.softmax(-1)[..., 0])
    torch.testing.assert_close(sig.foreground_scores(), logits.sigmoid().max(-1).values)
    assert (
        soft.class_scores().dtype == torch.float32 == outputs(logits.half(), "sigmoid").class_scores().dtype
    )


def test_bad_head_facts_are_refused():
    logits = torch.zeros(1, 3, 2)
    with pytest.raises(ValueError, match="cls_activation must be one of 'softmax', 'sigmoid', got 'relu'"):
        outputs(logits, "relu")
    with pytest.raises(ValueError, match=r"level_counts \(1, 1\) add up to 2, not to the 3 anchors"):
        outputs(logits, "sigmoid", [1, 1])
    assert outputs(logits, "sigmoid", [2, 1]).level_counts == (2, 1)
