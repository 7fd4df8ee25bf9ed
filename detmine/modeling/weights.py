"""Loading local pretrained backbone weights (torchvision ``.pth`` state dicts, or ``.safetensors``).

Files are read weights-only (:func:`read_weights_file`): a ``.pth`` whose pickle would run code
(anything but tensors, numbers, strings, lists and dicts) is refused, naming what it asked for;
torchvision's ImageNet files are plain state dicts and load as they are.

The tools' ``--trust-checkpoint`` reaches these files too: the model builder runs inside
:func:`trusting_weights`, and a file read there may need the full unpickler (it can run code).

Nothing is ever downloaded: ``weights`` names a file on disk, either a path or a bare file name
found in torchvision's cache ``$TORCH_HOME/hub/checkpoints`` (``torch.hub.get_dir()``), where
``torchvision.models.resnet50(weights=...)`` would have put it on a machine with internet.
"""

from __future__ import annotations

import os
from collections.abc import Iterable, Iterator, Mapping
from contextlib import contextmanager
from contextvars import ContextVar
from pathlib import Path

import torch
from torch import nn

from detmine.errors import CheckpointError

#: State-dict prefixes of ImageNet classifiers, which detection backbones do not have.
CLASSIFIER_PREFIXES = ("fc.", "classifier.")

_SHOW = 5  # how many offending keys a message names

#: Whether backbone files read now may use the full unpickler (``--trust-checkpoint``).
_TRUSTED: ContextVar[bool] = ContextVar("detmine_trusted_weights", default=False)


@contextmanager
def trusting_weights(trusted: bool = True) -> Iterator[None]:
    """Inside the block, :func:`read_weights_file` loads ``.pth`` files that need the full
    unpickler when ``trusted`` (the tools' ``--trust-checkpoint``): the zoo's builders take
    ``weights`` from ``model.options`` and know nothing of the flag."""
    token = _TRUSTED.set(bool(trusted))
    try:
        yield
    finally:
        _TRUSTED.reset(token)


def resolve_weights_path(weights: str | os.PathLike) -> Path:
    """The file ``weights`` refers to: an existing path, else a bare name in the torch hub cache.

    Raises:
        CheckpointError: naming the path and the cache directory that were searched.
    """
    path = Path(weights).expanduser()
    if path.is_file():
        return path
    cache = Path(torch.hub.get_dir()) / "checkpoints"
    if path.name == str(weights) and (cache / path.name).is_file():
        return cache / path.name
    where = f"'{path}'" + (f" or '{cache / path.name}'" if path.name == str(weights) else "")
    raise CheckpointError(f"weights file not found: looked for {where}")


def read_weights_file(path: Path, *, trusted: bool | None = None) -> object:
    """The content of a ``.pth`` (weights-only: never runs code from the file) or ``.safetensors``
    weights file. ``trusted`` (default: inside :func:`trusting_weights`) loads any pickle.

    Raises:
        CheckpointError: unreadable file, or a ``.pth`` that needs more than tensors, numbers,
            strings, lists and dicts (names the first global it asked for).
    """
    from detmine.safe_io import (
        CorruptCheckpointError,
        UnsafeCheckpointError,
        is_safetensors,
        read_safetensors,
        read_torch_file,
    )

    try:
        if is_safetensors(path):
            return read_safetensors(path, what="weights file")[0]
        return read_torch_file(
            path,
            trusted=_TRUSTED.get() if trusted is None else trusted,
            what="weights file",
            hint="a weights file must be a plain state dict of tensors: re-save it with "
            "torch.save(module.state_dict(), path) or as .safetensors, or pass --trust-checkpoint "
            "if you trust the file",
        )
    except UnsafeCheckpointError:
        raise
    except CorruptCheckpointError as exc:
        raise CheckpointError(f"cannot read weights file '{path}': {exc.reason}") from None


def _first(keys: Iterable[str]) -> str:
    keys = sorted(keys)
    more = f" (+{len(keys) - _SHOW} more)" if len(keys) > _SHOW else ""
    return ", ".join(keys[:_SHOW]) + more


def _comparable(keys: Iterable[str]) -> set[str]:
    # BatchNorm's counter is absent from old torchvision files and from FrozenBatchNorm2d.
    return {k for k in keys if not k.endswith("num_batches_tracked")}


def load_backbone_weights(
    module: nn.Module,
    weights: str | os.PathLike,
    *,
    ignore_prefixes: tuple[str, ...] = CLASSIFIER_PREFIXES,
    name: str = "backbone",
) -> Path:
    """Load a torchvision state dict into ``module``, strictly on every non-classifier key.

    Args:
        module: the torchvision network (e.g. ``torchvision.models.resnet50()``) whose state-dict
            keys the file uses, before it is cut into a feature extractor.
        weights: path or bare file name (see :func:`resolve_weights_path`).
        ignore_prefixes: keys of the file starting with these are skipped (the classifier).
        name: how messages call the module.

    Returns:
        The resolved path of the file that was loaded.

    Raises:
        CheckpointError: the file is missing, unreadable, not a state dict, or its keys / shapes do
            not match ``module`` (the message names the file and the first offending keys).
    """
    path = resolve_weights_path(weights)
    state = read_weights_file(path)
    if not isinstance(state, Mapping) or not all(
        isinstance(k, str) and isinstance(v, torch.Tensor) for k, v in state.items()
    ):
        raise CheckpointError(
            f"weights file '{path}' is not a state dict of tensors (torchvision .pth expected)"
        )
    state = {k: v for k, v in state.items() if not k.startswith(ignore_prefixes)}
    expected = {k: v for k, v in module.state_dict().items() if not k.startswith(ignore_prefixes)}
    missing = _comparable(expected) - _comparable(state)
    unexpected = _comparable(state) - _comparable(expected)
    problems = []
    if missing:
        problems.append(f"missing keys: {_first(missing)}")
    if unexpected:
        problems.append(f"unexpected keys: {_first(unexpected)}")
    mismatched = [
        f"{k} (file {tuple(state[k].shape)} vs model {tuple(expected[k].shape)})"
        for k in sorted(_comparable(state) & _comparable(expected))
        if state[k].shape != expected[k].shape
    ]
    if mismatched:
        more = f" (+{len(mismatched) - _SHOW} more)" if len(mismatched) > _SHOW else ""
        problems.append("shape mismatch: " + ", ".join(mismatched[:_SHOW]) + more)
    if problems:
        raise CheckpointError(f"weights file '{path}' does not fit the {name}: " + "; ".join(problems))
    module.load_state_dict(state, strict=False)
    return path
