"""The ``ssd`` miner: all positives + the hardest negatives, ``neg_pos_ratio`` per positive.

This is the hard negative mining of the SSD paper (Liu et al. 2016, sec. 2.2)
as torchvision's ``SSD.compute_loss`` implements it, batched over the images
with one sort per row and no Python loop over images.
"""

from __future__ import annotations

import torch
from torch import Tensor

from detmine.errors import ConfigError
from detmine.mining.all_anchors import check_miner_inputs


class SSDMiner:
    """Per image: every positive, plus the ``neg_pos_ratio x positives`` highest-loss negatives.

    Per image ``b`` the number of negatives is
    ``min(max(floor(neg_pos_ratio * P_b), min_negatives), N_b)`` where ``P_b`` /
    ``N_b`` are its positive (label > 0) / background (label 0) counts. With
    ``min_negatives = 0`` (the SSD paper, torchvision, mmdetection) an image
    without objects contributes nothing; ``min_negatives > 0`` lets such images
    teach the classifier what background looks like.

    Same selection as torchvision: the negatives are ranked with the same
    ``sort(descending=True)`` over the same tensor (loss, ``-inf`` on non-negatives),
    so ties are broken exactly as torchvision breaks them on the same device. Two
    documented differences: ignored anchors (label -1, which torchvision has no
    notion of) are never selected, and the count is clamped to the negatives
    available (torchvision then re-counts positives as negatives).

    Call: ``miner(cls_loss [B, A], labels [B, A], boxes=None) -> bool [B, A]``;
    ``boxes`` is accepted and unused (``needs_boxes = False``).

    Args:
        neg_pos_ratio: negatives per positive (SSD: 3). May be fractional.
        min_negatives: negatives kept per image even with few or no positives.
    """

    needs_boxes: bool = False

    def __init__(self, *, neg_pos_ratio: float = 3, min_negatives: int = 0) -> None:
        if (
            isinstance(neg_pos_ratio, bool)
            or not isinstance(neg_pos_ratio, (int, float))
            or neg_pos_ratio < 0
        ):
            raise ConfigError(f"mining.neg_pos_ratio must be a number >= 0, got {neg_pos_ratio!r}")
        if isinstance(min_negatives, bool) or not isinstance(min_negatives, int) or min_negatives < 0:
            raise ConfigError(f"mining.min_negatives must be an integer >= 0, got {min_negatives!r}")
        self.neg_pos_ratio = neg_pos_ratio
        self.min_negatives = min_negatives

    def num_negatives(self, labels: Tensor) -> Tensor:
        """``[B, 1]`` int64: how many negatives each image keeps (before the clamp to ``N_b``)."""
        num_pos = (labels > 0).sum(dim=1, keepdim=True)
        if isinstance(self.neg_pos_ratio, int):
            num_neg = num_pos * self.neg_pos_ratio
        else:
            num_neg = torch.floor(num_pos.double() * self.neg_pos_ratio).long()
        return num_neg.clamp(min=self.min_negatives)

    def __call__(self, cls_loss: Tensor, labels: Tensor, boxes: Tensor | None = None) -> Tensor:
        _, num_anchors = check_miner_inputs("ssd", cls_loss, labels, boxes)
        positive = labels > 0
        negative = labels == 0
        num_neg = torch.minimum(self.num_negatives(labels), negative.sum(dim=1, keepdim=True))

        negative_loss = cls_loss.detach().masked_fill(~negative, float("-inf"))
        order = negative_loss.sort(dim=1, descending=True).indices  # [B, A]
        # Position r in the sorted row is kept iff r < num_neg; scattering that mask back
        # through the permutation gives the same set as torchvision's second argsort
        # (rank = inverse permutation) at O(A) instead of O(A log A).
        keep_sorted = torch.arange(num_anchors, device=labels.device) < num_neg
        hard_negative = torch.zeros_like(negative).scatter_(1, order, keep_sorted)
        return positive | hard_negative

    def __repr__(self) -> str:
        return f"SSDMiner(neg_pos_ratio={self.neg_pos_ratio}, min_negatives={self.min_negatives})"
