"""Hooks that observe training, and :data:`HOOKS`, the table they are built from by name.

Built-in hooks, in the order they run after each step (``priority``): ``logging`` (10),
``evaluation`` (20) and ``validation_loss`` (30) (:mod:`detmine.engine.eval_hooks`),
``mining_vis`` (40), hooks a config adds (50 unless given), ``writers`` (80: drains the event
storage into metrics.jsonl, TensorBoard and the console) and ``checkpoint`` (90). A config's
``hooks:`` list adds entries of :data:`HOOKS` (a plugin registers its own), changes a built-in's
options, switches one off (``enabled: false``) or re-orders (``priority``)::

    hooks:
      - {name: counter, period: 2}          # a plugin's hook
      - {name: validation_loss, enabled: false}

A hook writes metrics through ``trainer.events`` (:mod:`detmine.engine.events`) without knowing
the writers, runs periodically through :class:`~detmine.engine.trainer.PeriodicHook` (the one
periodic rule), keeps what must survive a resume in ``state_dict`` (saved under its name; a hook
registered after the checkpoint was read still gets it), and never draws from the training
random streams. See docs/architecture.md ("Hooks").
"""

from __future__ import annotations

import inspect
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

import torch

from detmine import distributed as dist
from detmine.components import ComponentTable, Entry, check_entries, construct
from detmine.console import warn
from detmine.engine.checkpoint import CheckpointManager, save_checkpoint
from detmine.engine.events import ConsoleWriter, EventWriter, JSONLinesWriter, TensorBoardWriter
from detmine.engine.run_folder import FINAL_DETECTIONS
from detmine.engine.trainer import HookBase, PeriodicHook, Trainer
from detmine.errors import DetmineError, OptionError
from detmine.periodic import is_due


class LoggingHook(PeriodicHook):
    """Every ``period`` iterations (and the last): the mean losses since the last log (over the
    steps that ran -- a batch skipped as non-finite has no loss -- and over processes), lr,
    images/s and ETA, as a ``train`` record and ``train/*`` scalars; at the end, the summary of
    skipped images (over every process)."""

    def __init__(self, *, period: int, batch_size: int) -> None:
        super().__init__(period)
        self.batch_size = batch_size
        self._sums: dict[str, torch.Tensor] = {}
        self._steps = 0
        self._window = (0, time.perf_counter())

    def due(self, trainer: Trainer) -> bool:
        return self.period > 0 and super().due(trainer)  # period 0: no train records at all

    def before_train(self, trainer: Trainer) -> None:
        self._window = (trainer.iteration, time.perf_counter())

    def after_step(self, trainer: Trainer) -> None:
        step = trainer.last_step
        if step is not None and step.losses is not None:
            for k, v in step.losses.items():
                self._sums[k] = self._sums.get(k, 0.0) + v
            self._steps += 1
        super().after_step(trainer)

    def run(self, trainer: Trainer) -> None:
        """Average the losses of the window over its steps and the processes (collective)."""
        start_it, start_t = self._window
        iters = max(1, trainer.iteration - start_it)
        steps = self._steps
        now = time.perf_counter()
        sums = {k: v for k, v in self._sums.items() if isinstance(v, torch.Tensor)}
        means = dist.reduce_dict({k: v / steps for k, v in sums.items()}) if steps else {}
        self._sums, self._steps = {}, 0
        self._window = (trainer.iteration, now)
        if not trainer.is_main:
            return
        sec_per_iter = (now - start_t) / iters
        record = {
            "loss": float(sum(means.values())) if means else float("nan"),
            **{f"loss_{k}": float(v) for k, v in means.items()},
            "lr": trainer.optimizer.param_groups[0]["lr"],
            "images_per_s": self.batch_size / sec_per_iter if sec_per_iter > 0 else 0.0,
            "sec_per_iter": sec_per_iter,
            "eta_s": sec_per_iter * (trainer.max_iters - trainer.iteration),
            "skipped_nonfinite": trainer.skipped_nonfinite,
        }
        trainer.events.put_record("train", record)
        keys = ("loss", "lr", "images_per_s", *(k for k in record if k.startswith("loss_")))
        trainer.events.put_scalars("train", {k: record[k] for k in keys})

    def after_train(self, trainer: Trainer) -> None:
        summary = getattr(trainer.data.loader, "skipped_summary", None)
        text = summary() if callable(summary) else None
        if text and trainer.is_main:
            warn(text)


class WriterHook(HookBase):
    """Drains ``trainer.events`` into the writers after every step, at the end and on a stop
    signal (main process only; the others' storage is emptied)."""

    def __init__(self, writers: list[EventWriter]) -> None:
        self.writers = writers

    def before_train(self, trainer: Trainer) -> None:
        self._trainer = trainer
        for writer in self.writers:
            writer.start(trainer.iteration, trainer.max_iters)

    def flush(self, trainer: Trainer) -> None:
        events = trainer.events.drain()
        if trainer.is_main:
            for writer in self.writers:
                writer.write(events, trainer.iteration)

    after_step = after_train = on_stop = flush

    def close(self) -> None:
        """Write what is still in the storage (a step that ended in an exception), then close
        the writers; a failing write here is a warning, so it never hides the exception that
        ended training."""
        trainer = getattr(self, "_trainer", None)
        if trainer is not None:
            try:
                self.flush(trainer)
            except DetmineError as exc:
                warn(str(exc))
        for writer in self.writers:
            writer.close()
        self.writers = []


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
        if isinstance(period, bool) or not isinstance(period, int) or period < 0:
            raise OptionError("period", f"must be an integer >= 0 (0: only at the end), got {period!r}")
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
        if is_due(trainer.iteration, self.period):
            self.save(trainer)

    def after_train(self, trainer: Trainer) -> None:
        self._save_best(trainer)
        if self._saved_at != trainer.iteration:
            self.save(trainer)

    def on_stop(self, trainer: Trainer) -> None:
        if self._saved_at != trainer.iteration:
            self.save(trainer)


class MiningVisHook(PeriodicHook):
    """The mined negatives of the training batch every ``period`` iterations, through a
    :class:`detmine.viz.tensorboard.MiningVisualizer` writing to ``trainer.events`` (pictures,
    histograms and scalars at the iteration, like every other item)."""

    def __init__(self, visualizer: Any, *, period: int) -> None:
        super().__init__(period, at_end=False)
        self.visualizer = visualizer

    def due(self, trainer: Trainer) -> bool:
        return trainer.is_main and super().due(trainer)

    def run(self, trainer: Trainer) -> None:
        step = trainer.last_step
        if step is None or step.record is None:
            return
        self.visualizer.writer = trainer.events
        self.visualizer.log(trainer.iteration, step.images, step.targets, step.outputs, step.record)


# ----------------------------------------------------------------------------- the table


@dataclass
class HookContext:
    """What the builders hand a hook factory that declares a ``context`` parameter: the
    resolved ``cfg``, the run folder's ``checkpoints`` (and ``path``), the validation loader and
    set (None without a validation split), the class names, the checkpoint's ``extra`` and the
    training split (its annotations: class counts for the evaluation views)."""

    cfg: Any
    path: Path
    checkpoints: CheckpointManager
    val_loader: Any = None
    val_set: Any = None
    class_names: list[str] | None = None
    extra: dict[str, Any] = field(default_factory=dict)
    train_set: Any = None


def _or(value: Any, default: Any) -> Any:
    return default if value is None else value


def logging_hook(context: HookContext, *, period: int | None = None) -> LoggingHook:
    """``train.log_period`` unless ``period`` is given."""
    t = context.cfg.train
    return LoggingHook(period=_or(period, t.log_period), batch_size=t.batch_size)


def evaluation_hook(context: HookContext, *, period: int | None = None) -> HookBase | None:
    """COCO evaluation of the validation split every ``eval.period`` iterations and at the end,
    with the analysis views of ``eval.views`` (their files go into the run folder)."""
    if context.val_loader is None:
        return None
    from detmine.analysis import count_classes
    from detmine.engine.eval_hooks import EvaluationHook
    from detmine.evaluation.thresholds import predict_options
    from detmine.evaluation.views import build_views

    e = context.cfg.eval
    records = getattr(context.train_set, "records", None)
    return EvaluationHook(
        context.val_loader,
        context.val_set,
        period=_or(period, e.period),
        backend=e.backend,
        predict_options=predict_options(e.postprocess.options()),
        final_detections=context.path / FINAL_DETECTIONS,
        views=build_views(e.views),
        train_counts=count_classes(context.train_set) if records is not None else None,
        files_to=context.path,
    )


def validation_loss_hook(context: HookContext, *, period: int | None = None) -> HookBase | None:
    """The criterion on the validation split with each evaluation (``eval.val_loss``)."""
    if context.val_loader is None or not context.cfg.eval.val_loss:
        return None
    from detmine.engine.eval_hooks import ValidationLossHook

    return ValidationLossHook(context.val_loader, period=_or(period, context.cfg.eval.period))


def mining_vis_hook(
    context: HookContext,
    *,
    period: int | None = None,
    num_images: int | None = None,
    top_k: int | None = None,
    heat_map: Literal["merged", "levels", "off"] | bool = "merged",
) -> HookBase | None:
    """Mined-negative pictures every ``vis.period`` iterations (off at 0); ``heat_map``: the
    negatives' loss per location beside the boxes, pyramid levels merged, per level, or off
    (YAML reads a bare ``off`` as false: false is off, true is merged)."""
    v = context.cfg.vis
    for option, value in (("period", period), ("num_images", num_images), ("top_k", top_k)):
        if value is not None and (isinstance(value, bool) or not isinstance(value, int) or value < 0):
            raise OptionError(option, f"must be an integer >= 0, got {value!r}")
    period = _or(period, v.period)
    if period <= 0 or not dist.is_main_process():
        return None
    from detmine.viz.tensorboard import MiningVisualizer

    visualizer = MiningVisualizer(
        None,
        period,
        num_images=_or(num_images, v.num_images),
        top_k=_or(top_k, v.top_k),
        class_names=context.class_names,
        heat_map=("merged" if heat_map else "off") if isinstance(heat_map, bool) else heat_map,
    )
    return MiningVisHook(visualizer, period=period)


def writers_hook(context: HookContext) -> WriterHook:
    """metrics.jsonl, TensorBoard and the console (main process)."""
    if not dist.is_main_process():
        return WriterHook([])
    path = context.path
    return WriterHook([JSONLinesWriter(path / "metrics.jsonl"), TensorBoardWriter(path), ConsoleWriter()])


def checkpoint_hook(context: HookContext, *, period: int | None = None) -> CheckpointHook:
    """``train.checkpoint_period`` unless ``period`` is given."""
    extra = {k: v for k, v in context.extra.items() if k in ("config", "class_names")}
    return CheckpointHook(
        context.checkpoints, period=_or(period, context.cfg.train.checkpoint_period), extra=extra
    )


#: name -> hook class or factory (``hooks: [{name: ...}]``); a factory or class whose signature
#: has a ``context`` parameter is given the :class:`HookContext`; the other keyword parameters
#: are the hook's options. A factory may return None (nothing to run, e.g. no validation split).
HOOKS = ComponentTable(
    "hook",
    {
        "logging": logging_hook,
        "evaluation": evaluation_hook,
        "validation_loss": validation_loss_hook,
        "mining_vis": mining_vis_hook,
        "writers": writers_hook,
        "checkpoint": checkpoint_hook,
    },
    passed=("context",),
    entry_keys=("name", "enabled", "priority"),
)

#: the built-in hooks every run starts from, with their priorities (lower runs first).
DEFAULT_HOOKS: dict[str, int] = {
    "logging": 10,
    "evaluation": 20,
    "validation_loss": 30,
    "mining_vis": 40,
    "writers": 80,
    "checkpoint": 90,
}
#: the priority of a config's hook that names none.
USER_PRIORITY = 50


def check_hooks(entries: list[Any]) -> list[Entry]:
    """Check a config's ``hooks`` list (the config does this at load): each entry names a
    :data:`HOOKS` entry ("did you mean"), ``enabled`` / ``priority`` have their types, the
    options fit the constructor (names and types) -- one line naming ``hooks[i].<key>``."""
    return check_entries(entries, HOOKS, key="hooks")


def build_hook(name: str, options: dict[str, Any], context: HookContext, key: str) -> HookBase | None:
    """One hook from :data:`HOOKS` (``context`` passed when its signature asks for it); its
    ``name`` (the key of its state in checkpoints) is the table name unless it sets one."""
    checked = HOOKS.check(name, options, key=key, name_key=f"{key}.name")
    factory = HOOKS[name]
    passed = {"context": context} if "context" in inspect.signature(factory).parameters else {}
    hook = construct(factory, checked, key, **passed)
    if (
        hook is not None
        and not getattr(hook, "name", "")
        and type(hook).state_dict is not HookBase.state_dict
    ):
        hook.name = name
    return hook


def build_hooks(context: HookContext, entries: list[dict[str, Any]] | None = None) -> list[HookBase]:
    """The run's hooks: :data:`DEFAULT_HOOKS` with the config's ``hooks`` entries applied (a
    built-in's options changed or switched off, new hooks added), in priority order (ties keep
    the order written)."""
    plan: dict[str, tuple[int, bool, dict[str, Any], str]] = {
        name: (priority, True, {}, f"hooks.{name}") for name, priority in DEFAULT_HOOKS.items()
    }
    for entry in check_hooks(list(entries or [])):
        default = plan.get(entry.name, (USER_PRIORITY, True, {}, ""))[0]
        priority = entry.reserved.get("priority")
        plan[entry.name] = (
            _or(priority, default),
            entry.reserved.get("enabled", True),
            entry.options,
            entry.key,
        )
    order = sorted(plan.items(), key=lambda item: item[1][0])  # stable: ties keep the order
    hooks = []
    for name, (_, enabled, options, key) in order:
        hook = build_hook(name, options, context, key) if enabled else None
        if hook is not None:
            hooks.append(hook)
    return hooks


def hook_enabled(name: str, entries: list[Any] | None) -> bool:
    """Whether the built-in ``name`` runs with the config's ``hooks`` entries (not switched off)."""
    for entry in entries or []:
        if isinstance(entry, dict) and entry.get("name") == name:
            return bool(entry.get("enabled", True))
    return name in DEFAULT_HOOKS


__all__ = [
    "DEFAULT_HOOKS",
    "HOOKS",
    "CheckpointHook",
    "HookContext",
    "LoggingHook",
    "MiningVisHook",
    "WriterHook",
    "build_hook",
    "build_hooks",
    "check_hooks",
    "hook_enabled",
]
