"""What the configured miner really selects: the model and the criterion run over images of a
split (no gradients), per image the selected anchors and the negatives' loss they carry."""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch

from detmine import console


@dataclass(frozen=True)
class MiningReplay:
    """The criterion's selection over ``I`` images.

    Attributes:
        positives / negatives: int64 ``[I]``: positive / background anchors per image.
        selected_positives / selected_negatives: int64 ``[I]``: of those, what the miner selected.
        negative_loss: float64 ``[I]``: the classification loss summed over all negatives.
        selected_negative_loss: float64 ``[I]``: ... over the selected negatives.
    """

    positives: np.ndarray
    negatives: np.ndarray
    selected_positives: np.ndarray
    selected_negatives: np.ndarray
    negative_loss: np.ndarray
    selected_negative_loss: np.ndarray

    @property
    def num_images(self) -> int:
        return int(self.positives.shape[0])

    @property
    def selected_loss_share(self) -> float:
        """The share of all negatives' loss that the selected negatives carry (over the images)."""
        total = float(self.negative_loss.sum())
        return float(self.selected_negative_loss.sum()) / total if total > 0 else 0.0


def _to(target: dict[str, Any], device: torch.device) -> dict[str, Any]:
    return {k: (v.to(device) if isinstance(v, torch.Tensor) else v) for k, v in target.items()}


@torch.no_grad()
def replay_mining(
    model: torch.nn.Module,
    criterion: torch.nn.Module,
    batches: Iterable[tuple[torch.Tensor, list[dict[str, Any]]]],
    *,
    device: torch.device | str = "cpu",
    total: int = 0,
    progress: bool = False,
) -> MiningReplay:
    """Run ``model`` and ``criterion`` (both in eval mode: the criterion's EMA normaliser and
    its miner's random stream are not moved) over ``batches`` of ``(images uint8 [B, 3, H, W],
    targets)`` and collect the criterion's :class:`~detmine.mining.MiningRecord` per image.

    Args:
        total: the images expected, for the progress bar.
    """
    model.eval()
    criterion.eval()
    device = torch.device(device)
    parts: dict[str, list[np.ndarray]] = {k: [] for k in MiningReplay.__dataclass_fields__}
    bar = console.Progress(total, "mining replay", unit="img", enabled=progress)
    try:
        for images, targets in batches:
            outputs = model(images.to(device))
            _, record = criterion(outputs, [_to(t, device) for t in targets])
            counts = record.counts()
            loss = record.cls_loss.double()
            negative = record.negatives
            parts["positives"].append(counts["positives"].cpu().numpy())
            parts["negatives"].append(counts["negatives"].cpu().numpy())
            parts["selected_positives"].append(counts["selected_positives"].cpu().numpy())
            parts["selected_negatives"].append(counts["mined_negatives"].cpu().numpy())
            parts["negative_loss"].append(torch.where(negative, loss, 0.0).sum(1).cpu().numpy())
            parts["selected_negative_loss"].append(
                torch.where(record.mined_negatives, loss, 0.0).sum(1).cpu().numpy()
            )
            bar.update(len(targets))
    finally:
        bar.close()
    empty = {"negative_loss": np.float64, "selected_negative_loss": np.float64}
    return MiningReplay(
        **{k: np.concatenate(v) if v else np.zeros(0, empty.get(k, np.int64)) for k, v in parts.items()}
    )
