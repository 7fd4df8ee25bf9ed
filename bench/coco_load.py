#!/usr/bin/env python
"""Reading a COCO-train2017-sized annotation file: pycocotools' ``COCO()`` against detmine's
``CocoDetection``, and what one forked loader worker copies after a pass over the records.

    python bench/coco_load.py [--images 118287] [--workers 2] [--before PATH] [--json PATH]

The annotation file is generated (no images needed) once per ``--images`` / ``--seed`` into
``--cache-dir`` (default ``data/bench``, ignored by git): train2017's shape -- 118,287 images
(COCO's sparse ids, 640-px sides, the ``license`` / ``coco_url`` / ... fields), ~860k
annotations (~7.3 per image, long-tailed, ~1,000 images without any), COCO's 80 categories with
their non-contiguous ids and a person-heavy long tail, box sizes with COCO's small / medium /
large shares (41 / 34 / 24 %), polygons of ~24 vertices with two decimals, ~1% crowd
annotations with uncompressed RLE, and a handful of degenerate boxes. About COCO's 448 MB.

Each measurement runs in a fresh child process (``--child``), so no allocator cache of one
hides the other's peak:

- ``pycocotools``: ``COCO(path)`` (``json.load`` + ``createIndex``).
- ``detmine``: ``CocoDetection(img_dir, path)`` (the records, the evaluation ground truth).
  ``--before PATH`` adds the same measurement with ``detmine`` imported from ``PATH`` (e.g.
  ``git archive <commit> detmine | tar -x -C /tmp/before``): the figures before a change.

Reported per child: load seconds (wall), peak RSS above the RSS after the imports
(``/proc/self/clear_refs`` + ``VmHWM``) and in total, the RSS still held after the load
(``gc.collect`` + ``malloc_trim``) and the garbage-collected Python objects it added (the raw
JSON's dicts and lists, if kept). For detmine, ``--workers`` processes are then forked, as
``DataLoader`` workers are; each reads every record once (``records[i]``: path, sizes, copies
of its boxes, labels and ignore boxes, and ``image_labels(i)``, what ``dataset[i]`` reads
besides the image), then runs ``gc.collect()``; the growth of its private memory
(``Private_Clean + Private_Dirty`` of ``/proc/self/smaps_rollup``) after each step is what it
copied from the parent. The collection also walks the interpreter's and the imports' objects:
a worker forked before the load measures that share, and it is subtracted. Timings only; nothing here asserts a speed.
"""

from __future__ import annotations

import argparse
import datetime
import json
import os
import platform
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np
from _memory import reset_peak_rss, status_kib

ROOT = Path(__file__).resolve().parents[1]
TRAIN2017_IMAGES = 118_287

# COCO 2017's 80 categories: (id, name, supercategory); ids skip 12, 26, 29, 30, 45, 66, 68, 69, 71, 83.
COCO_CATEGORIES: list[tuple[int, str, str]] = [
    (1, "person", "person"), (2, "bicycle", "vehicle"), (3, "car", "vehicle"), (4, "motorcycle", "vehicle"),
    (5, "airplane", "vehicle"), (6, "bus", "vehicle"), (7, "train", "vehicle"), (8, "truck", "vehicle"),
    (9, "boat", "vehicle"), (10, "traffic light", "outdoor"), (11, "fire hydrant", "outdoor"),
    (13, "stop sign", "outdoor"), (14, "parking meter", "outdoor"), (15, "bench", "outdoor"),
    (16, "bird", "animal"), (17, "cat", "animal"), (18, "dog", "animal"), (19, "horse", "animal"),
    (20, "sheep", "animal"), (21, "cow", "animal"), (22, "elephant", "animal"), (23, "bear", "animal"),
    (24, "zebra", "animal"), (25, "giraffe", "animal"), (27, "backpack", "accessory"),
    (28, "umbrella", "accessory"), (31, "handbag", "accessory"), (32, "tie", "accessory"),
    (33, "suitcase", "accessory"), (34, "frisbee", "sports"), (35, "skis", "sports"),
    (36, "snowboard", "sports"), (37, "sports ball", "sports"), (38, "kite", "sports"),
    (39, "baseball bat", "sports"), (40, "baseball glove", "sports"), (41, "skateboard", "sports"),
    (42, "surfboard", "sports"), (43, "tennis racket", "sports"), (44, "bottle", "kitchen"),
    (46, "wine glass", "kitchen"), (47, "cup", "kitchen"), (48, "fork", "kitchen"), (49, "knife", "kitchen"),
    (50, "spoon", "kitchen"), (51, "bowl", "kitchen"), (52, "banana", "food"), (53, "apple", "food"),
    (54, "sandwich", "food"), (55, "orange", "food"), (56, "broccoli", "food"), (57, "carrot", "food"),
    (58, "hot dog", "food"), (59, "pizza", "food"), (60, "donut", "food"), (61, "cake", "food"),
    (62, "chair", "furniture"), (63, "couch", "furniture"), (64, "potted plant", "furniture"),
    (65, "bed", "furniture"), (67, "dining table", "furniture"), (70, "toilet", "furniture"),
    (72, "tv", "electronic"), (73, "laptop", "electronic"), (74, "mouse", "electronic"),
    (75, "remote", "electronic"), (76, "keyboard", "electronic"), (77, "cell phone", "electronic"),
    (78, "microwave", "appliance"), (79, "oven", "appliance"), (80, "toaster", "appliance"),
    (81, "sink", "appliance"), (82, "refrigerator", "appliance"), (84, "book", "indoor"),
    (85, "clock", "indoor"), (86, "vase", "indoor"), (87, "scissors", "indoor"), (88, "teddy bear", "indoor"),
    (89, "hair drier", "indoor"), (90, "toothbrush", "indoor"),
]  # fmt: skip

# (height, width) of the images and their shares: train2017 is mostly 640 px on the long side.
_SIZES = [(480, 640), (427, 640), (640, 480), (425, 640), (428, 640), (640, 427), (426, 640), (512, 640),
          (360, 640), (500, 375), (333, 500), (612, 612)]  # fmt: skip
_SIZE_SHARES = [0.42, 0.14, 0.12, 0.06, 0.05, 0.05, 0.04, 0.03, 0.03, 0.02, 0.02, 0.02]
_CHUNK = 4096  # images generated and written at a time


def cache_path(cache_dir: Path, num_images: int, seed: int) -> Path:
    return cache_dir / f"coco_train2017_like_{num_images}_seed{seed}.json"


def _image_entries(rng: np.random.Generator, num_images: int) -> list[dict[str, Any]]:
    ids = rng.choice(np.arange(1, 600_000), size=num_images, replace=False)
    sizes = rng.choice(len(_SIZES), size=num_images, p=_SIZE_SHARES)
    return [
        {
            "license": int(rng.integers(1, 9)),
            "file_name": f"{i:012d}.jpg",
            "coco_url": f"http://images.cocodataset.org/train2017/{i:012d}.jpg",
            "height": _SIZES[s][0],
            "width": _SIZES[s][1],
            "date_captured": "2013-11-14 11:18:45",
            "flickr_url": f"http://farm{i % 9 + 1}.staticflickr.com/{i % 8000}/{i}_0123456789_z.jpg",
            "id": int(i),
        }
        for i, s in zip(ids.tolist(), sizes.tolist(), strict=True)
    ]


def _objects_per_image(rng: np.random.Generator, num_images: int) -> np.ndarray:
    """int64 [I]: ~7.3 on average, geometric tail capped at 93, ~0.9% of the images empty."""
    counts = np.minimum(1 + rng.negative_binomial(1, 1 / 7.3, size=num_images), 93)
    counts[rng.random(num_images) < 0.0086] = 0
    return counts


def _category_probs() -> np.ndarray:
    """Person ~30%, the other 79 on a Zipf-like tail (as train2017's instance counts)."""
    tail = 1.0 / np.arange(1, 80) ** 0.9
    return np.concatenate([[0.3], 0.7 * tail / tail.sum()])


def _annotations(rng: np.random.Generator, images: list[dict[str, Any]], counts: np.ndarray, first_id: int):
    """The annotations of ``images`` (``counts[i]`` each), ids from ``first_id``."""
    image_of = np.repeat(np.arange(len(images)), counts)
    n = len(image_of)
    height = np.array([images[i]["height"] for i in image_of], np.float64)
    width = np.array([images[i]["width"] for i in image_of], np.float64)
    # sqrt(area) log-normal: 41% below 32 px, 76% below 96 px (COCO's small / medium shares)
    side = np.exp(rng.normal(3.734, 1.176, n))
    aspect = np.exp(rng.normal(0.0, 0.6, n))
    w = np.clip(side * np.sqrt(aspect), 1.0, width)
    h = np.clip(side / np.sqrt(aspect), 1.0, height)
    x = rng.random(n) * (width - w)
    y = rng.random(n) * (height - h)
    degenerate = rng.random(n) < 5e-5  # train2017 has a few boxes of zero width or height
    w[degenerate] = 0.0
    crowd = rng.random(n) < 0.0107
    cats = rng.choice([c[0] for c in COCO_CATEGORIES], size=n, p=_category_probs())
    vertices = np.clip(rng.poisson(22, n), 4, 80) + 2
    out = []
    for j in range(n):
        x0, y0, bw, bh = round(x[j], 2), round(y[j], 2), round(w[j], 2), round(h[j], 2)
        if crowd[j]:
            runs = rng.integers(1, 400, size=int(rng.integers(50, 400))).tolist()
            seg: Any = {"counts": runs, "size": [int(height[j]), int(width[j])]}
        else:
            k = int(vertices[j])
            angle = np.sort(rng.random(k)) * 2 * np.pi
            radius = 0.7 + 0.3 * rng.random(k)
            px = x0 + bw / 2 * (1 + radius * np.cos(angle))
            py = y0 + bh / 2 * (1 + radius * np.sin(angle))
            seg = [np.round(np.stack([px, py], 1).reshape(-1), 2).tolist()]
        out.append(
            {
                "segmentation": seg,
                "area": round(bw * bh * float(rng.uniform(0.4, 0.9)), 4),
                "iscrowd": int(crowd[j]),
                "image_id": images[image_of[j]]["id"],
                "bbox": [x0, y0, bw, bh],
                "category_id": int(cats[j]),
                "id": first_id + j,
            }
        )
    return out


def generate(path: Path, num_images: int, seed: int = 0) -> dict[str, int]:
    """Write the train2017-shaped file to ``path`` (streamed, a chunk of images at a time);
    returns ``{images, annotations, bytes}``."""
    rng = np.random.default_rng(seed)
    images = _image_entries(rng, num_images)
    counts = _objects_per_image(rng, num_images)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(".json.tmp")
    num_anns = 0
    with open(tmp, "w", encoding="utf-8") as f:
        info = {"description": "detmine bench: COCO train2017-shaped", "version": "1.0", "year": 2017}
        licenses = [
            {"url": "http://creativecommons.org/licenses/", "id": i, "name": "CC"} for i in range(1, 9)
        ]
        f.write('{"info": ' + json.dumps(info) + ', "licenses": ' + json.dumps(licenses) + ', "images": ')
        f.write(json.dumps(images))
        f.write(', "annotations": [')
        for start in range(0, num_images, _CHUNK):
            anns = _annotations(
                rng, images[start : start + _CHUNK], counts[start : start + _CHUNK], num_anns + 1
            )
            if anns:
                f.write((", " if num_anns else "") + json.dumps(anns)[1:-1])
            num_anns += len(anns)
        cats = [{"supercategory": s, "id": i, "name": n} for i, n, s in COCO_CATEGORIES]
        f.write('], "categories": ' + json.dumps(cats) + "}")
    os.replace(tmp, path)
    return {"images": num_images, "annotations": num_anns, "bytes": path.stat().st_size}


# ----------------------------------------------------------------------------- children


def _private_kib() -> int:
    """Private_Clean + Private_Dirty of this process (what it does not share with its parent)."""
    total = 0
    with open("/proc/self/smaps_rollup") as f:
        for line in f:
            if line.startswith(("Private_Clean:", "Private_Dirty:")):
                total += int(line.split()[1])
    return total


def _trim() -> None:
    import ctypes
    import gc

    gc.collect()
    ctypes.CDLL("libc.so.6").malloc_trim(0)


def _worker_pass(dataset: Any) -> None:
    """What ``dataset[i]`` reads for every ``i`` besides the image (no decoding)."""
    records = dataset.records
    for i in range(len(dataset)):
        rec = records[i]
        rec.boxes.copy(), rec.labels.copy(), rec.ignore_boxes.copy()
        _ = (rec.path, rec.image_id, rec.height, rec.width)
        dataset.image_labels(i)


def _fork_workers(dataset: Any, num_workers: int) -> list[dict[str, float]]:
    """Fork ``num_workers`` processes that each pass over the records (none when ``dataset`` is
    None); their private growth in MiB."""
    import gc

    children = []
    for _ in range(num_workers):
        read_end, write_end = os.pipe()
        pid = os.fork()
        if pid == 0:  # pragma: no cover - the worker
            os.close(read_end)
            start = _private_kib()
            if dataset is not None:
                _worker_pass(dataset)
            after_pass = _private_kib()
            gc.collect()
            after_gc = _private_kib()
            report = {"pass_mib": (after_pass - start) / 1024, "pass_gc_mib": (after_gc - start) / 1024}
            os.write(write_end, json.dumps(report).encode())
            os._exit(0)
        os.close(write_end)
        children.append((pid, read_end))
    results = []
    for pid, read_end in children:
        with os.fdopen(read_end, "rb") as f:
            results.append(json.loads(f.read()))
        os.waitpid(pid, 0)
    return results


def _counts(loaded: Any) -> dict[str, int]:
    """What was read, to compare the readers: images, annotations, crowd annotations."""
    if hasattr(loaded, "imgs"):  # pycocotools
        anns = loaded.dataset["annotations"]
        return {
            "images": len(loaded.imgs),
            "annotations": len(anns),
            "crowd": sum(bool(a["iscrowd"]) for a in anns),
        }
    records = loaded.records
    objects = sum(len(records[i].labels) for i in range(len(records)))
    ignore = sum(len(records[i].ignore_boxes) for i in range(len(records)))
    return {
        "images": len(records),
        "annotations": objects + ignore + loaded.num_degenerate_boxes,
        "crowd": ignore,
    }


def child(mode: str, path: str, workers: int) -> dict[str, Any]:
    """One measurement in this (fresh) process: see the module docstring."""
    import gc

    if mode == "pycocotools":
        import contextlib
        import io

        from pycocotools.coco import COCO
    else:
        import warnings

        from detmine.data.coco import CocoDetection
    _trim()
    # what a forked worker's gc.collect() copies of the interpreter and the imports alone
    gc_alone = _fork_workers(None, 1)[0]["pass_gc_mib"] if mode == "detmine" and workers else None
    _trim()
    objects_before = len(gc.get_objects())
    base = reset_peak_rss()
    start = time.perf_counter()
    if mode == "pycocotools":
        with contextlib.redirect_stdout(io.StringIO()):
            loaded: Any = COCO(path)
    else:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # the generated degenerate boxes
            loaded = CocoDetection(os.path.dirname(path), path)
    seconds = time.perf_counter() - start
    peak = status_kib("VmHWM")
    _trim()
    out: dict[str, Any] = {
        "mode": mode,
        "detmine_from": None,
        "counts": _counts(loaded),
        "seconds": seconds,
        "imports_mib": base / 1024,
        "peak_mib": peak / 1024,
        "peak_above_imports_mib": (peak - base) / 1024,
        "held_mib": (status_kib("VmRSS") - base) / 1024,
        "objects_added": len(gc.get_objects()) - objects_before,
    }
    if mode == "detmine":
        import detmine

        out["detmine_from"] = str(Path(detmine.__file__).parent.parent)
        if workers:
            out["workers"] = _fork_workers(loaded, workers)
            out["gc_without_dataset_mib"] = gc_alone
    return out


def run_child(mode: str, path: Path, workers: int, detmine_src: str | None = None) -> dict[str, Any]:
    env = dict(os.environ, OMP_NUM_THREADS=os.environ.get("OMP_NUM_THREADS", "1"))
    if detmine_src is not None:
        env["PYTHONPATH"] = os.pathsep.join([detmine_src, env.get("PYTHONPATH", "")]).rstrip(os.pathsep)
    cmd = [sys.executable, __file__, "--child", mode, "--file", str(path), "--workers", str(workers)]
    done = subprocess.run(cmd, check=True, capture_output=True, text=True, env=env, cwd=ROOT)
    return json.loads(done.stdout.strip().splitlines()[-1])


# ----------------------------------------------------------------------------- main


def _row(label: str, r: dict[str, Any], ref: dict[str, Any]) -> str:
    cow = "-"
    if r.get("workers"):
        passes = [w["pass_mib"] for w in r["workers"]]
        gcs = [w["pass_gc_mib"] - r["gc_without_dataset_mib"] for w in r["workers"]]
        cow = f"{np.mean(passes):.1f} / {np.mean(gcs):.1f}"
    return (
        f"| {label} | {r['seconds']:.2f} s ({ref['seconds'] / r['seconds']:.2f}x) | "
        f"{r['peak_above_imports_mib']:.0f} MiB ({r['peak_above_imports_mib'] / ref['peak_above_imports_mib']:.2f}x) | "
        f"{r['peak_mib']:.0f} MiB | {r['held_mib']:.0f} MiB | {r['objects_added']:,} | {cow} |"
    )


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--images", type=int, default=TRAIN2017_IMAGES)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--workers", type=int, default=2, help="forked workers that pass over the records")
    p.add_argument("--cache-dir", type=Path, default=ROOT / "data" / "bench")
    p.add_argument("--before", default=None, help="a folder holding another detmine/ to measure too")
    p.add_argument("--json", type=Path, default=None)
    p.add_argument("--child", choices=("pycocotools", "detmine"), help=argparse.SUPPRESS)
    p.add_argument("--file", help=argparse.SUPPRESS)
    args = p.parse_args(argv)
    if args.child:
        print(json.dumps(child(args.child, args.file, args.workers)))
        return 0

    path = cache_path(args.cache_dir, args.images, args.seed)
    if not path.is_file():
        print(f"generating {path} ...", flush=True)
        start = time.perf_counter()
        stats = generate(path, args.images, args.seed)
        print(f"  {stats['images']:,} images, {stats['annotations']:,} annotations, "
              f"{stats['bytes'] / 2**20:.0f} MiB in {time.perf_counter() - start:.0f} s", flush=True)  # fmt: skip
    print(f"{path}: {path.stat().st_size / 2**20:.0f} MiB", flush=True)
    results = {"pycocotools": run_child("pycocotools", path, 0)}
    if args.before:
        results["detmine (before)"] = run_child("detmine", path, args.workers, args.before)
    results["detmine"] = run_child("detmine", path, args.workers)
    ref = results["pycocotools"]
    print(
        f"\n{datetime.datetime.now(datetime.timezone.utc):%Y-%m-%d %H:%M} UTC, {platform.processor() or platform.machine()}, "
        f"python {platform.python_version()}, {os.cpu_count()} CPUs, load average {os.getloadavg()[0]:.1f}"
    )
    print(
        f"\n| reader | load (vs pycocotools) | peak above imports (vs pycocotools) | peak RSS | held after | "
        f"Python objects kept | per-worker copy, MiB: a pass / + gc.collect() ({args.workers} workers) |"
    )
    print("|---|---|---|---|---|---|---|")
    for label, r in results.items():
        print(_row(label, r, ref))
    if args.json:
        args.json.write_text(json.dumps({"file": str(path), "results": results}, indent=1))
    # crowd: detmine counts the kept ignore regions (a degenerate crowd box is dropped)
    wrong = [
        f"{label}: {r['counts']} vs pycocotools {ref['counts']}"
        for label, r in results.items()
        if (r["counts"]["images"], r["counts"]["annotations"])
        != (ref["counts"]["images"], ref["counts"]["annotations"])
        or not 0 <= ref["counts"]["crowd"] - r["counts"]["crowd"] <= r["counts"]["annotations"]
    ]
    print(
        "\nimages / annotations read: "
        + ("; ".join(wrong) if wrong else f"the same for all ({ref['counts']})")
    )
    return 1 if wrong else 0


if __name__ == "__main__":
    sys.exit(main())
