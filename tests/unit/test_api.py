"""ztplan.api.RateLimit: a request budget shared by threads, on a fake clock."""

from __future__ import annotations

from ztplan.api import RateLimit


class Clock:
    def __init__(self) -> None:
        self.now = 100.0
        self.slept: list[float] = []

    def __call__(self) -> float:
        return self.now

    def sleep(self, seconds: float) -> None:
        self.slept.append(round(seconds, 6))
        self.now += seconds


def test_the_budget_is_spent_at_once_then_paced_by_the_second() -> None:
    clock = Clock()
    limit = RateLimit(3, clock=clock, sleep=clock.sleep)
    starts = []
    for _ in range(7):
        limit.wait()
        starts.append(round(clock.now - 100.0, 6))
    assert starts == [0.0, 0.0, 0.0, 1.0, 1.0, 1.0, 2.0]


def test_requests_a_second_apart_never_wait() -> None:
    clock = Clock()
    limit = RateLimit(1, clock=clock, sleep=clock.sleep)
    for _ in range(3):
        limit.wait()
        clock.now += 1.0
    assert clock.slept == []
