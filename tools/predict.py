#!/usr/bin/env python
"""Run a trained detector on your own images and videos: pictures with the detections drawn and
COCO results.

    python tools/predict.py CONFIG CHECKPOINT INPUT [INPUT ...] --out-dir DIR
        [--score-thresh S] [--thresholds auto|none|PATH] [--every-n-frames N] [--batch-size N]
        [--no-pictures] [--weights auto|ema|model] [--device auto|cpu|cuda] [key=value ...]

INPUT: image files, folders (searched recursively), quoted glob patterns (``'shots/**/*.png'``)
and video files (every frame, or every N-th with ``--every-n-frames``), mixed freely. The model
runs at the recipe's evaluation geometry with ``eval.postprocess``; per-class thresholds:
``--thresholds auto`` (default) applies ``eval.postprocess.class_thresholds`` or else the
``thresholds.json`` the evaluation wrote next to the checkpoint, ``none`` no per-class
thresholds, a path that file; ``--score-thresh`` then keeps (and draws) only the detections at
or above it.

Writes into ``--out-dir``: one picture per image (``<name>.jpg``, the input's size, each box in
its class's colour with the class name and score), one annotated video per video (``<name>.avi``,
Motion-JPEG), ``results.json`` (COCO results: ``image_id``, ``file_name``, ``category_id`` -- the
dataset's original ids --, ``bbox`` xywh in original pixels, ``score``) and ``index.json`` (each
input -> its image ids; each image's file, size, frame and picture; the categories). Image ids:
the images 1..N in input order, then the frames of each video in turn.
A ``key=value`` argument is a config override, unless a file of that name exists.

Unreadable images and videos are skipped and counted in one line at the end. The output folder
is checked before the work starts. Exit status 2 with ``error: <message>`` on a user error (bad
config, no images found, a checkpoint that does not fit, an unwritable ``--out-dir``).
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from detmine.cli import add_checkpoint_arguments, run_tool


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        description=__doc__.split("\n\n")[0], formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.epilog = "\n\n".join(__doc__.split("\n\n")[2:])
    add_checkpoint_arguments(parser)
    parser.add_argument(
        "inputs",
        nargs="+",
        metavar="INPUT",
        help="image files, folders, quoted glob patterns, video files; and key.sub=value config overrides",
    )
    parser.add_argument("--out-dir", required=True, help="where pictures, results.json and index.json go")
    parser.add_argument(
        "--score-thresh", type=float, default=None, help="keep and draw only detections scoring at least this"
    )
    parser.add_argument(
        "--thresholds",
        default="auto",
        metavar="auto|none|PATH",
        help="per-class thresholds: auto (thresholds.json next to the checkpoint when there is one), "
        "none, or a file",
    )
    parser.add_argument("--batch-size", type=int, default=None, help="default: eval.batch_size")
    parser.add_argument(
        "--every-n-frames", type=int, default=1, metavar="N", help="of a video, read frames 0, N, 2N ..."
    )
    parser.add_argument("--no-pictures", action="store_true", help="write results.json and index.json only")
    parser.add_argument("--no-progress", action="store_true", help="no progress bar")
    args = parser.parse_intermixed_args(argv)
    if args.score_thresh is not None and not 0.0 <= args.score_thresh <= 1.0:
        parser.error("--score-thresh must be in [0, 1]")
    if args.batch_size is not None and args.batch_size < 1:
        parser.error("--batch-size must be >= 1")
    if args.every_n_frames < 1:
        parser.error("--every-n-frames must be >= 1")
    from detmine.predict.command import split_overrides

    args.inputs, args.overrides = split_overrides(args.inputs)
    if not args.inputs:
        parser.error("no INPUT given (only config overrides)")
    return args


def run(args: argparse.Namespace) -> int:
    from detmine.config import load_config
    from detmine.predict.command import PredictSettings, predict_to_folder, print_summary

    cfg = load_config(args.config, args.overrides, plugins=args.plugin, sections=("data", "model", "eval"))
    settings = PredictSettings(
        out_dir=Path(args.out_dir),
        score_thresh=args.score_thresh,
        thresholds=args.thresholds,
        batch_size=args.batch_size,
        every_n_frames=args.every_n_frames,
        pictures=not args.no_pictures,
        progress=not args.no_progress,
    )
    summary = predict_to_folder(
        cfg,
        args.checkpoint,
        args.inputs,
        settings,
        weights=args.weights,
        trusted=args.trust_checkpoint,
        device=args.device,
        config_path=args.config,
    )
    print_summary(summary, settings)
    return 0


def main(argv: list[str] | None = None) -> int:
    return run_tool(run, parse_args(argv))


if __name__ == "__main__":
    sys.exit(main())
