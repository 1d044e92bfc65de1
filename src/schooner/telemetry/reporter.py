"""Sends this process's metrics to the head every :data:`INTERVAL_S` seconds.

The report is one one-way message on the controller connection
(``report_metrics``); nothing is sent per request. A process says who it is once
with :func:`identify` (its component, a worker id unique in the instance, and
its node's address); a driver is ``driver-<pid>`` unless it says otherwise.
"""

from __future__ import annotations

import asyncio
import logging
import os
from collections.abc import Callable

from schooner.rpc.connection import Connection
from schooner.telemetry import recorder

__all__ = ["INTERVAL_ENV", "Reporter", "identify", "identity"]

logger = logging.getLogger("schooner.metrics")

INTERVAL_ENV = "SCHOONER_METRICS_REPORT_INTERVAL_S"


def _interval() -> float:
    try:
        value = float(os.environ.get(INTERVAL_ENV, "2"))
    except ValueError:
        return 2.0
    return value if value > 0 else 2.0


INTERVAL_S = _interval()

_identity = ("driver", f"driver-{os.getpid()}", "127.0.0.1")


def identify(component: str, worker_id: str, node_address: str = "127.0.0.1") -> None:
    """Name this process in the metrics it reports."""
    global _identity
    _identity = (component, worker_id, node_address)


def identity() -> tuple[str, str, str]:
    """(component, worker id, node address) of this process."""
    return _identity


class Reporter:
    """Reports to whatever controller connection ``controller()`` returns at the time."""

    def __init__(self, controller: Callable[[], Connection]) -> None:
        self._controller = controller
        self._task: asyncio.Task[None] | None = None

    def start(self) -> None:
        """Start reporting (on the running loop); a no-op with metrics off."""
        if recorder.ENABLED and self._task is None:
            self._task = asyncio.get_running_loop().create_task(self._run())

    def stop(self) -> None:
        task, self._task = self._task, None
        if task is not None:
            task.cancel()

    def report(self) -> None:
        """Send the current snapshot now."""
        conn = self._controller()
        if not recorder.ENABLED or not conn.is_open:
            return
        component, worker_id, node = _identity
        try:
            families = recorder.snapshot()
        except Exception:
            logger.exception("could not take a metrics snapshot")
            return
        conn.notify("report_metrics", worker_id, component, node, families)

    async def _run(self) -> None:
        while True:
            await asyncio.sleep(INTERVAL_S)
            self.report()
