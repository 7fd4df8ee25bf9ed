"""Whole runs of the real pipeline (tiny RetinaNet, real criterion, synthetic data, default
random augmentation): repeatable with any number of workers, exactly resumable after
``kill -9``, SIGTERM or Ctrl-C, and the run-folder rules (resume config checks, no mixing of
two runs, one-line write errors)."""

from __future__ import annotations

import errno
import json
import os
import signal
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
import torch
import yaml

from detmine.config import load_config, save_config
from detmine.engine import builders
from detmine.engine.checkpoint import load_checkpoint
from detmine.engine.run_state import seed_everything
from detmine.errors import CheckpointError, ConfigError, NonFiniteError

ROOT = Path(__file__).resolve().parents[2]

TINY = [
    "data.kind=synthetic",
    "data.synthetic={num_train: 12, num_val: 4, size: 64, seed: 0}",
    "data.image_size=64",
    "data.train_transform=retinanet",  # the default random flip
    "model.name=retinanet_tiny_fpn",
    "model.options={image_size: 64, widths: [8, 8, 16, 16, 32], fpn_channels: 16, head_convs: 1}",
    "train.max_iters=6",
    "train.batch_size=4",
    "train.optimizer=adamw",
    "train.lr=0.002",
    "train.lr_schedule=cosine",
    "train.warmup_iters=2",
    "train.ema=true",
    "train.ema_tau=2",
    "train.checkpoint_period=2",
    "train.log_period=1",
    "loss.normalizer=ema",
    "eval.batch_size=4",
    "vis.period=0",
]


@pytest.fixture(scope="module")
def synthetic_root(tmp_path_factory):
    from detmine.data.synthetic import ensure_synthetic

    root = tmp_path_factory.mktemp("synthetic")
    ensure_synthetic(root, num_train=12, num_val=4, size=64, seed=0, workers=0, progress=False)
    return root


def tiny_config(run_dir, data_root, *overrides):
    return load_config(None, [*TINY, f"data.root={data_root}", f"output_dir={run_dir}", *overrides])


def build(cfg, **trainer_options):
    seed_everything(cfg.train.seed)
    train_set, val_set = builders.build_datasets(cfg)
    model = builders.build_model_from_config(cfg, train_set.num_classes)
    criterion = builders.build_criterion_from_config(cfg, model)
    return builders.build_trainer(cfg, model, criterion, train_set, val_set, **trainer_options)


def assert_same_weights(a: dict, b: dict) -> None:
    assert a.keys() == b.keys()
    for k in a:
        torch.testing.assert_close(a[k], b[k], atol=1e-6, rtol=0, msg=k)


# ----------------------------------------------------------------------------- repeatable


def test_same_weights_with_any_number_of_workers(tmp_path, synthetic_root):
    finals = []
    for workers in (0, 1, 2):
        cfg = tiny_config(
            tmp_path / f"w{workers}", synthetic_root, f"data.num_workers={workers}", "train.max_iters=4"
        )
        trainer = build(cfg)
        trainer.train()
        finals.append({k: v.clone() for k, v in trainer.model.state_dict().items()})
    assert_same_weights(finals[0], finals[1])
    assert_same_weights(finals[0], finals[2])


# ----------------------------------------------------------------------------- interrupted runs

SCRIPT = textwrap.dedent(
    """
    import os, signal, sys
    sys.path.insert(0, {tools!r})
    import train as tool
    from detmine.engine import builders

    send_at, signum = {send_at}, {signum}
    build = builders.build_criterion_from_config

    def with_signal(cfg, model, *rest):
        criterion = build(cfg, model, *rest)
        forward, calls = criterion.forward, [0]

        def counting_forward(*args, **kwargs):
            calls[0] += 1
            if calls[0] == send_at:
                os.kill(os.getpid(), signum)
            return forward(*args, **kwargs)

        criterion.forward = counting_forward
        return criterion

    builders.build_criterion_from_config = with_signal
    sys.exit(tool.main(sys.argv[1:]))
    """
)


def run_train(tmp_path, recipe, *args, send_at=0, signum=0):
    script = tmp_path / "train_with_signal.py"
    script.write_text(SCRIPT.format(tools=str(ROOT / "tools"), send_at=send_at, signum=signum))
    env = dict(os.environ, OMP_NUM_THREADS="1")
    return subprocess.run(
        [sys.executable, str(script), str(recipe), *map(str, args)],
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
    )


@pytest.fixture(scope="module")
def recipe_and_reference(tmp_path_factory, synthetic_root):
    """A tiny recipe (2 workers) and the final checkpoint of its uninterrupted run."""
    base = tmp_path_factory.mktemp("reference")
    recipe = base / "tiny.yaml"
    save_config(tiny_config(base / "unused", synthetic_root, "data.num_workers=2"), recipe)
    proc = run_train(base, recipe, "--output-dir", base / "run")
    assert proc.returncode == 0, proc.stderr[-3000:]
    return recipe, load_checkpoint(base / "run" / "model_0000006.pth")


@pytest.mark.parametrize(
    "signum, send_at, stopped_at, exit_code",
    [
        (signal.SIGKILL, 4, 2, -signal.SIGKILL),  # killed during step 4: resumes from iteration 2
        (signal.SIGTERM, 3, 3, 143),  # step 3 finishes, then the checkpoint of iteration 3
        (signal.SIGINT, 5, 5, 130),
    ],
    ids=["kill-9", "sigterm", "ctrl-c"],
)
def test_interrupted_run_resumes_to_the_same_weights(
    tmp_path, recipe_and_reference, signum, send_at, stopped_at, exit_code
):
    recipe, reference = recipe_and_reference
    run = tmp_path / "run"
    proc = run_train(tmp_path, recipe, "--output-dir", run, send_at=send_at, signum=signum)
    assert proc.returncode == exit_code, proc.stderr[-3000:]
    latest = run / (run / "latest").read_text().strip()
    assert latest.name == f"model_{stopped_at:07d}.pth"
    if signum != signal.SIGKILL:
        last_line = proc.stderr.strip().splitlines()[-1]
        assert f"stopped at iteration {stopped_at}" in last_line and "--resume" in last_line
    saved = load_checkpoint(latest)
    assert float(saved["criterion"]["count_ema"]) != 100.0  # the EMA normaliser moved and is saved

    # overrides after the flags (free keys): the resumed run goes to the end
    proc = run_train(
        tmp_path, recipe, "--output-dir", run, "--resume", "train.log_period=1", "eval.max_images=4"
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    final = load_checkpoint(run / "model_0000006.pth")
    assert_same_weights(final["model"], reference["model"])
    assert_same_weights(final["ema"]["module"], reference["ema"]["module"])
    torch.testing.assert_close(final["criterion"]["count_ema"], reference["criterion"]["count_ema"])
    records = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
    train_iters = [r["iteration"] for r in records if r["type"] == "train"]
    assert train_iters == [1, 2, 3, 4, 5, 6]  # no duplicates from the interrupted part


def test_evaluate_takes_overrides_after_its_flags(tmp_path, recipe_and_reference, synthetic_root):
    recipe, _ = recipe_and_reference
    run = tmp_path / "run"
    proc = run_train(tmp_path, recipe, "--output-dir", run, "train.max_iters=2")
    assert proc.returncode == 0, proc.stderr[-3000:]
    out = tmp_path / "r.json"
    proc = subprocess.run(
        [sys.executable, str(ROOT / "tools" / "evaluate.py"), str(recipe), str(run / "model_0000002.pth")]
        + ["--out", str(out), "eval.max_images=2", "--no-progress"],
        cwd=ROOT,
        env=dict(os.environ, OMP_NUM_THREADS="1"),
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert json.loads(out.with_name("r.metrics.json").read_text())["num_images"] == 2


# ----------------------------------------------------------------------------- resume rules


def train_fake(fakes, cfg, **options):
    model = fakes.FakeDetector()
    trainer = builders.build_trainer(
        cfg,
        model,
        fakes.FakeCriterion(),
        fakes.FakeDetectionDataset(),
        fakes.FakeDetectionDataset(6),
        **options,
    )
    trainer.train()
    return trainer


def test_resume_refuses_a_changed_config_naming_keys_and_values(fakes, tmp_path):
    train_fake(fakes, fakes.tiny_config(tmp_path, "train.max_iters=3"))
    cfg = fakes.tiny_config(
        tmp_path, "train.max_iters=3", "train.resume=true", "train.lr=0.02", "train.gamma=0.5"
    )
    with pytest.raises(ConfigError) as info:
        train_fake(fakes, cfg)
    message = str(info.value)
    assert "\n" not in message and "--allow-config-change" in message
    assert "train.lr: 0.05 -> 0.02" in message and "train.gamma: 0.1 -> 0.5" in message


def test_allowed_changes_are_used_and_recorded(fakes, tmp_path):
    train_fake(fakes, fakes.tiny_config(tmp_path, "train.max_iters=3"))
    cfg = fakes.tiny_config(
        tmp_path, "train.max_iters=5", "train.resume=true", "train.lr=0.02", "train.optimizer=adamw"
    )
    trainer = train_fake(fakes, cfg, allow_config_change=True)  # another optimizer: no KeyError
    assert trainer.iteration == 5
    assert isinstance(trainer.optimizer, torch.optim.AdamW)
    assert trainer.scheduler.base_lrs == [pytest.approx(0.02)] * len(trainer.scheduler.base_lrs)
    text = (tmp_path / "run" / "config.yaml").read_text()
    assert "# resumed at iteration 3 with changes:" in text and "train.lr: 0.05 -> 0.02" in text
    assert yaml.safe_load(text)["train"]["lr"] == 0.02  # says what ran, and stays loadable
    load_config(tmp_path / "run" / "config.yaml")


def test_free_keys_and_length_may_change(fakes, tmp_path, capsys):
    train_fake(fakes, fakes.tiny_config(tmp_path, "train.max_iters=3"))
    cfg = fakes.tiny_config(
        tmp_path, "train.max_iters=6", "train.resume=true", "train.log_period=1", "data.num_workers=1"
    )
    trainer = train_fake(fakes, cfg)
    assert trainer.iteration == 6
    captured = capsys.readouterr()
    assert "schedule is re-stretched over 6 iterations" in captured.out + captured.err


def test_fresh_run_into_a_used_folder_is_refused_or_overwritten(fakes, tmp_path):
    train_fake(fakes, fakes.tiny_config(tmp_path, "train.max_iters=4", "train.checkpoint_period=1"))
    with pytest.raises(ConfigError, match=r"--resume.*--overwrite"):
        train_fake(fakes, fakes.tiny_config(tmp_path, "train.max_iters=2"))
    trainer = train_fake(
        fakes, fakes.tiny_config(tmp_path, "train.max_iters=2", "train.checkpoint_period=1"), overwrite=True
    )
    run = tmp_path / "run"
    assert sorted(p.name for p in run.glob("model_*.pth")) == ["model_0000001.pth", "model_0000002.pth"]
    assert (run / (run / "latest").read_text().strip()).is_file()
    records = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
    assert max(r["iteration"] for r in records) == trainer.iteration == 2


def test_unwritable_run_folder_is_one_line(fakes, tmp_path, monkeypatch):
    (tmp_path / "file").write_text("x")
    with pytest.raises(CheckpointError, match="is a file, not a folder"):
        train_fake(fakes, fakes.tiny_config(tmp_path, f"output_dir={tmp_path / 'file'}"))
    with pytest.raises(CheckpointError) as info:
        train_fake(fakes, fakes.tiny_config(tmp_path, f"output_dir={tmp_path / 'file' / 'run'}"))
    assert "\n" not in str(info.value) and str(tmp_path / "file" / "run") in str(info.value)

    real_open = open

    def full_disk(path, *args, **kwargs):
        if str(path).endswith("metrics.jsonl"):
            raise OSError(errno.ENOSPC, "No space left on device")
        return real_open(path, *args, **kwargs)

    monkeypatch.setattr("builtins.open", full_disk)
    with pytest.raises(CheckpointError) as info:
        train_fake(fakes, fakes.tiny_config(tmp_path / "b"))
    assert "No space left on device" in str(info.value) and "metrics.jsonl" in str(info.value)


# ----------------------------------------------------------------------------- non-finite outputs


class NaNAt(torch.nn.Module):
    """Wraps a detector; the ``at``-th forward returns NaN logits."""

    def __init__(self, inner, at):
        super().__init__()
        self.inner, self.at, self.calls = inner, at, 0
        self.cls_activation = inner.cls_activation

    def forward(self, images):
        self.calls += 1
        out = self.inner(images)
        if self.calls == self.at:
            out.cls_logits = out.cls_logits * float("nan")
        return out

    def predict(self, *args, **kwargs):
        return self.inner.predict(*args, **kwargs)


def real_criterion_trainer(fakes, cfg, model):
    from detmine.box_coder import BoxCoder
    from detmine.criterion import build_criterion

    criterion = build_criterion("sigmoid", BoxCoder(), mining={"type": "all"})
    return builders.build_trainer(
        cfg, model, criterion, fakes.FakeDetectionDataset(), fakes.FakeDetectionDataset(6)
    )


def test_nonfinite_head_outputs_are_skipped_with_on_nonfinite_skip(fakes, tmp_path):
    model = NaNAt(fakes.FakeDetector(), at=3)
    trainer = real_criterion_trainer(fakes, fakes.tiny_config(tmp_path, "train.on_nonfinite=skip"), model)
    trainer.train()
    assert trainer.iteration == 6 and trainer.skipped_nonfinite == 1
    assert all(torch.isfinite(p).all() for p in trainer.model.parameters())


def test_nonfinite_head_outputs_stop_naming_iteration_and_checkpoint(fakes, tmp_path):
    model = NaNAt(fakes.FakeDetector(), at=5)
    trainer = real_criterion_trainer(fakes, fakes.tiny_config(tmp_path), model)
    with pytest.raises(NonFiniteError) as info:
        trainer.train()
    message = str(info.value)
    assert "cls_logits contains NaN" in message and "at iteration 4" in message
    assert str(tmp_path / "run" / "model_0000003.pth") in message and "\n" not in message


# ----------------------------------------------------------------------------- validation loss


def test_validation_loss_is_logged_and_changes_nothing(tmp_path, synthetic_root):
    finals = {}
    for val_loss in (True, False):
        cfg = tiny_config(
            tmp_path / str(val_loss),
            synthetic_root,
            "data.num_workers=0",
            "train.max_iters=4",
            "eval.period=2",
            f"eval.val_loss={str(val_loss).lower()}",
            "mining=random",  # a miner with its own random generator
        )
        trainer = build(cfg)
        trainer.train()
        finals[val_loss] = {k: v.clone() for k, v in trainer.model.state_dict().items()}
        records = [
            json.loads(line) for line in (tmp_path / str(val_loss) / "metrics.jsonl").read_text().splitlines()
        ]
        val = [r for r in records if r["type"] == "val"]
        if val_loss:
            assert [r["iteration"] for r in val] == [2, 4]
            assert all(
                r["loss"] > 0 and r["loss"] == pytest.approx(r["loss_cls"] + r["loss_box"]) for r in val
            )
        else:
            assert val == []
    assert_same_weights(finals[True], finals[False])


def test_the_final_evaluation_keeps_its_detections(tmp_path, synthetic_root):
    """What the ablation tool bootstraps over: the last evaluation's COCO results and images."""
    cfg = tiny_config(tmp_path, synthetic_root, "data.num_workers=0", "train.max_iters=4", "eval.period=2")
    result = build(cfg).train()
    saved = json.loads((tmp_path / "detections_final.json").read_text())
    assert saved["iteration"] == 4
    assert saved["image_ids"] == result.image_ids and len(saved["image_ids"]) == 4
    assert saved["detections"] == json.loads(json.dumps(result.results))
