"""What every miner shares: the input check and the values of the interface attributes.

Every miner class declares two attributes the criterion reads (see
:mod:`detmine.mining`):

- ``box_source``: one of :data:`BOX_SOURCES` -- ``None`` (the miner takes no
  boxes), ``"anchors"`` or ``"predictions"`` (the decoded predicted boxes);
- ``normalize_by``: one of :data:`NORMALIZE_BY` -- what the classification loss
  of the selected anchors is divided by.
"""

from __future__ import annotations

import torch
from torch import Tensor

from detmine.errors import OptionError

#: Valid values of a miner's ``box_source``.
BOX_SOURCES: tuple[str | None, ...] = (None, "anchors", "predictions")
#: Valid values of a miner's ``normalize_by``.
NORMALIZE_BY: tuple[str, ...] = ("positives", "selected")


def check_count(option: str, value: int, minimum: int) -> int:
    """``value`` as an integer ``>= minimum``, or an :class:`OptionError` naming ``option``
    (the option checks OHEM, random sampling and SSD share)."""
    if isinstance(value, bool) or not isinstance(value, int):
        raise OptionError(option, f"must be an integer, got {value!r}")
    if value < minimum:
        raise OptionError(option, f"must be >= {minimum}, got {value}")
    return value


def check_seed(option: str, value: int | None) -> int | None:
    """``value`` as ``None`` or an integer, or an :class:`OptionError` naming ``option``."""
    if value is not None and (isinstance(value, bool) or not isinstance(value, int)):
        raise OptionError(option, f"must be null or an integer, got {value!r}")
    return value


def check_fraction(
    option: str, value: float | None, *, low_open: bool, allow_none: bool = False
) -> float | None:
    """``value`` as a number in ``(0, 1]`` (``low_open``) or ``[0, 1]``; ``None`` passes with
    ``allow_none``. Otherwise an :class:`OptionError` naming ``option``."""
    if value is None and allow_none:
        return None
    if (
        isinstance(value, bool)
        or not isinstance(value, (int, float))
        or value > 1.0
        or not (0.0 < value if low_open else 0.0 <= value)
    ):
        interval = "(0, 1]" if low_open else "[0, 1]"
        raise OptionError(
            option, f"must be {'null or ' if allow_none else ''}a number in {interval}, got {value!r}"
        )
    return float(value)


def check_miner_inputs(name: str, cls_loss: Tensor, labels: Tensor, boxes: Tensor | None) -> tuple[int, int]:
    """Check the shapes of a miner's inputs (no host sync) and return ``(B, A)``.

    Args:
        name: the miner's type, for the message.
        cls_loss: ``[B, A]`` floating point.
        labels: ``[B, A]`` integer.
        boxes: ``[B, A, 4]`` or ``None``.

    Raises:
        ValueError: naming the tensor, its shape / dtype and what was expected.
    """
    if cls_loss.dim() != 2 or not cls_loss.is_floating_point():
        raise ValueError(
            f"{name} miner: cls_loss must be a floating point [B, A] tensor, "
            f"got {cls_loss.dtype} {tuple(cls_loss.shape)}"
        )
    if labels.shape != cls_loss.shape or labels.is_floating_point() or labels.dtype == torch.bool:
        raise ValueError(
            f"{name} miner: labels must be an integer tensor shaped like cls_loss "
            f"{tuple(cls_loss.shape)}, got {labels.dtype} {tuple(labels.shape)}"
        )
    if boxes is not None and boxes.shape != (*cls_loss.shape, 4):
        raise ValueError(
            f"{name} miner: boxes must be [B, A, 4] = {(*cls_loss.shape, 4)}, got {tuple(boxes.shape)}"
        )
    return cls_loss.shape[0], cls_loss.shape[1]
