"""Optimiser, parameter groups, per-iteration learning-rate schedules and weight EMA.

All schedules are per *iteration*: ``lr(i) = base_lr * warmup(i) * main(i)`` where
``warmup`` ramps linearly from ``warmup_factor`` to 1 over ``warmup_iters`` iterations
and ``main`` is a step decay (``gamma`` at each milestone), a cosine decay to
``min_lr_ratio`` at ``max_iters``, or constant.
"""

from __future__ import annotations

import copy
import math
from collections.abc import Sequence
from typing import Any

import torch
from torch import nn

from detmine.errors import ConfigError

_NORM_TYPES: tuple[type[nn.Module], ...] = (
    nn.modules.batchnorm._NormBase,
    nn.GroupNorm,
    nn.LayerNorm,
    nn.LocalResponseNorm,
)


def param_groups(model: nn.Module, weight_decay: float, decay_norm_and_bias: bool = False) -> list[dict]:
    """Split the trainable parameters into a decayed and a non-decayed group.

    Without ``decay_norm_and_bias`` the weights and biases of normalisation layers
    (BatchNorm, GroupNorm, LayerNorm, ...) and every bias get ``weight_decay=0``:
    decaying them only shrinks the scale the normalisation is there to learn.
    Frozen parameters (``requires_grad=False``) are left out. Shared parameters appear once.
    """
    decay: list[nn.Parameter] = []
    no_decay: list[nn.Parameter] = []
    seen: set[int] = set()
    for module in model.modules():
        is_norm = isinstance(module, _NORM_TYPES)
        for name, param in module.named_parameters(recurse=False):
            if not param.requires_grad or id(param) in seen:
                continue
            seen.add(id(param))
            if not decay_norm_and_bias and (is_norm or name == "bias"):
                no_decay.append(param)
            else:
                decay.append(param)
    groups = [{"params": decay, "weight_decay": weight_decay}]
    if no_decay:
        groups.append({"params": no_decay, "weight_decay": 0.0})
    return [g for g in groups if g["params"]]


def build_optimizer(
    model: nn.Module,
    *,
    name: str,
    lr: float,
    weight_decay: float,
    momentum: float = 0.9,
    nesterov: bool = False,
    betas: Sequence[float] = (0.9, 0.999),
    decay_norm_and_bias: bool = False,
) -> torch.optim.Optimizer:
    """SGD (momentum, optional Nesterov) or AdamW over :func:`param_groups`."""
    groups = param_groups(model, weight_decay, decay_norm_and_bias)
    if not groups:
        raise ConfigError("the model has no trainable parameters")
    if name == "sgd":
        return torch.optim.SGD(groups, lr=lr, momentum=momentum, nesterov=nesterov)
    if name == "adamw":
        return torch.optim.AdamW(groups, lr=lr, betas=(float(betas[0]), float(betas[1])))
    raise ConfigError(f"train.optimizer must be one of 'sgd', 'adamw', got {name!r}")


def lr_factor(
    iteration: int,
    *,
    max_iters: int,
    schedule: str = "multistep",
    steps: Sequence[int] = (),
    gamma: float = 0.1,
    min_lr_ratio: float = 0.0,
    warmup_iters: int = 0,
    warmup_factor: float = 0.001,
) -> float:
    """Multiplier of the base learning rate at ``iteration`` (0-based, before its update)."""
    if schedule == "multistep":
        main = gamma ** sum(1 for s in steps if iteration >= s)
    elif schedule == "cosine":
        progress = min(iteration, max_iters) / max(1, max_iters)
        main = min_lr_ratio + (1.0 - min_lr_ratio) * 0.5 * (1.0 + math.cos(math.pi * progress))
    elif schedule == "constant":
        main = 1.0
    else:
        raise ConfigError(
            f"train.lr_schedule must be one of 'multistep', 'cosine', 'constant', got {schedule!r}"
        )
    if iteration < warmup_iters:
        alpha = iteration / warmup_iters
        main *= warmup_factor * (1.0 - alpha) + alpha
    return main


class WarmupScheduler:
    """Sets every group's lr to ``base_lr * lr_factor(iteration)``; call :meth:`step` once per
    optimiser step. ``state_dict`` holds the iteration only (the schedule comes from the config)."""

    def __init__(self, optimizer: torch.optim.Optimizer, **schedule: Any) -> None:
        self.optimizer = optimizer
        self.schedule = schedule
        for group in optimizer.param_groups:
            group.setdefault("initial_lr", group["lr"])
        self.base_lrs = [group["initial_lr"] for group in optimizer.param_groups]
        self.iteration = 0
        self._apply()

    def factor(self, iteration: int) -> float:
        return lr_factor(iteration, **self.schedule)

    def _apply(self) -> None:
        f = self.factor(self.iteration)
        for group, base in zip(self.optimizer.param_groups, self.base_lrs, strict=True):
            group["lr"] = base * f

    def step(self) -> None:
        self.iteration += 1
        self._apply()

    def get_last_lr(self) -> list[float]:
        return [group["lr"] for group in self.optimizer.param_groups]

    def state_dict(self) -> dict[str, Any]:
        return {"iteration": self.iteration, "base_lrs": list(self.base_lrs)}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.iteration = int(state["iteration"])
        self.base_lrs = list(state.get("base_lrs", self.base_lrs))
        self._apply()


def _eager(model: nn.Module) -> nn.Module:
    """The module behind ``torch.compile``'s wrapper (any other module as it is)."""
    return getattr(model, "_orig_mod", model)


class ModelEMA:
    """Exponential moving average of a model's parameters and buffers.

    ``decay`` ramps up as ``decay * (1 - exp(-updates / tau))`` so the average is not
    dominated by the random initialisation early on. Float tensors are averaged; integer
    buffers (BatchNorm's ``num_batches_tracked``) are copied. A ``torch.compile``'d model is
    averaged through its eager module, so the EMA's state dict has the eager keys.
    """

    def __init__(self, model: nn.Module, decay: float = 0.9998, tau: float = 2000.0) -> None:
        self.module = copy.deepcopy(_eager(model)).eval()
        for p in self.module.parameters():
            p.requires_grad_(False)
        self.decay = decay
        self.tau = tau
        self.updates = 0

    def current_decay(self) -> float:
        if self.tau <= 0:
            return self.decay
        return self.decay * (1.0 - math.exp(-self.updates / self.tau))

    @torch.no_grad()
    def update(self, model: nn.Module) -> None:
        self.updates += 1
        d = self.current_decay()
        source = _eager(model).state_dict()
        for name, ema_value in self.module.state_dict().items():
            value = source[name].detach()
            if ema_value.dtype.is_floating_point:
                ema_value.mul_(d).add_(value.to(ema_value.dtype), alpha=1.0 - d)
            else:
                ema_value.copy_(value)

    def state_dict(self) -> dict[str, Any]:
        return {"module": self.module.state_dict(), "updates": self.updates}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.module.load_state_dict(state["module"])
        self.updates = int(state["updates"])
