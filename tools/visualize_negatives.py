#!/usr/bin/env python
"""Show what the miner picks and which background the model mistakes for objects.

    python tools/visualize_negatives.py CONFIG CHECKPOINT [--split val] [--num-images 16]
        [--gallery-images 0] [--gallery-size 64] [--score-thresh 0.3] [--class-aware]
        [--heat-map merged|levels|off] [--format png|jpg] [--weights auto|ema|model]
        [--out-dir DIR] [--logdir DIR] [key=value ...]

Runs the model and the criterion of the recipe over images of a split without training
(no gradients, evaluation transform) and writes to ``--out-dir`` (default
``<checkpoint dir>/negatives_<split>``):

- ``negatives/<n>_img<image id>.png`` (``.jpg`` with ``--format jpg``) for the first
  ``--num-images`` images, long side >= 512: ground truth, positive anchors, the ``vis.top_k``
  hardest mined negatives coloured by loss rank, ignored anchors; beside them the heat map of
  the counted negatives' loss per anchor location (``--heat-map``: the pyramid levels merged,
  one panel per level, or off); below, a legend whose caption says where the negatives' loss
  goes (``all`` miner: the share held by the top 1% / 10% of the negatives; a real miner: how
  many it kept, and their share);
- ``gallery.png`` + ``gallery.json``: the ``--gallery-size`` highest-scoring false
  positives over the first ``--gallery-images`` images (0 = the whole split) -- predictions
  that overlap no ground-truth box (of any class; with ``--class-aware`` of their own class)
  at IoU >= 0.5 and lie on no ignore region, cropped, sorted by score, captioned with class,
  score and image id. This is where missing labels and confusing background show up;
- ``gallery/index.html``: the same false positives as a web page (every crop, its score,
  class and source image; relative links, opens offline), with ``gallery/crops/`` and
  ``gallery/sources/``.

With ``--logdir`` the same pictures go to TensorBoard (``negatives/<n>``,
``negatives/gallery``) with the mining histograms/scalars of each batch (``mining/...``,
step = batch index). The output folders are checked before the work starts. Exit status 2
with ``error: <message>`` on a user error (also an unwritable ``--out-dir`` / ``--logdir``).
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import Any, NamedTuple

import cv2
import numpy as np
import torch

from detmine.cli import add_checkpoint_arguments, add_overrides_argument, run_tool
from detmine.distributed import pick_device
from detmine.errors import DetmineError


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    add_checkpoint_arguments(parser)
    parser.add_argument("--split", default=None, help="dataset split (default: data.val_split of the config)")
    parser.add_argument("--num-images", type=int, default=16, help="images to draw the mined negatives of")
    parser.add_argument(
        "--gallery-images",
        type=int,
        default=0,
        help="images searched for false positives (0: the whole split)",
    )
    parser.add_argument("--gallery-size", type=int, default=64, help="false positives in the gallery")
    parser.add_argument(
        "--class-aware",
        action="store_true",
        help="a prediction on a GT box of another class is a false positive too (default: background only)",
    )
    parser.add_argument("--score-thresh", type=float, default=0.3, help="lowest prediction score considered")
    parser.add_argument(
        "--heat-map",
        choices=["merged", "levels", "off"],
        default="merged",
        help="heat map of the negatives' loss beside the boxes: levels merged (default), per level, or off",
    )
    parser.add_argument(
        "--format", choices=["png", "jpg"], default="png", help="file type of the mined-negative pictures"
    )
    parser.add_argument("--batch-size", type=int, default=None, help="default: eval.batch_size")
    parser.add_argument(
        "--out-dir", default=None, help="PNG folder (default: <checkpoint dir>/negatives_<split>)"
    )
    parser.add_argument("--logdir", default=None, help="also write the pictures to TensorBoard here")
    parser.add_argument("--no-progress", action="store_true", help="no progress bar")
    add_overrides_argument(parser, "vis.top_k=50 data.root=/data/coco")
    args = parser.parse_intermixed_args(argv)
    for name in ("num_images", "gallery_images", "gallery_size"):
        if getattr(args, name) < 0 or (name == "gallery_size" and args.gallery_size < 1):
            parser.error(f"--{name.replace('_', '-')} must be >= {1 if name == 'gallery_size' else 0}")
    return args


def write_picture(path: Path, image_rgb: Any) -> None:
    """Write an RGB ``uint8 [H, W, 3]`` picture as a PNG -- or a JPEG (quality 90) when ``path``
    ends in ``.jpg`` --, atomically (one-line error)."""
    from detmine.safe_io import atomic_write_bytes

    jpeg = path.suffix.lower() in (".jpg", ".jpeg")
    params = [cv2.IMWRITE_JPEG_QUALITY, 90, cv2.IMWRITE_JPEG_OPTIMIZE, 1] if jpeg else []
    ok, encoded = cv2.imencode(path.suffix, np.ascontiguousarray(image_rgb[..., ::-1]), params)
    if not ok:
        raise DetmineError(f"could not encode the picture {path} as {path.suffix}")
    atomic_write_bytes(path, encoded.tobytes(), what="picture", where="--out-dir")


class _Job(NamedTuple):
    """What the tool works with once the config, the checkpoint and the outputs were checked."""

    cfg: Any
    split: str
    device: Any
    out_dir: Path
    model: Any
    dataset: Any
    criterion: Any
    loader: Any
    n_gallery: int
    writer: Any = None


def _prepare(args: argparse.Namespace) -> _Job:
    """The config (the sections the criterion needs), the output folders checked before any work,
    the detector on the split, the criterion and the loader over the images to look at."""
    from torch.utils.data import Subset

    from detmine.config import load_config
    from detmine.config.loading import COMPONENT_SECTIONS
    from detmine.data.loader import build_dataloader
    from detmine.engine import builders
    from detmine.safe_io import check_writable

    used = [s for s in COMPONENT_SECTIONS if s != "hooks"]  # the criterion, not training's hooks
    cfg = load_config(args.config, args.overrides, plugins=args.plugin, sections=used)
    split = args.split or cfg.data.val_split
    device = pick_device(args.device or cfg.train.device)
    out_dir = (
        Path(args.out_dir) if args.out_dir else Path(args.checkpoint).resolve().parent / f"negatives_{split}"
    )
    check_writable(out_dir, "pictures folder", where="--out-dir", folder=True)  # before any work
    if args.logdir:
        check_writable(args.logdir, "TensorBoard folder", where="--logdir", folder=True)
    model, dataset, _ = builders.detector_for_split(
        cfg, split, args.checkpoint, weights=args.weights, trusted=args.trust_checkpoint, device=device
    )
    facts = builders.training_set_facts(cfg, model)  # the training split, built only if a loss asks
    criterion = builders.build_criterion_from_config(cfg, model, facts).to(device)
    n_gallery = len(dataset) if args.gallery_images == 0 else min(args.gallery_images, len(dataset))
    n_total = max(min(args.num_images, len(dataset)), n_gallery)
    if n_total == 0:
        raise DetmineError(f"split '{split}' of {cfg.data.root} has no images")
    loader = build_dataloader(
        Subset(dataset, range(n_total)),
        args.batch_size or cfg.eval.batch_size,
        train=False,
        num_workers=cfg.data.num_workers,
        **builders.batch_geometry(model),
    )
    writer = None
    if args.logdir:
        from torch.utils.tensorboard import SummaryWriter

        writer = SummaryWriter(log_dir=args.logdir)
    return _Job(cfg, split, device, out_dir, model, dataset, criterion, loader, n_gallery, writer)


def _visit(job: _Job, args: argparse.Namespace, gallery: Any) -> int:
    """Every batch: the criterion's mining record, a picture per image (the first
    ``--num-images``), the false positives into the gallery; returns the pictures drawn."""
    from detmine.console import Progress
    from detmine.engine.trainer import targets_to
    from detmine.viz.tensorboard import MiningVisualizer, image_to_numpy, render_mining_image

    names = job.dataset.class_names
    stats_logger = MiningVisualizer(job.writer, period=1, num_images=0, class_names=names)
    seen = drawn = 0
    progress = Progress(len(job.loader.dataset), "negatives", unit="img", enabled=not args.no_progress)
    with torch.no_grad():
        for step, (images, targets) in enumerate(job.loader):
            images = images.to(job.device)
            targets = targets_to(targets, job.device)
            outputs = job.model(images)
            _, record = job.criterion(outputs, targets)
            sizes = [tuple(t["input_size"]) for t in targets]
            detections = job.model.postprocess(
                outputs,
                image_shape=tuple(images.shape[-2:]),
                input_sizes=sizes,
                level_counts=outputs.level_counts,
                **{**job.cfg.eval.postprocess.options(), "score_thresh": args.score_thresh},
            )
            if job.writer is not None:
                stats_logger.log(step, images, targets, outputs, record)
            for b, target in enumerate(targets):
                if seen + b < args.num_images:
                    picture = render_mining_image(
                        images[b],
                        target,
                        outputs.anchors,
                        record,
                        b,
                        top_k=job.cfg.vis.top_k,
                        class_names=names,
                        level_counts=outputs.level_counts,
                        heat_map=args.heat_map,
                    )
                    name = f"{drawn:04d}_img{target['image_id']}.{args.format}"
                    write_picture(job.out_dir / "negatives" / name, picture)
                    if job.writer is not None:
                        job.writer.add_image(f"negatives/{drawn}", picture, 0, dataformats="HWC")
                    drawn += 1
                if seen + b < job.n_gallery:
                    gallery.add(image_to_numpy(images[b], sizes[b]), detections[b], target)
            seen += len(targets)
            progress.update(len(targets))
    progress.close()
    return drawn


def run(args: argparse.Namespace) -> int:
    from detmine.safe_io import atomic_write_bytes, atomic_write_text
    from detmine.viz.gallery import HardNegativeGallery
    from detmine.viz.gallery_html import gallery_page, write_gallery_page

    job = _prepare(args)
    gallery = HardNegativeGallery(
        args.gallery_size, class_names=job.dataset.class_names, class_aware=args.class_aware
    )
    drawn = _visit(job, args, gallery)
    grid = gallery.render()
    write_picture(job.out_dir / "gallery.png", grid)
    text = json.dumps(gallery.to_json(), indent=1)
    atomic_write_text(job.out_dir / "gallery.json", text, what="gallery", where="--out-dir")
    summary = (
        f"{len(gallery.items)} highest-scoring of {gallery.num_false_positives} false positives "
        f"(score >= {args.score_thresh}, {job.n_gallery} images of split '{job.split}', "
        f"checkpoint {Path(args.checkpoint).name})"
    )
    page = gallery_page(gallery.items, class_names=job.dataset.class_names, summary=summary)
    index = write_gallery_page(
        job.out_dir / "gallery",
        page,
        write=lambda path, data: atomic_write_bytes(path, data, what="gallery page", where="--out-dir"),
    )
    if job.writer is not None:
        job.writer.add_image("negatives/gallery", grid, 0, dataformats="HWC")
        job.writer.close()
    print(
        f"wrote {drawn} mined-negative pictures to {job.out_dir / 'negatives'}; gallery of the "
        f"{len(gallery.items)} highest-scoring of {gallery.num_false_positives} false positives "
        f"(score >= {args.score_thresh}, {job.n_gallery} images) to {job.out_dir / 'gallery.png'} "
        f"and {index}"
    )
    return 0


def main(argv: list[str] | None = None) -> int:
    return run_tool(run, parse_args(argv))


if __name__ == "__main__":
    sys.exit(main())
