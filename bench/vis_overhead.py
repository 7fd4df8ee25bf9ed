#!/usr/bin/env python
"""What the mining visualiser costs a training step.

    python bench/vis_overhead.py [--model retinanet_tiny_fpn] [--image-size 256] [--batch-size 4]
                                 [--iters 400] [--period 200] [--mining all] [--device cpu|cuda]

Runs a tiny detector's training step (forward, criterion, backward, SGD step) on one fixed
synthetic batch -- data loading is not what is measured -- alternating step by step
between two set-ups (so load from other processes hits both alike):

- ``off``: ``MiningVisualizer(storage, period=0).maybe_log(...)`` every step (an upper bound of
  the trainer's cost with ``vis.period: 0``, where no ``mining_vis`` hook is built at all);
- ``on``: the same with ``period``; as in the trainer, the event storage is drained into a
  ``TensorBoardWriter`` (a temporary folder) after every step, so encoding is included;

and times one ``log`` call on its own. Reports the mean step time of each, the measured
overhead, and the overhead implied at ``period``: ``log_time / (period * step_time)``
(the measured number stays noisy on a shared CPU; the implied one much less). Goal (docs/architecture.md, "Performance goals"):
off = no cost, on at the default period <= 5%. Never a timed assertion: it only prints.
"""

from __future__ import annotations

import argparse
import statistics
import tempfile
import time

import torch

from detmine.criterion import build_criterion
from detmine.engine.events import EventStorage, TensorBoardWriter
from detmine.modeling import build_model
from detmine.viz.tensorboard import MiningVisualizer


def fake_batch(batch: int, size: int, num_classes: int, device: torch.device, seed: int = 0):
    """Random images and 1-4 random boxes per image; the last image is background-only."""
    g = torch.Generator().manual_seed(seed)
    images = torch.randint(0, 256, (batch, 3, size, size), generator=g, dtype=torch.uint8)
    targets = []
    for b in range(batch):
        n = 0 if b == batch - 1 else int(torch.randint(1, 5, (1,), generator=g))
        xy = torch.rand((n, 2), generator=g) * size * 0.7
        wh = torch.rand((n, 2), generator=g) * size * 0.3 + size * 0.05
        boxes = torch.cat([xy, (xy + wh).clamp(max=size - 1)], dim=1)
        targets.append(
            {
                "boxes": boxes.to(device),
                "labels": torch.randint(1, num_classes + 1, (n,), generator=g).to(device),
                "ignore_boxes": torch.zeros((0, 4), device=device),
                "image_id": b,
                "orig_size": (size, size),
                "input_size": (size, size),
            }
        )
    return images.to(device), targets


def sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--model", default="retinanet_tiny_fpn")
    parser.add_argument("--image-size", type=int, default=256)
    parser.add_argument("--batch-size", type=int, default=4)
    parser.add_argument("--num-classes", type=int, default=3)
    parser.add_argument("--iters", type=int, default=400, help="steps per set-up")
    parser.add_argument("--period", type=int, default=200)
    parser.add_argument("--log-repeats", type=int, default=5, help="timed log() calls")
    parser.add_argument("--mining", default=None, help="miner type (default: the head's default)")
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    args = parser.parse_args()

    device = torch.device(args.device)
    torch.manual_seed(0)
    model = build_model(args.model, args.num_classes, image_size=args.image_size).to(device).train()
    mining = {"type": args.mining} if args.mining else None
    criterion = build_criterion(model.cls_activation, model.box_coder, mining=mining).to(device)
    optimizer = torch.optim.SGD(model.parameters(), lr=1e-3, momentum=0.9)
    images, targets = fake_batch(args.batch_size, args.image_size, args.num_classes, device)
    names = [f"class{k}" for k in range(1, args.num_classes + 1)]
    # the trainer's path: the visualiser writes into the event storage, the writer hook drains it
    # into the run's TensorBoard writer after every step (pictures encoded there)
    board = TensorBoardWriter(tempfile.mkdtemp(prefix="vis_overhead_"))
    board.start(0, args.iters)
    storage = EventStorage()
    vis = {
        "off": MiningVisualizer(storage, period=0),
        "on": MiningVisualizer(storage, period=args.period, class_names=names),
    }
    state = {"it": 1}  # start at 1 so that a round of `period` steps logs exactly once per period

    def step(v: MiningVisualizer):
        outputs = model(images)
        losses, record = criterion(outputs, targets)
        optimizer.zero_grad(set_to_none=True)
        sum(losses.values()).backward()
        optimizer.step()
        v.maybe_log(state["it"], images, targets, outputs, record)
        board.write(storage.drain(), state["it"])
        state["it"] += 1
        return outputs, record

    for _ in range(5):  # warm-up
        step(vis["off"])
    # Paired design: off and on steps alternate, so load from other processes hits both alike.
    times: dict[str, list[float]] = {"off": [], "on": []}
    it = {"off": 1, "on": 1}
    for _ in range(args.iters):
        for mode in ("off", "on"):
            state["it"] = it[mode]
            sync(device)
            t0 = time.perf_counter()
            step(vis[mode])
            sync(device)
            times[mode].append(time.perf_counter() - t0)
            it[mode] += 1
    logs = (it["on"] - 1) // args.period
    outputs, record = step(vis["off"])
    log_times = []
    for i in range(args.log_repeats):
        sync(device)
        t0 = time.perf_counter()
        vis["on"].log(10_000 + i, images, targets, outputs, record)
        board.write(storage.drain(), 10_000 + i)
        sync(device)
        log_times.append(time.perf_counter() - t0)
    board.close()

    off, on = statistics.fmean(times["off"]), statistics.fmean(times["on"])
    log_t = statistics.median(log_times)
    a = outputs.anchors.shape[0]
    print(
        f"{args.model} {args.image_size}px batch {args.batch_size} ({a} anchors/image), {device}, "
        f"{args.iters} steps per mode (alternating), period {args.period} ({logs} logs in 'on')"
    )
    for mode, mean in (("off", off), ("on ", on)):
        median = statistics.median(times[mode.strip()])
        print(f"step, vis {mode}        : {mean * 1e3:8.2f} ms  (mean; median {median * 1e3:.2f} ms)")
    print(f"one log() call       : {log_t * 1e3:8.2f} ms  ({args.log_repeats} calls, median)")
    print(f"measured overhead    : {100 * (on - off) / off:+7.2f} %")
    print(
        f"implied at period {args.period:<4d}: {100 * log_t / (args.period * off):+7.2f} %  (log / (period * step))"
    )


if __name__ == "__main__":
    main()
