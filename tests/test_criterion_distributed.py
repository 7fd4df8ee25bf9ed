"""Under DDP the criterion normalises by the global batch's positives: the mean of the
per-process losses (what gradient averaging computes) equals one process on the whole batch."""

from __future__ import annotations

import dataclasses
import os

import torch
import torch.distributed as dist
import torch.multiprocessing as mp

from detmine.box_coder import BoxCoder
from detmine.criterion import build_criterion
from detmine.structures import HeadOutputs

NUM_CLASSES = 3


def _batch() -> tuple[HeadOutputs, list[dict]]:
    """4 images with unequal numbers of objects, 64 anchors on a 8x8 grid of 16 px boxes."""
    gen = torch.Generator().manual_seed(0)
    ys, xs = torch.meshgrid(torch.arange(8.0), torch.arange(8.0), indexing="ij")
    x0, y0 = (xs.flatten() * 16), (ys.flatten() * 16)
    anchors = torch.stack([x0, y0, x0 + 16, y0 + 16], dim=1)
    targets = []
    for count in (3, 0, 1, 5):
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
