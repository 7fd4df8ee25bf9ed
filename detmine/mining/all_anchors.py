"""The ``all`` miner: every non-ignored anchor counts (plain CE baseline, focal path).

Also home of :func:`check_miner_inputs`, the shape check every miner runs first.
"""

from __future__ import annotations

import torch
from torch import Tensor


def check_miner_inputs(name: str, cls_loss: Tensor, labels: Tensor, boxes: Tensor | None) -> tuple[int, int]:
    """Check the shapes of a miner's inputs (no host sync) and return ``(B, A)``.

    Args:
        name: the miner's type, for the message.
        cls_loss: ``[B, A]`` floating point.
        labels: ``[B, A]`` integer.
        boxes: ``[B, A, 4]`` or ``None``.

    Raises:
        ValueError: naming the tensor, its shape / dtype and what was expected.
    """
    if cls_loss.dim() != 2 or not cls_loss.is_floating_point():
        raise ValueError(
            f"{name} miner: cls_loss must be a floating point [B, A] tensor, "
            f"got {cls_loss.dtype} {tuple(cls_loss.shape)}"
        )
    if labels.shape != cls_loss.shape or labels.is_floating_point() or labels.dtype == torch.bool:
        raise ValueError(
            f"{name} miner: labels must be an integer tensor shaped like cls_loss "
            f"{tuple(cls_loss.shape)}, got {labels.dtype} {tuple(labels.shape)}"
        )
    if boxes is not None and boxes.shape != (*cls_loss.shape, 4):
        raise ValueError(
            f"{name} miner: boxes must be [B, A, 4] = {(*cls_loss.shape, 4)}, got {tuple(boxes.shape)}"
        )
    return cls_loss.shape[0], cls_loss.shape[1]


class AllAnchorsMiner:
    """Select every anchor whose label is not ignore (``labels >= 0``).

    Call: ``miner(cls_loss [B, A], labels [B, A], boxes [B, A, 4] | None) -> bool [B, A]``.
    """

    needs_boxes: bool = False

    def __init__(self) -> None:
        pass

    def __call__(self, cls_loss: Tensor, labels: Tensor, boxes: Tensor | None = None) -> Tensor:
        check_miner_inputs("all", cls_loss, labels, boxes)
        return labels >= 0

    def __repr__(self) -> str:
        return "AllAnchorsMiner()"
