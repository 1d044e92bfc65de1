"""Model-aware routing's reports: a replica tells the controller its multiplexed models
when they change (coalesced), and the controller publishes them in the replica set.

The replica side uses the real ``@serve.multiplexed`` cache and a fake controller
connection; the controller side drives a real Controller with the fakes of
``controller_fakes``. No process, no socket.
"""

from __future__ import annotations

import asyncio
import gc
import time
from pathlib import Path
from typing import Any

from controller_fakes import Harness, app_spec, dep_spec, run

from schooner.multiplex import multiplexed
from schooner.replica.models import ModelReporter
from schooner.rpc.messages import DeploymentID
from schooner.schema import ReplicaState

KEY = DeploymentID("Model", "app").key


class FakeController:
    """The replica's controller connection: records one-way messages."""

    def __init__(self) -> None:
        self.is_open = True
        self.sent: list[tuple[str, tuple[Any, ...]]] = []

    def notify(self, method: str, *args: Any) -> None:
        self.sent.append((method, args))

    def reports(self) -> list[tuple[str, ...]]:
        return [args[1] for method, args in self.sent if method == "report_models"]


async def wait_for(predicate: Any, what: str, timeout_s: float = 5.0) -> None:
    deadline = time.monotonic() + timeout_s
    while not predicate():
        if time.monotonic() > deadline:
            raise AssertionError(f"{what} within {timeout_s} s")
        await asyncio.sleep(0.005)


def test_reports_when_the_set_changes_coalesced_and_never_the_same_set_twice() -> None:
    async def body() -> None:
        gc.collect()  # caches of earlier tests must not add their models
        release = asyncio.Event()

        @multiplexed(max_num_models_per_replica=2)
        async def load(model_id: str) -> str:
            await release.wait()
            return model_id.upper()

        conn = FakeController()
        reporter = ModelReporter("r1", lambda: conn, asyncio.get_running_loop(), 0.5)
        reporter.start()
        try:
            # Two loads start in the same turn of the loop: one message with both.
            tasks = [asyncio.ensure_future(load("a")), asyncio.ensure_future(load("b"))]
            await wait_for(lambda: conn.reports(), "no first report")
            assert conn.reports() == [("a", "b")]
            assert conn.sent[0] == ("report_models", ("r1", ("a", "b")))
            release.set()
            assert await asyncio.gather(*tasks) == ["A", "B"]
            # Loaded (no longer loading) is the same set, and hits change nothing.
            for _ in range(5):
                assert await load("a") == "A"
            # A burst inside the interval: "c" evicts "b", then "d" evicts "a"; only the
            # latest set is sent, once, after the interval.
            await load("c")
            await load("d")
            await wait_for(lambda: len(conn.reports()) == 2, "no second report")
            assert conn.reports() == [("a", "b"), ("c", "d")]
            await asyncio.sleep(0.6)  # longer than the interval: no other message comes
            assert conn.reports() == [("a", "b"), ("c", "d")]
            # A new head: the set is sent again on the new connection.
            new_conn = FakeController()
            conn_now: list[FakeController] = [new_conn]
            reporter._controller = lambda: conn_now[0]
            reporter.resend()
            await wait_for(lambda: new_conn.reports(), "no report to the new head")
            assert new_conn.reports() == [("c", "d")]
        finally:
            reporter.stop()

    asyncio.run(asyncio.wait_for(body(), 10.0))


def test_failed_load_is_reported_gone_and_closed_connection_gets_nothing() -> None:
    async def body() -> None:
        gc.collect()
        fail = asyncio.Event()

        @multiplexed(max_num_models_per_replica=2)
        async def load(model_id: str) -> str:
            await fail.wait()
            raise RuntimeError("no such model")

        conn = FakeController()
        reporter = ModelReporter("r1", lambda: conn, asyncio.get_running_loop(), 0.0)
        reporter.start()
        try:
            task = asyncio.ensure_future(load("bad"))
            await wait_for(lambda: conn.reports() == [("bad",)], "the loading model unreported")
            fail.set()
            try:
                await task
            except RuntimeError:
                pass
            await wait_for(lambda: len(conn.reports()) == 2, "the failed load still reported")
            assert conn.reports()[-1] == ()
            conn.is_open = False
            fail.clear()
            pending = asyncio.ensure_future(load("other"))
            for _ in range(20):
                await asyncio.sleep(0)
            assert len(conn.reports()) == 2
            pending.cancel()
        finally:
            reporter.stop()

    asyncio.run(asyncio.wait_for(body(), 10.0))


def test_controller_publishes_reported_models_once_and_a_new_replica_has_none(
    tmp_path: Path,
) -> None:
    async def body(h: Harness) -> None:
        h.ctl.deploy_app(app_spec("app", "/", dep_spec("Model", num_replicas=2)))
        h.ctl.tick()
        await h.all_ready()
        h.ctl.tick()
        first, second = sorted(h.ids(state=ReplicaState.RUNNING))
        assert [r.model_ids for r in h.replica_set().replicas] == [(), ()]
        version = h.ctl.long_poll.get(KEY)[0]
        h.ctl.replica_models(first, ["m2", "m1"])
        assert h.ctl.long_poll.get(KEY)[0] == version + 1  # at once, not at the next tick
        published = {r.replica_id: r.model_ids for r in h.replica_set().replicas}
        assert published == {first: ("m1", "m2"), second: ()}
        h.ctl.replica_models(first, ("m1", "m2"))  # the same set: nothing republished
        h.ctl.tick()
        assert h.ctl.long_poll.get(KEY)[0] == version + 1
        h.ctl.replica_models("no-such-replica", ["x"])  # a stopped replica's late report
        assert h.ctl.long_poll.get(KEY)[0] == version + 1
        # The replica dies; its replacement starts with no models.
        h.launcher.by_id(first).exit(1)
        h.ctl.tick()
        h.ctl.tick()
        await h.all_ready()
        h.ctl.tick()
        published = {r.replica_id: r.model_ids for r in h.replica_set().replicas}
        assert first not in published and len(published) == 2
        assert sorted(published.values()) == [(), ()]

    run(tmp_path, body)
