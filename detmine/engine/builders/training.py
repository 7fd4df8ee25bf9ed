"""The training run from the config: device and precision, EMA / SyncBN / DDP, optimiser and
schedule, the run folder (refused, cleared or resumed), the hooks, and the trainer that runs
them -- every decision the trainer must not make."""

from __future__ import annotations

import math
import warnings
from typing import Any

import torch
from torch import nn

from detmine import distributed as dist
from detmine.config import Config, config_to_dict
from detmine.console import log
from detmine.engine.builders.data import build_train_loader, build_val_loader
from detmine.engine.resume import ConfigChanges
from detmine.engine.run_folder import RunFolder, RunLockHook
from detmine.errors import ConfigError

AMP_DTYPES = {"bf16": torch.bfloat16, "fp16": torch.float16}


def schedule_length(cfg: Config, iters_per_epoch: int) -> tuple[int, list[int]]:
    """``(max_iters, multistep steps in iterations)``: ``train.max_iters`` with steps in
    iterations, or ``train.epochs`` with steps in epochs."""
    t = cfg.train
    if t.max_iters > 0:
        return t.max_iters, [int(s) for s in t.steps]
    iters_per_epoch = max(1, int(iters_per_epoch))
    return math.ceil(t.epochs * iters_per_epoch), [round(s * iters_per_epoch) for s in t.steps]


def amp_unsupported(device_type: str, dtype: torch.dtype) -> str | None:
    """Why this torch cannot autocast to ``dtype`` on ``device_type`` (with a GradScaler for
    float16), or None. Older versions warn and disable CPU float16 autocast instead of failing."""
    try:
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            probe = torch.ones(2, 2, device=device_type)
            with torch.autocast(device_type, dtype=dtype):
                active = (probe @ probe).dtype == dtype  # a matmul is on every autocast list
        if dtype == torch.float16:
            torch.amp.GradScaler(device_type)
    except (RuntimeError, ValueError, TypeError, AttributeError) as exc:
        return str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
    if not active:
        said = [str(w.message).splitlines()[0] for w in caught]
        return said[0] if said else f"torch {torch.__version__} has no {dtype} autocast on {device_type}"
    return None


def resolve_amp(amp: str, device: torch.device) -> torch.dtype | None:
    """The autocast dtype of ``train.amp`` on ``device`` (None: fp32). ``auto`` is bfloat16 on
    CUDA and fp32 elsewhere; an explicit ``bf16`` / ``fp16`` autocasts on the CPU too.

    Raises:
        ConfigError: this torch cannot autocast to that dtype on the CPU (one line: why, and
            what to use instead).
    """
    if amp == "auto":
        return torch.bfloat16 if device.type == "cuda" else None
    dtype = AMP_DTYPES.get(amp)
    if dtype is None or device.type == "cuda":  # CUDA: as it always was, no probing
        return dtype
    reason = amp_unsupported(device.type, dtype)
    if reason is not None:
        raise ConfigError(
            f"train.amp={amp} is not supported on {device.type} by torch {torch.__version__} ({reason}); "
            "use train.amp=bf16, off or auto"
        )
    return dtype


def build_optimization(cfg: Config, model: nn.Module, device: torch.device, max_iters: int, steps: list[int]):
    """``(model (maybe DDP-wrapped), ema, optimizer, scheduler, scaler, amp_dtype)``: the model
    moved to ``device``, SyncBN under several processes, the EMA of the bare model, the
    optimiser over its parameters, the warmup schedule and the fp16 GradScaler."""
    from detmine.engine.optim import ModelEMA, WarmupScheduler, build_optimizer

    t = cfg.train
    amp_dtype = resolve_amp(t.amp, device)
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
    scaler = torch.amp.GradScaler(device.type, enabled=amp_dtype == torch.float16)
    return model, ema, optimizer, scheduler, scaler, amp_dtype


# ----------------------------------------------------------------------------- the trainer


def build_hooks(
    cfg: Config, run: RunFolder, val_loader: Any, val_set: Any, class_names: Any, train_set: Any = None
) -> list[Any]:
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
        train_set=train_set,
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
    from detmine.engine.hooks import hook_enabled

    evaluates = val_loader is not None and hook_enabled("evaluation", cfg.hooks)
    finished = bool(dist.broadcast_object(run.finished(state, max_iters, evaluates=evaluates)))
    net, ema, optimizer, scheduler, scaler, amp_dtype = build_optimization(
        cfg, model, device, max_iters, steps
    )
    forward = None
    if cfg.train.compile:
        from detmine.engine.compile import CompiledForward

        forward = CompiledForward(net, device)
    trainer = Trainer(
        model=net,
        forward=forward,
        criterion=criterion.to(device),
        optimizer=optimizer,
        scheduler=scheduler,
        data_loader=train_loader,
        hooks=[
            *([] if finished else build_hooks(cfg, run, val_loader, val_set, class_names, train_set)),
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
        if changes.precision:
            dtype = trainer.amp_dtype
            now = "fp32" if dtype is None else {torch.bfloat16: "bf16", torch.float16: "fp16"}[dtype]
            log(
                f"warning: mixed precision changed ({changes.describe('precision')}); the steps from "
                f"here run in {now} on {trainer.device.type}"
            )
        if changes.other:
            log(f"warning: resuming with a changed config: {changes.describe()}")
