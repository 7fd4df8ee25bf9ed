#!/usr/bin/env python
"""Where the main job's minutes go: ``tools/train.py`` run as it is, with wall-clock timers
around its pieces, and a table of the phases at the end.

    python bench/main_job.py [CONFIG] [key=value ...] [tools/train.py's options] [--json PATH]
    # the quickstart from an empty data folder, as from a fresh clone:
    python bench/main_job.py configs/quickstart.yaml data.root=/tmp/mj/synthetic output_dir=/tmp/mj/run

Nothing in the project is edited: the timers are put around the real functions at run time,
then ``tools/train.py``'s ``main`` runs with the remaining arguments (CONFIG defaults to
``configs/quickstart.yaml``). Phases, exclusive of each other:

- preparing the data (the synthetic set is generated here on first use);
- building the datasets, model, criterion and trainer;
- in each training step: waiting for the loader, the forward, the criterion (matching, loss,
  mining), the backward, gradient clipping, and the rest of the step (optimiser, scheduler, EMA);
- every hook call, by hook class and stage (the evaluation and validation-loss passes at the
  end, checkpoints, TensorBoard pictures, logging), a forward run inside a hook counted there;
- the rest: interpreter start, imports, the config, printing the summary.

Timings only; nothing here asserts a speed. Run it with nothing else busy on the machine.
"""

from __future__ import annotations

import argparse
import contextlib
import datetime
import functools
import importlib.util
import json
import os
import sys
import time
from collections import defaultdict
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]


def process_age_s() -> float | None:
    """Seconds since this process started (Linux ``/proc``), or None elsewhere."""
    try:
        start_ticks = int(Path("/proc/self/stat").read_text().rsplit(")", 1)[1].split()[19])
        uptime = float(Path("/proc/uptime").read_text().split()[0])
        return max(uptime - start_ticks / os.sysconf("SC_CLK_TCK"), 0.0)
    except (OSError, ValueError, IndexError):
        return None


class PhaseTimer:
    """Exclusive wall time per phase: a phase nested in another is subtracted from its parent.

    A timer only starts when the phase it would nest in allows it (``parents``); otherwise the
    time stays with the enclosing phase (a forward inside the evaluation hook is evaluation).
    """

    def __init__(self, clock: Callable[[], float] = time.perf_counter) -> None:
        self.clock = clock
        self.seconds: dict[str, float] = defaultdict(float)
        self.calls: dict[str, int] = defaultdict(int)
        self._stack: list[list[Any]] = []  # [label, start, seconds of nested phases]

    @property
    def current(self) -> str | None:
        return self._stack[-1][0] if self._stack else None

    @contextlib.contextmanager
    def phase(self, label: str, parents: tuple[str | None, ...] | None = None) -> Iterator[None]:
        if parents is not None and self.current not in parents:
            yield
            return
        frame = [label, self.clock(), 0.0]
        self._stack.append(frame)
        try:
            yield
        finally:
            self._stack.pop()
            elapsed = self.clock() - frame[1]
            self.seconds[label] += elapsed - frame[2]
            self.calls[label] += 1
            if self._stack:
                self._stack[-1][2] += elapsed

    def wrap(
        self, function: Callable[..., Any], label: str, parents: tuple[str | None, ...] | None = None
    ) -> Callable[..., Any]:
        @functools.wraps(function)
        def timed(*args: Any, **kwargs: Any) -> Any:
            with self.phase(label, parents):
                return function(*args, **kwargs)

        return timed

    def patch(self, owner: Any, name: str, label: str, parents: tuple[str | None, ...] | None = None) -> None:
        """Replace ``owner.name`` by its timed wrapper, once (a class patched again is left as it is)."""
        function = getattr(owner, name)
        if getattr(function, "_timed_by", None) is self:
            return
        timed = self.wrap(function, label, parents)
        timed._timed_by = self  # type: ignore[attr-defined]
        setattr(owner, name, timed)


STEP = "training step: optimiser, scheduler, the rest"
TOP = (None,)


def instrument(timer: PhaseTimer) -> None:
    """Put the timers around the pieces of ``tools/train.py``'s run."""
    import torch

    from detmine.engine import builders
    from detmine.engine.trainer import Trainer

    building = "building datasets, model, criterion, trainer"
    timer.patch(builders, "prepare_data", "preparing the data (generation on first use)", TOP)
    for name in ("build_datasets", "build_model_from_config", "build_criterion_from_config"):
        timer.patch(builders, name, building, TOP)
    build_trainer = builders.build_trainer

    @functools.wraps(build_trainer)
    def build_and_instrument(*args: Any, **kwargs: Any) -> Any:
        with timer.phase(building, TOP):
            trainer = build_trainer(*args, **kwargs)
        timer.patch(type(trainer.data), "__next__", "training: waiting for the loader", ("training",))
        timer.patch(trainer, "forward", "training step: forward", (STEP,))
        # special methods are looked up on the type
        timer.patch(
            type(trainer.criterion), "__call__", "training step: criterion (matching, loss, mining)", (STEP,)
        )
        return trainer

    builders.build_trainer = build_and_instrument
    timer.patch(Trainer, "train", "training", TOP)
    timer.patch(Trainer, "run_step", STEP, ("training",))

    def call_hooks(trainer: Trainer, stage: str) -> None:
        for hook in trainer.hooks:
            with timer.phase(f"hook {type(hook).__name__}.{stage}", ("training",)):
                getattr(hook, stage)(trainer)

    Trainer._call = call_hooks
    timer.patch(torch.Tensor, "backward", "training step: backward", (STEP,))
    timer.patch(torch.nn.utils, "clip_grad_norm_", "training step: gradient clipping", (STEP,))


def load_train_tool() -> Any:
    spec = importlib.util.spec_from_file_location("detmine_train_tool", ROOT / "tools" / "train.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def cpu_model() -> str:
    from detmine.env import cpu_model as describe

    return describe()


def report(timer: PhaseTimer, wall: float, before_script: float | None) -> list[dict[str, Any]]:
    rows = [
        dict(phase=label, seconds=seconds, calls=timer.calls[label])
        for label, seconds in sorted(timer.seconds.items(), key=lambda item: -item[1])
        if label != "training"  # its exclusive time is the hooks' loop overhead: in "the rest"
    ]
    small = [row for row in rows if row["phase"].startswith("hook ") and row["seconds"] < 0.001 * wall]
    if small:  # one line for the hooks that cost nothing worth a line
        rows = [row for row in rows if row not in small]
        rows.append(
            dict(
                phase=f"{len(small)} other hook stages, each < 0.1 %",
                seconds=sum(row["seconds"] for row in small),
                calls=sum(row["calls"] for row in small),
            )
        )
    accounted = sum(row["seconds"] for row in rows)
    rest = wall - accounted
    rows.append(
        dict(phase="the rest: interpreter start, imports, config, summary, loop", seconds=rest, calls=1)
    )
    width = max(len(row["phase"]) for row in rows)
    print(f"\nmain job, phase by phase (wall {wall:.1f} s", end="")
    if before_script is not None:
        print(f", {before_script:.2f} s of it before the script's first line", end="")
    print(f"; CPU {cpu_model()}, {os.cpu_count()} cores, {_threads()} torch threads)")
    print(f"{'phase':<{width}}  {'seconds':>8}  {'share':>6}  calls")
    for row in rows:
        print(
            f"{row['phase']:<{width}}  {row['seconds']:8.1f}  {100 * row['seconds'] / wall:5.1f}%  {row['calls']}"
        )
    return rows


def _threads() -> int:
    import torch

    return torch.get_num_threads()


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0], add_help=False)
    parser.add_argument("--json", default=None, help="also write the table here")
    parser.add_argument("-h", "--help", action="store_true")
    own, rest = parser.parse_known_args(argv)
    if own.help:
        print(__doc__)
        return 0
    if not rest or rest[0].startswith("-") or "=" in rest[0]:
        rest = ["configs/quickstart.yaml", *rest]
    before_script = process_age_s()
    start = time.perf_counter()
    timer = PhaseTimer()
    sys.path.insert(0, str(ROOT))
    instrument(timer)
    code = load_train_tool().main(rest)
    wall = time.perf_counter() - start + (before_script or 0.0)
    rows = report(timer, wall, before_script)
    if own.json:
        Path(own.json).write_text(
            json.dumps(
                dict(
                    command=" ".join(sys.argv),
                    date=datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
                    cpu=cpu_model(),
                    cores=os.cpu_count(),
                    exit_code=code,
                    wall_s=wall,
                    phases=rows,
                ),
                indent=1,
            )
        )
    return code


if __name__ == "__main__":
    sys.exit(main())
