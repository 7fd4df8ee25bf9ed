"""Atomic writes, corrupt files, keep-last-k and the latest pointer."""

from __future__ import annotations

import os

import pytest
import torch

from detmine.engine import checkpoint as ckpt
from detmine.engine.checkpoint import CheckpointManager, load_checkpoint, save_checkpoint
from detmine.errors import CheckpointError


def test_round_trip(tmp_path):
    path = save_checkpoint(tmp_path / "a.pth", {"model": {"w": torch.arange(3.0)}, "iteration": 7})
    state = load_checkpoint(path)
    assert state["iteration"] == 7 and torch.equal(state["model"]["w"], torch.arange(3.0))
    assert [p.name for p in tmp_path.iterdir()] == ["a.pth"]  # no temp file left


def test_crash_before_rename_keeps_old_checkpoint(tmp_path, monkeypatch):
    path = save_checkpoint(tmp_path / "a.pth", {"iteration": 1})

    def crash(src, dst):
        raise KeyboardInterrupt("killed between write and rename")

    monkeypatch.setattr(ckpt.os, "replace", crash)
    with pytest.raises(KeyboardInterrupt):
        save_checkpoint(path, {"iteration": 2})
    monkeypatch.undo()
    assert load_checkpoint(path)["iteration"] == 1
    assert [p.name for p in tmp_path.iterdir()] == ["a.pth"]


def test_truncated_or_garbage_file_is_reported_not_loaded(tmp_path):
    path = save_checkpoint(tmp_path / "a.pth", {"model": {"w": torch.randn(1000)}})
    data = path.read_bytes()
    path.write_bytes(data[: len(data) // 2])
    with pytest.raises(CheckpointError, match=r"a\.pth is corrupt or truncated"):
        load_checkpoint(path)
    path.write_bytes(b"not a checkpoint at all")
    with pytest.raises(CheckpointError, match="corrupt"):
        load_checkpoint(path)
    with pytest.raises(CheckpointError, match="does not exist"):
        load_checkpoint(tmp_path / "missing.pth")
    torch.save([1, 2], tmp_path / "list.pth")
    with pytest.raises(CheckpointError, match="expected a dict"):
        load_checkpoint(tmp_path / "list.pth")


def test_keep_last_k_and_latest_pointer(tmp_path):
    manager = CheckpointManager(tmp_path, keep_last=2)
    assert manager.latest() is None and manager.load_latest() is None
    for it in (10, 20, 30):
        manager.save({"iteration": it}, it)
    assert [p.name for p in manager.periodic()] == ["model_0000020.pth", "model_0000030.pth"]
    assert manager.latest() == tmp_path / "model_0000030.pth"
    assert manager.load_latest()["iteration"] == 30
    (tmp_path / "model_0000030.pth").write_bytes(b"\x00" * 10)
    with pytest.raises(CheckpointError, match="older checkpoints in .*model_0000020.pth"):
        manager.load_latest()
    os.unlink(tmp_path / "latest")
    assert manager.latest() == tmp_path / "model_0000030.pth"  # found on disk without the pointer
