"""Under DDP the criterion normalises by the global batch's positives: the mean of the
per-process losses (what gradient averaging computes) equals one process on the whole batch."""

from __future__ import annotations

import dataclasses
import os

import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp

from detmine.box_coder import BoxCoder
from detmine.criterion import build_criterion
from detmine.structures import HeadOutputs

NUM_CLASSES = 3


def _batch(seed: int = 0, counts: tuple[int, ...] = (3, 0, 1, 5)) -> tuple[HeadOutputs, list[dict]]:
    """4 images with ``counts`` objects, 64 anchors on a 8x8 grid of 16 px boxes."""
    gen = torch.Generator().manual_seed(seed)
    ys, xs = torch.meshgrid(torch.arange(8.0), torch.arange(8.0), indexing="ij")
    x0, y0 = (xs.flatten() * 16), (ys.flatten() * 16)
    anchors = torch.stack([x0, y0, x0 + 16, y0 + 16], dim=1)
    targets = []
    for count in counts:
        idx = torch.randperm(64, generator=gen)[:count]
        boxes = anchors[idx] + torch.rand(count, 4, generator=gen)
        targets.append(
            {
                "boxes": boxes,
                "labels": torch.randint(1, NUM_CLASSES + 1, (count,), generator=gen),
                "ignore_boxes": torch.zeros(0, 4),
                "image_id": len(targets),
                "orig_size": (128, 128),
                "input_size": (128, 128),
            }
        )
    logits = torch.randn(4, 64, NUM_CLASSES, generator=gen)
    deltas = torch.randn(4, 64, 4, generator=gen) * 0.1
    outputs = HeadOutputs(
        cls_logits=logits, box_deltas=deltas, anchors=anchors, cls_activation="sigmoid", level_counts=(64,)
    )
    return outputs, targets


def _criterion():
    return build_criterion(
        "sigmoid",
        BoxCoder(weights=(1.0, 1.0, 1.0, 1.0)),
        matching={"preset": "retinanet"},
        loss={"cls": "focal"},
        mining={"type": "all"},
    )


def _loss(outputs: HeadOutputs, targets: list[dict]) -> torch.Tensor:
    losses, _ = _criterion().train()(outputs, targets)
    return losses["cls"] + losses["box"]


def _worker(rank: int, world: int, init_file: str, result_file: str) -> None:
    dist.init_process_group("gloo", init_method=f"file://{init_file}", rank=rank, world_size=world)
    try:
        outputs, targets = _batch()
        half = slice(2 * rank, 2 * rank + 2)
        local = dataclasses.replace(
            outputs, cls_logits=outputs.cls_logits[half], box_deltas=outputs.box_deltas[half]
        )
        loss = _loss(local, targets[half]).detach()
        dist.all_reduce(loss)
        if rank == 0:
            torch.save(loss / world, result_file)
    finally:
        dist.destroy_process_group()


def test_mean_of_process_losses_equals_global_batch_loss(tmp_path):
    outputs, targets = _batch()
    single = _loss(outputs, targets)
    result = tmp_path / "ddp_loss.pt"
    init_file = tmp_path / "init"
    os.environ.setdefault("OMP_NUM_THREADS", "1")
    mp.spawn(_worker, args=(2, str(init_file), str(result)), nprocs=2, join=True)
    ddp = torch.load(result)
    # the two halves have 3 and 6 objects: a per-process normaliser would differ clearly
    assert torch.allclose(ddp, single, rtol=1e-5, atol=1e-6), (ddp, single)


# --- several training steps, the EMA normaliser included (issue 19 B) ---------------------------

#: (name, loss section, mining section) of the criteria stepped in one and in two processes.
CASES = {
    "focal_ema": ({"cls": "focal", "normalizer": "ema"}, {"type": "all"}),
    "ohem_ema": (
        {"cls": "balanced_ce", "normalizer": "ema", "balanced_ce": {"alpha": 0.5}},
        {"type": "ohem", "ohem": {"batch_size_per_image": 16, "pre_nms_topk": 64}},
    ),
    "focal_batch": ({"cls": "focal"}, {"type": "all"}),
}
#: objects per image of each step; the last step has no object at all (a background-only batch).
STEPS = [(3, 0, 1, 5), (6, 2, 0, 1), (0, 4, 4, 2), (1, 1, 7, 0), (0, 0, 0, 0)]


def _case_criterion(name: str):
    loss, mining = CASES[name]
    return build_criterion(
        "sigmoid",
        BoxCoder(weights=(1.0, 1.0, 1.0, 1.0)),
        matching={"preset": "retinanet"},
        loss=loss,
        mining=mining,
    ).train()


def _run_steps(images: slice, world: int) -> dict[str, list[tuple[float, float, float, int]]]:
    """For each case, per step: ``(cls, box, count_ema, counted)`` of this process's loss on
    ``images`` of each step's batch; the losses summed over the processes and divided by
    ``world`` (what DDP's gradient averaging computes); ``counted`` the global number of
    positives (positives normaliser) or selected anchors."""
    results = {}
    for name in CASES:
        criterion, rows = _case_criterion(name), []
        for step, counts in enumerate(STEPS):
            outputs, targets = _batch(seed=step + 1, counts=counts)
            local = dataclasses.replace(
                outputs, cls_logits=outputs.cls_logits[images], box_deltas=outputs.box_deltas[images]
            )
            losses, record = criterion(local, targets[images])
            mask = record.positives if criterion.normalize_by == "positives" else record.selected
            values = torch.stack([losses["cls"].detach(), losses["box"].detach(), mask.sum().float()])
            if world > 1:
                dist.all_reduce(values)
            cls, box, counted = (values / torch.tensor([world, world, 1.0])).tolist()
            rows.append((cls, box, float(criterion.count_ema), int(counted)))
        results[name] = rows
    return results


def _steps_worker(rank: int, world: int, init_file: str, result_file: str) -> None:
    dist.init_process_group("gloo", init_method=f"file://{init_file}", rank=rank, world_size=world)
    try:
        results = _run_steps(slice(2 * rank, 2 * rank + 2), world)
        gathered = [None] * world
        dist.all_gather_object(gathered, results)
        if rank == 0:
            torch.save(gathered, result_file)
    finally:
        dist.destroy_process_group()


@pytest.fixture(scope="module")
def stepped(tmp_path_factory) -> tuple[dict, list[dict]]:
    """The per-step results of one process on the whole batches and of each of two gloo
    processes on half of them (one spawn for every case)."""
    tmp = tmp_path_factory.mktemp("ddp_steps")
    os.environ.setdefault("OMP_NUM_THREADS", "1")
    mp.spawn(_steps_worker, args=(2, str(tmp / "init"), str(tmp / "steps.pt")), nprocs=2, join=True)
    return _run_steps(slice(0, 4), 1), torch.load(tmp / "steps.pt")


@pytest.mark.parametrize("name", list(CASES))
def test_two_processes_equal_one_over_several_steps(stepped, name):
    single, ranks = stepped
    for step, (one, *per_rank) in enumerate(zip(single[name], *(r[name] for r in ranks), strict=True)):
        for two in per_rank:  # every process holds the same, all-reduced numbers
            assert two[3] == one[3], (name, step, "counted", one, two)
            assert two[:3] == pytest.approx(one[:3], rel=1e-5, abs=1e-6), (name, step, one, two)


@pytest.mark.parametrize("name", ["focal_ema", "ohem_ema"])
def test_ema_is_of_the_global_count(stepped, name):
    """The EMA state, in one process and in each of two, against the recurrence computed by
    hand from the counts (start 100, momentum 0.9) -- the global batch's counts, not a rank's."""
    single, ranks = stepped
    ema, expected = 100.0, []
    for *_, counted in single[name]:
        ema = 0.9 * ema + 0.1 * counted
        expected.append(ema)
    assert [row[3] for row in single[name]][0] > 0  # a count the EMA can be told from
    for rows in (single[name], *(r[name] for r in ranks)):
        assert [row[2] for row in rows] == pytest.approx(expected, rel=1e-6)
