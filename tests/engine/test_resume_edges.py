"""Resume edge cases through the real ``tools/train.py`` (a subprocess): a finished run is left
as it is, a length below the checkpoint is refused, a ``latest`` pointer out of the run folder
is never followed, diagnostics go to stderr; and (in-process) an allowed config change whose
load fails leaves config.yaml as it was."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from detmine.engine import builders
from detmine.engine.checkpoint import CheckpointManager, load_checkpoint, save_checkpoint
from detmine.errors import CheckpointError

ROOT = Path(__file__).resolve().parents[2]

RECIPE = """\
data:
  kind: synthetic
  root: {root}
  synthetic: {{num_train: 8, num_val: 4, size: 64, seed: 0}}
  image_size: 64
  num_workers: 0
model:
  name: retinanet_tiny_fpn
  options: {{image_size: 64, widths: [8, 8, 16, 16, 32], fpn_channels: 16, head_convs: 1}}
train: {{max_iters: 4, batch_size: 4, optimizer: adamw, lr: 0.002, warmup_iters: 1,
         checkpoint_period: 2, log_period: 1}}
eval: {{batch_size: 4, val_loss: true}}
vis: {{period: 0}}
"""


def train(recipe: Path, *args: object) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, str(ROOT / "tools" / "train.py"), str(recipe), *map(str, args)],
        cwd=ROOT,
        env=dict(os.environ, OMP_NUM_THREADS="1"),
        capture_output=True,
        text=True,
        timeout=300,
    )


@pytest.fixture(scope="module")
def finished_run(tmp_path_factory):
    """A recipe and a run folder whose 4-iteration run finished (evaluation + val loss)."""
    from detmine.data.synthetic import ensure_synthetic

    base = tmp_path_factory.mktemp("finished")
    data = base / "data"
    ensure_synthetic(data, num_train=8, num_val=4, size=64, seed=0, workers=0, progress=False)
    recipe = base / "tiny.yaml"
    recipe.write_text(RECIPE.format(root=data))
    run = base / "run"
    proc = train(recipe, "--output-dir", run)
    assert proc.returncode == 0, proc.stderr[-3000:]
    return recipe, run


def snapshot(run: Path) -> dict[str, bytes]:
    """Every file of the run folder but the lock (it names the last process that held it)."""
    return {p.name: p.read_bytes() for p in sorted(run.iterdir()) if p.is_file() and p.name != ".lock"}


def test_resuming_a_finished_run_says_so_and_changes_nothing(finished_run):
    recipe, run = finished_run
    records = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
    assert [(r["type"], r["iteration"]) for r in records if r["type"] != "train"] == [("eval", 4), ("val", 4)]
    before = snapshot(run)
    proc = train(recipe, "--output-dir", run, "--resume")
    assert proc.returncode == 0, proc.stderr[-3000:]
    notes = [line for line in proc.stderr.splitlines() if "already finished" in line]
    assert len(notes) == 1 and "iteration 4" in notes[0] and notes[0].startswith("note:")
    assert "Average Precision" not in proc.stdout  # no second evaluation
    after = snapshot(run)
    assert after.keys() == before.keys()  # no new TensorBoard file either
    assert after == before  # metrics.jsonl holds no record twice; config.yaml untouched


def test_a_length_below_the_checkpoint_is_refused_naming_both(finished_run):
    recipe, run = finished_run
    before = snapshot(run)
    proc = train(recipe, "--output-dir", run, "--resume", "train.max_iters=2")
    assert proc.returncode == 2
    last = proc.stderr.strip().splitlines()[-1]
    assert last.startswith("error: ") and "train.max_iters=2" in last and "iteration 4" in last
    assert snapshot(run) == before  # config.yaml does not claim a 2-iteration run


def test_a_latest_pointer_out_of_the_run_folder_is_refused(finished_run, tmp_path):
    recipe, run = finished_run
    copy = tmp_path / "run"
    copy.mkdir()
    for name, data in snapshot(run).items():
        (copy / name).write_bytes(data)
    outside = tmp_path / "elsewhere.pth"
    outside.write_bytes((run / "model_0000004.pth").read_bytes())
    (copy / "latest").write_text("../elsewhere.pth\n")
    proc = train(recipe, "--output-dir", copy, "--resume", "train.max_iters=6")
    assert proc.returncode == 2, proc.stderr[-3000:]
    last = proc.stderr.strip().splitlines()[-1]
    assert last.startswith("error: ") and "'../elsewhere.pth'" in last and str(copy / "latest") in last
    assert not (copy / "model_0000006.pth").exists()


def test_warnings_and_notes_go_to_stderr(finished_run, tmp_path):
    recipe, run = finished_run
    copy = tmp_path / "run"
    copy.mkdir()
    for name, data in snapshot(run).items():
        (copy / name).write_bytes(data)
    proc = train(recipe, "--output-dir", copy, "--resume", "train.max_iters=5")
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert "warning: training length changed" in proc.stderr
    assert "iter 5/5" in proc.stdout and "Average Precision" in proc.stdout  # progress and results stay
    assert not [line for line in proc.stdout.splitlines() if line.startswith(("warning:", "note:"))]
    fresh = train(recipe, "--output-dir", tmp_path / "fresh", "--resume", "train.max_iters=1")
    assert fresh.returncode == 0, fresh.stderr[-3000:]
    assert "note: no checkpoint in" in fresh.stderr and "note:" not in fresh.stdout


# ----------------------------------------------------------------------------- in-process


def test_pointer_naming_a_path_is_never_followed(tmp_path):
    run = tmp_path / "run"
    manager = CheckpointManager(run)
    run.mkdir()
    manager.save({"iteration": 1}, 1)
    assert manager.latest() == run / "model_0000001.pth"
    save_checkpoint(tmp_path / "other.pth", {"iteration": 9})
    (run / "linked.pth").symlink_to(tmp_path / "other.pth")
    for name in ("../other.pth", str(tmp_path / "other.pth"), "linked.pth", ".."):
        (run / "latest").write_text(name + "\n")
        with pytest.raises(CheckpointError) as info:
            CheckpointManager(run).load_latest()
        message = str(info.value)
        assert "\n" not in message and repr(name) in message and str(run / "latest") in message


def test_allowed_change_that_does_not_load_leaves_config_yaml(fakes, tmp_path):
    cfg = fakes.tiny_config(tmp_path, "train.max_iters=3")
    data, val = fakes.FakeDetectionDataset(), fakes.FakeDetectionDataset(6)
    builders.build_trainer(cfg, fakes.FakeDetector(), fakes.FakeCriterion(), data, val).train()
    before = (tmp_path / "run" / "config.yaml").read_text()
    resumed = fakes.tiny_config(tmp_path, "train.max_iters=5", "train.resume=true", "train.lr=0.02")
    other_model = fakes.FakeDetector(num_classes=3)  # the checkpoint's classifier does not fit it
    with pytest.raises(CheckpointError, match="does not fit the model"):
        builders.build_trainer(
            resumed, other_model, fakes.FakeCriterion(), data, val, allow_config_change=True
        )
    assert (tmp_path / "run" / "config.yaml").read_text() == before
    assert "resumed at iteration" not in before
    # the same change with a model that fits: recorded once, after the state loaded
    trainer = builders.build_trainer(
        resumed, fakes.FakeDetector(), fakes.FakeCriterion(), data, val, allow_config_change=True
    )
    assert trainer.iteration == 3
    text = (tmp_path / "run" / "config.yaml").read_text()
    assert text.count("# resumed at iteration 3 with changes:") == 1 and "train.lr: 0.05 -> 0.02" in text
    assert load_checkpoint(tmp_path / "run" / "model_0000003.pth")["iteration"] == 3
