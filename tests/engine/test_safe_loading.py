"""Loading never runs code from a file: malicious pickles are refused, detmine's own
checkpoints load weights-only, old checkpoints get a clear refusal and load when trusted."""

from __future__ import annotations

import os
import random
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

from detmine.engine.checkpoint import (
    CheckpointManager,
    UnsafeCheckpointError,
    load_checkpoint,
    save_checkpoint,
)
from detmine.engine.run_state import rng_state, set_rng_state
from detmine.errors import CheckpointError


class _Payload:
    """Unpickling this calls ``pathlib.Path.touch(sentinel)`` (it would run any callable)."""

    def __init__(self, sentinel: Path) -> None:
        self.sentinel = sentinel

    def __reduce__(self):
        return (Path.touch, (self.sentinel,))


class _ShellPayload:
    def __init__(self, sentinel: Path) -> None:
        self.sentinel = sentinel

    def __reduce__(self):
        return (os.system, (f"touch {self.sentinel}",))


@pytest.fixture(params=[_Payload, _ShellPayload], ids=["path_touch", "os_system"])
def evil(request, tmp_path):
    sentinel = tmp_path / "PWNED"
    path = tmp_path / "shared.pth"
    torch.save({"model": {"w": torch.zeros(2)}, "iteration": 1, "extra": request.param(sentinel)}, path)
    return path, sentinel


def test_payload_is_refused_and_never_runs(evil):
    path, sentinel = evil
    with pytest.raises(UnsafeCheckpointError) as info:
        load_checkpoint(path)
    msg = str(info.value)
    assert "\n" not in msg and str(path) in msg and "--trust-checkpoint" in msg
    # the first global the pickle asks for: getattr (to reach Path.touch) or posix.system
    assert info.value.global_name in ("getattr", "builtins.getattr", f"{os.name}.system")
    assert f"needs the global {info.value.global_name}" in msg
    assert not sentinel.exists()


def test_payload_is_refused_by_load_latest_and_export(evil, tmp_path):
    from detmine.engine.export import export_safetensors

    path, sentinel = evil
    run = tmp_path / "run"
    run.mkdir()
    os.replace(path, run / "model_0000001.pth")
    with pytest.raises(UnsafeCheckpointError, match="model_0000001.pth is refused"):
        CheckpointManager(run).load_latest()
    with pytest.raises(UnsafeCheckpointError):
        export_safetensors(run / "model_0000001.pth", tmp_path / "out.safetensors")
    assert not sentinel.exists() and not (tmp_path / "out.safetensors").exists()


def test_payload_is_refused_by_backbone_loading(evil):
    from detmine.modeling.weights import load_backbone_weights

    path, sentinel = evil
    with pytest.raises(UnsafeCheckpointError) as info:
        load_backbone_weights(torch.nn.Linear(2, 2), path)
    msg = str(info.value)
    assert msg.startswith(f"weights file {path} is refused") and "\n" not in msg
    assert "state dict" in msg
    assert not sentinel.exists()


def _old_main_checkpoint(path: Path) -> dict:
    """What detmine wrote before checkpoints were weights-only: numpy's state tuple (an ndarray)
    and python's state tuple."""
    state = {
        "model": {"w": torch.arange(4.0)},
        "iteration": 10,
        "rng": [
            {"python": random.getstate(), "numpy": np.random.get_state(), "torch": torch.get_rng_state()}
        ],
    }
    torch.save(state, path)
    return state


def test_old_checkpoint_refusal_names_the_global_and_the_flag(tmp_path):
    path = tmp_path / "old.pth"
    _old_main_checkpoint(path)
    with pytest.raises(UnsafeCheckpointError) as info:
        load_checkpoint(path)
    msg = str(info.value)
    assert info.value.global_name.startswith("numpy.")  # numpy(._core|.core).multiarray._reconstruct
    assert f"checkpoint {path} is refused: loading it needs the global {info.value.global_name}" in msg
    assert "--trust-checkpoint" in msg and "\n" not in msg


def test_old_checkpoint_loads_when_trusted_and_its_rng_state_restores(tmp_path):
    path = tmp_path / "old.pth"
    random.seed(3), np.random.seed(3), torch.manual_seed(3)
    _old_main_checkpoint(path)
    expected = (random.random(), np.random.rand(), torch.rand(1).item())
    state = load_checkpoint(path, trusted=True)
    assert torch.equal(state["model"]["w"], torch.arange(4.0))
    set_rng_state(state["rng"][0])  # the tuple form still restores
    assert (random.random(), np.random.rand(), torch.rand(1).item()) == expected


def test_garbage_is_corrupt_not_refused(tmp_path):
    path = tmp_path / "garbage.pth"
    path.write_bytes(b"not a checkpoint at all")
    with pytest.raises(CheckpointError, match="corrupt or truncated") as info:
        load_checkpoint(path)
    assert not isinstance(info.value, UnsafeCheckpointError) and "\n" not in str(info.value)


def test_rng_state_is_weights_only_and_resumes_exactly(tmp_path):
    random.seed(11), np.random.seed(11), torch.manual_seed(11)
    random.gauss(0, 1), np.random.randn()  # cached gaussians are part of the state
    save_checkpoint(tmp_path / "r.pth", {"rng": [rng_state()]})

    def draws():
        return (
            [random.random() for _ in range(3)] + [random.gauss(0, 1)],
            np.random.rand(3).tolist() + [float(np.random.randn())] + np.random.randint(0, 10**9, 3).tolist(),
            torch.rand(3).tolist() + torch.randint(0, 10**9, (3,)).tolist(),
        )

    original = draws()
    random.seed(0), np.random.seed(0), torch.manual_seed(0)  # move every stream elsewhere
    loaded = torch.load(tmp_path / "r.pth", weights_only=True)
    set_rng_state(loaded["rng"][0])
    assert draws() == original


def test_trainer_checkpoints_load_weights_only(fakes, tmp_path):
    """Every checkpoint the trainer writes (periodic, and best.pth from the same state_dict) loads with torch.load(weights_only=True)."""
    from detmine.engine import builders
    from detmine.engine.run_state import seed_everything

    cfg = fakes.tiny_config(
        tmp_path,
        "train.max_iters=3",
        "train.checkpoint_period=2",
        "train.optimizer=adamw",
        "train.ema=true",
    )
    seed_everything(0)
    trainer = builders.build_trainer(
        cfg, fakes.FakeDetector(), fakes.FakeCriterion(), fakes.FakeDetectionDataset(8), None
    )
    trainer.train()
    # best.pth is the checkpoint hook's state (the same as the periodic ones): write it directly
    checkpoint_hook = next(h for h in trainer.hooks if h.name == "checkpoint")
    save_checkpoint(tmp_path / "run" / "best.pth", checkpoint_hook.state(trainer))
    files = sorted((tmp_path / "run").glob("*.pth"))
    assert {p.name for p in files} == {"model_0000002.pth", "model_0000003.pth", "best.pth"}
    for path in files:
        state = torch.load(path, weights_only=True)
        assert state["ema"]["module"] and state["rng"] and state["config"]["train"]["ema"] is True


def test_weights_only_default_survives_a_subprocess(tmp_path):
    """The refusal does not depend on state of this process (safe globals, imports)."""
    path = tmp_path / "old.pth"
    _old_main_checkpoint(path)
    code = (
        "import sys\nfrom detmine.engine.checkpoint import load_checkpoint\n"
        "from detmine.errors import CheckpointError\n"
        f"try:\n    load_checkpoint({str(path)!r})\nexcept CheckpointError as e:\n    print(e)\n    sys.exit(3)\n"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert out.returncode == 3 and "is refused" in out.stdout, out.stderr
