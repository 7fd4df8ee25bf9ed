"""A miner's private random stream: seeded, counter-based, resumable and distinct per DDP rank.

A miner that draws random numbers (``random``, ``soft``, ``pool``) asks its
:class:`RandomStream` for a generator once per call. With a ``seed`` each training call
gets a ``torch.Generator`` on the labels' device freshly seeded from
``mix(seed, rank, "train", draws)`` -- a splitmix64 hash chain -- and the counter ``draws``
advances. So:

- the whole state is ``{"seed": seed, "draws": draws}``: a checkpoint restores the stream
  exactly, and a resumed run draws what the uninterrupted one would have drawn;
- the processes of a DDP run draw different numbers (the rank enters the hash) while their
  states stay equal (every process calls the criterion once per step), so rank 0 alone
  saves it;
- in evaluation mode (``train(False)``: the validation-loss pass) the generator comes from a
  separate derivation ``mix(seed, rank, "eval", draws, i)`` (``i`` counts the calls since the
  last mode switch) and ``draws`` does not move: validation never changes what training draws,
  and the same validation after the same training step draws the same numbers.

``seed=None`` keeps torch's global RNG (``generator`` returns ``None``): the trainer's
checkpoint saves and restores that RNG with the rest of the run.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import torch

from detmine.distributed import get_rank
from detmine.mining._common import check_seed

_MASK64 = (1 << 64) - 1
_TRAIN, _EVAL = 0, 1


def splitmix64(x: int) -> int:
    """The splitmix64 finaliser of ``x + golden gamma`` (Steele et al. 2014): a bijection of
    64-bit integers whose outputs of consecutive inputs look independent."""
    x = (x + 0x9E3779B97F4A7C15) & _MASK64
    x = ((x ^ (x >> 30)) * 0xBF58476D1CE4E5B9) & _MASK64
    x = ((x ^ (x >> 27)) * 0x94D049BB133111EB) & _MASK64
    return x ^ (x >> 31)


def mix(*words: int) -> int:
    """A 64-bit hash of a sequence of integers (each taken modulo ``2**64``): a splitmix64
    chain, so neighbouring seeds, ranks and counters give unrelated generator seeds."""
    h = 0
    for word in words:
        h = splitmix64(h ^ (word & _MASK64))
    return h


class RandomStream:
    """A resumable random stream (see the module docstring).

    Args:
        seed: an integer, or ``None`` for torch's global RNG.

    Raises:
        OptionError: ``seed`` is neither ``None`` nor an integer (names the option ``seed``).
    """

    def __init__(self, seed: int | None = None) -> None:
        self.seed = check_seed("seed", seed)
        #: training calls served so far: the stream's position.
        self.draws = 0
        self.training = True
        self._eval_calls = 0

    def generator(self, device: torch.device | str) -> torch.Generator | None:
        """The generator for one call, on ``device`` (``None`` without a seed: the global RNG).
        In training mode every call advances the stream, whatever the caller draws from it."""
        if self.seed is None:
            return None
        rank = get_rank()
        if self.training:
            key = mix(self.seed, rank, _TRAIN, self.draws)
            self.draws += 1
        else:
            key = mix(self.seed, rank, _EVAL, self.draws, self._eval_calls)
            self._eval_calls += 1
        # A new generator per call (microseconds): the stream stays plain integers, so
        # it deep-copies and pickles without device state.
        return torch.Generator(device=device).manual_seed(key)

    def train(self, mode: bool = True) -> RandomStream:
        """Training (``True``) or evaluation mode; either call restarts the evaluation count."""
        self.training = bool(mode)
        self._eval_calls = 0
        return self

    def state_dict(self) -> dict[str, int | None]:
        """``{"seed": seed, "draws": draws}``, the same on every DDP process."""
        return {"seed": self.seed, "draws": self.draws}

    def load_state_dict(self, state: Mapping[str, Any]) -> None:
        """Continue from ``state`` (a :meth:`state_dict`).

        Raises:
            ValueError: ``state`` was saved with another seed (naming both), or is malformed.
        """
        if not isinstance(state, Mapping) or set(state) != {"seed", "draws"}:
            raise ValueError(f"a random stream state is {{'seed': ..., 'draws': ...}}, got {state!r}")
        if state["seed"] != self.seed:
            raise ValueError(
                f"the miner's random stream was saved with seed {state['seed']!r} but this miner "
                f"has seed {self.seed!r}; set its seed option back to {state['seed']!r} to resume"
            )
        draws = state["draws"]
        if isinstance(draws, bool) or not isinstance(draws, int) or draws < 0:
            raise ValueError(f"a random stream's draws must be an integer >= 0, got {draws!r}")
        self.draws = draws

    def __repr__(self) -> str:
        return f"RandomStream(seed={self.seed}, draws={self.draws})"


class StreamMiner:
    """Base of the miners that own a :class:`RandomStream` as ``self.stream``: the methods the
    :class:`~detmine.criterion.Criterion` reaches to checkpoint it (its extra state) and to
    switch it to evaluation mode."""

    stream: RandomStream

    def state_dict(self) -> dict[str, int | None]:
        return self.stream.state_dict()

    def load_state_dict(self, state: Mapping[str, Any]) -> None:
        self.stream.load_state_dict(state)

    def train(self, mode: bool = True) -> StreamMiner:
        self.stream.train(mode)
        return self

    @property
    def seed(self) -> int | None:
        return self.stream.seed
