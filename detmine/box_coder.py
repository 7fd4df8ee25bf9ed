"""Encode ground-truth boxes as regression targets relative to anchors, and back.

The parameterisation is Faster R-CNN's (the same as
``torchvision.models.detection._utils.BoxCoder``)::

    dx = wx * (gx - ax) / aw        dw = ww * log(gw / aw)
    dy = wy * (gy - ay) / ah        dh = wh * log(gh / ah)

with ``(x, y)`` box centres and ``(w, h)`` widths / heights. SSD uses weights
``(10, 10, 5, 5)`` (the "variances" 0.1 / 0.2 of the paper), RetinaNet
``(1, 1, 1, 1)``. Unlike torchvision's coder, both directions broadcast over any
leading dimensions, so ``[B, A, 4]`` deltas decode against ``[A, 4]`` anchors
without reshaping or concatenating lists.
"""

from __future__ import annotations

import math

import torch
from torch import Tensor

DEFAULT_XFORM_CLIP = math.log(1000.0 / 16)


class BoxCoder:
    """Box <-> delta transform with per-coordinate weights.

    Args:
        weights: ``(wx, wy, ww, wh)`` multipliers of the four deltas.
        bbox_xform_clip: upper clamp of ``dw`` / ``dh`` (after dividing by the
            weights) before ``exp`` on decode, so a wild prediction cannot
            overflow to ``inf``.
    """

    def __init__(
        self,
        weights: tuple[float, float, float, float] = (1.0, 1.0, 1.0, 1.0),
        bbox_xform_clip: float = DEFAULT_XFORM_CLIP,
    ) -> None:
        if len(weights) != 4:
            raise ValueError(f"BoxCoder weights must have 4 values (wx, wy, ww, wh), got {weights!r}")
        self.weights = tuple(float(w) for w in weights)
        self.bbox_xform_clip = float(bbox_xform_clip)

    def __repr__(self) -> str:
        return f"BoxCoder(weights={self.weights}, bbox_xform_clip={self.bbox_xform_clip:.4f})"

    def encode(self, gt_boxes: Tensor, anchors: Tensor) -> Tensor:
        """Regression targets of ``gt_boxes`` relative to ``anchors``.

        Args:
            gt_boxes: ``[..., 4]`` xyxy target boxes.
            anchors: ``[..., 4]`` xyxy anchors, broadcastable against ``gt_boxes``.

        Returns:
            ``[..., 4]`` deltas ``(dx, dy, dw, dh)`` (broadcast shape).
        """
        wx, wy, ww, wh = self.weights
        anchors = anchors.to(gt_boxes.dtype)
        ax1, ay1, ax2, ay2 = anchors.unbind(-1)
        gx1, gy1, gx2, gy2 = gt_boxes.unbind(-1)
        aw = ax2 - ax1
        ah = ay2 - ay1
        acx = ax1 + 0.5 * aw
        acy = ay1 + 0.5 * ah
        gw = gx2 - gx1
        gh = gy2 - gy1
        gcx = gx1 + 0.5 * gw
        gcy = gy1 + 0.5 * gh
        dx = wx * (gcx - acx) / aw
        dy = wy * (gcy - acy) / ah
        dw = ww * torch.log(gw / aw)
        dh = wh * torch.log(gh / ah)
        return torch.stack((dx, dy, dw, dh), dim=-1)

    def decode(self, deltas: Tensor, anchors: Tensor) -> Tensor:
        """Boxes obtained by applying ``deltas`` to ``anchors``.

        Args:
            deltas: ``[..., 4]`` encoded offsets ``(dx, dy, dw, dh)``.
            anchors: ``[..., 4]`` xyxy anchors, broadcastable against ``deltas``
                (e.g. ``[A, 4]`` against ``[B, A, 4]``).

        Returns:
            ``[..., 4]`` xyxy boxes (broadcast shape), same dtype as ``deltas``.
        """
        wx, wy, ww, wh = self.weights
        anchors = anchors.to(deltas.dtype)
        ax1, ay1, ax2, ay2 = anchors.unbind(-1)
        aw = ax2 - ax1
        ah = ay2 - ay1
        acx = ax1 + 0.5 * aw
        acy = ay1 + 0.5 * ah
        d = deltas.unbind(-1)
        dx = d[0] / wx
        dy = d[1] / wy
        dw = torch.clamp(d[2] / ww, max=self.bbox_xform_clip)
        dh = torch.clamp(d[3] / wh, max=self.bbox_xform_clip)
        cx = dx * aw + acx
        cy = dy * ah + acy
        half_w = 0.5 * (torch.exp(dw) * aw)
        half_h = 0.5 * (torch.exp(dh) * ah)
        return torch.stack((cx - half_w, cy - half_h, cx + half_w, cy + half_h), dim=-1)
