"""``train.compile``: the training forward through ``torch.compile`` (one real inductor run of
the fake detector), eager checkpoints / EMA / export from a compiled run, the one-warning
fallback to eager (no C++ compiler; a compiler failing at the first step), and one recompile
for any number of input sizes (dynamo alone, no code generation)."""

from __future__ import annotations

import pytest
import torch
from torch._dynamo.utils import counters

from detmine.engine import builders
from detmine.engine import compile as compile_module
from detmine.engine.checkpoint import COMPILED_PREFIX, load_checkpoint, load_model_state
from detmine.engine.compile import CompiledForward
from detmine.engine.export import export_safetensors
from detmine.engine.run_state import seed_everything
from detmine.modeling import build_model


def train_fake(fakes, cfg):
    seed_everything(cfg.train.seed)
    trainer = builders.build_trainer(
        cfg, fakes.FakeDetector(), fakes.FakeCriterion(), fakes.FakeDetectionDataset(), None
    )
    trainer.train()
    return trainer


def weights(trainer) -> dict[str, torch.Tensor]:
    return {k: v.clone() for k, v in trainer.model.state_dict().items()}


@pytest.fixture(autouse=True)
def fresh_dynamo():
    torch._dynamo.reset()
    yield
    torch._dynamo.reset()


def test_compiled_run_saves_eager_checkpoints_ema_and_exports(fakes, tmp_path):
    if compile_module.compile_unavailable(torch.device("cpu")):
        pytest.skip(
            f"torch.compile unavailable here: {compile_module.compile_unavailable(torch.device('cpu'))}"
        )
    cfg = fakes.tiny_config(tmp_path, "train.compile=true", "train.max_iters=3", "train.ema=true")
    trainer = train_fake(fakes, cfg)
    assert isinstance(trainer.forward, CompiledForward) and trainer.forward.compiled
    assert trainer.forward.first_call_s is not None  # it did compile (and log the time)

    state = load_checkpoint(tmp_path / "run" / "model_0000003.pth", training=True)
    for keys in (state["model"], state["ema"]["module"]):
        assert not any(k.startswith(COMPILED_PREFIX) for k in keys)
        load_model_state(fakes.FakeDetector(), keys, source="compiled run")  # strict, eager
    out, chosen = export_safetensors(tmp_path / "run" / "model_0000003.pth", tmp_path / "w.safetensors")
    exported = load_checkpoint(out)["model"]
    assert chosen == "ema" and exported.keys() == state["ema"]["module"].keys()


def test_a_compiler_failing_at_the_first_step_falls_back_to_eager_once(fakes, tmp_path, monkeypatch, capsys):
    eager = weights(train_fake(fakes, fakes.tiny_config(tmp_path / "eager", "train.max_iters=3")))

    def failing_backend(graph, example_inputs):
        raise RuntimeError("the compiler crashed\nsecond line")

    real_compile = torch.compile
    monkeypatch.setattr(
        torch, "compile", lambda model, **options: real_compile(model, backend=failing_backend)
    )
    monkeypatch.setattr(compile_module, "compile_unavailable", lambda device, backend="inductor": None)
    trainer = train_fake(fakes, fakes.tiny_config(tmp_path, "train.compile=true", "train.max_iters=3"))
    assert trainer.iteration == 3 and not trainer.forward.compiled
    warnings = [line for line in capsys.readouterr().err.splitlines() if "train.compile" in line]
    assert len(warnings) == 1 and "the compiler crashed" in warnings[0] and "runs eagerly" in warnings[0]
    assert "second line" not in warnings[0]
    # dynamo traced on fake tensors: no random number drawn, no statistic updated twice
    for k, v in weights(trainer).items():
        torch.testing.assert_close(v, eager[k], atol=1e-6, rtol=0, msg=k)


def test_without_a_cxx_compiler_the_run_warns_once_and_stays_eager(fakes, tmp_path, monkeypatch, capsys):
    monkeypatch.delenv("CXX", raising=False)
    monkeypatch.setattr(compile_module.shutil, "which", lambda name: None)
    monkeypatch.setattr(torch, "compile", lambda *a, **k: pytest.fail("torch.compile was called"))
    trainer = train_fake(fakes, fakes.tiny_config(tmp_path, "train.compile=true", "train.max_iters=2"))
    assert trainer.iteration == 2 and not trainer.forward.compiled
    err = capsys.readouterr().err
    assert err.count("warning: train.compile:") == 1 and "no C++ compiler" in err


def test_one_recompile_for_any_number_of_input_sizes():
    # dynamo only (backend "eager"): the guards decide the recompiles, not the code generator
    model = build_model(
        "retinanet_tiny_fpn", 3, image_size=192, widths=[8, 8, 16, 16, 32], fpn_channels=16, head_convs=1
    ).train()
    forward = CompiledForward(model, torch.device("cpu"), backend="eager")
    before, graphs = counters["stats"]["unique_graphs"], []
    for h, w in [(192, 192), (192, 192), (192, 256), (256, 192)]:
        out = forward(torch.randint(0, 256, (2, 3, h, w), dtype=torch.uint8))
        (out.cls_logits.sum() + out.box_deltas.sum()).backward()
        graphs.append(counters["stats"]["unique_graphs"] - before)
        assert out.anchors.shape[0] == out.cls_logits.shape[1]
    assert forward.compiled and forward.dynamic_sizes
    assert graphs == [1, 1, 2, 2]  # static for the first size, one dynamic graph for the others
