"""``Criterion``: the loss of a dense detector, one batch at a time (formula: :mod:`detmine.criterion`)."""

from __future__ import annotations

import torch
import torch.distributed as dist
from torch import Tensor, nn

from detmine.box_coder import BoxCoder
from detmine.console import warn
from detmine.criterion.checks import check_labels, check_outputs_finite, training_world
from detmine.errors import ConfigError
from detmine.losses import CLS_LOSSES
from detmine.matching import Matcher, pad_targets
from detmine.mining._common import BOX_SOURCES, NORMALIZE_BY
from detmine.mining.record import Miner, MiningRecord
from detmine.structures import CLS_ACTIVATIONS, HeadOutputs, Target

NORMALIZERS = ("batch", "ema")


def fitting_cls_losses(cls_activation: str) -> list[str]:
    """The names in :data:`~detmine.losses.CLS_LOSSES` whose ``activation`` is ``cls_activation``."""
    return [name for name, cls in CLS_LOSSES.items() if getattr(cls, "activation", None) == cls_activation]


def misfit_message(loss_name: str, loss_activation: str | None, cls_activation: str) -> str:
    """The one-line error of a classification loss used on a head it does not fit."""
    valid = ", ".join(fitting_cls_losses(cls_activation)) or "(none)"
    return (
        f"loss.cls {loss_name!r} ({loss_activation} loss) does not fit a {cls_activation} head; "
        f"valid: {valid}"
    )


class Criterion(nn.Module):
    """Loss of a dense detector (see :mod:`detmine.criterion` for the exact formula).

    Args:
        matcher: assigns anchors to ground truth (:class:`detmine.matching.Matcher`).
        box_coder: encodes regression targets / decodes predictions.
        miner: ``miner(cls_loss [B, A], labels [B, A], boxes [B, A, 4] | None) -> bool [B, A]``.
            Its ``box_source`` attribute says which boxes it gets: ``None`` (none),
            ``"anchors"`` (the anchors, broadcast over the batch) or ``"predictions"``
            (the decoded, detached predictions); its ``normalize_by`` attribute the default
            classification normaliser.
        cls_loss: ``cls_loss(logits [B, A, K'], labels [B, A]) -> [B, A]``, an entry of
            :data:`detmine.losses.CLS_LOSSES`; its ``activation`` attribute must be the
            head's (``outputs.cls_activation``).
        box_loss: ``box_loss(deltas [P, 4], matched_boxes [P, 4], anchors [P, 4], box_coder)
            -> scalar sum``, an entry of :data:`detmine.losses.BOX_LOSSES`.
        box_weight: multiplier of the box loss.
        normalize_by: ``"positives"`` or ``"selected"``; None = the classification loss's
            ``normalize_by`` attribute when it declares one (GHM-C: its own normalisation is
            the paper's over the selected examples), else the miner's (``"positives"`` when
            neither has one).
        normalizer: ``"batch"`` or ``"ema"``.
        normalizer_momentum: EMA momentum.
    """

    def __init__(
        self,
        *,
        matcher: Matcher,
        box_coder: BoxCoder,
        miner: Miner,
        cls_loss: nn.Module,
        box_loss: nn.Module,
        box_weight: float = 1.0,
        normalize_by: str | None = None,
        normalizer: str = "batch",
        normalizer_momentum: float = 0.9,
    ) -> None:
        super().__init__()
        if normalize_by is None:
            normalize_by = getattr(cls_loss, "normalize_by", None) or getattr(
                miner, "normalize_by", "positives"
            )
        if normalize_by not in NORMALIZE_BY:
            raise ConfigError(f"unknown loss.normalize_by {normalize_by!r}; valid: {', '.join(NORMALIZE_BY)}")
        box_source = getattr(miner, "box_source", None)
        if box_source not in BOX_SOURCES:
            raise ConfigError(
                f"miner {type(miner).__name__} has box_source {box_source!r}; valid: anchors, predictions, None"
            )
        activation = getattr(cls_loss, "activation", None)
        if activation not in CLS_ACTIVATIONS:
            raise ConfigError(
                f"classification loss {type(cls_loss).__name__} has activation {activation!r} "
                f"(the head it fits); valid: {', '.join(CLS_ACTIVATIONS)}"
            )
        if normalizer not in NORMALIZERS:
            raise ConfigError(f"unknown loss.normalizer {normalizer!r}; valid: {', '.join(NORMALIZERS)}")
        if not 0.0 <= normalizer_momentum < 1.0:
            raise ConfigError(f"loss.normalizer_momentum must be in [0, 1), got {normalizer_momentum}")
        self.matcher = matcher
        self.box_coder = box_coder
        self.miner = miner
        self.cls_loss = cls_loss
        self.box_loss = box_loss
        self.box_weight = float(box_weight)
        self.normalize_by = normalize_by
        self.box_source = box_source
        self.normalizer = normalizer
        self.normalizer_momentum = float(normalizer_momentum)
        #: EMA of the classification normaliser's count (``normalizer="ema"``), checkpointed.
        self.register_buffer("count_ema", torch.tensor(100.0))

    # A miner is a plain object, not a module: its state (a private random stream's position)
    # rides in the criterion's state_dict as extra state, and train / eval reach it here.

    def train(self, mode: bool = True) -> Criterion:
        super().train(mode)
        set_mode = getattr(self.miner, "train", None)
        if callable(set_mode):
            set_mode(mode)
        return self

    def get_extra_state(self) -> dict:
        state = getattr(self.miner, "state_dict", None)
        return {"miner": state() if callable(state) else {}, "miner_class": type(self.miner).__name__}

    def set_extra_state(self, state: dict) -> None:
        """Restore the miner's state. A state of another miner class, or one the miner refuses
        (another seed), can only come from a resume whose config change was allowed: the miner
        then starts as built, with a warning."""
        load = getattr(self.miner, "load_state_dict", None)
        if not (callable(load) and isinstance(state, dict) and state.get("miner")):
            return
        saved_class = state.get("miner_class", type(self.miner).__name__)
        if saved_class != type(self.miner).__name__:
            warn(
                f"the checkpoint's miner state is {saved_class}'s; {type(self.miner).__name__} starts afresh"
            )
            return
        try:
            load(state["miner"])
        except ValueError as exc:
            warn(f"miner state not restored ({str(exc).splitlines()[0]}); it starts afresh")

    def load_state_dict(self, state_dict, strict: bool = True, assign: bool = False):  # type: ignore[override]
        """As :meth:`torch.nn.Module.load_state_dict`; a state from before miners had state (no
        ``_extra_state``, detmine 0.2) loads, leaving the miner as built."""
        if "_extra_state" not in state_dict:
            state_dict = {**state_dict, "_extra_state": self.get_extra_state()}
        return super().load_state_dict(state_dict, strict=strict, assign=assign)

    def extra_repr(self) -> str:
        parts = [f"matcher={self.matcher!r}", f"miner={self.miner!r}"]
        # losses that are not modules (registered plain classes) do not print as children
        parts += [f"{n}={getattr(self, n)!r}" for n in ("cls_loss", "box_loss") if n not in self._modules]
        parts.append(
            f"box_weight={self.box_weight}, normalize_by={self.normalize_by}, normalizer={self.normalizer}"
        )
        return ", ".join(parts)

    def _normalizers(self, num_pos: Tensor, num_selected: Tensor) -> tuple[Tensor, Tensor]:
        """``(classification, box)`` divisors of this process's loss sums (scalars, float32).

        Each count (positives; positives or selected for the classification) is the GLOBAL
        batch's -- summed over the DDP processes --, for the classification passed through the
        EMA when asked, clamped at 1 and divided by the world size ``W``. So the EMA
        holds the same number as one process on the whole batch (same start, same updates),
        and the mean of the ``W`` per-process losses ``sum_r S_r / (N / W) / W = S / N`` (what
        DDP's gradient averaging computes) equals that one process's loss. ``W = 1`` outside
        DDP and in evaluation (where ranks need not call the criterion together).
        """
        world = training_world(self)
        num_pos = self._sum_over_ranks(num_pos, world)
        count = num_pos if self.normalize_by == "positives" else self._sum_over_ranks(num_selected, world)
        if self.normalizer == "ema" and self.training:
            with torch.no_grad():
                m = self.normalizer_momentum
                self.count_ema.mul_(m).add_((1.0 - m) * count.to(self.count_ema.dtype))
            count = self.count_ema.clone().to(torch.float32)
        cls_norm = count.clamp(min=1) / world
        box_norm = cls_norm if self.normalize_by == "positives" else num_pos.clamp(min=1) / world
        return cls_norm, box_norm

    @staticmethod
    def _sum_over_ranks(count: Tensor, world: int) -> Tensor:
        """``count`` (a scalar) as float32, summed over the ``world`` DDP processes when
        ``world > 1`` (detached: a normaliser is a constant)."""
        total = count.detach().to(torch.float32).clone()
        if world > 1:
            dist.all_reduce(total)
        return total

    def forward(self, outputs: HeadOutputs, targets: list[Target]) -> tuple[dict[str, Tensor], MiningRecord]:
        """Compute the losses of one batch.

        Args:
            outputs: the model's ``HeadOutputs``: ``cls_logits [B, A, K']``, ``box_deltas
                [B, A, 4]``, ``anchors [A, 4]`` xyxy and ``cls_activation``.
            targets: ``B`` :class:`~detmine.structures.Target` dicts (boxes may be empty).

        Returns:
            ``({"cls": scalar, "box": scalar}, MiningRecord)``, both losses
            already divided by the normaliser.

        Raises:
            NonFiniteError: ``cls_logits`` or ``box_deltas`` holds NaN / Inf.
            DataError: a target box is malformed or a label is outside ``1..K``.
            ConfigError: the classification loss does not fit the head's activation.
        """
        logits, deltas, anchors = outputs.cls_logits, outputs.box_deltas, outputs.anchors
        num_images, num_anchors = logits.shape[:2]
        if deltas.shape != (num_images, num_anchors, 4) or anchors.shape != (num_anchors, 4):
            raise ValueError(
                f"shape mismatch: cls_logits {tuple(logits.shape)}, box_deltas {tuple(deltas.shape)}, "
                f"anchors {tuple(anchors.shape)}; expected [B, A, K'], [B, A, 4], [A, 4]"
            )
        if len(targets) != num_images:
            raise ValueError(f"got {len(targets)} targets for a batch of {num_images} images")
        if self.cls_loss.activation != outputs.cls_activation:
            name = type(self.cls_loss).__name__
            raise ConfigError(misfit_message(name, self.cls_loss.activation, outputs.cls_activation))
        check_outputs_finite(logits, deltas, training_world(self))
        # Losses in float32 whatever the head's precision (autocast off: the custom
        # autograd functions are not on autocast's lists); a no-op for float32 inputs.
        with torch.autocast(device_type=logits.device.type, enabled=False):
            return self._forward(
                logits.float(), deltas.float(), anchors.float(), targets, outputs.num_classes
            )

    def _forward(
        self, logits: Tensor, deltas: Tensor, anchors: Tensor, targets: list[Target], num_classes: int
    ) -> tuple[dict[str, Tensor], MiningRecord]:
        gt = pad_targets(targets, device=logits.device)
        check_labels(gt.labels[gt.valid], num_classes)
        match = self.matcher(anchors, gt)
        labels, matched = match.labels, match.matched_gt

        cls_loss = self.cls_loss(logits, labels)
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
        loss_box = self.box_loss(deltas[pos_b, pos_a], matched_boxes, anchors[pos_a], self.box_coder)
        loss_box = loss_box * (self.box_weight / box_norm)
        record = MiningRecord(
            labels=labels, selected=selected, cls_loss=cls_loss.detach(), matched_gt=matched
        )
        return {"cls": loss_cls, "box": loss_box}, record
