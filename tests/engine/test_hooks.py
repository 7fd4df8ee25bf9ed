"""Hooks by name: the periodic rule, the built-ins' order and switches, a hook added after the
checkpoint was read keeps its state, the logged loss of a window with a skipped step."""

from __future__ import annotations

import json

import pytest

from detmine.config import load_config
from detmine.engine import builders
from detmine.engine.hooks import DEFAULT_HOOKS, HOOKS
from detmine.engine.run_state import seed_everything
from detmine.engine.trainer import PeriodicHook
from detmine.errors import ConfigError
from detmine.periodic import is_due


class Counter(PeriodicHook):
    name = "counter"

    def __init__(self, *, period: int = 1) -> None:
        super().__init__(period, at_end=False)
        self.count = 0

    def run(self, trainer) -> None:
        self.count += 1

    def state_dict(self):
        return {"count": self.count}

    def load_state_dict(self, state):
        self.count = state["count"]


def trainer_for(fakes, cfg, criterion=None):
    seed_everything(0)
    model = fakes.FakeDetector()
    return builders.build_trainer(
        cfg, model, criterion or fakes.FakeCriterion(), fakes.FakeDetectionDataset(12), None
    )


def test_the_periodic_rule():
    assert [i for i in range(1, 11) if is_due(i, 3)] == [3, 6, 9]
    assert not any(is_due(i, 0) for i in range(10))

    class Runs(PeriodicHook):
        def __init__(self, period, at_end):
            super().__init__(period, at_end=at_end)
            self.at = []

        def run(self, trainer):
            self.at.append(trainer.iteration)

    class T:  # the two attributes the rule reads
        max_iters = 7
        iteration = 0

    for period, at_end, expected in [
        (3, True, [3, 6, 7]),
        (3, False, [3, 6]),
        (0, True, [7]),
        (7, True, [7]),
    ]:
        hook, t = Runs(period, at_end), T()
        for t.iteration in range(1, 8):
            hook.after_step(t)
        assert hook.at == expected, (period, at_end)
    with pytest.raises(ConfigError, match="period must be an integer >= 0"):
        Runs(-1, True)


def test_built_in_hooks_in_priority_order_switched_off_and_added(fakes, tmp_path, monkeypatch):
    monkeypatch.setitem(HOOKS, "counter", Counter)
    trainer = trainer_for(fakes, fakes.tiny_config(tmp_path))
    kinds = [type(h).__name__ for h in trainer.hooks]
    # no validation split: no evaluation / validation loss; vis.period 0: no pictures
    assert kinds == ["LoggingHook", "WriterHook", "CheckpointHook", "RunLockHook"]
    assert list(DEFAULT_HOOKS) == [
        "logging",
        "evaluation",
        "validation_loss",
        "mining_vis",
        "writers",
        "checkpoint",
    ]

    cfg = fakes.tiny_config(
        tmp_path / "b",
        "hooks=[{name: counter, period: 2}, {name: logging, enabled: false}, {name: checkpoint, period: 2}]",
    )
    trainer = trainer_for(fakes, cfg)
    assert [type(h).__name__ for h in trainer.hooks] == [
        "Counter",
        "WriterHook",
        "CheckpointHook",
        "RunLockHook",
    ]
    assert trainer.hooks[0].period == 2 and trainer.hooks[2].period == 2
    cfg = fakes.tiny_config(tmp_path / "c", "hooks=[{name: counter, priority: 95}]")
    assert [type(h).__name__ for h in trainer_for(fakes, cfg).hooks][-2:] == ["Counter", "RunLockHook"]


def test_a_hook_registered_after_resume_gets_its_state(fakes, tmp_path, monkeypatch):
    monkeypatch.setitem(HOOKS, "counter", Counter)
    cfg = fakes.tiny_config(
        tmp_path, "train.max_iters=4", "train.checkpoint_period=4", "hooks=[{name: counter}]"
    )
    trainer_for(fakes, cfg).train()

    resumed_cfg = fakes.tiny_config(tmp_path, "train.max_iters=6", "train.resume=true")  # no hooks entry
    resumed = trainer_for(fakes, resumed_cfg)
    late = Counter()
    resumed.register_hooks([late])  # after build_trainer read the checkpoint
    assert late.count == 4
    resumed.train()
    assert late.count == 6


def test_the_logged_loss_averages_the_steps_that_ran(fakes, tmp_path):
    """A window of two iterations where one batch was skipped as non-finite: the record holds
    the loss of the step that ran, not half of it."""
    cfg = fakes.tiny_config(tmp_path, "train.max_iters=4", "train.log_period=2", "train.on_nonfinite=skip")
    criterion = fakes.FakeCriterion(nan_at=4)
    trainer = trainer_for(fakes, cfg, criterion)
    seen = []
    real = criterion.forward

    def recording(outputs, targets):
        losses, record = real(outputs, targets)
        seen.append({k: float(v) for k, v in losses.items()})
        return losses, record

    criterion.forward = recording
    trainer.train()
    records = [json.loads(line) for line in (tmp_path / "run" / "metrics.jsonl").read_text().splitlines()]
    train = {r["iteration"]: r for r in records if r["type"] == "train"}
    assert train[4]["skipped_nonfinite"] == 1
    expected = seen[2]["cls"] + seen[2]["box"]  # iteration 3 ran; iteration 4 was skipped
    assert train[4]["loss"] == pytest.approx(expected, rel=1e-6)
    assert train[2]["loss"] == pytest.approx((sum(seen[0].values()) + sum(seen[1].values())) / 2, rel=1e-6)


def test_hooks_entries_are_checked_at_load():
    with pytest.raises(ConfigError, match=r"'hooks\[0\]\.name' is 'loging'; did you mean 'logging'"):
        load_config(None, ["train.max_iters=1", "hooks=[{name: loging}]"])
    with pytest.raises(ConfigError, match=r"'hooks\[0\]\.enabled' expects bool"):
        load_config(None, ["train.max_iters=1", "hooks=[{name: logging, enabled: maybe}]"])
    with pytest.raises(ConfigError, match=r"'hooks\[0\]\.period' expects int or null, got 'x'"):
        load_config(None, ["train.max_iters=1", "hooks=[{name: logging, period: x}]"])


def test_a_run_that_takes_no_step_still_runs_the_end_of_training_views():
    class Runs(PeriodicHook):
        def __init__(self):
            super().__init__(5)
            self.at = []

        def run(self, trainer):
            self.at.append(trainer.iteration)

    class T:
        max_iters = iteration = 10  # resumed at its end: after_train without an after_step

    hook = Runs()
    hook.after_train(T())
    assert hook.at == [10]
    stepped = Runs()
    for T.iteration in (9, 10):
        stepped.after_step(T())
    stepped.after_train(T())
    assert stepped.at == [10]  # ran once, in the last step, not again at the end


def test_every_hook_is_closed_when_one_fails(fakes, tmp_path, capsys):
    trainer = trainer_for(fakes, fakes.tiny_config(tmp_path, "train.max_iters=1"))
    closed = []

    class Fails(Counter):
        def close(self):
            raise OSError("disk gone")

    class Records(Counter):
        def close(self):
            closed.append(True)

    trainer.hooks[:0] = [Fails(), Records()]
    lock = trainer.hooks[-1].lock  # the run folder's lock, the last hook to close
    assert lock is not None and lock.held
    trainer.train()
    assert closed == [True] and not lock.held
    assert "warning: closing hook Fails failed: disk gone" in capsys.readouterr().err


@pytest.mark.parametrize(
    "hooks, expected",
    [
        (
            "[{name: checkpoint, period: 2}, {name: checkpoint, period: 5}]",
            r"'hooks\[1\]\.name' repeats 'checkpoint'",
        ),
        ("[{name: checkpoint, period: -5}]", r"hooks\[0\]\.period must be an integer >= 0"),
        ("[{name: mining_vis, num_images: -1}]", r"hooks\[0\]\.num_images must be an integer >= 0"),
        ("{name: logging}", r"config key 'hooks' expects a list"),
    ],
)
def test_bad_hooks_entries_are_one_line(fakes, tmp_path, hooks, expected):
    with pytest.raises(ConfigError, match=expected):
        trainer_for(fakes, fakes.tiny_config(tmp_path, f"hooks={hooks}"))
