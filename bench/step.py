#!/usr/bin/env python
"""One whole training step (forward + loss + backward + SGD step): detmine vs torchvision,
and the cost of mining (``ssd``, ``ohem`` against ``all``) inside our step.

    python bench/step.py [--case ssdlite|retinanet|all] [--device cpu|cuda] [--batch N]
                         [--iters N] [--retinanet-backbone resnet50|resnet18] [--json PATH]

Cases (random weights, no downloads):

- ``ssdlite``: detmine ``ssdlite320_mobilenet_v3`` (softmax CE) vs torchvision
  ``ssdlite320_mobilenet_v3_large(weights=None, weights_backbone=None)``, 320 px.
  torchvision always mines 3:1 (its ``SSD.compute_loss``); ours is timed with
  ``mining.type`` ``all``, ``ssd`` (3:1) and ``ohem`` (defaults: 128 per image,
  NMS 0.7 over the decoded boxes).
- ``retinanet``: detmine ``retinanet_resnet50_fpn`` (sigmoid focal, 640 px, 76725
  anchors) vs torchvision ``retinanet_resnet50_fpn(weights=None, weights_backbone=None,
  min_size=640, max_size=640)`` (so its transform does not resize to 800). With
  ``--retinanet-backbone resnet18``: our ``retinanet_resnet18_fpn`` vs torchvision's
  ``RetinaNet`` class over a ResNet-18 FPN (P3-P7), same size.

Both sides see the same images (random uint8; torchvision gets them as float 0..1, as
its API wants) and the same targets (1-10 boxes per image, COCO-like sizes, labels
1..80). torchvision's classifier has K + 1 columns (its labels index the columns
directly, 0 unused); ours has K (sigmoid) or K + 1 (softmax, column 0 background).

Protocol: one warm-up step per configuration, then ``--iters`` rounds in which every
configuration takes one step in turn (so a busy shared CPU slows all of them alike);
median and best are reported. Phases of our step: forward / criterion (matching, loss,
mining, record) / backward + SGD step, and the miner alone (a timing proxy around
``criterion.miner``). Mining overhead is reported three ways, against the median
``all`` step: whole step, criterion phase, miner alone. On CUDA every phase boundary
synchronises. Timings only; nothing here asserts a speed.
"""

from __future__ import annotations

import argparse
import datetime
import json
import math
import platform
import statistics
import sys
import time
from collections.abc import Callable

import torch
import torchvision
from torchvision.models import resnet18
from torchvision.models.detection import retinanet_resnet50_fpn, ssdlite320_mobilenet_v3_large
from torchvision.models.detection.backbone_utils import _resnet_fpn_extractor
from torchvision.models.detection.retinanet import RetinaNet
from torchvision.ops.feature_pyramid_network import LastLevelP6P7

from detmine.criterion import build_criterion
from detmine.modeling import build_model
from detmine.structures import Target

NUM_CLASSES = 80
MINING = ("all", "ssd", "ohem")
CPU_BATCH = {"ssdlite": 8, "retinanet": 2}
CUDA_BATCH = {"ssdlite": 32, "retinanet": 8}


def sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def make_batch(batch: int, size: int, seed: int, device: torch.device) -> tuple[torch.Tensor, list[Target]]:
    """Random uint8 images ``[B, 3, size, size]`` and 1-10 boxes per image (side 3%-60% of the image)."""
    g = torch.Generator().manual_seed(seed)
    images = torch.randint(0, 256, (batch, 3, size, size), dtype=torch.uint8, generator=g)
    targets: list[Target] = []
    for i in range(batch):
        n = int(torch.randint(1, 11, (1,), generator=g))
        wh = size * torch.empty(n, 2).uniform_(math.log(0.03), math.log(0.6), generator=g).exp()
        xy = torch.rand(n, 2, generator=g) * (size - wh)
        boxes = torch.cat([xy, xy + wh], dim=1)
        targets.append(
            Target(
                boxes=boxes.to(device),
                labels=torch.randint(1, NUM_CLASSES + 1, (n,), generator=g).to(device),
                ignore_boxes=torch.zeros((0, 4), device=device),
                image_id=i,
                orig_size=(size, size),
                input_size=(size, size),
            )
        )
    return images.to(device), targets


class TimedMiner:
    """Proxy around a miner that accumulates its wall time (synchronising on CUDA)."""

    def __init__(self, miner, device: torch.device) -> None:
        self.miner = miner
        self.box_source = miner.box_source
        self.normalize_by = miner.normalize_by
        self.device = device
        self.elapsed = 0.0

    def __call__(self, cls_loss, labels, boxes):
        sync(self.device)
        t = time.perf_counter()
        out = self.miner(cls_loss, labels, boxes)
        sync(self.device)
        self.elapsed += time.perf_counter() - t
        return out


def ours_step_fn(model, criterion, optimizer, images, targets, device) -> Callable[[], dict[str, float]]:
    def step() -> dict[str, float]:
        criterion.miner.elapsed = 0.0
        sync(device)
        c0 = time.process_time()
        t0 = time.perf_counter()
        outputs = model(images)
        sync(device)
        t1 = time.perf_counter()
        losses, _record = criterion(outputs, targets)
        loss = losses["cls"] + losses["box"]
        sync(device)
        t2 = time.perf_counter()
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
        sync(device)
        t3 = time.perf_counter()
        return {"step": t3 - t0, "forward": t1 - t0, "criterion": t2 - t1, "backward": t3 - t2,
                "miner": criterion.miner.elapsed, "step_cpu": time.process_time() - c0}  # fmt: skip

    return step


def tv_step_fn(model, optimizer, images, targets, device) -> Callable[[], dict[str, float]]:
    tv_images = [im.float().div(255.0) for im in images]
    tv_targets = [{"boxes": t["boxes"], "labels": t["labels"]} for t in targets]

    def step() -> dict[str, float]:
        sync(device)
        c0 = time.process_time()
        t0 = time.perf_counter()
        losses = model(tv_images, tv_targets)  # forward includes the loss in torchvision
        loss = sum(losses.values())
        sync(device)
        t1 = time.perf_counter()
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
        sync(device)
        t2 = time.perf_counter()
        return {
            "step": t2 - t0,
            "forward": t1 - t0,
            "backward": t2 - t1,
            "step_cpu": time.process_time() - c0,
        }

    return step


def build_case(case: str, backbone: str) -> tuple[str, int, torch.nn.Module, str]:
    """``(our model name, image size, torchvision model, torchvision description)``."""
    if case == "ssdlite":
        tv = ssdlite320_mobilenet_v3_large(weights=None, weights_backbone=None, num_classes=NUM_CLASSES + 1)
        return "ssdlite320_mobilenet_v3", 320, tv, "ssdlite320_mobilenet_v3_large"
    size = 640
    if backbone == "resnet50":
        tv = retinanet_resnet50_fpn(
            weights=None, weights_backbone=None, num_classes=NUM_CLASSES + 1, min_size=size, max_size=size
        )
        return "retinanet_resnet50_fpn", size, tv, "retinanet_resnet50_fpn"
    fpn = _resnet_fpn_extractor(
        resnet18(weights=None), 5, returned_layers=[2, 3, 4], extra_blocks=LastLevelP6P7(256, 256)
    )
    tv = RetinaNet(fpn, num_classes=NUM_CLASSES + 1, min_size=size, max_size=size)
    return "retinanet_resnet18_fpn", size, tv, "RetinaNet(resnet18 FPN)"


def run_case(case: str, args: argparse.Namespace, device: torch.device) -> dict:
    batch = args.batch or (CUDA_BATCH if device.type == "cuda" else CPU_BATCH)[case]
    torch.manual_seed(args.seed)
    ours_name, size, tv_model, tv_name = build_case(case, args.retinanet_backbone)
    model = build_model(ours_name, NUM_CLASSES).to(device).train()
    tv_model = tv_model.to(device).train()
    images, targets = make_batch(batch, size, args.seed, device)

    def sgd(m: torch.nn.Module) -> torch.optim.Optimizer:
        # a small LR keeps the shared model stable over the rounds (timing, not training)
        return torch.optim.SGD(m.parameters(), lr=1e-4, momentum=0.9, weight_decay=1e-4)

    optimizer = sgd(model)
    steps: dict[str, Callable[[], dict[str, float]]] = {
        "torchvision": tv_step_fn(tv_model, sgd(tv_model), images, targets, device)
    }
    for mining in MINING:
        criterion = build_criterion(model.cls_activation, model.box_coder, mining={"type": mining}).to(device)
        criterion.miner = TimedMiner(criterion.miner, device)
        steps[mining] = ours_step_fn(model, criterion, optimizer, images, targets, device)

    with torch.no_grad():
        num_anchors = model.eval()(images[:1]).anchors.shape[0]
    model.train()
    for fn in steps.values():  # warm-up: allocator, anchor caches, lazy inits
        fn()
    samples: dict[str, list[dict[str, float]]] = {k: [] for k in steps}
    for _ in range(args.iters):
        for name, fn in steps.items():
            samples[name].append(fn())

    def summary(rows: list[dict[str, float]]) -> dict[str, dict[str, float]]:
        return {
            key: {
                "median_ms": 1e3 * statistics.median(r[key] for r in rows),
                "best_ms": 1e3 * min(r[key] for r in rows),
            }
            for key in rows[0]
        }

    stats = {name: summary(rows) for name, rows in samples.items()}
    return {"case": case, "device": device.type, "ours": ours_name, "torchvision": tv_name, "image_size": size, "batch": batch,
            "anchors": num_anchors, "stats": stats}  # fmt: skip


def print_case(result: dict) -> None:
    s = result["stats"]

    def med(name: str, key: str) -> float:
        return s[name][key]["median_ms"]

    print(
        f"\n## {result['case']}: detmine {result['ours']} vs torchvision {result['torchvision']} "
        f"({result['image_size']} px, batch {result['batch']}, {result['anchors']} anchors); ms, median"
    )
    cols = [
        "config",
        "step",
        "best",
        "cpu",
        "forward",
        "criterion",
        "bwd+sgd",
        "miner",
        "tv/ours",
        "tv/ours cpu",
    ]
    widths = [25, 8, 8, 8, 8, 9, 8, 6, 7, 11]
    print(
        "| "
        + " | ".join(
            f"{c:>{w}}" if i else f"{c:<{w}}" for i, (c, w) in enumerate(zip(cols, widths, strict=True))
        )
        + " |"
    )
    print("|" + "|".join("-" * (w + 2) for w in widths) + "|")
    for name in ("torchvision", *MINING):
        r = s[name]
        cells = [
            "torchvision" if name == "torchvision" else f"detmine mining={name}",
            f"{med(name, 'step'):.0f}",
            f"{r['step']['best_ms']:.0f}",
            f"{med(name, 'step_cpu'):.0f}",
            f"{med(name, 'forward'):.0f}",
            f"{med(name, 'criterion'):.1f}" if "criterion" in r else "(in fwd)",
            f"{med(name, 'backward'):.0f}",
            f"{med(name, 'miner'):.1f}" if "miner" in r else "-",
            f"{med('torchvision', 'step') / med(name, 'step'):.2f}x",
            f"{med('torchvision', 'step_cpu') / med(name, 'step_cpu'):.2f}x",
        ]
        print(
            "| "
            + " | ".join(
                f"{c:>{w}}" if i else f"{c:<{w}}" for i, (c, w) in enumerate(zip(cells, widths, strict=True))
            )
            + " |"
        )
    print("\nmining overhead vs mining=all, in % of the `all` step (goal <= 5%):")
    if result["device"] == "cpu":
        print("  (wall time on a shared CPU is noisy: trust the cpu-time, criterion and miner columns)")
    for name in MINING[1:]:
        parts = []
        for label, key, base in (
            ("whole step", "step", "step"),
            ("step cpu time", "step_cpu", "step_cpu"),
            ("criterion phase", "criterion", "step"),
            ("miner alone", "miner", "step"),
        ):
            parts.append(f"{label} {100 * (med(name, key) - med('all', key)) / med('all', base):+6.1f}%")
        print(f"  {name:<5} " + "   ".join(parts))


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--case", choices=["ssdlite", "retinanet", "all"], default="all")
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument(
        "--batch", type=int, default=0, help="images per step (default: CPU 8 / 2, CUDA 32 / 8)"
    )
    parser.add_argument("--iters", type=int, default=3, help="timed rounds after one warm-up")
    parser.add_argument("--retinanet-backbone", choices=["resnet50", "resnet18"], default="resnet50")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--json", default=None, help="also write the figures to this file")
    args = parser.parse_args()
    device = torch.device(args.device)
    if device.type == "cuda" and not torch.cuda.is_available():
        print("error: --device cuda but no CUDA device is available", file=sys.stderr)
        return 2
    env = {
        "date": datetime.datetime.now(datetime.timezone.utc).strftime("%Y-%m-%d %H:%M UTC"),
        "device": torch.cuda.get_device_name(device)
        if device.type == "cuda"
        else platform.processor() or "cpu",
        "threads": torch.get_num_threads(),
        "torch": torch.__version__,
        "torchvision": torchvision.__version__,
        "command": " ".join(sys.argv),
    }
    print(f"bench/step.py  {env['date']}  device={device} ({env['device']}), threads={env['threads']}, "
          f"torch {env['torch']}, torchvision {env['torchvision']}, iters={args.iters}")  # fmt: skip
    results = []
    for case in ["ssdlite", "retinanet"] if args.case == "all" else [args.case]:
        results.append(run_case(case, args, device))
        print_case(results[-1])
    if args.json:
        with open(args.json, "w") as f:
            json.dump({"env": env, "results": results}, f, indent=2)
    return 0


if __name__ == "__main__":
    sys.exit(main())
