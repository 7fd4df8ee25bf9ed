"""Batching: :func:`collate` (padded uint8 batch + list of targets) and :func:`build_dataloader`.

Training loaders use :class:`detmine.data.samplers.TrainingBatchSampler` (seeded,
resumable, optional aspect-ratio grouping, repeat-factor sampling and a hard-negative pool
mixed in at a ratio, sharded over the distributed ranks); evaluation loaders go in dataset
order over this rank's contiguous shard. Both are :class:`DetectionDataLoader` s over a :class:`KeyedDataset`:

- augmentation: before each sample is transformed, its transform is reseeded from
  ``(seed, epoch, index, repeat)`` (:func:`~detmine.data.samplers.sample_seed`), in
  whichever process loads it, so batches do not depend on ``num_workers`` and a run
  resumed mid-epoch sees the batches of an uninterrupted one;
- skipped images: a dataset returns a :class:`~detmine.data._common.SkippedSample` for an
  image it cannot read; it travels back with the batch and the loader counts it by kind
  (``skipped_summary()``); a training batch whose images are *all* unreadable is refilled
  with the next readable images in dataset order, so every rank yields the same number
  of batches under DDP.
"""

from __future__ import annotations

import contextlib
import logging
import math
import os
import random
import re
import signal
import threading
from collections import Counter
from collections.abc import Iterator, Sequence
from typing import Any

import numpy as np
import torch
from torch import Tensor
from torch.utils.data import ConcatDataset, DataLoader, Dataset, Subset, get_worker_info

from detmine import distributed
from detmine.data._common import SKIP_KINDS, SkippedSample
from detmine.data.keyed import KeyedDataset, is_sample
from detmine.data.samplers import (
    InferenceBatchSampler,
    TrainingBatchSampler,
    aspect_ratio_groups,
    dist_rank_world,
    repeat_factors,
)
from detmine.errors import ConfigError, DataError, DetmineError
from detmine.structures import Target

logger = logging.getLogger(__name__)

Sample = tuple[Tensor, Target]


def _pad_fill(pad_value: Sequence[float] | float) -> Tensor:
    """uint8 ``[3]``: ``pad_value`` (0..255 pixels, one value or one per channel) rounded half up."""
    values = [pad_value] * 3 if isinstance(pad_value, (int, float)) else list(pad_value)
    if len(values) == 1:
        values = values * 3
    if len(values) != 3 or not all(isinstance(v, (int, float)) and 0 <= v <= 255 for v in values):
        raise ConfigError(f"pad_value must be one number or 3 (RGB) in 0..255 pixel units, got {pad_value!r}")
    return torch.tensor([math.floor(float(v) + 0.5) for v in values], dtype=torch.uint8)


def collate(
    samples: Sequence[Sample | SkippedSample | None],
    size_divisible: int = 32,
    pad_value: Sequence[float] | float = 0,
) -> tuple[Tensor, list[Target]]:
    """Stack images into one padded batch; keep targets as a list.

    Args:
        samples: ``(image uint8 [3, H_i, W_i], Target)`` pairs; :class:`SkippedSample` and
            None entries (images a dataset skipped) are dropped.
        size_divisible: the padded height and width are multiples of this (the model's
            declared divisibility: 1 for fixed-size SSD inputs).
        pad_value: fill of the padding in 0..255 pixels, one value or one per RGB channel,
            rounded to uint8 (pass the model's normalisation mean, e.g. ``IMAGENET_MEAN_255``,
            and padding is zero after normalisation).

    Returns:
        ``images`` uint8 ``[B, 3, Hmax, Wmax]`` (each image at the top-left, ``pad_value``
        bottom/right; ``Hmax``, ``Wmax`` rounded up to ``size_divisible``) and the ``B``
        targets in the same order (their boxes are unchanged: padding does not move
        pixels). ``B`` is the number of real samples; with none, ``images`` is
        ``[0, 3, 0, 0]``.
    """
    if size_divisible < 1:
        raise ConfigError(f"size_divisible must be >= 1, got {size_divisible}")
    fill = _pad_fill(pad_value)
    kept = [s for s in samples if is_sample(s)]
    if not kept:
        return torch.zeros((0, 3, 0, 0), dtype=torch.uint8), []
    for image, target in kept:
        if (
            not isinstance(image, Tensor)
            or image.dtype != torch.uint8
            or image.ndim != 3
            or image.shape[0] != 3
        ):
            got = f"{getattr(image, 'dtype', type(image).__name__)} {tuple(getattr(image, 'shape', ()))}"
            raise DataError(
                f"collate: image {target.get('image_id', '?')} must be a uint8 [3, H, W] tensor, got {got}"
            )
    height = max(image.shape[1] for image, _ in kept)
    width = max(image.shape[2] for image, _ in kept)
    height = -(-height // size_divisible) * size_divisible
    width = -(-width // size_divisible) * size_divisible
    images = _new_batch((len(kept), 3, height, width))
    images.copy_(fill.view(1, 3, 1, 1).expand(len(kept), 3, height, width))
    for i, (image, _) in enumerate(kept):
        images[i, :, : image.shape[1], : image.shape[2]].copy_(image)
    return images, [target for _, target in kept]


def _new_batch(shape: tuple[int, int, int, int]) -> Tensor:
    """uint8 tensor of ``shape``; in a loader worker in shared memory, where the batch goes to
    the main process anyway (as torch's ``default_collate`` does: no copy on the way)."""
    if get_worker_info() is None:
        return torch.empty(shape, dtype=torch.uint8)
    storage = torch.empty(0, dtype=torch.uint8).untyped_storage()._new_shared(math.prod(shape))
    return torch.empty(0, dtype=torch.uint8).set_(storage).view(shape)


class _Array:
    """A target's tensor as a numpy array on its way from a worker: it pickles by value,
    where every tensor would get a shared-memory file of its own (three per image: the
    main bottleneck of a worker's throughput, bench/loader.py)."""

    __slots__ = ("array",)

    def __init__(self, array: np.ndarray) -> None:
        self.array = array

    def __reduce__(self) -> tuple[Any, ...]:
        return _Array, (self.array,)


def _packed(value: Any) -> Any:
    """``value`` as an :class:`_Array` when it is a tensor numpy can hold, else unchanged."""
    if not isinstance(value, Tensor) or value.device.type != "cpu" or value.requires_grad:
        return value
    try:
        return _Array(value.numpy())
    except TypeError:  # a dtype numpy lacks (bfloat16)
        return value


def _pack(target: Target) -> dict[str, Any]:
    return {k: _packed(v) for k, v in target.items()}


def _unpack(target: dict[str, Any]) -> Target:
    return {k: torch.from_numpy(v.array) if isinstance(v, _Array) else v for k, v in target.items()}  # type: ignore[return-value]


class _Collate:
    """Picklable collate for the loader: ``(images, targets, skipped markers)``; in a worker
    the targets' tensors travel as numpy arrays (:class:`_Array`), which
    :class:`DetectionDataLoader` turns back into the same tensors."""

    def __init__(self, size_divisible: int, pad_value: Sequence[float] | float) -> None:
        _pad_fill(pad_value)  # fail at build time, not in a worker
        if size_divisible < 1:
            raise ConfigError(f"size_divisible must be >= 1, got {size_divisible}")
        self.size_divisible = size_divisible
        self.pad_value = pad_value

    def __call__(self, samples: Sequence[Any]) -> tuple[Tensor, list[Target], list[SkippedSample]]:
        images, targets = collate(samples, self.size_divisible, self.pad_value)
        if get_worker_info() is not None:
            targets = [_pack(t) for t in targets]  # type: ignore[misc]
        return images, targets, [s for s in samples if isinstance(s, SkippedSample)]


_WORKER_ERROR = re.compile(r"^[\w.]*?(\w+): (.*)$")


def _one_line(exc: DetmineError) -> DetmineError:
    """A DetmineError re-raised by torch from a worker ("Caught DataError in DataLoader worker
    process 0. Original Traceback ...") back to its original one-line message."""
    text = str(exc)
    if not text.startswith("Caught "):
        return exc
    lines = [line for line in text.splitlines() if line.strip()]
    match = _WORKER_ERROR.match(lines[-1]) if lines else None
    if match is None or match.group(1) != type(exc).__name__:
        return exc
    return type(exc)(match.group(2))


class DetectionDataLoader(DataLoader):
    """A ``DataLoader`` over a detmine batch sampler that knows its resume position.

    Iterating yields ``(images uint8 [B, 3, H, W], targets: list[Target])``; ``B >= 1``.
    Unreadable images (datasets in ``on_bad_image="skip"`` mode) are left out of their
    batch and counted: ``num_dropped_samples`` (total), ``skip_counts`` (by kind: missing /
    unreadable / size mismatch / other), ``num_requested_samples`` (samples the sampler
    asked for) and :meth:`skipped_summary` (one line, summed over the ranks under DDP), all
    since the loader was built and over all its workers. A *training* batch whose images are all unreadable is refilled by
    its worker with the next readable images of the dataset (see :class:`KeyedDataset`), so
    every rank yields the same number of batches (DDP needs that); an *evaluation* batch
    that ends up empty is skipped (evaluation gathers results, shards may differ). A
    ``DetmineError`` raised in a worker (``on_bad_image="error"``) is re-raised with its
    one-line message. Workers leave SIGTERM (and SIGINT) to the main process, which shuts
    them down (see :func:`_leave_sigterm_to_the_main_process`).

    Each delivered (or skipped) batch advances ``batch_sampler.batches_consumed`` when the
    sampler is resumable, and a fully consumed epoch moves the sampler to the next epoch,
    so ``for batch in loader`` repeated gives a new order each time even without
    ``set_epoch``. ``set_epoch`` / ``state_dict`` / ``load_state_dict`` forward to the
    training sampler (see :class:`~detmine.data.samplers.TrainingBatchSampler` for the
    resume protocol); augmentations follow the sampler's keys, so a restored loader gives
    exactly the batches of an uninterrupted one.
    """

    num_dropped_samples: int = 0
    num_requested_samples: int = 0
    first_skipped: SkippedSample | None = None

    @property
    def skip_counts(self) -> Counter[str]:
        """Skipped samples by ``SkippedSample.kind`` since the loader was built."""
        if "_skip_counts" not in self.__dict__:
            self.__dict__["_skip_counts"] = Counter()
        return self.__dict__["_skip_counts"]

    def skipped_summary(self, all_ranks: bool | None = None) -> str | None:
        """One line, e.g. ``"3 of 3000 images skipped: 2 unreadable, 1 missing; first:
        data/x/0001.jpg (file not found)"``, or None when nothing was skipped.

        ``all_ranks`` (default: when the loader is sharded over the initialised process
        group) sums the counts of every rank -- a collective: call it on every rank; each gets
        the same line, ``first`` from the lowest rank that skipped. False: this rank only.
        """
        mine = (
            self.num_dropped_samples,
            self.num_requested_samples,
            dict(self.skip_counts),
            None if self.first_skipped is None else str(self.first_skipped),
        )
        if all_ranks is None:
            all_ranks = self._sharded_over_process_group()
        states = distributed.all_gather_object(mine) if all_ranks else [mine]
        dropped = sum(s[0] for s in states)
        if not dropped:
            return None
        counts: Counter[str] = Counter()
        for s in states:
            counts.update(s[2])
        order = [k for k in SKIP_KINDS if counts[k]] + sorted(k for k in counts if k not in SKIP_KINDS)
        kinds = ", ".join(f"{counts[k]} {k}" for k in order)
        first_text = next((s[3] for s in states if s[3] is not None), None)
        first = f"; first: {first_text}" if first_text is not None else ""
        return f"{dropped} of {sum(s[1] for s in states)} images skipped: {kinds}{first}"

    def _sharded_over_process_group(self) -> bool:
        """True when this loader is one rank's shard of the initialised process group."""
        world = getattr(self.batch_sampler, "world_size", 1)
        return world > 1 and distributed.is_distributed() and distributed.get_world_size() == world

    def _count(self, requested: int, skipped: list[SkippedSample]) -> None:
        self.num_requested_samples += requested
        if not skipped:
            return
        self.num_dropped_samples += len(skipped)
        self.skip_counts.update(s.kind for s in skipped)
        if self.first_skipped is None:
            self.first_skipped = skipped[0]
        for s in skipped:
            logger.debug("skipped %s", s)

    def _resumable(self) -> TrainingBatchSampler | None:
        return self.batch_sampler if isinstance(self.batch_sampler, TrainingBatchSampler) else None

    def set_epoch(self, epoch: int) -> None:
        sampler = self._resumable()
        if sampler is not None:
            sampler.set_epoch(epoch)

    def state_dict(self) -> dict[str, int]:
        sampler = self._resumable()
        if sampler is None:
            raise ConfigError("only training loaders (train=True) have a resumable position")
        return sampler.state_dict()

    def load_state_dict(self, state: dict[str, Any]) -> None:
        sampler = self._resumable()
        if sampler is None:
            raise ConfigError("only training loaders (train=True) have a resumable position")
        sampler.load_state_dict(state)

    def __iter__(self) -> Iterator[tuple[Tensor, list[Target]]]:  # type: ignore[override]
        sampler = self._resumable()
        # Batches arrive in sampler order (in_order=True): batch j of this pass asked for
        # expected[j] samples.
        if sampler is not None:
            expected = [len(b) for b in sampler.epoch_batches()[sampler.batches_consumed :]]
        else:
            expected = [len(b) for b in self.batch_sampler]  # type: ignore[union-attr]
        # workers start with SIGTERM blocked; _worker_init hands it to a thread of theirs
        with _sigterm_held(self.num_workers > 0 and self.worker_init_fn is _worker_init):
            batches = super().__iter__()
        error: DetmineError | None = None
        try:
            for j, (images, targets, skipped) in enumerate(batches):
                if sampler is not None:
                    sampler.batches_consumed += 1
                self._count(expected[j] if j < len(expected) else len(targets) + len(skipped), skipped)
                if len(targets) == 0:  # evaluation only: training batches are refilled
                    continue
                yield images, [_unpack(t) for t in targets]
        except DetmineError as exc:
            error = _one_line(exc)
            if error is exc:
                raise
        if error is not None:
            # raised outside the except block: no reference to the worker's traceback (which
            # holds the iterator), so the workers shut down now rather than at garbage collection
            del batches
            raise error
        if sampler is not None:
            sampler.set_epoch(sampler.epoch + 1)


def _resolve(dataset: Any, i: int, method: str) -> Any:
    """Call ``method(i)`` on the dataset, looking through ``Subset`` / ``ConcatDataset``."""
    if isinstance(dataset, Subset):
        return _resolve(dataset.dataset, int(dataset.indices[i]), method)
    if isinstance(dataset, ConcatDataset):
        part = int(np.searchsorted(dataset.cumulative_sizes, i, side="right"))
        offset = dataset.cumulative_sizes[part - 1] if part else 0
        return _resolve(dataset.datasets[part], i - offset, method)
    fn = getattr(dataset, method, None)
    if fn is None:
        raise ConfigError(f"{type(dataset).__name__} has no {method}(i), needed by this loader option")
    return fn(i)


def _worker_init(worker_id: int) -> None:
    """Seed the global ``random`` / ``numpy.random`` streams of a worker process.

    Our transforms never draw from them (each sample's transform is reseeded from its key,
    see :class:`KeyedDataset`); this only keeps third-party code that does reproducible for a
    given ``num_workers``. ``torch.initial_seed()`` in a worker is the loader's per-iteration
    base seed plus the worker id.
    """
    seed = torch.initial_seed() % 2**32
    np.random.seed(seed)
    random.seed(seed)
    # Ctrl-C and a job runner's SIGTERM (timeout, SLURM pre-emption) reach the whole process
    # group: the main process stops training cleanly (and writes a checkpoint), which needs
    # its workers alive until then.
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    _leave_sigterm_to_the_main_process()


@contextlib.contextmanager
def _sigterm_held(active: bool = True) -> Iterator[None]:
    """Block SIGTERM in this thread while loader workers are forked (``active``), so that a
    group SIGTERM arriving before a worker ran :func:`_worker_init` waits for it (the mask is
    inherited) instead of killing it; here a pending one is delivered when the block ends."""
    if not active or not hasattr(signal, "sigwaitinfo") or not hasattr(signal, "pthread_sigmask"):
        yield
        return
    previous = signal.pthread_sigmask(signal.SIG_BLOCK, {signal.SIGTERM})
    try:
        yield
    finally:
        signal.pthread_sigmask(signal.SIG_SETMASK, previous)


def _leave_sigterm_to_the_main_process() -> None:
    """In a loader worker: ignore SIGTERM unless the main process sent it.

    The main process itself sends SIGTERM to shut down a worker that did not exit in time
    (``DataLoader`` shutdown, ``multiprocessing``'s exit handler): that one still ends the
    worker at once (exit 0, as torch's own worker handler does). Any other sender's SIGTERM
    (``timeout``, ``scancel``, ``kill -TERM -<pgid>``) is left to the main process, which
    checkpoints and exits 143 -- and then shuts its workers down. SIGTERM is blocked in the
    worker and taken by a daemon thread with ``sigwaitinfo`` (which sees the sender's pid).
    Without ``sigwaitinfo`` (macOS) torch's handler stays: a group SIGTERM ends the worker.
    """
    if not hasattr(signal, "sigwaitinfo") or not hasattr(signal, "pthread_sigmask"):
        return
    parent = os.getppid()
    signal.pthread_sigmask(signal.SIG_BLOCK, {signal.SIGTERM})

    def wait_for_sigterm() -> None:
        while True:
            info = signal.sigwaitinfo({signal.SIGTERM})
            if info.si_pid == parent:
                os._exit(0)

    threading.Thread(target=wait_for_sigterm, name="detmine-sigterm", daemon=True).start()


#: ``build_dataloader`` parameters the loader builders set from other keys (not
#: ``data.loader_options``: ``pool_size`` / ``pool_ratio`` come from ``data.hard_negatives``;
#: ``size_divisible`` / ``pad_value`` are the model's, and the options may override them).
LOADER_PASSED = (
    "dataset",
    "batch_size",
    "train",
    "num_workers",
    "distributed",
    "seed",
    "pool_size",
    "pool_ratio",
)


def build_dataloader(
    dataset: Dataset,
    batch_size: int,
    train: bool,
    *,
    num_workers: int = 2,
    pin_memory: bool | None = None,
    persistent_workers: bool | None = None,
    prefetch_factor: int | None = None,
    aspect_grouping: bool = False,
    repeat_factor_threshold: float | None = None,
    seed: int = 0,
    distributed: bool | None = None,
    rank: int | None = None,
    world_size: int | None = None,
    drop_last: bool = False,
    size_divisible: int = 32,
    pad_value: Sequence[float] | float = 0,
    pool_size: int = 0,
    pool_ratio: float = 0.0,
) -> DetectionDataLoader:
    """DataLoader yielding ``(images uint8 [B, 3, H, W], list[Target])``.

    Args:
        dataset: a detmine dataset (or ``Subset`` / ``ConcatDataset`` of them).
        batch_size: images per batch *on this process*.
        train: True = seeded shuffled :class:`TrainingBatchSampler` (resumable, see its
            docstring; ``loader.set_epoch / state_dict / load_state_dict`` forward to it);
            False = dataset order, :class:`InferenceBatchSampler`.
        num_workers: worker processes (0 = load in the main process).
        pin_memory: default: True when CUDA is available.
        persistent_workers: keep workers alive between epochs (needs num_workers > 0);
            default: True for training loaders (a new epoch would otherwise fork its workers
            again and wait for their first batches, bench/loader.py), False for evaluation
            ones (their workers would idle through training).
        prefetch_factor: batches loaded ahead per worker (torch default when None).
        aspect_grouping: (train) batches only mix landscape (w >= h) or only portrait
            images, read from ``dataset.image_size(i)`` without decoding.
        repeat_factor_threshold: (train) LVIS repeat-factor sampling with this threshold
            ``t`` on ``dataset.image_labels(i)``; None = off.
        seed: the sampler order and every sample's augmentation seed derive from it
            (``sample_seed(seed, epoch, index, repeat)``: the same batches with any
            ``num_workers``, across resumes, and for evaluation).
        distributed: shard over torch.distributed ranks; None = when initialised.
        rank, world_size: explicit shard position (tests); default from torch.distributed.
        drop_last: (train) drop incomplete batches instead of keeping them.
        size_divisible: padded batch height/width are multiples of this (the model's
            declared divisibility; 1 keeps SSD300's 300x300).
        pad_value: padding fill in 0..255 pixels, one value or one per RGB channel (the
            model's normalisation mean; rounded to uint8).
        pool_size: (train) the last ``pool_size`` items of ``dataset`` are a hard-negative
            pool (:class:`~detmine.data.pool_dataset.WithHardNegatives`), drawn at
            ``pool_ratio`` of each epoch instead of once each (see
            :class:`TrainingBatchSampler`); repeat factors count the other images only.
        pool_ratio: (train) the share of pool samples in each epoch, in ``[0, 1)``.

    ``loader.dataset`` is a :class:`KeyedDataset` around ``dataset`` (attributes forwarded).
    """
    if batch_size <= 0:
        raise ConfigError(f"batch_size must be a positive int, got {batch_size}")
    if num_workers < 0:
        raise ConfigError(f"num_workers must be >= 0, got {num_workers}")
    num_images = len(dataset)  # type: ignore[arg-type]
    if num_images == 0:
        raise DataError("the dataset is empty: nothing to load")
    if distributed is False:
        rank, world_size = 0, 1
    rank, world_size = dist_rank_world(rank, world_size)
    sampler: TrainingBatchSampler | InferenceBatchSampler
    if train:
        if not 0 <= pool_size < num_images:
            raise ConfigError(
                f"pool_size must be in [0, {num_images}) (the dataset's length), got {pool_size}"
            )
        num_base = num_images - pool_size
        groups = None
        if aspect_grouping:
            groups = aspect_ratio_groups(_resolve(dataset, i, "image_size") for i in range(num_images))
        factors = None
        if repeat_factor_threshold is not None:
            labels = (_resolve(dataset, i, "image_labels") for i in range(num_base))
            factors = repeat_factors(labels, repeat_factor_threshold)
        sampler = TrainingBatchSampler(
            num_base,
            batch_size,
            seed=seed,
            group_ids=groups,
            repeat_factors=factors,
            drop_last=drop_last,
            rank=rank,
            world_size=world_size,
            pool_size=pool_size,
            pool_ratio=pool_ratio,
        )
    else:
        sampler = InferenceBatchSampler(num_images, batch_size, rank=rank, world_size=world_size)
    if pin_memory is None:
        pin_memory = torch.cuda.is_available()
    extra: dict[str, Any] = {}
    if num_workers > 0:
        extra["persistent_workers"] = train if persistent_workers is None else persistent_workers
        if prefetch_factor is not None:
            extra["prefetch_factor"] = prefetch_factor
    generator = torch.Generator()
    generator.manual_seed(seed + 1_000_003 * rank)
    return DetectionDataLoader(
        KeyedDataset(dataset, seed, refill_empty=train),
        batch_sampler=sampler,
        num_workers=num_workers,
        collate_fn=_Collate(size_divisible, pad_value),
        pin_memory=pin_memory,
        worker_init_fn=_worker_init,
        generator=generator,
        **extra,
    )
