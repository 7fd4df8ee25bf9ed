#!/usr/bin/env python
"""Evaluate a checkpoint with the COCO protocol (and VOC mAP on VOC data).

    python tools/evaluate.py CONFIG CHECKPOINT [--split val] [--backend hotcoco|faster_coco_eval|pycocotools]
                             [--weights auto|ema|model] [--out results.json] [key=value ...]

Prints the COCO table and the per-class AP, then writes the COCO results JSON (original
category ids, xywh boxes in original pixels) and ``<out stem>.metrics.json`` next to it; both
paths are checked before the evaluation starts, and a write that fails afterwards still
leaves the printed table.
Several processes: ``torchrun --nproc_per_node N tools/evaluate.py ...`` shards the images
and gathers the detections on rank 0. Exit status 2 with ``error: <message>`` on a user
error (bad config, missing data, corrupt checkpoint, unwritable output).
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import Any

from detmine.cli import add_checkpoint_arguments, add_overrides_argument, run_tool
from detmine.distributed import pick_device
from detmine.errors import ConfigError


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    add_checkpoint_arguments(parser)
    parser.add_argument("--split", default=None, help="dataset split (default: data.val_split of the config)")
    parser.add_argument(
        "--backend",
        default=None,
        choices=("hotcoco", "faster_coco_eval", "pycocotools"),
        help="COCO evaluation backend (default: eval.backend of the config); all give identical numbers",
    )
    parser.add_argument(
        "--metrics", default=None, help="comma-separated subset of coco,voc (default: voc added on VOC data)"
    )
    parser.add_argument(
        "--out", default=None, help="results JSON (default: <checkpoint dir>/results_<split>.json)"
    )
    parser.add_argument("--no-progress", action="store_true", help="no progress bar")
    add_overrides_argument(parser, "eval.batch_size=8 data.root=/data/coco")
    return parser.parse_intermixed_args(argv)


def run(args: argparse.Namespace) -> int:
    from detmine import distributed as dist
    from detmine.config import load_config

    # evaluation builds the data and the model only: the loss / mining / hooks sections are not checked
    cfg = load_config(args.config, args.overrides, plugins=args.plugin, sections=("data", "model", "eval"))
    dist.init_distributed()
    try:
        return _evaluate_checkpoint(args, cfg)
    finally:
        dist.cleanup()


def _evaluate_checkpoint(args: argparse.Namespace, cfg: Any) -> int:
    from detmine import distributed as dist
    from detmine.engine import builders
    from detmine.evaluation.evaluator import evaluate
    from detmine.evaluation.thresholds import predict_options
    from detmine.evaluation.views import build_views
    from detmine.safe_io import check_writable

    split = args.split or cfg.data.val_split
    backend = args.backend or cfg.eval.backend
    metrics = tuple(m.strip() for m in args.metrics.split(",") if m.strip()) if args.metrics else None
    if metrics is not None and (not metrics or not set(metrics) <= {"coco", "voc"}):
        raise ConfigError(f"--metrics {args.metrics!r}: expected a comma-separated subset of coco,voc")
    device = pick_device(args.device or cfg.train.device)
    out = Path(args.out) if args.out else Path(args.checkpoint).resolve().parent / f"results_{split}.json"
    metrics_path = out.with_name(out.stem + ".metrics.json")
    for path, what in ((out, "results file"), (metrics_path, "metrics file")):  # before any work
        check_writable(path, what, where="--out")

    model, dataset, weights = builders.detector_for_split(
        cfg, split, args.checkpoint, weights=args.weights, trusted=args.trust_checkpoint, device=device
    )
    loader = builders.build_val_loader(cfg, dataset, model)
    gather = dist.all_gather_object if dist.get_world_size() > 1 else None
    views = build_views(cfg.eval.views)
    result = evaluate(
        model,
        loader,
        dataset,
        backend=backend,
        device=device,
        gather_fn=gather,
        progress=not args.no_progress,
        metrics=metrics,
        predict_options=predict_options(cfg.eval.postprocess.options()),
        views=views,
        train_counts=_train_counts(cfg, views),
    )
    if result is None:  # not rank 0
        return 0
    print(f"{cfg.model.name} on {cfg.data.kind}/{split} ({backend}):")
    print(result.table, flush=True)  # the numbers first: a failing write below does not lose them
    record = {
        "config": str(args.config),
        "checkpoint": str(args.checkpoint),
        "split": split,
        "backend": backend,
        "weights": weights.which,
        "num_images": len(loader.dataset),
        **result.to_dict(),
    }
    _write(out, json.dumps(result.results), "results file")
    _write(metrics_path, json.dumps(record, indent=2), "metrics file")
    print(f"results: {out}")
    print(f"metrics: {metrics_path}")
    for name, view in result.views.items():  # thresholds.json, the confusion matrix ...
        for file_name, content in view.files.items():
            _write(out.parent / file_name, content, f"{name} view file")
            print(f"{name}: {out.parent / file_name}")
    return 0


def _train_counts(cfg: Any, views: list) -> Any:
    """The training split's class counts (from its annotations; no image is decoded) when the
    ``frequency`` view runs, else None."""
    if not any(name == "frequency" for name, _ in views):
        return None
    from detmine.analysis import count_classes
    from detmine.engine import builders

    return count_classes(builders.build_dataset_split(cfg, cfg.data.train_split, True))


def _write(path: Path, content: str | bytes, what: str) -> None:
    """Write ``content`` to ``path`` atomically; a failure is one line that says the table above
    is complete."""
    from detmine.errors import CheckpointError
    from detmine.safe_io import atomic_write_bytes

    data = content.encode("utf-8") if isinstance(content, str) else content
    try:
        atomic_write_bytes(path, data, what=what, where="--out")
    except CheckpointError as exc:
        raise CheckpointError(f"{exc}; the evaluation above is complete") from None


def main(argv: list[str] | None = None) -> int:
    return run_tool(run, parse_args(argv))


if __name__ == "__main__":
    sys.exit(main())
