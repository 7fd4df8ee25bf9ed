"""The box regression losses of :data:`detmine.losses.BOX_LOSSES`.

Each one is called ``loss(deltas [P, 4], matched_boxes [P, 4], anchors [P, 4], box_coder) ->
scalar``: the summed loss over the ``P`` positive anchors (the criterion divides it by the
positive count), 0 with a gradient path when ``P == 0``. ``deltas`` are the predicted encoded
deltas, ``matched_boxes`` the xyxy ground-truth boxes they are matched to, ``anchors`` their
xyxy anchors and ``box_coder`` the model's :class:`~detmine.box_coder.BoxCoder`. Options are
constructor keywords (the config's ``loss.<name>.*``).
"""

from __future__ import annotations

import torch.nn.functional as F
from torch import Tensor, nn
from torchvision.ops import generalized_box_iou_loss

from detmine.box_coder import BoxCoder
from detmine.errors import OptionError


class SmoothL1Loss(nn.Module):
    """Smooth-L1 (Huber) on the encoded deltas (SSD, Fast R-CNN).

    Args:
        beta: where the loss turns from quadratic to linear, ``>= 0`` (0 = L1).
    """

    def __init__(self, *, beta: float = 1.0) -> None:
        super().__init__()
        if beta < 0:
            raise OptionError("beta", f"must be >= 0, got {beta}")
        self.beta = float(beta)

    def extra_repr(self) -> str:
        return f"beta={self.beta}"

    def forward(self, deltas: Tensor, matched_boxes: Tensor, anchors: Tensor, box_coder: BoxCoder) -> Tensor:
        target = box_coder.encode(matched_boxes, anchors)
        return F.smooth_l1_loss(deltas, target, reduction="sum", beta=self.beta)


class L1Loss(nn.Module):
    """L1 on the encoded deltas (torchvision's RetinaNet)."""

    def __init__(self) -> None:
        super().__init__()

    def forward(self, deltas: Tensor, matched_boxes: Tensor, anchors: Tensor, box_coder: BoxCoder) -> Tensor:
        return F.l1_loss(deltas, box_coder.encode(matched_boxes, anchors), reduction="sum")


class GIoULoss(nn.Module):
    """Generalised IoU loss (``torchvision.ops.generalized_box_iou_loss``) on the decoded boxes."""

    def __init__(self) -> None:
        super().__init__()

    def forward(self, deltas: Tensor, matched_boxes: Tensor, anchors: Tensor, box_coder: BoxCoder) -> Tensor:
        if deltas.shape[0] == 0:
            return deltas.sum()
        return generalized_box_iou_loss(box_coder.decode(deltas, anchors), matched_boxes, reduction="sum")
