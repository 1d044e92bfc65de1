"""Draining a replica before it stops (``rpc_prepare_shutdown``), on a real event loop.

The replica object is driven directly (no process, no RPC). Periods are short
(``PERIOD_S``), and "still draining" is checked as "not done after several
periods".
"""

from __future__ import annotations

import asyncio
import logging
import pickle
import time
from collections.abc import Awaitable, Callable
from typing import Any

import cloudpickle
import pytest

from schooner import context
from schooner.replica.replica import Replica
from schooner.rpc.messages import CodeRef, DeploymentID

PERIOD_S = 0.05
SEVERAL_PERIODS_S = 5 * PERIOD_S


class Gated:
    """Each ``wait(key)`` call runs until the test opens that key's gate."""

    instances: list[Gated] = []

    def __init__(self) -> None:
        self.started: dict[str, asyncio.Event] = {}
        self.gates: dict[str, asyncio.Event] = {}
        self.deleted = False
        Gated.instances.append(self)

    async def wait(self, key: str) -> str:
        self.started.setdefault(key, asyncio.Event()).set()
        await self.gates.setdefault(key, asyncio.Event()).wait()
        return key

    def __del__(self) -> None:
        self.deleted = True


class Harness:
    def __init__(self, replica: Replica, user: Gated) -> None:
        self.replica = replica
        self.user = user

    def call(self, key: str) -> asyncio.Task[Any]:
        """Send ``wait(key)`` as a handle would; returns once the call is running."""
        meta = (f"req-{key}", "wait", "", "", "")
        return asyncio.get_running_loop().create_task(self.replica.rpc_call(meta, (key,), {}))

    async def started(self, key: str) -> None:
        await self.user.started.setdefault(key, asyncio.Event()).wait()

    def release(self, key: str) -> None:
        self.user.gates.setdefault(key, asyncio.Event()).set()

    def drain(self, timeout_s: float = 10.0) -> asyncio.Task[None]:
        return asyncio.get_running_loop().create_task(
            self.replica.rpc_prepare_shutdown(PERIOD_S, timeout_s)
        )


def run(body: Callable[[Harness], Awaitable[None]]) -> None:
    async def main() -> None:
        replica = Replica("r1", DeploymentID("Gated", "app"))
        code = CodeRef(pickled=cloudpickle.dumps(Gated))
        await replica.rpc_initialize(code, pickle.dumps(((), {})), False, None, 10)
        await asyncio.wait_for(body(Harness(replica, Gated.instances.pop())), 10)

    try:
        asyncio.run(main())
    finally:
        # rpc_initialize made this process look like a replica (serve.shutdown() would
        # then do nothing in later tests).
        context._set_replica_context(None)


async def still_draining(drain: asyncio.Task[None]) -> bool:
    done, _ = await asyncio.wait({drain}, timeout=SEVERAL_PERIODS_S)
    return not done


def test_an_idle_replica_stops_after_one_period() -> None:
    async def body(h: Harness) -> None:
        started = time.monotonic()
        await h.drain()
        assert PERIOD_S <= time.monotonic() - started < 1.0  # one period, not the timeout
        assert h.user.deleted

    run(body)


def test_requests_in_flight_are_waited_for_then_del_runs() -> None:
    async def body(h: Harness) -> None:
        call = h.call("a")
        await h.started("a")
        drain = h.drain()
        assert await still_draining(drain)
        assert not h.user.deleted
        h.release("a")
        await drain
        assert call.result() == "a"
        assert h.user.deleted

    run(body)


def test_a_request_arriving_during_the_first_period_is_served_and_waited_for() -> None:
    """A router that has not heard yet that the replica is leaving may still send to it."""

    async def body(h: Harness) -> None:
        drain = h.drain()
        await asyncio.sleep(PERIOD_S / 2)  # the request comes while the drain is under way
        late = h.call("late")
        await h.started("late")
        assert await still_draining(drain)
        h.release("late")
        await drain
        assert late.result() == "late"

    run(body)


def test_the_replica_being_idle_for_a_moment_between_checks_is_not_enough() -> None:
    """One request ends and another starts between two checks: the drain goes on."""

    async def body(h: Harness) -> None:
        first = h.call("first")
        await h.started("first")
        drain = h.drain()
        await asyncio.sleep(PERIOD_S / 2)  # between two checks:
        h.release("first")
        second = h.call("second")  # starts as the first one ends
        await first
        await h.started("second")
        assert await still_draining(drain)
        h.release("second")
        await drain
        assert second.result() == "second"

    run(body)


def test_the_timeout_bounds_the_wait_and_the_requests_left_are_logged(
    caplog: pytest.LogCaptureFixture,
) -> None:
    async def body(h: Harness) -> None:
        calls = [h.call("stuck"), h.call("stuck")]
        await h.started("stuck")
        started = time.monotonic()
        with caplog.at_level(logging.WARNING, logger="schooner.replica"):
            await h.drain(timeout_s=3 * PERIOD_S)
        assert 3 * PERIOD_S <= time.monotonic() - started < 1.0
        assert "shutting down with 2 requests still running" in caplog.text
        assert h.user.deleted
        h.release("stuck")
        await asyncio.gather(*calls)

    run(body)
