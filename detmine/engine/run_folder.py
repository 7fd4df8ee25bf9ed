"""The run folder of one training run: never two runs mixed in it.

:class:`RunFolder` owns the folder rules -- one writer at a time (:mod:`detmine.run_lock`,
taken before anything is read or written), a used folder refused without ``--resume`` /
``--overwrite``, the resume config check (:mod:`detmine.engine.resume`) and its history in
``config.yaml``'s header, ``metrics.jsonl`` cut back to the resumed iteration, and whether a
resumed run had already finished.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from detmine import distributed as dist
from detmine.config import Config, config_to_dict, save_config
from detmine.console import log
from detmine.engine.checkpoint import CheckpointManager
from detmine.engine.resume import ConfigChanges, check_resume_config
from detmine.engine.trainer import HookBase
from detmine.errors import CheckpointError, ConfigError
from detmine.run_lock import RunLock
from detmine.safe_io import atomic_write_text, write_error

#: the final evaluation's detections in a run folder (``EvaluationHook``; ``tools/ablate.py``
#: bootstraps over their images).
FINAL_DETECTIONS = "detections_final.json"


class RunFolder:
    """``output_dir`` of one run: never two runs mixed in it.

    A fresh run into a folder that holds checkpoints or metrics is refused unless
    ``overwrite`` (which deletes them first); a resumed run checks the checkpoint's config
    (:mod:`detmine.engine.resume`), keeps the history of accepted changes in the header of
    ``config.yaml`` and cuts ``metrics.jsonl`` back to the resumed iteration. A fresh run writes
    ``config.yaml`` in :meth:`open`; a resumed one with :meth:`save_config` once its state
    loaded, so a resume that fails leaves the file as it was.
    """

    def __init__(
        self, cfg: Config, *, overwrite: bool, allow_config_change: bool, trust_checkpoint: bool
    ) -> None:
        self.cfg = cfg
        self.path = Path(cfg.output_dir)
        self.overwrite = overwrite
        self.allow_config_change = allow_config_change
        self.trust_checkpoint = trust_checkpoint
        self.checkpoints = CheckpointManager(self.path, keep_last=cfg.train.keep_last)
        self.history: list[str] = []
        self.lock: RunLock | None = None

    @property
    def metrics(self) -> Path:
        return self.path / "metrics.jsonl"

    def open(self) -> tuple[dict[str, Any] | None, ConfigChanges]:
        """Prepare the folder; returns ``(checkpoint state to resume from or None, changes)``.
        Every process reads and checks; the main one clears and writes."""
        self.lock = lock_run_folder(self.path)  # before anything reads or writes here
        resuming = self.cfg.train.resume
        state = (
            self.checkpoints.load_latest(map_location="cpu", trusted=self.trust_checkpoint)
            if resuming
            else None
        )
        if self.path.exists() and not self.path.is_dir():
            raise CheckpointError(f"output_dir {self.path} is a file, not a folder")
        if not resuming and (self.checkpoints.has_checkpoints() or self.metrics.is_file()):
            if not self.overwrite:
                raise ConfigError(
                    f"output_dir {self.path} already holds a run; continue it with --resume, "
                    "or pass --overwrite to delete its checkpoints and metrics and start again"
                )
            if dist.is_main_process():
                self.checkpoints.clear()
                self.metrics.unlink(missing_ok=True)
                (self.path / FINAL_DETECTIONS).unlink(missing_ok=True)
                for events in self.path.glob("events.out.tfevents.*"):
                    events.unlink()
            dist.barrier()
        if dist.is_main_process() and self.path.is_dir():
            self.checkpoints.remove_stale_tmp()
        if resuming and state is None and dist.is_main_process():
            log(f"note: no checkpoint in {self.path} to resume from; starting from scratch")
        changes = ConfigChanges()
        if state is not None:
            changes = check_resume_config(
                state.get("config"),
                config_to_dict(self.cfg),
                allow_change=self.allow_config_change,
                source=str(self.checkpoints.latest()),
            )
            self.history = self._previous_history()
            if changes.recorded:
                described = "; ".join(f"{k}: {a!r} -> {b!r}" for k, (a, b) in changes.recorded.items())
                self.history.append(f"resumed at iteration {_iteration(state)} with changes: {described}")
        if dist.is_main_process():
            try:
                self.path.mkdir(parents=True, exist_ok=True)
            except OSError as exc:
                raise write_error(self.path, exc, "run folder") from None
        if state is None:
            self.save_config()  # a fresh run: what is about to run
        return state, changes

    def save_config(self) -> None:
        """Write ``config.yaml`` (the resolved config under the history header), main process."""
        if dist.is_main_process():
            save_config(self.cfg, self.path / "config.yaml", header=self.history)

    def check_length(self, state: dict[str, Any] | None, max_iters: int) -> None:
        """Refuse to resume a checkpoint beyond the run's length (config.yaml would say a
        shorter run than the weights had).

        Raises:
            ConfigError: naming the configured length and the checkpoint's iteration.
        """
        done = _iteration(state)
        if done is None or done <= max_iters:
            return
        t = self.cfg.train
        length = (
            f"train.max_iters={t.max_iters}"
            if t.max_iters > 0
            else f"train.epochs={t.epochs} ({max_iters} iterations)"
        )
        raise ConfigError(
            f"{length} is below iteration {done} of {self.checkpoints.latest()}, which --resume continues; "
            f"resume with a length of at least {done} iterations, or start again with --overwrite"
        )

    def finished(self, state: dict[str, Any] | None, max_iters: int, *, evaluates: bool) -> bool:
        """Whether ``state`` ends a completed run: it is at ``max_iters`` and, when the run
        evaluates, ``metrics.jsonl`` holds an evaluation of that iteration (a run stopped by a
        signal during its last step has not done its end-of-training work yet)."""
        if _iteration(state) != max_iters:
            return False
        return not evaluates or any(
            r.get("type") == "eval" and r.get("iteration") == max_iters for r in self._records()
        )

    def _records(self) -> list[dict[str, Any]]:
        if not self.metrics.is_file():
            return []
        records = []
        for line in self.metrics.read_text().splitlines():
            try:
                record = json.loads(line)
            except ValueError:
                continue  # a line cut short by a kill
            if isinstance(record, dict):
                records.append(record)
        return records

    def _previous_history(self) -> list[str]:
        path = self.path / "config.yaml"
        if not path.is_file():
            return []
        lines = []
        for line in path.read_text().splitlines():
            if not line.startswith("# "):
                break
            lines.append(line[2:])
        return lines

    def truncate_metrics(self, iteration: int) -> None:
        """Drop the records a killed run wrote after ``iteration`` (its checkpoint)."""
        if not dist.is_main_process() or not self.metrics.is_file():
            return
        lines = self.metrics.read_text().splitlines()
        kept = []
        for line in lines:
            try:
                if int(json.loads(line).get("iteration", 0)) <= iteration:
                    kept.append(line)
            except (ValueError, AttributeError):
                continue  # a line cut short by the kill
        if len(kept) != len(lines):
            atomic_write_text(self.metrics, "".join(line + "\n" for line in kept), what="metrics file")


def lock_run_folder(path: Path) -> RunLock | None:
    """The main process takes ``path``'s :class:`~detmine.run_lock.RunLock` (held until the
    trainer closes or the process ends); every process raises its refusal (a ConfigError
    naming the holder). None on other ranks, and when ``path`` is a file (refused later)."""
    lock, refusal = None, None
    if dist.is_main_process() and not (path.exists() and not path.is_dir()):
        try:
            lock = RunLock(path).acquire()
        except (ConfigError, CheckpointError) as exc:
            refusal = (type(exc), str(exc))
    refusal = dist.broadcast_object(refusal)
    if refusal is not None:
        raise refusal[0](refusal[1])
    return lock


class RunLockHook(HookBase):
    """The last hook: gives the run folder's lock back when training ends (``close``)."""

    name = ""

    def __init__(self, lock: RunLock | None) -> None:
        self.lock = lock

    def close(self) -> None:
        if self.lock is not None:
            self.lock.release()


def _iteration(state: dict[str, Any] | None) -> int | None:
    """The iteration a checkpoint was written at (None: no state, or not a training checkpoint)."""
    value = state.get("iteration") if state is not None else None
    return int(value) if isinstance(value, int | float) else None
