"""The criterion's input checks: finite head outputs (the same verdict on every DDP process)
and target labels inside the head's ``1..K``."""

from __future__ import annotations

import torch
import torch.distributed as dist
from torch import Tensor, nn

from detmine import distributed
from detmine.errors import DataError, NonFiniteError


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


def training_world(module: nn.Module) -> int:
    """The number of processes whose calls of ``module`` pair up: the DDP world size in
    training mode, 1 outside DDP and in evaluation (where ranks need not call it together)."""
    return distributed.get_world_size() if module.training else 1


def check_outputs_finite(logits: Tensor, deltas: Tensor, world: int) -> None:
    """Raise :class:`NonFiniteError` for NaN / Inf in ``logits [B, A, K']`` or ``deltas
    [B, A, 4]``. With ``world > 1`` every process raises together (the flag is all-reduced
    before any other collective), so a trainer that skips the batch keeps the processes in
    step."""
    message = nonfinite_message(logits, "cls_logits") or nonfinite_message(deltas, "box_deltas")
    if world > 1:
        flag = torch.tensor([0.0 if message is None else 1.0], device=logits.device)
        dist.all_reduce(flag, op=dist.ReduceOp.MAX)
        if message is None and bool(flag.item()):
            message = "non-finite head outputs on another process"
    if message is not None:
        raise NonFiniteError(message)


def check_labels(labels: Tensor, num_classes: int) -> None:
    """Raise :class:`DataError` when a ground-truth label (``[N]``, the valid boxes of the
    batch) lies outside ``1..num_classes``."""
    if labels.numel() and bool(((labels < 1) | (labels > num_classes)).any()):
        bad = labels[(labels < 1) | (labels > num_classes)][0].item()
        raise DataError(f"target label {bad} is outside 1..{num_classes} (the head's number of classes)")
