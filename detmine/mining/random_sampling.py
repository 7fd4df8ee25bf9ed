"""The ``random`` miner: balanced random sampling (the Faster R-CNN heuristic), the non-hard baseline."""

from __future__ import annotations

import torch
from torch import Tensor

from detmine.errors import ConfigError
from detmine.mining.all_anchors import check_miner_inputs

_KEY_RANGE = 2**31  # random keys in [0, 2^31); the label group is added in multiples of it (exact int64)


class RandomMiner:
    """Per image ``batch_size_per_image`` anchors drawn at random, at most ``pos_fraction`` positives.

    Per image ``b`` with ``P_b`` positives and ``N_b`` negatives it keeps
    ``p = min(P_b, floor(pos_fraction * batch_size_per_image))`` random positives and
    ``min(N_b, batch_size_per_image - p)`` random negatives (like torchvision's
    ``BalancedPositiveNegativeSampler``), uniformly without replacement. Ignored
    anchors are never drawn. Batched: one random int64 key per anchor, offset by
    its group (positives, negatives, ignored), one sort per row; the first ``p``
    positions and the first positions of the negative block are kept.

    Call: ``miner(cls_loss [B, A], labels [B, A], boxes=None) -> bool [B, A]``;
    the loss only provides the device/shape (``needs_boxes = False``).

    Args:
        batch_size_per_image: anchors drawn per image (Faster R-CNN RPN: 256).
        pos_fraction: maximal share of positives (RPN: 0.5).
        seed: seeds a private ``torch.Generator`` (one per device) so the draws
            repeat; ``None`` uses torch's global RNG (what ``torch.manual_seed`` and
            checkpointed RNG state control).
    """

    needs_boxes: bool = False

    def __init__(
        self, *, batch_size_per_image: int = 256, pos_fraction: float = 0.5, seed: int | None = None
    ) -> None:
        if isinstance(batch_size_per_image, bool) or not isinstance(batch_size_per_image, int):
            raise ConfigError(f"mining.batch_size_per_image must be an integer, got {batch_size_per_image!r}")
        if batch_size_per_image < 1:
            raise ConfigError(f"mining.batch_size_per_image must be >= 1, got {batch_size_per_image}")
        if (
            isinstance(pos_fraction, bool)
            or not isinstance(pos_fraction, (int, float))
            or not 0 <= pos_fraction <= 1
        ):
            raise ConfigError(f"mining.pos_fraction must be a number in [0, 1], got {pos_fraction!r}")
        if seed is not None and (isinstance(seed, bool) or not isinstance(seed, int)):
            raise ConfigError(f"mining.seed must be null or an integer, got {seed!r}")
        self.batch_size_per_image = batch_size_per_image
        self.pos_fraction = float(pos_fraction)
        self.seed = seed
        self._generators: dict[torch.device, torch.Generator] = {}

    def _generator(self, device: torch.device) -> torch.Generator | None:
        if self.seed is None:
            return None
        if device not in self._generators:
            self._generators[device] = torch.Generator(device=device).manual_seed(self.seed)
        return self._generators[device]

    def __call__(self, cls_loss: Tensor, labels: Tensor, boxes: Tensor | None = None) -> Tensor:
        num_images, num_anchors = check_miner_inputs("random", cls_loss, labels, boxes)
        device = labels.device
        positive = labels > 0
        negative = labels == 0
        group = torch.where(positive, 0, torch.where(negative, 1, 2))  # positives, negatives, ignored
        keys = torch.randint(
            _KEY_RANGE, (num_images, num_anchors), device=device, generator=self._generator(device)
        )
        order = (keys + group * _KEY_RANGE).sort(dim=1).indices

        num_pos_avail = positive.sum(dim=1, keepdim=True)
        num_pos = num_pos_avail.clamp(max=int(self.pos_fraction * self.batch_size_per_image))
        num_neg = torch.minimum(negative.sum(dim=1, keepdim=True), self.batch_size_per_image - num_pos)
        # Sorted row: [positives | negatives | ignored], each block in random order.
        position = torch.arange(num_anchors, device=device)
        keep_sorted = (position < num_pos) | (
            (position >= num_pos_avail) & (position < num_pos_avail + num_neg)
        )
        return torch.zeros_like(positive).scatter_(1, order, keep_sorted)

    def __repr__(self) -> str:
        return (
            f"RandomMiner(batch_size_per_image={self.batch_size_per_image}, "
            f"pos_fraction={self.pos_fraction}, seed={self.seed})"
        )
