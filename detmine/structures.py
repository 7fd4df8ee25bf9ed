"""Data structures shared by the data pipeline, the models, the criterion and the tools.

Conventions (see DESIGN.md):
- Boxes are ``xyxy`` float32 tensors in pixels of the network input.
- Class labels are contiguous ``1..K``; ``0`` is background; ``-1`` is ignore.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TypedDict

import torch
from torch import Tensor


class Target(TypedDict):
    """Ground truth of one image after the transform pipeline.

    Keys:
        boxes: float32 ``[N, 4]`` xyxy, network-input pixels.
        labels: int64 ``[N]`` contiguous class ids in ``1..K``.
        ignore_boxes: float32 ``[M, 4]`` xyxy regions (COCO ``iscrowd``, VOC
            ``difficult``) whose anchors become ignore (-1), never background.
        image_id: the dataset's own image id (int) -- used to write COCO results.
        orig_size: ``(height, width)`` of the image as stored on disk.
        input_size: ``(height, width)`` after the transform, before batch padding.
    """

    boxes: Tensor
    labels: Tensor
    ignore_boxes: Tensor
    image_id: int
    orig_size: tuple[int, int]
    input_size: tuple[int, int]


class Detections(TypedDict):
    """Predictions for one image, in pixels of the original image.

    Keys:
        boxes: float32 ``[D, 4]`` xyxy.
        scores: float32 ``[D]``.
        labels: int64 ``[D]`` contiguous class ids ``1..K``.
    """

    boxes: Tensor
    scores: Tensor
    labels: Tensor


@dataclass
class HeadOutputs:
    """What ``DenseDetector.forward`` returns, in train and eval mode alike.

    Attributes:
        cls_logits: ``[B, A, K']`` -- ``K' = K + 1`` for softmax heads (column 0 is
            background), ``K' = K`` for sigmoid / focal heads.
        box_deltas: ``[B, A, 4]`` encoded box regression (see ``detmine.box_coder``).
        anchors: ``[A, 4]`` xyxy anchors in network-input pixels, the same for
            every image of the batch (images are padded to one size).
    """

    cls_logits: Tensor
    box_deltas: Tensor
    anchors: Tensor


def empty_boxes(device: torch.device | str | None = None) -> Tensor:
    """A ``[0, 4]`` float32 box tensor."""
    return torch.zeros((0, 4), dtype=torch.float32, device=device)
