"""Batching: :func:`collate` (padded uint8 batch + list of targets) and :func:`build_dataloader`.

Training loaders use :class:`detmine.data.samplers.TrainingBatchSampler` (seeded,
resumable, optional aspect-ratio grouping and repeat-factor sampling, sharded over
the distributed ranks); evaluation loaders go in dataset order over this rank's
contiguous shard. Both are :class:`DetectionDataLoader` s, which count the samples
that datasets returned as None (unreadable images in ``on_bad_image="skip"`` mode)
and advance the sampler's resume position as batches are delivered.
"""

from __future__ import annotations

import logging
import random
from collections.abc import Iterator, Sequence
from typing import Any

import numpy as np
import torch
from torch import Tensor
from torch.utils.data import ConcatDataset, DataLoader, Dataset, Subset

from detmine.data.samplers import (
    InferenceBatchSampler,
    TrainingBatchSampler,
    aspect_ratio_groups,
    dist_rank_world,
    repeat_factors,
)
from detmine.errors import ConfigError, DataError
from detmine.structures import Target

logger = logging.getLogger(__name__)

Sample = tuple[Tensor, Target]


def collate(samples: Sequence[Sample | None], size_divisible: int = 32) -> tuple[Tensor, list[Target]]:
    """Stack images into one zero-padded batch; keep targets as a list.

    Args:
        samples: ``(image uint8 [3, H_i, W_i], Target)`` pairs; None entries (images a
            dataset skipped) are dropped.
        size_divisible: the padded height and width are multiples of this.

    Returns:
        ``images`` uint8 ``[B, 3, Hmax, Wmax]`` (each image at the top-left, zeros
        bottom/right; ``Hmax``, ``Wmax`` rounded up to ``size_divisible``) and the ``B``
        targets in the same order (their boxes are unchanged: padding does not move
        pixels). ``B`` is the number of non-None samples; with none, ``images`` is
        ``[0, 3, 0, 0]``.
    """
    kept = [s for s in samples if s is not None]
    if not kept:
        return torch.zeros((0, 3, 0, 0), dtype=torch.uint8), []
    if size_divisible < 1:
        raise ConfigError(f"size_divisible must be >= 1, got {size_divisible}")
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
    images = torch.zeros((len(kept), 3, height, width), dtype=torch.uint8)
    for i, (image, _) in enumerate(kept):
        images[i, :, : image.shape[1], : image.shape[2]].copy_(image)
    return images, [target for _, target in kept]


class _Collate:
    """Picklable ``collate`` with a fixed ``size_divisible`` (for worker processes)."""

    def __init__(self, size_divisible: int) -> None:
        self.size_divisible = size_divisible

    def __call__(self, samples: Sequence[Sample | None]) -> tuple[Tensor, list[Target]]:
        return collate(samples, self.size_divisible)


class DetectionDataLoader(DataLoader):
    """A ``DataLoader`` over a detmine batch sampler that knows its resume position.

    Iterating yields ``(images uint8 [B, 3, H, W], targets: list[Target])``. Batches
    whose samples were all None are skipped (logged); ``num_dropped_samples`` counts
    the None samples seen so far. (Under DDP a skipped batch makes that rank take one
    step less; it needs a whole batch of unreadable images, use ``on_bad_image="error"``
    if that can happen.) Each delivered (or skipped) batch advances
    ``batch_sampler.batches_consumed`` when the sampler is resumable, and a fully
    consumed epoch moves the sampler to the next epoch, so ``for batch in loader``
    repeated gives a new order each time even without ``set_epoch``.

    ``set_epoch`` / ``state_dict`` / ``load_state_dict`` forward to the training
    sampler (see :class:`~detmine.data.samplers.TrainingBatchSampler` for the resume
    protocol).
    """

    num_dropped_samples: int = 0

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
        # Batches arrive in sampler order (in_order=True), so batch j of this pass is
        # expected_sizes[j]: the difference to the delivered size is the None samples.
        if sampler is not None:
            expected = [len(b) for b in sampler.epoch_batches()[sampler.batches_consumed :]]
        else:
            expected = [len(b) for b in self.batch_sampler]  # type: ignore[union-attr]
        for j, (images, targets) in enumerate(super().__iter__()):
            if sampler is not None:
                sampler.batches_consumed += 1
            dropped = expected[j] - len(targets) if j < len(expected) else 0
            if dropped:
                self.num_dropped_samples += dropped
                logger.warning(
                    "dropped %d unreadable sample(s) from a batch (%d so far)",
                    dropped,
                    self.num_dropped_samples,
                )
            if len(targets) == 0:
                continue
            yield images, targets
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


def _transforms(dataset: Any) -> list[Any]:
    """Every ``transform`` with ``set_random_seed`` inside (possibly wrapped) datasets."""
    if isinstance(dataset, Subset):
        return _transforms(dataset.dataset)
    if isinstance(dataset, ConcatDataset):
        return [t for d in dataset.datasets for t in _transforms(d)]
    t = getattr(dataset, "transform", None)
    return [t] if hasattr(t, "set_random_seed") else []


def _worker_init(worker_id: int) -> None:
    """Give each worker its own random streams (numpy, random, albumentations).

    ``torch.initial_seed()`` in a worker is the loader's per-iteration base seed plus the
    worker id, so augmentations differ across workers and epochs yet follow the seed.
    Without this every worker would start from a copy of the same albumentations state.
    """
    seed = torch.initial_seed() % 2**32
    np.random.seed(seed)
    random.seed(seed)
    info = torch.utils.data.get_worker_info()
    if info is not None:
        for transform in _transforms(info.dataset):
            transform.set_random_seed(seed)


def build_dataloader(
    dataset: Dataset,
    batch_size: int,
    train: bool,
    *,
    num_workers: int = 2,
    pin_memory: bool | None = None,
    persistent_workers: bool = False,
    prefetch_factor: int | None = None,
    aspect_grouping: bool = False,
    repeat_factor_threshold: float | None = None,
    seed: int = 0,
    distributed: bool | None = None,
    rank: int | None = None,
    world_size: int | None = None,
    drop_last: bool = False,
    size_divisible: int = 32,
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
        persistent_workers: keep workers alive between epochs (needs num_workers > 0).
        prefetch_factor: batches loaded ahead per worker (torch default when None).
        aspect_grouping: (train) batches only mix landscape (w >= h) or only portrait
            images, read from ``dataset.image_size(i)`` without decoding.
        repeat_factor_threshold: (train) LVIS repeat-factor sampling with this threshold
            ``t`` on ``dataset.image_labels(i)``; None = off.
        seed: the sampler order and the workers' augmentation seeds derive from it.
        distributed: shard over torch.distributed ranks; None = when initialised.
        rank, world_size: explicit shard position (tests); default from torch.distributed.
        drop_last: (train) drop incomplete batches instead of keeping them.
        size_divisible: padded batch height/width are multiples of this.
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
        groups = None
        if aspect_grouping:
            groups = aspect_ratio_groups(_resolve(dataset, i, "image_size") for i in range(num_images))
        factors = None
        if repeat_factor_threshold is not None:
            labels = (_resolve(dataset, i, "image_labels") for i in range(num_images))
            factors = repeat_factors(labels, repeat_factor_threshold)
        sampler = TrainingBatchSampler(
            num_images,
            batch_size,
            seed=seed,
            group_ids=groups,
            repeat_factors=factors,
            drop_last=drop_last,
            rank=rank,
            world_size=world_size,
        )
    else:
        sampler = InferenceBatchSampler(num_images, batch_size, rank=rank, world_size=world_size)
    if pin_memory is None:
        pin_memory = torch.cuda.is_available()
    extra: dict[str, Any] = {}
    if num_workers > 0:
        extra["persistent_workers"] = persistent_workers
        if prefetch_factor is not None:
            extra["prefetch_factor"] = prefetch_factor
    generator = torch.Generator()
    generator.manual_seed(seed + 1_000_003 * rank)
    return DetectionDataLoader(
        dataset,
        batch_sampler=sampler,
        num_workers=num_workers,
        collate_fn=_Collate(size_divisible),
        pin_memory=pin_memory,
        worker_init_fn=_worker_init,
        generator=generator,
        **extra,
    )
