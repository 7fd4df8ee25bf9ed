"""What a cell's run folder holds, and the command that runs (or continues) it.

A cell is **finished** when its final evaluation is in the folder (``detections_final.json`` of
the config's last iteration and an ``eval`` record of that iteration in ``metrics.jsonl``),
**interrupted** when the folder holds a run that is not finished (it resumes from its last
checkpoint), **new** when the folder holds no run, and **mismatched** when the folder's
``config.yaml`` differs from what the grid now asks for in anything that changes the numbers
(everything but where results go and how often the run is watched): such a cell is reported,
never reused nor overwritten.
"""

from __future__ import annotations

import json
import shlex
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml

from detmine.ablation.spec import AblationSpec, Cell
from detmine.config import Config, config_to_dict
from detmine.engine.resume import diff_configs
from detmine.engine.run_folder import FINAL_DETECTIONS

NEW, INTERRUPTED, FINISHED, MISMATCHED = "new", "interrupted", "finished", "mismatched"

#: keys that may differ between a cell's folder and the grid without changing its numbers (the
#: COCO backends give identical numbers; the views add columns, never change AP).
_WATCHING = (
    "output_dir",
    "train.resume",
    "train.keep_last",
    "data.num_workers",
    "vis.",
    "hooks",
    "plugins",
    "eval.backend",
    "eval.batch_size",
    "eval.views",
)


@dataclass(frozen=True)
class CellStatus:
    """A cell and the state of its run folder (``detail``: what differs, for a mismatch)."""

    cell: Cell
    state: str
    detail: str = ""


def _watching_only(key: str) -> bool:
    last = key.rsplit(".", 1)[-1]
    if last == "period" or last.endswith("_period"):
        return True
    return any(key == p.rstrip(".") or key.startswith(p) for p in _WATCHING)


def config_differences(saved: dict[str, Any], wanted: Config) -> str:
    """What in a run folder's ``config.yaml`` differs from ``wanted`` in a way that changes the
    numbers ("" when nothing does). The VOC class names a run discovered and saved count as the
    grid's unset value."""
    changes = diff_configs(saved, config_to_dict(wanted))
    items = {**changes.free, **changes.length, **changes.precision, **changes.other}
    kept = {
        k: v
        for k, v in items.items()
        if not _watching_only(k)
        and not (k.startswith("data.options.class_names") and v[1] in (None, "<unset>"))
    }
    return "; ".join(f"{k}: {old!r} -> {new!r}" for k, (old, new) in sorted(kept.items()))


def _finished(path: Path, max_iters: int) -> bool:
    detections = path / FINAL_DETECTIONS
    metrics = path / "metrics.jsonl"
    if not detections.is_file() or not metrics.is_file():
        return False
    try:
        final = json.loads(detections.read_text())
    except (OSError, ValueError):
        return False
    if not isinstance(final, dict) or final.get("iteration") != max_iters:
        return False
    for line in metrics.read_text().splitlines():
        try:
            record = json.loads(line)
        except ValueError:
            continue
        if isinstance(record, dict) and record.get("type") == "eval" and record.get("iteration") == max_iters:
            return True
    return False


def cell_status(cell: Cell, cfg: Config) -> CellStatus:
    """The state of ``cell``'s run folder against its config ``cfg`` (see the module docstring)."""
    path = cell.path
    saved_config = path / "config.yaml"
    if not saved_config.is_file():
        return CellStatus(cell, NEW)
    try:
        saved = yaml.safe_load(saved_config.read_text())
    except (OSError, yaml.YAMLError) as exc:
        return CellStatus(cell, MISMATCHED, f"{saved_config} cannot be read: {exc}")
    if not isinstance(saved, dict):
        return CellStatus(cell, MISMATCHED, f"{saved_config} holds no config")
    differences = config_differences(saved, cfg)
    if differences:
        return CellStatus(cell, MISMATCHED, differences)
    if _finished(path, cfg.train.max_iters):
        return CellStatus(cell, FINISHED)
    return CellStatus(cell, INTERRUPTED)


def train_command(
    spec: AblationSpec, status: CellStatus, *, train_tool: Path, nproc_per_node: int = 1
) -> list[str]:
    """The ``tools/train.py`` (or ``torchrun``) command of a cell; ``--resume`` continues an
    interrupted one (and starts a folder that holds no checkpoint yet from scratch)."""
    launcher = (
        [sys.executable, "-m", "torch.distributed.run", f"--nproc_per_node={nproc_per_node}"]
        if nproc_per_node > 1
        else [sys.executable]
    )
    command = [*launcher, str(train_tool), str(spec.recipe), *status.cell.overrides]
    command += [f"--plugin={p}" for p in spec.plugins]
    if status.state == INTERRUPTED:
        command.append("--resume")
    return command


def shell_line(command: list[str]) -> str:
    return " ".join(shlex.quote(part) for part in command)
