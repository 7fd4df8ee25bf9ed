"""The ``soft`` miner: the ``ssd`` quota of negatives, drawn with probability ~ exp(loss / T)."""

from __future__ import annotations

import math

import torch
from torch import Tensor

from detmine.errors import OptionError
from detmine.mining._common import check_miner_inputs
from detmine.mining.ssd import SSDQuotaMiner


class SoftMiner(SSDQuotaMiner):
    """Per image: every positive, plus as many negatives as the ``ssd`` miner keeps, drawn
    without replacement with probability proportional to ``exp(loss / temperature)``.

    The count per image is the ``ssd`` miner's
    (:meth:`SSDMiner.num_negatives <detmine.mining.ssd.SSDMiner.num_negatives>`:
    ``neg_pos_ratio x positives``, at least ``min_negatives``, at most the negatives
    available); only which negatives fill it changes. The draw is the Gumbel-top-k trick
    (Kool et al. 2019, "Stochastic Beams and Where to Find Them"): with ``g_i`` i.i.d.
    standard Gumbel noise, the ``k`` largest keys ``loss_i / T + g_i`` are distributed as
    ``k`` successive draws without replacement from the softmax of ``loss / T`` -- one
    ``topk`` over the batch, no loop over images or draws.

    Why: top-k mining (``ssd``) always trains on the very hardest negatives, which are also
    the likeliest label noise and the most over-fitted; the temperature interpolates from
    that (``T -> 0``; ``T = 0`` *is* the ``ssd`` miner, same selection and tie-breaking) to
    uniform sampling (``T -> inf``, the ``random`` miner's negatives at the ``ssd`` quota),
    so a sweep over ``T`` measures how much of a result is owed to the selection bias of
    pure top-k. ``T`` is in loss units: a negative whose loss is ``T`` higher than another's
    is ``e`` times as likely to be drawn first.

    The classification loss is divided by the number of positives
    (``normalize_by = "positives"``), as ``ssd``'s.

    Call: ``miner(cls_loss [B, A], labels [B, A], boxes=None) -> bool [B, A]``; ``boxes`` is
    accepted and unused (``box_source = None``). One host sync (the batch's quota).

    Args:
        neg_pos_ratio: negatives per positive (SSD: 3). May be fractional.
        min_negatives: negatives kept per image even with few or no positives.
        temperature: ``T >= 0``, in loss units; ``0`` is the ``ssd`` miner.
        seed: the noise comes from a private :class:`~detmine.mining.stream.RandomStream`
            (resumable, different per DDP process); ``None`` uses torch's global RNG.
    """

    def __init__(
        self,
        *,
        neg_pos_ratio: float = 3,
        min_negatives: int = 0,
        temperature: float = 1.0,
        seed: int | None = None,
    ) -> None:
        super().__init__(neg_pos_ratio=neg_pos_ratio, min_negatives=min_negatives, seed=seed)
        if (
            isinstance(temperature, bool)
            or not isinstance(temperature, (int, float))
            or not math.isfinite(temperature)
            or temperature < 0
        ):
            raise OptionError("temperature", f"must be a finite number >= 0, got {temperature!r}")
        self.temperature = float(temperature)

    def __call__(self, cls_loss: Tensor, labels: Tensor, boxes: Tensor | None = None) -> Tensor:
        num_images, num_anchors = check_miner_inputs("soft", cls_loss, labels, boxes)
        if self.temperature == 0.0:
            return self.ssd(cls_loss, labels, boxes)
        # The stream moves on every call, whatever the batch holds: DDP processes stay in step.
        generator = self.stream.generator(labels.device)
        positive = labels > 0
        negative = labels == 0
        num_neg = torch.minimum(self.ssd.num_negatives(labels), negative.sum(dim=1, keepdim=True))
        k = int(num_neg.max()) if num_neg.numel() else 0  # host sync: the top-k budget of the batch
        if k == 0:
            return positive
        dtype = torch.promote_types(cls_loss.dtype, torch.float32)
        uniform = torch.rand(
            (num_images, num_anchors), dtype=dtype, device=labels.device, generator=generator
        )
        # -log(-log(u)) is standard Gumbel; the clamp keeps u = 0 (a float32 draw can be
        # exactly 0) from giving an -inf key that could tie with the masked anchors.
        gumbel = -torch.log(-torch.log(uniform.clamp_(min=torch.finfo(dtype).tiny)))
        # T times the keys loss / T + g: the same order, and no overflow as T -> 0.
        keys = cls_loss.detach().to(dtype) + self.temperature * gumbel
        keys.masked_fill_(~negative, float("-inf"))
        order = keys.topk(k, dim=1).indices  # [B, k]
        keep = torch.arange(k, device=labels.device) < num_neg
        return positive | torch.zeros_like(negative).scatter_(1, order, keep)

    def __repr__(self) -> str:
        return (
            f"SoftMiner(neg_pos_ratio={self.neg_pos_ratio}, min_negatives={self.min_negatives}, "
            f"temperature={self.temperature}, seed={self.seed})"
        )
