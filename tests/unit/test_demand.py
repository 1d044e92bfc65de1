"""The controller's store of callers' demand: step functions summed and reduced over a window."""

from __future__ import annotations

import pytest

from schooner.controller import demand as demand_module
from schooner.controller.demand import DemandStore


class Clock:
    def __init__(self) -> None:
        self.now = 100.0

    def __call__(self) -> float:
        return self.now


def test_mean_is_time_weighted_over_the_window() -> None:
    clock = Clock()
    store = DemandStore(clock)
    store.record("d", "a", [(10.0, 0.0), (5.0, 4.0)])  # 0 for 5 s, then 4 for 5 s
    assert store.total("d", 10.0, "mean") == pytest.approx(2.0)
    assert store.total("d", 10.0, "max") == pytest.approx(4.0)
    assert store.total("d", 10.0, "min") == pytest.approx(0.0)
    assert store.current("d") == 4.0


def test_callers_are_summed() -> None:
    clock = Clock()
    store = DemandStore(clock)
    store.record("d", "a", [(4.0, 1.0)])
    store.record("d", "b", [(4.0, 2.0), (2.0, 0.0)])
    # 3 for 2 s, then 1 for 2 s
    assert store.total("d", 4.0, "mean") == pytest.approx(2.0)
    assert store.total("d", 4.0, "max") == pytest.approx(3.0)


def test_window_starts_when_every_caller_has_reported() -> None:
    clock = Clock()
    store = DemandStore(clock)
    store.record("d", "a", [(30.0, 2.0)])
    store.record("d", "b", [(1.0, 2.0)])  # a new caller: the last second only
    assert store.total("d", 30.0, "mean") == pytest.approx(4.0)


def test_old_points_fall_out_of_the_window() -> None:
    clock = Clock()
    store = DemandStore(clock)
    store.record("d", "a", [(0.0, 10.0)])
    clock.now += 20
    store.record("d", "a", [(0.0, 0.0)])
    clock.now += 10
    assert store.total("d", 15.0, "max") == pytest.approx(10.0)  # 10 until 10 s ago
    assert store.total("d", 5.0, "mean") == pytest.approx(0.0)


def test_silent_callers_are_forgotten() -> None:
    clock = Clock()
    store = DemandStore(clock)
    store.record("d", "a", [(0.0, 3.0)])
    clock.now += demand_module.STALE_AFTER_S + 1
    assert store.total("d", 30.0) == 0.0
    assert store.current("d") == 0.0


def test_unknown_deployment_has_no_demand() -> None:
    assert DemandStore(Clock()).total("nope", 10.0) == 0.0
