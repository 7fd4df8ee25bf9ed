"""Class weights from the training set's class frequencies (the ``class_weights`` schemes of the
classification losses).

Given the ``K`` object counts ``n_c`` of the training set
(:meth:`~detmine.structures.TrainingSetFacts.instances_per_class`), a scheme gives each class
a weight, then the ``K`` weights are scaled to mean 1 (so the loss keeps its scale and the
learning rate its meaning):

- ``inverse``: ``w_c ∝ 1 / n_c``;
- ``inverse_sqrt``: ``w_c ∝ 1 / sqrt(n_c)``;
- ``effective_number`` (Cui et al., "Class-Balanced Loss Based on Effective Number of
  Samples", CVPR 2019): ``w_c ∝ (1 - β) / (1 - β^n_c)``, the inverse of the class's effective
  number of samples ``E_n = (1 - β^n) / (1 - β)``; ``β = 0`` gives equal weights and
  ``β -> 1`` approaches ``inverse``.

A class absent from the training set (``n_c = 0``) counts as ``n_c = 1``: it gets the largest
weight any class could get rather than an infinite one.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Literal

#: the names a ``class_weights`` option accepts instead of a list of weights.
ClassWeightScheme = Literal["inverse", "inverse_sqrt", "effective_number"]
CLASS_WEIGHT_SCHEMES: tuple[str, ...] = ("inverse", "inverse_sqrt", "effective_number")


def frequency_weights(counts: Sequence[int], scheme: str, beta: float = 0.999) -> list[float]:
    """Per-class weights from the class counts, normalised to mean 1.

    Formulas (``n_c`` the count of class ``c``, a count of 0 taken as 1)::

        inverse:           w_c ∝ 1 / n_c
        inverse_sqrt:      w_c ∝ 1 / sqrt(n_c)
        effective_number:  w_c ∝ (1 - beta) / (1 - beta ** n_c)     (Cui et al., CVPR 2019)

    then ``w_c <- K * w_c / sum_j w_j``.

    Args:
        counts: ``K`` non-negative counts, one per class (class ``k`` at index ``k - 1``).
        scheme: one of :data:`CLASS_WEIGHT_SCHEMES`.
        beta: ``β`` of ``effective_number``, in ``[0, 1)`` (unused by the other schemes).

    Returns:
        ``K`` weights whose mean is 1.

    Raises:
        ValueError: an unknown scheme, no counts, a negative count or ``beta`` outside ``[0, 1)``.
    """
    if scheme not in CLASS_WEIGHT_SCHEMES:
        raise ValueError(f"unknown class weight scheme {scheme!r}; valid: {', '.join(CLASS_WEIGHT_SCHEMES)}")
    if not 0.0 <= beta < 1.0:
        raise ValueError(f"beta must lie in [0, 1), got {beta}")
    if len(counts) == 0:
        raise ValueError("no class counts: a class weight needs at least one class")
    if any(int(n) < 0 for n in counts):
        raise ValueError(f"class counts must be >= 0, got {list(counts)}")
    n = [max(int(c), 1) for c in counts]
    if scheme == "inverse":
        raw = [1.0 / c for c in n]
    elif scheme == "inverse_sqrt":
        raw = [1.0 / math.sqrt(c) for c in n]
    elif beta == 0.0:
        raw = [1.0] * len(n)  # (1 - 0) / (1 - 0^n), n >= 1
    else:
        # 1 - beta^n as -expm1(n log beta): exact for beta close to 1 and small n
        raw = [(1.0 - beta) / -math.expm1(c * math.log(beta)) for c in n]
    scale = len(raw) / sum(raw)
    return [w * scale for w in raw]


__all__ = ["CLASS_WEIGHT_SCHEMES", "ClassWeightScheme", "frequency_weights"]
