"""Captions of the mining pictures: numbers that say where the negatives' loss goes.

With the ``all`` miner (the focal loss path) every negative is "selected", so a count such as
"mined neg 12171 of 12171" says nothing; what tells one loss from another is how concentrated
the negatives' loss is: "negatives: top 1% hold 38% of their loss, top 10% 81%". With a real
miner the caption gives how many negatives it kept and the share of the negatives' loss they
hold.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any

import torch
from torch import Tensor

TOP_FRACTIONS = (0.01, 0.10)


def top_count(n: int, fraction: float) -> int:
    """How many of ``n`` negatives make the top ``fraction``: ``ceil(fraction * n)``, at least 1
    when ``n > 0``."""
    return 0 if n <= 0 else max(1, math.ceil(fraction * n - 1e-9))


def top_loss_shares(losses: Tensor, fractions: Sequence[float] = TOP_FRACTIONS) -> list[float]:
    """The share of ``losses.sum()`` held by the :func:`top_count` largest, per fraction.

    Args:
        losses: ``[N]`` the negatives' loss (>= 0).

    Returns:
        One share in ``[0, 1]`` per fraction; ``nan`` when there is no negative or no loss.
    """
    values = losses.detach().flatten().double()
    total = float(values.sum()) if values.numel() else 0.0
    if total <= 0:
        return [float("nan")] * len(fractions)
    ranked = torch.sort(values, descending=True).values
    cum = torch.cumsum(ranked, 0)
    return [float(cum[top_count(len(ranked), f) - 1]) / total for f in fractions]


def _pct(share: float) -> str:
    return "n/a" if math.isnan(share) else f"{100 * share:.0f}%"


def mining_caption(
    labels: Tensor,
    selected: Tensor,
    loss: Tensor,
    *,
    image_id: Any = None,
    shown: int | None = None,
) -> str:
    """The caption of one image's mining picture (parts separated by ``" | "``).

    Args:
        labels: ``[A]`` int64 (``-1`` ignore, ``0`` background, ``1..K``).
        selected: ``[A]`` bool, the anchors whose loss counted.
        loss: ``[A]`` per-anchor classification loss.
        image_id: shown first when given.
        shown: how many negatives the picture draws.

    Returns:
        e.g. ``"image 7 | negatives: top 1% hold 38% of their loss, top 10% 81% | 9 positives,
        40 ignored | 20 hardest shown"`` (every negative counted) or ``"image 7 | mined 27 of
        12171 negatives (0.2%), holding 41% of their loss | ..."``.
    """
    neg = labels == 0
    mined = neg & selected
    neg_loss = loss.detach().double()[neg]
    counts = torch.stack([neg.sum(), mined.sum(), (labels > 0).sum(), (labels < 0).sum()]).tolist()
    n_neg, n_mined, n_pos, n_ign = (int(c) for c in counts)
    if n_mined == n_neg:  # the `all` miner: say how concentrated the loss is
        shares = top_loss_shares(neg_loss)
        what = (
            f"negatives: top 1% hold {_pct(shares[0])} of their loss, top 10% {_pct(shares[1])}"
            if n_neg
            else "no negatives"
        )
    else:
        total = float(neg_loss.sum())
        held = float(loss.detach().double()[mined].sum()) / total if total > 0 else float("nan")
        frac = f"{100 * n_mined / n_neg:.1f}%" if n_neg else "n/a"
        what = f"mined {n_mined} of {n_neg} negatives ({frac}), holding {_pct(held)} of their loss"
    parts = [] if image_id is None else [f"image {image_id}"]
    parts += [what, f"{n_pos} positives, {n_ign} ignored"]
    if shown is not None:
        parts.append(f"{shown} hardest shown")
    return " | ".join(parts)
