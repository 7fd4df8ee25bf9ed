"""bench/main_job.py's phase timer: phases are exclusive, and a phase only starts where its
parents allow (a forward inside the evaluation hook counts as evaluation)."""

from __future__ import annotations

import importlib.util
import time
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]


@pytest.fixture(scope="module")
def main_job():
    spec = importlib.util.spec_from_file_location("bench_main_job", ROOT / "bench" / "main_job.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_nested_phases_are_subtracted_from_their_parent(main_job):
    timer = main_job.PhaseTimer()
    with timer.phase("step", ("training", None)):
        time.sleep(0.02)
        with timer.phase("backward", ("step",)):
            time.sleep(0.05)
    assert timer.calls == {"step": 1, "backward": 1}
    assert 0.045 <= timer.seconds["backward"] < 0.5
    assert 0.015 <= timer.seconds["step"] < 0.045  # the 0.05 s of backward is not in it


def test_a_phase_outside_its_parents_stays_with_the_enclosing_one(main_job):
    timer = main_job.PhaseTimer()
    forward = timer.wrap(lambda: time.sleep(0.03), "forward", ("step",))
    with timer.phase("evaluation"):
        forward()
    forward()  # no phase open: not one of forward's parents either
    assert "forward" not in timer.seconds
    assert timer.seconds["evaluation"] >= 0.025


def test_process_age_is_a_small_positive_number_on_linux(main_job):
    age = main_job.process_age_s()
    if age is None:
        pytest.skip("no /proc here")
    assert 0.0 <= age < 3600
