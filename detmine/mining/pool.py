"""The ``pool`` miner: the ``ssd`` quota of hardest negatives within a random pool of negatives."""

from __future__ import annotations

import torch
from torch import Tensor

from detmine.mining._common import check_count, check_miner_inputs
from detmine.mining.ssd import SSDQuotaMiner


class PoolMiner(SSDQuotaMiner):
    """Per image: every positive, plus the hardest negatives of a uniformly drawn pool.

    Per image ``b`` a pool of ``min(pool_size, N_b)`` negatives is drawn uniformly without
    replacement (``N_b``: its background anchors); then the ``ssd`` miner runs with the
    negatives outside the pool treated as ignored: it keeps the ``neg_pos_ratio x
    positives`` (at least ``min_negatives``) highest-loss negatives of the pool, the quota
    clamped to the pool's size. A pool holding every negative is the ``ssd`` miner (same
    selection, same tie-breaking); a pool no larger than the quota is kept whole: uniform
    random sampling. In between, ``pool_size`` sets how hard the negatives are: the hardest
    of ``pool_size`` random ones, a cheap, bounded alternative to global top-k on very many
    anchors, and less prone to training on the few hardest (often mislabelled) ones.

    Batched: one uniform key per anchor and one ``topk`` over the batch draw the pools.
    The classification loss is divided by the number of positives
    (``normalize_by = "positives"``), as ``ssd``'s.

    Call: ``miner(cls_loss [B, A], labels [B, A], boxes=None) -> bool [B, A]``; ``boxes`` is
    accepted and unused (``box_source = None``).

    Args:
        neg_pos_ratio: negatives per positive (SSD: 3). May be fractional.
        min_negatives: negatives kept per image even with few or no positives.
        pool_size: negatives drawn per image before ranking (``>= 1``).
        seed: the pools come from a private :class:`~detmine.mining.stream.RandomStream`
            (resumable, different per DDP process); ``None`` uses torch's global RNG.
    """

    def __init__(
        self,
        *,
        neg_pos_ratio: float = 3,
        min_negatives: int = 0,
        pool_size: int = 1024,
        seed: int | None = None,
    ) -> None:
        super().__init__(neg_pos_ratio=neg_pos_ratio, min_negatives=min_negatives, seed=seed)
        self.pool_size = check_count("pool_size", pool_size, 1)

    def pool(self, labels: Tensor, generator: torch.Generator | None) -> Tensor:
        """``[B, A]`` bool: per image ``min(pool_size, N_b)`` negatives drawn uniformly
        without replacement (every negative when ``pool_size >= A``)."""
        negative = labels == 0
        num_images, num_anchors = labels.shape
        if self.pool_size >= num_anchors:
            return negative
        keys = torch.rand((num_images, num_anchors), device=labels.device, generator=generator)
        order = keys.masked_fill_(~negative, -1.0).topk(self.pool_size, dim=1).indices  # negatives' keys >= 0
        in_pool = torch.arange(self.pool_size, device=labels.device) < negative.sum(dim=1, keepdim=True)
        return torch.zeros_like(negative).scatter_(1, order, in_pool)

    def __call__(self, cls_loss: Tensor, labels: Tensor, boxes: Tensor | None = None) -> Tensor:
        check_miner_inputs("pool", cls_loss, labels, boxes)
        # The stream moves on every call, whatever the batch holds: DDP processes stay in step.
        generator = self.stream.generator(labels.device)
        outside_pool = (labels == 0) & ~self.pool(labels, generator)
        return self.ssd(cls_loss, labels.masked_fill(outside_pool, -1), boxes)

    def __repr__(self) -> str:
        return (
            f"PoolMiner(neg_pos_ratio={self.neg_pos_ratio}, min_negatives={self.min_negatives}, "
            f"pool_size={self.pool_size}, seed={self.seed})"
        )
