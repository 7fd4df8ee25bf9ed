"""The record of what a miner chose in one batch: cheap to build, enough to draw.

Building a :class:`MiningRecord` only stores references to tensors the criterion
already computed (no copies, no host syncs); every statistic is derived lazily,
so it can be built every step and only summarised when a logging hook asks.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Protocol

import torch
from torch import Tensor


class Miner(Protocol):
    """Signature every miner follows (see docs/architecture.md).

    Args:
        cls_loss: ``[B, A]`` per-anchor classification loss (detached or not; miners
            rank on ``cls_loss.detach()``).
        labels: ``[B, A]`` int64, ``-1`` ignore, ``0`` background, ``1..K`` class.
        boxes: ``[B, A, 4]`` xyxy boxes named by ``box_source`` (the anchors
            themselves or the decoded predictions) -- needed by NMS-based miners,
            else may be ``None``.

    Returns:
        ``[B, A]`` bool: the anchors whose classification loss counts. Never
        selects an ignored anchor.

    Attributes:
        box_source: ``None`` (takes no boxes), ``"anchors"`` or ``"predictions"``.
        normalize_by: ``"positives"`` or ``"selected"``: what the classification
            loss of the selection is divided by (see :mod:`detmine.mining`).
    """

    box_source: str | None
    normalize_by: str

    def __call__(self, cls_loss: Tensor, labels: Tensor, boxes: Tensor | None) -> Tensor: ...


@dataclass
class MiningRecord:
    """What the miner chose for a batch.

    Attributes:
        labels: ``[B, A]`` int64 matched labels (``-1`` ignore, ``0`` bg, ``1..K``).
        selected: ``[B, A]`` bool, the anchors whose classification loss counted.
        cls_loss: ``[B, A]`` per-anchor classification loss, detached.
        matched_gt: ``[B, A]`` int64 index of the matched ground-truth box per
            anchor (meaningful where ``labels > 0``), or ``None``.
    """

    labels: Tensor
    selected: Tensor
    cls_loss: Tensor
    matched_gt: Tensor | None = None

    @property
    def positives(self) -> Tensor:
        """``[B, A]`` bool: foreground anchors."""
        return self.labels > 0

    @property
    def negatives(self) -> Tensor:
        """``[B, A]`` bool: all background anchors (selected or not)."""
        return self.labels == 0

    @property
    def ignored(self) -> Tensor:
        """``[B, A]`` bool: anchors in the ignore band or ignore regions."""
        return self.labels < 0

    @property
    def mined_negatives(self) -> Tensor:
        """``[B, A]`` bool: background anchors the miner selected."""
        return self.selected & self.negatives

    def counts(self) -> dict[str, Tensor]:
        """Per-image counts, each an int64 ``[B]`` tensor: positives, negatives,
        mined_negatives, selected_positives, ignored."""
        return {
            "positives": self.positives.sum(dim=1),
            "negatives": self.negatives.sum(dim=1),
            "mined_negatives": self.mined_negatives.sum(dim=1),
            "selected_positives": (self.selected & self.positives).sum(dim=1),
            "ignored": self.ignored.sum(dim=1),
        }

    def top_negatives(self, image: int, k: int, mined_only: bool = True) -> tuple[Tensor, Tensor]:
        """The ``k`` highest-loss negatives of one image.

        Args:
            image: index in the batch.
            k: how many at most.
            mined_only: rank among the mined negatives (else among all negatives;
                for the ``all`` miner the two coincide).

        Returns:
            ``(anchor_indices [k'], losses [k'])`` sorted by decreasing loss.
        """
        mask = self.mined_negatives[image] if mined_only else self.negatives[image]
        loss = self.cls_loss[image].masked_fill(~mask, float("-inf"))
        k = int(min(k, int(mask.sum())))
        values, indices = torch.topk(loss, k) if k > 0 else (loss[:0], loss[:0].long())
        return indices, values
