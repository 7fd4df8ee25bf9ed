"""``tools/train.py`` as job runners treat it, in REAL processes: a second run into a used
folder is refused while the first one lives (and ``--resume`` works once it was ``kill -9``-ed),
and a SIGTERM to the whole process group (``timeout``, SLURM pre-emption) with loader
workers checkpoints and exits 143 like a SIGTERM to the main process alone."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]

TINY = [
    "data.kind=synthetic",
    "data.synthetic={num_train: 12, num_val: 4, size: 64, seed: 0}",
    "data.image_size=64",
    "data.num_workers=2",
    "model.name=retinanet_tiny_fpn",
    "model.options={image_size: 64, widths: [8, 8, 16, 16, 32], fpn_channels: 16, head_convs: 1}",
    "train.max_iters=6",
    "train.batch_size=4",
    "train.lr=0.002",
    "train.warmup_iters=2",
    "train.checkpoint_period=4",
    "train.log_period=1",
    "eval.period=0",
    "eval.batch_size=4",
    "eval.max_images=4",
    "vis.period=0",
]

# tools/train.py whose criterion, at its call HOLD_AT, writes MARKER and sleeps HOLD_S seconds
SCRIPT = textwrap.dedent(
    """
    import os, sys, time
    sys.path.insert(0, {tools!r})
    import train as tool
    from detmine.engine import builders

    hold_at, hold_s, marker = {hold_at}, {hold_s}, {marker!r}
    build = builders.build_criterion_from_config

    def holding(cfg, model, *rest):
        criterion = build(cfg, model, *rest)
        forward, calls = criterion.forward, [0]

        def counting_forward(*args, **kwargs):
            calls[0] += 1
            if calls[0] == hold_at:
                open(marker, "w").write(str(os.getpid()))
                time.sleep(hold_s)
            return forward(*args, **kwargs)

        criterion.forward = counting_forward
        return criterion

    builders.build_criterion_from_config = holding
    sys.exit(tool.main(sys.argv[1:]))
    """
)


@pytest.fixture(scope="module")
def recipe(tmp_path_factory):
    from detmine.data.synthetic import ensure_synthetic

    base = tmp_path_factory.mktemp("preemption")
    root = base / "synthetic"
    ensure_synthetic(root, num_train=12, num_val=4, size=64, seed=0, workers=0, progress=False)
    path = base / "tiny.yaml"
    path.write_text("{}\n")  # the defaults; the tiny run is given as overrides
    return path, [*TINY, f"data.root={root}"]


def command(tmp_path: Path, recipe, *args, hold_at: int = 0, hold_s: float = 0) -> list[str]:
    path, overrides = recipe
    script = tmp_path / f"train_holding_{hold_at}.py"
    marker = tmp_path / "holding"
    script.write_text(
        SCRIPT.format(tools=str(ROOT / "tools"), hold_at=hold_at, hold_s=hold_s, marker=str(marker))
    )
    return [sys.executable, str(script), str(path), *overrides, *map(str, args)]


ENV = dict(os.environ, OMP_NUM_THREADS="1")


def run(cmd: list[str]) -> subprocess.CompletedProcess:
    return subprocess.run(cmd, cwd=ROOT, env=ENV, capture_output=True, text=True, timeout=300)


def start_and_wait_until_holding(tmp_path: Path, cmd: list[str]) -> subprocess.Popen:
    """Start ``cmd`` in its own process group; return once its criterion is holding."""
    log = open(tmp_path / "first.log", "w")
    proc = subprocess.Popen(cmd, cwd=ROOT, env=ENV, stdout=log, stderr=log, start_new_session=True)
    deadline = time.monotonic() + 240
    while not (tmp_path / "holding").is_file():
        if proc.poll() is not None or time.monotonic() > deadline:
            proc.kill()
            pytest.fail(f"the run never started training:\n{(tmp_path / 'first.log').read_text()[-3000:]}")
        time.sleep(0.2)
    return proc


def group_members(pgid: int) -> list[int]:
    """Live (not zombie) processes of process group ``pgid``, read from /proc."""
    pids = []
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            fields = stat.read_text().rsplit(")", 1)[1].split()
        except OSError:
            continue
        if int(fields[2]) == pgid and fields[0] != "Z":
            pids.append(int(stat.parent.name))
    return pids


def children(pid: int) -> list[int]:
    path = Path(f"/proc/{pid}/task/{pid}/children")
    return [int(p) for p in path.read_text().split()] if path.is_file() else []


def train_iterations(run_dir: Path) -> list[int]:
    records = [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]
    return [r["iteration"] for r in records if r["type"] == "train"]


def test_second_run_into_a_live_run_folder_is_refused_and_resume_works_after_kill_9(tmp_path, recipe):
    run_dir = tmp_path / "run"
    first = start_and_wait_until_holding(
        tmp_path, command(tmp_path, recipe, "--output-dir", run_dir, hold_at=5, hold_s=600)
    )
    try:
        assert children(first.pid), "the first run has no loader workers"
        second = run(command(tmp_path, recipe, "--output-dir", run_dir, "train.seed=7", "--overwrite"))
        assert second.returncode == 2, second.stderr[-3000:]
        last = second.stderr.strip().splitlines()[-1]
        assert last.startswith("error: ") and "in use by another run" in last and f"pid {first.pid} " in last
        assert "seed: 42" in (run_dir / "config.yaml").read_text()  # not rewritten by the refused run
        assert train_iterations(run_dir) == [1, 2, 3, 4]  # nor cleared (--overwrite) or mixed
    finally:
        os.killpg(first.pid, signal.SIGKILL)  # main process and workers, no clean-up at all
        first.wait(timeout=60)
    resumed = run(command(tmp_path, recipe, "--output-dir", run_dir, "--resume"))
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    assert "model_0000004.pth at iteration 4" in resumed.stdout + resumed.stderr  # "resumed from ..."
    assert train_iterations(run_dir) == [1, 2, 3, 4, 5, 6]
    assert (run_dir / "model_0000006.pth").is_file()


def test_sigterm_to_the_process_group_with_workers_checkpoints_and_exits_143(tmp_path, recipe):
    run_dir = tmp_path / "run"
    proc = start_and_wait_until_holding(
        tmp_path, command(tmp_path, recipe, "--output-dir", run_dir, hold_at=2, hold_s=3)
    )
    workers = children(proc.pid)
    assert len(workers) >= 2, "the run has no loader workers to signal"
    os.killpg(proc.pid, signal.SIGTERM)  # start_new_session: pgid == pid
    try:
        code = proc.wait(timeout=120)
    except subprocess.TimeoutExpired:
        os.killpg(proc.pid, signal.SIGKILL)
        pytest.fail("the run did not exit after SIGTERM to its process group")
    output = (tmp_path / "first.log").read_text()
    assert code == 143, output[-3000:]
    assert "stopped at iteration 2" in output.strip().splitlines()[-1]
    assert (run_dir / "latest").read_text().strip() == "model_0000002.pth"
    assert (run_dir / "model_0000002.pth").is_file()
    deadline = time.monotonic() + 30
    while group_members(proc.pid) and time.monotonic() < deadline:  # workers shut down, none hangs
        time.sleep(0.2)
    assert group_members(proc.pid) == []

    resumed = run(command(tmp_path, recipe, "--output-dir", run_dir, "--resume"))
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    assert train_iterations(run_dir) == [1, 2, 3, 4, 5, 6]
    assert (run_dir / "model_0000006.pth").is_file()
