#!/usr/bin/env python
"""Train a detector from a recipe, evaluate it, print the COCO table.

    python tools/train.py CONFIG [key=value ...] [--resume] [--overwrite] [--allow-config-change]
                          [--output-dir DIR]
    torchrun --nproc_per_node N tools/train.py CONFIG ...     # several GPUs (or CPU processes)

Overrides use the config's dotted keys, e.g. ``mining=ohem train.lr=0.01 train.max_iters=2000``.
The run folder (``output_dir``) receives ``config.yaml`` (the resolved config),
``metrics.jsonl``, TensorBoard events, ``model_<iteration>.pth`` checkpoints, ``latest`` and
``best.pth``. ``--resume`` continues from the newest checkpoint there (the config may differ
only in where results go and how the run is watched, or in its length -- never shorter than
the checkpoint's iteration -- unless ``--allow-config-change``; a finished run is left as it is);
a folder holding another run is refused unless ``--overwrite``.
The synthetic dataset is generated on first use. Ctrl-C / SIGTERM write a checkpoint of the
current iteration and exit 130 / 143. Exit status 2 with ``error: <message>`` on a user error
(bad config key or value, missing data, corrupt checkpoint, non-finite loss).
"""

from __future__ import annotations

import argparse
import sys
import time

from detmine.cli import TRUST_HELP, add_common_arguments, add_overrides_argument, run_tool
from detmine.errors import TrainingInterrupted


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("config", help="recipe YAML (configs/*.yaml)")
    add_overrides_argument(parser, "train.lr=0.01 mining=ohem")
    parser.add_argument(
        "--resume", action="store_true", help="continue from the newest checkpoint in output_dir"
    )
    parser.add_argument(
        "--overwrite",
        action="store_true",
        help="delete the checkpoints and metrics of an earlier run in output_dir and start again",
    )
    parser.add_argument(
        "--allow-config-change",
        action="store_true",
        help="with --resume: continue even when the config differs from the checkpoint's",
    )
    parser.add_argument("--output-dir", default=None, help="run folder (overrides output_dir of the config)")
    parser.add_argument("--trust-checkpoint", action="store_true", help=TRUST_HELP)
    add_common_arguments(parser)
    return parser.parse_intermixed_args(argv)


def run(args: argparse.Namespace) -> int:
    from detmine.config import load_config

    overrides = list(args.overrides)
    if args.output_dir:
        overrides.append(f"output_dir={args.output_dir}")
    if args.resume:
        overrides.append("train.resume=true")
    cfg = load_config(
        args.config, overrides, plugins=args.plugin
    )  # before the heavy imports: config errors are instant

    from detmine import distributed as dist

    start = time.perf_counter()
    dist.init_distributed()
    try:
        code = _train(cfg, args, start)
        dist.barrier()  # no process tears the group down while another still uses it
        return code
    finally:
        dist.cleanup()  # after _train returned: the trainer and its DDP wrapper are gone


def _train(cfg, args: argparse.Namespace, start: float) -> int:
    """Data, parts, the training loop and the closing summary; returns the exit code."""
    from detmine import distributed as dist
    from detmine.engine import builders
    from detmine.engine.run_state import seed_everything

    if dist.is_main_process():
        builders.prepare_data(cfg)
    dist.barrier()
    seed_everything(cfg.train.seed)
    train_set, val_set = builders.build_datasets(cfg)
    model = builders.build_model_from_config(
        cfg, train_set.num_classes, trust_checkpoint=args.trust_checkpoint
    )
    facts = builders.training_set_facts(cfg, model, train_set)
    criterion = builders.build_criterion_from_config(cfg, model, facts)
    trainer = builders.build_trainer(
        cfg,
        model,
        criterion,
        train_set,
        val_set,
        overwrite=args.overwrite,
        allow_config_change=args.allow_config_change,
        trust_checkpoint=args.trust_checkpoint,
    )
    try:
        result = trainer.train()
    except TrainingInterrupted as exc:
        print(f"\n{exc}", file=sys.stderr)
        return exc.exit_code
    if trainer.storage.get("already_finished"):  # --resume of a finished run: said so, did nothing
        return 0
    if dist.is_main_process():
        minutes = (time.perf_counter() - start) / 60
        print(f"\nfinished {trainer.iteration} iterations in {minutes:.1f} min; run folder: {cfg.output_dir}")
        if result is not None:
            print(result.table)
            s = result.stats
            print(f"AP {s['AP']:.4f}  AP50 {s['AP50']:.4f}  AP75 {s['AP75']:.4f}")
    return 0


def main(argv: list[str] | None = None) -> int:
    return run_tool(run, parse_args(argv), interrupt_hint="continue with --resume")


if __name__ == "__main__":
    sys.exit(main())
