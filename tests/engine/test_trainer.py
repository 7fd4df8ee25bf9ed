"""Trainer: resume equals an uninterrupted run, non-finite handling, outputs, evaluation."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
import yaml

from detmine.config import config_from_dict, save_config
from detmine.engine import builders
from detmine.engine.checkpoint import load_checkpoint
from detmine.engine.run_state import seed_everything
from detmine.errors import NonFiniteError


def make_trainer(fakes, cfg, criterion=None, model_seed=0, val=False):
    seed_everything(model_seed)
    model = fakes.FakeDetector()
    val_ds = fakes.FakeDetectionDataset(6, noise=False) if val else None
    seed_everything(cfg.train.seed)
    return builders.build_trainer(
        cfg, model, criterion or fakes.FakeCriterion(), fakes.FakeDetectionDataset(12), val_ds
    )


class Interrupt(Exception):
    pass


class InterruptingCriterion:
    """Wraps the fake criterion and raises on the ``at``-th call (a crash mid-iteration)."""

    def __init__(self, fakes, at):
        self.inner, self.at = fakes.FakeCriterion(), at

    def to(self, device):
        return self

    def __call__(self, outputs, targets):
        if self.inner.calls + 1 == self.at:
            raise Interrupt
        return self.inner(outputs, targets)


@pytest.mark.parametrize(
    "extra", [[], ["train.optimizer=adamw", "train.ema=true", "train.lr_schedule=cosine"]]
)
def test_resume_after_interruption_matches_uninterrupted(fakes, tmp_path, extra):
    # 12 images / batch 4 = 3 batches per epoch: the interruption falls in the second epoch,
    # after the checkpoint at iteration 3 and during iteration 5.
    full = make_trainer(fakes, fakes.tiny_config(tmp_path / "a", "train.max_iters=7", *extra))
    full.train()

    cfg = fakes.tiny_config(tmp_path / "b", "train.max_iters=7", *extra)
    crashing = make_trainer(fakes, cfg, criterion=InterruptingCriterion(fakes, at=6))
    with pytest.raises(Interrupt):
        crashing.train()
    assert crashing.iteration == 5

    resumed = make_trainer(
        fakes,
        fakes.tiny_config(tmp_path / "b", "train.max_iters=7", "train.resume=true", *extra),
        model_seed=123,
    )
    resumed.train()
    assert resumed.iteration == 7
    a, b = full.model.state_dict(), resumed.model.state_dict()
    for k in a:
        torch.testing.assert_close(a[k], b[k], atol=1e-6, rtol=0, msg=k)
    if full.ema is not None:
        for k, v in full.ema.module.state_dict().items():
            torch.testing.assert_close(v, resumed.ema.module.state_dict()[k], atol=1e-6, rtol=0)
    assert resumed.optimizer.param_groups[0]["lr"] == pytest.approx(full.optimizer.param_groups[0]["lr"])


def test_nonfinite_loss_stops_naming_iteration_and_checkpoint(fakes, tmp_path):
    trainer = make_trainer(fakes, fakes.tiny_config(tmp_path), criterion=fakes.FakeCriterion(nan_at=5))
    with pytest.raises(NonFiniteError) as info:
        trainer.train()
    message = str(info.value)
    assert "iteration 4" in message and "\n" not in message
    assert str(tmp_path / "run" / "model_0000003.pth") in message
    assert all(torch.isfinite(p).all() for p in trainer.model.parameters())


def test_nonfinite_loss_skipped_and_counted(fakes, tmp_path):
    cfg = fakes.tiny_config(tmp_path, "train.on_nonfinite=skip")
    trainer = make_trainer(fakes, cfg, criterion=fakes.FakeCriterion(nan_at=2))
    trainer.train()
    assert trainer.iteration == 6 and trainer.skipped_nonfinite == 1
    assert all(torch.isfinite(p).all() for p in trainer.model.parameters())
    records = [json.loads(line) for line in (tmp_path / "run" / "metrics.jsonl").read_text().splitlines()]
    assert records[-1]["skipped_nonfinite"] == 1


def test_outputs_config_metrics_checkpoints(fakes, tmp_path):
    cfg = fakes.tiny_config(tmp_path, "train.checkpoint_period=1", "train.keep_last=2")
    trainer = make_trainer(fakes, cfg)
    trainer.train()
    run = tmp_path / "run"
    saved = yaml.safe_load((run / "config.yaml").read_text())
    assert config_from_dict(saved) == cfg
    records = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
    assert [r["iteration"] for r in records] == [2, 4, 6]
    assert all(r["type"] == "train" and r["loss"] > 0 and r["images_per_s"] > 0 for r in records)
    assert sorted(p.name for p in run.glob("model_*.pth")) == ["model_0000005.pth", "model_0000006.pth"]
    assert (run / "latest").read_text().strip() == "model_0000006.pth"
    assert list(run.glob("events.out.tfevents.*"))
    state = load_checkpoint(run / "model_0000006.pth")
    assert state["iteration"] == 6 and state["sampler"] == {
        "epoch": 1,
        "batch_in_epoch": 3,
        "loader": {"epoch": 1, "batches_consumed": 3},  # the detmine loader's own position
    }
    # warmup 2, step at 4 (gamma 0.1): lr after the run = 0.05 * 0.1
    assert trainer.optimizer.param_groups[0]["lr"] == pytest.approx(0.005)


def test_periodic_evaluation_keeps_best(fakes, tmp_path):
    cfg = fakes.tiny_config(tmp_path, "eval.period=3", "train.ema=true", "train.ema_tau=0")
    trainer = make_trainer(fakes, cfg, val=True)
    result = trainer.train()
    assert result is not None and 0.0 <= result.stats["AP"] <= 1.0
    records = [json.loads(line) for line in (tmp_path / "run" / "metrics.jsonl").read_text().splitlines()]
    evals = [r for r in records if r["type"] == "eval"]
    assert [r["iteration"] for r in evals] == [3, 6]
    best = load_checkpoint(tmp_path / "run" / "best.pth")
    assert best["hooks"]["evaluation"]["best_metric"] == pytest.approx(max(r["AP"] for r in evals))
    assert best["ema"] is not None


def test_epochs_convert_to_iterations(fakes, tmp_path):
    cfg = fakes.tiny_config(
        tmp_path, "train.max_iters=0", "train.epochs=2", "train.steps=[1]", "train.warmup_iters=0"
    )
    trainer = make_trainer(fakes, cfg)
    assert trainer.max_iters == 6  # 12 images / batch 4 = 3 per epoch
    assert trainer.scheduler.factor(2) == 1.0 and trainer.scheduler.factor(3) == pytest.approx(0.1)


# ----------------------------------------------------------------------------- real parts

ROOT = Path(__file__).resolve().parents[2]


def real_config(tmp_path, data_root, *overrides):
    from detmine.config import load_config

    return load_config(
        None,
        [
            "data.kind=synthetic",
            f"data.root={data_root}",
            "data.synthetic={num_train: 8, num_val: 4, size: 64, seed: 0}",
            "data.image_size=64",
            "data.train_transform=eval",  # deterministic pixels: the resume check is exact
            "data.num_workers=0",
            "model.name=retinanet_tiny_fpn",
            "model.options={image_size: 64, widths: [8, 8, 16, 16, 32], fpn_channels: 16, head_convs: 1}",
            "train.max_iters=5",
            "train.batch_size=4",
            "train.optimizer=adamw",
            "train.lr=0.001",
            "train.warmup_iters=2",
            "train.checkpoint_period=2",
            "train.log_period=1",
            "eval.batch_size=4",
            f"output_dir={tmp_path}",
            *overrides,
        ],
    )


@pytest.fixture(scope="module")
def synthetic_root(tmp_path_factory):
    from detmine.data.synthetic import ensure_synthetic

    root = tmp_path_factory.mktemp("synthetic")
    ensure_synthetic(root, num_train=8, num_val=4, size=64, seed=0, workers=0, progress=False)
    return root


def real_trainer(cfg, criterion_wrapper=None):
    from detmine.engine import builders

    seed_everything(cfg.train.seed)
    train_set, val_set = builders.build_datasets(cfg)
    model = builders.build_model_from_config(cfg, train_set.num_classes)
    criterion = builders.build_criterion_from_config(cfg, model)
    if criterion_wrapper is not None:
        criterion = criterion_wrapper(criterion)
    return builders.build_trainer(cfg, model, criterion, train_set, val_set)


class CrashAt:
    def __init__(self, criterion, at):
        self.inner, self.at, self.calls = criterion, at, 0

    def to(self, device):
        self.inner = self.inner.to(device)
        return self

    def __call__(self, *args):
        self.calls += 1
        if self.calls == self.at:
            raise Interrupt
        return self.inner(*args)


def test_real_pipeline_resume_matches_uninterrupted(tmp_path, synthetic_root):
    full = real_trainer(real_config(tmp_path / "a", synthetic_root, "mining.type=random"))
    result = full.train()
    assert result is not None and set(result.stats) >= {"AP", "AP50"}

    crashing = real_trainer(
        real_config(tmp_path / "b", synthetic_root, "mining.type=random"), lambda c: CrashAt(c, 4)
    )
    with pytest.raises(Interrupt):
        crashing.train()
    resumed = real_trainer(
        real_config(tmp_path / "b", synthetic_root, "mining.type=random", "train.resume=true")
    )
    resumed.train()
    for k, v in full.model.state_dict().items():
        torch.testing.assert_close(resumed.model.state_dict()[k], v, atol=1e-6, rtol=0, msg=k)


def run_cli(*args, cwd=ROOT):
    env = dict(os.environ, OMP_NUM_THREADS="1")
    return subprocess.run(
        [sys.executable, str(ROOT / "tools" / "train.py"), *map(str, args)],
        cwd=cwd,
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
    )


def test_cli_bad_key_is_one_line_exit_2():
    proc = run_cli(ROOT / "configs" / "quickstart.yaml", "train.lr_shedule=0.1")
    assert proc.returncode == 2
    assert proc.stderr.strip().count("\n") == 0 and "Traceback" not in proc.stderr
    assert proc.stderr.startswith(
        "error: unknown config key 'train.lr_shedule'; did you mean 'train.lr_schedule'?"
    )


def test_cli_trains_and_prints_the_coco_table(tmp_path, synthetic_root):
    cfg = real_config(tmp_path / "unused", synthetic_root)
    recipe = tmp_path / "tiny.yaml"
    save_config(cfg, recipe)
    proc = run_cli(recipe, "train.max_iters=2", "--output-dir", tmp_path / "run")
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert "Average Precision" in proc.stdout and "AP50" in proc.stdout
    assert (tmp_path / "run" / "model_0000002.pth").is_file()
    assert (tmp_path / "run" / "config.yaml").is_file()
    # output to a pipe (a log file): plain lines, no progress-bar redraws
    assert "\r" not in proc.stdout + proc.stderr
    assert "iter 1/2  loss " in proc.stdout and "iter 2/2  loss " in proc.stdout
    assert "eval: " in proc.stdout and "ETA" in proc.stdout
