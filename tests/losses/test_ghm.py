"""GHM-C (Li, Liu, Wang, AAAI 2019): bin counts, the EMA state, its normalisation through the
criterion, and two DDP processes against one."""

from __future__ import annotations

import dataclasses
import math
import multiprocessing
import os

import numpy as np
import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp

from detmine.box_coder import BoxCoder
from detmine.criterion import build_criterion
from detmine.errors import ConfigError
from detmine.losses import CLS_LOSSES, GHMCLoss
from detmine.structures import HeadOutputs

NUM_CLASSES = 3
LABELS = torch.tensor([[0, 1, 2, 3, -1, 0, 3, 2, 0, 1, 0, 0], [3, 0, 0, -1, 1, 2, 0, 1, 2, 0, -1, 0]])


def _logits(seed: int, shape=(2, 12, NUM_CLASSES), dtype=torch.float64) -> torch.Tensor:
    gen = torch.Generator().manual_seed(seed)
    return torch.randn(*shape, generator=gen, dtype=dtype) * 2.5


def bin_counts(logits, labels, bins):
    """``(counts per bin, tot)`` of the valid elements' ``g = |p - y|``, bins ``[i/M, (i+1)/M)``
    with the last edge at ``1 + 1e-6`` -- written out with numpy."""
    x = logits.detach().double().numpy()
    lab = labels.numpy()
    y = np.zeros_like(x)
    for b, a in zip(*np.nonzero(lab > 0), strict=True):
        y[b, a, lab[b, a] - 1] = 1.0
    g = np.abs(1.0 / (1.0 + np.exp(-x)) - y)
    valid = np.broadcast_to((lab >= 0)[..., None], g.shape)
    edges = [i / bins for i in range(bins + 1)]
    edges[-1] += 1e-6
    counts = np.array(
        [((g >= edges[i]) & (g < edges[i + 1]) & valid).sum() for i in range(bins)], dtype=float
    )
    return counts, float(valid.sum())


def reference_loss(logits, labels, bins, nu, counts, tot):
    """Per anchor: the mean over the K columns of ``beta * BCE``, ``beta = tot / (n * nu_b)``
    (``n`` the non-empty bins of ``counts``), one element at a time."""
    x = logits.detach().double().numpy()
    lab = labels.numpy()
    n = int((counts > 0).sum())
    edges = [i / bins for i in range(bins + 1)]
    edges[-1] += 1e-6
    out = np.zeros(lab.shape)
    for b, a, k in np.ndindex(*x.shape):
        if lab[b, a] < 0:
            continue
        t = 1.0 if lab[b, a] == k + 1 else 0.0
        p = 1.0 / (1.0 + math.exp(-x[b, a, k]))
        g = abs(p - t)
        j = next(i for i in range(bins) if edges[i] <= g < edges[i + 1])
        bce = -(t * math.log(p) + (1 - t) * math.log(1 - p))
        out[b, a] += tot / (n * nu[j]) * bce / x.shape[-1]
    return torch.from_numpy(out)


@pytest.mark.parametrize("bins", [10, 4, 1])
def test_eval_mode_uses_the_batch_counts_and_leaves_the_state(bins):
    logits = _logits(seed=bins)
    loss = GHMCLoss(bins=bins).eval()
    counts, tot = bin_counts(logits, LABELS, bins)
    expected = reference_loss(logits, LABELS, bins, counts, counts, tot)
    torch.testing.assert_close(loss(logits, LABELS), expected)
    assert (loss.bin_count_ema == 0).all() and int(loss.num_updates) == 0


def test_training_updates_the_ema_from_the_first_counts():
    loss = GHMCLoss(bins=6, momentum=0.75).train()
    first, second = _logits(seed=1), _logits(seed=2)
    c1, tot1 = bin_counts(first, LABELS, 6)
    out1 = loss(first, LABELS)
    # the first update sets nu to the counts (mmdetection would hold 0.25 * counts)
    np.testing.assert_allclose(loss.bin_count_ema.numpy(), c1)
    torch.testing.assert_close(out1, reference_loss(first, LABELS, 6, c1, c1, tot1))
    c2, tot2 = bin_counts(second, LABELS, 6)
    out2 = loss(second, LABELS)
    nu2 = 0.75 * c1 + 0.25 * c2  # every bin, an empty one counting 0
    np.testing.assert_allclose(loss.bin_count_ema.numpy(), nu2)
    assert int(loss.num_updates) == 2
    torch.testing.assert_close(out2, reference_loss(second, LABELS, 6, nu2, c2, tot2))
    # evaluation in between leaves the state alone
    loss.eval()(_logits(seed=3), LABELS)
    np.testing.assert_allclose(loss.bin_count_ema.numpy(), nu2)


def test_momentum_zero_uses_each_batch_counts():
    loss = GHMCLoss(bins=5, momentum=0.0).train()
    for seed in (4, 5):
        logits = _logits(seed=seed)
        counts, tot = bin_counts(logits, LABELS, 5)
        torch.testing.assert_close(
            loss(logits, LABELS), reference_loss(logits, LABELS, 5, counts, counts, tot)
        )
        np.testing.assert_allclose(loss.bin_count_ema.numpy(), counts)


def test_the_state_is_in_the_state_dict_and_loads():
    loss = GHMCLoss(bins=4).train()
    loss(_logits(seed=6), LABELS)
    loss(_logits(seed=7), LABELS)
    state = loss.state_dict()
    assert set(state) == {"bin_count_ema", "num_updates"}
    fresh = GHMCLoss(bins=4)
    fresh.load_state_dict(state)
    assert torch.equal(fresh.bin_count_ema, loss.bin_count_ema) and int(fresh.num_updates) == 2
    logits = _logits(seed=8)
    torch.testing.assert_close(fresh.train()(logits, LABELS), loss(logits, LABELS))


def test_g_of_one_lands_in_the_last_bin_and_ignored_anchors_are_not_counted():
    # a positive with p ~ 0 and a negative with p ~ 1: g = 1 (in float32); an ignored anchor
    logits = torch.tensor([[[-200.0, 0.0], [200.0, 0.0], [200.0, 200.0]]])
    labels = torch.tensor([[1, 0, -1]])
    loss = GHMCLoss(bins=4).train()
    loss(logits, labels)
    assert loss.bin_count_ema.tolist() == [0.0, 0.0, 2.0, 2.0]  # g: 1, 0.5 | 1, 0.5


def test_ignored_anchors_give_zero_and_no_gradient():
    logits = _logits(seed=9).requires_grad_(True)
    out = GHMCLoss().train()(logits, LABELS)
    out.sum().backward()
    assert (out[LABELS < 0] == 0).all()
    assert (logits.grad[LABELS < 0] == 0).all()
    assert (logits.grad[LABELS >= 0] != 0).all()


def test_gradcheck_in_float64():
    # eval mode: a training call updates the state, so gradcheck's repeated calls would differ;
    # beta is a constant of each call (no gradient), the gradient is beta * (p - y) / K
    loss = GHMCLoss(bins=10).eval()
    logits = _logits(seed=10, shape=(2, 12, NUM_CLASSES)).requires_grad_(True)
    assert torch.autograd.gradcheck(lambda x: loss(x, LABELS), (logits,))


def test_options_and_attributes():
    assert CLS_LOSSES["ghm_c"] is GHMCLoss
    assert GHMCLoss.activation == "sigmoid" and GHMCLoss.normalize_by == "selected"
    assert CLS_LOSSES.options("ghm_c") == ["bins", "momentum"]
    with pytest.raises(ConfigError, match=r"^loss\.ghm_c\.bins must be >= 1"):
        CLS_LOSSES.build("ghm_c", {"bins": 0}, key="loss.ghm_c")
    with pytest.raises(ConfigError, match=r"^loss\.ghm_c\.momentum must lie in \[0, 1\)"):
        CLS_LOSSES.build("ghm_c", {"momentum": 1.0}, key="loss.ghm_c")


# --- through the criterion ----------------------------------------------------------------------


def _batch(seed: int, counts: tuple[int, ...] = (3, 0, 1, 5)) -> tuple[HeadOutputs, list[dict]]:
    """4 images with ``counts`` objects and a 32 px ignore region (its anchors are ignored), 64
    anchors on a 8x8 grid of 16 px boxes."""
    gen = torch.Generator().manual_seed(seed)
    ys, xs = torch.meshgrid(torch.arange(8.0), torch.arange(8.0), indexing="ij")
    x0, y0 = xs.flatten() * 16, ys.flatten() * 16
    anchors = torch.stack([x0, y0, x0 + 16, y0 + 16], dim=1)
    targets = []
    for count in counts:
        idx = torch.randperm(64, generator=gen)[:count]
        corner = torch.randint(0, 7, (2,), generator=gen).float() * 16
        ignore = torch.cat([corner, corner + 32]).view(1, 4)
        targets.append(
            {
                "boxes": anchors[idx] + torch.rand(count, 4, generator=gen) * 4,
                "labels": torch.randint(1, NUM_CLASSES + 1, (count,), generator=gen),
                "ignore_boxes": ignore,
                "image_id": len(targets),
                "orig_size": (128, 128),
                "input_size": (128, 128),
            }
        )
    outputs = HeadOutputs(
        cls_logits=torch.randn(4, 64, NUM_CLASSES, generator=gen) * 2,
        box_deltas=torch.randn(4, 64, 4, generator=gen) * 0.1,
        anchors=anchors,
        cls_activation="sigmoid",
        level_counts=(64,),
    )
    return outputs, targets


def _criterion(momentum: float = 0.75):
    return build_criterion(
        "sigmoid",
        BoxCoder(weights=(1.0, 1.0, 1.0, 1.0)),
        matching={"preset": "retinanet"},
        loss={"cls": "ghm_c", "ghm_c": {"bins": 10, "momentum": momentum}},
        mining={"type": "all"},
    ).train()


def test_criterion_value_is_the_papers_loss():
    """With ``mining: all`` the criterion's cls loss is ``sum BCE / (n nu_b)`` over the valid
    elements (the paper's L_GHM-C, mmdetection's GHMC value)."""
    criterion = _criterion()
    assert criterion.normalize_by == "selected"
    nu = None
    for step in range(3):
        outputs, targets = _batch(seed=step)
        losses, record = criterion(outputs, targets)
        labels = record.labels
        assert (labels == -1).any() and (labels > 0).any()  # the ignore band and positives
        counts, _ = bin_counts(outputs.cls_logits, labels, 10)
        nu = counts if nu is None else 0.75 * nu + 0.25 * counts
        n = int((counts > 0).sum())
        x = outputs.cls_logits.double().numpy()
        expected = 0.0
        edges = [i / 10 for i in range(11)]
        edges[-1] += 1e-6
        for b, a, k in np.ndindex(*x.shape):
            y = int(labels[b, a])
            if y < 0:
                continue
            t = 1.0 if y == k + 1 else 0.0
            p = 1.0 / (1.0 + math.exp(-x[b, a, k]))
            j = next(i for i in range(10) if edges[i] <= abs(p - t) < edges[i + 1])
            expected += -(t * math.log(p) + (1 - t) * math.log(1 - p)) / (n * nu[j])
        assert losses["cls"].item() == pytest.approx(expected, rel=1e-5)
    assert "cls_loss.bin_count_ema" in criterion.state_dict()
    np.testing.assert_allclose(criterion.state_dict()["cls_loss.bin_count_ema"].numpy(), nu)


# --- two DDP processes against one --------------------------------------------------------------

#: objects per image of each step; the last step is background only.
STEPS = [(3, 0, 1, 5), (6, 2, 0, 1), (0, 4, 4, 2), (0, 0, 0, 0)]


def _run_steps(images: slice, world: int) -> list[tuple[float, list[float], int]]:
    """Per step: ``(cls loss averaged over the processes, nu, num_updates)`` of a GHM-C
    criterion on ``images`` of each step's batch."""
    criterion, rows = _criterion(), []
    for step, counts in enumerate(STEPS):
        outputs, targets = _batch(seed=10 + step, counts=counts)
        local = dataclasses.replace(
            outputs, cls_logits=outputs.cls_logits[images], box_deltas=outputs.box_deltas[images]
        )
        losses, _ = criterion(local, targets[images])
        cls = losses["cls"].detach().clone()
        if world > 1:
            dist.all_reduce(cls)
        ghm = criterion.cls_loss
        rows.append((cls.item() / world, ghm.bin_count_ema.tolist(), int(ghm.num_updates)))
    return rows


def _worker(rank: int, world: int, init_file: str, result_file: str) -> None:
    dist.init_process_group("gloo", init_method=f"file://{init_file}", rank=rank, world_size=world)
    try:
        rows = _run_steps(slice(2 * rank, 2 * rank + 2), world)
        gathered: list = [None] * world
        dist.all_gather_object(gathered, rows)
        if rank == 0:
            torch.save(gathered, result_file)
    finally:
        dist.destroy_process_group()


def test_two_processes_hold_the_state_and_loss_of_one(tmp_path):
    single = _run_steps(slice(0, 4), 1)
    os.environ.setdefault("OMP_NUM_THREADS", "1")
    result = tmp_path / "ghm.pt"
    # forkserver: torch and detmine are imported once, by the server, instead of by each spawned
    # process (3x faster on a busy 2-core machine); the server runs no torch op, so the processes
    # forked from it start as clean as spawned ones
    multiprocessing.get_context("forkserver").set_forkserver_preload(["torch", "detmine.criterion"])
    mp.start_processes(
        _worker, args=(2, str(tmp_path / "init"), str(result)), nprocs=2, join=True, start_method="forkserver"
    )
    ranks = torch.load(result)
    assert len(ranks) == 2
    for step, one in enumerate(single):
        for rows in ranks:
            loss, nu, updates = rows[step]
            assert updates == one[2] == step + 1
            assert nu == pytest.approx(one[1], rel=1e-12), (step, nu, one[1])
            assert loss == pytest.approx(one[0], rel=1e-5), (step, loss, one[0])
    # the halves differ: a process's own counts would give another state
    assert single[0][1] != pytest.approx(_run_steps(slice(0, 2), 1)[0][1], rel=1e-3)
