"""The dataset as a :class:`~detmine.data.loader.DetectionDataLoader` loads it: per-sample
augmentation seeds, skip markers, refilled all-unreadable training batches."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from torch.utils.data import ConcatDataset, Dataset, Subset

from detmine.data._common import SkippedSample
from detmine.data.samplers import sample_seed
from detmine.errors import DataError


def is_sample(s: Any) -> bool:
    """A real sample: neither None nor a :class:`SkippedSample`."""
    return s is not None and not isinstance(s, SkippedSample)


def _transforms(dataset: Any) -> list[Any]:
    """Every ``transform`` with ``set_random_seed`` inside (possibly wrapped) datasets."""
    if isinstance(dataset, Subset):
        return _transforms(dataset.dataset)
    if isinstance(dataset, ConcatDataset):
        return [t for d in dataset.datasets for t in _transforms(d)]
    t = getattr(dataset, "transform", None)
    return [t] if hasattr(t, "set_random_seed") else []


class KeyedDataset(Dataset):
    """The dataset as a :class:`~detmine.data.loader.DetectionDataLoader` loads it (``loader.dataset``).

    ``keyed[key]`` for a :class:`~detmine.data.samplers.SampleKey` (or a plain int =
    epoch 0, repeat 0): reseeds every ``transform`` with ``set_random_seed`` inside the
    dataset (looking through ``Subset`` / ``ConcatDataset``) with
    ``sample_seed(seed, key.epoch, key, key.repeat)``, then returns ``dataset[int(key)]``,
    with a None from the dataset turned into a :class:`SkippedSample` (kind ``"other"``).

    Fetching a batch (``__getitems__``, what DataLoader workers call) with ``refill_empty``
    (training loaders): when *every* sample of the batch is skipped, the next readable
    images after the batch's first index in dataset order (wrapping) are appended, as many
    as the batch asked for, each seeded with ``sample_seed(..., refill=True)``; the skip
    markers stay in the batch so they are still counted. DataError when no image of the
    dataset is readable.

    Other attributes (``class_names``, ``coco_gt_dict``, ...) are the wrapped dataset's;
    ``keyed.dataset`` is the dataset itself.
    """

    def __init__(self, dataset: Dataset, seed: int = 0, refill_empty: bool = False) -> None:
        self.dataset = dataset
        self.seed = int(seed)
        self.refill_empty = refill_empty

    def __len__(self) -> int:
        return len(self.dataset)  # type: ignore[arg-type]

    def __getattr__(self, name: str) -> Any:
        if name.startswith("_") or name in ("dataset", "seed", "refill_empty"):
            raise AttributeError(name)
        return getattr(self.dataset, name)

    def load(self, index: int, epoch: int = 0, repeat: int = 0, *, refill: bool = False) -> Any:
        """Sample ``index`` augmented with the seed of ``(epoch, index, repeat)``."""
        seed = sample_seed(self.seed, epoch, index, repeat, refill=refill)
        for transform in _transforms(self.dataset):
            transform.set_random_seed(seed)
        sample = self.dataset[int(index)]
        if sample is None:
            return SkippedSample(f"<index {index}>", "the dataset returned None", "other", int(index))
        return sample

    def __getitem__(self, key: int) -> Any:
        return self.load(int(key), getattr(key, "epoch", 0), getattr(key, "repeat", 0))

    def __getitems__(self, keys: Sequence[int]) -> list[Any]:
        samples = [self[k] for k in keys]
        if self.refill_empty and keys and not any(is_sample(s) for s in samples):
            samples += self._refill(keys[0], len(keys))
        return samples

    def _refill(self, first: int, wanted: int) -> list[Any]:
        num = len(self)
        epoch, repeat = getattr(first, "epoch", 0), getattr(first, "repeat", 0)
        found: list[Any] = []
        for step in range(1, num + 1):
            index = (int(first) + step) % num
            sample = self.load(index, epoch, repeat, refill=True)
            if is_sample(sample):
                found.append(sample)
                if len(found) == wanted:
                    break
        if not found:
            raise DataError(f"no readable image in the whole dataset ({num} images), e.g. {self[first]}")
        return found
