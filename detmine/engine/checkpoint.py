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
import re
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import torch
from torch import nn

from detmine.engine.checkpoint_schema import validate_checkpoint
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
    "strip_compiled_prefix",
    "validate_checkpoint",
]

LATEST_POINTER = "latest"
BEST = "best.pth"
_PERIODIC = re.compile(r"^model_(\d{7,})\.pth$")
#: the prefix ``torch.compile``'s wrapper module puts before every key of its state dict.
COMPILED_PREFIX = "_orig_mod."


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


def strip_compiled_prefix(state_dict: dict[str, Any]) -> dict[str, Any]:
    """``state_dict`` without the ``_orig_mod.`` prefix a ``torch.compile``'d module's keys
    carry (detmine saves the eager module's keys; this reads weights saved by other code).
    Only when every key has the prefix; otherwise the same dict."""
    keys = list(state_dict)
    if not keys or not all(isinstance(k, str) and k.startswith(COMPILED_PREFIX) for k in keys):
        return state_dict
    return {k[len(COMPILED_PREFIX) :]: v for k, v in state_dict.items()}


def select_weights(state: dict[str, Any], which: str, path: str) -> tuple[dict[str, Any], str]:
    """``(model state dict, "ema" | "model")`` to evaluate from a loaded checkpoint
    (``which``: auto = the EMA when the checkpoint has one, as the trainer evaluates). An
    exported ``.safetensors`` file holds one set of weights; ``auto`` or its own kind selects it.
    Keys of a ``torch.compile``'d module lose their ``_orig_mod.`` prefix."""
    weights, chosen = _select_weights(state, which, path)
    return strip_compiled_prefix(weights), chosen


def _select_weights(state: dict[str, Any], which: str, path: str) -> tuple[dict[str, Any], str]:
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
    BatchNorm's ``num_batches_tracked`` counters may be absent in either mode; the keys of a
    ``torch.compile``'d module (``_orig_mod.`` before each) load like the eager module's.

    Raises:
        CheckpointError: strict mode and a mismatch, or (partial) not a single tensor fits.
    """
    model = getattr(model, "_orig_mod", model)  # a torch.compile'd module: its eager module
    expected = model.state_dict()
    state_dict = strip_compiled_prefix(dict(state_dict))
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
