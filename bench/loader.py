#!/usr/bin/env python
"""Does the data path keep up? Decode + augmentation + collate of a recipe's training loader,
in images/s with 0, 1, 2 workers, next to the recipe's model step at its batch size.

    python bench/loader.py [--config configs/quickstart.yaml configs/quickstart_ssd.yaml]
                           [--workers 0 1 2] [--batches 30] [--steps 5] [--device cpu|cuda] [--json PATH]

For each recipe (its dataset -- ``data/synthetic`` is generated on first use, as
``tools/train.py`` does -- its training transform, batch size, loader options and model):

- per image in the main process: decode (``read_rgb``), the training transform, the tensor;
  per batch: collate (padding to the model's ``size_divisible``);
- the training loader (``build_train_loader``, so ``data.loader_options`` apply) with each
  ``--workers`` count: the first batch (the workers' start), images/s over the next
  ``--batches`` batches, and the first batch of an epoch that follows a whole one (an epoch of
  4 batches) -- with the loader's persistent workers and, for comparison, with
  ``persistent_workers: false`` (forked again every epoch);
- the model step: forward + criterion + backward (no optimiser step) on a real batch, median of
  ``--steps`` after a warm-up, as images/s;
- both together: ``--batches`` training steps fed by the loader, images/s -- equal to the model
  alone when the loader keeps up. On a CPU the workers and the step share the cores.

Timings only; nothing here asserts a speed. Run with ``OMP_NUM_THREADS=1`` on a shared CPU.
"""

from __future__ import annotations

import argparse
import datetime
import json
import os
import platform
import resource
import statistics
import sys
import time
from pathlib import Path
from typing import Any

import torch
from torch.utils.data import Subset

from detmine.config import load_config
from detmine.data._common import read_rgb
from detmine.data.loader import collate
from detmine.engine import builders

ROOT = Path(__file__).resolve().parents[1]
RECIPES = ("configs/quickstart.yaml", "configs/quickstart_ssd.yaml")


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def per_image_costs(dataset: Any, batch_size: int, geometry: dict[str, Any], num: int) -> dict[str, float]:
    """ms per image: decode, transform, tensor; ms per batch: collate (main process)."""
    records, transform = dataset.records, dataset.transform
    decode = augment = tensor = 0.0
    samples = []
    for i in range(num):
        rec = records[i]
        t0 = time.perf_counter()
        image, _ = read_rgb(rec.path)
        t1 = time.perf_counter()
        transform.set_random_seed(i)
        out = transform(image=image, boxes=rec.boxes, labels=rec.labels, ignore_boxes=rec.ignore_boxes)
        t2 = time.perf_counter()
        pixels = torch.from_numpy(out["image"]).permute(2, 0, 1).contiguous()
        t3 = time.perf_counter()
        decode, augment, tensor = decode + t1 - t0, augment + t2 - t1, tensor + t3 - t2
        samples.append((pixels, {"image_id": rec.image_id}))
    batches = [samples[k : k + batch_size] for k in range(0, len(samples) - batch_size + 1, batch_size)]
    t0 = time.perf_counter()
    for batch in batches:
        collate(batch, geometry.get("size_divisible", 32), geometry.get("pad_value", 0))
    collate_ms = 1e3 * (time.perf_counter() - t0) / max(len(batches), 1)
    return {
        "decode_ms": 1e3 * decode / num,
        "transform_ms": 1e3 * augment / num,
        "tensor_ms": 1e3 * tensor / num,
        "collate_ms_per_batch": collate_ms,
    }


def _cpu_s() -> float:
    """CPU seconds of this process and of its children that have exited."""
    own, children = resource.getrusage(resource.RUSAGE_SELF), resource.getrusage(resource.RUSAGE_CHILDREN)
    return own.ru_utime + own.ru_stime + children.ru_utime + children.ru_stime


def loader_rate(loader: Any, batches: int) -> dict[str, float]:
    """Seconds to the first batch, images/s over the next ``batches``, and the CPU time per
    image of the whole pass (main process and workers, their start included: a measure that
    other load on a shared machine inflates much less than the wall time)."""
    cpu = _cpu_s()
    start = time.perf_counter()
    it = iter(loader)
    pixels, _ = next(it)
    first = time.perf_counter() - start
    start, images = time.perf_counter(), 0
    for _ in range(batches):
        pixels, _ = next(it)
        images += len(pixels)
    rate = images / (time.perf_counter() - start)
    del it
    workers = getattr(loader, "_iterator", None)
    if workers is not None:  # persistent workers: end them, so that their CPU time is counted
        workers._shutdown_workers()
    cpu_ms = 1e3 * (_cpu_s() - cpu) / (images + len(pixels))
    return {"first_batch_s": first, "images_per_s": rate, "cpu_ms_per_image": cpu_ms}


def next_epoch_wait(loader: Any) -> float:
    """Seconds to the first batch of an epoch that follows a whole epoch."""
    for _ in loader:
        pass
    start = time.perf_counter()
    it = iter(loader)
    next(it)
    return time.perf_counter() - start


def model_step(model: Any, criterion: Any, batch: tuple, device: torch.device):
    """One forward + criterion + backward; returns a closure that runs it."""
    images, targets = batch
    images = images.to(device)
    targets = [{k: (v.to(device) if torch.is_tensor(v) else v) for k, v in t.items()} for t in targets]

    def step() -> None:
        model.zero_grad(set_to_none=True)
        losses, _ = criterion(model(images), targets)
        sum(losses.values()).backward()
        _sync(device)

    return step


def step_rate(step: Any, batch_size: int, steps: int) -> dict[str, float]:
    step()  # warm-up
    times = []
    for _ in range(steps):
        start = time.perf_counter()
        step()
        times.append(time.perf_counter() - start)
    median = statistics.median(times)
    return {"step_ms": 1e3 * median, "images_per_s": batch_size / median}


def fed_rate(loader: Any, model: Any, criterion: Any, device: torch.device, batches: int) -> float:
    """images/s of ``batches`` steps fed by ``loader`` (after its first batch)."""
    it = iter(loader)
    model_step(model, criterion, next(it), device)()
    start, images = time.perf_counter(), 0
    for _ in range(batches):
        batch = next(it)
        model_step(model, criterion, batch, device)()
        images += len(batch[0])
    rate = images / (time.perf_counter() - start)
    del it
    return rate


def bench_recipe(
    path: str, workers: list[int], batches: int, steps: int, device: torch.device
) -> dict[str, Any]:
    cfg = load_config(ROOT / path)
    cfg.data.root = str(ROOT / cfg.data.root) if not os.path.isabs(cfg.data.root) else cfg.data.root
    builders.prepare_data(cfg)
    dataset = builders.build_dataset_split(cfg, cfg.data.train_split, True)
    model = builders.build_model_from_config(cfg, dataset.num_classes).to(device).train()
    criterion = builders.build_criterion_from_config(cfg, model).to(device)
    batch_size = cfg.train.batch_size
    geometry = builders.batch_geometry(model)
    out: dict[str, Any] = {"recipe": path, "batch_size": batch_size, "images": len(dataset)}
    out["per_image"] = per_image_costs(dataset, batch_size, geometry, num=4 * batch_size)
    out["loader"] = {}
    short = Subset(dataset, range(4 * batch_size))  # an epoch of 4 batches
    for w in workers:
        cfg.data.num_workers = w
        out["loader"][w] = loader_rate(builders.build_train_loader(cfg, dataset, model), batches)
        out["loader"][w]["next_epoch_s"] = next_epoch_wait(builders.build_train_loader(cfg, short, model))
        if w:
            options = dict(cfg.data.loader_options)
            cfg.data.loader_options = {**options, "persistent_workers": False}
            loader = builders.build_train_loader(cfg, short, model)
            out["loader"][w]["next_epoch_not_persistent_s"] = next_epoch_wait(loader)
            cfg.data.loader_options = options
        print(f"  {path} loader, {w} workers: {out['loader'][w]}", flush=True)
    cfg.data.num_workers = max(workers)
    batch = next(iter(builders.build_train_loader(cfg, dataset, model)))
    out["model"] = step_rate(model_step(model, criterion, batch, device), batch_size, steps)
    print(f"  {path} model step: {out['model']}", flush=True)
    out["fed"] = {}
    for w in workers:
        cfg.data.num_workers = w
        loader = builders.build_train_loader(cfg, dataset, model)
        out["fed"][w] = fed_rate(loader, model, criterion, device, max(steps, 3))
    return out


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--config", nargs="+", default=list(RECIPES))
    p.add_argument("--workers", type=int, nargs="+", default=[0, 1, 2])
    p.add_argument("--batches", type=int, default=30, help="batches timed per loader")
    p.add_argument("--steps", type=int, default=5, help="model steps timed")
    p.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    p.add_argument("--json", type=Path, default=None)
    args = p.parse_args(argv)
    device = torch.device(args.device)
    results = [bench_recipe(c, args.workers, args.batches, args.steps, device) for c in args.config]
    print(
        f"\n{datetime.datetime.now(datetime.timezone.utc):%Y-%m-%d %H:%M} UTC, {platform.processor() or platform.machine()}, "
        f"device {device}, torch {torch.__version__}, {torch.get_num_threads()} torch threads, "
        f"{os.cpu_count()} CPUs, load average {os.getloadavg()[0]:.1f}\n"
    )
    print("| recipe | batch | decode / transform / tensor ms per image | collate ms per batch |")
    print("|---|---|---|---|")
    for r in results:
        c = r["per_image"]
        print(f"| {r['recipe']} | {r['batch_size']} | {c['decode_ms']:.2f} / {c['transform_ms']:.2f} / "
              f"{c['tensor_ms']:.2f} | {c['collate_ms_per_batch']:.2f} |")  # fmt: skip
    ws = args.workers
    print("\n| recipe | workers | first batch s | next epoch's first batch s: persistent / not |")
    print("|---|---|---|---|")
    for r in results:
        for w in ws:
            d = r["loader"][w]
            other = f"{d['next_epoch_not_persistent_s']:.3f}" if w else "-"
            print(f"| {r['recipe']} | {w} | {d['first_batch_s']:.3f} | {d['next_epoch_s']:.3f} / {other} |")
    print(
        "\n| recipe | "
        + " | ".join(f"loader {w} workers img/s (CPU ms / img)" for w in ws)
        + " | model step ms (img/s) | "
        + " | ".join(f"fed by {w} workers img/s" for w in ws)
        + " |"
    )
    print("|---|" + "---|" * (2 * len(ws) + 1))
    for r in results:
        loader = " | ".join(
            f"{r['loader'][w]['images_per_s']:.0f} ({r['loader'][w]['cpu_ms_per_image']:.2f})" for w in ws
        )
        fed = " | ".join(f"{r['fed'][w]:.1f}" for w in ws)
        m = r["model"]
        print(f"| {r['recipe']} | {loader} | {m['step_ms']:.0f} ({m['images_per_s']:.1f}) | {fed} |")
    if args.json:
        args.json.write_text(json.dumps(results, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
