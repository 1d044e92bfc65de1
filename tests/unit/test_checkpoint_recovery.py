"""Checkpointing the controller's goal state and recovering it in a new controller.

A real Controller is driven with the fakes of ``controller_fakes`` and writes into a
real FileStore; "a restarted head" is a second Controller reading the same store.
Which saved pids still run is decided by the test (``alive``).
"""

from __future__ import annotations

import asyncio
import logging
from pathlib import Path

import pytest
from controller_fakes import (
    FakeReplicaConn,
    Harness,
    InstantSleepAsyncio,
    app_spec,
    dep_spec,
    run,
)

from schooner.checkpoint import FileStore
from schooner.controller import checkpoint
from schooner.controller import controller as controller_module
from schooner.controller.checkpoint import APP_PREFIX, STATE_KEY, Checkpointer
from schooner.controller.controller import REJOIN_TIMEOUT_S
from schooner.controller.state import ReplicaRecord
from schooner.schema import DeploymentStatus, ReplicaState


@pytest.fixture(autouse=True)
def instant_drain(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(controller_module, "asyncio", InstantSleepAsyncio())


@pytest.fixture
def alive(monkeypatch: pytest.MonkeyPatch) -> set[int]:
    """Pids that count as live replica processes of the session (the rest are gone);
    killing a re-adopted one removes it."""
    pids: set[int] = set()

    class Adopted:
        def __init__(self, pid: int) -> None:
            self.pid = pid

        def poll(self) -> int | None:
            return None if self.pid in pids else -1

        def terminate(self) -> None:
            pids.discard(self.pid)

        kill = terminate

    monkeypatch.setattr(
        controller_module, "is_session_process", lambda pid, module, root: pid in pids
    )
    monkeypatch.setattr(controller_module, "session_processes", lambda root, module: [])
    monkeypatch.setattr(controller_module, "AdoptedProcess", Adopted)
    return pids


class CountingStore(FileStore):
    """A FileStore that counts writes and can fail the next few."""

    def __init__(self, root: Path) -> None:
        super().__init__(root, namespace="test")
        self.puts: list[str] = []
        self.deletes: list[str] = []
        self.fail_next = 0

    def put(self, key: str, value: bytes) -> None:
        if self.fail_next:
            self.fail_next -= 1
            raise OSError("the store is down")
        self.puts.append(key)
        super().put(key, value)

    def delete(self, key: str) -> None:
        self.deletes.append(key)
        super().delete(key)


async def deployed(h: Harness, replicas: int = 2) -> None:
    h.ctl.deploy_app(app_spec("app", "/", dep_spec("Model", num_replicas=replicas)))
    h.ctl.tick()
    await h.all_ready()
    h.ctl.tick()


async def one_replica_restarted(
    h: Harness, tmp_path: Path, alive: set[int]
) -> tuple[ReplicaRecord, Harness]:
    """One replica deployed and checkpointed, still running; a new controller recovered."""
    store = CountingStore(tmp_path / "ckpt")
    await deployed(h, replicas=1)
    await Checkpointer(store, h.ctl).flush()
    (old,) = h.replicas()
    alive.add(old.pid)
    return old, restarted(h, store, tmp_path / "new")


def restarted(h: Harness, store: CountingStore, tmp_path: Path) -> Harness:
    """A new controller (same session) that recovered from ``store``."""
    new = Harness(tmp_path)
    new.clock.now = h.clock.now
    recovered = checkpoint.load(store)
    assert recovered is not None
    checkpoint.restore(recovered, new.ctl, None)
    return new


def test_flush_writes_state_and_specs_and_load_reads_them_back(tmp_path: Path) -> None:
    async def body(h: Harness) -> None:
        store = CountingStore(tmp_path / "ckpt")
        writer = Checkpointer(store, h.ctl)
        await deployed(h)
        await writer.flush()
        assert sorted(store.keys()) == [APP_PREFIX + "app", STATE_KEY]
        recovered = checkpoint.load(store)
        assert recovered is not None
        (app,) = recovered.state.apps
        (dep,) = app.deployments
        assert (app.name, dep.name, dep.target_num_replicas) == ("app", "Model", 2)
        saved = {r.replica_id: r for r in dep.replicas}
        assert set(saved) == h.ids()
        for replica in h.replicas():
            assert saved[replica.replica_id].pid == replica.pid
            assert saved[replica.replica_id].state == "RUNNING"
            assert saved[replica.replica_id].allocation == replica.allocation
        assert recovered.specs["app"].app.name == "app"
        assert set(recovered.specs["app"].deployments) == {"Model"}

    run(tmp_path, body)


def test_only_what_changed_is_written(tmp_path: Path) -> None:
    async def body(h: Harness) -> None:
        store = CountingStore(tmp_path / "ckpt")
        writer = Checkpointer(store, h.ctl)
        await deployed(h)
        await writer.flush()
        store.puts.clear()
        h.ctl.tick()
        await writer.flush()
        assert store.puts == []  # nothing changed
        h.ctl.scale(h.dep(), 3)
        h.ctl.tick()
        await writer.flush()
        assert store.puts == [STATE_KEY]  # the spec object is the same: not rewritten
        store.puts.clear()
        h.ctl.deploy_app(app_spec("app", "/", dep_spec("Model", version="v2", num_replicas=3)))
        await writer.flush()
        assert store.puts == [APP_PREFIX + "app", STATE_KEY]
        h.ctl.delete_app("app")
        for _ in range(5):
            h.ctl.tick()
            await h.settle()
        assert "app" not in h.ctl.apps
        await writer.flush()
        assert store.keys() == [STATE_KEY]
        assert store.deletes == [APP_PREFIX + "app"]

    run(tmp_path, body)


def test_freeze_stops_writing_and_clear_removes_everything(tmp_path: Path) -> None:
    async def body(h: Harness) -> None:
        store = CountingStore(tmp_path / "ckpt")
        writer = Checkpointer(store, h.ctl)
        await deployed(h)
        await writer.flush()
        writer.freeze()
        store.puts.clear()
        h.ctl.scale(h.dep(), 1)
        writer.note()
        await writer.flush()
        assert store.puts == []
        loaded = checkpoint.load(store)
        assert loaded is not None
        assert loaded.state.apps[0].deployments[0].target_num_replicas == 2
        await writer.clear()
        assert store.keys() == []
        assert checkpoint.load(store) is None

    run(tmp_path, body)


def test_a_failing_store_is_retried_and_logged_once(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    async def body(h: Harness) -> None:
        store = CountingStore(tmp_path / "ckpt")
        writer = Checkpointer(store, h.ctl)
        store.fail_next = 3
        await deployed(h)
        with caplog.at_level(logging.INFO, logger="schooner.controller"):
            await writer.flush()  # answers although the store fails
            assert checkpoint.load(store) is None
            for _ in range(200):  # the writer retries on its own
                if any("writable again" in r.getMessage() for r in caplog.records):
                    break
                await asyncio.sleep(0.05)
        assert checkpoint.load(store) is not None
        errors = [r for r in caplog.records if "cannot write the checkpoint" in r.getMessage()]
        assert len(errors) == 1

    # The retry waits are real here (InstantSleepAsyncio patches only the controller).
    run(tmp_path, body)


def test_a_restarted_controller_readopts_live_replicas_and_replaces_the_dead(
    tmp_path: Path, alive: set[int]
) -> None:
    async def body(h: Harness) -> None:
        store = CountingStore(tmp_path / "ckpt")
        writer = Checkpointer(store, h.ctl)
        await deployed(h, replicas=3)
        await writer.flush()
        survivors = sorted(h.replicas(), key=lambda r: r.replica_id)[:2]
        alive.update(r.pid for r in survivors)
        new = restarted(h, store, tmp_path / "new")
        assert new.ids() == {r.replica_id for r in survivors}
        assert new.pool.used["CPU"] == 2  # the re-adopted replicas hold their CPUs again
        # Until they reconnect they are published as they were: callers keep using them.
        new.ctl.publish()
        assert {r.replica_id for r in new.replica_set().replicas} == new.ids()
        for replica in survivors:
            conn = FakeReplicaConn()
            new.ctl.replica_rejoined(replica.replica_id, conn, initialized=True)  # type: ignore[arg-type]
        new.ctl.tick()
        await new.settle()
        # The dead third replica is replaced by a new process.
        (started,) = new.launcher.processes
        assert started.replica_id not in h.ids()
        await new.ready(started.replica_id)
        new.ctl.tick()
        assert new.dep().status == DeploymentStatus.HEALTHY
        assert len(new.ids(state=ReplicaState.RUNNING)) == 3

    run(tmp_path, body)


def test_a_readopted_replica_that_does_not_reconnect_is_replaced(
    tmp_path: Path, alive: set[int]
) -> None:
    async def body(h: Harness) -> None:
        old, new = await one_replica_restarted(h, tmp_path, alive)
        assert new.ids() == {old.replica_id}
        new.clock.now += REJOIN_TIMEOUT_S - 1
        new.ctl.tick()
        assert old.pid in alive and new.launcher.processes == []
        new.clock.now += 2
        new.ctl.tick()  # killed: it never reconnected
        assert old.pid not in alive
        new.ctl.tick()  # reaped and replaced
        assert old.replica_id not in new.ids()
        assert len(new.launcher.processes) == 1

    run(tmp_path, body)


def test_rejoining_without_a_constructed_object_initializes_it(
    tmp_path: Path, alive: set[int]
) -> None:
    async def body(h: Harness) -> None:
        old, new = await one_replica_restarted(h, tmp_path, alive)
        conn = FakeReplicaConn()
        new.ctl.replica_rejoined(old.replica_id, conn, initialized=False)  # type: ignore[arg-type]
        await new.settle()
        assert [m for m, _ in conn.calls] == ["initialize"]
        assert new.replicas()[0].state == ReplicaState.RUNNING

    run(tmp_path, body)


def test_an_unknown_replica_rejoining_is_told_to_stop(tmp_path: Path) -> None:
    async def body(h: Harness) -> None:
        conn = FakeReplicaConn()
        h.ctl.replica_rejoined("nobody", conn, initialized=True)  # type: ignore[arg-type]
        assert conn.notified == ["shutdown"]

    run(tmp_path, body)
