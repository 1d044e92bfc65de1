"""Router: power of two choices, per-replica limit, FIFO queue, backpressure, replica set updates.

The connection pool and connections are fakes: each call the router sends
lands in a list on the fake connection with a future the test resolves.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Callable, Coroutine
from dataclasses import dataclass, field
from typing import Any

import pytest

from schooner.exceptions import (
    BackPressureError,
    DeploymentUnavailableError,
    ReplicaUnavailableError,
)
from schooner.router import router as router_module
from schooner.router.router import DELETED, Router
from schooner.rpc.connection import ConnectionLost
from schooner.rpc.messages import DeploymentID, ReplicaInfo, ReplicaSet

DEP = DeploymentID("Model", "app")
TIMEOUT_S = 5.0
_END = object()


def run(test: Callable[[], Coroutine[Any, Any, None]]) -> None:
    async def main() -> None:
        await asyncio.wait_for(test(), TIMEOUT_S)

    asyncio.run(main())


async def until(predicate: Callable[[], bool], what: str = "condition") -> None:
    """Let the event loop run until ``predicate()`` holds (a bounded number of loop turns).

    No wall-clock waiting: every step here is driven by callbacks already
    scheduled on the loop, so a few turns are always enough.
    """
    for _ in range(200):
        if predicate():
            return
        await asyncio.sleep(0)
    raise AssertionError(f"{what} never became true")


async def turns(n: int = 20) -> None:
    """Let the event loop run ``n`` turns (to check that nothing happens)."""
    for _ in range(n):
        await asyncio.sleep(0)


@dataclass
class Call:
    method: str
    args: tuple[Any, ...]
    future: asyncio.Future[Any]
    replica: str


@dataclass
class FakeConn:
    """Records calls; tracks how many are in flight (and the most ever) on this replica."""

    replica: str
    calls: list[Call] = field(default_factory=list)
    streams: list[asyncio.Queue[Any]] = field(default_factory=list)
    ongoing: int = 0
    peak: int = 0
    on_close: list[Callable[[Any], None]] = field(default_factory=list)

    def lose(self) -> None:
        """The replica process dies: the connection closes."""
        for callback in self.on_close:
            callback(self)

    async def call(self, method: str, *args: Any) -> Any:
        fut: asyncio.Future[Any] = asyncio.get_running_loop().create_future()
        self.calls.append(Call(method, args, fut, self.replica))
        self.ongoing += 1
        self.peak = max(self.peak, self.ongoing)
        try:
            return await fut
        finally:
            self.ongoing -= 1

    async def stream(self, method: str, *args: Any) -> AsyncIterator[Any]:
        queue: asyncio.Queue[Any] = asyncio.Queue()
        self.streams.append(queue)
        self.ongoing += 1
        self.peak = max(self.peak, self.ongoing)
        try:
            while True:
                item = await queue.get()
                if item is _END:
                    return
                if isinstance(item, BaseException):
                    raise item
                yield item
        finally:
            self.ongoing -= 1

    def pending(self) -> list[Call]:
        return [c for c in self.calls if not c.future.done()]


class FakePool:
    """Stands in for ConnectionPool. Addresses are replica ids.

    Replicas in ``connected`` are returned by ``get_nowait``; others go through
    ``get``, which raises ``OSError`` for addresses in ``unreachable`` and
    otherwise connects.
    """

    def __init__(self) -> None:
        self.conns: dict[str, FakeConn] = {}
        self.connected: set[str] = set()
        self.unreachable: set[str] = set()
        self.get_calls: list[str] = []
        self.gates: dict[str, asyncio.Future[None]] = {}

    def conn(self, address: str) -> FakeConn:
        return self.conns.setdefault(address, FakeConn(address))

    def get_nowait(self, address: str) -> FakeConn | None:
        return self.conn(address) if address in self.connected else None

    async def get(self, address: str) -> FakeConn:
        self.get_calls.append(address)
        gate = self.gates.get(address)
        if gate is not None:
            await gate
        if address in self.unreachable:
            raise OSError(f"connect to {address} refused")
        self.connected.add(address)
        return self.conn(address)

    def all_pending(self) -> list[Call]:
        return [c for conn in self.conns.values() for c in conn.pending()]

    def total_calls(self) -> int:
        return sum(len(c.calls) for c in self.conns.values())


def replica_set(*ids: str, max_ongoing: int = 5, max_queued: int = -1) -> ReplicaSet:
    return ReplicaSet(tuple(ReplicaInfo(i, i, DEP) for i in ids), max_ongoing, max_queued)


def make_router(*ids: str, max_ongoing: int = 5, max_queued: int = -1) -> tuple[Router, FakePool]:
    pool = FakePool()
    router = Router(DEP, pool)  # type: ignore[arg-type]
    router.update(replica_set(*ids, max_ongoing=max_ongoing, max_queued=max_queued))
    return router, pool


def start(router: Router, *args: Any) -> asyncio.Task[Any]:
    return asyncio.ensure_future(router.call("__call__", *args))


# -- basic call -----------------------------------------------------------------------------


def test_call_returns_the_replica_result() -> None:
    async def body() -> None:
        router, pool = make_router("r1")
        task = start(router, "x")
        await until(lambda: pool.total_calls() == 1)
        (call,) = pool.all_pending()
        assert (call.method, call.args, call.replica) == ("__call__", ("x",), "r1")
        call.future.set_result("answer")
        assert await task == "answer"
        assert pool.get_calls == ["r1"]  # connected once, then reused
        task = start(router, "y")
        await until(lambda: pool.total_calls() == 2)
        pool.all_pending()[0].future.set_result("again")
        assert await task == "again"
        assert pool.get_calls == ["r1"]

    run(body)


def test_replica_exception_propagates_and_frees_the_slot() -> None:
    async def body() -> None:
        router, pool = make_router("r1", max_ongoing=1, max_queued=1)
        pool.connected.add("r1")
        first = start(router, 1)
        await until(lambda: pool.total_calls() == 1)
        pool.all_pending()[0].future.set_exception(KeyError("user error"))
        with pytest.raises(KeyError):
            await first
        second = start(router, 2)
        await until(lambda: pool.total_calls() == 2)
        pool.all_pending()[0].future.set_result("ok")
        assert await second == "ok"

    run(body)


def test_connection_lost_becomes_replica_unavailable_and_frees_the_slot() -> None:
    async def body() -> None:
        router, pool = make_router("r1", max_ongoing=1)
        pool.connected.add("r1")
        task = start(router)
        await until(lambda: pool.total_calls() == 1)
        pool.all_pending()[0].future.set_exception(ConnectionLost("gone"))
        with pytest.raises(ReplicaUnavailableError, match="r1"):
            await task
        task = start(router)
        await until(lambda: pool.total_calls() == 2)
        assert router.num_queued == 0

    run(body)


# -- the per-replica limit and the queue ---------------------------------------------------------


def test_never_more_than_max_ongoing_per_replica() -> None:
    async def body() -> None:
        router, pool = make_router("r1", "r2", "r3", max_ongoing=2)
        pool.connected.update({"r1", "r2", "r3"})
        tasks = [start(router, i) for i in range(20)]
        await until(lambda: router.num_queued == 14 and pool.total_calls() == 6)
        assert {c.replica: c.ongoing for c in pool.conns.values()} == {"r1": 2, "r2": 2, "r3": 2}
        # Finish calls one by one; queued requests take the freed slots.
        done = 0
        while done < 20:
            await until(lambda: bool(pool.all_pending()), "a call in flight")
            pool.all_pending()[0].future.set_result(None)
            done += 1
            in_flight = min(6, 20 - done)
            await until(
                lambda n=in_flight: sum(c.ongoing for c in pool.conns.values()) == n,  # type: ignore[misc]
                "slots refilled",
            )
        await asyncio.gather(*tasks)
        assert all(c.peak <= 2 for c in pool.conns.values())
        assert pool.total_calls() == 20
        assert router.num_queued == 0

    run(body)


def test_full_replicas_queue_fifo_then_backpressure() -> None:
    async def body() -> None:
        router, pool = make_router("r1", max_ongoing=1, max_queued=2)
        pool.connected.add("r1")
        a = start(router, "a")
        await until(lambda: pool.total_calls() == 1)
        b = start(router, "b")
        await until(lambda: router.num_queued == 1)
        c = start(router, "c")
        await until(lambda: router.num_queued == 2)
        # The next one is rejected at once, without waiting for a slot.
        with pytest.raises(BackPressureError) as info:
            await router.call("__call__", "d")
        assert info.value.num_queued_requests == 2
        assert info.value.max_queued_requests == 2
        assert str(DEP) in str(info.value)
        conn = pool.conn("r1")
        for expected, task in [("a", a), ("b", b), ("c", c)]:
            await until(lambda: len(conn.pending()) == 1)
            (call,) = conn.pending()
            assert call.args == (expected,)  # oldest waiter first
            call.future.set_result(expected.upper())
            assert await task == expected.upper()
        assert conn.peak == 1

    run(body)


def test_unbounded_queue_by_default() -> None:
    async def body() -> None:
        router, pool = make_router("r1", max_ongoing=1)
        pool.connected.add("r1")
        tasks = [start(router, i) for i in range(100)]
        await until(lambda: router.num_queued == 99)
        for t in tasks:
            assert not t.done()

    run(body)


def test_cancelled_waiter_leaves_the_queue_and_the_slot_goes_to_the_next() -> None:
    async def body() -> None:
        router, pool = make_router("r1", max_ongoing=1, max_queued=2)
        pool.connected.add("r1")
        a = start(router, "a")
        await until(lambda: pool.total_calls() == 1)
        b = start(router, "b")
        c = start(router, "c")
        await until(lambda: router.num_queued == 2)
        b.cancel()
        await until(lambda: router.num_queued == 1)
        assert b.cancelled()
        d = start(router, "d")  # room again in the queue
        assert not d.done()
        await until(lambda: router.num_queued == 2)
        pool.all_pending()[0].future.set_result(None)
        await a
        await until(lambda: len(pool.all_pending()) == 1)
        assert pool.all_pending()[0].args == ("c",)
        pool.all_pending()[0].future.set_result(None)
        await c
        await until(lambda: len(pool.all_pending()) == 1)
        assert pool.all_pending()[0].args == ("d",)

    run(body)


def test_cancelled_in_flight_call_frees_its_slot() -> None:
    async def body() -> None:
        router, pool = make_router("r1", max_ongoing=1)
        pool.connected.add("r1")
        a = start(router, "a")
        await until(lambda: pool.total_calls() == 1)
        b = start(router, "b")
        await until(lambda: router.num_queued == 1)
        a.cancel()
        await until(lambda: pool.total_calls() == 2)
        assert pool.all_pending()[0].args == ("b",)
        assert router.num_queued == 0
        assert a.cancelled() and not b.done()

    run(body)


def test_waiter_cancelled_just_after_getting_a_slot_gives_it_back() -> None:
    async def body() -> None:
        router, pool = make_router("r1", max_ongoing=1)
        pool.connected.update({"r1", "r2"})
        a = start(router, "a")
        await until(lambda: pool.total_calls() == 1)
        b = start(router, "b")
        await until(lambda: router.num_queued == 1)
        router.update(replica_set("r1", "r2", max_ongoing=1))  # hands r2's slot to b ...
        b.cancel()  # ... which is cancelled before it could use it
        with pytest.raises(asyncio.CancelledError):
            await b
        c = start(router, "c")
        await until(lambda: pool.total_calls() == 2, "c sent to r2")
        assert pool.conn("r2").pending()[0].args == ("c",)
        assert not a.done() and not c.done()

    run(body)


def test_fallback_scan_finds_the_free_replica_when_both_samples_are_full(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    class FirstTwo:
        def sample(self, population: list[Any], k: int) -> list[Any]:
            return list(population[:k])

        def randrange(self, stop: int) -> int:
            return 0

    monkeypatch.setattr(router_module, "random", FirstTwo())

    async def body() -> None:
        router, pool = make_router("r1", "r2", "r3", max_ongoing=1)
        pool.connected.update({"r1", "r2", "r3"})
        for n in range(1, 4):
            start(router, n)
            await until(lambda n=n: pool.total_calls() == n)  # type: ignore[misc]
        assert [c.replica for c in pool.all_pending()] == ["r1", "r2", "r3"]
        start(router, 4)
        await until(lambda: router.num_queued == 1)

    run(body)


def test_load_spreads_across_replicas() -> None:
    async def body() -> None:
        router, pool = make_router("r1", "r2", "r3", max_ongoing=100)
        pool.connected.update({"r1", "r2", "r3"})
        for i in range(30):
            start(router, i)
        await until(lambda: pool.total_calls() == 30)
        counts = {c.replica: c.ongoing for c in pool.conns.values()}
        assert set(counts) == {"r1", "r2", "r3"}
        # Power of two choices keeps the load even (min is >= 6 in 20,000 simulated runs).
        assert min(counts.values()) >= 5, counts

    run(body)


def test_two_replicas_take_turns_by_load() -> None:
    async def body() -> None:
        router, pool = make_router("r1", "r2", max_ongoing=10)
        pool.connected.update({"r1", "r2"})
        for i in range(10):
            start(router, i)
        await until(lambda: pool.total_calls() == 10)
        assert pool.conn("r1").ongoing == pool.conn("r2").ongoing == 5

    run(body)


# -- replica set updates ----------------------------------------------------------------------


def test_requests_wait_for_the_first_replica_set() -> None:
    async def body() -> None:
        pool = FakePool()
        router = Router(DEP, pool)  # type: ignore[arg-type]
        task = start(router, "early")
        await turns()
        router.update(None)  # "unknown": nothing changes
        await turns()
        assert not task.done() and pool.total_calls() == 0
        router.update(replica_set("r1"))
        await until(lambda: pool.total_calls() == 1)
        pool.all_pending()[0].future.set_result("served")
        assert await task == "served"

    run(body)


def test_deleted_as_first_snapshot_fails_early_callers() -> None:
    async def body() -> None:
        router = Router(DEP, FakePool())  # type: ignore[arg-type]
        task = start(router, "early")
        await turns()
        router.update(DELETED)
        with pytest.raises(DeploymentUnavailableError):
            await task

    run(body)


def test_first_snapshot_queue_limit_applies_to_early_callers() -> None:
    async def body() -> None:
        pool = FakePool()
        router = Router(DEP, pool)  # type: ignore[arg-type]
        tasks = [start(router, i) for i in range(4)]
        await turns()
        router.update(replica_set("r1", max_ongoing=1, max_queued=2))
        await until(lambda: all(t.done() for t in tasks[3:]) and pool.total_calls() == 1)
        with pytest.raises(BackPressureError):
            await tasks[3]
        assert router.num_queued == 2
        assert pool.all_pending()[0].args == (0,)

    run(body)


def test_update_with_new_replicas_hands_off_queued_requests() -> None:
    async def body() -> None:
        router, pool = make_router("r1", max_ongoing=1)
        pool.connected.update({"r1", "r2", "r3"})
        start(router, "a")
        await until(lambda: pool.total_calls() == 1)
        start(router, "b")
        start(router, "c")
        start(router, "d")
        await until(lambda: router.num_queued == 3)
        router.update(replica_set("r1", "r2", "r3", max_ongoing=1))
        assert router.num_queued == 1  # handed off synchronously, oldest first
        await until(lambda: pool.total_calls() == 3)
        assert sorted(c.args[0] for c in pool.all_pending()) == ["a", "b", "c"]
        assert {c.replica for c in pool.all_pending()} == {"r1", "r2", "r3"}

    run(body)


def test_update_raising_max_ongoing_hands_off_queued_requests() -> None:
    async def body() -> None:
        router, pool = make_router("r1", max_ongoing=1)
        pool.connected.add("r1")
        for i in range(3):
            start(router, i)
        await until(lambda: router.num_queued == 2)
        router.update(replica_set("r1", max_ongoing=3))
        await until(lambda: pool.total_calls() == 3)
        assert router.num_queued == 0

    run(body)


def test_removed_replica_gets_no_new_requests() -> None:
    async def body() -> None:
        router, pool = make_router("r1", "r2", max_ongoing=5)
        pool.connected.update({"r1", "r2"})
        router.update(replica_set("r2", max_ongoing=5))
        for i in range(4):
            start(router, i)
        await until(lambda: pool.total_calls() == 4)
        assert {c.replica for c in pool.all_pending()} == {"r2"}
        assert router.num_replicas == 1

    run(body)


def test_replica_whose_connection_is_lost_gets_no_new_requests_at_once() -> None:
    """A dead replica leaves the choice when its connection closes, before the controller
    publishes a new replica set."""

    async def body() -> None:
        router, pool = make_router("r1", "r2", max_ongoing=1)
        pool.connected.update({"r1", "r2"})
        first = [start(router, i) for i in range(2)]  # one on each: both connections known
        await until(lambda: pool.total_calls() == 2)
        assert {c.replica for c in pool.all_pending()} == {"r1", "r2"}
        pool.conn("r1").lose()
        assert router.num_replicas == 1
        for call in pool.all_pending():
            call.future.set_result(None)
        await asyncio.gather(*first)
        later = [start(router, i) for i in range(3)]
        await until(lambda: pool.total_calls() == 3)
        assert {c.replica for c in pool.all_pending()} == {"r2"}
        for task in later:
            task.cancel()

    run(body)


def test_deleted_fails_waiters_and_new_calls() -> None:
    async def body() -> None:
        router, pool = make_router("r1", max_ongoing=1)
        pool.connected.add("r1")
        in_flight = start(router, "a")
        await until(lambda: pool.total_calls() == 1)
        waiters = [start(router, "b"), start(router, "c")]
        await until(lambda: router.num_queued == 2)
        router.update(DELETED)
        for w in waiters:
            with pytest.raises(DeploymentUnavailableError, match=str(DEP)):
                await w
        assert router.num_queued == 0
        with pytest.raises(DeploymentUnavailableError):
            await router.call("__call__", "late")
        # A request already at a replica finishes normally.
        pool.all_pending()[0].future.set_result("finished")
        assert await in_flight == "finished"
        # Redeployed: usable again.
        router.update(replica_set("r1"))
        task = start(router, "again")
        await until(lambda: pool.total_calls() == 2)
        pool.all_pending()[0].future.set_result("back")
        assert await task == "back"

    run(body)


# -- unreachable replicas ----------------------------------------------------------------------


class _InOrder:
    """Deterministic stand-in for the router's random choices: list order."""

    def sample(self, population: list[Any], k: int) -> list[Any]:
        return list(population[:k])

    def randrange(self, stop: int) -> int:
        return 0


def test_unreachable_replica_is_dropped_and_request_goes_elsewhere(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setattr(router_module, "random", _InOrder())  # try r1 first

    async def body() -> None:
        router, pool = make_router("r1", "r2", max_ongoing=1)
        pool.unreachable.add("r1")
        task = start(router, "x")
        await until(lambda: pool.total_calls() == 1)
        (call,) = pool.all_pending()
        assert call.replica == "r2"
        assert "r1" in pool.get_calls
        assert router.num_replicas == 1
        call.future.set_result("ok")
        assert await task == "ok"
        # No further attempts on the dropped replica.
        for i in range(3):
            t = start(router, i)
            await until(lambda: len(pool.all_pending()) == 1)
            pool.all_pending()[0].future.set_result(None)
            await t
        assert pool.get_calls.count("r1") == 1
        # The controller says it is live again: it is tried again, with its slot free.
        pool.unreachable.clear()
        router.update(replica_set("r1", "r2", max_ongoing=1))
        a, b = start(router, "a"), start(router, "b")
        await until(lambda: pool.total_calls() == 6)
        assert {c.replica for c in pool.all_pending()} == {"r1", "r2"}
        assert not a.done() and not b.done()

    run(body)


def test_all_replicas_unreachable_waits_for_an_update() -> None:
    async def body() -> None:
        router, pool = make_router("r1")
        pool.unreachable.add("r1")
        task = start(router, "x")
        await until(lambda: router.num_queued == 1)
        assert router.num_replicas == 0
        pool.connected.add("r9")
        router.update(replica_set("r9"))
        await until(lambda: pool.total_calls() == 1)
        pool.all_pending()[0].future.set_result("rescued")
        assert await task == "rescued"

    run(body)


def test_other_connect_errors_propagate_and_free_the_slot() -> None:
    async def body() -> None:
        router, pool = make_router("r1", max_ongoing=1)
        failing: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        pool.gates["r1"] = failing
        task = start(router, "x")
        await until(lambda: pool.get_calls == ["r1"])
        failing.set_exception(RuntimeError("bug in connect"))
        with pytest.raises(RuntimeError, match="bug in connect"):
            await task
        assert router.num_replicas == 1  # not dropped
        del pool.gates["r1"]
        task = start(router, "y")
        await until(lambda: pool.total_calls() == 1)  # the slot was given back
        assert router.num_queued == 0

    run(body)


def test_replica_that_failed_to_connect_is_not_handed_to_a_waiter(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setattr(router_module, "random", _InOrder())  # try r1 first

    async def body() -> None:
        router, pool = make_router("r1", "r2", max_ongoing=1)
        gate: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        pool.gates["r1"] = gate
        pool.unreachable.add("r1")
        pool.connected.add("r2")
        a = start(router, "a")  # r1 (both idle; first wins), connect in progress
        await until(lambda: pool.get_calls == ["r1"])
        b = start(router, "b")  # r2
        await until(lambda: pool.total_calls() == 1)
        c = start(router, "c")  # queued
        await until(lambda: router.num_queued == 1)
        gate.set_result(None)  # r1's connect fails
        await until(lambda: router.num_queued == 2, "a and c both waiting for r2")
        assert pool.get_calls == ["r1"], "the dead replica was tried again"
        assert not (a.done() or b.done() or c.done())

    run(body)


# -- streaming --------------------------------------------------------------------------------


def test_stream_yields_items_and_holds_the_slot_until_the_end() -> None:
    async def body() -> None:
        router, pool = make_router("r1", max_ongoing=1)
        pool.connected.add("r1")
        received: list[Any] = []

        async def consume() -> None:
            async for item in router.stream("gen", 3):
                received.append(item)

        consumer = asyncio.ensure_future(consume())
        conn = pool.conn("r1")
        await until(lambda: len(conn.streams) == 1)
        queue = conn.streams[0]
        queue.put_nowait(1)
        queue.put_nowait(2)
        await until(lambda: received == [1, 2])
        other = start(router, "waits")
        await until(lambda: router.num_queued == 1)  # the stream still holds the only slot
        queue.put_nowait(_END)
        await consumer
        await until(lambda: pool.total_calls() == 1)
        assert not other.done()

    run(body)


def test_stream_connection_lost_becomes_replica_unavailable() -> None:
    async def body() -> None:
        router, pool = make_router("r1", max_ongoing=1)
        pool.connected.add("r1")
        received: list[Any] = []

        async def consume() -> None:
            async for item in router.stream("gen"):
                received.append(item)

        consumer = asyncio.ensure_future(consume())
        conn = pool.conn("r1")
        await until(lambda: len(conn.streams) == 1)
        conn.streams[0].put_nowait("first")
        conn.streams[0].put_nowait(ConnectionLost("died"))
        with pytest.raises(ReplicaUnavailableError):
            await consumer
        assert received == ["first"]
        task = start(router)
        await until(lambda: pool.total_calls() == 1)  # slot released
        assert not task.done()

    run(body)
