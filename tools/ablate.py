#!/usr/bin/env python
"""Run a grid of imbalance strategies x seeds over one recipe and say which differences are real.

    python tools/ablate.py ABLATION.yaml [--jobs N]              # run what is left, then the table
    python tools/ablate.py ABLATION.yaml --print-commands       # one train command per remaining cell
    python tools/ablate.py ABLATION.yaml --launcher submitit --slurm timeout_min=600 slurm_partition=gpu
    python tools/ablate.py ABLATION.yaml --collect              # the table from the run folders as they are

The ablation file names a recipe, strategies as sets of config overrides, seeds and a baseline
(configs/ablations/ has examples; ``detmine.ablation.spec`` describes the format). Every cell is a
normal run folder (``<output_dir>/<strategy>/seed<seed>``): finished cells are skipped, an
interrupted one resumes from its checkpoint, and a finished cell whose config no longer matches
what the grid asks for is reported, never reused. Every cell's config is checked before anything
runs. The table (``table.md``, ``table.csv``, ``cells.csv``, ``ablation.png``, TensorBoard HParams
in ``tensorboard/``) gives per strategy the mean +- std over seeds and, against the baseline, the
mean paired difference of AP with 95% intervals over seeds and over validation images. Ctrl-C stops
the running cells at a checkpoint; the same command resumes. Exit status 2 with ``error:
<message>`` on a bad ablation file or config, 1 when a cell failed (the table covers the others).
"""

from __future__ import annotations

import argparse
import datetime
import shlex
import sys
from pathlib import Path
from typing import Any

from detmine.cli import add_common_arguments, run_tool
from detmine.errors import ConfigError, TrainingInterrupted

TRAIN_TOOL = Path(__file__).resolve().with_name("train.py")


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("ablation", help="ablation file (YAML: recipe, strategies, seeds, baseline)")
    parser.add_argument(
        "--output-dir", default=None, help="where the cells go (default: output_dir of the file)"
    )
    parser.add_argument("--jobs", type=int, default=1, help="cells run at once on this machine (default 1)")
    what = parser.add_mutually_exclusive_group()
    what.add_argument(
        "--print-commands", action="store_true", help="print one command per remaining cell and exit"
    )
    what.add_argument("--collect", action="store_true", help="only build the table from the run folders")
    parser.add_argument(
        "--launcher", choices=("local", "submitit"), default="local", help="where the remaining cells run"
    )
    parser.add_argument(
        "--slurm",
        nargs="*",
        default=[],
        metavar="KEY=VALUE",
        help="submitit executor parameters (timeout_min=600 slurm_partition=gpu gpus_per_node=1 ...)",
    )
    parser.add_argument(
        "--nproc-per-node", type=int, default=1, help="processes per cell (torchrun) in the commands"
    )
    parser.add_argument(
        "--bootstrap-samples", type=int, default=1000, help="bootstrap resamples of the validation images"
    )
    add_common_arguments(parser)
    return parser.parse_args(argv)


def _slurm_options(items: list[str]) -> dict[str, Any]:
    import yaml

    options: dict[str, Any] = {}
    for item in items:
        key, sep, value = item.partition("=")
        if not sep or not key:
            raise ConfigError(f"--slurm {item!r} must look like key=value (e.g. timeout_min=600)")
        options[key] = yaml.safe_load(value)
    return options


def run(args: argparse.Namespace) -> int:
    from detmine.ablation.cells import FINISHED, INTERRUPTED, NEW, cell_status, shell_line, train_command
    from detmine.ablation.spec import load_ablation

    for flag, value in (
        ("--jobs", args.jobs),
        ("--nproc-per-node", args.nproc_per_node),
        ("--bootstrap-samples", args.bootstrap_samples),
    ):
        if value < 1:
            raise ConfigError(f"{flag} must be >= 1, got {value}")
    spec = load_ablation(args.ablation, output_dir=args.output_dir)
    spec.plugins += [p for p in args.plugin if p not in spec.plugins]
    configs = spec.check()  # every cell's config, before anything runs
    statuses = [cell_status(cell, cfg) for cell, cfg in configs.items()]
    _say_states(spec, statuses, to_stderr=args.print_commands)
    remaining = [s for s in statuses if s.state in (NEW, INTERRUPTED)]

    def command(status: Any) -> list[str]:
        return train_command(spec, status, train_tool=TRAIN_TOOL, nproc_per_node=args.nproc_per_node)

    if args.print_commands:
        for status in remaining:
            print(shell_line(command(status)))
        return 0
    failed: list[str] = []
    if not args.collect and remaining:
        if args.launcher == "submitit":
            return _submit(args, spec, remaining, command)
        try:
            failed = _run_here(args, configs, remaining, command)
        except TrainingInterrupted as exc:
            print(f"\n{exc}", file=sys.stderr)
            return exc.exit_code
        statuses = [cell_status(cell, cfg) for cell, cfg in configs.items()]
        failed += _unfinished(statuses, remaining, failed, FINISHED)
    _write_table(args, spec, configs, statuses)
    if failed:
        from detmine.console import log

        log(f"ablate: {len(failed)} cells failed: {', '.join(failed)} (their logs: <cell>/train.log)")
        return 1
    return 0


def _say_states(spec: Any, statuses: list, *, to_stderr: bool) -> None:
    """One line counting the cells by state (on stderr with --print-commands, whose stdout holds
    the commands alone: a job array's input), and a warning per mismatched cell."""
    from detmine.ablation.cells import FINISHED, INTERRUPTED, MISMATCHED, NEW
    from detmine.console import log

    counts = {
        state: sum(s.state == state for s in statuses) for state in (FINISHED, INTERRUPTED, NEW, MISMATCHED)
    }
    log(
        f"ablate: {len(spec.strategies)} strategies x {len(spec.seeds)} seeds = {len(statuses)} cells in "
        f"{spec.output_dir}: " + ", ".join(f"{n} {state}" for state, n in counts.items() if n),
        error=to_stderr,
    )
    for s in statuses:
        if s.state == MISMATCHED:
            log(
                f"warning: {s.cell.name}: its run folder was trained with another config ({s.detail}); not reused"
            )


def _submit(args: argparse.Namespace, spec: Any, remaining: list, command: Any) -> int:
    from detmine.ablation.launch import submit_with_submitit
    from detmine.console import log

    folder = spec.output_dir / "submitit"
    ids = submit_with_submitit(remaining, command, folder=folder, options=_slurm_options(args.slurm))
    log(f"ablate: submitted {len(ids)} cells ({', '.join(ids)}); build the table with --collect later")
    return 0


def _run_here(args: argparse.Namespace, configs: dict, remaining: list, command: Any) -> list[str]:
    from detmine.ablation.launch import run_locally
    from detmine.engine.builders import prepare_data

    prepare_data(configs[remaining[0].cell])  # the synthetic set once, not by each cell at once
    return run_locally(remaining, command, jobs=args.jobs)


def _unfinished(statuses: list, remaining: list, failed: list[str], finished: str) -> list[str]:
    """The cells that ran, exited 0 and still hold no final evaluation (each said once)."""
    from detmine.console import log

    ran = {s.cell for s in remaining}
    out = []
    for s in statuses:
        if s.cell in ran and s.state != finished and s.cell.name not in failed:
            out.append(s.cell.name)
            log(
                f"warning: {s.cell.name}: training ended but its folder holds no final evaluation ({s.state})"
            )
    return out


def _write_table(args: argparse.Namespace, spec: Any, configs: dict, statuses: list) -> None:
    from detmine.ablation.cells import FINISHED
    from detmine.ablation.report import (
        markdown_table,
        summarize,
        write_cells_csv,
        write_csv,
        write_hparams,
        write_plot,
    )
    from detmine.ablation.results import GroundTruth, read_cell
    from detmine.console import log, progress
    from detmine.env import cpu_model
    from detmine.safe_io import atomic_write_text, check_writable

    finished = [s for s in statuses if s.state == FINISHED]
    if not finished:
        log("ablate: no cell has finished yet: no table")
        return
    out = spec.output_dir
    check_writable(out / "table.md", "ablation table", where="--output-dir")
    ground_truth = GroundTruth()
    results = [
        read_cell(s, configs[s.cell], ground_truth)
        for s in progress(finished, "ablate: reading", unit="cell")
    ]
    summaries = summarize(results, spec.strategies, spec.baseline, bootstrap_samples=args.bootstrap_samples)
    import torch

    missing = [s.cell.name for s in statuses if s.state != FINISHED]
    header = [
        f"# Ablation `{spec.source.name}`",
        "",
        f"Recipe `{spec.recipe}`, seeds {', '.join(map(str, spec.seeds))}, baseline `{spec.baseline}`; "
        f"{len(finished)} of {len(statuses)} cells finished"
        + (f" (missing: {', '.join(missing)})" if missing else "")
        + ".",
        f"Table built {datetime.date.today().isoformat()} on {cpu_model()} (torch {torch.__version__}) by "
        f"`{shlex.join(['python', 'tools/ablate.py', *args.argv])}`; "
        "each cell's own run folder holds its config, log and machine.",
    ]
    text = markdown_table(summaries, spec.baseline, header)
    atomic_write_text(out / "table.md", text, what="ablation table")
    print(text)  # the numbers are on screen before the other files are written
    write_csv(out / "table.csv", summaries)
    write_cells_csv(out / "cells.csv", results)
    write_plot(out / "ablation.png", summaries, spec.baseline)
    write_hparams(out / "tensorboard", results, spec.strategies)
    log(f"ablate: wrote {out / 'table.md'}, table.csv, cells.csv, ablation.png and tensorboard/ (HParams)")


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    args.argv = list(sys.argv[1:] if argv is None else argv)  # for the table's header
    return run_tool(run, args, interrupt_hint="run the same command again to resume")


if __name__ == "__main__":
    sys.exit(main())
