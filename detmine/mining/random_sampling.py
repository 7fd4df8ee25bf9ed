"""The ``random`` miner: balanced random sampling (the Faster R-CNN heuristic), the non-hard baseline."""

from __future__ import annotations

import torch
from torch import Tensor

from detmine.mining._common import check_count, check_fraction, check_miner_inputs
from detmine.mining.stream import RandomStream, StreamMiner


class RandomMiner(StreamMiner):
    """Per image ``batch_size_per_image`` anchors drawn at random, at most ``pos_fraction`` positives.

    Per image ``b`` with ``P_b`` positives and ``N_b`` negatives it keeps
    ``p = min(P_b, floor(pos_fraction * batch_size_per_image))`` random positives and
    ``min(N_b, batch_size_per_image - p)`` random negatives (like torchvision's
    ``BalancedPositiveNegativeSampler``), uniformly without replacement. Ignored
    anchors are never drawn. Batched: one uniform random key per anchor; per row
    the positives (negatives) with the ``p`` (``n``) largest keys, by one ``topk``
    over the batch for each kind.

    The classification loss of the selection is divided by the number of
    selected anchors (``normalize_by = "selected"``): the average over the
    sampled minibatch, as Faster R-CNN's RPN and Fast R-CNN do.

    Call: ``miner(cls_loss [B, A], labels [B, A], boxes=None) -> bool [B, A]``;
    the loss only provides the device/shape; ``boxes`` is accepted and unused
    (``box_source = None``).

    Args:
        batch_size_per_image: anchors drawn per image (Faster R-CNN RPN: 256).
        pos_fraction: maximal share of positives (RPN: 0.5).
        seed: the draws come from a private :class:`~detmine.mining.stream.RandomStream`
            seeded with it (different per DDP process, its position saved in the
            criterion's state, so a resumed run continues it); ``None`` (default) uses
            torch's global RNG, which ``torch.manual_seed`` and a checkpoint's saved RNG
            state control.
    """

    box_source: str | None = None
    normalize_by: str = "selected"

    def __init__(
        self, *, batch_size_per_image: int = 256, pos_fraction: float = 0.5, seed: int | None = None
    ) -> None:
        check_count("batch_size_per_image", batch_size_per_image, 1)
        check_fraction("pos_fraction", pos_fraction, low_open=False)
        self.batch_size_per_image = batch_size_per_image
        self.pos_fraction = float(pos_fraction)
        self.stream = RandomStream(seed)

    def __call__(self, cls_loss: Tensor, labels: Tensor, boxes: Tensor | None = None) -> Tensor:
        num_images, num_anchors = check_miner_inputs("random", cls_loss, labels, boxes)
        device = labels.device
        keys = torch.rand((num_images, num_anchors), device=device, generator=self.stream.generator(device))
        positive = labels > 0
        negative = labels == 0
        max_pos = int(self.pos_fraction * self.batch_size_per_image)
        num_pos = positive.sum(dim=1, keepdim=True).clamp(max=max_pos)
        num_neg = torch.minimum(negative.sum(dim=1, keepdim=True), self.batch_size_per_image - num_pos)
        return _random_subset(keys, positive, num_pos, max_pos) | _random_subset(
            keys, negative, num_neg, self.batch_size_per_image
        )

    def __repr__(self) -> str:
        return (
            f"RandomMiner(batch_size_per_image={self.batch_size_per_image}, "
            f"pos_fraction={self.pos_fraction}, seed={self.seed})"
        )


def _random_subset(keys: Tensor, eligible: Tensor, count: Tensor, max_count: int) -> Tensor:
    """``[B, A]`` bool: per row, the ``count [B, 1]`` eligible anchors with the largest
    random ``keys [B, A]`` (``count <= eligible per row``, ``count <= max_count``): a
    uniform draw without replacement, by one ``topk`` for the whole batch."""
    k = min(max_count, keys.shape[1])
    selected = torch.zeros_like(eligible)
    if k == 0:
        return selected
    order = keys.masked_fill(~eligible, -1.0).topk(k, dim=1).indices  # eligible keys are >= 0
    return selected.scatter_(1, order, torch.arange(k, device=keys.device) < count)
