"""Trainer: resume equals an uninterrupted run, non-finite handling, outputs, evaluation."""

from __future__ import annotations

import json

import pytest
import torch
import yaml

from detmine.config import config_from_dict
from detmine.engine.checkpoint import load_checkpoint
from detmine.engine.trainer import Trainer, seed_everything
from detmine.errors import NonFiniteError


def make_trainer(fakes, cfg, criterion=None, model_seed=0, val=False):
    seed_everything(model_seed)
    model = fakes.FakeDetector()
    train_loader = fakes.make_loader(
        fakes.FakeDetectionDataset(12), cfg.train.batch_size, seed=cfg.train.seed
    )
    val_ds = fakes.FakeDetectionDataset(6, noise=False) if val else None
    val_loader = fakes.make_loader(val_ds, 3, shuffle=False) if val else None
    seed_everything(cfg.train.seed)
    return Trainer(
        cfg,
        model=model,
        criterion=criterion or fakes.FakeCriterion(),
        train_loader=train_loader,
        val_loader=val_loader,
        val_dataset=val_ds,
    )


class Interrupt(Exception):
    pass


class InterruptingCriterion:
    """Wraps the fake criterion and raises on the ``at``-th call (a crash mid-iteration)."""

    def __init__(self, fakes, at):
        self.inner, self.at = fakes.FakeCriterion(), at

    def to(self, device):
        return self

    def __call__(self, outputs, anchors, targets):
        if self.inner.calls + 1 == self.at:
            raise Interrupt
        return self.inner(outputs, anchors, targets)


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
    assert state["iteration"] == 6 and state["sampler"] == {"epoch": 1, "batch_in_epoch": 3}
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
    assert best["best_metric"] == pytest.approx(max(r["AP"] for r in evals))
    assert best["ema"] is not None


def test_epochs_convert_to_iterations(fakes, tmp_path):
    cfg = fakes.tiny_config(
        tmp_path, "train.max_iters=0", "train.epochs=2", "train.steps=[1]", "train.warmup_iters=0"
    )
    trainer = make_trainer(fakes, cfg)
    assert trainer.max_iters == 6  # 12 images / batch 4 = 3 per epoch
    assert trainer.scheduler.factor(2) == 1.0 and trainer.scheduler.factor(3) == pytest.approx(0.1)
