"""The miners' random stream: seeded, counter-based, per rank, resumable through the criterion."""

import copy
import pickle

import pytest
import torch

import detmine.mining.stream as stream_module
from detmine.box_coder import BoxCoder
from detmine.criterion import build_criterion
from detmine.errors import OptionError
from detmine.mining import RandomStream
from detmine.mining.stream import mix, splitmix64
from detmine.structures import HeadOutputs


def _draws(stream: RandomStream, calls: int, n: int = 8) -> list[torch.Tensor]:
    return [torch.rand(n, generator=stream.generator("cpu")) for _ in range(calls)]


def _equal(a: list[torch.Tensor], b: list[torch.Tensor]) -> bool:
    return len(a) == len(b) and all(torch.equal(x, y) for x, y in zip(a, b, strict=True))


def test_splitmix64_reference_value():
    # the first output of Vigna's splitmix64.c seeded with 0
    assert splitmix64(0) == 0xE220A8397B1DCDAF
    assert len({mix(3, 0, 0, n) for n in range(1000)} | {mix(3, 1, 0, n) for n in range(1000)}) == 2000
    assert 0 <= mix(-1, 2**70) < 2**64  # any integer seed, taken modulo 2**64


def test_same_seed_same_draws_other_seed_other_draws():
    first = _draws(RandomStream(3), 4)
    assert _equal(first, _draws(RandomStream(3), 4))
    assert not _equal(first, _draws(RandomStream(4), 4))
    assert len({tuple(d.tolist()) for d in first}) == 4  # each call draws anew


def test_ranks_draw_differently_with_equal_states(monkeypatch):
    streams, draws = {}, {}
    for rank in (0, 1, 2):
        monkeypatch.setattr(stream_module, "get_rank", lambda rank=rank: rank)
        streams[rank] = RandomStream(3)
        draws[rank] = _draws(streams[rank], 3)
    assert not _equal(draws[0], draws[1]) and not _equal(draws[1], draws[2])
    assert (
        streams[0].state_dict()
        == streams[1].state_dict()
        == streams[2].state_dict()
        == {"seed": 3, "draws": 3}
    )


def test_state_round_trip_continues_the_sequence():
    uninterrupted = _draws(RandomStream(11), 7)
    first = RandomStream(11)
    before = _draws(first, 3)
    resumed = RandomStream(11)
    resumed.load_state_dict(copy.deepcopy(first.state_dict()))
    assert _equal(before + _draws(resumed, 4), uninterrupted)
    assert not _equal(_draws(RandomStream(11), 4), uninterrupted[3:])  # a fresh stream restarts


def test_evaluation_draws_leave_the_training_sequence_unchanged():
    uninterrupted = _draws(RandomStream(5), 4)
    stream = RandomStream(5)
    head = _draws(stream, 2)
    stream.train(False)
    validation = _draws(stream, 3)
    assert stream.state_dict()["draws"] == 2
    assert not any(torch.equal(v, t) for v in validation for t in uninterrupted)
    stream.train(True)
    assert _equal(head + _draws(stream, 2), uninterrupted)
    # the same validation after the same training step draws the same numbers
    twin = RandomStream(5)
    _draws(twin, 2)
    twin.train(False)
    assert _equal(_draws(twin, 3), validation)


def test_without_seed_the_global_rng_and_a_constant_state():
    stream = RandomStream(None)
    assert stream.generator("cpu") is None
    stream.train(False)
    assert stream.generator("cpu") is None
    assert stream.state_dict() == {"seed": None, "draws": 0}


def test_load_refuses_another_seed_and_malformed_states():
    with pytest.raises(ValueError, match=r"saved with seed 3 but this miner has seed 4"):
        RandomStream(4).load_state_dict({"seed": 3, "draws": 2})
    with pytest.raises(ValueError, match=r"saved with seed None but this miner has seed 4"):
        RandomStream(4).load_state_dict({"seed": None, "draws": 0})
    for bad in ({"seed": 4}, {"seed": 4, "draws": -1}, {"seed": 4, "draws": 1.5}, [4, 1]):
        with pytest.raises(ValueError):
            RandomStream(4).load_state_dict(bad)


@pytest.mark.parametrize("seed", [1.5, "3", True])
def test_seed_must_be_an_integer(seed):
    with pytest.raises(OptionError, match="seed"):
        RandomStream(seed)


def test_copies_and_pickles():
    stream = RandomStream(2)
    _draws(stream, 2)
    for twin in (copy.deepcopy(stream), pickle.loads(pickle.dumps(stream))):
        assert _equal(_draws(twin, 2), _draws(copy.deepcopy(stream), 2))


# -- resume through the criterion --------------------------------------------------------------

MINER_OPTIONS = {
    "random": {"seed": 3, "batch_size_per_image": 32},
    "soft": {"seed": 3, "temperature": 0.05, "min_negatives": 8},
    "pool": {"seed": 3, "pool_size": 24, "min_negatives": 8},
}


def _criterion(name: str, seed: int = 3):
    mining = {"type": name, name: {**MINER_OPTIONS[name], "seed": seed}}
    return build_criterion("sigmoid", BoxCoder(), mining=mining)


def _batch(step: int):
    """A batch of 2 images, 16 x 16 anchors of 8 px, one or no box, random logits per step."""
    g = torch.Generator().manual_seed(100 + step)
    ys, xs = torch.meshgrid(torch.arange(16.0), torch.arange(16.0), indexing="ij")
    anchors = torch.stack([xs, ys, xs + 1, ys + 1], dim=-1).reshape(-1, 4) * 8.0
    logits = torch.randn(2, len(anchors), 2, generator=g)
    outputs = HeadOutputs(logits, torch.zeros(2, len(anchors), 4), anchors, "sigmoid", (len(anchors),))
    targets = [
        {
            "boxes": torch.tensor([[16.0, 16.0, 48.0, 40.0]]),
            "labels": torch.tensor([1]),
            "ignore_boxes": torch.zeros(0, 4),
        },
        {
            "boxes": torch.zeros(0, 4),
            "labels": torch.zeros(0, dtype=torch.long),
            "ignore_boxes": torch.zeros(0, 4),
        },
    ]
    return outputs, targets


def _selections(criterion, steps) -> list[torch.Tensor]:
    return [criterion(*_batch(step))[1].selected for step in steps]


@pytest.mark.parametrize("name", sorted(MINER_OPTIONS))
def test_a_resumed_criterion_continues_the_miners_draws(name):
    first = _criterion(name)
    _selections(first, range(3))
    state = copy.deepcopy(first.state_dict())
    assert state["_extra_state"]["miner"] == {"seed": 3, "draws": 3}
    first.eval()  # a validation pass in between changes nothing
    _selections(first, range(10, 12))
    first.train()

    resumed = _criterion(name)
    resumed.load_state_dict(state)
    restarted = _criterion(name)  # the old behaviour: a private stream restarting from its seed
    expected = _selections(first, range(3, 6))
    assert _equal(_selections(resumed, range(3, 6)), expected)
    assert not _equal(_selections(restarted, range(3, 6)), expected)


@pytest.mark.parametrize("name", sorted(MINER_OPTIONS))
def test_the_miner_state_survives_a_weights_only_checkpoint(name, tmp_path, capsys):
    first = _criterion(name)
    _selections(first, range(4))
    torch.save({"criterion": first.state_dict(), "iteration": 4}, tmp_path / "checkpoint.pth")
    checkpoint = torch.load(tmp_path / "checkpoint.pth", weights_only=True)
    resumed = _criterion(name)
    resumed.load_state_dict(checkpoint["criterion"])
    assert resumed.miner.state_dict() == {"seed": 3, "draws": 4}
    assert _equal(_selections(resumed, range(4, 6)), _selections(first, range(4, 6)))
    # another seed (a resume whose config change was allowed): the miner starts afresh, said once
    reseeded = _criterion(name, seed=4)
    capsys.readouterr()
    reseeded.load_state_dict(checkpoint["criterion"])
    assert "seed 3 but this miner has seed 4" in capsys.readouterr().err
    assert reseeded.miner.state_dict() == {"seed": 4, "draws": 0}


def test_the_criterion_switches_the_stream_to_evaluation():
    criterion = _criterion("random")
    criterion.eval()
    _selections(criterion, range(2))
    assert criterion.miner.state_dict()["draws"] == 0
    criterion.train()
    _selections(criterion, range(2))
    assert criterion.miner.state_dict()["draws"] == 2


def test_another_miners_state_leaves_the_miner_as_built(capsys):
    """A resume with an allowed change of miner (random -> soft): the soft miner starts afresh."""
    first = _criterion("random")
    _selections(first, range(2))
    state = copy.deepcopy(first.state_dict())
    switched = _criterion("soft")
    switched.load_state_dict(state)
    assert "the checkpoint's miner state is RandomMiner's; SoftMiner starts afresh" in capsys.readouterr().err
    assert switched.miner.state_dict() == {"seed": 3, "draws": 0}
