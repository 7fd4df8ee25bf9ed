#!/usr/bin/env python
"""Loss side (matching + per-anchor loss + mining + box loss, forward and backward): detmine vs torchvision.

    python bench/loss_side.py [--case ssd|retinanet|all] [--device cpu|cuda] [--iters 3] [--seed 0]
                              [--fresh-gradients]

Cases (the sizes of docs/architecture.md, "Performance goals"):

- ``ssd``: SSD300, 8732 default boxes, batch 32, 81 softmax columns. detmine:
  ``build_criterion("softmax", ...)`` with the ``ssd`` preset and the ``ssd`` miner
  (3:1, ``min_negatives=0``). torchvision: its per-image ``box_iou`` + ``SSDMatcher``
  loop (as in ``SSD.forward``) then ``SSD.compute_loss``.
- ``retinanet``: 640 px, P3-P7 x 9 anchors = 76725, batch 8, 80 sigmoid classes.
  detmine: ``retinanet`` preset, focal loss, ``all`` miner, L1 box loss. torchvision:
  ``RetinaNet.compute_loss`` (its matcher loop) with ``RetinaNetHead.compute_loss``.

Both sides get the same logits, deltas, anchors and targets (random, seeded: 1-20
objects per image, COCO-like sizes) in one process, and are timed forward + backward
(median and best of ``--iters`` after one warm-up, the two sides interleaved). Peak memory: on CUDA
``torch.cuda.max_memory_allocated`` above the inputs; on CPU the peak RSS above the
starting RSS of a fresh child process (``/proc/self/clear_refs`` + ``VmHWM``), one
child per side, so allocator caches of one side cannot hide the other's peak.

Values: the SSD losses must agree directly. torchvision's RetinaNet normalises per
image (``mean_b L_b / P_b``) while detmine normalises per batch (``sum_b L_b / sum_b P_b``),
so for that case detmine's per-image sums are re-weighted to torchvision's normalisation
before the difference is taken. Exits 1 if a difference exceeds 1e-4 (relative), never
on timings.

On the CPU detmine's losses write their logits-sized gradient into memory kept from the
previous step (``detmine.losses._cpu.GRADIENT_BUFFER``; the warm-up call fills it, as the
first training step does). ``--fresh-gradients`` switches that off, so that every step
allocates (and page-faults) a fresh gradient as torchvision's side does: the difference is
the cost of those page faults.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import platform
import statistics
import subprocess
import sys
import time
from types import SimpleNamespace

import torch
from _memory import reset_peak_rss, status_kib
from torchvision.models.detection._utils import BoxCoder as TVBoxCoder
from torchvision.models.detection._utils import Matcher as TVMatcher
from torchvision.models.detection._utils import SSDMatcher
from torchvision.models.detection.retinanet import RetinaNet, RetinaNetHead
from torchvision.models.detection.ssd import SSD
from torchvision.ops import box_iou

from detmine.box_coder import BoxCoder
from detmine.criterion import build_criterion
from detmine.losses import L1Loss
from detmine.losses._cpu import GRADIENT_BUFFER
from detmine.structures import HeadOutputs

SSD_WEIGHTS = (10.0, 10.0, 5.0, 5.0)


def grid_anchors(image_size: int, levels: list[tuple[int, list[tuple[float, float]]]]) -> torch.Tensor:
    """``[A, 4]`` xyxy anchors: per level (feature size, [(w, h), ...]) boxes centred on each cell."""
    out = []
    for size, shapes in levels:
        step = image_size / size
        c = (torch.arange(size, dtype=torch.float32) + 0.5) * step
        cy, cx = torch.meshgrid(c, c, indexing="ij")
        centres = torch.stack([cx, cy], -1).reshape(-1, 1, 2)
        wh = torch.tensor(shapes, dtype=torch.float32).view(1, -1, 2)
        out.append(torch.cat([centres - wh / 2, centres + wh / 2], -1).reshape(-1, 4))
    return torch.cat(out)


def ssd300_anchors() -> torch.Tensor:
    """8732 SSD300 default boxes (paper scales 0.1, 0.2..0.9; ratios 2 / 2, 3)."""
    sizes, ratios = [38, 19, 10, 5, 3, 1], [[2], [2, 3], [2, 3], [2, 3], [2], [2]]
    scales = [0.1] + [0.2 + 0.7 * k / 5 for k in range(6)]
    levels = []
    for k, (size, rs) in enumerate(zip(sizes, ratios, strict=True)):
        s, s_next = scales[k] * 300, math.sqrt(scales[k] * scales[k + 1]) * 300
        shapes = [(s, s), (s_next, s_next)]
        for r in rs:
            shapes += [(s * math.sqrt(r), s / math.sqrt(r)), (s / math.sqrt(r), s * math.sqrt(r))]
        levels.append((size, shapes))
    return grid_anchors(300, levels)


def retinanet_anchors(image_size: int = 640) -> torch.Tensor:
    """P3-P7 anchors, sizes 32..512 x 2^{0, 1/3, 2/3} x ratios 0.5, 1, 2 (76725 at 640 px)."""
    levels = []
    for p in range(3, 8):
        base = 4 * 2**p
        shapes = []
        for octave in (0, 1 / 3, 2 / 3):
            for ratio in (0.5, 1.0, 2.0):
                s = base * 2**octave
                shapes.append((s / math.sqrt(ratio), s * math.sqrt(ratio)))
        levels.append((math.ceil(image_size / 2**p), shapes))
    return grid_anchors(image_size, levels)


def make_inputs(case: str, seed: int, device: str) -> dict:
    gen = torch.Generator().manual_seed(seed)
    if case == "ssd":
        anchors, batch, columns, image_size = ssd300_anchors(), 32, 81, 300
    else:
        anchors, batch, columns, image_size = retinanet_anchors(640), 8, 80, 640
    num_classes = 80
    targets = []
    for i in range(batch):
        n = int(torch.randint(1, 21, (1,), generator=gen))
        size = torch.exp(torch.empty(n, 2).uniform_(math.log(12), math.log(image_size * 0.8), generator=gen))
        xy = torch.rand(n, 2, generator=gen) * (image_size - size)
        boxes = torch.cat([xy, xy + size], 1)
        labels = torch.randint(1, num_classes + 1, (n,), generator=gen)
        targets.append(
            {
                "boxes": boxes.to(device),
                "labels": labels.to(device),
                "ignore_boxes": torch.zeros(0, 4, device=device),
                "image_id": i,
            }
        )
    logits = torch.randn(batch, len(anchors), columns, generator=gen)
    if case == "retinanet":
        logits -= 4.6  # the head's prior pi = 0.01
    deltas = torch.randn(batch, len(anchors), 4, generator=gen) * 0.5
    return {
        "anchors": anchors.to(device),
        "targets": targets,
        "logits": logits.to(device),
        "deltas": deltas.to(device),
    }


def leaves(inputs: dict) -> tuple[torch.Tensor, torch.Tensor]:
    """The input leaves with their gradients cleared (no copy: both sides reuse them)."""
    for key in ("logits", "deltas"):
        inputs[key].requires_grad_(True).grad = None
    return inputs["logits"], inputs["deltas"]


def ours_step(case: str, inputs: dict, criterion) -> tuple[dict, object, torch.Tensor, torch.Tensor]:
    logits, deltas = leaves(inputs)
    anchors = inputs["anchors"]
    activation = criterion.cls_loss.activation  # the head these logits stand for
    outputs = HeadOutputs(logits, deltas, anchors, cls_activation=activation, level_counts=(len(anchors),))
    losses, record = criterion(outputs, inputs["targets"])
    (losses["cls"] + losses["box"]).backward()
    return losses, record, logits, deltas


def tv_step(case: str, inputs: dict) -> dict:
    logits, deltas = leaves(inputs)
    anchors, targets = inputs["anchors"], inputs["targets"]
    if case == "ssd":
        tv_targets = [{"boxes": t["boxes"], "labels": t["labels"]} for t in targets]
        matcher = SSDMatcher(0.5)
        matched = []
        for t in tv_targets:  # SSD.forward's matching loop
            if t["boxes"].numel() == 0:
                matched.append(torch.full((len(anchors),), -1, dtype=torch.int64, device=anchors.device))
            else:
                matched.append(matcher(box_iou(t["boxes"], anchors)))
        owner = SimpleNamespace(box_coder=TVBoxCoder(SSD_WEIGHTS), neg_to_pos_ratio=3)
        out = SSD.compute_loss(
            owner,
            tv_targets,
            {"cls_logits": logits, "bbox_regression": deltas},
            [anchors] * len(targets),
            matched,
        )
    else:
        tv_targets = [{"boxes": t["boxes"], "labels": t["labels"] - 1} for t in targets]
        head = _RETINA_HEAD.setdefault(str(anchors.device), RetinaNetHead(8, 9, 80).to(anchors.device))
        owner = SimpleNamespace(proposal_matcher=TVMatcher(0.5, 0.4, True), head=head)
        out = RetinaNet.compute_loss(
            owner, tv_targets, {"cls_logits": logits, "bbox_regression": deltas}, [anchors] * len(targets)
        )
    (out["classification"] + out["bbox_regression"]).backward()
    return out


_RETINA_HEAD: dict = {}


def build_ours(case: str):
    if case == "ssd":
        return build_criterion(
            "softmax",
            BoxCoder(SSD_WEIGHTS),
            matching={"preset": "ssd"},
            loss={"box": "smooth_l1"},
            mining={"type": "ssd", "ssd": {"min_negatives": 0}},
        )
    return build_criterion(
        "sigmoid",
        BoxCoder((1, 1, 1, 1)),
        matching={"preset": "retinanet"},
        loss={"cls": "focal", "box": "l1"},
        mining={"type": "all"},
    )


def sync(device: str) -> None:
    if device.startswith("cuda"):
        torch.cuda.synchronize()


def time_both(fns: dict, iters: int, device: str) -> dict[str, list[float]]:
    """Seconds per call of each function, interleaved (a, b, a, b, ...) after one warm-up
    each, so a burst of load from other processes hits both sides alike."""
    for fn in fns.values():
        fn()
    times: dict[str, list[float]] = {name: [] for name in fns}
    for _ in range(iters):
        for name, fn in fns.items():
            sync(device)
            t0 = time.perf_counter()
            fn()
            sync(device)
            times[name].append(time.perf_counter() - t0)
    return times


def compare(case: str, inputs: dict, ours: tuple, ref: dict) -> tuple[float, float]:
    """(max abs diff, max relative diff) of the (cls, box) values, in torchvision's normalisation."""
    losses, record, _, deltas = ours
    cls, box = losses["cls"].detach(), losses["box"].detach()
    if case == "retinanet":  # re-weight our per-image sums to torchvision's per-image normalisation
        per_image_pos = record.positives.sum(1).clamp(min=1).to(cls.dtype)
        cls = (torch.where(record.selected, record.cls_loss, 0.0).sum(1) / per_image_pos).mean()
        coder, l1, per_image = BoxCoder((1, 1, 1, 1)), L1Loss(), []
        for b, t in enumerate(inputs["targets"]):
            pos = record.positives[b]
            gt = t["boxes"][record.matched_gt[b][pos]]
            per_image.append(l1(deltas[b][pos].detach(), gt, inputs["anchors"][pos], coder))
        box = (torch.stack(per_image) / per_image_pos).mean()
    pairs = [(cls, ref["classification"].detach()), (box, ref["bbox_regression"].detach())]
    abs_diff = max(float((a - b).abs()) for a, b in pairs)
    rel_diff = max(float((a - b).abs() / b.abs().clamp(min=1e-12)) for a, b in pairs)
    return abs_diff, rel_diff


def peak_memory_mib(case: str, side: str, seed: int, device: str) -> float:
    """Peak memory of one forward + backward above the inputs (CUDA: allocator; CPU: RSS of a child)."""
    if device.startswith("cuda"):
        inputs = make_inputs(case, seed, device)
        criterion = build_ours(case).to(device) if side == "ours" else None
        fn = (
            (lambda: ours_step(case, inputs, criterion))
            if side == "ours"
            else (lambda: tv_step(case, inputs))
        )
        fn()
        torch.cuda.synchronize()
        base = torch.cuda.memory_allocated()
        torch.cuda.reset_peak_memory_stats()
        fn()
        torch.cuda.synchronize()
        return (torch.cuda.max_memory_allocated() - base) / 2**20
    cmd = [sys.executable, __file__, "--case", case, "--seed", str(seed), "--_memory-child", side]
    out = subprocess.run(cmd, check=True, capture_output=True, text=True, env=os.environ.copy())
    return float(out.stdout.strip().splitlines()[-1])


def memory_child(case: str, side: str, seed: int) -> None:
    inputs = make_inputs(case, seed, "cpu")
    criterion = build_ours(case) if side == "ours" else None
    base = reset_peak_rss()
    if side == "ours":
        ours_step(case, inputs, criterion)
    else:
        tv_step(case, inputs)
    print((status_kib("VmHWM") - base) / 1024)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--case", choices=["ssd", "retinanet", "all"], default="all")
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--iters", type=int, default=3)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--no-memory", action="store_true", help="skip the peak-memory measurement")
    parser.add_argument(
        "--fresh-gradients",
        action="store_true",
        help="detmine allocates a fresh gradient every step (no reuse of the last step's memory)",
    )
    parser.add_argument("--_memory-child", dest="memory_child", default=None, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.memory_child:
        memory_child(args.case, args.memory_child, args.seed)
        return 0

    cases = ["ssd", "retinanet"] if args.case == "all" else [args.case]
    GRADIENT_BUFFER.enabled = GRADIENT_BUFFER.enabled and not args.fresh_gradients
    print(
        f"# detmine loss side vs torchvision | torch {torch.__version__} | device {args.device} | "
        f"threads {torch.get_num_threads()} | {platform.processor() or platform.machine()} | iters {args.iters}"
        f" | gradient reuse {'on' if GRADIENT_BUFFER.enabled else 'off'}"
    )
    header = (
        f"{'case':<10} {'tv med':>9} {'tv best':>8} {'ours med':>9} {'ours best':>8} {'x med':>8} {'x best':>8} "
        f"{'tv MiB':>7} {'ours MiB':>8} {'max|diff|':>10} {'rel diff':>8}"
    )
    print(header)
    ok = True
    rows = []
    for case in cases:
        inputs = make_inputs(case, args.seed, args.device)
        criterion = build_ours(case).to(args.device)
        ours = ours_step(case, inputs, criterion)
        ref = tv_step(case, inputs)
        abs_diff, rel_diff = compare(case, inputs, ours, ref)
        ok &= rel_diff <= 1e-4
        times = time_both(
            {
                "tv": lambda c=case, i=inputs: tv_step(c, i),
                "ours": lambda c=case, i=inputs, cr=criterion: ours_step(c, i, cr),
            },
            args.iters,
            args.device,
        )
        t_tv, t_ours = times["tv"], times["ours"]
        mem_tv = mem_ours = float("nan")
        if not args.no_memory:
            mem_tv = peak_memory_mib(case, "torchvision", args.seed, args.device)
            mem_ours = peak_memory_mib(case, "ours", args.seed, args.device)
        med_tv, med_ours = statistics.median(t_tv) * 1e3, statistics.median(t_ours) * 1e3
        best_tv, best_ours = min(t_tv) * 1e3, min(t_ours) * 1e3
        row = (
            f"{case:<10} {med_tv:>9.1f} {best_tv:>8.1f} {med_ours:>9.1f} {best_ours:>8.1f} "
            f"{med_tv / med_ours:>7.2f}x {best_tv / best_ours:>7.2f}x "
            f"{mem_tv:>7.0f} {mem_ours:>8.0f} {abs_diff:>10.2e} {rel_diff:>8.1e}"
        )
        print(row, flush=True)
        rows.append(
            {
                "case": case,
                "tv_ms": t_tv,
                "ours_ms": t_ours,
                "tv_mib": mem_tv,
                "ours_mib": mem_ours,
                "abs_diff": abs_diff,
            }
        )
    print("# ms per forward + backward (median / best of --iters, interleaved); x = torchvision / detmine;")
    print("# MiB: peak memory above the inputs; diff: loss values in torchvision's normalisation")
    print("# json " + json.dumps(rows))
    if not ok:
        print(
            "error: detmine and torchvision loss values differ (relative difference > 1e-4)", file=sys.stderr
        )
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
