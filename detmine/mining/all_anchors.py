"""The ``all`` miner: every non-ignored anchor counts (plain CE baseline, focal path)."""

from __future__ import annotations

from torch import Tensor

from detmine.mining._common import check_miner_inputs


class AllAnchorsMiner:
    """Select every anchor whose label is not ignore (``labels >= 0``).

    The classification loss of the selection is divided by the number of
    positives (``normalize_by = "positives"``), as in the focal-loss paper: with
    every anchor counted, an average over the selection would drown the few
    positives among ~10^4 easy negatives.

    Call: ``miner(cls_loss [B, A], labels [B, A], boxes [B, A, 4] | None) -> bool [B, A]``;
    ``boxes`` is accepted and unused (``box_source = None``).
    """

    box_source: str | None = None
    normalize_by: str = "positives"

    def __init__(self) -> None:
        pass

    def __call__(self, cls_loss: Tensor, labels: Tensor, boxes: Tensor | None = None) -> Tensor:
        check_miner_inputs("all", cls_loss, labels, boxes)
        return labels >= 0

    def __repr__(self) -> str:
        return "AllAnchorsMiner()"
