"""Atomic writes, corrupt files, keep-last-k and the latest pointer."""

from __future__ import annotations

import errno
import os
import tempfile

import pytest
import torch

from detmine.engine.checkpoint import CheckpointManager, atomic_write_text, load_checkpoint, save_checkpoint
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

    monkeypatch.setattr(os, "replace", crash)
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


# ----------------------------------------------------------------------------- rotation per run


def _old_run(folder, iterations=(900, 1000)):
    old = CheckpointManager(folder, keep_last=5)
    for it in iterations:
        old.save({"iteration": it, "run": "old"}, it)
    return old


def test_fresh_run_among_old_checkpoints_never_deletes_its_own(tmp_path):
    _old_run(tmp_path)
    manager = CheckpointManager(tmp_path, keep_last=2)
    for it in (100, 200, 300):
        manager.save({"iteration": it}, it)
        assert manager.latest() == manager.path_for(it) and manager.latest().is_file()
    names = [p.name for p in manager.periodic()]
    assert names == ["model_0000200.pth", "model_0000300.pth", "model_0000900.pth", "model_0001000.pth"]
    assert manager.load_latest()["iteration"] == 300


def test_keep_last_one_keeps_the_file_just_written(tmp_path):
    manager = CheckpointManager(tmp_path, keep_last=1)
    for it in (1, 2):
        path = manager.save({"iteration": it}, it)
        assert [p.name for p in manager.periodic()] == [path.name]


def test_resumed_run_rotates_the_checkpoints_it_continues(tmp_path):
    first = CheckpointManager(tmp_path, keep_last=3)
    for it in (10, 20, 30):
        first.save({"iteration": it}, it)
    resumed = CheckpointManager(tmp_path, keep_last=3)
    assert resumed.load_latest()["iteration"] == 30
    resumed.save({"iteration": 40}, 40)
    assert [p.name for p in resumed.periodic()] == [f"model_00000{i}0.pth" for i in (2, 3, 4)]


def test_has_checkpoints_and_clear(tmp_path):
    # the refusal of a fresh run among them is the run folder's (tests/engine/test_trainer_runs.py)
    manager = CheckpointManager(tmp_path / "run")
    assert not manager.has_checkpoints() and manager.clear() == []
    _old_run(tmp_path / "run")
    save_checkpoint(tmp_path / "run" / "best.pth", {"iteration": 900})
    (tmp_path / "run" / "metrics.jsonl").write_text("{}\n")
    assert manager.has_checkpoints()
    removed = manager.clear()
    assert {p.name for p in removed} == {"model_0000900.pth", "model_0001000.pth", "latest", "best.pth"}
    assert not manager.has_checkpoints() and manager.latest() is None
    assert (tmp_path / "run" / "metrics.jsonl").is_file()  # the caller's business


def test_remove_stale_tmp_removes_only_interrupted_writes(tmp_path):
    keep = ["model_0000100.pth", "notes.tmp", ".hidden", "config.yaml", ".cache.tmp"]
    stale = [".model_0000100.pth.k2j_9x0a.tmp", ".latest.abcd1234.tmp", ".config.yaml.zz99zz99.tmp"]
    for name in keep + stale:
        (tmp_path / name).write_bytes(b"x")
    removed = CheckpointManager(tmp_path).remove_stale_tmp()
    assert sorted(p.name for p in removed) == sorted(stale)
    assert sorted(p.name for p in tmp_path.iterdir()) == sorted(keep)
    assert CheckpointManager(tmp_path / "absent").remove_stale_tmp() == []


# ----------------------------------------------------------------------------- write failures


def _assert_one_line(exc, path, code):
    msg = str(exc)
    assert "\n" not in msg and str(path) in msg and f"[{code}]" in msg, msg
    assert "previous file, if any, is unchanged" in msg


def test_full_disk_keeps_previous_checkpoint_and_leaves_no_tmp(tmp_path, monkeypatch):
    manager = CheckpointManager(tmp_path)
    manager.save({"iteration": 1}, 1)
    real_fdopen = os.fdopen

    class FullDisk:
        def __init__(self, fd, mode):
            self.f = real_fdopen(fd, mode)

        def __enter__(self):
            return self

        def __exit__(self, *exc):
            self.f.close()

        def write(self, data):
            raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(os, "fdopen", FullDisk)
    with pytest.raises(CheckpointError) as info:
        manager.save({"iteration": 2}, 2)
    monkeypatch.undo()
    _assert_one_line(info.value, manager.path_for(2), "ENOSPC")
    assert "disk is full" in str(info.value)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["latest", "model_0000001.pth"]
    assert manager.load_latest()["iteration"] == 1


@pytest.mark.parametrize("code", ["EACCES", "EROFS"])
def test_unwritable_folder_is_one_line(tmp_path, monkeypatch, code):
    path = save_checkpoint(tmp_path / "a.pth", {"iteration": 1})

    def refuse(*args, **kwargs):
        raise OSError(getattr(errno, code), os.strerror(getattr(errno, code)), str(tmp_path))

    monkeypatch.setattr(tempfile, "mkstemp", refuse)  # root ignores chmod: simulate the refusal
    with pytest.raises(CheckpointError) as info:
        save_checkpoint(path, {"iteration": 2})
    with pytest.raises(CheckpointError, match=code):
        atomic_write_text(tmp_path / "config.yaml", "a: 1\n")
    monkeypatch.undo()
    _assert_one_line(info.value, path, code)
    assert "output_dir" in str(info.value)
    assert load_checkpoint(path)["iteration"] == 1


def test_path_under_a_file_is_one_line(tmp_path):
    blocker = tmp_path / "file"
    blocker.write_text("not a folder")
    with pytest.raises(CheckpointError) as info:
        CheckpointManager(blocker / "run").save({"iteration": 1}, 1)
    _assert_one_line(info.value, blocker / "run" / "model_0000001.pth", "ENOTDIR")
    with pytest.raises(CheckpointError) as info:
        save_checkpoint(blocker / "x.pth", {"iteration": 1})
    assert "a part of the path is a file" in str(info.value) and "\n" not in str(info.value)


def test_atomic_write_text(tmp_path):
    path = atomic_write_text(tmp_path / "sub" / "config.yaml", "a: 1\n")
    assert path.read_text() == "a: 1\n"
    atomic_write_text(path, "a: 2\n")
    assert path.read_text() == "a: 2\n" and sorted(p.name for p in path.parent.iterdir()) == ["config.yaml"]


def test_writers_import_no_torch():
    """config.py may use atomic_write_text without making config errors slow."""
    import subprocess
    import sys

    code = "import sys, detmine.safe_io; sys.exit('torch' in sys.modules)"
    assert subprocess.run([sys.executable, "-c", code], timeout=60).returncode == 0
