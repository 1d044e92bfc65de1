"""Ongoing requests per deployment, as reported by the callers, over a time window.

Every process that calls an autoscaled deployment (proxy, driver, replica with
a handle) samples its requests to it, in flight plus queued, and sends the
changes every half second (see :mod:`schooner.router.demand`). Each caller's
samples form a step function; the deployment's demand at a moment is the sum
of all callers' steps. :meth:`DemandStore.total` reduces that sum over the
look-back window with the deployment's ``aggregation_function`` (time-weighted
mean, max or min).

Samples arrive as ages ("this value, so many seconds ago"), so the callers'
clocks never need to agree with the controller's. A caller not heard from for
:data:`STALE_AFTER_S` is forgotten (its process is gone).
"""

from __future__ import annotations

from collections import deque
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field

__all__ = ["STALE_AFTER_S", "DemandStore"]

#: A caller silent this long is dropped (it sends at least every push interval).
STALE_AFTER_S = 10.0


@dataclass
class _Series:
    points: deque[tuple[float, float]] = field(default_factory=deque)
    heard_at: float = 0.0

    def value_at_end(self) -> float:
        return self.points[-1][1] if self.points else 0.0


class DemandStore:
    """Callers' reported demand per deployment key (``DeploymentID.key``)."""

    def __init__(self, clock: Callable[[], float]) -> None:
        self._clock = clock
        self._series: dict[str, dict[str, _Series]] = {}

    def record(self, key: str, source: str, samples: Iterable[tuple[float, float]]) -> None:
        """``samples``: (age in seconds, value), oldest first; each holds until the next."""
        now = self._clock()
        series = self._series.setdefault(key, {}).setdefault(source, _Series())
        series.heard_at = now
        for age, value in samples:
            t = now - max(0.0, float(age))
            if series.points and t < series.points[-1][0]:
                t = series.points[-1][0]  # keep the series ordered
            series.points.append((t, float(value)))

    def forget(self, key: str) -> None:
        self._series.pop(key, None)

    def current(self, key: str) -> float:
        """The latest reported demand (every caller's last value, summed)."""
        return sum(s.value_at_end() for s in self._live(key, self._clock()))

    def total(self, key: str, window_s: float, function: str = "mean") -> float:
        """Demand over the last ``window_s`` seconds, reduced by ``function`` ("mean",
        "max" or "min"). The window starts no earlier than the latest first sample of
        any caller (before it, that caller's demand is unknown, not zero)."""
        now = self._clock()
        live = self._live(key, now)
        if not live:
            return 0.0
        start = now - window_s
        for s in live:
            self._trim(s, start)
        start = max(start, max(s.points[0][0] for s in live))
        if start >= now:
            return sum(s.value_at_end() for s in live)
        level = 0.0  # the sum at ``start``: every series has a point at or before it
        events: list[tuple[float, float]] = []  # (time, change of the sum)
        for s in live:
            before = [value for t, value in s.points if t <= start]
            previous = before[-1]
            level += previous
            for t, value in list(s.points)[len(before) :]:
                events.append((t, value - previous))
                previous = value
        events.sort()
        area, peak, trough, at = 0.0, level, level, start
        for i, (t, change) in enumerate(events):
            area += level * (t - at)
            level += change
            at = t
            if i + 1 == len(events) or events[i + 1][0] != t:  # changes at one instant: once
                peak, trough = max(peak, level), min(trough, level)
        area += level * (now - at)
        if function == "max":
            return peak
        if function == "min":
            return trough
        return area / (now - start)

    def _live(self, key: str, now: float) -> list[_Series]:
        sources = self._series.get(key)
        if not sources:
            return []
        for source in [s for s, series in sources.items() if now - series.heard_at > STALE_AFTER_S]:
            del sources[source]
        return [s for s in sources.values() if s.points]

    @staticmethod
    def _trim(series: _Series, start: float) -> None:
        """Drop points before ``start`` except the last one (it gives the value at start)."""
        points = series.points
        while len(points) > 1 and points[1][0] <= start:
            points.popleft()
