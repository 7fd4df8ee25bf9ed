"""What a miner would keep of each image's anchors, from its quota rule and the anchor labels
alone (no loss, no forward pass): the counts, not which anchors.

The rules are the miners' own (``detmine/mining/``):

- ``all``: every non-ignored anchor;
- ``ssd`` (and ``soft`` / ``pool``, which keep its quota): every positive and
  ``min(max(floor(neg_pos_ratio x P), min_negatives), N)`` negatives (``pool``: at most its
  pool of ``min(pool_size, N)``);
- ``random``: ``p = min(P, floor(pos_fraction x batch_size_per_image))`` positives and
  ``min(N, batch_size_per_image - p)`` negatives;
- ``ohem``: at most ``batch_size_per_image`` anchors (NMS may leave fewer); with
  ``pos_fraction`` at most ``floor(pos_fraction x batch_size_per_image)`` positives, otherwise
  positives and negatives compete on loss, so only bounds are known.

``P`` / ``N`` are an image's positive / background anchors.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np

from detmine.mining import AllAnchorsMiner, OHEMMiner, PoolMiner, RandomMiner, SSDMiner
from detmine.mining.ssd import SSDQuotaMiner


@dataclass(frozen=True)
class MinerQuota:
    """Per image what the miner keeps (``I`` images).

    Attributes:
        miner: the miner (its repr).
        rule: the rule, in words.
        positives: int64 ``[I]``: positives kept (an upper bound unless ``exact``).
        negatives: int64 ``[I]``: negatives kept (an upper bound unless ``exact``).
        exact: True when the counts are what the miner keeps; False when they are upper bounds
            (``ohem``: NMS and the loss ranking decide the rest).
    """

    miner: str
    rule: str
    positives: np.ndarray
    negatives: np.ndarray
    exact: bool = True


def _ssd_negatives(miner: SSDMiner, positives: np.ndarray, negatives: np.ndarray) -> np.ndarray:
    """``SSDMiner.num_negatives`` clamped to the negatives available, on counts."""
    ratio = miner.neg_pos_ratio
    wanted = positives * ratio if isinstance(ratio, int) else np.floor(positives.astype(np.float64) * ratio)
    return np.minimum(np.maximum(wanted.astype(np.int64), miner.min_negatives), negatives)


def miner_quota(miner: Any, positives: np.ndarray, negatives: np.ndarray) -> MinerQuota | None:
    """:class:`MinerQuota` of ``miner`` for images with ``positives [I]`` / ``negatives [I]``
    anchors; None for a miner whose quota rule is not known here (a plugin's)."""
    pos = np.asarray(positives, np.int64)
    neg = np.asarray(negatives, np.int64)
    name = repr(miner)
    if isinstance(miner, AllAnchorsMiner):
        return MinerQuota(name, "every non-ignored anchor", pos.copy(), neg.copy())
    if isinstance(miner, (SSDMiner, SSDQuotaMiner)):
        ssd = miner if isinstance(miner, SSDMiner) else miner.ssd
        rule = (
            f"every positive + min(max(floor({ssd.neg_pos_ratio} x positives), {ssd.min_negatives}), "
            "negatives) negatives"
        )
        available = neg
        if isinstance(miner, PoolMiner):
            available = np.minimum(neg, miner.pool_size)
            rule += f" of a random pool of min({miner.pool_size}, negatives)"
        return MinerQuota(name, rule, pos.copy(), _ssd_negatives(ssd, pos, available))
    if isinstance(miner, RandomMiner):
        size = miner.batch_size_per_image
        kept_pos = np.minimum(pos, int(miner.pos_fraction * size))
        rule = f"{size} anchors per image, at most {miner.pos_fraction:g} of them positive, at random"
        return MinerQuota(name, rule, kept_pos, np.minimum(neg, size - kept_pos))
    if isinstance(miner, OHEMMiner):
        size = miner.batch_size_per_image
        if miner.pos_fraction is None:
            rule = (
                f"at most {size} highest-loss anchors per image after NMS {miner.nms_iou:g}, positives or not"
            )
            return MinerQuota(name, rule, np.minimum(pos, size), np.minimum(neg, size), exact=False)
        max_pos = int(miner.pos_fraction * size)  # the miner's own truncation
        kept_pos = np.minimum(pos, max_pos)
        rule = (
            f"at most {size} highest-loss anchors per image after NMS {miner.nms_iou:g}, "
            f"at most {max_pos} positives"
        )
        return MinerQuota(name, rule, kept_pos, np.minimum(neg, size - kept_pos), exact=False)
    return None
