"""Tells the controller how many requests this process has for each autoscaled deployment.

Every :data:`SAMPLE_S` the reporter reads each autoscaled router's requests in
flight plus queued (two counters the router keeps anyway: nothing is done per
request), keeps the values that changed, and every push interval sends them in
one one-way ``report_demand`` message, as ages, so clocks need not agree (see
:mod:`schooner.controller.demand`). A request that has to wait because its
deployment has no replicas (scaled to zero) is reported at once and marked
urgent: the controller starts a replica without waiting for the next push.

The timer runs only while this process has a router to an autoscaled deployment.
"""

from __future__ import annotations

import asyncio
import logging
import os
import secrets
import time
from collections.abc import Callable, Iterable

from schooner.router.router import Router
from schooner.rpc.connection import Connection

__all__ = ["PUSH_INTERVAL_ENV", "DemandReporter"]

logger = logging.getLogger("schooner.router")

PUSH_INTERVAL_ENV = "SCHOONER_AUTOSCALING_METRICS_PUSH_INTERVAL_S"
#: How often each router's demand is read.
SAMPLE_S = 0.1


def push_interval() -> float:
    try:
        value = float(os.environ.get(PUSH_INTERVAL_ENV, "0.5"))
    except ValueError:
        return 0.5
    return value if value > 0 else 0.5


class DemandReporter:
    """Samples the autoscaled routers ``routers()`` returns; reports to ``controller()``."""

    def __init__(
        self,
        controller: Callable[[], Connection],
        routers: Callable[[], Iterable[Router]],
    ) -> None:
        self._controller = controller
        self._routers = routers
        #: Who this process is to the controller: unique per process and registry.
        self.source = f"{os.getpid()}-{secrets.token_hex(4)}"
        self._push_s = push_interval()
        self._changes: dict[str, list[tuple[float, float]]] = {}
        self._last: dict[str, float] = {}
        self._last_push = 0.0
        self._timer: asyncio.TimerHandle | None = None

    def watch(self) -> None:
        """Start sampling (a router became autoscaled); a no-op while running."""
        if self._timer is None:
            self._timer = asyncio.get_running_loop().call_later(SAMPLE_S, self._tick)

    def stop(self) -> None:
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None

    def wake(self) -> None:
        """A request is waiting for a deployment with no replicas: report it now."""
        self._sample(time.monotonic())
        self._push(urgent=True)
        self.watch()

    def _tick(self) -> None:
        self._timer = None
        now = time.monotonic()
        active = self._sample(now)
        if now - self._last_push >= self._push_s:
            self._push(urgent=False)
            for key in [k for k in self._last if k not in active]:
                del self._last[key]  # reported its last value; no longer autoscaled here
        if active or self._last:
            self._timer = asyncio.get_running_loop().call_later(SAMPLE_S, self._tick)

    def _sample(self, now: float) -> set[str]:
        """Record each autoscaled deployment's demand if it changed; returns their keys."""
        totals: dict[str, float] = {}
        for router in list(self._routers()):
            if not router.autoscaling:
                continue
            try:
                value = float(router.num_inflight + router.num_queued)
            except RuntimeError:  # a router of another thread's loop changed meanwhile
                continue
            key = router.deployment.key
            totals[key] = totals.get(key, 0.0) + value
        for key, value in totals.items():
            if self._last.get(key) != value:
                self._last[key] = value
                self._changes.setdefault(key, []).append((now, value))
        return set(totals)

    def _push(self, urgent: bool) -> None:
        now = time.monotonic()
        self._last_push = now
        report: dict[str, list[tuple[float, float]]] = {}
        for key, last in self._last.items():
            changes = self._changes.pop(key, None)
            report[key] = [(now - t, v) for t, v in changes] if changes else [(0.0, last)]
        self._changes.clear()
        if not report:
            return
        conn = self._controller()
        if not conn.is_open:
            return
        try:
            conn.notify("report_demand", self.source, report, urgent)
        except Exception:  # the connection is closing; the next push goes to the next one
            logger.debug("could not report demand", exc_info=True)
