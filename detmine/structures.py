"""Data structures shared by the data pipeline, the models, the criterion and the tools.

Conventions (see docs/architecture.md):
- Boxes are ``xyxy`` float32 tensors in pixels of the network input.
- Class labels are contiguous ``1..K``; ``0`` is background; ``-1`` is ignore.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Protocol, TypedDict, runtime_checkable

import torch
from torch import Tensor

from detmine.errors import ConfigError


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


class SoftmaxActivation:
    """A softmax head: ``K + 1`` columns, column 0 = background (SSD)."""

    name = "softmax"
    #: columns before the ``K`` class columns.
    background_columns = 1
    #: the columns, in words (for messages).
    columns = "K + 1, background first"

    @staticmethod
    def class_scores(cls_logits: Tensor) -> Tensor:
        """``[B, A, K + 1]`` logits -> ``[B, A, K]`` float32 class probabilities (background dropped)."""
        return cls_logits.float().softmax(dim=-1)[..., 1:]

    @staticmethod
    def foreground_scores(cls_logits: Tensor) -> Tensor:
        """``[B, A, K + 1]`` -> ``[B, A]`` detached ``1 - p(background)``."""
        return 1.0 - torch.softmax(cls_logits.detach().float(), dim=-1)[..., 0]


class SigmoidActivation:
    """A sigmoid (focal) head: ``K`` columns, one independent sigmoid per class (RetinaNet)."""

    name = "sigmoid"
    background_columns = 0
    columns = "K"

    @staticmethod
    def class_scores(cls_logits: Tensor) -> Tensor:
        """``[B, A, K]`` logits -> ``[B, A, K]`` float32 class probabilities."""
        return cls_logits.float().sigmoid()

    @staticmethod
    def foreground_scores(cls_logits: Tensor) -> Tensor:
        """``[B, A, K]`` -> ``[B, A]`` detached ``max_k sigmoid(logit_k)``."""
        return torch.sigmoid(cls_logits.detach().float().max(dim=-1).values)


#: The kinds of classification head, by the name ``HeadOutputs.cls_activation`` carries: the
#: one place that knows what a head's columns mean.
CLS_ACTIVATIONS: dict[str, type] = {"softmax": SoftmaxActivation, "sigmoid": SigmoidActivation}

#: The components a head gets when the config names none, per activation: the matcher preset
#: (``detmine.matching.MATCHER_PRESETS``), classification and box losses
#: (``detmine.losses.CLS_LOSSES`` / ``BOX_LOSSES``) and miner (``detmine.mining.MINERS``).
#: SSD's recipe for softmax heads, RetinaNet's for sigmoid heads.
HEAD_DEFAULTS: dict[str, dict[str, str]] = {
    "softmax": {"matching": "ssd", "cls": "softmax_ce", "box": "smooth_l1", "mining": "ssd"},
    "sigmoid": {"matching": "retinanet", "cls": "focal", "box": "l1", "mining": "all"},
}


def head_defaults(cls_activation: str) -> dict[str, str]:
    """:data:`HEAD_DEFAULTS` of ``cls_activation``; :class:`ConfigError` naming the valid ones."""
    if cls_activation not in HEAD_DEFAULTS:
        raise ConfigError(f"unknown cls_activation {cls_activation!r}; valid: {', '.join(HEAD_DEFAULTS)}")
    return HEAD_DEFAULTS[cls_activation]


def check_activation(cls_activation: str) -> str:
    """``cls_activation`` if it names an entry of :data:`CLS_ACTIVATIONS`, else ``ValueError``."""
    if cls_activation not in CLS_ACTIVATIONS:
        raise ValueError(
            f"cls_activation must be one of {', '.join(repr(a) for a in CLS_ACTIVATIONS)}, got {cls_activation!r}"
        )
    return cls_activation


@dataclass
class HeadOutputs:
    """What ``DenseDetector.forward`` returns, in train and eval mode alike: the predictions
    and the head facts downstream code needs, so nothing reads them back from the model.

    Attributes:
        cls_logits: ``[B, A, K']`` -- ``K' = K + 1`` for softmax heads (column 0 is
            background), ``K' = K`` for sigmoid / focal heads.
        box_deltas: ``[B, A, 4]`` encoded box regression (see ``detmine.box_coder``).
        anchors: ``[A, 4]`` xyxy anchors in network-input pixels, the same for
            every image of the batch (images are padded to one size).
        cls_activation: ``"softmax"`` or ``"sigmoid"`` (a key of :data:`CLS_ACTIVATIONS`).
        level_counts: anchors per pyramid level, level-major as ``anchors``; sums to ``A``.
    """

    cls_logits: Tensor
    box_deltas: Tensor
    anchors: Tensor
    cls_activation: str
    level_counts: tuple[int, ...]

    def __post_init__(self) -> None:
        check_activation(self.cls_activation)
        self.level_counts = tuple(int(c) for c in self.level_counts)
        if sum(self.level_counts) != self.anchors.shape[0]:
            raise ValueError(
                f"level_counts {self.level_counts} add up to {sum(self.level_counts)}, "
                f"not to the {self.anchors.shape[0]} anchors"
            )

    @property
    def activation(self) -> type:
        """The :data:`CLS_ACTIVATIONS` entry of this head."""
        return CLS_ACTIVATIONS[self.cls_activation]

    @property
    def num_classes(self) -> int:
        """``K``: the logits' columns minus the background column(s)."""
        return self.cls_logits.shape[-1] - self.activation.background_columns

    def class_scores(self) -> Tensor:
        """``[B, A, K]`` float32 probability of each class (softmax: background column dropped)."""
        return self.activation.class_scores(self.cls_logits)

    def foreground_scores(self) -> Tensor:
        """``[B, A]`` detached foreground score in ``[0, 1]``: softmax ``1 - p(background)``,
        sigmoid ``max_k p_k``."""
        return self.activation.foreground_scores(self.cls_logits)


@runtime_checkable
class TrainingSetFacts(Protocol):
    """What a loss or miner may know about the training set, counted once from its annotations
    (never by decoding images) and handed over by the builder to a component whose constructor
    has a ``facts`` parameter. The implementation is :class:`detmine.analysis.DatasetFacts`
    (lazy: each count is computed on first use, then kept).

    - ``class_names``: the ``K`` class names, class ``k`` (1-based) is ``class_names[k - 1]``;
    - ``instances_per_class()``: ``K`` object counts (ignore regions / crowd boxes excluded);
    - ``images_per_class()``: ``K`` counts of the images holding at least one such object;
    - ``anchor_label_counts()``: ``K + 1`` counts of the run's matcher over the training
      annotations at the evaluation geometry: ``[0]`` background anchors, ``[k]`` anchors
      matched to class ``k`` (ignored anchors not counted).
    """

    @property
    def class_names(self) -> list[str]: ...

    def instances_per_class(self) -> list[int]: ...

    def images_per_class(self) -> list[int]: ...

    def anchor_label_counts(self) -> list[int]: ...


def empty_boxes(device: torch.device | str | None = None) -> Tensor:
    """A ``[0, 4]`` float32 box tensor."""
    return torch.zeros((0, 4), dtype=torch.float32, device=device)
