"""The ssd miner against torchvision's SSD.compute_loss.

torchvision's selection is read off the gradient: its classification loss is a sum
of per-anchor cross-entropies over the anchors it selects, so exactly those rows of
``cls_logits`` receive a non-zero gradient (softmax - one-hot is never zero).
"""

from types import SimpleNamespace

import pytest
import torch
import torch.nn.functional as F
from torchvision.models.detection import _utils as det_utils
from torchvision.models.detection.ssd import SSD

from detmine.mining import SSDMiner

NUM_CLASSES = 6  # K + 1 columns


def _random_boxes(n: int, generator: torch.Generator) -> torch.Tensor:
    xy = torch.rand(n, 2, generator=generator) * 200
    wh = torch.rand(n, 2, generator=generator) * 60 + 4
    return torch.cat([xy, xy + wh], dim=1)


def _problem(num_positives: list[int], num_anchors: int, seed: int, tied: bool = False):
    """Random SSD inputs: targets, matched_idxs with the given positives per image, logits."""
    g = torch.Generator().manual_seed(seed)
    targets, matched, anchors = [], [], []
    for n_pos in num_positives:
        num_gt = 3
        targets.append(
            {
                "boxes": _random_boxes(num_gt, g),
                "labels": torch.randint(1, NUM_CLASSES, (num_gt,), generator=g),
            }
        )
        m = torch.full((num_anchors,), -1, dtype=torch.long)
        m[torch.randperm(num_anchors, generator=g)[:n_pos]] = torch.randint(0, num_gt, (n_pos,), generator=g)
        matched.append(m)
        anchors.append(_random_boxes(num_anchors, g))
    batch = len(num_positives)
    if tied:  # integer logits: the per-anchor losses take a handful of values, with many ties
        logits = torch.randint(0, 2, (batch, num_anchors, NUM_CLASSES), generator=g).float()
    else:
        logits = torch.randn(batch, num_anchors, NUM_CLASSES, generator=g)
    labels = torch.stack(
        [torch.where(m >= 0, t["labels"][m.clamp(min=0)], 0) for m, t in zip(matched, targets, strict=True)]
    )
    return targets, matched, anchors, logits.requires_grad_(), labels


def _torchvision_selection(targets, matched, anchors, logits) -> torch.Tensor:
    """[B, A] bool: the anchors whose CE enters torchvision's SSD classification loss."""
    fake_ssd = SimpleNamespace(
        box_coder=det_utils.BoxCoder(weights=(10.0, 10.0, 5.0, 5.0)), neg_to_pos_ratio=3
    )
    head_outputs = {"cls_logits": logits, "bbox_regression": torch.zeros(*logits.shape[:2], 4)}
    losses = SSD.compute_loss(fake_ssd, targets, head_outputs, anchors, matched)
    (grad,) = torch.autograd.grad(losses["classification"], logits)
    return grad.abs().sum(-1) > 0


def _our_selection(logits, labels, miner=None) -> torch.Tensor:
    cls_loss = F.cross_entropy(logits.reshape(-1, NUM_CLASSES), labels.reshape(-1), reduction="none").view(
        labels.shape
    )  # the same call torchvision makes
    return (miner or SSDMiner())(cls_loss, labels, None)


@pytest.mark.parametrize("tied", [False, True])
@pytest.mark.parametrize("seed", [0, 1])
@pytest.mark.parametrize(
    "num_positives, num_negatives",
    [
        # image 1 has no positives (torchvision: 0 negatives); image 2 has more than A/4
        # positives, so 3 x positives exceeds the negatives available (clamped); the
        # budget (250) is over A/2: the full-sort path
        ([5, 0, 150, 1, 40], [15, 0, 250, 3, 120]),
        # budget 120 < A/2: the top-k path (or the sort when a tie straddles the cut)
        ([5, 0, 20, 1, 40], [15, 0, 60, 3, 120]),
    ],
)
def test_same_selection_as_torchvision(seed, tied, num_positives, num_negatives):
    targets, matched, anchors, logits, labels = _problem(num_positives, 400, seed, tied)
    expected = _torchvision_selection(targets, matched, anchors, logits)
    selected = _our_selection(logits.detach(), labels)
    assert torch.equal(selected, expected)
    assert (selected & (labels == 0)).sum(1).tolist() == num_negatives
    assert torch.equal(selected & (labels > 0), labels > 0)


def test_top_k_path_is_taken_only_without_a_tie_at_the_cut():
    loss = torch.tensor([[0.9, 0.8, 0.7, 0.7, 0.1, 0.0]])
    assert SSDMiner._top_negatives(loss, torch.tensor([[2]]), 4).tolist() == [[True, True] + [False] * 4]
    assert SSDMiner._top_negatives(loss, torch.tensor([[3]]), 4) is None  # 0.7 | 0.7 straddles the cut
    assert SSDMiner._top_negatives(loss, torch.tensor([[4]]), 5) is not None  # the tie lies inside


def test_ties_are_broken_like_torchvision_with_constant_loss():
    # every negative has the same loss: which ones are chosen is decided by the sort alone
    labels = torch.zeros(2, 64, dtype=torch.long)
    labels[0, [3, 40]] = 2
    labels[1, 10] = 1
    cls_loss = torch.ones(2, 64)
    cls_loss_tv = cls_loss.clone()
    cls_loss_tv[labels > 0] = -float("inf")
    idx = cls_loss_tv.sort(1, descending=True)[1]
    expected = (idx.sort(1)[1] < 3 * (labels > 0).sum(1, keepdim=True)) | (labels > 0)
    assert torch.equal(SSDMiner()(cls_loss, labels, None), expected)


def _assert_hardest(selected, loss, labels):
    for b in range(labels.shape[0]):
        neg = labels[b] == 0
        chosen = loss[b][selected[b] & neg]
        rest = loss[b][~selected[b] & neg]
        if len(chosen) and len(rest):
            assert chosen.min() >= rest.max()


def test_min_negatives_lets_background_images_teach():
    g = torch.Generator().manual_seed(3)
    labels = torch.zeros(3, 300, dtype=torch.long)
    labels[1, :2] = 4  # 2 positives -> 6 < min_negatives
    labels[2, :30] = 1  # 30 positives -> 90 > min_negatives
    loss = torch.rand(3, 300, generator=g)
    selected = SSDMiner(min_negatives=20)(loss, labels, None)
    assert (selected & (labels == 0)).sum(1).tolist() == [20, 20, 90]
    assert torch.equal(selected & (labels > 0), labels > 0)
    _assert_hardest(selected, loss, labels)
    # the SSD paper / torchvision default: a background-only image contributes nothing
    assert not SSDMiner()(loss, labels, None)[0].any()


def test_never_selects_ignored_and_clamps_to_available_negatives():
    g = torch.Generator().manual_seed(4)
    labels = torch.randint(-1, 3, (4, 200), generator=g)  # about a third each: ignore, bg, fg
    labels[3, :190] = -1  # few negatives left: the count is clamped to them
    loss = torch.rand(4, 200, generator=g)
    loss[labels == -1] += 10.0  # ignored anchors are the hardest of all: still never taken
    selected = SSDMiner(neg_pos_ratio=1, min_negatives=5)(loss, labels, None)
    assert not (selected & (labels == -1)).any()
    pos, neg = (labels > 0).sum(1), (labels == 0).sum(1)
    expected = torch.minimum(pos.clamp(min=5), neg)
    assert torch.equal((selected & (labels == 0)).sum(1), expected)
    _assert_hardest(selected, loss, labels)


def test_fractional_ratio_and_detached_ranking():
    labels = torch.zeros(1, 50, dtype=torch.long)
    labels[0, :3] = 1
    loss = torch.rand(1, 50, requires_grad=True)
    selected = SSDMiner(neg_pos_ratio=2.5)(loss * 2, labels, None)  # non-leaf loss with grad
    assert (selected & (labels == 0)).sum().item() == 7  # floor(2.5 * 3)
    assert not selected.requires_grad
