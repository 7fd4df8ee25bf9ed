#!/usr/bin/env python
"""Mine a pool of hard negatives: a trained detector's highest-scoring false positives on
images without objects (offline bootstrapping, Sung & Poggio / Felzenszwalb et al.).

    python tools/mine_hard_negatives.py CONFIG CHECKPOINT --out POOL.json [--split train]
        [--images FOLDER] [--top 1000] [--score-thresh 0.3] [--crop] [--batch-size N]
        [--weights auto|ema|model] [--device auto|cpu|cuda] [key=value ...]

Runs the checkpoint over the background-only images of ``--split`` (default: the training
split; chosen from the annotations, the other images are never decoded) or over every image
of ``--images FOLDER`` (a folder without annotations: every image there is background), with
the evaluation transform. Every detection there is a false positive; the ``--top`` highest
scoring at or above ``--score-thresh`` are written to ``--out`` (format:
:mod:`detmine.data.hard_negatives`), highest first. Without ``--crop`` an image gives at most
one entry (its highest-scoring false positive: the pool is mixed in as whole images); with
``--crop`` every false positive is an entry (for ``data.hard_negatives.crop: true``).
Train with the pool: ``data.hard_negatives.pool=POOL.json [data.hard_negatives.ratio=0.25]``.

Images that cannot be read are skipped and counted in one summary line. ``--out`` is checked
before the work starts. Exit status 2 with ``error: <message>`` on a user error (bad config,
no images, a checkpoint that does not fit, an unwritable ``--out``).
"""

from __future__ import annotations

import argparse
import sys
from typing import Any

from detmine.cli import add_checkpoint_arguments, add_overrides_argument, run_tool
from detmine.distributed import pick_device


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    add_checkpoint_arguments(parser)
    parser.add_argument("--out", required=True, help="the pool file to write (JSON)")
    parser.add_argument(
        "--split",
        default=None,
        help="split whose background-only images are searched (default: data.train_split)",
    )
    parser.add_argument(
        "--images",
        default=None,
        metavar="FOLDER",
        help="search every image of this folder instead (all background)",
    )
    parser.add_argument("--top", type=int, default=1000, help="false positives kept, highest score first")
    parser.add_argument(
        "--score-thresh", type=float, default=0.3, help="lowest score of a false positive kept"
    )
    parser.add_argument(
        "--crop",
        action="store_true",
        help="every false positive an entry (for crops); default: one per image",
    )
    parser.add_argument("--batch-size", type=int, default=None, help="default: eval.batch_size")
    parser.add_argument("--no-progress", action="store_true", help="no progress bar")
    add_overrides_argument(parser, "eval.postprocess.nms_thresh=0.5 data.root=/data/coco")
    args = parser.parse_intermixed_args(argv)
    if args.top < 1:
        parser.error("--top must be >= 1")
    if not 0.0 <= args.score_thresh < 1.0:
        parser.error("--score-thresh must be in [0, 1)")
    if args.batch_size is not None and args.batch_size < 1:
        parser.error("--batch-size must be >= 1")
    return args


def run(args: argparse.Namespace) -> int:
    from pathlib import Path

    from detmine.config import load_config
    from detmine.console import Progress
    from detmine.data.hard_negatives import HardNegativePool, write_pool
    from detmine.data.loader import build_dataloader
    from detmine.data.negative_mining import find_images, mine_false_positives
    from detmine.engine import builders
    from detmine.engine.builders.data import build_mining_set
    from detmine.safe_io import check_writable

    cfg = load_config(args.config, args.overrides, plugins=args.plugin, sections=("data", "model"))
    split = args.split or cfg.data.train_split
    check_writable(args.out, "pool", where="--out")  # before any work
    if args.images is not None:
        find_images(args.images)  # no images: say so before loading anything
    device = pick_device(args.device or cfg.train.device)
    model, dataset, weights = builders.detector_for_split(
        cfg, split, args.checkpoint, weights=args.weights, trusted=args.trust_checkpoint, device=device
    )
    images, locate, source = build_mining_set(dataset, split, args.images)
    loader = build_dataloader(
        images,
        args.batch_size or cfg.eval.batch_size,
        train=False,
        num_workers=cfg.data.num_workers,
        seed=cfg.train.seed,
        **builders.batch_geometry(model),
    )
    progress = Progress(len(images), "mining", unit="img", enabled=not args.no_progress)
    result = mine_false_positives(
        model,
        loader,
        locate,
        source=source,
        top=args.top,
        score_thresh=args.score_thresh,
        per_image=None if args.crop else 1,
        predict_options=cfg.eval.postprocess.options(),
        device=device,
        on_batch=progress.update,
    )
    progress.close()
    skipped = loader.skipped_summary()
    where = f"images of folder {args.images}" if args.images else f"background-only images of split {split!r}"
    info: dict[str, Any] = {
        "config": str(args.config),
        "checkpoint": str(Path(args.checkpoint).resolve()),
        "weights": weights.which,
        "source": source,
        "split": None if args.images else split,
        "images": str(Path(args.images).resolve()) if args.images else None,
        "num_images": result.num_images,
        "num_skipped": loader.num_dropped_samples,
        "score_thresh": args.score_thresh,
        "top": args.top,
        "per": "detection" if args.crop else "image",
        "num_false_positives": result.num_false_positives,
    }
    pool = HardNegativePool(result.entries, list(dataset.class_names), info)
    if skipped:
        print(f"warning: {skipped}", file=sys.stderr)
    print(
        f"{result.num_false_positives} false positives (score >= {args.score_thresh}) on the {result.num_images} "
        f"{where}; the pool keeps the {len(pool)} highest "
        f"({'every false positive' if args.crop else 'one per image'})"
    )
    if not pool.entries:
        print("note: the pool is empty: lower --score-thresh to find false positives", file=sys.stderr)
    write_pool(args.out, pool)
    print(f"pool: {args.out}")
    return 0


def main(argv: list[str] | None = None) -> int:
    return run_tool(run, parse_args(argv))


if __name__ == "__main__":
    sys.exit(main())
