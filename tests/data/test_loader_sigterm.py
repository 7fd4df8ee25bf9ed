"""Loader workers and a SIGTERM to the whole process group (``timeout``, SLURM): the workers
leave it to the main process and keep delivering batches, and they are still shut down when
the main process exits -- even with a live iterator at exit, where the exit handler of
``multiprocessing`` SIGTERMs its daemonic children and then waits for them (a worker that
simply ignored SIGTERM would hang the exit forever)."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]

SCRIPT = textwrap.dedent(
    """
    import signal, sys, time
    import torch
    from detmine.data.loader import build_dataloader

    class Slow(torch.utils.data.Dataset):
        def __len__(self):
            return 400

        def __getitem__(self, i):
            time.sleep(0.02)
            t = {{"boxes": torch.zeros((0, 4)), "labels": torch.zeros(0, dtype=torch.int64),
                  "ignore_boxes": torch.zeros((0, 4)), "image_id": i, "orig_size": (1, 1), "input_size": (1, 1)}}
            return torch.zeros((3, 1, 1), dtype=torch.uint8), t

    stop = []
    signal.signal(signal.SIGTERM, lambda signum, frame: stop.append(signum))
    batches = iter(build_dataloader(Slow(), 2, train=True, num_workers=2))  # alive at exit
    for n, _ in enumerate(batches, 1):
        if n == 2:
            open({ready!r}, "w").close()
        if stop:
            for _ in range(4):  # the workers still serve after the group's SIGTERM
                next(batches)
            print("stopped after", n, flush=True)
            sys.exit(143)
    """
)


def test_group_sigterm_is_left_to_the_main_process_and_exit_does_not_hang(tmp_path):
    ready = tmp_path / "ready"
    script = tmp_path / "loader_sigterm.py"
    script.write_text(SCRIPT.format(ready=str(ready)))
    proc = subprocess.Popen(
        [sys.executable, str(script)],
        cwd=ROOT,
        env=dict(os.environ, OMP_NUM_THREADS="1"),
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        start_new_session=True,
    )
    deadline = time.monotonic() + 120
    while not ready.is_file():
        if proc.poll() is not None or time.monotonic() > deadline:
            proc.kill()
            pytest.fail(f"the loader never delivered a batch: {proc.communicate()[1][-2000:]}")
        time.sleep(0.05)
    os.killpg(proc.pid, signal.SIGTERM)
    try:
        out, err = proc.communicate(timeout=60)
    except subprocess.TimeoutExpired:
        os.killpg(proc.pid, signal.SIGKILL)
        pytest.fail("the process did not exit: its workers were not shut down")
    assert proc.returncode == 143, err[-3000:]
    assert out.startswith("stopped after") and "DataLoader worker" not in err
