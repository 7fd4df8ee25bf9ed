"""Export a trained detector's inference weights to ``.safetensors``, the file to share.

A ``.safetensors`` file is a JSON header plus raw tensor bytes: loading one never runs code,
unlike unpickling a ``.pth``. :func:`export_safetensors` writes the weights evaluation would
use (the EMA when the checkpoint has one) and, in the file's metadata, the resolved config that
rebuilds the model (``detmine.config``, JSON), which weights they are (``detmine.weights``),
the iteration and the source file name. :func:`~detmine.engine.checkpoint.load_checkpoint`
reads it back as ``{"model": weights, "config": {...}, ...}``, so every tool that takes a
checkpoint takes the exported file too.
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

import torch

from detmine.engine.checkpoint import load_checkpoint, select_weights
from detmine.errors import CheckpointError
from detmine.safe_io import (
    META_CLASS_NAMES,
    META_CONFIG,
    META_ITERATION,
    META_SOURCE,
    META_WEIGHTS,
    atomic_write_bytes,
    check_writable,
)


def export_safetensors(
    checkpoint_path: str | os.PathLike,
    out_path: str | os.PathLike,
    which: str = "auto",
    *,
    trusted: bool = False,
) -> tuple[Path, str]:
    """Write the inference weights of ``checkpoint_path`` to ``out_path`` (``.safetensors``).

    Args:
        checkpoint_path: a detmine checkpoint, a bare state dict, or an exported file.
        out_path: the file to write (must end in ``.safetensors``); written atomically.
        which: ``auto`` (the EMA when present, as evaluation does), ``ema`` or ``model``.
        trusted: load a checkpoint that needs the full unpickler (``--trust-checkpoint``).

    Returns:
        ``(out_path, "ema" | "model")``: the file written and which weights it holds.

    Raises:
        CheckpointError: unreadable / refused / malformed checkpoint, missing or empty weights,
            non-tensor entries, or an output that cannot be written (checked before the
            checkpoint is read; one line naming the file). Nothing is written on an error.
    """
    src, out = Path(checkpoint_path), Path(out_path)
    if out.suffix != ".safetensors":
        raise CheckpointError(f"export output {out} must end in .safetensors")
    if out.exists() and src.exists() and out.resolve() == src.resolve():
        raise CheckpointError(f"export output {out} is the checkpoint itself; choose another file")
    try:
        from safetensors.torch import save as safetensors_bytes
    except ImportError:
        raise CheckpointError(
            "exporting .safetensors needs the safetensors package (pip install safetensors)"
        ) from None

    check_writable(out, "exported weights", where="output file")
    state = load_checkpoint(src, "cpu", trusted=trusted)
    weights, chosen = select_weights(state, which, str(src))
    bad = [k for k, v in weights.items() if not isinstance(v, torch.Tensor)]
    if bad:
        raise CheckpointError(f"checkpoint {src}: weights entry '{bad[0]}' is not a tensor; cannot export it")
    if not weights:
        raise CheckpointError(
            f"checkpoint {src} holds no {chosen} weights (its state dict is empty); nothing to export, "
            f"{out} was not written"
        )
    # own, contiguous storage per tensor: safetensors refuses tensors that share memory
    tensors = {k: v.detach().cpu().contiguous().clone() for k, v in weights.items()}
    data = safetensors_bytes(tensors, metadata=_metadata(state, chosen, src))
    atomic_write_bytes(out, data, what="exported weights", where="output file")
    return out, chosen


def _metadata(state: dict[str, Any], which: str, src: Path) -> dict[str, str]:
    meta = {"format": "pt", META_WEIGHTS: which, META_SOURCE: src.name}
    if "model" not in state:  # a bare state dict: nothing else is known
        return meta
    if state.get("config") is not None:
        meta[META_CONFIG] = json.dumps(state["config"], default=str)
    if state.get("iteration") is not None:
        meta[META_ITERATION] = str(int(state["iteration"]))
    if state.get("class_names") is not None:
        meta[META_CLASS_NAMES] = json.dumps(list(state["class_names"]))
    return meta
