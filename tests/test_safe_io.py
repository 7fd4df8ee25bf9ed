"""Output checks before a long job (``check_writable`` / ``prepare_output_dir``) and the file
mode of atomic writes (the umask, like ``open(path, "w")``, not ``mkstemp``'s 0600)."""

from __future__ import annotations

import errno
import os
import stat
from pathlib import Path

import pytest

from detmine import safe_io
from detmine.config import load_config, save_config
from detmine.engine.checkpoint import save_checkpoint
from detmine.errors import CheckpointError
from detmine.safe_io import atomic_write_text, check_writable, prepare_output_dir


def _one_line(exc: BaseException, path: Path, *needles: str) -> str:
    msg = str(exc)
    assert "\n" not in msg and str(path) in msg, msg
    for needle in needles:
        assert needle in msg, msg
    return msg


@pytest.fixture
def blocker(tmp_path: Path) -> Path:
    path = tmp_path / "a_file"
    path.write_text("not a folder")
    return path


def test_a_path_under_a_file_is_refused_and_nothing_is_left(tmp_path, blocker):
    target = blocker / "sub" / "results.json"
    with pytest.raises(OSError) as real:  # what the OS says when one writes there
        target.parent.mkdir(parents=True)
    with pytest.raises(CheckpointError) as info:
        check_writable(target, "results file", where="--out")
    _one_line(info.value, target, "results file", "is a file, not a folder", "nothing was run")
    assert real.value.errno in (errno.ENOTDIR, errno.EEXIST)
    with pytest.raises(CheckpointError) as info:
        check_writable(blocker, "pictures folder", folder=True)
    _one_line(info.value, blocker, "[EEXIST]")
    with pytest.raises(CheckpointError) as info:
        prepare_output_dir(blocker / "out")
    _one_line(info.value, blocker / "out")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["a_file"]


def test_a_folder_where_a_file_goes_is_refused(tmp_path):
    with pytest.raises(CheckpointError) as info:
        check_writable(tmp_path, "results file", where="--out")
    _one_line(info.value, tmp_path, "is a folder", "--out")


def test_check_creates_nothing_and_prepare_creates_the_folder(tmp_path):
    target = tmp_path / "a" / "b" / "r.json"
    assert check_writable(target) == target
    assert list(tmp_path.iterdir()) == []  # no folder, no probe file left
    folder = prepare_output_dir(tmp_path / "pics" / "neg")
    assert folder.is_dir() and list(folder.iterdir()) == []


@pytest.mark.parametrize("code", ["EROFS", "ENOSPC", "EACCES"])
def test_a_refused_probe_is_one_line_naming_the_cause(tmp_path, monkeypatch, code):
    num = getattr(errno, code)

    def refuse(*args, **kwargs):  # root ignores chmod: simulate the file system's answer
        raise OSError(num, os.strerror(num))

    monkeypatch.setattr(safe_io.tempfile, "mkstemp", refuse)
    with pytest.raises(CheckpointError) as info:
        check_writable(tmp_path / "r.json", "results file", where="--out")
    msg = _one_line(info.value, tmp_path / "r.json", f"[{code}]", os.strerror(num))
    assert code == "ENOSPC" or "--out" in msg  # the hint names the tool's option
    with pytest.raises(CheckpointError) as info:
        prepare_output_dir(tmp_path / "pics", where="--out-dir")
    _one_line(info.value, tmp_path / "pics", f"[{code}]")


# ----------------------------------------------------------------------------- file modes


def _mode(path: Path) -> int:
    return stat.S_IMODE(path.stat().st_mode)


@pytest.mark.parametrize("umask", [0o022, 0o027, 0o077])
def test_atomic_writes_follow_the_umask_like_open(tmp_path, umask):
    old = os.umask(umask)
    try:
        reference = tmp_path / "plain.txt"
        with open(reference, "w") as f:  # what every other tool's file gets
            f.write("x")
        ckpt = save_checkpoint(tmp_path / "run" / "model_0000001.pth", {"iteration": 1})
        config = save_config(
            load_config(None, [f"output_dir={tmp_path / 'run'}", "train.max_iters=1"]),
            tmp_path / "run" / "config.yaml",
        )
        text = atomic_write_text(tmp_path / "latest", "model_0000001.pth\n")
    finally:
        os.umask(old)
    assert _mode(reference) == 0o666 & ~umask
    assert _mode(ckpt) == _mode(config) == _mode(text) == _mode(reference)
    assert os.umask(old) == old  # the umask itself is unchanged by the writes
