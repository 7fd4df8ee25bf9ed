"""bench/main_job.py's phase timer: phases are exclusive, and a phase only starts where its
parents allow (a forward inside the evaluation hook counts as evaluation)."""

from __future__ import annotations

import importlib.util
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]


@pytest.fixture(scope="module")
def main_job():
    spec = importlib.util.spec_from_file_location("bench_main_job", ROOT / "bench" / "main_job.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


class FakeClock:
    """A clock that only moves when told to (no real time in these tests)."""

    def __init__(self) -> None:
        self.now = 100.0

    def __call__(self) -> float:
        return self.now

    def advance(self, seconds: float) -> None:
        self.now += seconds


def test_nested_phases_are_subtracted_from_their_parent(main_job):
    clock = FakeClock()
    timer = main_job.PhaseTimer(clock)
    with timer.phase("step", ("training", None)):
        clock.advance(2.0)
        with timer.phase("backward", ("step",)):
            clock.advance(5.0)
        clock.advance(1.0)
    with timer.phase("step", ("training", None)):
        clock.advance(0.5)
    assert timer.calls == {"step": 2, "backward": 1}
    assert timer.seconds == {"step": 3.5, "backward": 5.0}


def test_a_phase_outside_its_parents_stays_with_the_enclosing_one(main_job):
    clock = FakeClock()
    timer = main_job.PhaseTimer(clock)
    forward = timer.wrap(lambda: clock.advance(3.0), "forward", ("step",))
    with timer.phase("evaluation"):
        forward()
    forward()  # no phase open: not one of forward's parents either
    with timer.phase("step"):
        forward()
    assert timer.seconds == {"evaluation": 3.0, "step": 0.0, "forward": 3.0}
    assert timer.calls == {"evaluation": 1, "step": 1, "forward": 1}


def test_process_age_is_a_small_positive_number_on_linux(main_job):
    age = main_job.process_age_s()
    if age is None:
        pytest.skip("no /proc here")
    assert 0.0 <= age < 3600


def test_patch_times_a_method_once_however_often_it_is_patched(main_job):
    clock = FakeClock()
    timer = main_job.PhaseTimer(clock)

    class Stream:
        def __next__(self):
            clock.advance(2.0)
            return 1

    timer.patch(Stream, "__next__", "loader")
    timer.patch(Stream, "__next__", "loader")  # a second trainer over the same class
    assert next(Stream()) == 1
    assert timer.seconds == {"loader": 2.0} and timer.calls == {"loader": 1}
