#!/usr/bin/env python
"""One whole training step (forward + loss + backward + SGD step): detmine vs torchvision,
and the cost of mining (``ssd``, ``ohem`` against ``all``) inside our step.

    python bench/step.py [--case ssdlite|retinanet|all] [--device cpu|cuda] [--batch N]
                         [--iters N] [--retinanet-backbone resnet50|resnet18] [--json PATH]
                         [--compile] [--sizes HxW,HxW,...] [--plain-compile] [--amp bf16|fp16]

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

``--compile`` adds a row for our step with the forward through ``train.compile``
(:class:`detmine.engine.compile.CompiledForward`, inductor; ``mining=all``, the criterion
eager), on its own copy of the model: its warm-up step is the compile time. ``--sizes``
then takes one compiled step at each padded size (``640x640,512x640,...``, the sizes of a
recipe whose images keep their aspect) and counts the graphs dynamo compiled: one per
recompile. ``--plain-compile`` counts the same for a bare ``torch.compile(model)``.
``--amp bf16`` adds a row for our step with the forward under autocast (``train.amp``).
"""

from __future__ import annotations

import argparse
import contextlib
import copy
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
from torch._dynamo.utils import counters
from torchvision.models import resnet18
from torchvision.models.detection import retinanet_resnet50_fpn, ssdlite320_mobilenet_v3_large
from torchvision.models.detection.backbone_utils import _resnet_fpn_extractor
from torchvision.models.detection.retinanet import RetinaNet
from torchvision.ops.feature_pyramid_network import LastLevelP6P7

from detmine.criterion import build_criterion
from detmine.engine.compile import CompiledForward
from detmine.modeling import build_model
from detmine.structures import Target

NUM_CLASSES = 80
MINING = ("all", "ssd", "ohem")
CPU_BATCH = {"ssdlite": 8, "retinanet": 2}
CUDA_BATCH = {"ssdlite": 32, "retinanet": 8}


def sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def make_batch(
    batch: int, size: int | tuple[int, int], seed: int, device: torch.device
) -> tuple[torch.Tensor, list[Target]]:
    """Random uint8 images ``[B, 3, H, W]`` (``size``: a side or ``(H, W)``) and 1-10 boxes per
    image (sides 3%-60% of the shorter image side)."""
    height, width = (size, size) if isinstance(size, int) else size
    g = torch.Generator().manual_seed(seed)
    images = torch.randint(0, 256, (batch, 3, height, width), dtype=torch.uint8, generator=g)
    targets: list[Target] = []
    side = min(height, width)
    for i in range(batch):
        n = int(torch.randint(1, 11, (1,), generator=g))
        wh = side * torch.empty(n, 2).uniform_(math.log(0.03), math.log(0.6), generator=g).exp()
        xy = torch.rand(n, 2, generator=g) * (torch.tensor([width, height]) - wh)
        boxes = torch.cat([xy, xy + wh], dim=1)
        targets.append(
            Target(
                boxes=boxes.to(device),
                labels=torch.randint(1, NUM_CLASSES + 1, (n,), generator=g).to(device),
                ignore_boxes=torch.zeros((0, 4), device=device),
                image_id=i,
                orig_size=(height, width),
                input_size=(height, width),
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


def ours_step_fn(
    model, criterion, optimizer, images, targets, device, amp: torch.dtype | None = None
) -> Callable[[], dict[str, float]]:
    """Our step; ``model`` is the module or what calls it (a ``CompiledForward``), ``amp`` an
    autocast dtype for the forward (the criterion runs outside autocast, as in the trainer)."""

    def step() -> dict[str, float]:
        criterion.miner.elapsed = 0.0
        autocast = torch.autocast(device.type, dtype=amp) if amp is not None else contextlib.nullcontext()
        sync(device)
        c0 = time.process_time()
        t0 = time.perf_counter()
        with autocast:
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


def sgd(m: torch.nn.Module) -> torch.optim.Optimizer:
    # a small LR keeps the shared model stable over the rounds (timing, not training)
    return torch.optim.SGD(m.parameters(), lr=1e-4, momentum=0.9, weight_decay=1e-4)


def timed_criterion(model: torch.nn.Module, mining: str, device: torch.device) -> torch.nn.Module:
    criterion = build_criterion(model.cls_activation, model.box_coder, mining={"type": mining}).to(device)
    criterion.miner = TimedMiner(criterion.miner, device)
    return criterion


def graphs_compiled() -> int:
    """Graphs dynamo has compiled in this process (each recompile adds one)."""
    return int(counters["stats"]["unique_graphs"])


def size_sweep(forward, model, batch: int, sizes: list[tuple[int, int]], seed: int, device: torch.device,
               graphs_before: int) -> list[dict]:  # fmt: skip
    """One step at each ``(H, W)`` (then a second, compiled), and the graphs compiled so far."""
    criterion, optimizer, rows = timed_criterion(model, "all", device), sgd(model), []
    for height, width in sizes:
        images, targets = make_batch(batch, (height, width), seed, device)
        fn = ours_step_fn(forward, criterion, optimizer, images, targets, device)
        first = fn()["step"]
        again = fn()["step"]
        rows.append({"size": f"{height}x{width}", "first_s": first, "again_ms": 1e3 * again,
                     "graphs": graphs_compiled() - graphs_before})  # fmt: skip
    return rows


def run_case(case: str, args: argparse.Namespace, device: torch.device) -> dict:
    batch = args.batch or (CUDA_BATCH if device.type == "cuda" else CPU_BATCH)[case]
    torch.manual_seed(args.seed)
    ours_name, size, tv_model, tv_name = build_case(case, args.retinanet_backbone)
    model = build_model(ours_name, NUM_CLASSES).to(device).train()
    tv_model = tv_model.to(device).train()
    images, targets = make_batch(batch, size, args.seed, device)

    optimizer = sgd(model)
    steps: dict[str, Callable[[], dict[str, float]]] = {
        "torchvision": tv_step_fn(tv_model, sgd(tv_model), images, targets, device)
    }
    for mining in MINING:
        steps[mining] = ours_step_fn(
            model, timed_criterion(model, mining, device), optimizer, images, targets, device
        )
    if args.amp:
        dtype = {"bf16": torch.bfloat16, "fp16": torch.float16}[args.amp]
        steps[args.amp] = ours_step_fn(model, timed_criterion(model, "all", device), optimizer, images, targets,
                                       device, amp=dtype)  # fmt: skip
    compiled = twin = plain_twin = None
    if args.compile:
        # copies made before anything compiles: own parameters, own anchor generator
        twin = copy.deepcopy(model)
        plain_twin = copy.deepcopy(model) if args.plain_compile else None
        compiled_from = graphs_compiled()
        compiled = CompiledForward(twin, device)
        steps["compiled"] = ours_step_fn(compiled, timed_criterion(twin, "all", device), sgd(twin), images,
                                         targets, device)  # fmt: skip

    with torch.no_grad():
        num_anchors = model.eval()(images[:1]).anchors.shape[0]
    model.train()
    first_step = {name: fn()["step"] for name, fn in steps.items()}  # warm-up (and compilation)
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
    result = {"case": case, "device": device.type, "ours": ours_name, "torchvision": tv_name, "image_size": size,
              "batch": batch, "anchors": num_anchors, "stats": stats, "amp": args.amp,
              "first_step_s": first_step}  # fmt: skip
    if compiled is not None:
        result["compile"] = {"compiled": compiled.compiled, "first_step_s": first_step["compiled"],
                             "graphs": graphs_compiled() - compiled_from}  # fmt: skip
        if args.sizes:
            result["compile"]["sizes"] = size_sweep(
                compiled, twin, batch, args.sizes, args.seed, device, compiled_from
            )
        if plain_twin is not None and args.sizes:
            torch._dynamo.reset()  # its graphs counted from zero, nothing reused from ours
            plain_from = graphs_compiled()
            plain = torch.compile(plain_twin)
            result["compile"]["plain_sizes"] = size_sweep(plain, plain_twin, batch, args.sizes, args.seed, device,
                                                          plain_from)  # fmt: skip
    return result


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
    labels = {"torchvision": "torchvision", **{m: f"detmine mining={m}" for m in MINING},
              "compiled": "detmine compiled, all", "bf16": "detmine bf16 amp, all", "fp16": "detmine fp16 amp, all"}  # fmt: skip
    for name in [n for n in labels if n in s]:
        r = s[name]
        cells = [
            labels[name],
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
    print_compile(result)


def print_compile(result: dict) -> None:
    info = result.get("compile")
    if info is None:
        return
    if not info["compiled"]:
        print("\ntrain.compile fell back to eager (see the warning above): the compiled row is eager")
    print(f"\ncompiled forward (inductor, mining=all, criterion eager): first step {info['first_step_s']:.1f} s "
          f"(compilation included), {info['graphs']} graph(s) compiled for the timed size")  # fmt: skip
    for key, what in (("sizes", "train.compile"), ("plain_sizes", "bare torch.compile(model)")):
        if key in info:
            print(f"{what} over padded sizes -- size: graphs compiled so far (first step s / next step ms):")
            print("  " + ", ".join(f"{r['size']}: {r['graphs']} ({r['first_s']:.1f} s / {r['again_ms']:.0f} ms)"
                                   for r in info[key]))  # fmt: skip


def parse_sizes(text: str) -> list[tuple[int, int]]:
    """``"640x640,512x640"`` -> ``[(640, 640), (512, 640)]``."""
    sizes = []
    for item in text.split(","):
        height, _, width = item.strip().partition("x")
        if not (height.isdigit() and width.isdigit()):
            raise argparse.ArgumentTypeError(f"sizes are HxW,HxW,... (e.g. 640x640,512x640), got {item!r}")
        sizes.append((int(height), int(width)))
    return sizes


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
    parser.add_argument("--compile", action="store_true", help="add our step with train.compile (inductor)")
    parser.add_argument("--sizes", type=parse_sizes, default=[],
                        help="with --compile: HxW,HxW,... padded sizes to count recompiles over")  # fmt: skip
    parser.add_argument("--plain-compile", action="store_true",
                        help="with --sizes: also count them for a bare torch.compile(model)")  # fmt: skip
    parser.add_argument("--amp", choices=["bf16", "fp16"], default=None,
                        help="add our step with the forward under autocast")  # fmt: skip
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
