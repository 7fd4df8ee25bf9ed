"""The soft miner: the ssd quota of negatives, drawn ~ exp(loss / T) by Gumbel-top-k."""

import math

import pytest
import torch

from detmine.errors import ConfigError
from detmine.mining import SoftMiner, SSDMiner, build_miner


def _labels(num_pos: list[int], num_neg: list[int], num_anchors: int = 400, seed: int = 0) -> torch.Tensor:
    """Per image: num_pos positives, num_neg negatives, the rest ignored, at random positions."""
    g = torch.Generator().manual_seed(seed)
    labels = torch.full((len(num_pos), num_anchors), -1, dtype=torch.long)
    for b, (p, n) in enumerate(zip(num_pos, num_neg, strict=True)):
        perm = torch.randperm(num_anchors, generator=g)
        labels[b, perm[:p]] = torch.randint(1, 5, (p,), generator=g)
        labels[b, perm[p : p + n]] = 0
    return labels


def _quota(labels: torch.Tensor, neg_pos_ratio: float, min_negatives: int) -> list[int]:
    """The ssd miner's negatives per image, written out: min(max(floor(r P), m), N)."""
    pos, neg = (labels > 0).sum(1).tolist(), (labels == 0).sum(1).tolist()
    return [min(max(math.floor(neg_pos_ratio * p), min_negatives), n) for p, n in zip(pos, neg, strict=True)]


# image 1: no positives; image 2: the quota exceeds its negatives; at neg_pos_ratio 3 the batch
# budget (210, image 4) is over A / 2, so the ssd miner takes its full-sort path there
CASES = [([5, 0, 100, 1, 70], [40, 390, 80, 3, 300]), ([2, 7], [398, 300])]


@pytest.mark.parametrize("tied", [False, True])
@pytest.mark.parametrize("num_pos, num_neg", CASES)
@pytest.mark.parametrize("ratio, min_negatives", [(3, 0), (2.5, 4)])
def test_temperature_zero_is_the_ssd_miner(tied, num_pos, num_neg, ratio, min_negatives):
    labels = _labels(num_pos, num_neg, seed=1)
    g = torch.Generator().manual_seed(2)
    # integer losses: a handful of values, ties across every cut
    loss = (
        torch.randint(0, 3, labels.shape, generator=g).float()
        if tied
        else torch.rand(labels.shape, generator=g)
    )
    soft = SoftMiner(neg_pos_ratio=ratio, min_negatives=min_negatives, temperature=0, seed=5)
    expected = SSDMiner(neg_pos_ratio=ratio, min_negatives=min_negatives)(loss, labels, None)
    assert torch.equal(soft(loss, labels, None), expected)
    assert torch.equal(
        SoftMiner(neg_pos_ratio=ratio, min_negatives=min_negatives, temperature=0)(loss, labels), expected
    )


@pytest.mark.parametrize("num_pos, num_neg", CASES)
def test_tiny_temperature_on_distinct_losses_is_the_ssd_selection(num_pos, num_neg):
    labels = _labels(num_pos, num_neg, seed=3)
    g = torch.Generator().manual_seed(4)
    # Losses 0.01 apart. The miner ranks loss + T g with float32 Gumbel noise g in [-4.5, 16.7]
    # (u in [tiny, 1 - 2^-24]), so at T = 1e-4 the noise moves a key by at most 2.2e-3: no
    # two negatives can swap.
    loss = torch.stack([torch.randperm(labels.shape[1], generator=g) for _ in labels]).float() * 0.01
    expected = SSDMiner(neg_pos_ratio=3, min_negatives=2)(loss, labels, None)
    for seed in range(3):
        soft = SoftMiner(neg_pos_ratio=3, min_negatives=2, temperature=1e-4, seed=seed)
        assert torch.equal(soft(loss, labels, None), expected)


@pytest.mark.parametrize("num_pos, num_neg", CASES)
@pytest.mark.parametrize("ratio, min_negatives", [(3, 0), (0.5, 7)])
@pytest.mark.parametrize("temperature", [0.1, 1.0, 100.0])
def test_counts_are_the_ssd_quota_and_ignored_anchors_stay_out(
    num_pos, num_neg, ratio, min_negatives, temperature
):
    labels = _labels(num_pos, num_neg, seed=5)
    loss = torch.rand(labels.shape, generator=torch.Generator().manual_seed(6)) * 5
    loss[labels < 0] = 100.0  # the hardest anchors are ignored ones: never drawn
    miner = SoftMiner(neg_pos_ratio=ratio, min_negatives=min_negatives, temperature=temperature, seed=0)
    for _ in range(3):
        selected = miner(loss, labels, None)
        assert torch.equal(selected & (labels > 0), labels > 0)  # every positive
        assert (selected & (labels == 0)).sum(1).tolist() == _quota(labels, ratio, min_negatives)
        assert not (selected & (labels < 0)).any()


def test_background_only_images_follow_min_negatives():
    labels = torch.zeros(3, 50, dtype=torch.long)
    labels[1, :10] = -1
    loss = torch.rand(labels.shape)
    assert not SoftMiner(seed=0)(loss, labels, None).any()  # the SSD paper: nothing to learn from
    selected = SoftMiner(min_negatives=8, seed=0)(loss, labels, None)
    assert selected.sum(1).tolist() == [8, 8, 8]
    assert not selected[1, :10].any()


def test_large_temperature_samples_uniformly():
    # R images with the same 20 negatives, losses spread over [0, 4] (a ranking that T = 1 would
    # follow strongly), 5 negatives per image. At T = 1e4 every exp(loss / T) is within 0.04% of
    # the others, so each negative is in a draw with probability 5 / 20. Its count over R images
    # then has mean R / 4 and sd sqrt(R p (1 - p)) = 19.4 for R = 2000 (draws without replacement
    # within an image only lower the variance); 5 sd fails a uniform sampler with probability
    # ~20 x 6e-7 over the 20 counts. The seeds make the test deterministic anyway.
    num_images, num_neg, quota = 2000, 20, 5
    labels = torch.zeros(num_images, num_neg, dtype=torch.long)
    loss = torch.linspace(0, 4, num_neg).expand(num_images, -1).contiguous()
    counts = SoftMiner(min_negatives=quota, temperature=1e4, seed=0)(loss, labels, None).sum(0).double()
    expected, sd = num_images * quota / num_neg, math.sqrt(num_images * 0.25 * 0.75)
    assert counts.sum().item() == num_images * quota
    assert (counts - expected).abs().max().item() < 5 * sd
    # no trend with the loss: the draws in the harder half are hypergeometric per image
    # (20, 10, 5: variance 5/4 x 15/19), sd sqrt(R x 0.987) = 44.4 over R images
    assert abs(counts[10:].sum().item() - counts[:10].sum().item()) / 2 < 5 * math.sqrt(num_images * 0.987)


def test_inclusion_follows_the_plackett_luce_probabilities():
    # Gumbel-top-k with k = 2 draws i first with p_i = softmax(loss / T)_i, then j != i with
    # p_j / (1 - p_i): P(i drawn) = p_i + sum_{j != i} p_j p_i / (1 - p_j). Frequencies over
    # R = 20000 images lie within 5 standard errors sqrt(q (1 - q) / R) of it, and the
    # probabilities (0.013, 0.037, 0.099, 0.26, 0.67, 0.92) grow with the loss.
    num_images, temperature = 20000, 0.5
    loss = torch.arange(6.0) * 0.5
    p = torch.softmax(loss.double() / temperature, 0)
    exact = torch.stack([p[i] + sum(p[j] * p[i] / (1 - p[j]) for j in range(6) if j != i) for i in range(6)])
    miner = SoftMiner(min_negatives=2, temperature=temperature, seed=1)
    selected = miner(loss.expand(num_images, -1).contiguous(), torch.zeros(num_images, 6, dtype=torch.long))
    freq = selected.double().mean(0)
    standard_error = (exact * (1 - exact) / num_images).sqrt()
    assert ((freq - exact).abs() < 5 * standard_error).all(), (freq, exact)
    assert (freq.diff() > 0).all()  # harder negatives are drawn more often


def test_seeded_draws_repeat_vary_and_follow_the_global_rng_without_seed():
    labels = _labels([10, 3], [300, 300], seed=7)
    loss = torch.rand(labels.shape)
    a, b = SoftMiner(temperature=0.5, seed=7), SoftMiner(temperature=0.5, seed=7)
    first = a(loss, labels, None)
    assert torch.equal(first, b(loss, labels, None))
    assert not torch.equal(a(loss, labels, None), first)  # the stream moves on
    assert not torch.equal(SoftMiner(temperature=0.5, seed=8)(loss, labels, None), first)
    torch.manual_seed(5)
    unseeded = SoftMiner(temperature=0.5)(loss, labels, None)
    torch.manual_seed(5)
    assert torch.equal(unseeded, SoftMiner(temperature=0.5)(loss, labels, None))


def test_half_precision_loss():
    labels = _labels([4], [200], seed=8)
    selected = SoftMiner(temperature=0.3, seed=0)(torch.rand(labels.shape).half(), labels, None)
    assert (selected & (labels == 0)).sum().item() == 12


def test_built_from_the_table():
    miner = build_miner("soft", neg_pos_ratio=2, min_negatives=4, temperature=0.5, seed=1)
    assert isinstance(miner, SoftMiner)
    assert (miner.neg_pos_ratio, miner.min_negatives, miner.temperature, miner.seed) == (2, 4, 0.5, 1)
    assert (miner.box_source, miner.normalize_by) == (None, "positives")
    defaults = build_miner("soft")
    assert (defaults.neg_pos_ratio, defaults.min_negatives, defaults.temperature, defaults.seed) == (
        3,
        0,
        1.0,
        None,
    )


@pytest.mark.parametrize(
    "options, key",
    [
        ({"temperature": -0.1}, "temperature"),
        ({"temperature": float("nan")}, "temperature"),
        ({"temperature": float("inf")}, "temperature"),
        ({"temperature": "hot"}, "temperature"),
        ({"neg_pos_ratio": -1}, "neg_pos_ratio"),
        ({"min_negatives": -1}, "min_negatives"),
        ({"seed": 1.5}, "seed"),
    ],
)
def test_bad_options_name_the_key(options, key):
    with pytest.raises(ConfigError, match=rf"mining\.soft\.{key}"):
        build_miner("soft", **options)
