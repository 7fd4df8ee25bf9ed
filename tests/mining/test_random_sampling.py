import pytest
import torch

from detmine.mining import RandomMiner
from detmine.mining.random_sampling import _random_subset


def _labels(num_pos: list[int], num_neg: list[int], num_anchors: int = 500, seed: int = 0) -> torch.Tensor:
    """Per image: num_pos positives, num_neg negatives, the rest ignored, at random positions."""
    g = torch.Generator().manual_seed(seed)
    labels = torch.full((len(num_pos), num_anchors), -1, dtype=torch.long)
    for b, (p, n) in enumerate(zip(num_pos, num_neg, strict=True)):
        perm = torch.randperm(num_anchors, generator=g)
        labels[b, perm[:p]] = torch.randint(1, 5, (p,), generator=g)
        labels[b, perm[p : p + n]] = 0
    return labels


@pytest.mark.parametrize(
    "pos, neg, batch, fraction, expected",
    [
        ([300], [150], 256, 0.5, ([128], [128])),  # plenty of both: the fraction rules
        ([10], [400], 256, 0.5, ([10], [246])),  # few positives: negatives fill up
        ([200], [20], 256, 0.5, ([128], [20])),  # few negatives: fewer than batch
        ([0], [450], 64, 0.25, ([0], [64])),  # background-only image
        ([40], [0], 64, 0.25, ([16], [0])),
        ([50], [400], 100, 0.0, ([0], [100])),
    ],
)
def test_counts_follow_the_fraction(pos, neg, batch, fraction, expected):
    labels = _labels(pos, neg)
    selected = RandomMiner(batch_size_per_image=batch, pos_fraction=fraction, seed=0)(
        torch.rand(labels.shape), labels, None
    )
    assert (selected & (labels > 0)).sum(1).tolist() == expected[0]
    assert (selected & (labels == 0)).sum(1).tolist() == expected[1]
    assert not (selected & (labels < 0)).any()


def test_batched_images_each_get_their_counts():
    labels = _labels([300, 10, 0, 200], [150, 400, 450, 20], seed=1)
    selected = RandomMiner(batch_size_per_image=256, pos_fraction=0.5, seed=1)(
        torch.rand(4, 500), labels, None
    )
    assert (selected & (labels > 0)).sum(1).tolist() == [128, 10, 0, 128]
    assert (selected & (labels == 0)).sum(1).tolist() == [128, 246, 256, 20]
    assert not (selected & (labels < 0)).any()


def test_seeded_draws_repeat_and_vary():
    labels = _labels([100, 50], [300, 300], seed=2)
    loss = torch.rand(labels.shape)
    a, b = RandomMiner(batch_size_per_image=64, seed=7), RandomMiner(batch_size_per_image=64, seed=7)
    first_a, first_b = a(loss, labels, None), b(loss, labels, None)
    assert torch.equal(first_a, first_b)  # same seed: same draws
    assert not torch.equal(a(loss, labels, None), first_a)  # the stream moves on
    assert not torch.equal(RandomMiner(batch_size_per_image=64, seed=8)(loss, labels, None), first_a)


def test_global_rng_without_seed():
    labels = _labels([100], [300], seed=3)
    torch.manual_seed(5)
    first = RandomMiner(batch_size_per_image=64)(torch.rand(labels.shape), labels, None)
    torch.manual_seed(5)
    assert torch.equal(first, RandomMiner(batch_size_per_image=64)(torch.rand(labels.shape), labels, None))


def test_draws_are_uniform_and_ignore_the_loss():
    labels = torch.zeros(1, 40, dtype=torch.long)
    loss = torch.linspace(0, 1, 40)[None]  # a loss ranking must not matter
    miner = RandomMiner(batch_size_per_image=10, pos_fraction=0.5, seed=0)
    counts = sum(miner(loss, labels, None)[0].long() for _ in range(400))
    # each negative is drawn with probability 10 / 40: 100 of 400 expected, sd ~8.7
    assert counts.sum().item() == 4000
    assert counts.min().item() > 60 and counts.max().item() < 140
    assert abs(counts[:20].sum().item() - counts[20:].sum().item()) < 300


def test_unseeded_selection_is_the_global_rngs_draw():
    # seed=None draws one torch.rand key per anchor from the global RNG, as before the streams
    labels = _labels([100, 20], [300, 300], seed=4)
    torch.manual_seed(9)
    selected = RandomMiner(batch_size_per_image=64, pos_fraction=0.25)(torch.rand(labels.shape), labels, None)
    torch.manual_seed(9)
    torch.rand(labels.shape)
    keys = torch.rand(labels.shape)
    num_pos = (labels > 0).sum(1, keepdim=True).clamp(max=16)
    num_neg = torch.minimum((labels == 0).sum(1, keepdim=True), 64 - num_pos)
    expected = _random_subset(keys, labels > 0, num_pos, 16) | _random_subset(keys, labels == 0, num_neg, 64)
    assert torch.equal(selected, expected)
    assert RandomMiner().state_dict() == {"seed": None, "draws": 0}


def test_seeded_miner_resumes_from_its_state():
    labels = _labels([100, 50], [300, 300], seed=5)
    loss = torch.rand(labels.shape)
    first = RandomMiner(batch_size_per_image=64, seed=7)
    for _ in range(3):
        first(loss, labels, None)
    resumed = RandomMiner(batch_size_per_image=64, seed=7)
    resumed.load_state_dict(first.state_dict())
    assert resumed.state_dict() == {"seed": 7, "draws": 3}
    assert torch.equal(resumed(loss, labels, None), first(loss, labels, None))
    with pytest.raises(ValueError, match="seed 7 but this miner has seed 8"):
        RandomMiner(seed=8).load_state_dict(first.state_dict())


def test_evaluation_mode_does_not_move_the_stream():
    labels = _labels([100, 50], [300, 300], seed=6)
    loss = torch.rand(labels.shape)
    plain, validated = (
        RandomMiner(batch_size_per_image=64, seed=1),
        RandomMiner(batch_size_per_image=64, seed=1),
    )
    validated.train(False)
    validation = validated(loss, labels, None)
    validated.train(True)
    training = plain(loss, labels, None)
    assert not torch.equal(validation, training)  # eval draws from its own derivation
    assert torch.equal(validated(loss, labels, None), training)


def test_ranks_draw_differently(monkeypatch):
    labels = _labels([100, 50], [300, 300], seed=7)
    loss = torch.rand(labels.shape)
    selections = []
    for rank in (0, 1):
        monkeypatch.setattr("detmine.mining.stream.get_rank", lambda rank=rank: rank)
        selections.append(RandomMiner(batch_size_per_image=64, seed=1)(loss, labels, None))
    assert not torch.equal(*selections)
