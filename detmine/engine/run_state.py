"""What a resume needs besides the weights: the random generators' states (as tensors and
ints only, so checkpoints load weights-only), the position in the training data
(:class:`DataStream`), seeding, and running a block without disturbing the random streams.
"""

from __future__ import annotations

import contextlib
import random
from collections.abc import Iterator, Mapping
from typing import Any

import numpy as np
import torch

from detmine import distributed
from detmine.errors import DataError

# ----------------------------------------------------------------------------- RNG state
#
# Only tensors and plain numbers, so that checkpoints load weights-only: python's state as an
# int64 tensor of its 625 words, numpy's legacy MT19937 state split into its fields.


def rng_state() -> dict[str, Any]:
    """The states of every random generator a training step may draw from."""
    version, words, gauss = random.getstate()
    kind, keys, pos, has_gauss, cached = np.random.get_state()
    state: dict[str, Any] = {
        "python": {"version": int(version), "state": torch.tensor(words, dtype=torch.int64), "gauss": gauss},
        "numpy": {
            "kind": str(kind),
            "keys": torch.from_numpy(np.asarray(keys, dtype=np.int64)),
            "pos": int(pos),
            "has_gauss": int(has_gauss),
            "cached_gaussian": float(cached),
        },
        "torch": torch.get_rng_state(),
    }
    if torch.cuda.is_available() and torch.cuda.is_initialized():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def set_rng_state(state: dict[str, Any]) -> None:
    """Restore what :func:`rng_state` returned (also the tuple form of older checkpoints)."""
    py = state["python"]
    if isinstance(py, Mapping):
        words = tuple(int(w) for w in torch.as_tensor(py["state"]).tolist())
        py = (int(py["version"]), words, None if py["gauss"] is None else float(py["gauss"]))
    random.setstate(py)
    npy = state["numpy"]
    if isinstance(npy, Mapping):
        keys = np.asarray(torch.as_tensor(npy["keys"]).cpu().numpy(), dtype=np.uint32)
        npy = (npy["kind"], keys, int(npy["pos"]), int(npy["has_gauss"]), float(npy["cached_gaussian"]))
    np.random.set_state(npy)
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
    seed = seed + distributed.get_rank()
    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)
