"""Hooks that observe training: console / metrics.jsonl / TensorBoard logging, checkpoints,
mined-negative pictures. Evaluation and the validation loss are in
:mod:`detmine.engine.eval_hooks`. A new periodic view of training is a new hook, not a
trainer edit: subclass :class:`~detmine.engine.trainer.HookBase`.

All hooks write through one :class:`RunOutputs` (the run folder's metrics file and the
TensorBoard writer, on the main process only) and draw no training random numbers.
"""

from __future__ import annotations

import json
import os
import time
from pathlib import Path
from typing import Any

import torch

from detmine import distributed as dist
from detmine.console import Progress, format_duration, log
from detmine.engine.checkpoint import CheckpointManager, save_checkpoint
from detmine.engine.trainer import HookBase, Trainer
from detmine.errors import CheckpointError
from detmine.safe_io import write_error


class RunOutputs:
    """The run folder's shared outputs: ``metrics.jsonl`` (one JSON record a line) and the
    TensorBoard writer. On processes other than the main one every call is a no-op."""

    def __init__(self, output_dir: str | Path, *, enabled: bool | None = None) -> None:
        self.output_dir = Path(output_dir)
        self.enabled = dist.is_main_process() if enabled is None else enabled
        self.writer: Any = None
        if self.enabled:
            from torch.utils.tensorboard import SummaryWriter

            self.writer = SummaryWriter(log_dir=str(self.output_dir))

    def write_metrics(self, record: dict[str, Any]) -> None:
        """Append ``record`` as one line, all or nothing: a write that fails part-way (a full
        disk) is cut back to the file's previous size before the one-line CheckpointError."""
        if not self.enabled:
            return
        path = self.output_dir / "metrics.jsonl"
        data = memoryview((json.dumps(record) + "\n").encode())
        start: int | None = None
        try:
            with open(path, "ab", buffering=0) as f:  # unbuffered: nothing is left to flush on close
                start = f.seek(0, 2)
                while data:
                    data = data[f.write(data) :]
        except OSError as exc:
            if start is not None:
                try:
                    os.truncate(path, start)
                except OSError as again:
                    raise CheckpointError(
                        f"cannot write metrics file {path}: {exc.strerror or exc}; its last line is cut "
                        f"short and could not be removed ({again.strerror or again})"
                    ) from None
            raise write_error(path, exc, "metrics file") from None

    def add_scalars(self, prefix: str, values: dict[str, float], step: int) -> None:
        if self.writer is not None:
            for key, value in values.items():
                self.writer.add_scalar(f"{prefix}/{key}", value, step)

    def close(self) -> None:
        if self.writer is not None:
            self.writer.flush()
            self.writer.close()
            self.writer = None


class LoggingHook(HookBase):
    """Every ``period`` iterations (and the last): the mean losses since the last log (over
    iterations and processes), lr, images/s and ETA, to metrics.jsonl, TensorBoard scalars
    ``train/*`` and the progress bar; at the end, the summary of skipped images."""

    def __init__(self, outputs: RunOutputs, *, period: int, batch_size: int) -> None:
        self.outputs = outputs
        self.period = period
        self.batch_size = batch_size
        self._sums: dict[str, torch.Tensor] = {}
        self._window = (0, time.perf_counter())
        self._bar: Progress | None = None

    def before_train(self, trainer: Trainer) -> None:
        # on a terminal a bar; in a log file no redraws, only the lines of write()
        self._bar = Progress(
            trainer.max_iters, "train", initial=trainer.iteration, enabled=trainer.is_main, every=0
        )
        self._window = (trainer.iteration, time.perf_counter())

    def after_step(self, trainer: Trainer) -> None:
        if self._bar is not None:
            self._bar.update(1)
        step = trainer.last_step
        if step is not None and step.losses is not None:
            for k, v in step.losses.items():
                self._sums[k] = self._sums.get(k, 0.0) + v
        it = trainer.iteration
        if self.period > 0 and (it % self.period == 0 or it == trainer.max_iters):
            self.write(trainer)

    def write(self, trainer: Trainer) -> None:
        """Average the losses since the last log over iterations and processes (collective)."""
        start_it, start_t = self._window
        n = max(1, trainer.iteration - start_it)
        now = time.perf_counter()
        means = dist.reduce_dict({k: v / n for k, v in self._sums.items() if isinstance(v, torch.Tensor)})
        self._sums = {}
        self._window = (trainer.iteration, now)
        if not trainer.is_main:
            return
        sec_per_iter = (now - start_t) / n
        record = {
            "type": "train",
            "iteration": trainer.iteration,
            "loss": float(sum(means.values())) if means else float("nan"),
            **{f"loss_{k}": float(v) for k, v in means.items()},
            "lr": trainer.optimizer.param_groups[0]["lr"],
            "images_per_s": self.batch_size / sec_per_iter if sec_per_iter > 0 else 0.0,
            "sec_per_iter": sec_per_iter,
            "eta_s": sec_per_iter * (trainer.max_iters - trainer.iteration),
            "skipped_nonfinite": trainer.skipped_nonfinite,
        }
        self.outputs.write_metrics(record)
        keys = ("loss", "lr", "images_per_s", *(k for k in record if k.startswith("loss_")))
        self.outputs.add_scalars("train", {k: record[k] for k in keys}, trainer.iteration)
        if self._bar is not None and self._bar.bar is not None:
            self._bar.set_postfix(
                loss=f"{record['loss']:.4f}", lr=f"{record['lr']:.2e}", img_s=f"{record['images_per_s']:.1f}"
            )
        else:
            losses = "  ".join(f"{k} {float(v):.4f}" for k, v in means.items())
            log(
                f"iter {trainer.iteration}/{trainer.max_iters}  loss {record['loss']:.4f} ({losses})  "
                f"lr {record['lr']:.2e}  {record['images_per_s']:.1f} img/s  "
                f"eta {format_duration(record['eta_s'])}"
            )

    def after_train(self, trainer: Trainer) -> None:
        summary = getattr(trainer.data.loader, "skipped_summary", None)
        text = summary() if callable(summary) else None
        if text and trainer.is_main:
            log(f"warning: {text}")

    def close(self) -> None:
        if self._bar is not None:
            self._bar.close()
            self._bar = None
        self.outputs.close()


class CheckpointHook(HookBase):
    """``model_<iteration>.pth`` every ``period`` iterations, at the end and on a stop signal;
    ``best.pth`` whenever an evaluation improved the best metric (``storage["new_best"]``).

    ``extra`` is added to every checkpoint (the resolved ``config`` and ``class_names``), so a
    checkpoint alone rebuilds its model. Every process must run this hook (the trainer's
    ``state_dict`` gathers the RNG states); the main one writes.
    """

    name = "checkpoint"

    def __init__(
        self, manager: CheckpointManager, *, period: int, extra: dict[str, Any] | None = None
    ) -> None:
        self.manager = manager
        self.period = period
        self.extra = dict(extra or {})
        self._saved_at: int | None = None

    def state(self, trainer: Trainer) -> dict[str, Any]:
        return {**trainer.state_dict(), **self.extra}

    def save(self, trainer: Trainer) -> Path:
        """Checkpoint the current iteration (collective)."""
        state = self.state(trainer)
        if trainer.is_main:
            self.manager.save(state, trainer.iteration)
        self._saved_at = trainer.iteration
        path = self.manager.path_for(trainer.iteration)
        trainer.storage["last_checkpoint"] = path
        return path

    def _save_best(self, trainer: Trainer) -> None:
        if trainer.storage.pop("new_best", False):
            state = self.state(trainer)
            if trainer.is_main:
                save_checkpoint(self.manager.directory / "best.pth", state)

    def before_train(self, trainer: Trainer) -> None:
        if trainer.iteration > 0:  # resumed: the checkpoint we came from is the last good one
            trainer.storage.setdefault("last_checkpoint", self.manager.latest())

    def after_step(self, trainer: Trainer) -> None:
        self._save_best(trainer)
        if self.period > 0 and trainer.iteration % self.period == 0:
            self.save(trainer)

    def after_train(self, trainer: Trainer) -> None:
        self._save_best(trainer)
        if self._saved_at != trainer.iteration:
            self.save(trainer)

    def on_stop(self, trainer: Trainer) -> None:
        if self._saved_at != trainer.iteration:
            self.save(trainer)


class MiningVisHook(HookBase):
    """The mined negatives of the training batch in TensorBoard every ``period`` iterations
    (a :class:`detmine.viz.tensorboard.MiningVisualizer` fed with ``trainer.last_step``)."""

    def __init__(self, visualizer: Any) -> None:
        self.visualizer = visualizer

    def after_step(self, trainer: Trainer) -> None:
        step = trainer.last_step
        if step is None or step.record is None:
            return
        # the step that just ran is iteration - 1 (0-based), as the pictures have always been labelled
        self.visualizer.maybe_log(trainer.iteration - 1, step.images, step.targets, step.outputs, step.record)
