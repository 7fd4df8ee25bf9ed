"""The structure of a loaded checkpoint, checked in one place: :func:`validate_checkpoint`.

A file that loads weights-only can still lie (a ``config`` that is a string, an ``iteration``
of ``"abc"``, an EMA that is a list, RNG state of the wrong shape): every loader of checkpoints
(:func:`detmine.engine.checkpoint.load_checkpoint`, resume) calls this, and the first bad field
is one :class:`~detmine.errors.CheckpointError` line naming the file, the field and what was
expected.
"""

from __future__ import annotations

import numbers
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

import numpy as np
import torch

from detmine.errors import CheckpointError

#: The keys a training checkpoint must have to be resumed.
TRAINING_KEYS = ("model", "optimizer", "scheduler", "iteration", "sampler")

_Problem = tuple[str, Any, str] | None  # (field, its value, what was expected), None = fine


def _describe(value: Any) -> str:
    """``a str ('abc')``, ``a list``, ``None``: how a message shows a value of the wrong type."""
    if value is None:
        return "None"
    kind = type(value).__name__
    article = "an" if kind[:1].lower() in "aeiou" else "a"
    if isinstance(value, str | int | float | bool):
        text = repr(value)
        return f"{article} {kind} ({text[:40] + '...' if len(text) > 40 else text})"
    return f"{article} {kind}"


def _is_int(value: Any, minimum: int | None = 0) -> bool:
    ok = isinstance(value, numbers.Integral) and not isinstance(value, bool)
    return ok and (minimum is None or int(value) >= minimum)


def _is_number(value: Any) -> bool:
    return isinstance(value, numbers.Real) and not isinstance(value, bool)


def _tensor_dict(value: Any, field: str) -> _Problem:
    """A state dict: a dict of tensors under string keys."""
    if not isinstance(value, Mapping):
        return field, value, "a dict of tensors (a state dict)"
    for k, v in value.items():
        if not isinstance(k, str):
            return f"{field} key {k!r}", k, "a string"
        if not isinstance(v, torch.Tensor):
            return f"{field}.{k}", v, "a tensor"
    return None


def _check_ema(ema: Any) -> _Problem:
    if ema is None:
        return None
    if isinstance(ema, Mapping) and "module" in ema:
        if "updates" in ema and not _is_int(ema["updates"]):
            return "ema.updates", ema["updates"], "an integer >= 0"
        return _tensor_dict(ema["module"], "ema.module")
    return (
        _tensor_dict(ema, "ema")
        if isinstance(ema, Mapping)
        else ("ema", ema, "None or a dict {'module': state dict, 'updates': int}")
    )


def _or_none(check: Callable[[Any], bool]) -> Callable[[Any], bool]:
    return lambda value: value is None or check(value)


def _str_list(value: Any) -> bool:
    return isinstance(value, list | tuple) and all(isinstance(n, str) for n in value)


#: ``(key, check, what is expected)`` for the top-level scalars every tool may read.
_COMMON_FIELDS: tuple[tuple[str, Callable[[Any], bool], str], ...] = (
    ("config", _or_none(lambda v: isinstance(v, Mapping)), "a dict (the resolved config) or None"),
    ("iteration", _or_none(_is_int), "an integer >= 0 or None"),
    ("epoch", _or_none(_is_int), "an integer >= 0 or None"),
    ("best_metric", _or_none(_is_number), "a number or None"),
    ("exported_weights", _or_none(lambda v: v in ("ema", "model")), "'ema', 'model' or None"),
    ("class_names", _or_none(_str_list), "a list of class-name strings or None"),
)


def _check_common(state: Mapping[str, Any]) -> _Problem:
    """What every tool reads of a detmine checkpoint (one with a ``model`` key)."""
    for key, check, expected in _COMMON_FIELDS:
        if not check(state.get(key)):
            return key, state.get(key), expected
    return _tensor_dict(state["model"], "model") or _check_ema(state.get("ema"))


def validate_checkpoint(state: Any, source: str | Path, *, training: bool) -> dict[str, Any]:
    """Check a loaded checkpoint's structure before anything uses it; returns ``state``.

    Every checkpoint: a dict. One with a ``model`` key (a detmine checkpoint or an exported
    file): ``model`` a state dict (string keys, tensor values), ``ema`` None or a state dict
    (``{"module": state dict, "updates": int}``), ``config`` a dict or None, ``iteration`` /
    ``epoch`` integers >= 0 or None, ``class_names`` a list of strings. A dict without ``model``
    is a bare state dict (its tensors are checked against the model when loaded). With
    ``training`` (a resume) also the keys :data:`TRAINING_KEYS`, the optimizer, schedule,
    sampler and random-generator states, the hook states.

    Raises:
        CheckpointError: one line naming ``source``, the first bad field and what was expected,
            e.g. ``checkpoint r/model_0000006.pth: 'iteration' is a str ('abc'), expected an
            integer >= 0``.
    """
    if not isinstance(state, Mapping):
        raise CheckpointError(f"checkpoint {source} holds {_describe(state)}, expected a dict")
    if training:
        missing = [k for k in TRAINING_KEYS if k not in state]
        if missing:
            raise CheckpointError(
                f"checkpoint {source} lacks {', '.join(missing)}; it is not a detmine training checkpoint"
            )
    problem = _check_common(state) if "model" in state else None
    if problem is None and training:
        problem = _check_training(state)
    if problem is not None:
        field, value, expected = problem
        raise CheckpointError(f"checkpoint {source}: '{field}' is {_describe(value)}, expected {expected}")
    return state  # type: ignore[return-value]


def _check_training(state: Mapping[str, Any]) -> _Problem:
    """The parts only a resume reads (see :meth:`detmine.engine.trainer.Trainer.load_state_dict`)."""
    if not _is_int(state["iteration"]):
        return "iteration", state["iteration"], "an integer >= 0"
    return (
        _check_optimizer(state["optimizer"])
        or _check_scheduler(state["scheduler"])
        or _check_scaler(state.get("scaler"))
        or _optional_dict(state, "criterion")
        or _check_sampler(state["sampler"])
        or _check_rngs(state.get("rng"))
        or _check_hooks(state.get("hooks"))
        or (None if _is_int(state.get("skipped_nonfinite", 0)) else _skipped(state))
    )


def _skipped(state: Mapping[str, Any]) -> _Problem:
    return "skipped_nonfinite", state.get("skipped_nonfinite"), "an integer >= 0"


def _check_scaler(scaler: Any) -> _Problem:
    """None, or a ``GradScaler.state_dict()``: numbers under string keys (empty when disabled)."""
    if scaler is None:
        return None
    if not isinstance(scaler, Mapping):
        return "scaler", scaler, "a dict (a GradScaler state dict) or None"
    for k, v in scaler.items():
        if not _is_number(v):
            return f"scaler.{k}", v, "a number"
    return None


def _optional_dict(state: Mapping[str, Any], key: str) -> _Problem:
    value = state.get(key)
    return None if value is None or isinstance(value, Mapping) else (key, value, "a dict or None")


def _check_optimizer(opt: Any) -> _Problem:
    if not isinstance(opt, Mapping):
        return "optimizer", opt, "a dict {'state', 'param_groups'} (an optimizer state dict)"
    if not isinstance(opt.get("state"), Mapping):
        return "optimizer.state", opt.get("state"), "a dict"
    groups = opt.get("param_groups")
    if not isinstance(groups, list | tuple):
        return "optimizer.param_groups", groups, "a list of dicts"
    for i, group in enumerate(groups):
        if not isinstance(group, Mapping) or not isinstance(group.get("params"), list | tuple):
            return f"optimizer.param_groups[{i}]", group, "a dict with a 'params' list"
    return None


def _check_scheduler(sched: Any) -> _Problem:
    if not isinstance(sched, Mapping):
        return "scheduler", sched, "a dict {'iteration': int, 'base_lrs': [...]}"
    if not _is_int(sched.get("iteration")):
        return "scheduler.iteration", sched.get("iteration"), "an integer >= 0"
    lrs = sched.get("base_lrs", [])
    if not isinstance(lrs, list | tuple) or not all(_is_number(v) for v in lrs):
        return "scheduler.base_lrs", lrs, "a list of numbers"
    return None


def _check_sampler(sampler: Any) -> _Problem:
    if not isinstance(sampler, Mapping):
        return "sampler", sampler, "a dict {'epoch': int, 'batch_in_epoch': int}"
    for key in ("epoch", "batch_in_epoch"):
        if not _is_int(sampler.get(key)):
            return f"sampler.{key}", sampler.get(key), "an integer >= 0"
    loader = sampler.get("loader")
    if loader is None:
        return None
    if not isinstance(loader, Mapping):
        return "sampler.loader", loader, "a dict {'epoch': int, 'batches_consumed': int}"
    for key in ("epoch", "batches_consumed"):
        if not _is_int(loader.get(key)):
            return f"sampler.loader.{key}", loader.get(key), "an integer >= 0"
    return None


def _check_hooks(hooks: Any) -> _Problem:
    if hooks is None:
        return None
    if not isinstance(hooks, Mapping):
        return "hooks", hooks, "a dict of hook name -> state dict"
    for name, value in hooks.items():
        if not isinstance(value, Mapping):
            return f"hooks.{name}", value, "a dict"
        if not _or_none(_is_number)(value.get("best_metric")):
            return f"hooks.{name}.best_metric", value.get("best_metric"), "a number or None"
    return None


def _check_rngs(rngs: Any) -> _Problem:
    """``rng``: None or one state per process, each as :func:`~detmine.engine.run_state.rng_state`
    writes it (or the tuple form of detmine 0.1)."""
    if rngs is None:
        return None
    if not isinstance(rngs, list | tuple):
        return "rng", rngs, "a list of random-generator states (one per process)"
    for i, rng in enumerate(rngs):
        field = f"rng[{i}]"
        if not isinstance(rng, Mapping) or not {"python", "numpy", "torch"} <= set(rng):
            return field, rng, "a dict with the 'python', 'numpy' and 'torch' generator states"
        problem = _check_python_rng(rng["python"], f"{field}.python") or _check_numpy_rng(
            rng["numpy"], f"{field}.numpy"
        )
        if problem:
            return problem
        states = [("torch", rng["torch"])] + [(f"cuda[{j}]", t) for j, t in enumerate(rng.get("cuda") or [])]
        for name, t in states:
            if not isinstance(t, torch.Tensor) or t.dtype != torch.uint8 or t.dim() != 1:
                return f"{field}.{name}", t, "a 1-D uint8 tensor (torch.get_rng_state())"
    return None


def _words(value: Any, n: int) -> bool:
    """Whether ``value`` is ``n`` integers (a 1-D integer tensor or array, or a sequence)."""
    if isinstance(value, torch.Tensor):
        return (
            value.dim() == 1 and len(value) == n and not value.is_floating_point() and not value.is_complex()
        )
    if isinstance(value, np.ndarray):
        return value.ndim == 1 and len(value) == n and np.issubdtype(value.dtype, np.integer)
    return isinstance(value, list | tuple) and len(value) == n and all(_is_int(w, None) for w in value)


def _check_python_rng(py: Any, field: str) -> _Problem:
    expected = "{'version': int, 'state': 625 integers, 'gauss': float or None} (random.getstate())"
    if isinstance(py, Mapping):
        version, words, gauss = py.get("version"), py.get("state"), py.get("gauss")
    elif isinstance(py, tuple) and len(py) == 3:
        version, words, gauss = py
    else:
        return field, py, expected
    if not _is_int(version) or not _words(words, 625) or not (gauss is None or _is_number(gauss)):
        return field, py, expected
    return None


def _check_numpy_rng(npy: Any, field: str) -> _Problem:
    expected = "{'kind': 'MT19937', 'keys': 624 integers, 'pos', 'has_gauss', 'cached_gaussian'} (np.random.get_state())"
    if isinstance(npy, Mapping):
        values = [npy.get(k) for k in ("kind", "keys", "pos", "has_gauss", "cached_gaussian")]
    elif isinstance(npy, tuple) and len(npy) == 5:
        values = list(npy)
    else:
        return field, npy, expected
    kind, keys, pos, has_gauss, cached = values
    ok = kind == "MT19937" and _words(keys, 624) and _is_int(pos) and int(pos or 0) <= 624
    if not (ok and _is_int(has_gauss) and _is_number(cached)):
        return field, npy, expected
    return None
