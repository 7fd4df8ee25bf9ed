"""GHM-C: the gradient-harmonised classification loss (Li, Liu, Wang, "Gradient Harmonized
Single-stage Detector", AAAI 2019).

Each (anchor, class) element of a sigmoid head has the gradient norm ``g = |sigmoid(x) - y|``
(``y`` the one-hot target, background rows all 0). ``[0, 1]`` is cut into ``bins`` uniform
bins (the last edge slightly above 1, so ``g = 1`` lands in the last bin); the gradient density
of an element is the number of elements in its bin, and its weight::

    beta_i = tot / GD(g_i) = tot / (n * nu_b)        (the paper's beta = N / GD(g))

with ``tot`` the number of valid elements (non-ignored anchors x ``K``), ``n`` the number of
non-empty bins of the batch and ``nu_b`` the element count of bin ``b``: in training its
exponential moving average over the steps (``nu <- momentum * nu + (1 - momentum) *
count``, every bin, an empty one counting 0), in evaluation the batch's own count. ``beta`` is
a constant (no gradient). Dividing by the non-empty bins ``n`` (mmdetection's choice; the
paper's unit-region approximation ``GD = M * R_ind`` divides by all ``M = bins``) keeps the mean
weight at 1 when ``nu`` is the batch's counts. Easy negatives (crowded low-``g`` bins) and outliers (a crowded
``g ~ 1`` bin) are down-weighted alike.

**State.** ``nu`` is a persistent buffer (in checkpoints, so a resumed run continues the same
average). The first training update sets ``nu`` to the batch's counts; mmdetection's ``GHMC``
starts its ``acc_sum`` at 0 and decays from there, which makes its first steps' weights
``1 / (1 - momentum)`` times too large (4x at 0.75) until the average has warmed up, and it
updates only the bins that are non-empty in the batch (here an empty bin's count, 0, enters
the average as the paper's recurrence has it). With ``momentum = 0`` the two agree exactly.
Under DDP (training) the bin counts and ``tot`` are summed over the processes before the
update, so every process holds the state one process would on the whole batch; evaluation
uses each process's own batch and leaves the state alone.

**Normalisation.** The per-anchor loss is the mean over the ``K`` columns of ``beta * BCE``,
and the class declares ``normalize_by = "selected"``: with ``mining: all`` the criterion divides
the summed loss of the non-ignored anchors by their number ``N_a`` (the global one under DDP),
and ``tot = N_a * K``, so::

    criterion = (1 / N_a) * sum_a (1 / K) * sum_k tot / (n * nu_b) * BCE_ak
              = sum_{a, k} BCE_ak / (n * nu_b)

the paper's ``L_GHM-C = (1 / N) * sum_i beta_i * BCE_i``, and mmdetection's ``GHMC``
value (its ``sum(weights * BCE) / tot``). With another miner the divisor is the selected
anchors' number ``N_s``, which scales that value by ``N_a / N_s`` (computed over the selection
only); with ``loss.normalize_by: positives`` by ``N_a / N_pos``.
"""

from __future__ import annotations

import torch
import torch.distributed as dist
import torch.nn.functional as F
from torch import Tensor, nn

from detmine import distributed
from detmine.errors import OptionError


class GHMCLoss(nn.Module):
    """GHM-C per anchor (formula, state and normalisation: :mod:`detmine.losses.ghm`).

    Call: ``loss(logits [B, A, K], labels [B, A]) -> [B, A]``: the mean over the ``K`` columns
    of ``beta * BCE``, 0 with zero gradient on ignored anchors. Training-mode calls update the
    state (and, under DDP, all-reduce the counts: every process must call it together).

    Args:
        bins: number of uniform gradient-norm bins on ``[0, 1]``, ``>= 1``.
        momentum: EMA momentum of the bin counts, in ``[0, 1)`` (0: the batch's counts).

    Buffers (persistent):
        bin_count_ema: float64 ``[bins]``, ``nu``: the moving average of each bin's count.
        num_updates: int64 scalar, the training updates so far (0: the next one sets ``nu``).
    """

    activation = "sigmoid"
    normalize_by = "selected"
    config_key: str = ""
    bin_count_ema: Tensor
    num_updates: Tensor

    def __init__(self, *, bins: int = 10, momentum: float = 0.75) -> None:
        super().__init__()
        if bins < 1:
            raise OptionError("bins", f"must be >= 1, got {bins}")
        if not 0.0 <= momentum < 1.0:
            raise OptionError("momentum", f"must lie in [0, 1), got {momentum}")
        self.bins = int(bins)
        self.momentum = float(momentum)
        self.register_buffer("bin_count_ema", torch.zeros(self.bins, dtype=torch.float64))
        self.register_buffer("num_updates", torch.zeros((), dtype=torch.int64))

    def extra_repr(self) -> str:
        return f"bins={self.bins}, momentum={self.momentum}"

    def forward(self, logits: Tensor, labels: Tensor) -> Tensor:
        num_classes = logits.shape[-1]
        valid = labels >= 0
        classes = torch.arange(1, num_classes + 1, device=labels.device)
        target = (labels.unsqueeze(-1) == classes).to(logits.dtype)  # [B, A, K]
        with torch.no_grad():
            weight = self._weights(logits.detach(), target, valid)
        bce = F.binary_cross_entropy_with_logits(logits, target, weight=weight, reduction="none")
        return bce.mean(dim=-1)

    def _weights(self, logits: Tensor, target: Tensor, valid: Tensor) -> Tensor:
        """``beta`` of every element, ``[B, A, K]`` in the logits' dtype, 0 on ignored anchors."""
        g = (torch.sigmoid(logits) - target).abs_()
        edges = torch.arange(self.bins + 1, dtype=g.dtype, device=g.device) / self.bins
        edges[-1] += 1e-6
        # edges[b] <= g < edges[b + 1] -> b; ignored anchors go to an overflow bin (index `bins`)
        index = (torch.bucketize(g, edges, right=True) - 1).clamp_(0, self.bins - 1)
        index = torch.where(valid.unsqueeze(-1), index, self.bins)
        counts = torch.bincount(index.flatten(), minlength=self.bins + 1)[: self.bins]
        tot = valid.sum() * logits.shape[-1]
        counts, tot = self._global(counts, tot)
        density = self._density(counts.to(torch.float64))
        nonempty = counts > 0
        n = nonempty.sum()
        beta = torch.where(nonempty, tot / (n * density).clamp(min=1e-12), 0.0)
        beta = torch.cat([beta, beta.new_zeros(1)]).to(logits.dtype)  # the overflow bin weighs 0
        return beta[index]

    def _global(self, counts: Tensor, tot: Tensor) -> tuple[Tensor, Tensor]:
        """The bin counts and ``tot`` of the global batch: summed over the DDP processes in
        training (one all-reduce), this process's own otherwise."""
        if not (self.training and distributed.get_world_size() > 1):
            return counts, tot
        both = torch.cat([counts, tot.view(1)]).to(torch.int64)
        dist.all_reduce(both)
        return both[:-1], both[-1]

    def _density(self, counts: Tensor) -> Tensor:
        """``nu`` (float64 ``[bins]``): in training the updated moving average (the first
        update sets it to ``counts``), in evaluation ``counts`` (the state untouched)."""
        if not self.training:
            return counts
        m = self.momentum
        updated = torch.where(self.num_updates == 0, counts, m * self.bin_count_ema + (1.0 - m) * counts)
        self.bin_count_ema.copy_(updated)
        self.num_updates += 1
        return updated


__all__ = ["GHMCLoss"]
