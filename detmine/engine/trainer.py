"""The iteration-based training loop: it runs, it does not build and it does not observe.

One step: ``outputs = model(images)`` (under autocast with ``train.amp``; through
``torch.compile`` with ``train.compile``) -> ``losses, record = criterion(outputs, targets)``
(outside autocast; the criterion computes its losses in float32) -> backward (GradScaler for
fp16) -> optional gradient clipping -> optimiser step -> per-iteration LR schedule -> optional
EMA update -> hooks. Everything is built elsewhere
(:func:`detmine.engine.builders.build_trainer`) and handed in; logging, evaluation,
checkpoints and pictures are hooks (:mod:`detmine.engine.hooks`) -- detectron2's
``SimpleTrainer`` + ``HookBase`` shape.

:meth:`Trainer.state_dict` holds everything a run needs to continue exactly where it stopped
(weights, optimiser, schedule, scaler, EMA, the criterion's state, data position, the random
generators of every rank and each hook's state); with per-sample augmentation seeds a resumed
run ends with the same weights as an uninterrupted one, with any number of loader workers.

SIGINT and SIGTERM do not kill the run mid-step: the current step finishes, every process
agrees to stop at the same iteration (a flag all-reduced each step), the hooks' ``on_stop``
writes a checkpoint, and :class:`~detmine.errors.TrainingInterrupted` is raised (the tools
exit 130 / 143).
"""

from __future__ import annotations

import contextlib
import signal
import threading
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from typing import Any

import torch
from torch import nn

from detmine import distributed as dist
from detmine.console import log
from detmine.distributed import unwrap
from detmine.engine.checkpoint import load_model_state, validate_checkpoint
from detmine.engine.events import EventStorage
from detmine.engine.run_state import DataStream, rng_state, set_rng_state
from detmine.errors import CheckpointError, NonFiniteError, OptionError, TrainingInterrupted
from detmine.periodic import is_due
from detmine.structures import Target


def targets_to(targets: list[Target], device: torch.device) -> list[Target]:
    """Move the tensors of each target to ``device`` (other fields unchanged)."""
    return [
        {k: (v.to(device, non_blocking=True) if isinstance(v, torch.Tensor) else v) for k, v in t.items()}
        for t in targets
    ]


@dataclass
class StepResult:
    """What the last step produced, for the hooks: ``losses`` (None when the batch was skipped
    as non-finite), the criterion's ``record`` and the step's inputs and outputs."""

    images: torch.Tensor
    targets: list[Target]
    outputs: Any = None
    losses: dict[str, torch.Tensor] | None = None
    record: Any = None


class HookBase:
    """A view of training: called ``before_train``, ``after_step`` (every iteration, with
    ``trainer.last_step``), ``after_train`` and ``on_stop`` (a stop signal, before the trainer
    raises). ``state_dict`` / ``load_state_dict`` are saved in checkpoints under the hook's
    ``name``. A hook must not draw from the training random streams."""

    name: str = ""

    def before_train(self, trainer: Trainer) -> None:
        pass

    def after_step(self, trainer: Trainer) -> None:
        pass

    def after_train(self, trainer: Trainer) -> None:
        pass

    def on_stop(self, trainer: Trainer) -> None:
        pass

    def state_dict(self) -> dict[str, Any]:
        return {}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        pass


class PeriodicHook(HookBase):
    """A hook that runs :meth:`run` after every ``period``-th iteration
    (:func:`detmine.periodic.is_due`, the one periodic rule) and, with ``at_end``, also after the
    final iteration when that is not on the period (``period`` 0: only then) -- or, when training
    took no step at all (resumed at its end), once in ``after_train``. Subclasses implement
    ``run(trainer)``; the period may change on resume (hooks are free keys)."""

    def __init__(self, period: int, *, at_end: bool = True) -> None:
        if isinstance(period, bool) or not isinstance(period, int) or period < 0:
            raise OptionError("period", f"must be an integer >= 0 (0: only at the end), got {period!r}")
        self.period = period
        self.at_end = at_end

    def due(self, trainer: Trainer) -> bool:
        """Whether the iteration that just finished is one to run at."""
        final = self.at_end and trainer.iteration == trainer.max_iters
        return final or is_due(trainer.iteration, self.period)

    def after_step(self, trainer: Trainer) -> None:
        if self.due(trainer):
            self.run(trainer)
            self._ran_at = trainer.iteration

    def after_train(self, trainer: Trainer) -> None:
        # a run resumed at its last iteration takes no step: the end-of-training run is here
        if self.at_end and getattr(self, "_ran_at", None) != trainer.iteration:
            self.run(trainer)
            self._ran_at = trainer.iteration

    def run(self, trainer: Trainer) -> None:
        raise NotImplementedError


class Trainer:
    """Runs ``max_iters`` optimisation steps of built parts.

    Args:
        model: ``model(images uint8 [B, 3, H, W]) -> outputs`` (maybe DDP-wrapped).
        criterion: ``criterion(outputs, targets) -> (losses: dict[str, scalar], record)``.
        optimizer, scheduler: the scheduler steps once per iteration (``state_dict`` holds
            its position; ``base_lrs`` its base learning rates).
        data_loader: yields ``(images, targets)``; resumable loaders restore their position.
        hooks: :class:`HookBase` s, called in order.
        max_iters: the training length in iterations.
        device: where the step runs.
        amp_dtype: autocast dtype of the forward on ``device`` (None: fp32).
        grad_scaler: a ``torch.amp.GradScaler`` (disabled unless fp16).
        forward: what the step calls instead of ``model(images)`` (a
            :class:`~detmine.engine.compile.CompiledForward` of ``model``); ``model`` itself
            stays what is saved, averaged and evaluated.
        clip_grad_norm: > 0 clips the gradient norm.
        on_nonfinite: ``"stop"`` raises :class:`NonFiniteError` naming the iteration and the
            last checkpoint; ``"skip"`` skips the batch (all processes together) and counts it.
        ema: a :class:`~detmine.engine.optim.ModelEMA` updated after each step, or None.

    Attributes shared with the hooks: ``iteration``, ``last_step``, ``storage`` (a dict the
    hooks write to: ``eval`` result, ``last_checkpoint``, ``best_metric`` ...),
    ``skipped_nonfinite``.
    """

    def __init__(
        self,
        *,
        model: nn.Module,
        criterion: Any,
        optimizer: torch.optim.Optimizer,
        scheduler: Any,
        data_loader: Any,
        hooks: Iterable[HookBase] = (),
        max_iters: int,
        device: torch.device | str = "cpu",
        amp_dtype: torch.dtype | None = None,
        grad_scaler: torch.amp.GradScaler | None = None,
        clip_grad_norm: float = 0.0,
        on_nonfinite: str = "stop",
        ema: Any = None,
        forward: Callable[[torch.Tensor], Any] | None = None,
    ) -> None:
        if on_nonfinite not in ("stop", "skip"):
            raise ValueError(f"on_nonfinite must be 'stop' or 'skip', got {on_nonfinite!r}")
        self.model = model
        self.forward = forward if forward is not None else model
        self.criterion = criterion
        self.optimizer = optimizer
        self.scheduler = scheduler
        self.data = DataStream(data_loader)
        self.hooks: list[HookBase] = []
        self.events = EventStorage()
        self._pending_hook_states: dict[str, Any] = {}
        self.max_iters = int(max_iters)
        self.device = torch.device(device)
        self.amp_dtype = amp_dtype
        self.scaler = grad_scaler or torch.amp.GradScaler("cuda", enabled=False)
        self.clip_grad_norm = float(clip_grad_norm)
        self.on_nonfinite = on_nonfinite
        self.ema = ema
        self.is_main = dist.is_main_process()
        self.iteration = 0
        self.skipped_nonfinite = 0
        self.storage: dict[str, Any] = {}
        self.last_step: StepResult | None = None
        self._stop_signal: int | None = None
        self.register_hooks(hooks)

    def register_hooks(self, hooks: Iterable[HookBase]) -> None:
        """Append hooks (they run in the order registered). A hook registered after a
        checkpoint was loaded still gets its saved state (by ``name``), so a caller may add
        hooks to a resumed trainer before :meth:`train`."""
        for hook in hooks:
            self.hooks.append(hook)
            if hook.name and hook.name in self._pending_hook_states:
                hook.load_state_dict(self._pending_hook_states.pop(hook.name))

    # ------------------------------------------------------------------ state

    def state_dict(self) -> dict[str, Any]:
        """Everything needed to continue (collective: gathers every rank's RNG state)."""
        return {
            "model": unwrap(self.model).state_dict(),
            "optimizer": self.optimizer.state_dict(),
            "scheduler": self.scheduler.state_dict(),
            "scaler": self.scaler.state_dict() if self.scaler.is_enabled() else None,
            "ema": self.ema.state_dict() if self.ema is not None else None,
            "criterion": self.criterion.state_dict() if hasattr(self.criterion, "state_dict") else None,
            "iteration": self.iteration,
            "epoch": self.data.epoch,
            "sampler": self.data.state_dict(),
            "rng": dist.all_gather_object(rng_state()),
            "skipped_nonfinite": self.skipped_nonfinite,
            "hooks": {**self._pending_hook_states, **{h.name: h.state_dict() for h in self.hooks if h.name}},
        }

    def load_state_dict(self, state: dict[str, Any], *, source: str, fresh_optimizer: bool = False) -> None:
        """Restore what :meth:`state_dict` returned (``source`` names the file in errors).

        The optimizer's hyper-parameters and the schedule's base learning rates stay those of
        the optimizer as built (from this run's config: equal to the checkpoint's unless a change
        was allowed); with ``fresh_optimizer`` (another optimizer type) its state is not loaded.
        """
        validate_checkpoint(state, source, training=True)  # one line naming the first bad field
        configured = [{k: v for k, v in g.items() if k != "params"} for g in self.optimizer.param_groups]
        load_model_state(unwrap(self.model), state["model"], source=source)
        try:
            if not fresh_optimizer:
                self.optimizer.load_state_dict(state["optimizer"])
            if self.ema is not None and state.get("ema") is not None:
                self.ema.load_state_dict(state["ema"])
            if state.get("criterion") is not None and hasattr(self.criterion, "load_state_dict"):
                self.criterion.load_state_dict(state["criterion"])
        except (RuntimeError, ValueError, KeyError) as exc:
            raise CheckpointError(
                f"checkpoint {source} does not fit this optimizer / EMA / criterion: {str(exc).splitlines()[0]}"
            ) from None
        for group, values in zip(self.optimizer.param_groups, configured, strict=True):
            group.update({k: v for k, v in values.items() if k != "lr"})
        base_lrs = [values["initial_lr"] for values in configured]
        self.scheduler.load_state_dict({**state["scheduler"], "base_lrs": base_lrs})
        if state.get("scaler"):
            self.scaler.load_state_dict(state["scaler"])
        self.iteration = int(state["iteration"])
        self.skipped_nonfinite = int(state.get("skipped_nonfinite", 0))
        self._pending_hook_states = dict(state.get("hooks") or {})
        for hook in self.hooks:  # hooks registered later get theirs in register_hooks
            if hook.name and hook.name in self._pending_hook_states:
                hook.load_state_dict(self._pending_hook_states.pop(hook.name))
        self.data.load_state_dict(state["sampler"])
        self.data.fast_forward()  # before the RNG restore: draining batches draws random numbers
        rngs = state.get("rng") or []
        if rngs:
            set_rng_state(rngs[dist.get_rank()] if len(rngs) == dist.get_world_size() else rngs[0])

    # ------------------------------------------------------------------ loop

    def train(self) -> Any:
        """Run to ``max_iters``; returns ``storage.get("eval")`` (the last evaluation a hook
        stored, on rank 0) or None.

        Raises:
            TrainingInterrupted: after SIGINT / SIGTERM, once the hooks' ``on_stop`` ran.
        """
        self.model.train()
        self.events.iteration = self.iteration
        try:
            self._call("before_train")
            with self._stop_on_signals():
                while self.iteration < self.max_iters:
                    images, targets = next(self.data)
                    self.run_step(images, targets)
                    self.iteration += 1
                    self.events.iteration = self.iteration
                    self._call("after_step")
                    if self._stop_requested():
                        self._stop()
            self._call("after_train")
        finally:
            self.last_step = None
            self._close_hooks()
        return self.storage.get("eval")

    def _close_hooks(self) -> None:
        """Every hook's ``close`` (writers, progress bar, the run folder's lock), each even when
        another one fails; a failure is a warning, so it never hides why training ended."""
        for hook in self.hooks:
            close = getattr(hook, "close", None)
            if not callable(close):
                continue
            try:
                close()
            except Exception as exc:  # noqa: BLE001 -- reported, then the next hook is closed
                first = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
                log(f"warning: closing hook {type(hook).__name__} failed: {first}")

    def _call(self, stage: str) -> None:
        for hook in self.hooks:
            getattr(hook, stage)(self)

    def run_step(self, images: torch.Tensor, targets: Sequence[Target]) -> None:
        """One optimisation step (or a counted skip of a non-finite batch)."""
        images = images.to(self.device, non_blocking=True)
        targets = targets_to(list(targets), self.device)
        self.last_step = StepResult(images, targets)
        autocast = (
            torch.autocast(self.device.type, dtype=self.amp_dtype)
            if self.amp_dtype is not None
            else contextlib.nullcontext()
        )
        with autocast:
            outputs = self.forward(images)
        self.last_step.outputs = outputs
        try:
            losses, record = self.criterion(outputs, targets)
        except NonFiniteError as exc:  # raised on every process together (see Criterion)
            self._on_nonfinite(str(exc))
            return
        total = sum(losses.values())
        if not dist.all_true(bool(torch.isfinite(total)), self.device):
            values = ", ".join(f"{k}={float(v.detach()):.4g}" for k, v in losses.items())
            self._on_nonfinite(f"loss is not finite ({values})")
            return
        self.optimizer.zero_grad(set_to_none=True)
        self.scaler.scale(total).backward()
        if self.clip_grad_norm > 0:
            self.scaler.unscale_(self.optimizer)
            nn.utils.clip_grad_norm_(self.model.parameters(), self.clip_grad_norm)
        self.scaler.step(self.optimizer)
        self.scaler.update()
        self.scheduler.step()
        if self.ema is not None:
            self.ema.update(unwrap(self.model))
        self.last_step.losses = {k: v.detach() for k, v in losses.items()}
        self.last_step.record = record

    def _on_nonfinite(self, what: str) -> None:
        """Skip the batch (``on_nonfinite="skip"``) or stop naming the iteration and the last
        good checkpoint. ``what`` says which tensor was not finite."""
        self.scheduler.step()
        if self.on_nonfinite == "skip":
            self.skipped_nonfinite += 1
            if self.is_main:
                log(
                    f"warning: {what} at iteration {self.iteration}; batch skipped "
                    f"({self.skipped_nonfinite} so far)"
                )
            return
        last = self.storage.get("last_checkpoint")
        where = f"last good checkpoint: {last}" if last is not None else "no checkpoint was saved yet"
        raise NonFiniteError(
            f"{what} at iteration {self.iteration}; {where} "
            "(lower train.lr or lengthen train.warmup_iters, or set train.on_nonfinite=skip)"
        )

    # ------------------------------------------------------------------ stopping

    @contextlib.contextmanager
    def _stop_on_signals(self):
        """SIGINT / SIGTERM ask the loop to stop after the current step (a second one stops at
        once). Only the main thread can install handlers; elsewhere this does nothing."""
        if threading.current_thread() is not threading.main_thread():
            yield
            return

        def request_stop(signum: int, frame: Any) -> None:
            if self._stop_signal is not None:
                raise KeyboardInterrupt
            self._stop_signal = signum

        previous = {sig: signal.signal(sig, request_stop) for sig in (signal.SIGINT, signal.SIGTERM)}
        try:
            yield
        finally:
            for sig, handler in previous.items():
                signal.signal(sig, handler)

    def _stop_requested(self) -> bool:
        """True on every process when any of them received a stop signal (all-reduced)."""
        return not dist.all_true(self._stop_signal is None, self.device)

    def _stop(self) -> None:
        self._call("on_stop")
        signum = self._stop_signal if self._stop_signal is not None else signal.SIGTERM
        where = self.storage.get("last_checkpoint", "no checkpoint")
        raise TrainingInterrupted(
            f"{signal.Signals(signum).name} received: stopped at iteration {self.iteration}, "
            f"checkpoint {where}; continue with --resume",
            exit_code=128 + int(signum),
        )
