"""Checkpoints: atomic writes, safe loading, keep-last-k rotation, the ``latest`` pointer.

A checkpoint is a plain ``torch.save`` dict with the keys ``model, optimizer, scheduler,
scaler, ema, iteration, epoch, sampler, rng, config, best_metric``, made only of tensors,
numbers, strings, ``None``, lists, tuples and dicts, so it loads with
``torch.load(weights_only=True)``: :func:`load_checkpoint` loads every file that way and
refuses one that would need to run code, unless the caller trusts it (``--trust-checkpoint``).
An exported ``.safetensors`` file (:mod:`detmine.engine.export`) is accepted wherever a
checkpoint is, as ``{"model": weights, "config": ...}``.

Writing goes to a temporary file in the same folder, is flushed and fsync'ed, then
``os.replace``'d over the destination, so a crash at any moment leaves either the old file or
the new one -- never half of one; a failing write (read-only folder, full disk) is one
:class:`CheckpointError` line naming the path and the cause. The ``latest`` pointer (a text
file naming the newest checkpoint) is replaced the same way. :class:`CheckpointManager` only
ever deletes checkpoints of its own run.

Also here: loading weights into a model with one-line messages for every mismatch
(:func:`load_model_state`). The rest of a resume's state (random generators, data position)
is in :mod:`detmine.engine.run_state`.
"""

from __future__ import annotations

import io
import numbers
import re
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from detmine.errors import CheckpointError
from detmine.safe_io import (
    META_CLASS_NAMES,
    META_CONFIG,
    META_ITERATION,
    META_WEIGHTS,
    TRUST_FLAG,
    CorruptCheckpointError,
    UnsafeCheckpointError,
    atomic_write_bytes,
    atomic_write_text,
    is_safetensors,
    parse_metadata_json,
    read_safetensors,
    read_torch_file,
    remove_stale_tmp,
)

__all__ = [
    "TRUST_FLAG",
    "CheckpointManager",
    "CorruptCheckpointError",
    "UnsafeCheckpointError",
    "atomic_write_text",
    "load_checkpoint",
    "load_model_state",
    "save_checkpoint",
    "select_weights",
    "validate_checkpoint",
]

LATEST_POINTER = "latest"
BEST = "best.pth"
_PERIODIC = re.compile(r"^model_(\d{7,})\.pth$")


def save_checkpoint(path: str | Path, state: dict[str, Any]) -> Path:
    """Write ``state`` to ``path`` atomically (temp file + fsync + ``os.replace``).

    Raises:
        CheckpointError: the file cannot be written (names the path and the cause, e.g.
            ``[ENOSPC]``); the previous file at ``path`` is intact.
    """
    path = Path(path)
    buffer = io.BytesIO()
    torch.save(state, buffer)
    return atomic_write_bytes(path, buffer.getvalue(), what="checkpoint")


def load_checkpoint(
    path: str | Path, map_location: Any = "cpu", *, trusted: bool = False, training: bool = False
) -> dict[str, Any]:
    """Read a checkpoint (``.pth``) or exported weights (``.safetensors``, by suffix or content)
    and check its structure (:func:`validate_checkpoint`; ``training``: the full state a resume
    needs, else what the tools read).

    ``.pth`` files load weights-only: tensors, numbers, strings, lists and dicts, everything a
    checkpoint written by detmine holds. ``trusted=True`` (the tools' ``--trust-checkpoint``)
    loads any pickle -- which runs whatever code the file names; only for files of your own.
    A ``.safetensors`` file gives ``{"model": tensors, "ema": None, "config": dict | None,
    "exported_weights": "ema" | "model", "iteration": int | None, "class_names": list | None,
    "metadata": {str: str}}`` so :func:`select_weights` and the config readers work unchanged.

    Raises:
        UnsafeCheckpointError: (a :class:`CheckpointError`) the file needs more than weights-only
            loading allows; one line naming the file, the first disallowed global and the flag.
        CheckpointError: missing, truncated or corrupt file, or a malformed one (names the
            first bad field and what was expected).
    """
    path = Path(path)
    if not path.is_file():
        raise CheckpointError(f"checkpoint {path} does not exist")
    if is_safetensors(path):
        state = _safetensors_checkpoint(path, *read_safetensors(path, map_location))
    else:
        state = read_torch_file(path, map_location, trusted=trusted)
    return validate_checkpoint(state, path, training=training)


def _safetensors_checkpoint(path: Path, tensors: dict[str, torch.Tensor], meta: dict[str, str]) -> dict:
    def parsed(key: str) -> Any:
        return parse_metadata_json(meta[key], key, path) if key in meta else None

    iteration = meta.get(META_ITERATION)
    return {
        "model": tensors,
        "ema": None,
        "config": parsed(META_CONFIG),
        "exported_weights": meta.get(META_WEIGHTS, "model"),
        "iteration": int(iteration) if iteration and re.fullmatch(r"[0-9]{1,18}", iteration) else None,
        "class_names": parsed(META_CLASS_NAMES),
        "metadata": meta,
    }


# ----------------------------------------------------------------------------- structure

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


class CheckpointManager:
    """Periodic checkpoints ``model_<iteration>.pth`` in ``directory``, the newest ``keep_last``
    of this run kept, the newest named by the ``latest`` pointer file.

    Rotation deletes only checkpoints of the current run: the ones this manager wrote, and
    after :meth:`load_latest` (resume) those of the run it continues, up to the iteration it
    resumed from. The file just written is never deleted, so ``latest`` always names an
    existing file. Checkpoints of an older run in the same folder are left alone:
    the run folder (:class:`detmine.engine.builders.RunFolder`) refuses to start a fresh run among
    them, or :meth:`clear`\\ s them with ``--overwrite``.
    """

    def __init__(self, directory: str | Path, keep_last: int = 3) -> None:
        self.directory = Path(directory)
        self.keep_last = max(1, keep_last)
        self._owned: set[str] = set()  # file names of periodic checkpoints of this run

    def path_for(self, iteration: int) -> Path:
        return self.directory / f"model_{iteration:07d}.pth"

    def periodic(self) -> list[Path]:
        """The periodic checkpoints on disk (of any run), oldest first."""
        if not self.directory.is_dir():
            return []
        found = [(int(m.group(1)), p) for p in self.directory.iterdir() if (m := _PERIODIC.match(p.name))]
        return [p for _, p in sorted(found)]

    def save(self, state: dict[str, Any], iteration: int) -> Path:
        """Save, move the pointer, delete this run's checkpoints but the newest ``keep_last``.

        Raises:
            CheckpointError: the checkpoint or the pointer cannot be written (one line naming
                the path and the cause); the previous checkpoint and pointer are intact.
        """
        path = save_checkpoint(self.path_for(iteration), state)
        self._owned.add(path.name)
        atomic_write_text(self.directory / LATEST_POINTER, path.name + "\n", what="checkpoint pointer")
        ours = [p for p in self.periodic() if p.name in self._owned and p != path]
        for old in ours[: max(0, len(ours) - (self.keep_last - 1))]:
            try:
                old.unlink(missing_ok=True)
            except OSError:  # cannot delete: keep it, the run goes on
                continue
            self._owned.discard(old.name)
        return path

    def latest(self) -> Path | None:
        """The newest checkpoint named by the pointer (or, without a pointer, found on disk).

        Raises:
            CheckpointError: the pointer names something that is not a file name in this
                folder (a path, ``..``, a link leading out of it): it is never followed.
        """
        pointer = self.directory / LATEST_POINTER
        if pointer.is_file():
            name = pointer.read_text().strip()
            if name:
                path = self.directory / name
                inside = path.resolve().parent == self.directory.resolve()  # links resolved
                if name != Path(name).name or name in (".", "..") or not inside:
                    raise CheckpointError(
                        f"checkpoint pointer {pointer} names {name!r}, which is not a file in {self.directory}; "
                        "it must hold the file name of a checkpoint of this run folder: fix or delete it"
                    )
                return path
        found = self.periodic()
        return found[-1] if found else None

    def load_latest(self, map_location: Any = "cpu", *, trusted: bool = False) -> dict[str, Any] | None:
        """Load the newest checkpoint, or None when the folder has none; the run continues
        the checkpoints up to it (they rotate from now on). A corrupt one raises
        :class:`CheckpointError` naming the older checkpoints that are still there."""
        path = self.latest()
        if path is None:
            return None
        try:
            state = load_checkpoint(path, map_location, trusted=trusted)
        except UnsafeCheckpointError:
            raise
        except CheckpointError as exc:
            older = [p.name for p in self.periodic() if p != path]
            hint = f"; older checkpoints in {self.directory}: {', '.join(older)}" if older else ""
            raise CheckpointError(f"{exc}{hint}") from None
        m = _PERIODIC.match(path.name)
        limit = int(m.group(1)) if m else None
        for p in self.periodic():
            if limit is None or int(_PERIODIC.match(p.name).group(1)) <= limit:
                self._owned.add(p.name)
        return state

    # ------------------------------------------------------------------ folder hygiene

    def existing(self) -> list[Path]:
        """Every checkpoint file of the folder: periodic ones, the pointer, ``best.pth``."""
        extra = [self.directory / n for n in (LATEST_POINTER, BEST) if (self.directory / n).is_file()]
        return self.periodic() + extra

    def has_checkpoints(self) -> bool:
        """Whether the folder holds checkpoints (periodic, ``latest`` or ``best.pth``)."""
        return bool(self.existing())

    def clear(self) -> list[Path]:
        """Delete the periodic checkpoints, ``latest``, ``best.pth`` and stale temporary files
        (not ``config.yaml``, ``metrics.jsonl`` or TensorBoard events); returns what was removed.

        Raises:
            CheckpointError: a file cannot be deleted (names it and the cause).
        """
        removed = []
        for p in self.existing():
            try:
                p.unlink(missing_ok=True)
            except OSError as exc:
                raise CheckpointError(
                    f"cannot delete old checkpoint {p}: {exc.strerror or exc}; delete it or choose another output_dir"
                ) from None
            removed.append(p)
        self._owned.clear()
        return removed + self.remove_stale_tmp()

    def remove_stale_tmp(self) -> list[Path]:
        """Delete the ``.<name>.<random>.tmp`` files an interrupted write left in the folder."""
        return remove_stale_tmp(self.directory)


def select_weights(state: dict[str, Any], which: str, path: str) -> tuple[dict[str, Any], str]:
    """``(model state dict, "ema" | "model")`` to evaluate from a loaded checkpoint
    (``which``: auto = the EMA when the checkpoint has one, as the trainer evaluates). An
    exported ``.safetensors`` file holds one set of weights; ``auto`` or its own kind selects it."""
    if "model" not in state:  # a bare state dict
        if which == "ema":
            raise CheckpointError(
                f"checkpoint {path} is a bare state dict without EMA weights; use --weights model"
            )
        return state, "model"
    exported = state.get("exported_weights")
    if exported is not None:
        if which not in ("auto", exported):
            raise CheckpointError(
                f"{path} holds only the {exported} weights it was exported with; use --weights auto"
            )
        return state["model"], exported
    ema = state.get("ema")
    if which == "ema" or (which == "auto" and ema):
        if not ema:
            raise CheckpointError(
                f"checkpoint {path} has no EMA weights (train.ema was off); use --weights model"
            )
        return (ema["module"] if "module" in ema else ema), "ema"
    return state["model"], "model"


# ----------------------------------------------------------------------------- into a model

_SHOW = 3  # mismatching tensors named in a message


def _shape(t: Any) -> str:
    return "[" + ", ".join(str(d) for d in t.shape) + "]" if hasattr(t, "shape") else type(t).__name__


def _names(keys: list[str]) -> str:
    more = f" (+{len(keys) - _SHOW} more)" if len(keys) > _SHOW else ""
    return ", ".join(keys[:_SHOW]) + more


def load_model_state(
    model: nn.Module, state_dict: Mapping[str, Any], *, source: str, partial: bool = False
) -> list[str]:
    """Load ``state_dict`` into ``model``; returns the model's keys that were not loaded.

    Strict (``partial=False``): every key of the model must be in ``state_dict`` with its shape,
    and nothing else; otherwise one line names the mismatching tensors with both shapes and the
    missing / unexpected keys, e.g. ``checkpoint x.pth does not fit the model:
    head.cls_logits.weight is [9, 64, 3, 3] in the checkpoint but [3, 64, 3, 3] in the model
    (and 1 more); missing: ...; unexpected: ...``. Returns ``[]``.

    Partial (``partial=True``, fine-tuning with another number of classes): every tensor whose
    name and shape fit is loaded, the rest of the checkpoint is ignored; returns the model keys
    that keep their current values (shape mismatch or absent from the checkpoint), model order.
    BatchNorm's ``num_batches_tracked`` counters may be absent in either mode.

    Raises:
        CheckpointError: strict mode and a mismatch, or (partial) not a single tensor fits.
    """
    expected = model.state_dict()
    counter = "num_batches_tracked"
    mismatched = [
        k
        for k, v in expected.items()
        if k in state_dict and tuple(getattr(state_dict[k], "shape", (-1,))) != tuple(v.shape)
    ]
    missing = [k for k in expected if k not in state_dict and not k.endswith(counter)]
    unexpected = [k for k in state_dict if k not in expected and not k.endswith(counter)]
    skipped = set(mismatched) | set(missing)
    fits = {k: v for k, v in state_dict.items() if k in expected and k not in skipped}
    if not partial and (mismatched or missing or unexpected):
        parts = []
        if mismatched:
            k = mismatched[0]
            more = f" (and {len(mismatched) - 1} more)" if len(mismatched) > 1 else ""
            parts.append(
                f"{k} is {_shape(state_dict[k])} in the checkpoint but {_shape(expected[k])} in the model{more}"
            )
        if missing:
            parts.append(f"missing: {_names(missing)}")
        if unexpected:
            parts.append(f"unexpected: {_names(unexpected)}")
        raise CheckpointError(f"checkpoint {source} does not fit the model: " + "; ".join(parts))
    if partial and not any(not k.endswith(counter) for k in fits):
        raise CheckpointError(
            f"checkpoint {source} does not fit the model at all: no tensor has a name and shape of the model "
            f"(model keys start {_names(list(expected))}; checkpoint keys {_names(list(state_dict))})"
        )
    try:
        model.load_state_dict(fits, strict=False)
    except RuntimeError as exc:  # e.g. a non-tensor value
        raise CheckpointError(
            f"checkpoint {source} does not fit the model: {str(exc).strip().splitlines()[0]}"
        ) from None
    return [k for k in expected if k in skipped]
