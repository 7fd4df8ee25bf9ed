#!/usr/bin/env python
"""COCO bbox evaluation time: plain pycocotools vs faster-coco-eval vs hotcoco on the same predictions.

    python bench/eval_speed.py [--images 5000] [--dets-per-image 100] [--classes 80] [--seed 0]

A synthetic COCO-val-like ground truth (log-uniform box sizes, so small / medium / large are
all populated, ~1% crowd boxes) and realistic noisy detections: jittered copies of the
ground truth with scores that grow with the localisation quality, some with the wrong class,
plus background false positives, capped at ``--dets-per-image`` per image. Every backend goes
through :func:`detmine.evaluation.coco_eval.coco_bbox_eval` (index build, loadRes, evaluate,
accumulate, summarize), one after the other in one process. Prints each time (wall clock,
and process CPU time, which a busy shared machine disturbs less), its ratio to pycocotools,
and the largest difference of its 12 COCO numbers and of its precision array from
pycocotools'; exits 1 if the numbers differ (beyond 1e-9), never on timings.
"""

from __future__ import annotations

import argparse
import platform
import sys
import time

import numpy as np

from detmine.evaluation.coco_eval import coco_bbox_eval
from detmine.evaluation.coco_table import COCO_STAT_NAMES

BACKENDS = ("pycocotools", "faster_coco_eval", "hotcoco")  # the reference first


def make_ground_truth(
    rng: np.random.Generator, num_images: int, num_classes: int, mean_objects: float
) -> dict:
    """COCO GT dict: images 640x480, Poisson(mean_objects) boxes each, log-uniform sizes 4..400 px."""
    images, annotations = [], []
    for image_id in range(1, num_images + 1):
        width, height = 640, 480
        images.append({"id": image_id, "width": width, "height": height, "file_name": f"{image_id:012d}.jpg"})
        for _ in range(rng.poisson(mean_objects)):
            w, h = np.exp(rng.uniform(np.log(4), np.log(400), 2))
            w, h = min(w, width - 1), min(h, height - 1)
            x, y = rng.uniform(0, width - w), rng.uniform(0, height - h)
            annotations.append(
                {
                    "id": len(annotations) + 1,
                    "image_id": image_id,
                    "category_id": int(rng.integers(1, num_classes + 1)),
                    "bbox": [float(x), float(y), float(w), float(h)],
                    "area": float(w * h),
                    "iscrowd": int(rng.random() < 0.01),
                }
            )
    categories = [{"id": c, "name": f"class_{c}"} for c in range(1, num_classes + 1)]
    return {"images": images, "annotations": annotations, "categories": categories}


def make_detections(rng: np.random.Generator, gt: dict, num_classes: int, per_image: int) -> list[dict]:
    """Noisy detections: 0-3 jittered copies per GT box (score ~ localisation quality), 10% of
    them with a random class, then background boxes up to ``per_image`` per image."""
    by_image: dict[int, list[dict]] = {img["id"]: [] for img in gt["images"]}
    for ann in gt["annotations"]:
        x, y, w, h = ann["bbox"]
        for _ in range(rng.integers(0, 4)):
            noise = rng.normal(0.0, 0.12, 4)
            box = [x + noise[0] * w, y + noise[1] * h, w * np.exp(noise[2]), h * np.exp(noise[3])]
            quality = float(np.exp(-4.0 * np.abs(noise).mean()))
            score = float(np.clip(0.6 * quality + 0.4 * rng.random(), 0.0, 1.0))
            label = ann["category_id"] if rng.random() > 0.1 else int(rng.integers(1, num_classes + 1))
            by_image[ann["image_id"]].append(
                {
                    "image_id": ann["image_id"],
                    "category_id": label,
                    "bbox": [float(v) for v in box],
                    "score": score,
                }
            )
    results = []
    for image_id, dets in by_image.items():
        for _ in range(max(0, per_image - len(dets))):
            w, h = np.exp(rng.uniform(np.log(8), np.log(300), 2))
            x, y = rng.uniform(0, 640 - min(w, 639)), rng.uniform(0, 480 - min(h, 479))
            dets.append(
                {
                    "image_id": image_id,
                    "category_id": int(rng.integers(1, num_classes + 1)),
                    "bbox": [float(x), float(y), float(w), float(h)],
                    "score": float(rng.random() * 0.5),
                }
            )
        dets.sort(key=lambda d: -d["score"])
        results.extend(dets[:per_image])
    return results


def main() -> int:
    parser = argparse.ArgumentParser(
        description="pycocotools vs faster-coco-eval vs hotcoco, same predictions"
    )
    parser.add_argument("--images", type=int, default=5000)
    parser.add_argument("--dets-per-image", type=int, default=100)
    parser.add_argument("--classes", type=int, default=80)
    parser.add_argument(
        "--objects-per-image", type=float, default=7.3, help="mean GT boxes per image (COCO: 7.3)"
    )
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()

    rng = np.random.default_rng(args.seed)
    gt = make_ground_truth(rng, args.images, args.classes, args.objects_per_image)
    results = make_detections(rng, gt, args.classes, args.dets_per_image)
    print(
        f"{len(gt['images'])} images, {len(gt['annotations'])} GT boxes, {len(results)} detections, "
        f"{args.classes} classes | python {platform.python_version()}, {platform.processor() or platform.machine()}"
    )

    outputs, wall, cpu = {}, {}, {}
    mismatch = False
    for backend in BACKENDS:
        start, start_cpu = time.perf_counter(), time.process_time()
        outputs[backend] = coco_bbox_eval(gt, results, backend=backend)
        wall[backend] = time.perf_counter() - start
        cpu[backend] = time.process_time() - start_cpu
        line = f"{backend:>16}: {wall[backend]:7.2f} s wall {cpu[backend]:7.2f} s CPU  AP {outputs[backend][0][0]:.4f}"
        if backend != "pycocotools":
            (ref_stats, ref_prec, _), (stats, prec, _) = outputs["pycocotools"], outputs[backend]
            stat_diff = float(np.abs(ref_stats - stats).max())
            prec_diff = float(np.abs(ref_prec - prec).max())
            mismatch |= stat_diff > 1e-9 or prec_diff > 1e-9
            line += (
                f" | vs pycocotools: {wall['pycocotools'] / wall[backend]:5.1f} x wall, "
                f"{cpu['pycocotools'] / cpu[backend]:5.1f} x CPU; max |diff| 12 stats {stat_diff:.1e}, "
                f"precision {prec_diff:.1e}"
            )
        print(line)
    print(
        f"hotcoco vs faster_coco_eval: {wall['faster_coco_eval'] / wall['hotcoco']:.1f} x wall, "
        f"{cpu['faster_coco_eval'] / cpu['hotcoco']:.1f} x CPU"
    )
    print("  ".join(f"{n}={v:.3f}" for n, v in zip(COCO_STAT_NAMES, outputs["pycocotools"][0], strict=True)))
    if mismatch:
        print("MISMATCH: the backends disagree", file=sys.stderr)
        return 1
    print("identical AP (to 1e-9)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
