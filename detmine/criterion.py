"""The training criterion: matching, per-anchor losses, mining and normalisation.

One step, for a batch of ``B`` images with ``A`` shared anchors::

    matcher      -> labels [B, A] (-1 ignore, 0 background, 1..K), matched GT [B, A]
    cls loss     -> [B, A] per anchor (softmax CE | sigmoid focal | alpha-balanced BCE)
    miner        -> bool [B, A]: the anchors whose classification loss counts
    box loss     -> over the positive anchors (smooth-L1 | L1 on deltas, GIoU on boxes)
    losses       = {"cls": sum(cls_loss[selected]) / N, "box": box_weight * sum(box_loss) / N}

**Normalisation.** The box loss is divided by ``N_pos = max(1, positive anchors in the
batch)``. The classification loss is divided by the count the miner's examples mean
(``normalize_by``, default the miner's ``normalize_by`` attribute):

- ``"positives"`` (``all`` / focal, ``ssd``): ``N_pos``, as torchvision's SSD and the
  focal-loss paper;
- ``"selected"`` (``ohem``, ``random``): the number of selected examples, the Fast R-CNN /
  OHEM average over the minibatch, so the loss scale does not depend on how many objects
  an image has (dividing OHEM's 128 examples by the positives made an image with one object
  weigh 25x more than one with 25, and divided a background-only batch by 1).

``normalizer="batch"`` uses that count in the batch; ``normalizer="ema"`` an exponential
moving average of it (detectron2's RetinaNet: ``momentum`` 0.9, starting at 100, updated in
training mode only, saved in the criterion's ``state_dict``; evaluation mode uses the batch
count so validation losses do not disturb it). The box loss's ``N_pos`` follows the same
choice when the classification count is the positives (one shared count, as before).
torchvision's RetinaNet instead divides each image's loss by that image's positives and
averages over images; the two agree when every image has the same number of positives
(tested). Under DDP training the counts (and the EMA) use the mean over the processes, so
the average of the per-process losses equals the loss of the global batch (tested with two
gloo processes).

Background-only images are fine: they have only background / ignore anchors,
and contribute to the classification loss whenever the miner selects some of
their negatives (``all``, ``ohem``, ``random``, ``ssd`` with ``min_negatives``).
"""

from __future__ import annotations

from typing import Any

import torch
import torch.distributed as dist
from torch import Tensor, nn

from detmine.box_coder import BoxCoder
from detmine.errors import ConfigError, DataError, NonFiniteError
from detmine.losses import (
    BOX_LOSSES,
    balanced_cross_entropy_per_anchor,
    box_regression_loss,
    focal_loss_per_anchor,
    softmax_cross_entropy,
)
from detmine.matching import Matcher, pad_targets
from detmine.mining._common import BOX_SOURCES, NORMALIZE_BY
from detmine.mining.record import Miner, MiningRecord
from detmine.structures import HeadOutputs, Target

CLS_LOSSES = {"softmax": ("softmax_ce",), "sigmoid": ("focal", "balanced_ce")}
NORMALIZERS = ("batch", "ema")


def nonfinite_message(tensor: Tensor, name: str) -> str | None:
    """None when ``tensor`` is finite, else a message naming ``name`` and the first bad image /
    anchor.

    The fast path is one float32 ``sum()`` (a single read of the tensor, no
    temporaries, one host sync): it is finite whenever every element is, unless
    the sum overflows, in which case the exact element-wise check decides.
    """
    if bool(torch.isfinite(tensor.sum(dtype=torch.float32))) or bool(torch.isfinite(tensor).all()):
        return None
    bad = ~torch.isfinite(tensor)
    index = bad.nonzero()[0].tolist()
    value = tensor[tuple(index)].item()
    kind = "NaN" if value != value else "Inf"
    where = f"image {index[0]}" + (f", anchor {index[1]}" if len(index) > 1 else "")
    return (
        f"{name} contains {kind} at {where} ({int(bad.sum())} non-finite values of {tensor.numel()}); "
        "the model diverged: lower the learning rate, add warmup, or check the boxes for x2 <= x1"
    )


def check_finite(tensor: Tensor, name: str) -> None:
    """Raise :class:`NonFiniteError` with :func:`nonfinite_message` when ``tensor`` is not finite."""
    message = nonfinite_message(tensor, name)
    if message is not None:
        raise NonFiniteError(message)


def _training_world(module: nn.Module) -> int:
    """The number of processes whose criterion calls pair up (1 outside DDP training)."""
    if not (module.training and dist.is_available() and dist.is_initialized()):
        return 1
    return dist.get_world_size()


class Criterion(nn.Module):
    """Loss of a dense detector (see the module docstring for the exact formula).

    Args:
        matcher: assigns anchors to ground truth (:class:`detmine.matching.Matcher`).
        box_coder: encodes regression targets / decodes predictions.
        miner: ``miner(cls_loss [B, A], labels [B, A], boxes [B, A, 4] | None) -> bool [B, A]``.
            Its ``box_source`` attribute says which boxes it gets: ``None`` (none),
            ``"anchors"`` (the anchors, broadcast over the batch) or ``"predictions"``
            (the decoded, detached predictions); its ``normalize_by`` attribute the default
            classification normaliser.
        cls_activation: ``"softmax"`` (logits ``[B, A, K + 1]``, column 0
            background) or ``"sigmoid"`` (``[B, A, K]``).
        cls_loss: ``"softmax_ce"`` (softmax) or ``"focal"`` / ``"balanced_ce"`` (sigmoid).
        alpha: focal / balanced-CE alpha, a float or ``K`` per-class values.
        gamma: focal exponent.
        class_weights: optional per-class weights: ``K + 1`` values (background
            first) for softmax, ``K`` for sigmoid.
        box_loss: ``"smooth_l1"``, ``"l1"`` or ``"giou"``.
        beta: smooth-L1 beta.
        box_weight: multiplier of the box loss.
        normalize_by: ``"positives"`` or ``"selected"``; None = the miner's ``normalize_by``
            (``"positives"`` when it has none).
        normalizer: ``"batch"`` or ``"ema"``.
        normalizer_momentum: EMA momentum.
    """

    def __init__(
        self,
        *,
        matcher: Matcher,
        box_coder: BoxCoder,
        miner: Miner,
        cls_activation: str = "softmax",
        cls_loss: str = "softmax_ce",
        alpha: float | list[float] = 0.25,
        gamma: float = 2.0,
        class_weights: list[float] | None = None,
        box_loss: str = "smooth_l1",
        beta: float = 1.0,
        box_weight: float = 1.0,
        normalize_by: str | None = None,
        normalizer: str = "batch",
        normalizer_momentum: float = 0.9,
    ) -> None:
        super().__init__()
        if normalize_by is None:
            normalize_by = getattr(miner, "normalize_by", "positives")
        if normalize_by not in NORMALIZE_BY:
            raise ConfigError(f"unknown loss.normalize_by {normalize_by!r}; valid: {', '.join(NORMALIZE_BY)}")
        box_source = getattr(miner, "box_source", None)
        if box_source not in BOX_SOURCES:
            raise ConfigError(
                f"miner {type(miner).__name__} has box_source {box_source!r}; valid: anchors, predictions, None"
            )
        if cls_activation not in CLS_LOSSES:
            raise ConfigError(f"unknown cls_activation {cls_activation!r}; valid: softmax, sigmoid")
        if cls_loss not in CLS_LOSSES[cls_activation]:
            raise ConfigError(
                f"loss.cls {cls_loss!r} does not fit a {cls_activation} head; "
                f"valid: {', '.join(CLS_LOSSES[cls_activation])}"
            )
        if box_loss not in BOX_LOSSES:
            raise ConfigError(f"unknown loss.box {box_loss!r}; valid: {', '.join(BOX_LOSSES)}")
        if normalizer not in NORMALIZERS:
            raise ConfigError(f"unknown loss.normalizer {normalizer!r}; valid: {', '.join(NORMALIZERS)}")
        if not 0.0 <= normalizer_momentum < 1.0:
            raise ConfigError(f"loss.normalizer_momentum must be in [0, 1), got {normalizer_momentum}")
        if gamma < 0:
            raise ConfigError(f"loss.gamma must be >= 0, got {gamma}")
        alpha_t = torch.as_tensor(alpha, dtype=torch.float32)
        if bool(((alpha_t < 0) | (alpha_t > 1)).any()):
            raise ConfigError(f"loss.alpha must lie in [0, 1], got {alpha}")
        self.matcher = matcher
        self.box_coder = box_coder
        self.miner = miner
        self.cls_activation = cls_activation
        self.cls_loss_name = cls_loss
        self.gamma = float(gamma)
        self.box_loss_name = box_loss
        self.beta = float(beta)
        self.box_weight = float(box_weight)
        self.normalize_by = normalize_by
        self.box_source = box_source
        self.normalizer = normalizer
        self.normalizer_momentum = float(normalizer_momentum)
        self.register_buffer("alpha", alpha_t, persistent=False)
        weights = None if class_weights is None else torch.as_tensor(class_weights, dtype=torch.float32)
        self.register_buffer("class_weights", weights, persistent=False)
        #: EMA of the classification normaliser's count (``normalizer="ema"``), checkpointed.
        self.register_buffer("count_ema", torch.tensor(100.0))

    def extra_repr(self) -> str:
        return (
            f"cls={self.cls_loss_name}, gamma={self.gamma}, box={self.box_loss_name}, beta={self.beta}, "
            f"box_weight={self.box_weight}, normalize_by={self.normalize_by}, normalizer={self.normalizer}"
        )

    def _cls_loss(self, logits: Tensor, labels: Tensor) -> Tensor:
        weights = self.class_weights
        if weights is not None and weights.shape[0] != logits.shape[-1]:
            raise ConfigError(
                f"loss.class_weights has {weights.shape[0]} values but the {self.cls_activation} head has "
                f"{logits.shape[-1]} columns (softmax: K + 1 with background first; sigmoid: K)"
            )
        if weights is not None:
            weights = weights.to(logits.dtype)
        if self.cls_loss_name == "softmax_ce":
            return softmax_cross_entropy(logits, labels, class_weights=weights)
        alpha = self.alpha.to(logits.dtype)
        if self.cls_loss_name == "focal":
            return focal_loss_per_anchor(logits, labels, alpha=alpha, gamma=self.gamma, class_weights=weights)
        return balanced_cross_entropy_per_anchor(logits, labels, alpha=alpha, class_weights=weights)

    def _normalizers(self, num_pos: Tensor, num_selected: Tensor) -> tuple[Tensor, Tensor]:
        """``(classification, box)`` divisors: the counts averaged over processes, at least 1;
        the classification count (positives or selected) through the EMA when asked."""
        num_pos = self._mean_over_ranks(num_pos).to(torch.float32)
        count = num_pos if self.normalize_by == "positives" else self._mean_over_ranks(num_selected)
        count = count.to(torch.float32)
        if self.normalizer == "ema" and self.training:
            with torch.no_grad():
                m = self.normalizer_momentum
                self.count_ema.mul_(m).add_((1.0 - m) * count.to(self.count_ema.dtype))
            cls_norm = self.count_ema.clamp(min=1).clone()
        else:
            cls_norm = count.clamp(min=1)
        box_norm = cls_norm if self.normalize_by == "positives" else num_pos.clamp(min=1)
        return cls_norm, box_norm

    def _check_outputs_finite(self, logits: Tensor, deltas: Tensor) -> None:
        """Raise :class:`NonFiniteError` for NaN / Inf head outputs. Under DDP training every
        process raises together (the flag is all-reduced before any other collective), so a
        trainer that skips the batch keeps the processes in step."""
        message = nonfinite_message(logits, "cls_logits") or nonfinite_message(deltas, "box_deltas")
        if _training_world(self) > 1:
            flag = torch.tensor([0.0 if message is None else 1.0], device=logits.device)
            dist.all_reduce(flag, op=dist.ReduceOp.MAX)
            if message is None and bool(flag.item()):
                message = "non-finite head outputs on another process"
        if message is not None:
            raise NonFiniteError(message)

    def _mean_over_ranks(self, num_pos: Tensor) -> Tensor:
        """Under DDP training, the positive count averaged over the processes, so that the
        mean of the per-process losses (what DDP's gradient averaging computes) equals the loss
        of the whole global batch: ``sum(L_r) / sum(P_r)``. Unchanged in one process and in eval
        (where ranks need not call the criterion together)."""
        world = _training_world(self)
        if world == 1:
            return num_pos
        total = num_pos.detach().to(torch.float32).clone()
        dist.all_reduce(total)
        return total / world

    def forward(
        self, outputs: HeadOutputs, anchors: Tensor, targets: list[Target]
    ) -> tuple[dict[str, Tensor], MiningRecord]:
        """Compute the losses of one batch.

        Args:
            outputs: ``cls_logits [B, A, K']`` and ``box_deltas [B, A, 4]``.
            anchors: ``[A, 4]`` xyxy anchors.
            targets: ``B`` :class:`~detmine.structures.Target` dicts (boxes may be empty).

        Returns:
            ``({"cls": scalar, "box": scalar}, MiningRecord)``, both losses
            already divided by the normaliser.

        Raises:
            NonFiniteError: ``cls_logits`` or ``box_deltas`` holds NaN / Inf.
            DataError: a target box is malformed or a label is outside ``1..K``.
        """
        logits, deltas = outputs.cls_logits, outputs.box_deltas
        num_images, num_anchors = logits.shape[:2]
        if deltas.shape != (num_images, num_anchors, 4) or anchors.shape != (num_anchors, 4):
            raise ValueError(
                f"shape mismatch: cls_logits {tuple(logits.shape)}, box_deltas {tuple(deltas.shape)}, "
                f"anchors {tuple(anchors.shape)}; expected [B, A, K'], [B, A, 4], [A, 4]"
            )
        if len(targets) != num_images:
            raise ValueError(f"got {len(targets)} targets for a batch of {num_images} images")
        self._check_outputs_finite(logits, deltas)
        # Losses in float32 whatever the head's precision (autocast off: the custom
        # autograd functions are not on autocast's lists); a no-op for float32 inputs.
        with torch.autocast(device_type=logits.device.type, enabled=False):
            return self._forward(logits.float(), deltas.float(), anchors.float(), targets)

    def _forward(
        self, logits: Tensor, deltas: Tensor, anchors: Tensor, targets: list[Target]
    ) -> tuple[dict[str, Tensor], MiningRecord]:
        gt = pad_targets(targets, device=logits.device)
        self._check_labels(gt.labels[gt.valid], logits.shape[-1])
        match = self.matcher(anchors, gt)
        labels, matched = match.labels, match.matched_gt

        cls_loss = self._cls_loss(logits, labels)
        boxes = None
        if self.box_source == "anchors":
            boxes = anchors.unsqueeze(0).expand(logits.shape[0], -1, -1)
        elif self.box_source == "predictions":
            with torch.no_grad():
                boxes = self.box_coder.decode(deltas.detach(), anchors)
        selected = self.miner(cls_loss.detach(), labels, boxes)

        positive = labels > 0
        cls_norm, box_norm = self._normalizers(positive.sum(), selected.sum())
        loss_cls = torch.where(selected, cls_loss, 0.0).sum() / cls_norm

        pos_b, pos_a = positive.nonzero(as_tuple=True)
        matched_boxes = gt.boxes[pos_b, matched[pos_b, pos_a]]
        loss_box = box_regression_loss(
            self.box_loss_name,
            deltas[pos_b, pos_a],
            matched_boxes,
            anchors[pos_a],
            self.box_coder,
            beta=self.beta,
        )
        loss_box = loss_box * (self.box_weight / box_norm)
        record = MiningRecord(
            labels=labels, selected=selected, cls_loss=cls_loss.detach(), matched_gt=matched
        )
        return {"cls": loss_cls, "box": loss_box}, record

    def _check_labels(self, labels: Tensor, num_columns: int) -> None:
        num_classes = num_columns - 1 if self.cls_activation == "softmax" else num_columns
        if labels.numel() and bool(((labels < 1) | (labels > num_classes)).any()):
            bad = labels[(labels < 1) | (labels > num_classes)][0].item()
            raise DataError(f"target label {bad} is outside 1..{num_classes} (the head's number of classes)")


MATCHING_KEYS = (
    "preset",
    "fg_iou_thresh",
    "bg_iou_thresh",
    "allow_low_quality",
    "force_best_match",
    "ignore_iof_thresh",
)
LOSS_KEYS = (
    "cls",
    "alpha",
    "gamma",
    "class_weights",
    "box",
    "beta",
    "box_weight",
    "normalize_by",
    "normalizer",
    "normalizer_momentum",
)
PRESETS = {"ssd": Matcher.ssd, "retinanet": Matcher.retinanet}


def _check_keys(section: str, given: dict[str, Any], valid: tuple[str, ...]) -> dict[str, Any]:
    unknown = sorted(set(given) - set(valid))
    if unknown:
        raise ConfigError(
            f"unknown key(s) {', '.join(f'{section}.{k}' for k in unknown)}; valid keys: {', '.join(valid)}"
        )
    return {k: v for k, v in given.items() if v is not None}


def build_matcher(matching: dict[str, Any], cls_activation: str = "softmax") -> Matcher:
    """Matcher from a ``matching`` config section (keys: see :func:`build_criterion`)."""
    opts = _check_keys("matching", dict(matching), MATCHING_KEYS)
    preset = opts.pop("preset", "ssd" if cls_activation == "softmax" else "retinanet")
    if preset not in PRESETS:
        raise ConfigError(f"unknown matching.preset {preset!r}; valid: {', '.join(PRESETS)}")
    try:
        return PRESETS[preset](**opts)
    except ValueError as exc:
        raise ConfigError(f"matching: {exc}") from None


def build_criterion(
    cls_activation: str,
    box_coder: BoxCoder,
    matching: dict[str, Any] | None = None,
    loss: dict[str, Any] | None = None,
    mining: dict[str, Any] | None = None,
) -> Criterion:
    """Build a :class:`Criterion` from the config sections. A key set to ``None`` means its default.

    Args:
        cls_activation: the model's ``cls_activation`` (``"softmax"`` / ``"sigmoid"``).
        box_coder: the model's ``box_coder``.
        matching: ``preset`` (``"ssd"``: 0.5/0.5 + forced best anchor; ``"retinanet"``:
            0.5/0.4 + low-quality matches; default ``ssd`` for softmax heads,
            ``retinanet`` for sigmoid), and overrides of the preset:
            ``fg_iou_thresh``, ``bg_iou_thresh``, ``allow_low_quality``,
            ``force_best_match``, ``ignore_iof_thresh`` (0.5).
        loss: ``cls`` (``"softmax_ce"`` for softmax; ``"focal"`` (default) or
            ``"balanced_ce"`` for sigmoid), ``alpha`` (0.25, or one per class),
            ``gamma`` (2.0), ``class_weights`` (list or None), ``box``
            (``"smooth_l1"`` default for softmax, ``"l1"`` for sigmoid, or
            ``"giou"``), ``beta`` (1.0), ``box_weight`` (1.0), ``normalize_by``
            (``"positives"`` | ``"selected"``, default the miner's), ``normalizer``
            (``"batch"`` | ``"ema"``), ``normalizer_momentum`` (0.9).
        mining: ``type`` (``"all"``, ``"ssd"``, ``"ohem"``, ``"random"``; default
            ``ssd`` for softmax, ``all`` for sigmoid) plus that miner's options,
            passed to ``detmine.mining.build_miner``.

    Raises:
        ConfigError: unknown key (naming the valid keys) or a bad value.
    """
    from detmine.mining import build_miner  # imported lazily: mining imports nothing from here

    if cls_activation not in CLS_LOSSES:
        raise ConfigError(f"unknown cls_activation {cls_activation!r}; valid: softmax, sigmoid")
    softmax = cls_activation == "softmax"
    matcher = build_matcher(matching or {}, cls_activation)
    loss_opts = _check_keys("loss", dict(loss or {}), LOSS_KEYS)
    mining_opts = {k: v for k, v in dict(mining or {}).items() if v is not None}
    miner_type = mining_opts.pop("type", "ssd" if softmax else "all")
    miner = build_miner(miner_type, **mining_opts)
    return Criterion(
        matcher=matcher,
        box_coder=box_coder,
        miner=miner,
        cls_activation=cls_activation,
        cls_loss=loss_opts.pop("cls", "softmax_ce" if softmax else "focal"),
        box_loss=loss_opts.pop("box", "smooth_l1" if softmax else "l1"),
        **loss_opts,
    )
