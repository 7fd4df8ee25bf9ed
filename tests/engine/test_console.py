"""Progress in a log file is a line every so often, never a stream of bar redraws."""

from __future__ import annotations

import io

import pytest

from detmine import console


class _Pipe(io.StringIO):
    def isatty(self) -> bool:
        return False


class _Terminal(io.StringIO):
    def isatty(self) -> bool:
        return True


@pytest.mark.parametrize("stream, bar", [(_Pipe, False), (_Terminal, True)])
def test_progress_is_a_bar_only_on_a_terminal(monkeypatch, stream, bar):
    err, out = stream(), io.StringIO()
    monkeypatch.setattr("sys.stderr", err)
    monkeypatch.setattr("sys.stdout", out)
    items = list(console.progress(range(20), "eval", unit="batch"))
    assert items == list(range(20))
    if bar:
        assert "\r" in err.getvalue()
    else:
        lines = out.getvalue().splitlines()
        assert "\r" not in err.getvalue() + out.getvalue()
        assert [line.split()[1] for line in lines] == [f"{n}/20" for n in range(2, 21, 2)]
        assert all(line.startswith("eval: ") and "batch/s" in line and "ETA" in line for line in lines)


def test_disabled_and_silent_progress_print_nothing(monkeypatch):
    out = io.StringIO()
    monkeypatch.setattr("sys.stderr", _Pipe())
    monkeypatch.setattr("sys.stdout", out)
    for options in ({"enabled": False}, {"every": 0}):
        bar = console.Progress(10, "train", **options)
        for _ in range(10):
            bar.update()
        bar.close()
    assert out.getvalue() == ""


def test_format_duration():
    assert [console.format_duration(s) for s in (5, 312, 3720)] == ["5s", "5m12s", "1h02m"]


def test_a_generator_without_length_is_counted(monkeypatch):
    out = io.StringIO()
    monkeypatch.setattr("sys.stderr", _Pipe())
    monkeypatch.setattr("sys.stdout", out)
    assert sum(console.progress((i for i in range(120)), "eval")) == sum(range(120))
    assert [line.split()[1] for line in out.getvalue().splitlines()] == ["50", "100"]
