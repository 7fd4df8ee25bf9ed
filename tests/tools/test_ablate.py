"""tools/ablate.py end to end on a tiny grid: runs every cell as a real training process, skips
finished cells, resumes an interrupted one after Ctrl-C, reports a cell whose config changed,
prints commands for a job runner, submits through submitit, and writes the table."""

from __future__ import annotations

import csv
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
TOOL = ROOT / "tools" / "ablate.py"

TINY = """\
recipe: {recipe}
output_dir: {out}
seeds: {seeds}
baseline: focal
overrides:
  data.root: {data}
  data.synthetic: {{num_train: 8, num_val: 4, size: 64, seed: 0}}
  data.image_size: 64
  data.num_workers: 0
  model.options: {{image_size: 64, widths: [8, 8, 16, 16, 32], fpn_channels: 16, head_convs: 1}}
  train.max_iters: {iters}
  train.batch_size: 4
  train.warmup_iters: 1
  train.log_period: 2
  train.checkpoint_period: 2
  eval.batch_size: 4
  vis.period: 0
strategies:
  focal: {{loss.cls: focal}}
  {second}
"""


def grid(
    tmp_path: Path,
    *,
    iters: int = 4,
    seeds: str = "[0, 1]",
    second: str = "ohem: {mining: ohem, loss.cls: balanced_ce}",
) -> Path:
    path = tmp_path / "grid.yaml"
    path.write_text(
        TINY.format(
            recipe=ROOT / "configs" / "quickstart.yaml",
            out=tmp_path / "out",
            data=tmp_path.parent / "ablate_data",
            iters=iters,
            seeds=seeds,
            second=second,
        )
    )
    return path


def ablate(*args: object, env: dict | None = None, timeout: float = 300) -> subprocess.CompletedProcess:
    """The tool as a process; ``.output`` is stdout and stderr (progress lines go to stdout,
    warnings and errors to stderr)."""
    done = subprocess.run(
        [sys.executable, str(TOOL), *map(str, args)],
        cwd=ROOT,
        env=dict(os.environ, OMP_NUM_THREADS="1", **(env or {})),
        capture_output=True,
        text=True,
        timeout=timeout,
    )
    done.output = done.stdout + done.stderr
    return done


def ablate_here(load_tool, capsys, *args: object) -> subprocess.CompletedProcess:
    """The tool in this process (no interpreter start), for the calls that train nothing:
    ``--print-commands`` and collecting finished cells. Same result fields as :func:`ablate`."""
    capsys.readouterr()
    code = load_tool("ablate").main([str(a) for a in args])
    captured = capsys.readouterr()
    done = subprocess.CompletedProcess(list(args), code, captured.out, captured.err)
    done.output = done.stdout + done.stderr
    return done


def test_runs_the_grid_skips_finished_cells_and_reports_changed_ones(tmp_path, load_tool, capsys):
    path = grid(tmp_path)
    first = ablate(path, "--jobs", "2", "--bootstrap-samples", "50")
    assert first.returncode == 0, first.stderr
    assert "4 new" in first.output
    out = tmp_path / "out"
    for name in ("focal/seed0", "focal/seed1", "ohem/seed0", "ohem/seed1"):
        assert (out / name / "detections_final.json").is_file()
        assert (out / name / "train.log").is_file()
    table = (out / "table.md").read_text()
    assert "4 of 4 cells finished" in table and "| `ohem` | 2 |" in table
    assert "ΔAP vs focal, over images (95% bootstrap)" in table
    assert table.strip() in first.stdout
    rows = list(csv.DictReader((out / "table.csv").open()))
    assert [r["strategy"] for r in rows] == ["focal", "ohem"]
    assert (out / "ablation.png").is_file() and list((out / "tensorboard").rglob("events.out.tfevents.*"))

    again = ablate_here(load_tool, capsys, path, "--bootstrap-samples", "50")
    assert again.returncode == 0 and "4 finished" in again.output and "started" not in again.output

    # the grid now asks something else of 'ohem': its finished folders are reported, not reused
    changed = grid(tmp_path, second="ohem: {mining: ohem, loss.cls: balanced_ce, mining.ohem.nms_iou: 0.5}")
    third = ablate_here(load_tool, capsys, changed, "--collect", "--bootstrap-samples", "50")
    assert third.returncode == 0
    assert "ohem/seed0: its run folder was trained with another config (mining.ohem.nms_iou" in third.stderr
    assert "2 of 4 cells finished (missing: ohem/seed0, ohem/seed1)" in (out / "table.md").read_text()


def test_print_commands_lists_the_remaining_cells_ready_to_run(tmp_path, load_tool, capsys):
    path = grid(tmp_path)
    printed = ablate_here(load_tool, capsys, path, "--print-commands")
    assert printed.returncode == 0
    lines = printed.stdout.splitlines()
    assert len(lines) == 4 and all("tools/train.py" in line and "train.seed=" in line for line in lines)
    assert not (tmp_path / "out").exists()  # nothing ran
    torchrun = ablate_here(
        load_tool, capsys, path, "--print-commands", "--nproc-per-node", "2"
    ).stdout.splitlines()
    assert all("torch.distributed.run --nproc_per_node=2" in line for line in torchrun)
    done = subprocess.run(
        lines[0], shell=True, cwd=ROOT, env=dict(os.environ, OMP_NUM_THREADS="1"), capture_output=True
    )
    assert done.returncode == 0, done.stderr
    assert len(ablate(path, "--print-commands").stdout.splitlines()) == 3  # and as a process


def test_a_bad_strategy_is_one_line_before_anything_runs(tmp_path):
    path = grid(tmp_path, second="typo: {loss.focal.gama: 3}")
    bad = ablate(path)
    assert bad.returncode == 2
    assert bad.stderr.strip().splitlines()[-1].startswith("error: ")
    assert "strategy 'typo': " in bad.stderr and "loss.focal.gamma" in bad.stderr
    assert not (tmp_path / "out").exists()


def test_ctrl_c_stops_the_cells_at_a_checkpoint_and_the_same_command_resumes(tmp_path):
    path = grid(tmp_path, iters=40, seeds="[0]", second="")  # long enough to be stopped mid-way
    process = subprocess.Popen(
        [sys.executable, str(TOOL), str(path), "--bootstrap-samples", "20"],
        cwd=ROOT,
        env=dict(os.environ, OMP_NUM_THREADS="1"),
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    first_cell = tmp_path / "out" / "focal" / "seed0"
    deadline = time.time() + 240
    while not list(first_cell.glob("model_*.pth")) and time.time() < deadline:
        time.sleep(0.2)
    process.send_signal(signal.SIGINT)
    out, err = process.communicate(timeout=240)
    assert process.returncode == 130, err
    assert "stopped at a checkpoint" in out + err and "run the same command again to resume" in err
    assert not (first_cell / "detections_final.json").exists()
    resumed = ablate(path, "--bootstrap-samples", "20")
    assert resumed.returncode == 0, resumed.stderr
    assert "focal/seed0 started (interrupted)" in resumed.output
    assert "--resume" in (first_cell / "train.log").read_text()
    assert "1 of 1 cells finished" in (tmp_path / "out" / "table.md").read_text()


def test_submitit_gets_one_job_per_remaining_cell(tmp_path):
    """submitit is optional: a stand-in module records what the launcher submits."""
    fake = tmp_path / "fake_submitit"
    fake.mkdir()
    (fake / "submitit.py").write_text(
        "import json, pathlib\n"
        "class _Job:\n    def __init__(self, i): self.job_id = str(i)\n"
        "class AutoExecutor:\n"
        "    def __init__(self, folder): self.folder = pathlib.Path(folder); self.n = 0\n"
        "    def update_parameters(self, **kw): self.params = kw\n"
        "    def submit(self, fn):\n"
        "        self.n += 1; self.folder.mkdir(parents=True, exist_ok=True)\n"
        "        (self.folder / f'{self.n}.json').write_text(json.dumps({'cmd': fn.command, 'params': self.params}))\n"
        "        return _Job(self.n)\n"
        "class helpers:\n"
        "    class CommandFunction:\n"
        "        def __init__(self, command, cwd=None): self.command = command\n"
    )
    path = grid(tmp_path)
    env = {"PYTHONPATH": str(fake)}
    submitted = ablate(
        path, "--launcher", "submitit", "--slurm", "timeout_min=60", "slurm_partition=gpu", env=env
    )
    assert submitted.returncode == 0, submitted.stderr
    assert "submitted 4 cells" in submitted.output
    import json

    jobs = [json.loads(p.read_text()) for p in sorted((tmp_path / "out" / "submitit").glob("*.json"))]
    assert len(jobs) == 4 and jobs[0]["params"] == {"timeout_min": 60, "slurm_partition": "gpu"}
    assert "tools/train.py" in " ".join(jobs[0]["cmd"])
    missing = ablate(path, "--launcher", "submitit")  # the real package is not installed here
    if missing.returncode == 2:
        assert "needs the submitit package (pip install submitit)" in missing.stderr


@pytest.mark.parametrize("option", ["--jobs=0", "--bootstrap-samples=0"])
def test_bad_options_are_one_line(tmp_path, option):
    bad = ablate(grid(tmp_path), option)
    assert bad.returncode == 2 and f"{option.split('=')[0]} must be >= 1, got 0" in bad.stderr
