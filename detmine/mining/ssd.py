"""The ``ssd`` miner: all positives + the hardest negatives, ``neg_pos_ratio`` per positive.

This is the hard negative mining of the SSD paper (Liu et al. 2016, sec. 2.2)
as torchvision's ``SSD.compute_loss`` implements it, batched over the images
with one sort per row and no Python loop over images.
"""

from __future__ import annotations

import torch
from torch import Tensor

from detmine.errors import OptionError
from detmine.mining._common import check_count, check_miner_inputs
from detmine.mining.stream import RandomStream, StreamMiner


class SSDMiner:
    """Per image: every positive, plus the ``neg_pos_ratio x positives`` highest-loss negatives.

    Per image ``b`` the number of negatives is
    ``min(max(floor(neg_pos_ratio * P_b), min_negatives), N_b)`` where ``P_b`` /
    ``N_b`` are its positive (label > 0) / background (label 0) counts. With
    ``min_negatives = 0`` (the SSD paper, torchvision, mmdetection) an image
    without objects contributes nothing; ``min_negatives > 0`` lets such images
    teach the classifier what background looks like.

    Same selection as torchvision. When the cut is unambiguous (no tie between the
    last kept and the first dropped negative of any image) a ``topk`` finds it,
    several times faster than a sort; otherwise the negatives are ranked with
    torchvision's ``sort(descending=True)`` over the same tensor (loss, ``-inf`` on
    non-negatives), so ties are broken exactly as torchvision breaks them on the
    same device. Costs one or two host syncs (the batch's top-k budget). Two
    documented differences: ignored anchors (label -1, which torchvision has no
    notion of) are never selected, and the count is clamped to the negatives
    available: the selected set is the same, but when ``3 P_b > N_b`` torchvision's
    rank test also picks positives as "negatives", so its loss counts their CE
    twice; a mask cannot.

    The classification loss of the selection is divided by the number of
    positives (``normalize_by = "positives"``), as the SSD paper's
    ``L = (L_conf + alpha L_loc) / N`` with ``N`` the matched default boxes.

    Call: ``miner(cls_loss [B, A], labels [B, A], boxes=None) -> bool [B, A]``;
    ``boxes`` is accepted and unused (``box_source = None``).

    Args:
        neg_pos_ratio: negatives per positive (SSD: 3). May be fractional.
        min_negatives: negatives kept per image even with few or no positives.
    """

    box_source: str | None = None
    normalize_by: str = "positives"

    def __init__(self, *, neg_pos_ratio: float = 3, min_negatives: int = 0) -> None:
        if (
            isinstance(neg_pos_ratio, bool)
            or not isinstance(neg_pos_ratio, (int, float))
            or neg_pos_ratio < 0
        ):
            raise OptionError("neg_pos_ratio", f"must be a number >= 0, got {neg_pos_ratio!r}")
        check_count("min_negatives", min_negatives, 0)
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

        k = int(num_neg.max()) if num_neg.numel() else 0  # host sync: the top-k budget of the batch
        if k == 0:
            return positive
        if k < num_anchors // 2:
            hard_negative = self._top_negatives(negative_loss, num_neg, k + 1)
            if hard_negative is not None:
                return positive | hard_negative
        order = negative_loss.sort(dim=1, descending=True).indices  # [B, A], torchvision's sort
        # Position r in the sorted row is kept iff r < num_neg; scattering that mask back
        # through the permutation gives the same set as torchvision's second argsort
        # (rank = inverse permutation) at O(A) instead of O(A log A).
        keep_sorted = torch.arange(num_anchors, device=labels.device) < num_neg
        return positive | torch.zeros_like(negative).scatter_(1, order, keep_sorted)

    @staticmethod
    def _top_negatives(negative_loss: Tensor, num_neg: Tensor, k: int) -> Tensor | None:
        """The fast path: ``topk`` (several times cheaper than a full sort when ``k`` is
        small) when its choice is unambiguous, i.e. no row has a tie across its cut
        (loss of its ``num_neg``-th and ``num_neg + 1``-th negative equal). Returns the
        ``[B, A]`` bool mask, or ``None`` when a tie makes the order of the sort matter."""
        values, order = negative_loss.topk(k, dim=1)  # [B, k], k > max(num_neg)
        last_in = values.gather(1, (num_neg - 1).clamp(min=0))
        first_out = values.gather(1, num_neg)
        if bool(((num_neg > 0) & (last_in == first_out)).any()):  # host sync
            return None
        keep_sorted = torch.arange(k, device=values.device) < num_neg
        return torch.zeros_like(negative_loss, dtype=torch.bool).scatter_(1, order, keep_sorted)

    def __repr__(self) -> str:
        return f"SSDMiner(neg_pos_ratio={self.neg_pos_ratio}, min_negatives={self.min_negatives})"


class SSDQuotaMiner(StreamMiner):
    """Base of the miners that keep the ``ssd`` miner's quota of negatives per image but choose
    them another way (``soft``, ``pool``): ``self.ssd`` holds the quota options (``neg_pos_ratio``,
    ``min_negatives``), ``self.stream`` the private random stream (``seed``)."""

    box_source: str | None = None
    normalize_by: str = "positives"

    def __init__(self, *, neg_pos_ratio: float, min_negatives: int, seed: int | None) -> None:
        self.ssd = SSDMiner(neg_pos_ratio=neg_pos_ratio, min_negatives=min_negatives)
        self.stream = RandomStream(seed)

    @property
    def neg_pos_ratio(self) -> float:
        return self.ssd.neg_pos_ratio

    @property
    def min_negatives(self) -> int:
        return self.ssd.min_negatives
