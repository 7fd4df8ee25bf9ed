"""Per-sample augmentation seeds: the same batches with any num_workers, across resumes and
epochs; training batches that are entirely unreadable are refilled (equal steps on every rank)."""

from __future__ import annotations

import pickle
import shutil
from pathlib import Path

import albumentations as A
import numpy as np
import pytest
import torch

from detmine.data import build_dataset
from detmine.data.loader import KeyedDataset, build_dataloader
from detmine.data.samplers import SampleKey, TrainingBatchSampler, sample_seed
from detmine.data.transforms import DetectionTransform, build_transforms
from detmine.errors import DataError

PRESETS = {"retinanet": {"flip_p": 0.5, "max_size": 96}, "ssd": {}}


def fresh_dataset(root, preset: str, **kwargs):
    """What a new run builds: a dataset whose transform has an unseeded (OS entropy) pipeline."""
    return build_dataset(
        "coco", root, "train", transform=build_transforms(preset, 64, **PRESETS[preset]), **kwargs
    )


def snapshot(batch) -> list:
    images, targets = batch
    return [images.clone()] + [(t["image_id"], t["boxes"].clone(), t["labels"].clone()) for t in targets]


def same(a: list[list], b: list[list]) -> bool:
    if len(a) != len(b):
        return False
    for x, y in zip(a, b, strict=True):
        if len(x) != len(y) or x[0].shape != y[0].shape or not torch.equal(x[0], y[0]):
            return False
        for (i, bx, lx), (j, by, ly) in zip(x[1:], y[1:], strict=True):
            if i != j or not torch.equal(bx, by) or not torch.equal(lx, ly):
                return False
    return True


def run_epochs(root, preset: str, num_workers: int, epochs=(0, 1)) -> list[list]:
    loader = build_dataloader(
        fresh_dataset(root, preset), 3, train=True, num_workers=num_workers, seed=7, aspect_grouping=True
    )
    out = []
    for epoch in epochs:
        loader.set_epoch(epoch)
        out += [snapshot(b) for b in loader]
    return out


@pytest.mark.parametrize("preset", ["retinanet", "ssd"])
def test_same_seed_same_batches_with_any_number_of_workers(tiny_coco_root, preset: str) -> None:
    reference = run_epochs(tiny_coco_root, preset, 0)
    assert same(run_epochs(tiny_coco_root, preset, 0), reference)  # two fresh runs
    for workers in (1, 2):
        assert same(run_epochs(tiny_coco_root, preset, workers), reference), f"num_workers={workers}"


def test_resumed_loader_sees_the_batches_of_an_uninterrupted_one(tiny_coco_root) -> None:
    opts = dict(num_workers=2, seed=3, repeat_factor_threshold=0.5)
    uninterrupted = build_dataloader(fresh_dataset(tiny_coco_root, "ssd"), 2, train=True, **opts)
    uninterrupted.set_epoch(1)
    full = [snapshot(b) for b in uninterrupted]

    first = build_dataloader(fresh_dataset(tiny_coco_root, "ssd"), 2, train=True, **opts)
    first.set_epoch(1)
    it = iter(first)
    head = [snapshot(next(it)) for _ in range(2)]  # the workers have prefetched further
    state = first.state_dict()
    del it

    resumed = build_dataloader(fresh_dataset(tiny_coco_root, "ssd"), 2, train=True, **opts)
    resumed.load_state_dict(state)
    resumed.set_epoch(1)
    rest = [snapshot(b) for b in resumed]
    assert len(rest) == len(full) - 2 and same(head + rest, full)


def test_epochs_and_repeats_draw_new_augmentations(tiny_coco_root) -> None:
    def per_image(epoch: int) -> dict[int, torch.Tensor]:
        loader = build_dataloader(fresh_dataset(tiny_coco_root, "retinanet"), 4, train=True, num_workers=0)
        loader.set_epoch(epoch)
        return {t["image_id"]: t["boxes"] for _, targets in loader for t in targets}

    a, b = per_image(0), per_image(1)
    assert a.keys() == b.keys()
    with_boxes = [i for i in a if len(a[i])]
    assert with_boxes and any(not torch.equal(a[i], b[i]) for i in with_boxes)  # flipped in one epoch only
    assert all(torch.equal(x, y) for x, y in zip(per_image(0).values(), a.values(), strict=True))
    # repeat-factor copies and the distributed padding get their own draws
    sampler = TrainingBatchSampler(5, 2, seed=1, repeat_factors=[3.0] * 5, rank=1, world_size=2)
    keys = [k for batch in sampler.epoch_batches(2) for k in batch]
    assert {k.epoch for k in keys} == {2} and {k.repeat for k in keys} <= {0, 1, 2, 3}
    assert len({(int(k), k.repeat) for k in keys}) == len(keys)
    assert len({sample_seed(0, 2, k, k.repeat) for k in keys}) == len(keys)


def test_sample_keys_are_indices_that_survive_pickling() -> None:
    key = SampleKey(5, epoch=3, repeat=1)
    assert key == 5 and hash(key) == hash(5) and [10, 20, 30, 40, 50, 60][key] == 60
    back = pickle.loads(pickle.dumps([key]))[0]
    assert isinstance(back, SampleKey) and (int(back), back.epoch, back.repeat) == (5, 3, 1)
    assert sample_seed(0, 3, 5, 1) == sample_seed(0, 3, back, back.repeat)
    assert (
        len({sample_seed(s, e, i, r) for s in (0, 1) for e in (0, 1) for i in (0, 1) for r in (0, 1)}) == 16
    )


def test_pipeline_steps_draw_independently() -> None:
    # albumentations' Compose(seed=s) seeds every step with s: two p=0.5 flips would always agree
    compose = A.Compose([A.HorizontalFlip(p=0.5), A.VerticalFlip(p=0.5)], seed=3)
    transform = DetectionTransform(compose)
    image = np.arange(4 * 4 * 3, dtype=np.uint8).reshape(4, 4, 3)
    seen = set()
    for s in range(40):
        transform.set_random_seed(s)
        out = transform(image, np.zeros((0, 4)), np.zeros(0), None)["image"]
        variants = {"none": image, "h": image[:, ::-1], "v": image[::-1], "hv": image[::-1, ::-1]}
        seen |= {name for name, v in variants.items() if np.array_equal(out, v)}
    assert len(seen) == 4


def test_eval_loader_is_seeded_too(tiny_coco_root) -> None:
    def run() -> list[list]:
        dataset = build_dataset("coco", tiny_coco_root, "val", transform=build_transforms("retinanet", 64))
        return [snapshot(b) for b in build_dataloader(dataset, 4, train=False, num_workers=0, seed=2)]

    assert same(run(), run())


# ------------------------------------------------------------------ unreadable training batches


class FlakyDataset(torch.utils.data.Dataset):
    """Index i -> a 1-pixel image of value i (None for the bad indices)."""

    def __init__(self, n: int, bad=()) -> None:
        self.n, self.bad = n, set(bad)

    def __len__(self) -> int:
        return self.n

    def __getitem__(self, i: int):
        if i in self.bad:
            return None
        target = {"boxes": torch.zeros((0, 4)), "labels": torch.zeros(0, dtype=torch.int64),
                  "ignore_boxes": torch.zeros((0, 4)), "image_id": i, "orig_size": (1, 1), "input_size": (1, 1)}  # fmt: skip
        return torch.full((3, 1, 1), i, dtype=torch.uint8), target


@pytest.mark.parametrize("num_workers", [0, 2])
def test_a_rank_whose_batch_is_all_unreadable_takes_as_many_steps(num_workers: int) -> None:
    n, batch = 20, 3
    rank1_first = TrainingBatchSampler(n, batch, seed=4, rank=1, world_size=2).epoch_batches(0)[0]
    dataset = FlakyDataset(n, bad=rank1_first)
    runs = [
        [
            [t["image_id"] for t in targets]
            for _, targets in build_dataloader(
                dataset, batch, train=True, num_workers=num_workers, seed=4, rank=r, world_size=2
            )
        ]
        for r in range(2)
    ]
    rank1 = TrainingBatchSampler(n, batch, seed=4, rank=1, world_size=2)
    assert len(runs[0]) == len(runs[1]) == len(rank1)
    # the empty batch is refilled with the next readable indices after its first one
    expected, i = [], int(rank1_first[0])
    while len(expected) < batch:
        i = (i + 1) % n
        if i not in dataset.bad:
            expected.append(i)
    assert runs[1][0] == expected and all(runs[1][1:])
    loader = build_dataloader(
        dataset, batch, train=True, num_workers=num_workers, seed=4, rank=1, world_size=2
    )
    list(loader)
    assert loader.num_dropped_samples == batch and loader.skip_counts == {"other": batch}
    requested = sum(len(b) for b in rank1.epoch_batches(0))
    assert loader.skipped_summary() == (
        f"3 of {requested} images skipped: 3 other; first: <index {rank1_first[0]}> (the dataset returned None)"
    )


def test_no_readable_image_at_all_is_a_data_error() -> None:
    loader = build_dataloader(FlakyDataset(4, bad=range(4)), 2, train=True, num_workers=0)
    with pytest.raises(DataError, match="no readable image in the whole dataset"):
        list(loader)


def test_skips_are_counted_over_all_workers_and_errors_stay_one_line(tiny_coco_root, tmp_path) -> None:
    root = tmp_path / "coco"
    shutil.copytree(tiny_coco_root, root)
    dataset = fresh_dataset(root, "retinanet")
    corrupt, missing = dataset.records[2].path, dataset.records[5].path
    with open(corrupt, "wb") as f:
        f.write(b"not a jpeg")
    Path(missing).unlink()
    loader = build_dataloader(dataset, 2, train=True, num_workers=2, seed=1)
    assert loader.skipped_summary() is None
    got = [t["image_id"] for _, targets in loader for t in targets]
    assert len(got) == len(dataset) - 2 and loader.num_dropped_samples == 2
    summary = loader.skipped_summary()
    assert summary.startswith(f"2 of {len(dataset)} images skipped: 1 missing, 1 unreadable; first: ")
    assert summary.endswith(f"{corrupt} (cannot be decoded (corrupt or not an image))") or summary.endswith(
        f"{missing} (file not found)"
    )
    assert loader.dataset.class_names == dataset.class_names and isinstance(loader.dataset, KeyedDataset)

    strict = build_dataset(
        "coco", root, "train", transform=build_transforms("eval", 64), on_bad_image="error"
    )
    for workers in (0, 1):
        with pytest.raises(DataError) as err:
            list(build_dataloader(strict, 4, train=False, num_workers=workers))
        assert "\n" not in str(err.value) and str(err.value).startswith(corrupt)
