"""Per-class operating thresholds: the file the ``thresholds`` evaluation view writes next to a
checkpoint, and reading it back for ``eval.postprocess.class_thresholds`` (applied inside
``DenseDetector.predict``, so every tool reuses them).

File format (``thresholds.json``)::

    {"rule": "f1" | "precision", "iou": 0.5, "target_precision": 0.9 | null,
     "classes": [{"name": "circle", "category_id": 1, "threshold": 0.42,
                  "precision": 0.91, "recall": 0.88, "f1": 0.89, "support": 512}, ...]}

``classes`` is in the contiguous class order (class ``k`` at index ``k - 1``).
"""

from __future__ import annotations

import json
import math
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from detmine.errors import ConfigError

THRESHOLDS_FILE = "thresholds.json"


def load_class_thresholds(value: Sequence[float] | str | Path | None) -> list[float] | None:
    """The per-class thresholds of ``eval.postprocess.class_thresholds``: a list as it is, a
    path read as a ``thresholds.json`` (a folder means its ``thresholds.json``), None as None.

    Raises:
        ConfigError: an unreadable or malformed file, or a value that is not a number in [0, 1]
            (one line naming the file or key).
    """
    if value is None:
        return None
    if isinstance(value, (str, Path)):
        path = Path(value)
        if path.is_dir():
            path = path / THRESHOLDS_FILE
        try:
            payload: Any = json.loads(path.read_text())
            values = [entry["threshold"] for entry in payload["classes"]]
        except (OSError, ValueError, KeyError, TypeError) as exc:
            raise ConfigError(
                f"eval.postprocess.class_thresholds: {path} is not a readable thresholds file ({exc})"
            ) from None
        where = str(path)
    else:
        values, where = list(value), "eval.postprocess.class_thresholds"
    for v in values:
        if isinstance(v, bool) or not isinstance(v, (int, float)) or not (0.0 <= v <= 1.0) or math.isnan(v):
            raise ConfigError(f"{where}: a class threshold must be a number in [0, 1], got {v!r}")
    return [float(v) for v in values]


def predict_options(postprocess: dict[str, Any]) -> dict[str, Any]:
    """``eval.postprocess`` as keyword options of ``predict``, its ``class_thresholds`` read."""
    return {**postprocess, "class_thresholds": load_class_thresholds(postprocess.get("class_thresholds"))}
