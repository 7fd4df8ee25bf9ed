"""The pool miner: the ssd quota of hardest negatives within a uniformly drawn pool."""

import math

import pytest
import torch

from detmine.errors import ConfigError
from detmine.mining import PoolMiner, SSDMiner, build_miner


def _labels(num_pos: list[int], num_neg: list[int], num_anchors: int = 400, seed: int = 0) -> torch.Tensor:
    """Per image: num_pos positives, num_neg negatives, the rest ignored, at random positions."""
    g = torch.Generator().manual_seed(seed)
    labels = torch.full((len(num_pos), num_anchors), -1, dtype=torch.long)
    for b, (p, n) in enumerate(zip(num_pos, num_neg, strict=True)):
        perm = torch.randperm(num_anchors, generator=g)
        labels[b, perm[:p]] = torch.randint(1, 5, (p,), generator=g)
        labels[b, perm[p : p + n]] = 0
    return labels


# image 1: no positives; image 2: the quota exceeds its negatives; the batch budget (210) is over
# A / 2 (the ssd miner's full-sort path)
NUM_POS, NUM_NEG = [5, 0, 100, 1, 70], [40, 390, 80, 3, 300]


@pytest.mark.parametrize("tied", [False, True])
@pytest.mark.parametrize("pool_size", [390, 400, 10_000])  # the most negatives of an image, A, more
@pytest.mark.parametrize("min_negatives", [0, 6])
def test_a_pool_of_every_negative_is_the_ssd_miner(tied, pool_size, min_negatives):
    labels = _labels(NUM_POS, NUM_NEG, seed=1)
    g = torch.Generator().manual_seed(2)
    loss = (
        torch.randint(0, 3, labels.shape, generator=g).float()
        if tied
        else torch.rand(labels.shape, generator=g)
    )
    expected = SSDMiner(min_negatives=min_negatives)(loss, labels, None)
    miner = PoolMiner(min_negatives=min_negatives, pool_size=pool_size, seed=3)
    for _ in range(2):
        assert torch.equal(miner(loss, labels, None), expected)


@pytest.mark.parametrize("pool_size", [1, 16, 60])
def test_hardest_of_its_pool_and_never_outside_it(pool_size):
    labels = _labels(NUM_POS, NUM_NEG, seed=4)
    loss = torch.rand(labels.shape, generator=torch.Generator().manual_seed(5))
    loss[labels < 0] = 100.0  # the hardest anchors are ignored ones: never selected
    miner, twin = PoolMiner(pool_size=pool_size, seed=6), PoolMiner(pool_size=pool_size, seed=6)
    for _ in range(3):
        selected = miner(loss, labels, None)
        pool = twin.pool(labels, twin.stream.generator(labels.device))  # the pool the miner drew
        negative = labels == 0
        assert pool.sum(1).tolist() == [min(pool_size, n) for n in NUM_NEG]
        assert not (pool & ~negative).any()
        mined = selected & negative
        assert not (mined & ~pool).any()
        assert not (selected & (labels < 0)).any()
        assert torch.equal(selected & (labels > 0), labels > 0)
        quota = [min(3 * p, n, pool_size) for p, n in zip(NUM_POS, NUM_NEG, strict=True)]
        assert mined.sum(1).tolist() == quota
        for b in range(len(labels)):  # the hardest of the pool: no pool negative left out is harder
            left_out = loss[b][pool[b] & ~mined[b]]
            if mined[b].any() and left_out.numel():
                assert loss[b][mined[b]].min() >= left_out.max()


def test_a_pool_within_the_quota_is_kept_whole_and_uniform():
    # min_negatives 4 = pool_size: each image keeps its whole pool of 4 of its 20 negatives,
    # whatever the loss. Over R = 2000 images each negative is kept with p = 1/5: mean 400, sd
    # sqrt(R p (1 - p)) = 17.9; 5 sd bounds the 20 counts (a uniform draw fails it with
    # probability ~20 x 6e-7).
    num_images, num_neg, pool_size = 2000, 20, 4
    labels = torch.zeros(num_images, num_neg, dtype=torch.long)
    loss = torch.linspace(0, 4, num_neg).expand(num_images, -1).contiguous()
    counts = PoolMiner(min_negatives=pool_size, pool_size=pool_size, seed=0)(loss, labels).sum(0).double()
    assert counts.sum().item() == num_images * pool_size
    assert (counts - num_images / 5).abs().max().item() < 5 * math.sqrt(num_images * 0.2 * 0.8)


def test_the_hardest_two_of_a_pool_of_eight():
    # 20 negatives ranked by loss, the 2 hardest of a pool of 8 kept: the 6 easiest can never be
    # kept (a pool holding one of them holds 7 others, at least 2 harder); the two hardest are
    # kept whenever they are in the pool, p = 8/20: counts of mean 200, sd sqrt(R p (1 - p)) = 11.
    num_images = 500
    labels = torch.zeros(num_images, 20, dtype=torch.long)
    loss = torch.linspace(0, 1, 20).expand(num_images, -1).contiguous()
    counts = PoolMiner(min_negatives=2, pool_size=8, seed=0)(loss, labels).sum(0)
    assert counts[:6].sum().item() == 0
    assert ((counts[-2:] - 200).abs() < 5 * math.sqrt(num_images * 0.4 * 0.6)).all()


def test_background_only_images_follow_min_negatives():
    labels = torch.zeros(3, 50, dtype=torch.long)
    labels[1, :10] = -1
    loss = torch.rand(labels.shape)
    assert not PoolMiner(pool_size=16, seed=0)(loss, labels, None).any()
    selected = PoolMiner(min_negatives=8, pool_size=16, seed=0)(loss, labels, None)
    assert selected.sum(1).tolist() == [8, 8, 8]
    assert not selected[1, :10].any()


def test_seeded_draws_repeat_vary_and_follow_the_global_rng_without_seed():
    labels = _labels([10, 3], [300, 300], seed=7)
    loss = torch.rand(labels.shape)
    a, b = PoolMiner(pool_size=40, seed=7), PoolMiner(pool_size=40, seed=7)
    first = a(loss, labels, None)
    assert torch.equal(first, b(loss, labels, None))
    assert not torch.equal(a(loss, labels, None), first)  # the stream moves on
    assert not torch.equal(PoolMiner(pool_size=40, seed=8)(loss, labels, None), first)
    torch.manual_seed(5)
    unseeded = PoolMiner(pool_size=40)(loss, labels, None)
    torch.manual_seed(5)
    assert torch.equal(unseeded, PoolMiner(pool_size=40)(loss, labels, None))


def test_built_from_the_table():
    miner = build_miner("pool", neg_pos_ratio=2, min_negatives=4, pool_size=64, seed=1)
    assert isinstance(miner, PoolMiner)
    assert (miner.neg_pos_ratio, miner.min_negatives, miner.pool_size, miner.seed) == (2, 4, 64, 1)
    assert (miner.box_source, miner.normalize_by) == (None, "positives")
    defaults = build_miner("pool")
    assert (defaults.neg_pos_ratio, defaults.min_negatives, defaults.pool_size, defaults.seed) == (
        3,
        0,
        1024,
        None,
    )


@pytest.mark.parametrize(
    "options, key",
    [
        ({"pool_size": 0}, "pool_size"),
        ({"pool_size": 1.5}, "pool_size"),
        ({"neg_pos_ratio": -1}, "neg_pos_ratio"),
        ({"min_negatives": -1}, "min_negatives"),
        ({"seed": "x"}, "seed"),
    ],
)
def test_bad_options_name_the_key(options, key):
    with pytest.raises(ConfigError, match=rf"mining\.pool\.{key}"):
        build_miner("pool", **options)
