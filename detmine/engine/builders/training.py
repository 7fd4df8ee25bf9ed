"""The training run from the config: device and precision, EMA / SyncBN / DDP, optimiser and
schedule, the run folder (refused, cleared or resumed), the hooks, and the trainer that runs
them -- every decision the trainer must not make."""

from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Any

import torch
from torch import nn

from detmine import distributed as dist
from detmine.config import Config, config_to_dict, save_config
from detmine.console import log
from detmine.engine.builders.data import build_train_loader, build_val_loader
from detmine.engine.checkpoint import CheckpointManager
from detmine.engine.resume import ConfigChanges, check_resume_config
from detmine.errors import CheckpointError, ConfigError
from detmine.run_lock import RunLock
from detmine.safe_io import atomic_write_text, write_error


def schedule_length(cfg: Config, iters_per_epoch: int) -> tuple[int, list[int]]:
    """``(max_iters, multistep steps in iterations)``: ``train.max_iters`` with steps in
    iterations, or ``train.epochs`` with steps in epochs."""
    t = cfg.train
    if t.max_iters > 0:
        return t.max_iters, [int(s) for s in t.steps]
    iters_per_epoch = max(1, int(iters_per_epoch))
    return math.ceil(t.epochs * iters_per_epoch), [round(s * iters_per_epoch) for s in t.steps]


def build_optimization(cfg: Config, model: nn.Module, device: torch.device, max_iters: int, steps: list[int]):
    """``(model (maybe DDP-wrapped), ema, optimizer, scheduler, scaler, amp_dtype)``: the model
    moved to ``device``, SyncBN under several processes, the EMA of the bare model, the
    optimiser over its parameters, the warmup schedule and the fp16 GradScaler."""
    from detmine.engine.optim import ModelEMA, WarmupScheduler, build_optimizer

    t = cfg.train
    amp_dtype = {"bf16": torch.bfloat16, "fp16": torch.float16}.get(t.amp) if device.type == "cuda" else None
    model = model.to(device)
    if cfg.model.sync_bn and dist.get_world_size() > 1:
        model = nn.SyncBatchNorm.convert_sync_batchnorm(model)
    ema = ModelEMA(model, t.ema_decay, t.ema_tau) if t.ema else None
    optimizer = build_optimizer(
        model,
        name=t.optimizer,
        lr=t.lr,
        weight_decay=t.weight_decay,
        momentum=t.momentum,
        nesterov=t.nesterov,
        betas=t.betas,
        decay_norm_and_bias=t.decay_norm_and_bias,
    )
    if dist.get_world_size() > 1:
        ids = [device.index] if device.type == "cuda" else None
        model = nn.parallel.DistributedDataParallel(model, device_ids=ids)
    scheduler = WarmupScheduler(
        optimizer,
        max_iters=max_iters,
        schedule=t.lr_schedule,
        steps=steps,
        gamma=t.gamma,
        min_lr_ratio=t.min_lr_ratio,
        warmup_iters=t.warmup_iters,
        warmup_factor=t.warmup_factor,
    )
    scaler = torch.amp.GradScaler("cuda", enabled=amp_dtype == torch.float16)
    return model, ema, optimizer, scheduler, scaler, amp_dtype


# ----------------------------------------------------------------------------- the run folder


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


class RunLockHook:
    """The last hook: gives the run folder's lock back when training ends (``close``)."""

    name = ""

    def __init__(self, lock: RunLock | None) -> None:
        self.lock = lock

    def before_train(self, trainer: Any) -> None:
        pass

    after_step = after_train = on_stop = before_train

    def close(self) -> None:
        if self.lock is not None:
            self.lock.release()


def _iteration(state: dict[str, Any] | None) -> int | None:
    """The iteration a checkpoint was written at (None: no state, or not a training checkpoint)."""
    value = state.get("iteration") if state is not None else None
    return int(value) if isinstance(value, int | float) else None


# ----------------------------------------------------------------------------- the trainer


def build_hooks(cfg: Config, run: RunFolder, val_loader: Any, val_set: Any, class_names: Any) -> list[Any]:
    """The run's hooks from :data:`~detmine.engine.hooks.HOOKS`: the built-in defaults with the
    config's ``hooks`` entries applied, in priority order (see :mod:`detmine.engine.hooks`)."""
    from detmine.engine.hooks import HookContext
    from detmine.engine.hooks import build_hooks as hooks_from_table

    extra = {"config": config_to_dict(cfg), "class_names": list(class_names) if class_names else None}
    context = HookContext(
        cfg=cfg,
        path=run.path,
        checkpoints=run.checkpoints,
        val_loader=val_loader,
        val_set=val_set,
        class_names=class_names,
        extra=extra,
    )
    return hooks_from_table(context, cfg.hooks)


def build_trainer(
    cfg: Config,
    model: nn.Module,
    criterion: nn.Module,
    train_set: Any,
    val_set: Any,
    *,
    overwrite: bool = False,
    allow_config_change: bool = False,
    trust_checkpoint: bool = False,
) -> Any:
    """A ready :class:`~detmine.engine.trainer.Trainer` for ``cfg``: loaders over the two
    datasets, optimisation parts, hooks, and -- with ``train.resume`` -- the state of the
    newest checkpoint in ``output_dir`` restored (see :class:`RunFolder` for the folder rules;
    ``trust_checkpoint`` allows a checkpoint that needs full unpickling).

    A resumed run whose checkpoint is past ``max_iters`` is refused (:class:`ConfigError`); one
    that already finished (:meth:`RunFolder.finished`) says so in one line and gets a trainer
    without observing hooks (``train()`` does nothing, ``storage["already_finished"]`` is True),
    so metrics.jsonl and config.yaml stay as they are."""
    from detmine.engine.trainer import Trainer

    device = dist.pick_device(cfg.train.device, key="train.device")
    train_loader = build_train_loader(cfg, train_set, model)
    val_loader = build_val_loader(cfg, val_set, model) if val_set is not None else None
    max_iters, steps = schedule_length(cfg, len(train_loader))
    class_names = list(getattr(train_set, "class_names", []) or []) or None
    run = RunFolder(
        cfg, overwrite=overwrite, allow_config_change=allow_config_change, trust_checkpoint=trust_checkpoint
    )
    state, changes = run.open()
    run.check_length(state, max_iters)
    finished = bool(dist.broadcast_object(run.finished(state, max_iters, evaluates=val_loader is not None)))
    net, ema, optimizer, scheduler, scaler, amp_dtype = build_optimization(
        cfg, model, device, max_iters, steps
    )
    trainer = Trainer(
        model=net,
        criterion=criterion.to(device),
        optimizer=optimizer,
        scheduler=scheduler,
        data_loader=train_loader,
        hooks=[
            *([] if finished else build_hooks(cfg, run, val_loader, val_set, class_names)),
            RunLockHook(run.lock),
        ],
        max_iters=max_iters,
        device=device,
        amp_dtype=amp_dtype,
        grad_scaler=scaler,
        clip_grad_norm=cfg.train.clip_grad_norm,
        on_nonfinite=cfg.train.on_nonfinite,
        ema=ema,
    )
    if state is None:
        if cfg.train.resume:
            run.truncate_metrics(0)
        return trainer
    _restore(trainer, run, state, changes, finished=finished)
    return trainer


def _restore(
    trainer: Any, run: RunFolder, state: dict[str, Any], changes: ConfigChanges, *, finished: bool
) -> None:
    """Load the checkpoint's ``state`` into ``trainer``; then, unless the run had ``finished``,
    cut metrics.jsonl back to its iteration and write config.yaml with the new history line."""
    source = str(run.checkpoints.latest())
    trainer.load_state_dict(state, source=source, fresh_optimizer="train.optimizer" in changes.other)
    if "hooks" not in state and state.get("best_metric") is not None:  # a checkpoint of detmine 0.1
        for hook in trainer.hooks:
            if hook.name == "evaluation":
                hook.load_state_dict({"best_metric": state["best_metric"]})
    if finished:
        trainer.storage["already_finished"] = True
        if dist.is_main_process():
            log(
                f"note: the run in {run.path} already finished at iteration {trainer.iteration} ({source}); "
                "nothing to do -- give a larger train.max_iters to train on"
            )
        return
    run.truncate_metrics(trainer.iteration)
    run.save_config()  # after the state loaded: the history line is true
    if dist.is_main_process():
        log(f"resumed from {source} at iteration {trainer.iteration}")
        if changes.length:
            log(
                f"warning: training length changed ({changes.describe('length')}); the learning-rate "
                f"schedule is re-stretched over {trainer.max_iters} iterations"
            )
        if changes.other:
            log(f"warning: resuming with a changed config: {changes.describe()}")
