"""Running the remaining cells: here (one after another, or ``jobs`` at once, each a
``tools/train.py`` process with its log in its run folder), or on SLURM through submitit.

A grid too big for one machine belongs to a scheduler: ``tools/ablate.py --print-commands``
writes one command per remaining cell (for a job array or any runner); ``--launcher
submitit`` submits them (submitit is an optional extra: ``pip install submitit``).
"""

from __future__ import annotations

import os
import signal
import subprocess
import threading
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

from detmine.ablation.cells import CellStatus
from detmine.console import log
from detmine.errors import ConfigError, DetmineError, TrainingInterrupted

LOG_NAME = "train.log"

Command = Callable[[CellStatus], list[str]]


def _environment(jobs: int) -> dict[str, str]:
    """Each of ``jobs`` concurrent cells gets an equal share of the cores (torch's threads
    thrash when two processes each take all of them), unless OMP_NUM_THREADS is set."""
    env = dict(os.environ)
    if jobs > 1 and "OMP_NUM_THREADS" not in env:
        env["OMP_NUM_THREADS"] = str(max(1, (os.cpu_count() or 1) // jobs))
    return env


def _start(status: CellStatus, command: list[str], env: dict[str, str]) -> tuple[subprocess.Popen, Any]:
    """Start a cell in its own session: a Ctrl-C or a group SIGTERM reaches this process only,
    which passes exactly one signal on (a second one would stop a cell without its checkpoint)."""
    status.cell.path.mkdir(parents=True, exist_ok=True)
    log_file = open(status.cell.path / LOG_NAME, "a")  # noqa: SIM115 -- closed when the process ends
    log_file.write(f"\n$ {' '.join(command)}\n")
    log_file.flush()
    process = subprocess.Popen(
        command, stdout=log_file, stderr=subprocess.STDOUT, env=env, start_new_session=True
    )
    return process, log_file


def _last_error(path: Path) -> str:
    try:
        lines = (path / LOG_NAME).read_text().splitlines()
    except OSError:
        return ""
    errors = [line for line in lines if line.startswith("error:")]
    return errors[-1] if errors else (lines[-1] if lines else "")


class _Signals:
    """SIGINT / SIGTERM noted (not raised) while the cells run, in the main thread only."""

    def __init__(self) -> None:
        self.received: int | None = None
        self._previous: dict[int, Any] = {}

    def __enter__(self) -> _Signals:
        if threading.current_thread() is threading.main_thread():
            for sig in (signal.SIGINT, signal.SIGTERM):
                self._previous[sig] = signal.signal(sig, self._note)
        return self

    def _note(self, signum: int, frame: Any) -> None:
        self.received = self.received or signum

    def __exit__(self, *exc: Any) -> None:
        for sig, handler in self._previous.items():
            signal.signal(sig, handler)


def run_locally(statuses: Sequence[CellStatus], command: Command, *, jobs: int = 1) -> list[str]:
    """Run the cells' commands here, ``jobs`` at a time; returns the names of the cells that
    failed. On Ctrl-C / SIGTERM no new cell starts, each running cell gets that signal once
    (it checkpoints and stops), and :class:`TrainingInterrupted` is raised when they have
    stopped: running the ablation again resumes them."""
    if jobs < 1:
        raise ConfigError(f"--jobs must be >= 1, got {jobs}")
    env = _environment(jobs)
    waiting = list(statuses)
    running: list[tuple[CellStatus, subprocess.Popen, Any, float]] = []
    failed: list[str] = []
    done = 0
    forwarded = False
    with _Signals() as signals:
        while waiting or running:
            if signals.received is not None and not forwarded:
                forwarded = True
                waiting.clear()
                for _, process, _, _ in running:
                    process.send_signal(signals.received)
            while waiting and len(running) < jobs:
                status = waiting.pop(0)
                process, log_file = _start(status, command(status), env)
                log(
                    f"ablate: {status.cell.name} started ({status.state}); log: {status.cell.path / LOG_NAME}"
                )
                running.append((status, process, log_file, time.perf_counter()))
            time.sleep(0.2)
            for entry in list(running):
                status, process, log_file, started = entry
                code = process.poll()
                if code is None:
                    continue
                running.remove(entry)
                log_file.close()
                done += 1
                minutes = (time.perf_counter() - started) / 60
                if code in (130, 143):
                    log(f"ablate: {status.cell.name} stopped at a checkpoint")
                elif code != 0:
                    failed.append(status.cell.name)
                    log(f"ablate: {status.cell.name} FAILED (exit {code}): {_last_error(status.cell.path)}")
                else:
                    log(f"ablate: {status.cell.name} finished in {minutes:.1f} min ({done}/{len(statuses)})")
        if signals.received is not None:
            raise TrainingInterrupted(
                f"ablation stopped by {signal.Signals(signals.received).name}; the running cells wrote a "
                "checkpoint: run the same command again to resume",
                exit_code=128 + int(signals.received),
            )
    return failed


def submit_with_submitit(
    statuses: Sequence[CellStatus], command: Command, *, folder: Path, options: dict[str, Any]
) -> list[str]:
    """Submit one SLURM job per cell through submitit (an optional extra); returns the job ids.
    ``options`` go to ``AutoExecutor.update_parameters`` (``timeout_min``, ``slurm_partition``,
    ``gpus_per_node`` ...)."""
    try:
        import submitit  # type: ignore[import-not-found]
    except ImportError:
        raise DetmineError(
            "--launcher submitit needs the submitit package (pip install submitit); "
            "or use --print-commands with your own job runner"
        ) from None
    executor = submitit.AutoExecutor(folder=str(folder))
    executor.update_parameters(**options)
    jobs = [
        executor.submit(submitit.helpers.CommandFunction(command(status), cwd=os.getcwd()))
        for status in statuses
    ]
    return [str(job.job_id) for job in jobs]
