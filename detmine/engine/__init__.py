"""Training: builders, the trainer and its hooks, the event storage and writers, checkpoints,
run state and resume rules, optimisation. Evaluation is :mod:`detmine.evaluation`; file safety
is :mod:`detmine.safe_io`.

``from detmine.engine import Trainer`` works; submodules are imported on first use, so importing
the package stays light.
"""

from __future__ import annotations

from typing import Any

__all__ = ["Trainer"]


def __getattr__(name: str) -> Any:
    if name == "Trainer":
        from detmine.engine.trainer import Trainer

        return Trainer
    raise AttributeError(f"module 'detmine.engine' has no attribute {name!r}")
