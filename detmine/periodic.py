"""The one periodic rule every hook (and anything else that runs "every N iterations") uses.

``iteration`` counts finished optimisation steps (1 after the first step); something with a
``period`` runs after iterations ``period``, ``2 * period``, ... and never with ``period`` 0.
:class:`~detmine.engine.trainer.PeriodicHook` adds "and once after the final iteration".
No torch import.
"""

from __future__ import annotations


def is_due(iteration: int, period: int) -> bool:
    """True when ``period > 0`` and ``iteration`` is a multiple of it."""
    return period > 0 and iteration % period == 0


__all__ = ["is_due"]
