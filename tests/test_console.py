"""Diagnostics (``warning:`` / ``note:`` lines) go to stderr with errors and Python warnings;
progress and results stay on stdout."""

from __future__ import annotations

import io

from detmine import console


def test_diagnostics_go_to_stderr_and_progress_to_stdout(monkeypatch):
    out, err = io.StringIO(), io.StringIO()
    monkeypatch.setattr("sys.stdout", out)
    monkeypatch.setattr("sys.stderr", err)
    console.log("iter 2/6  loss 1.0000")
    console.log("warning: 3 of 12 images skipped: 3 unreadable")
    console.log("note: no checkpoint in runs/x to resume from; starting from scratch")
    console.log("error: bad", error=True)
    assert out.getvalue() == "iter 2/6  loss 1.0000\n"
    assert err.getvalue().splitlines() == [
        "warning: 3 of 12 images skipped: 3 unreadable",
        "note: no checkpoint in runs/x to resume from; starting from scratch",
        "error: bad",
    ]


def test_warn_is_a_warning_line_on_stderr(capsys):
    console.warn("training length changed")
    captured = capsys.readouterr()
    assert captured.out == "" and captured.err == "warning: training length changed\n"
