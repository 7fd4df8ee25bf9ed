"""Mixed precision on the CPU through the real trainer: ``train.amp`` resolution (``auto`` is
bf16 on CUDA and fp32 on the CPU; an explicit ``bf16`` / ``fp16`` autocasts on the CPU),
bfloat16 and float16 + GradScaler runs whose head runs in low precision while the losses stay
float32, their checkpoints and exact resume, and the resume of a checkpoint written before
``auto`` (``amp: bf16`` that meant fp32 on the CPU)."""

from __future__ import annotations

import pytest
import torch
import yaml

from detmine.config import load_config
from detmine.engine import builders
from detmine.engine.builders import training
from detmine.engine.checkpoint import load_checkpoint, load_model_state, save_checkpoint
from detmine.engine.resume import diff_configs
from detmine.engine.run_state import seed_everything
from detmine.engine.trainer import HookBase
from detmine.errors import ConfigError

# 128 px, not 64: at 64 px P7's conv sees a 1x1 map, where torch 2.14's CPU bfloat16 conv
# backward returns garbage weight gradients (NaN on repeated calls), so no run would repeat.
TINY = [
    "data.kind=synthetic",
    "data.image_size=128",
    "model.name=retinanet_tiny_fpn",
    "model.options={image_size: 128, widths: [8, 8, 16, 16, 32], fpn_channels: 16, head_convs: 1}",
    "train.max_iters=4",
    "train.batch_size=4",
    "train.optimizer=adamw",
    "train.lr=0.002",
    "train.warmup_iters=1",
    "train.ema=true",
    "train.ema_tau=2",
    "train.checkpoint_period=2",
    "train.log_period=1",
    "loss.normalizer=ema",
    "data.num_workers=0",
    "vis.period=0",
    "hooks=[{name: evaluation, enabled: false}, {name: validation_loss, enabled: false}]",
]


@pytest.fixture(scope="module")
def synthetic_root(tmp_path_factory):
    from detmine.data.synthetic import ensure_synthetic

    root = tmp_path_factory.mktemp("synthetic")
    ensure_synthetic(root, num_train=8, num_val=4, size=64, seed=0, workers=0, progress=False)
    return root


def config(run_dir, data_root, *overrides):
    return load_config(None, [*TINY, f"data.root={data_root}", f"output_dir={run_dir}", *overrides])


class Precision(HookBase):
    """Records the head's output dtypes (a forward hook) and each step's loss dtypes / finiteness."""

    def __init__(self, model: torch.nn.Module) -> None:
        self.head_dtypes: set[torch.dtype] = set()
        self.loss_dtypes: set[torch.dtype] = set()
        self.finite = True
        model.head.register_forward_hook(self._record_head)

    def _record_head(self, module, inputs, outputs) -> None:
        if module.training:  # the training forward (not an evaluation's)
            self.head_dtypes.update(t.dtype for t in outputs)

    def after_step(self, trainer) -> None:
        losses = trainer.last_step.losses
        self.loss_dtypes.update(v.dtype for v in losses.values())
        self.finite &= all(bool(torch.isfinite(v)) for v in losses.values())


def build(cfg):
    seed_everything(cfg.train.seed)
    train_set, val_set = builders.build_datasets(cfg)
    model = builders.build_model_from_config(cfg, train_set.num_classes)
    criterion = builders.build_criterion_from_config(cfg, model)
    trainer = builders.build_trainer(cfg, model, criterion, train_set, val_set)
    precision = Precision(model)
    trainer.register_hooks([precision])
    return trainer, precision


# ----------------------------------------------------------------------------- resolution


def test_auto_is_bf16_on_cuda_and_fp32_on_the_cpu():
    cpu, cuda = torch.device("cpu"), torch.device("cuda")
    assert training.resolve_amp("auto", cpu) is None
    assert training.resolve_amp("auto", cuda) is torch.bfloat16
    assert training.resolve_amp("bf16", cpu) is torch.bfloat16
    assert training.resolve_amp("fp16", cuda) is torch.float16
    assert training.resolve_amp("off", cpu) is None and training.resolve_amp("off", cuda) is None
    assert load_config(None, ["train.max_iters=1"]).train.amp == "auto"


def test_an_unsupported_cpu_precision_is_one_config_line(monkeypatch):
    monkeypatch.setattr(
        training, "amp_unsupported", lambda device, dtype: "CPU autocast only supports bfloat16"
    )
    with pytest.raises(ConfigError) as info:
        training.resolve_amp("fp16", torch.device("cpu"))
    message = str(info.value)
    assert "\n" not in message and "train.amp=fp16" in message and "only supports bfloat16" in message
    assert "use train.amp=bf16" in message


# ----------------------------------------------------------------------------- real runs


def test_cpu_bf16_run_trains_checkpoints_and_resumes_exactly(tmp_path, synthetic_root):
    run = tmp_path / "run"
    trainer, precision = build(config(run, synthetic_root, "train.amp=bf16"))
    assert trainer.amp_dtype is torch.bfloat16 and not trainer.scaler.is_enabled()
    trainer.train()
    assert precision.head_dtypes == {torch.bfloat16}  # the forward ran under CPU autocast
    assert precision.loss_dtypes == {torch.float32} and precision.finite
    final = {k: v.clone() for k, v in trainer.model.state_dict().items()}
    assert all(v.dtype == torch.float32 for v in final.values() if v.is_floating_point())

    # the checkpoint loads into an eager fp32 model, EMA included
    state = load_checkpoint(run / "model_0000004.pth", training=True)
    fresh, _ = build(config(tmp_path / "other", synthetic_root))
    load_model_state(fresh.model, state["model"], source="model_0000004.pth")
    load_model_state(fresh.model, state["ema"]["module"], source="model_0000004.pth (ema)")

    # resumed from iteration 2, it ends with the weights of the uninterrupted run
    (run / "model_0000004.pth").unlink()
    (run / "latest").write_text("model_0000002.pth\n")
    resumed, precision = build(config(run, synthetic_root, "train.amp=bf16", "train.resume=true"))
    assert resumed.iteration == 2
    resumed.train()
    assert resumed.iteration == 4 and precision.head_dtypes == {torch.bfloat16}
    for k, v in resumed.model.state_dict().items():
        torch.testing.assert_close(v, final[k], atol=1e-6, rtol=0, msg=k)


def test_cpu_fp16_run_uses_a_grad_scaler_and_restores_it(tmp_path, synthetic_root):
    reason = training.amp_unsupported("cpu", torch.float16)
    if reason is not None:
        pytest.skip(f"this torch has no CPU float16 autocast / GradScaler: {reason}")
    run = tmp_path / "run"
    trainer, precision = build(config(run, synthetic_root, "train.amp=fp16"))
    assert trainer.scaler.is_enabled()
    trainer.train()
    assert precision.head_dtypes == {torch.float16}
    assert precision.loss_dtypes == {torch.float32} and precision.finite
    state = load_checkpoint(run / "model_0000004.pth", training=True)
    assert state["scaler"]["scale"] == trainer.scaler.get_scale()

    resumed, _ = build(
        config(run, synthetic_root, "train.amp=fp16", "train.max_iters=6", "train.resume=true")
    )
    assert resumed.iteration == 4 and resumed.scaler.get_scale() == state["scaler"]["scale"]
    resumed.train()
    assert resumed.iteration == 6


# ----------------------------------------------------------------------------- old checkpoints


def test_a_checkpoint_from_before_auto_resumes_in_fp32_with_a_warning(tmp_path, synthetic_root, capsys):
    run = tmp_path / "run"
    trainer, _ = build(config(run, synthetic_root, "train.max_iters=2"))
    trainer.train()
    # as detmine 0.2 wrote it: `amp: bf16` (fp32 on the CPU), no `train.compile`
    path = run / "model_0000002.pth"
    state = load_checkpoint(path, training=True)
    state["config"]["train"]["amp"] = "bf16"
    del state["config"]["train"]["compile"]
    save_checkpoint(path, state)

    resumed, precision = build(config(run, synthetic_root, "train.max_iters=3", "train.resume=true"))
    assert resumed.iteration == 2 and resumed.amp_dtype is None
    resumed.train()
    assert precision.head_dtypes == {torch.float32}
    err = capsys.readouterr().err
    assert "mixed precision changed (train.amp: 'bf16' -> 'auto')" in err and "run in fp32 on cpu" in err
    header = (run / "config.yaml").read_text()
    assert "train.amp: 'bf16' -> 'auto'" in header and yaml.safe_load(header)["train"]["amp"] == "auto"


def test_compile_is_free_to_change_on_resume_and_amp_is_a_warned_change():
    changes = diff_configs(
        {"train": {"amp": "bf16", "lr": 0.1}}, {"train": {"amp": "off", "compile": True, "lr": 0.1}}
    )
    assert changes.free == {"train.compile": ("<unset>", True)}
    assert changes.precision == {"train.amp": ("bf16", "off")} and not changes.other
    assert "train.amp" in changes.recorded
    assert not diff_configs({"train": {}}, {"train": {"compile": None}}).free  # null: as before the key
