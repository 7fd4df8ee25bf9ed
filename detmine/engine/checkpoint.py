"""Atomic checkpoints, keep-last-k rotation and the ``latest`` pointer used by ``--resume``.

A checkpoint is a plain ``torch.save`` dict (loadable with ``torch.load``) with the keys
``model, optimizer, scheduler, scaler, ema, iteration, epoch, sampler, rng, config,
best_metric``. Writing goes to a temporary file in the same folder, is flushed and
fsync'ed, then ``os.replace``'d over the destination, so a crash at any moment leaves
either the old file or the new one -- never half of one. The ``latest`` pointer (a text
file naming the newest checkpoint) is replaced the same way.

Also here: what else a resume needs -- the random generators' states (:func:`rng_state`) and
the position in the training data (:class:`DataStream`).
"""

from __future__ import annotations

import contextlib
import io
import os
import random
import re
import tempfile
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import torch

from detmine.errors import CheckpointError, DataError

LATEST_POINTER = "latest"
_PERIODIC = re.compile(r"^model_(\d{7,})\.pth$")


def _atomic_write_bytes(path: Path, data: bytes) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        if os.path.exists(tmp):
            os.unlink(tmp)
        raise
    try:  # make the rename itself durable
        dir_fd = os.open(path.parent, os.O_RDONLY)
        try:
            os.fsync(dir_fd)
        finally:
            os.close(dir_fd)
    except OSError:
        pass


def save_checkpoint(path: str | Path, state: dict[str, Any]) -> Path:
    """Write ``state`` to ``path`` atomically (temp file + fsync + ``os.replace``)."""
    path = Path(path)
    buffer = io.BytesIO()
    torch.save(state, buffer)
    _atomic_write_bytes(path, buffer.getvalue())
    return path


def load_checkpoint(path: str | Path, map_location: str | torch.device = "cpu") -> dict[str, Any]:
    """Read a checkpoint; a missing, truncated or corrupt file raises :class:`CheckpointError`."""
    path = Path(path)
    if not path.is_file():
        raise CheckpointError(f"checkpoint {path} does not exist")
    try:
        state = torch.load(path, map_location=map_location, weights_only=False)
    except Exception as exc:  # zip/pickle errors of every kind mean the same thing to the user
        reason = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
        raise CheckpointError(
            f"checkpoint {path} is corrupt or truncated ({reason}); it was not loaded"
        ) from None
    if not isinstance(state, dict):
        raise CheckpointError(f"checkpoint {path} holds a {type(state).__name__}, expected a dict")
    return state


class CheckpointManager:
    """Periodic checkpoints ``model_<iteration>.pth`` in ``directory``, the newest ``keep_last``
    kept, the newest named by the ``latest`` pointer file."""

    def __init__(self, directory: str | Path, keep_last: int = 3) -> None:
        self.directory = Path(directory)
        self.keep_last = max(1, keep_last)

    def path_for(self, iteration: int) -> Path:
        return self.directory / f"model_{iteration:07d}.pth"

    def periodic(self) -> list[Path]:
        """The periodic checkpoints on disk, oldest first."""
        if not self.directory.is_dir():
            return []
        found = [(int(m.group(1)), p) for p in self.directory.iterdir() if (m := _PERIODIC.match(p.name))]
        return [p for _, p in sorted(found)]

    def save(self, state: dict[str, Any], iteration: int) -> Path:
        """Save, move the pointer, delete all but the newest ``keep_last``."""
        path = save_checkpoint(self.path_for(iteration), state)
        _atomic_write_bytes(self.directory / LATEST_POINTER, (path.name + "\n").encode())
        for old in self.periodic()[: -self.keep_last]:
            old.unlink(missing_ok=True)
        return path

    def latest(self) -> Path | None:
        """The newest checkpoint named by the pointer (or, without a pointer, found on disk)."""
        pointer = self.directory / LATEST_POINTER
        if pointer.is_file():
            name = pointer.read_text().strip()
            if name:
                return self.directory / name
        found = self.periodic()
        return found[-1] if found else None

    def load_latest(self, map_location: str | torch.device = "cpu") -> dict[str, Any] | None:
        """Load the newest checkpoint, or None when the folder has none. A corrupt one raises
        :class:`CheckpointError` naming the older checkpoints that are still there."""
        path = self.latest()
        if path is None:
            return None
        try:
            return load_checkpoint(path, map_location)
        except CheckpointError as exc:
            older = [p.name for p in self.periodic() if p != path]
            hint = f"; older checkpoints in {self.directory}: {', '.join(older)}" if older else ""
            raise CheckpointError(f"{exc}{hint}") from None


# ----------------------------------------------------------------------------- RNG state


def rng_state() -> dict[str, Any]:
    """The states of every random generator a training step may draw from."""
    state = {
        "python": random.getstate(),
        "numpy": np.random.get_state(),
        "torch": torch.get_rng_state(),
    }
    if torch.cuda.is_available() and torch.cuda.is_initialized():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def set_rng_state(state: dict[str, Any]) -> None:
    """Restore what :func:`rng_state` returned."""
    random.setstate(state["python"])
    np.random.set_state(state["numpy"])
    torch.set_rng_state(state["torch"].cpu() if hasattr(state["torch"], "cpu") else state["torch"])
    if "cuda" in state and torch.cuda.is_available():
        cuda_states = state["cuda"]
        if len(cuda_states) == torch.cuda.device_count():
            torch.cuda.set_rng_state_all([s.cpu() for s in cuda_states])


# ----------------------------------------------------------------------------- resume position


class DataStream:
    """Endless batches from an epoch-based loader, remembering where it is.

    ``epoch`` and ``batch_in_epoch`` (batches of the current epoch already handed out) are
    the resume position. A resumable loader (``set_epoch``/``state_dict``/``load_state_dict``,
    like :func:`detmine.data.loader.build_dataloader`'s) restores its own position without
    loading anything; for other loaders the sampler must be seeded (``set_epoch`` picks the
    permutation) and :meth:`fast_forward` drains the batches already consumed.
    """

    def __init__(self, loader: Any) -> None:
        self.loader = loader
        self.epoch = 0
        self.batch_in_epoch = 0
        self._iter: Iterator | None = None
        self._restored_by_loader = False

    def _resumable(self) -> bool:
        return all(hasattr(self.loader, a) for a in ("set_epoch", "state_dict", "load_state_dict"))

    def _set_epoch(self) -> None:
        if hasattr(self.loader, "set_epoch"):
            self.loader.set_epoch(self.epoch)
            return
        batch_sampler = getattr(self.loader, "batch_sampler", None)
        for s in (
            getattr(self.loader, "sampler", None),
            getattr(batch_sampler, "sampler", None),
            batch_sampler,
        ):
            if s is not None and hasattr(s, "set_epoch"):
                s.set_epoch(self.epoch)
                return

    def state_dict(self) -> dict[str, Any]:
        state: dict[str, Any] = {"epoch": self.epoch, "batch_in_epoch": self.batch_in_epoch}
        if self._resumable():
            state["loader"] = self.loader.state_dict()
        return state

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.epoch = int(state["epoch"])
        self.batch_in_epoch = int(state["batch_in_epoch"])
        self._iter = None
        self._restored_by_loader = self._resumable() and "loader" in state
        if self._restored_by_loader:
            self.loader.load_state_dict(state["loader"])

    def _start_epoch(self) -> None:
        self._set_epoch()
        self._iter = iter(self.loader)

    def fast_forward(self) -> None:
        """Open the current epoch at the resume position (draining consumed batches when the
        loader cannot restore its position itself)."""
        self._start_epoch()
        if self._restored_by_loader:
            return
        for _ in range(self.batch_in_epoch):
            if next(self._iter, None) is None:
                break

    def __next__(self) -> Any:
        empty_epochs = 0
        while True:
            if self._iter is None:
                self._start_epoch()
            batch = next(self._iter, None)
            if batch is not None:
                self.batch_in_epoch += 1
                return batch
            empty_epochs = empty_epochs + 1 if self.batch_in_epoch == 0 else 0
            if empty_epochs > 1:
                raise DataError(
                    "the training loader yields no batches (dataset smaller than train.batch_size?)"
                )
            self.epoch += 1
            self.batch_in_epoch = 0
            self._iter = None


@contextlib.contextmanager
def preserved_rng():
    """Run a block (evaluation) without disturbing the training random streams."""
    state = rng_state()
    try:
        yield
    finally:
        set_rng_state(state)


def seed_everything(seed: int) -> None:
    """Seed python, numpy and torch (all devices). Call before building the model; each
    rank adds its rank so data augmentation differs across processes (DDP broadcasts rank
    0's initial weights anyway)."""
    seed = seed + (torch.distributed.get_rank() if torch.distributed.is_initialized() else 0)
    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)


def select_weights(state: dict[str, Any], which: str, path: str) -> tuple[dict[str, Any], str]:
    """``(model state dict, "ema" | "model")`` to evaluate from a loaded checkpoint
    (``which``: auto = the EMA when the checkpoint has one, as the trainer evaluates)."""
    if "model" not in state:  # a bare state dict
        if which == "ema":
            raise CheckpointError(
                f"checkpoint {path} is a bare state dict without EMA weights; use --weights model"
            )
        return state, "model"
    ema = state.get("ema")
    if which == "ema" or (which == "auto" and ema):
        if not ema:
            raise CheckpointError(
                f"checkpoint {path} has no EMA weights (train.ema was off); use --weights model"
            )
        return (ema["module"] if "module" in ema else ema), "ema"
    return state["model"], "model"
