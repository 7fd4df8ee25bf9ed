"""Training / inference batch samplers: order, grouping, repeat factors, sharding, resume."""

from __future__ import annotations

import math
from collections import Counter

import numpy as np
import pytest

from detmine.data.samplers import (
    InferenceBatchSampler,
    TrainingBatchSampler,
    aspect_ratio_groups,
    repeat_factors,
)
from detmine.errors import ConfigError, DataError


def test_repeat_factors_match_the_lvis_formula() -> None:
    # 10 images: class 1 everywhere (f=1), class 2 in one image (f=0.1), class 3 in two (f=0.2)
    labels = [{1} for _ in range(10)]
    labels[0] = {1, 2}
    labels[1] = {1, 3}
    labels[2] = {1, 3}
    labels.append(set())  # an image without objects -> 1 (it changes N to 11)
    r = repeat_factors(labels, threshold=0.4)
    f2, f3 = 1 / 11, 2 / 11
    expected = [math.sqrt(0.4 / f2), math.sqrt(0.4 / f3), math.sqrt(0.4 / f3)] + [1.0] * 8
    np.testing.assert_allclose(r, expected)
    # max over the classes of the image, floored at 1
    assert repeat_factors([{1, 2}, {1}], threshold=0.01).tolist() == [1.0, 1.0]
    with pytest.raises(ConfigError, match="repeat_factor_threshold"):
        repeat_factors(labels, threshold=0)


def test_stochastic_rounding_has_the_right_mean() -> None:
    factors = np.array([1.0, 1.5, 2.25, 3.0])
    sampler = TrainingBatchSampler(4, 1, seed=3, repeat_factors=factors)
    totals = np.zeros(4)
    for epoch in range(400):
        counts = Counter(i for b in sampler.epoch_batches(epoch) for i in b)
        got = np.array([counts[i] for i in range(4)])
        assert ((got == np.floor(factors)) | (got == np.ceil(factors))).all()
        totals += got
    np.testing.assert_allclose(totals / 400, factors, atol=0.08)


def test_epoch_order_is_seeded_and_covers_the_dataset() -> None:
    a = TrainingBatchSampler(23, 4, seed=7)
    b = TrainingBatchSampler(23, 4, seed=7)
    assert a.epoch_batches(0) == b.epoch_batches(0)
    assert a.epoch_batches(0) != a.epoch_batches(1)
    assert a.epoch_batches(0) != TrainingBatchSampler(23, 4, seed=8).epoch_batches(0)
    flat = [i for batch in a.epoch_batches(0) for i in batch]
    assert sorted(flat) == list(range(23)) and flat != list(range(23))
    assert [len(x) for x in a.epoch_batches(0)] == [4] * 5 + [3]
    dropped = TrainingBatchSampler(23, 4, seed=7, drop_last=True)
    assert [len(x) for x in dropped.epoch_batches(0)] == [4] * 5 and len(dropped) == 5


def test_aspect_groups_are_pure() -> None:
    sizes = [(100, 200), (200, 100), (50, 50), (80, 60), (60, 80)] * 9
    groups = aspect_ratio_groups(sizes)
    assert groups[:5].tolist() == [0, 1, 0, 1, 0]
    sampler = TrainingBatchSampler(len(sizes), 4, seed=0, group_ids=groups)
    for epoch in range(5):
        batches = sampler.epoch_batches(epoch)
        for batch in batches:
            assert len({int(groups[i]) for i in batch}) == 1, batch
        assert sorted(i for b in batches for i in b) == list(range(len(sizes)))
        assert sum(len(b) < 4 for b in batches) <= 2  # at most one partial batch per group


@pytest.mark.parametrize(
    ("num_images", "world", "drop_last"), [(24, 2, False), (24, 3, True), (25, 3, False)]
)
def test_distributed_shards_are_disjoint_and_cover(num_images: int, world: int, drop_last: bool) -> None:
    groups = aspect_ratio_groups([(10, 20) if i % 3 else (20, 10) for i in range(num_images)])
    ranks = [
        TrainingBatchSampler(
            num_images, 2, seed=5, group_ids=groups, drop_last=drop_last, rank=r, world_size=world
        )
        for r in range(world)
    ]
    per_rank = [s.epoch_batches(1) for s in ranks]
    assert len({len(b) for b in per_rank}) == 1  # same number of steps on every rank (DDP)
    global_batches = ranks[0]._global_batches(1)
    shards = [[i for b in batches for i in b] for batches in per_rank]
    union = [i for s in shards for i in s]
    if len(global_batches) % world == 0:
        assert sorted(union) == sorted(i for b in global_batches for i in b)  # exact, disjoint cover
        assert len(set(union)) == len(union)
    elif drop_last:
        assert len(set(union)) == len(union)
    else:  # last round completed with batches from the start of the epoch, like DistributedSampler
        assert set(union) == set(range(num_images))
        assert len(union) - len(set(union)) <= (world - 1) * 2
    if not drop_last:
        assert set(union) == set(range(num_images))


def test_resume_gives_the_remaining_batches_in_order() -> None:
    kwargs = {"seed": 11, "group_ids": np.arange(30) % 2, "repeat_factors": 1 + (np.arange(30) % 3) / 2}
    reference = TrainingBatchSampler(30, 3, **kwargs)
    reference.set_epoch(4)
    full = list(reference)
    assert full == reference.epoch_batches(4) and len(reference) == len(full)

    fresh = TrainingBatchSampler(30, 3, **kwargs)
    fresh.load_state_dict({"epoch": 4, "batches_consumed": 5})
    fresh.set_epoch(4)  # what a trainer does at the start of the epoch: keeps the offset
    assert list(fresh) == full[5:]
    assert fresh.state_dict() == {"epoch": 4, "batches_consumed": 5}
    fresh.set_epoch(5)  # a new epoch starts at its first batch
    assert fresh.state_dict() == {"epoch": 5, "batches_consumed": 0}
    assert list(fresh) == reference.epoch_batches(5)
    with pytest.raises(ConfigError, match="batches_consumed"):
        fresh.load_state_dict({"epoch": 1})


def test_inference_sampler_keeps_order_and_shards_contiguously() -> None:
    single = InferenceBatchSampler(10, 4)
    assert list(single) == [[0, 1, 2, 3], [4, 5, 6, 7], [8, 9]]
    shards = [list(InferenceBatchSampler(10, 2, rank=r, world_size=3)) for r in range(3)]
    flat = [i for shard in shards for b in shard for i in b]
    assert flat == list(range(10))


def test_bad_sampler_arguments() -> None:
    with pytest.raises(DataError, match="empty"):
        TrainingBatchSampler(0, 2)
    with pytest.raises(ConfigError, match="batch_size"):
        TrainingBatchSampler(4, 0)
    with pytest.raises(ConfigError, match="group_ids"):
        TrainingBatchSampler(4, 2, group_ids=[0, 1])
    with pytest.raises(ConfigError, match="rank=2"):
        TrainingBatchSampler(4, 2, rank=2, world_size=2)
