#!/usr/bin/env python
"""Analyse a recipe's dataset split without training: classes, object sizes, anchor coverage,
anchor labels per image and what the miner keeps.

    python tools/analyze_data.py CONFIG [--split train] [--out-dir DIR] [--checkpoint CKPT]
        [--max-images N] [--tensorboard] [--no-progress] [key=value ...]

From the annotations alone (no image decoded), at the evaluation geometry (each image's
annotated size through the recipe's evaluation resize, padded as the model pads):

- images, objects and images with objects per class (``detmine.analysis.count_classes``), the
  share of images without objects;
- object sizes: COCO small / medium / large at the original size and at the network input;
- with the recipe's anchors and matcher (one matching pass): per ground-truth box its best
  anchor IoU and the positive anchors it gets; by size and class the share below the
  foreground threshold and the share left without any positive anchor;
- positive / negative / ignored anchors per image, the negative:positive ratio;
- what the configured miner keeps by its quota rule, per image and in total.

With ``--checkpoint`` the model and the criterion also run over the first ``--max-images``
images of the split (this decodes them): the negatives the miner really selects per image
and their share of the negatives' loss.

Writes ``summary.md`` and PNG plots to ``--out-dir`` (default ``runs/analyze_<split>``), and
TensorBoard scalars, histograms and the plots to ``<out-dir>/tensorboard`` with
``--tensorboard``. The folder is checked before the work starts; the headline numbers are
printed before anything is written. Exit status 2 with ``error: <message>`` on a user error
(bad config, missing data, corrupt checkpoint, unwritable output).
"""

from __future__ import annotations

import argparse
import copy
import datetime
import shlex
import sys
import time
from pathlib import Path
from typing import Any

from detmine.cli import add_common_arguments, add_overrides_argument, add_weights_arguments, run_tool
from detmine.errors import ConfigError


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("config", help="recipe YAML (configs/*.yaml) or a run's config.yaml")
    parser.add_argument(
        "--split", default=None, help="dataset split (default: data.train_split of the config)"
    )
    parser.add_argument("--out-dir", default=None, help="report folder (default: runs/analyze_<split>)")
    parser.add_argument(
        "--checkpoint",
        default=None,
        help="also run this model and the recipe's criterion over the split: the real selection",
    )
    add_weights_arguments(parser)
    parser.add_argument(
        "--max-images",
        type=int,
        default=256,
        help="images the --checkpoint pass decodes (the first of the split; 0: all). The annotation "
        "statistics always cover the whole split",
    )
    parser.add_argument(
        "--batch-size", type=int, default=None, help="--checkpoint batch (default: eval.batch_size)"
    )
    parser.add_argument(
        "--device", default=None, choices=("auto", "cpu", "cuda"), help="default: train.device"
    )
    parser.add_argument("--tensorboard", action="store_true", help="also write to <out-dir>/tensorboard")
    parser.add_argument("--no-progress", action="store_true", help="no progress bar")
    add_common_arguments(parser)
    add_overrides_argument(parser, "data.root=/data/coco matching.fg_iou_thresh=0.4")
    args = parser.parse_intermixed_args(argv)
    if args.max_images < 0:
        parser.error("--max-images must be >= 0")
    if args.batch_size is not None and args.batch_size < 1:
        parser.error("--batch-size must be >= 1")
    return args


def _matcher(cfg: Any, model: Any) -> Any:
    """The run's matcher (the one the criterion and the training-set facts use)."""
    from detmine.engine.builders import build_matcher_from_config

    return build_matcher_from_config(cfg, model)


def _model(cfg: Any, args: argparse.Namespace, num_classes: int, weights: Any, device: Any) -> Any:
    """The checkpoint's detector, or the recipe's (its anchors only: no ``model.weights``)."""
    from detmine.engine import builders

    if weights is not None:
        return builders.load_detector(cfg, num_classes, weights, device=device, trusted=args.trust_checkpoint)
    model = builders.build_model_from_config(cfg, num_classes, load_weights=False).eval()
    if not hasattr(model, "anchors_for"):
        raise ConfigError(
            f"model {cfg.model.name!r} does not say its anchors (no anchors_for): nothing to match"
        )
    return model


def _replay(
    args: argparse.Namespace, cfg: Any, dataset: Any, transform: Any, model: Any, criterion: Any, device: Any
):
    """The model and the criterion over the first ``--max-images`` images, evaluation transform."""
    from torch.utils.data import Subset

    from detmine.analysis import replay_mining
    from detmine.data.loader import build_dataloader
    from detmine.engine import builders

    count = len(dataset) if args.max_images == 0 else min(args.max_images, len(dataset))
    images = copy.copy(dataset)  # the same records, decoded through the evaluation transform
    images.transform = transform
    batch = args.batch_size or cfg.eval.batch_size
    loader = build_dataloader(
        Subset(images, range(count)),
        batch,
        train=False,
        num_workers=cfg.data.num_workers,
        **builders.batch_geometry(model),
    )
    replay = replay_mining(
        model, criterion, loader, device=device, total=count, progress=not args.no_progress
    )
    return (
        replay,
        f"`{args.checkpoint}` over the first {count} images, evaluation transform, batches of {batch}.",
    )


def run(args: argparse.Namespace, argv: list[str]) -> int:
    from detmine.analysis import DatasetFacts, EvalGeometry, count_classes, match_annotations, miner_quota
    from detmine.analysis.data_report import DataReport, headline
    from detmine.config import load_config
    from detmine.config.loading import COMPONENT_SECTIONS
    from detmine.data.transforms import build_transforms
    from detmine.distributed import pick_device
    from detmine.engine import builders
    from detmine.env import cpu_model
    from detmine.safe_io import check_writable

    sections = [s for s in COMPONENT_SECTIONS if s != "hooks"]  # the criterion, not training's hooks
    cfg = load_config(args.config, args.overrides, plugins=args.plugin, sections=sections)
    split = args.split or cfg.data.train_split
    out_dir = Path(args.out_dir or f"runs/analyze_{split}")
    check_writable(out_dir, "report folder", where="--out-dir", folder=True)  # before any work
    device = pick_device(args.device or cfg.train.device)
    weights = None
    if args.checkpoint:  # a bad file fails before any data work
        weights = builders.read_detector_weights(
            args.checkpoint, weights=args.weights, trusted=args.trust_checkpoint
        )

    builders.prepare_data(cfg)
    dataset = builders.build_dataset_split(cfg, split, split == cfg.data.train_split)
    classes = count_classes(dataset)
    model = _model(cfg, args, dataset.num_classes, weights, device)
    transform = build_transforms("eval", cfg.data.image_size, **builders.eval_transform_options(cfg))
    matcher = _matcher(cfg, model)
    start = time.perf_counter()
    matches = match_annotations(
        dataset,
        anchors_for=model.anchors_for,
        matcher=matcher,
        geometry=EvalGeometry(transform),
        size_divisible=int(getattr(model, "size_divisible", 1)),
        device=device,
        progress=not args.no_progress,
    )
    seconds = time.perf_counter() - start
    if split == cfg.data.train_split:  # a loss or miner asking for the anchor counts reuses the pass
        facts: Any = DatasetFacts(dataset, lambda _: matches.counts())
    else:
        facts = builders.training_set_facts(cfg, model)
    criterion = builders.build_criterion_from_config(cfg, model, facts).to(device)
    replay, source = (
        _replay(args, cfg, dataset, transform, model, criterion, device) if weights else (None, "")
    )
    report = DataReport(
        title=f"{Path(args.config).name} / {split} ({cfg.data.kind}, {cfg.data.root})",
        command=shlex.join(["python", "tools/analyze_data.py", *argv]),
        date=datetime.datetime.now().astimezone().isoformat(timespec="seconds"),
        cpu=cpu_model(),
        classes=classes,
        matches=matches,
        matcher=repr(matcher),
        model=cfg.model.name,
        quota=miner_quota(criterion.miner, matches.positives, matches.negatives),
        miner=repr(criterion.miner),
        seconds=seconds,
        replay=replay,
        replay_source=source,
    )
    print("\n".join(headline(report)), flush=True)  # the numbers first: a failing write loses nothing
    _write_report(report, out_dir, args.tensorboard)
    return 0


def _write_report(report: Any, out_dir: Path, tensorboard: bool) -> None:
    """``summary.md`` and the PNGs (atomic writes), then TensorBoard when asked."""
    from detmine.analysis.data_report import report_figures, report_scalars, summary_markdown
    from detmine.analysis.plots import figure_png, figure_rgb
    from detmine.safe_io import atomic_write_bytes, atomic_write_text

    figures = report_figures(report)
    atomic_write_text(out_dir / "summary.md", summary_markdown(report), what="summary", where="--out-dir")
    for name, fig in figures.items():
        atomic_write_bytes(out_dir / name, figure_png(fig), what="plot", where="--out-dir")
    print(f"report: {out_dir / 'summary.md'} (+ {len(figures)} plots)")
    if tensorboard:
        from torch.utils.tensorboard import SummaryWriter

        with SummaryWriter(log_dir=str(out_dir / "tensorboard")) as writer:
            for key, value in report_scalars(report).items():
                writer.add_scalar(key, value, 0)
            for name, fig in figures.items():
                writer.add_image(f"data/{Path(name).stem}", figure_rgb(fig), 0, dataformats="HWC")
            writer.add_histogram("coverage/best_iou", report.matches.best_iou, 0)
            writer.add_histogram("anchors/positives_per_image", report.matches.positives, 0)
        print(f"tensorboard: {out_dir / 'tensorboard'}")


def main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    return run_tool(lambda args: run(args, argv), parse_args(argv))


if __name__ == "__main__":
    sys.exit(main())
