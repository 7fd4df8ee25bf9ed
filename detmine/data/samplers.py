"""Batch samplers: seeded, resumable, aspect-ratio grouped, repeat-factor, distributed.

The training order of an epoch is a pure function of ``(seed, epoch, dataset)``:

1. repeat factors (optional, LVIS): image ``i`` appears ``floor(r_i)`` times plus once
   more with probability ``frac(r_i)`` (stochastic rounding, drawn per epoch);
2. a hard-negative pool (optional: ``pool_size`` entries after the ``N`` images, dataset
   indices ``N .. N + P - 1``): ``M = round(n * ratio / (1 - ratio))`` pool indices join
   the ``n`` indices of step 1, so pool samples make up ``ratio`` of the epoch up to the
   rounding (:func:`pool_draw_count`). They come from their own stream, seeded by
   ``(seed, epoch)`` and a constant, cycling through fresh permutations of the pool: no
   entry is drawn twice before every entry was drawn once (:func:`pool_draws`). Without a
   pool the order is exactly the one of a sampler that knows no pools;
3. the resulting index list is shuffled;
4. consecutive indices are packed into batches of ``batch_size``; with aspect-ratio
   grouping each group (landscape ``w >= h`` / portrait ``w < h``) fills its own
   batch, so every batch is pure;
5. the global batch list is dealt round-robin to the ``world_size`` processes
   (batch ``j`` goes to rank ``j % world_size``), so every rank gets the same number
   of batches (DDP needs that) and no index appears on two ranks.

Every rank computes the same global list (same seed), no communication needed.

The training sampler's batches hold :class:`SampleKey` s: ints (the dataset index, so
``dataset[key]`` works anywhere) that also carry the epoch and the occurrence number of
the index in the epoch's global list (``repeat``: > 0 for repeat-factor copies, pool entries
drawn again and the batches that complete the last distributed round). :func:`sample_seed` turns
``(seed, epoch, index, repeat)`` into the seed of that sample's augmentation; the loader
(:class:`detmine.data.keyed.KeyedDataset`) reseeds the transform with it right before
transforming the sample, in whichever process loads it. Augmentations therefore depend on
neither the number of loader workers, nor the batch size, nor the number of ranks, and a
run resumed mid-epoch sees exactly the batches of an uninterrupted one.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Iterator, Sequence
from typing import Any

import numpy as np
from torch.utils.data import Sampler

from detmine import distributed
from detmine.errors import ConfigError, DataError


class SampleKey(int):
    """A dataset index (an ``int``: equal to, hashing like and indexing like the plain index)
    that also carries ``epoch`` and ``repeat`` (its occurrence number in the epoch, from 0).

    Only the index takes part in comparisons: ``SampleKey(3, epoch=1) == 3``. Arithmetic
    returns plain ints. The loader reads ``epoch`` / ``repeat`` to seed the augmentation
    (:func:`sample_seed`); plain ints count as ``epoch=0, repeat=0``.
    """

    epoch: int
    repeat: int

    def __new__(cls, index: int, epoch: int = 0, repeat: int = 0) -> SampleKey:
        key = super().__new__(cls, index)
        key.epoch = int(epoch)
        key.repeat = int(repeat)
        return key

    def __reduce__(self) -> tuple[Any, tuple[int, int, int]]:
        return (SampleKey, (int(self), self.epoch, self.repeat))

    def __repr__(self) -> str:
        return f"SampleKey({int(self)}, epoch={self.epoch}, repeat={self.repeat})"

    def __str__(self) -> str:  # f"{key}" is the index, like an int
        return str(int(self))


def sample_seed(seed: int, epoch: int, index: int, repeat: int = 0, *, refill: bool = False) -> int:
    """The augmentation seed (an int in ``[0, 2**64)``) of one sample, a pure function of its arguments.

    ``numpy.random.SeedSequence([seed, epoch, index, repeat])`` hashed to 64 bits, so nearby
    keys give unrelated streams. ``refill=True`` gives a separate stream for an image drawn
    as a replacement for an unreadable batch (see ``DetectionDataLoader``).
    """
    entropy = [int(seed), int(epoch), int(index), int(repeat)] + ([1] if refill else [])
    if min(entropy) < 0:
        raise ConfigError(f"sample_seed: seed, epoch, index and repeat must be >= 0, got {entropy[:4]}")
    return int(np.random.SeedSequence(entropy).generate_state(1, np.uint64)[0])


def dist_rank_world(rank: int | None = None, world_size: int | None = None) -> tuple[int, int]:
    """``(rank, world_size)``: the given values, else torch.distributed's when initialised, else (0, 1)."""
    if world_size is None:
        world_size = distributed.get_world_size()
    if rank is None:
        rank = distributed.get_rank()
    if world_size < 1 or not 0 <= rank < world_size:
        raise ConfigError(f"invalid distributed position rank={rank}, world_size={world_size}")
    return rank, world_size


def repeat_factors(image_labels: Iterable[Iterable[int]], threshold: float) -> np.ndarray:
    """LVIS repeat factors (Gupta et al. 2019), float64 ``[N]``.

    With ``f(c)`` the fraction of images containing class ``c``:
    ``r(c) = max(1, sqrt(threshold / f(c)))`` and ``r(image) = max_c r(c)`` over the
    classes present in the image; images without objects get ``1``.
    """
    if threshold <= 0:
        raise ConfigError(f"repeat_factor_threshold must be > 0, got {threshold}")
    per_image = [set(labels) for labels in image_labels]
    if not per_image:
        raise DataError("repeat factors: the dataset is empty")
    counts: dict[int, int] = {}
    for labels in per_image:
        for c in labels:
            counts[c] = counts.get(c, 0) + 1
    num = len(per_image)
    class_factor = {c: max(1.0, math.sqrt(threshold / (n / num))) for c, n in counts.items()}
    return np.array([max((class_factor[c] for c in labels), default=1.0) for labels in per_image])


def aspect_ratio_groups(sizes: Iterable[tuple[int, int]]) -> np.ndarray:
    """int64 ``[N]`` group ids from ``(height, width)`` pairs: 0 = landscape/square (w >= h), 1 = portrait."""
    return np.array([0 if w >= h else 1 for h, w in sizes], dtype=np.int64)


#: mixed into the seed of the pool draws, so they never share a stream with the shuffle.
_POOL_STREAM = 0x706F6F6C  # "pool"


def pool_draw_count(num_samples: int, ratio: float) -> int:
    """Pool samples an epoch of ``num_samples`` training samples takes at ``ratio``:
    ``round(num_samples * ratio / (1 - ratio))`` (halves round up), so that
    ``M / (num_samples + M)`` is ``ratio`` up to the rounding."""
    if not 0.0 <= ratio < 1.0:
        raise ConfigError(f"the hard-negative pool ratio must be in [0, 1), got {ratio}")
    return int(math.floor(num_samples * ratio / (1.0 - ratio) + 0.5))


def pool_draws(seed: int, epoch: int, pool_size: int, count: int) -> np.ndarray:
    """int64 ``[count]`` pool positions in ``0..pool_size-1`` for ``epoch``: consecutive fresh
    permutations of the pool, cut at ``count`` (a pure function of the arguments)."""
    if count == 0 or pool_size == 0:
        return np.zeros(0, dtype=np.int64)
    rng = np.random.default_rng([int(seed), int(epoch), _POOL_STREAM])
    rounds = -(-count // pool_size)
    return np.concatenate([rng.permutation(pool_size) for _ in range(rounds)])[:count].astype(np.int64)


class TrainingBatchSampler(Sampler[list[int]]):
    """Seeded, shuffled, optionally grouped / repeat-factor batches for one rank; resumable.

    Args:
        num_images: the training images ``N`` (dataset indices ``0 .. N - 1``).
        batch_size: images per batch on this rank.
        seed: the order of epoch ``e`` is a function of ``(seed, e)`` only; use the
            same seed on every rank.
        group_ids: int ``[N + pool_size]``; batches only mix images of one group (see
            :func:`aspect_ratio_groups`). None = one group.
        repeat_factors: float ``[N]`` >= 1 (see :func:`repeat_factors`). None = each
            image once per epoch.
        pool_size: ``P`` hard-negative pool entries following the images (dataset indices
            ``N .. N + P - 1``); 0 = none.
        pool_ratio: the share of pool samples in each epoch (see :func:`pool_draw_count`),
            in ``[0, 1)``; pool samples are keyed, seeded and resumed like any other.
        drop_last: drop incomplete batches (one per group at the end of the epoch)
            and, when distributed, the batches that do not fill a last round over the
            ranks; otherwise keep them and complete the last round with batches from
            the start of the epoch (like ``DistributedSampler``'s padding).
        rank, world_size: this process' position; default from torch.distributed.

    Resuming (what the trainer uses)::

        sampler.set_epoch(epoch)          # at the start of every epoch
        ...                               # DetectionDataLoader advances
        state = sampler.state_dict()      # {"epoch": e, "batches_consumed": k}
        # later, in a fresh process:
        sampler.load_state_dict(state)
        sampler.set_epoch(state["epoch"]) # same epoch: the resume offset is kept
        # iterating now yields exactly batches k, k+1, ... of epoch e, in the same order

    ``batches_consumed`` counts the batches *delivered to the caller* in the current
    epoch. The sampler cannot see that itself (a DataLoader prefetches indices ahead),
    so :class:`detmine.data.loader.DetectionDataLoader` advances it as it hands out
    batches; when driving the sampler by hand, add to ``batches_consumed`` yourself.
    Each ``__iter__`` starts at ``batches_consumed`` (0 unless resumed or interrupted).
    ``set_epoch(e)`` with a different epoch resets ``batches_consumed`` to 0.
    ``len(sampler)`` is the number of batches of the whole current epoch on this rank.
    """

    def __init__(
        self,
        num_images: int,
        batch_size: int,
        *,
        seed: int = 0,
        group_ids: Sequence[int] | np.ndarray | None = None,
        repeat_factors: Sequence[float] | np.ndarray | None = None,
        drop_last: bool = False,
        rank: int | None = None,
        world_size: int | None = None,
        pool_size: int = 0,
        pool_ratio: float = 0.0,
    ) -> None:
        if num_images <= 0:
            raise DataError("cannot sample batches from an empty dataset")
        if batch_size <= 0:
            raise ConfigError(f"batch_size must be a positive int, got {batch_size}")
        if int(seed) < 0:
            raise ConfigError(f"sampler seed must be a non-negative int, got {seed}")
        if pool_size < 0:
            raise ConfigError(f"pool_size must be >= 0, got {pool_size}")
        pool_draw_count(0, pool_ratio)  # checks the ratio
        self.num_images = num_images
        self.batch_size = batch_size
        self.seed = int(seed)
        self.pool_size = int(pool_size)
        self.pool_ratio = float(pool_ratio) if pool_size else 0.0
        self.group_ids = None if group_ids is None else np.asarray(group_ids, dtype=np.int64)
        self.repeat_factors = None if repeat_factors is None else np.asarray(repeat_factors, dtype=np.float64)
        for name, arr, size in (
            ("group_ids", self.group_ids, num_images + self.pool_size),
            ("repeat_factors", self.repeat_factors, num_images),
        ):
            if arr is not None and arr.shape != (size,):
                raise ConfigError(f"{name} must have one entry per image ({size}), got shape {arr.shape}")
        if self.repeat_factors is not None and (self.repeat_factors < 1).any():
            raise ConfigError("repeat_factors must all be >= 1")
        self.drop_last = drop_last
        self.rank, self.world_size = dist_rank_world(rank, world_size)
        self.epoch = 0
        self.batches_consumed = 0
        self._cache: tuple[int, list[list[SampleKey]]] | None = None

    # -- order -----------------------------------------------------------------------
    def _epoch_indices(self, epoch: int) -> np.ndarray:
        rng = np.random.default_rng([self.seed, epoch])
        if self.repeat_factors is None:
            indices = np.arange(self.num_images)
        else:
            whole = np.floor(self.repeat_factors)
            reps = whole + (rng.random(self.num_images) < self.repeat_factors - whole)
            indices = np.repeat(np.arange(self.num_images), reps.astype(np.int64))
        if self.pool_ratio > 0:
            count = pool_draw_count(len(indices), self.pool_ratio)
            pool = self.num_images + pool_draws(self.seed, epoch, self.pool_size, count)
            indices = np.concatenate([indices, pool])
        return indices[rng.permutation(len(indices))]

    def _global_batches(self, epoch: int) -> list[list[int]]:
        indices = self._epoch_indices(epoch)
        groups = np.zeros(len(indices), np.int64) if self.group_ids is None else self.group_ids[indices]
        batches: list[list[int]] = []
        buffers: dict[int, list[int]] = {}
        for idx, group in zip(indices.tolist(), groups.tolist(), strict=True):
            buf = buffers.setdefault(group, [])
            buf.append(idx)
            if len(buf) == self.batch_size:
                batches.append(buf)
                buffers[group] = []
        if not self.drop_last:
            batches.extend(buf for _, buf in sorted(buffers.items()) if buf)
        return batches

    def epoch_batches(self, epoch: int | None = None) -> list[list[SampleKey]]:
        """This rank's batches of ``epoch`` (default: the current one), in order.

        Entries are :class:`SampleKey` s (dataset indices carrying ``epoch`` and ``repeat``);
        ``repeat`` counts earlier occurrences of the index in the epoch's *global* list, so
        it is the same on every rank and for any batch size.
        """
        epoch = self.epoch if epoch is None else int(epoch)
        if self._cache is not None and self._cache[0] == epoch:
            return self._cache[1]
        batches = self._global_batches(epoch)
        rounds, rest = divmod(len(batches), self.world_size)
        if rest and not self.drop_last:
            batches = batches + [batches[i % len(batches)] for i in range(self.world_size - rest)]
            rounds += 1
        seen: dict[int, int] = {}
        keyed: list[list[SampleKey]] = []
        for batch in batches[: rounds * self.world_size]:
            keyed.append([])
            for i in batch:
                keyed[-1].append(SampleKey(i, epoch, seen.get(i, 0)))
                seen[i] = seen.get(i, 0) + 1
        mine = keyed[self.rank :: self.world_size]
        self._cache = (epoch, mine)
        return mine

    # -- Sampler protocol --------------------------------------------------------------
    def __iter__(self) -> Iterator[list[SampleKey]]:
        return iter(self.epoch_batches()[self.batches_consumed :])

    def __len__(self) -> int:
        return len(self.epoch_batches())

    # -- resumable state ----------------------------------------------------------------
    def set_epoch(self, epoch: int) -> None:
        """Select the epoch whose order is used; a different epoch starts at its first batch."""
        if epoch != self.epoch:
            self.batches_consumed = 0
        self.epoch = int(epoch)

    def state_dict(self) -> dict[str, int]:
        """``{"epoch", "batches_consumed"}``: enough to continue exactly where the run stopped."""
        return {"epoch": self.epoch, "batches_consumed": self.batches_consumed}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        """Restore a :meth:`state_dict`; the next iteration yields the epoch's remaining batches."""
        try:
            epoch, consumed = int(state["epoch"]), int(state["batches_consumed"])
        except (KeyError, TypeError, ValueError):
            raise ConfigError(
                f"sampler state must have integer 'epoch' and 'batches_consumed', got {state!r}"
            ) from None
        if epoch < 0 or consumed < 0:
            raise ConfigError(f"sampler state must be non-negative, got {state!r}")
        self.epoch, self.batches_consumed = epoch, consumed


class InferenceBatchSampler(Sampler[list[int]]):
    """In-order batches over this rank's contiguous shard (no padding, no duplicates).

    Rank ``r`` of ``W`` gets indices ``[r * N // W, (r + 1) * N // W)``, so the ranks'
    results concatenated in rank order are the dataset order. Shards may differ by one
    image in size; evaluation gathers results, so unequal lengths are fine there.
    """

    def __init__(
        self, num_images: int, batch_size: int, *, rank: int | None = None, world_size: int | None = None
    ) -> None:
        if num_images <= 0:
            raise DataError("cannot sample batches from an empty dataset")
        if batch_size <= 0:
            raise ConfigError(f"batch_size must be a positive int, got {batch_size}")
        self.rank, self.world_size = dist_rank_world(rank, world_size)
        start = self.rank * num_images // self.world_size
        stop = (self.rank + 1) * num_images // self.world_size
        shard = list(range(start, stop))
        self.batches = [shard[i : i + batch_size] for i in range(0, len(shard), batch_size)]

    def epoch_batches(self, epoch: int | None = None) -> list[list[int]]:
        """This rank's batches (the same every epoch)."""
        return self.batches

    def __iter__(self) -> Iterator[list[int]]:
        return iter(self.batches)

    def __len__(self) -> int:
        return len(self.batches)
