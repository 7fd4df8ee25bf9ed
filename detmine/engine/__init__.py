"""Training engine: builders, the trainer and its hooks, checkpoints, optimisation, evaluation.

``from detmine.engine import Trainer`` works; submodules are imported on first use so that
``import detmine.engine.evaluator`` stays light.
"""

from __future__ import annotations

from typing import Any

__all__ = ["Trainer"]


def __getattr__(name: str) -> Any:
    if name == "Trainer":
        from detmine.engine.trainer import Trainer

        return Trainer
    raise AttributeError(f"module 'detmine.engine' has no attribute {name!r}")
