"""Appending to metrics.jsonl is all or nothing: a write that fails part-way (a full disk)
leaves the file byte for byte as it was, as the one-line error says."""

from __future__ import annotations

import builtins
import errno
import json

import pytest

from detmine.engine.events import EventStorage, JSONLinesWriter
from detmine.errors import CheckpointError


class _FillsUp:
    """A file whose ``write`` writes the first half of what it is given, then fails (ENOSPC)."""

    def __init__(self, f):
        self.f = f

    def write(self, data):
        self.f.write(data[: len(data) // 2])
        self.f.flush()
        raise OSError(errno.ENOSPC, "No space left on device")

    def __getattr__(self, name):
        return getattr(self.f, name)

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        return self.f.__exit__(*exc)


def test_a_partial_append_is_cut_back(tmp_path, monkeypatch):
    writer = JSONLinesWriter(tmp_path / "metrics.jsonl")
    storage = EventStorage()

    def write_metrics(record):
        storage.put_record(record.pop("type"), record, step=record.pop("iteration"))
        writer.write(storage.drain(), 0)

    write_metrics({"type": "train", "iteration": 1, "loss": 1.0})
    path = tmp_path / "metrics.jsonl"
    before = path.read_bytes()

    real_open = builtins.open

    def full_disk(file, *args, **kwargs):
        f = real_open(file, *args, **kwargs)
        return _FillsUp(f) if str(file).endswith("metrics.jsonl") else f

    monkeypatch.setattr(builtins, "open", full_disk)
    with pytest.raises(CheckpointError) as info:
        write_metrics({"type": "train", "iteration": 2, "loss": 0.5, "padding": "x" * 100})
    message = str(info.value)
    assert "\n" not in message and str(path) in message and "No space left on device" in message
    assert "unchanged" in message
    assert path.read_bytes() == before  # not half a line

    monkeypatch.setattr(builtins, "open", real_open)
    write_metrics({"type": "train", "iteration": 2, "loss": 0.5})
    writer.close()
    assert [json.loads(line)["iteration"] for line in path.read_text().splitlines()] == [1, 2]
