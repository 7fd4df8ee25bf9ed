"""The run-folder lock between REAL processes: a second owner is refused naming the holder's
pid (the pid the OS gave the holder, not one the lock computed), the lock dies with its
process (``kill -9``), and a forked child (a DataLoader worker) does not keep it alive."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pytest

from detmine.errors import ConfigError
from detmine.run_lock import RunLock

ROOT = Path(__file__).resolve().parents[1]

HOLDER = textwrap.dedent(
    """
    import os, sys, time
    from detmine.run_lock import RunLock
    lock = RunLock(sys.argv[1]).acquire()
    child = 0
    if sys.argv[2] == "fork":  # a child that outlives the holder, like a loader worker
        child = os.fork()
        if child == 0:
            time.sleep(60)
            os._exit(0)
    print("held", child, flush=True)
    time.sleep(60)
    """
)


def start_holder(folder: Path, mode: str = "plain") -> subprocess.Popen:
    proc = subprocess.Popen(
        [sys.executable, "-c", HOLDER, str(folder), mode], cwd=ROOT, stdout=subprocess.PIPE, text=True
    )
    word, child = proc.stdout.readline().split()
    assert word == "held"
    proc.child = int(child)
    return proc


def try_lock_elsewhere(folder: Path) -> subprocess.CompletedProcess:
    """Another process asks for the lock: prints ``ok`` or the refusal."""
    code = (
        "import sys\nfrom detmine.run_lock import RunLock\nfrom detmine.errors import ConfigError\n"
        "try:\n    RunLock(sys.argv[1]).acquire(); print('ok')\n"
        "except ConfigError as e:\n    print('refused:', e)"
    )
    return subprocess.run(
        [sys.executable, "-c", code, str(folder)], cwd=ROOT, capture_output=True, text=True, timeout=60
    )


def kill9(proc: subprocess.Popen) -> None:
    proc.send_signal(signal.SIGKILL)
    proc.wait(timeout=30)


def test_second_process_is_refused_naming_the_holder_until_it_is_killed(tmp_path):
    folder = tmp_path / "run"
    holder = start_holder(folder)
    try:
        out = try_lock_elsewhere(folder).stdout.strip()
        assert out.startswith("refused:") and "\n" not in out
        assert f"pid {holder.pid} " in out and str(folder) in out and "started " in out
        with pytest.raises(ConfigError, match=f"pid {holder.pid} "):  # this process too
            RunLock(folder).acquire()
    finally:
        kill9(holder)
    assert try_lock_elsewhere(folder).stdout.strip() == "ok"  # the OS dropped it with the holder
    assert (folder / ".lock").is_file()  # the stale file does not matter


def test_a_forked_child_does_not_keep_the_lock(tmp_path):
    folder = tmp_path / "run"
    holder = start_holder(folder, "fork")
    kill9(holder)  # the forked child sleeps on, holding an inherited descriptor
    try:
        os.kill(holder.child, 0)  # still alive
        assert try_lock_elsewhere(folder).stdout.strip() == "ok"
    finally:
        os.kill(holder.child, signal.SIGKILL)


def test_reentrant_in_one_process_and_released_by_the_last_holder(tmp_path):
    folder = tmp_path / "run"
    first = RunLock(folder).acquire()
    second = RunLock(folder).acquire()  # the same process: shared, not refused
    assert first.held and second.held
    assert (folder / ".lock").read_text().startswith(f"host {os.uname().nodename} pid {os.getpid()} ")
    first.release()
    assert try_lock_elsewhere(folder).stdout.startswith("refused:")  # still held by `second`
    second.release()
    assert try_lock_elsewhere(folder).stdout.strip() == "ok"
    with RunLock(folder) as lock:
        assert lock.held
    assert not lock.held


def test_a_dropped_lock_object_gives_the_lock_back(tmp_path):
    folder = tmp_path / "run"
    RunLock(folder).acquire()  # not kept: garbage-collected at once
    time.sleep(0.1)
    assert try_lock_elsewhere(folder).stdout.strip() == "ok"
