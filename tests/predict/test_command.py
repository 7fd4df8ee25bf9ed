"""detmine.predict.command: overrides told from inputs; which per-class thresholds apply."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from detmine.errors import ConfigError
from detmine.predict.command import choose_class_thresholds, read_thresholds_flag, split_overrides


def test_overrides_are_told_from_inputs(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(tmp_path)
    Path("odd=name.jpg").write_bytes(b"")
    inputs, overrides = split_overrides(
        ["a.jpg", "eval.batch_size=2", "shots/", "odd=name.jpg", "data.root=/x=y", "*.png", "x/y=1"]
    )
    assert inputs == ["a.jpg", "shots/", "odd=name.jpg", "*.png", "x/y=1"]
    assert overrides == ["eval.batch_size=2", "data.root=/x=y"]


def _thresholds(path: Path, values: list[float]) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps({"classes": [{"threshold": v} for v in values]}))
    return path


def test_which_thresholds_apply(tmp_path: Path) -> None:
    ckpt = tmp_path / "run" / "best.pth"
    assert choose_class_thresholds("auto", ckpt, None) == (None, None)  # no file beside it
    beside = _thresholds(tmp_path / "run" / "thresholds.json", [0.1, 0.2])
    assert choose_class_thresholds("auto", ckpt, None) == ([0.1, 0.2], str(beside))
    assert choose_class_thresholds("none", ckpt, None) == (None, None)
    assert choose_class_thresholds("auto", ckpt, [0.5, 0.6]) == (
        [0.5, 0.6],
        "eval.postprocess.class_thresholds",
    )
    other = _thresholds(tmp_path / "other.json", [0.3, 0.4])
    assert choose_class_thresholds(str(other), ckpt, [0.5, 0.6]) == ([0.3, 0.4], str(other))
    assert read_thresholds_flag("auto") is None and read_thresholds_flag(str(tmp_path / "run")) == [0.1, 0.2]


def test_bad_thresholds_files_are_one_line(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match=r"^--thresholds .*gone\.json: no such file"):
        read_thresholds_flag(str(tmp_path / "gone.json"))
    bad = tmp_path / "bad.json"
    bad.write_text("{not json")
    with pytest.raises(ConfigError, match=r"^--thresholds: .*bad\.json is not a readable thresholds file"):
        read_thresholds_flag(str(bad))
