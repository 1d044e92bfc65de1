"""The Checkpointer (what is written to the store, and when) and recovery from what it wrote.

A real Controller runs on the fakes of ``controller_fakes`` and checkpoints into a real
FileStore in ``tmp_path``, wrapped by :class:`Recording`, which logs every call and can
fail or hold writes. "A restarted head" is a second Controller on the same session that
loads the store and restores it. Which saved pids still run is decided by the test
(:class:`LivePids`): no process is started and no signal is sent.
"""

from __future__ import annotations

import asyncio
import logging
import pickle
import threading
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
from controller_fakes import (
    FakeReplicaConn,
    Harness,
    InstantSleepAsyncio,
    app_spec,
    dep_spec,
    run,
)

from schooner.checkpoint import CheckpointStore, FileStore
from schooner.controller import checkpoint
from schooner.controller import controller as controller_module
from schooner.controller.checkpoint import (
    APP_PREFIX,
    FORMAT,
    STATE_KEY,
    AppSpecs,
    Checkpointer,
    InstanceCheckpoint,
    Recovered,
)
from schooner.controller.controller import REJOIN_TIMEOUT_S
from schooner.rpc.messages import AppSpec
from schooner.schema import ApplicationStatus, DeploymentStatus, ReplicaState

GPU: dict[str, Any] = {"ray_actor_options": {"num_gpus": 1}}


@pytest.fixture(autouse=True)
def instant_drain(monkeypatch: pytest.MonkeyPatch) -> None:
    """The controller's drain pauses only yield (the checkpoint module's waits stay real)."""
    monkeypatch.setattr(controller_module, "asyncio", InstantSleepAsyncio())


@pytest.fixture(autouse=True)
def quick_retries(monkeypatch: pytest.MonkeyPatch) -> None:
    """Retry a failed write after 10 ms, doubling up to 40 ms (instead of 0.2 s up to 5 s)."""
    monkeypatch.setattr(checkpoint, "_RETRY_S", (0.01, 0.04))


# -- fakes ---------------------------------------------------------------------------------


class Recording:
    """A store that passes every call to ``inner`` and logs it; it can fail the next
    ``fail_puts`` puts (or every put while ``down``), fail deletes, and hold puts at a gate."""

    def __init__(self, inner: CheckpointStore) -> None:
        self.inner = inner
        self.ops: list[tuple[str, str]] = []
        self.fail_puts = 0
        self.fail_deletes = 0
        self.down = False
        self.attempts = 0
        self.gate = threading.Event()
        self.gate.set()
        self.held = threading.Event()  # a put waits at the closed gate
        self.done = threading.Event()  # a put that waited at the gate has finished

    def get(self, key: str) -> bytes | None:
        return self.inner.get(key)

    def put(self, key: str, value: bytes) -> None:
        self.attempts += 1
        if self.down or self.fail_puts:
            self.fail_puts = max(0, self.fail_puts - 1)
            raise OSError("the checkpoint store is down")
        if not self.gate.is_set():
            self.held.set()
            assert self.gate.wait(5), "the test never opened the gate"
            self.inner.put(key, value)
            self.ops.append(("put", key))
            self.done.set()
            return
        self.inner.put(key, value)
        self.ops.append(("put", key))

    def delete(self, key: str) -> None:
        if self.fail_deletes:
            self.fail_deletes -= 1
            raise OSError("the checkpoint store is down")
        self.inner.delete(key)
        self.ops.append(("delete", key))

    def keys(self, prefix: str = "") -> list[str]:
        return self.inner.keys(prefix)

    def close(self) -> None:
        self.inner.close()

    def puts(self) -> list[str]:
        return [key for op, key in self.ops if op == "put"]


class LivePids:
    """Stands in for ``/proc`` in the controller: ``pids`` are the live replica processes of
    the session; a re-adopted process that is signalled exits (it leaves ``pids``)."""

    def __init__(self) -> None:
        self.pids: set[int] = set()
        self.signals: list[tuple[int, str]] = []
        #: What ``session_processes`` finds (the sweep of strays), on top of nothing.
        self.strays: set[int] = set()

    def adopted(self, pid: int) -> _Adopted:
        return _Adopted(self, pid)


class _Adopted:
    def __init__(self, live: LivePids, pid: int) -> None:
        self.live = live
        self.pid = pid

    def poll(self) -> int | None:
        return None if self.pid in self.live.pids | self.live.strays else -1

    def terminate(self) -> None:
        self._signal("SIGTERM")

    def kill(self) -> None:
        self._signal("SIGKILL")

    def _signal(self, name: str) -> None:
        self.live.signals.append((self.pid, name))
        self.live.pids.discard(self.pid)
        self.live.strays.discard(self.pid)


@pytest.fixture
def live(monkeypatch: pytest.MonkeyPatch) -> Iterator[LivePids]:
    pids = LivePids()
    monkeypatch.setattr(
        controller_module, "is_session_process", lambda pid, module, root: pid in pids.pids
    )
    monkeypatch.setattr(
        controller_module, "session_processes", lambda root, module: sorted(pids.strays)
    )
    monkeypatch.setattr(controller_module, "AdoptedProcess", pids.adopted)
    yield pids


# -- helpers -------------------------------------------------------------------------------


def file_store(tmp_path: Path) -> Recording:
    return Recording(FileStore(tmp_path / "checkpoints"))


async def deploy_ready(h: Harness, spec: AppSpec) -> None:
    """Deploy ``spec`` and let every replica of it become RUNNING."""
    h.ctl.deploy_app(spec)
    h.ctl.tick()
    for name in [d.name for d in spec.deployments]:
        await h.all_ready(name, spec.name)
    h.ctl.tick()


def loaded(store: CheckpointStore) -> Recovered:
    recovered = checkpoint.load(store)
    assert recovered is not None
    return recovered


def restarted(h: Harness, store: CheckpointStore, tmp_path: Path) -> Harness:
    """A new controller on the same session (as a head restarted by its supervisor),
    restored from ``store``, at the old one's clock time."""
    new = Harness(tmp_path, capacity=dict(h.pool.capacity))
    new.ctl.session = h.ctl.session
    new.clock.now = h.clock.now
    assert checkpoint.restore(loaded(store), new.ctl, None) == []
    return new


async def wait_until(predicate: Callable[[], object], what: str, timeout_s: float = 3.0) -> None:
    """Let the event loop (and the writer's threads) run until ``predicate()`` holds."""
    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout_s
    while not predicate():
        assert loop.time() < deadline, f"timed out waiting for {what}"
        await asyncio.sleep(0.005)


# -- what is written -----------------------------------------------------------------------


def test_flush_writes_the_state_and_a_spec_key_per_app_and_load_reads_them_back(
    tmp_path: Path,
) -> None:
    async def body(h: Harness) -> None:
        store = file_store(tmp_path)
        writer = Checkpointer(store, h.ctl)
        writer.proxy_pid = 4321
        shop = app_spec("shop", "/shop", dep_spec("Front"), dep_spec("Model", "v7", num_replicas=2))
        gpu = app_spec("gpu", "/gpu", dep_spec("Big", "v3", **GPU))
        await deploy_ready(h, shop)
        await deploy_ready(h, gpu)
        h.ctl.scale(h.dep("Model", "shop"), 3)
        h.ctl.tick()  # a third Model replica is STARTING
        await writer.flush()
        assert store.keys() == ["app/gpu", "app/shop", "state"]

        recovered = loaded(store)
        state = recovered.state
        assert (state.format, state.node_id, state.proxy_pid) == (FORMAT, h.ctl.node_id, 4321)
        assert [a.name for a in state.apps] == ["shop", "gpu"]
        for app in state.apps:
            live = h.ctl.apps[app.name]
            assert app.last_deployed_time_s == live.last_deployed_time_s
            assert (app.deleting, app.building, app.build_error) == (False, False, None)
            assert [d.name for d in app.deployments] == list(live.deployments)
            for dep in app.deployments:
                record = live.deployments[dep.name]
                assert dep.target_num_replicas == record.target_num_replicas
                assert dep.status == record.status.value
                assert dep.phase == record.phase.value
                saved = {r.replica_id: r for r in dep.replicas}
                assert set(saved) == set(record.replicas)
                for replica in record.replicas.values():
                    got = saved[replica.replica_id]
                    assert got.pid == replica.pid
                    assert got.version == replica.version == record.version
                    assert got.reconfig_version == replica.reconfig_version
                    assert got.state == replica.state.value
                    assert got.allocation == replica.allocation
                    assert got.address == replica.address
                    assert got.log_file == replica.log_file
                    assert got.start_time_s == replica.start_time_s
        (model,) = [d for d in state.apps[0].deployments if d.name == "Model"]
        assert model.target_num_replicas == 3
        assert sorted(r.state for r in model.replicas) == ["RUNNING", "RUNNING", "STARTING"]
        (big,) = state.apps[1].deployments[0].replicas
        assert big.allocation.gpus == [(0, 1.0)]
        # The spec keys hold each application's spec as deployed.
        assert set(recovered.specs) == {"shop", "gpu"}
        assert recovered.specs["shop"] == AppSpecs(shop, {d.name: d for d in shop.deployments})
        assert recovered.specs["gpu"].app == gpu

    run(tmp_path, body, capacity={"CPU": 8, "GPU": 1})


def test_flush_returns_once_the_write_has_landed(tmp_path: Path) -> None:
    async def body(h: Harness) -> None:
        store = file_store(tmp_path)
        writer = Checkpointer(store, h.ctl)
        h.ctl.deploy_app(app_spec())
        store.gate.clear()
        flushing = asyncio.get_running_loop().create_task(writer.flush())
        await wait_until(store.held.is_set, "the first put")
        await asyncio.sleep(0.1)  # the put is held: flush must still be waiting
        assert not flushing.done()
        store.gate.set()
        await flushing
        assert store.keys() == ["app/app", "state"]

    run(tmp_path, body)


def test_flush_also_waits_for_a_change_made_while_a_write_is_under_way(tmp_path: Path) -> None:
    async def body(h: Harness) -> None:
        store = file_store(tmp_path)
        writer = Checkpointer(store, h.ctl)
        await deploy_ready(h, app_spec())
        await writer.flush()
        store.gate.clear()
        h.ctl.scale(h.dep(), 3)
        writer.note()
        await wait_until(store.held.is_set, "the writer to start writing")
        h.ctl.scale(h.dep(), 5)  # while the state with 3 is being written
        asyncio.get_running_loop().call_later(0.05, store.gate.set)
        await writer.flush()
        assert loaded(store).state.apps[0].deployments[0].target_num_replicas == 5

    run(tmp_path, body)


def test_a_spec_key_is_written_only_when_its_spec_objects_change(tmp_path: Path) -> None:
    async def body(h: Harness) -> None:
        store = file_store(tmp_path)
        writer = Checkpointer(store, h.ctl)
        await deploy_ready(h, app_spec("app", "/", dep_spec("Model", num_replicas=2)))
        await writer.flush()
        assert store.puts() == ["app/app", "state"]

        # Nothing changed: nothing is written, and no writer is even started.
        store.ops.clear()
        for _ in range(3):
            h.ctl.tick()
            await writer.flush()
        assert store.ops == []
        writer.note()
        assert writer._writer is not None and writer._writer.done()

        # Scaling changes the state, not the spec.
        h.ctl.scale(h.dep(), 3)
        await writer.flush()
        assert store.puts() == ["state"]
        # A replica starting, then becoming RUNNING: the state again, each time.
        store.ops.clear()
        h.ctl.tick()
        await writer.flush()
        await h.all_ready()
        h.ctl.tick()
        await writer.flush()
        assert store.puts() == ["state", "state"]

        # Another application: only its own key (and the state).
        store.ops.clear()
        h.ctl.deploy_app(app_spec("other", "/other", dep_spec("Worker")))
        await writer.flush()
        assert store.puts() == ["app/other", "state"]

        # Redeploying with equal but new spec objects rewrites the key (compared by identity).
        store.ops.clear()
        h.ctl.deploy_app(app_spec("app", "/", dep_spec("Model", num_replicas=2)))
        await writer.flush()
        assert store.puts() == ["app/app", "state"]

    run(tmp_path, body)


def test_a_deployment_waiting_for_resources_is_not_rewritten_every_tick(tmp_path: Path) -> None:
    async def body(h: Harness) -> None:
        store = file_store(tmp_path)
        writer = Checkpointer(store, h.ctl)
        h.ctl.deploy_app(app_spec("app", "/", dep_spec("Model", num_replicas=3, **GPU)))
        h.ctl.tick()
        await writer.flush()
        assert "Waiting for resources" in h.dep().message  # rebuilt at every tick
        store.ops.clear()
        for _ in range(5):
            h.ctl.tick()
            await writer.flush()
        assert store.ops == []

    run(tmp_path, body, capacity={"CPU": 8, "GPU": 1})


def test_a_removed_deployment_stays_in_the_spec_key_until_its_replicas_are_gone(
    tmp_path: Path,
) -> None:
    async def body(h: Harness) -> None:
        store = file_store(tmp_path)
        writer = Checkpointer(store, h.ctl)
        h.launcher.exit_on_terminate = False
        await deploy_ready(h, app_spec("app", "/", dep_spec("Ingress"), dep_spec("Helper")))
        h.ctl.deploy_app(app_spec("app", "/", dep_spec("Ingress")))
        h.ctl.tick()
        await h.settle()
        await writer.flush()
        # Helper is stopping: its spec is kept so that a restarted head can still track it.
        specs = loaded(store).specs["app"]
        assert [d.name for d in specs.app.deployments] == ["Ingress"]
        assert set(specs.deployments) == {"Ingress", "Helper"}
        (helper,) = h.replicas("Helper")
        h.launcher.by_id(helper.replica_id).exit(0)
        h.ctl.tick()  # reaped and forgotten
        store.ops.clear()
        await writer.flush()
        assert store.puts() == ["app/app", "state"]
        assert set(loaded(store).specs["app"].deployments) == {"Ingress"}

    run(tmp_path, body)


def test_deleting_an_app_removes_its_key_after_the_state_without_it_is_written(
    tmp_path: Path,
) -> None:
    async def body(h: Harness) -> None:
        store = file_store(tmp_path)
        writer = Checkpointer(store, h.ctl)
        await deploy_ready(h, app_spec("a", "/a", dep_spec("A")))
        await deploy_ready(h, app_spec("b", "/b", dep_spec("B")))
        await writer.flush()
        h.ctl.delete_app("a")
        h.ctl.tick()  # stopping
        await h.settle()
        await writer.flush()
        assert store.keys() == ["app/a", "app/b", "state"]  # a is still in the state
        store.ops.clear()
        h.ctl.tick()  # reaped: a is gone
        assert "a" not in h.ctl.apps
        await writer.flush()
        assert store.ops == [("put", "state"), ("delete", "app/a")]
        assert store.keys() == ["app/b", "state"]
        assert [a.name for a in loaded(store).state.apps] == ["b"]

    run(tmp_path, body)


def test_the_writer_follows_the_reconcile_loop_through_after_tick(tmp_path: Path) -> None:
    async def body(h: Harness) -> None:
        store = file_store(tmp_path)
        writer = Checkpointer(store, h.ctl)
        h.ctl.after_tick.append(writer.note)  # as the head wires it
        h.ctl.deploy_app(app_spec())
        h.ctl.tick()
        await wait_until(lambda: store.keys() == ["app/app", "state"], "the first checkpoint")
        (rid,) = h.ids()
        await h.ready(rid)
        h.ctl.tick()

        def written_running() -> bool:
            (saved,) = loaded(store).state.apps[0].deployments[0].replicas
            return saved.state == "RUNNING"

        await wait_until(written_running, "the RUNNING replica to be written")

    run(tmp_path, body)


# -- freeze and clear ----------------------------------------------------------------------


def test_freeze_keeps_the_last_goal_state_in_the_store(tmp_path: Path) -> None:
    async def body(h: Harness) -> None:
        store = file_store(tmp_path)
        writer = Checkpointer(store, h.ctl)
        await deploy_ready(h, app_spec("app", "/", dep_spec("Model", num_replicas=2)))
        await writer.flush()
        writer.freeze()
        store.ops.clear()
        # What a stopping instance does next: every application goes away.
        h.ctl.begin_shutdown()
        for _ in range(3):
            h.ctl.tick()
            await h.settle()
            writer.note()
            await writer.flush()
        assert h.ctl.apps == {}
        assert store.ops == []
        (app,) = loaded(store).state.apps
        assert app.deployments[0].target_num_replicas == 2 and not app.deleting

    run(tmp_path, body)


def test_clear_removes_every_key_and_nothing_is_written_afterwards(tmp_path: Path) -> None:
    async def body(h: Harness) -> None:
        store = file_store(tmp_path)
        writer = Checkpointer(store, h.ctl)
        await deploy_ready(h, app_spec("a", "/a", dep_spec("A")))
        await deploy_ready(h, app_spec("b", "/b", dep_spec("B")))
        await writer.flush()
        assert len(store.keys()) == 3
        await writer.clear()
        assert store.keys() == []
        assert checkpoint.load(store) is None
        store.ops.clear()
        h.ctl.scale(h.dep("A", "a"), 2)
        writer.note()
        await writer.flush()
        assert store.ops == []

    run(tmp_path, body)


def test_clear_while_a_write_is_under_way_leaves_no_checkpoint(tmp_path: Path) -> None:
    async def body(h: Harness) -> None:
        store = file_store(tmp_path)
        writer = Checkpointer(store, h.ctl)
        await deploy_ready(h, app_spec())
        await writer.flush()
        store.gate.clear()
        h.ctl.scale(h.dep(), 2)  # the state changes; its put is held
        writer.note()
        await wait_until(store.held.is_set, "the state put")
        asyncio.get_running_loop().call_later(0.05, store.gate.set)
        await writer.clear()
        await wait_until(store.done.is_set, "the held put to finish")
        assert store.keys() == []

    run(tmp_path, body)


# -- a failing store -------------------------------------------------------------------------


def test_a_failing_store_is_retried_until_the_write_lands_and_logged_once(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    async def body(h: Harness) -> None:
        store = file_store(tmp_path)
        writer = Checkpointer(store, h.ctl)
        store.fail_puts = 4
        h.ctl.deploy_app(app_spec())
        with caplog.at_level(logging.INFO, logger="schooner.controller"):
            await writer.flush()
            assert checkpoint.load(store) is None  # not yet: it answered without waiting
            # Not store.keys(): the last put lands in a thread before the writer resumes
            # on the loop and notes that the store is writable again.
            assert writer._writer is not None
            await wait_until(writer._writer.done, "the retries")
        assert store.keys() == ["app/app", "state"]
        assert store.attempts == 4 + 2
        errors = [r for r in caplog.records if r.levelno >= logging.ERROR]
        assert len(errors) == 1
        assert "cannot write the checkpoint store" in errors[0].getMessage()
        assert "the checkpoint store is down" in errors[0].getMessage()
        back = [r for r in caplog.records if "writable again" in r.getMessage()]
        assert len(back) == 1

    run(tmp_path, body)


def test_flush_does_not_wait_for_a_store_that_is_down(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    async def body(h: Harness) -> None:
        store = file_store(tmp_path)
        writer = Checkpointer(store, h.ctl)
        store.down = True
        loop = asyncio.get_running_loop()
        with caplog.at_level(logging.INFO, logger="schooner.controller"):
            for version in ("v1", "v2", "v3"):  # three clients, each answered at once
                h.ctl.deploy_app(app_spec("app", "/", dep_spec("Model", version)))
                started = loop.time()
                await writer.flush()
                assert loop.time() - started < 1.0
            await wait_until(lambda: store.attempts >= 5, "the writer to keep retrying")
            assert store.keys() == []
            store.down = False
            await wait_until(lambda: checkpoint.load(store) is not None, "the store to be back")
            assert loaded(store).specs["app"].deployments["Model"].code_version == "v3"
            # A second outage is reported again (once).
            store.down = True
            h.ctl.scale(h.dep(), 2)
            await writer.flush()
            await wait_until(lambda: store.attempts >= 10, "more retries")
            store.down = False
            await wait_until(
                lambda: loaded(store).state.apps[0].deployments[0].target_num_replicas == 2,
                "the second write",
            )
        errors = [r for r in caplog.records if r.levelno >= logging.ERROR]
        assert len(errors) == 2

    run(tmp_path, body)


def test_flush_waits_again_once_an_outage_ended_with_nothing_left_to_write(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(checkpoint, "_RETRY_S", (0.3, 0.3))

    async def body(h: Harness) -> None:
        store = file_store(tmp_path)
        writer = Checkpointer(store, h.ctl)
        await deploy_ready(h, app_spec("keep", "/keep", dep_spec("A")))
        await writer.flush()
        # During an outage an application is deployed and deleted again...
        store.fail_puts = 1
        h.ctl.deploy_app(app_spec("brief", "/brief", dep_spec("B")))
        await writer.flush()  # answered at once: the store is down
        h.ctl.delete_app("brief")
        h.ctl.tick()
        assert set(h.ctl.apps) == {"keep"}
        # ...so when the store is back, the goal state is what it had already.
        assert writer._writer is not None
        await wait_until(writer._writer.done, "the writer to retry")
        assert store.fail_puts == 0
        # The next client change must again be in the store before flush() returns.
        store.gate.clear()
        h.ctl.deploy_app(app_spec("next", "/next", dep_spec("C")))
        flushing = asyncio.get_running_loop().create_task(writer.flush())
        await wait_until(store.held.is_set, "the put of the next change")
        await asyncio.sleep(0.1)
        returned_early = flushing.done()
        store.gate.set()
        await flushing
        assert not returned_early

    run(tmp_path, body)


def test_a_failing_delete_of_a_spec_key_is_retried(tmp_path: Path) -> None:
    async def body(h: Harness) -> None:
        store = file_store(tmp_path)
        writer = Checkpointer(store, h.ctl)
        await deploy_ready(h, app_spec())
        await writer.flush()
        store.fail_deletes = 2
        h.ctl.delete_app("app")
        for _ in range(2):
            h.ctl.tick()
            await h.settle()
        assert h.ctl.apps == {}
        writer.note()
        await wait_until(lambda: store.keys() == ["state"], "the key to be deleted")
        assert loaded(store).state.apps == []

    run(tmp_path, body)


# -- loading ---------------------------------------------------------------------------------


def test_load_of_an_empty_store_is_none(tmp_path: Path) -> None:
    assert checkpoint.load(FileStore(tmp_path)) is None


def test_load_refuses_a_checkpoint_of_another_format(tmp_path: Path) -> None:
    store = FileStore(tmp_path)
    state = InstanceCheckpoint(format=FORMAT + 1, node_id="node-x", proxy_pid=None, apps=[])
    store.put(STATE_KEY, pickle.dumps(state))
    with pytest.raises(ValueError, match="another version"):
        checkpoint.load(store)


def test_load_drops_an_app_whose_spec_key_is_missing(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    async def body(h: Harness) -> None:
        store = file_store(tmp_path)
        await deploy_ready(h, app_spec("a", "/a", dep_spec("A")))
        await deploy_ready(h, app_spec("b", "/b", dep_spec("B")))
        await Checkpointer(store, h.ctl).flush()
        store.delete(APP_PREFIX + "a")
        with caplog.at_level(logging.ERROR, logger="schooner.controller"):
            recovered = loaded(store)
        assert [a.name for a in recovered.state.apps] == ["b"]
        assert set(recovered.specs) == {"b"}
        assert "'a' is missing" in caplog.text

    run(tmp_path, body)


# -- restoring into a restarted controller -----------------------------------------------------


def test_restore_readopts_live_replicas_and_replaces_the_gone(
    tmp_path: Path, live: LivePids
) -> None:
    async def body(h: Harness) -> None:
        store = file_store(tmp_path)
        await deploy_ready(h, app_spec("app", "/", dep_spec("Model", "v2", num_replicas=3)))
        await Checkpointer(store, h.ctl).flush()
        before = {r.replica_id: r for r in h.replicas()}
        kept = sorted(before)[:2]
        live.pids.update(before[rid].pid for rid in kept)

        new = restarted(h, store, tmp_path / "new")
        assert new.ctl.node_id == h.ctl.node_id
        assert new.ids() == set(kept)
        for replica in new.replicas():
            old = before[replica.replica_id]
            assert (replica.pid, replica.version, replica.address) == (
                old.pid,
                old.version,
                old.address,
            )
            assert replica.state == ReplicaState.RUNNING
            assert replica.rejoin_deadline == new.clock.now + REJOIN_TIMEOUT_S
        assert new.pool.used["CPU"] == 2  # the re-adopted replicas hold their CPUs again
        assert new.dep().status == DeploymentStatus.UPDATING  # one is missing
        assert new.ctl.apps["app"].status == ApplicationStatus.DEPLOYING

        new.ctl.tick()  # the reconciler replaces the gone one
        (started,) = new.launcher.processes
        assert started.replica_id not in before
        assert started.arg("--deployment") == "Model"
        assert new.pool.used["CPU"] == 3
        for rid in kept:
            new.ctl.replica_rejoined(rid, FakeReplicaConn(), initialized=True)  # type: ignore[arg-type]
        await new.ready(started.replica_id)
        new.ctl.tick()
        assert new.ids(state=ReplicaState.RUNNING) == {*kept, started.replica_id}
        assert new.dep().status == DeploymentStatus.HEALTHY
        assert new.ctl.apps["app"].status == ApplicationStatus.RUNNING
        assert live.signals == []

    run(tmp_path, body)


def test_readopted_replicas_keep_their_gpus_and_replacements_get_the_free_ones(
    tmp_path: Path, live: LivePids
) -> None:
    async def body(h: Harness) -> None:
        store = file_store(tmp_path)
        await deploy_ready(h, app_spec("app", "/", dep_spec("Model", num_replicas=2, **GPU)))
        await Checkpointer(store, h.ctl).flush()
        by_gpu = {r.allocation.gpus[0][0]: r for r in h.replicas()}
        assert set(by_gpu) == {0, 1}
        live.pids.add(by_gpu[1].pid)  # the replica on GPU 1 survived

        new = restarted(h, store, tmp_path / "new")
        assert new.pool.used["GPU"] == 1
        new.ctl.tick()
        (started,) = new.launcher.processes
        assert started.spec.env["CUDA_VISIBLE_DEVICES"] == "0"
        assert new.pool.used["GPU"] == 2

    run(tmp_path, body, capacity={"CPU": 8, "GPU": 2})


def test_a_readopted_replica_that_does_not_rejoin_in_time_is_killed_and_replaced(
    tmp_path: Path, live: LivePids
) -> None:
    async def body(h: Harness) -> None:
        store = file_store(tmp_path)
        await deploy_ready(h, app_spec())
        await Checkpointer(store, h.ctl).flush()
        (old,) = h.replicas()
        live.pids.add(old.pid)
        new = restarted(h, store, tmp_path / "new")

        new.clock.now += REJOIN_TIMEOUT_S  # at the deadline: still waited for
        new.ctl.tick()
        assert live.signals == [] and new.launcher.processes == []
        assert [r.replica_id for r in new.replica_set().replicas] == [old.replica_id]
        new.clock.now += 0.5
        new.ctl.tick()
        assert live.signals == [(old.pid, "SIGKILL")]
        new.ctl.tick()  # reaped, its CPU released, and replaced
        assert old.replica_id not in new.ids()
        (started,) = new.launcher.processes
        assert new.pool.used["CPU"] == 1
        assert new.ids() == {started.replica_id}
        # Too late: a rejoin now is told to stop.
        late = FakeReplicaConn()
        new.ctl.replica_rejoined(old.replica_id, late, initialized=True)  # type: ignore[arg-type]
        assert late.notified == ["shutdown"]

    run(tmp_path, body)


def test_a_rejoined_replica_stays_running_and_published(tmp_path: Path, live: LivePids) -> None:
    async def body(h: Harness) -> None:
        store = file_store(tmp_path)
        await deploy_ready(h, app_spec("app", "/", dep_spec("Model", health_check_period_s=1.0)))
        await Checkpointer(store, h.ctl).flush()
        (old,) = h.replicas()
        live.pids.add(old.pid)
        new = restarted(h, store, tmp_path / "new")
        conn = FakeReplicaConn()
        new.ctl.replica_rejoined(old.replica_id, conn, initialized=True)  # type: ignore[arg-type]
        assert conn.notified == []
        (replica,) = new.replicas()
        assert replica.rejoin_deadline is None and replica.conn is conn
        for _ in range(3):
            new.clock.now += REJOIN_TIMEOUT_S
            new.ctl.tick()
            await new.settle()
        assert replica.state == ReplicaState.RUNNING
        assert live.signals == [] and new.launcher.processes == []
        assert [r.replica_id for r in new.replica_set().replicas] == [old.replica_id]
        assert new.replica_set().replicas[0].address == old.address
        # Health-checked again, and told the rank it had (the new head cannot know it knows).
        assert [m for m, _ in conn.calls if m != "set_rank"] == ["check_health"] * 3
        assert [a for m, a in conn.calls if m == "set_rank"] == [((0, 0, 0), 1)]
        assert new.dep().status == DeploymentStatus.HEALTHY

    run(tmp_path, body)


def test_a_replica_that_rejoins_without_its_object_is_initialized(
    tmp_path: Path, live: LivePids
) -> None:
    async def body(h: Harness) -> None:
        store = file_store(tmp_path)
        spec = dep_spec("Model", user_config={"threshold": 3})
        await deploy_ready(h, app_spec("app", "/", spec))
        await Checkpointer(store, h.ctl).flush()
        (old,) = h.replicas()
        live.pids.add(old.pid)
        new = restarted(h, store, tmp_path / "new")
        conn = FakeReplicaConn()
        new.ctl.replica_rejoined(old.replica_id, conn, initialized=False)  # type: ignore[arg-type]
        (replica,) = new.replicas()
        assert replica.state == ReplicaState.STARTING
        new.ctl.publish()  # not routed to until its object exists
        assert new.replica_set().replicas == ()
        await new.settle()
        ((method, args),) = conn.calls
        assert method == "initialize"
        assert args[0] == spec.code and args[3] == {"threshold": 3}
        assert replica.state == ReplicaState.RUNNING
        new.ctl.tick()
        assert [r.replica_id for r in new.replica_set().replicas] == [old.replica_id]
        assert new.launcher.processes == []

    run(tmp_path, body)


def test_a_replica_saved_while_being_reconfigured_is_reconfigured_once_it_rejoins(
    tmp_path: Path, live: LivePids
) -> None:
    async def body(h: Harness) -> None:
        store = file_store(tmp_path)
        await deploy_ready(h, app_spec("app", "/", dep_spec("Model", user_config={"x": 1})))
        h.ctl.deploy_app(app_spec("app", "/", dep_spec("Model", user_config={"x": 2})))
        (old,) = h.replicas()
        old.state = ReplicaState.UPDATING  # the head crashed before the replica answered
        await Checkpointer(store, h.ctl).flush()
        live.pids.add(old.pid)
        new = restarted(h, store, tmp_path / "new")
        (replica,) = new.replicas()
        assert replica.state == ReplicaState.RUNNING  # serving meanwhile
        conn = FakeReplicaConn()
        new.ctl.replica_rejoined(old.replica_id, conn, initialized=True)  # type: ignore[arg-type]
        new.ctl.tick()
        await new.settle()
        assert [c for c in conn.calls if c[0] not in ("check_health", "set_rank")] == [
            ("update", ({"x": 2}, 5, {}))  # {}: the default logging config
        ]
        assert replica.state == ReplicaState.RUNNING
        assert replica.reconfig_version == new.dep().reconfig_version

    run(tmp_path, body)


def test_a_replica_saved_while_stopping_is_drained_once_it_rejoins(
    tmp_path: Path, live: LivePids
) -> None:
    async def body(h: Harness) -> None:
        store = file_store(tmp_path)
        await deploy_ready(h, app_spec("app", "/", dep_spec("Model", num_replicas=2)))
        h.ctl.scale(h.dep(), 1)
        h.launcher.exit_on_terminate = False
        h.ctl.tick()
        (stopping,) = h.replicas(state=ReplicaState.STOPPING)
        (running,) = h.replicas(state=ReplicaState.RUNNING)
        await Checkpointer(store, h.ctl).flush()
        live.pids.update({stopping.pid, running.pid})
        new = restarted(h, store, tmp_path / "new")
        assert new.ids(state=ReplicaState.STOPPING) == {stopping.replica_id}
        conn = FakeReplicaConn()
        new.ctl.replica_rejoined(stopping.replica_id, conn, initialized=True)  # type: ignore[arg-type]
        await new.settle()
        assert [m for m, _ in conn.calls] == ["prepare_shutdown"]
        assert conn.notified == ["shutdown"]
        new.ctl.tick()
        assert new.launcher.processes == []  # the target (1) is met by the other one
        assert [r.replica_id for r in new.replica_set().replicas] == [running.replica_id]

    run(tmp_path, body)


def test_an_unknown_replica_rejoining_is_told_to_shut_down(tmp_path: Path, live: LivePids) -> None:
    async def body(h: Harness) -> None:
        store = file_store(tmp_path)
        await deploy_ready(h, app_spec())
        await Checkpointer(store, h.ctl).flush()
        (old,) = h.replicas()
        live.pids.add(old.pid)
        new = restarted(h, store, tmp_path / "new")
        stranger = FakeReplicaConn()
        new.ctl.replica_rejoined("notsaved", stranger, initialized=True)  # type: ignore[arg-type]
        assert stranger.notified == ["shutdown"]
        assert new.ids() == {old.replica_id}  # the known one is still waited for

    run(tmp_path, body)


def test_replica_processes_no_record_owns_are_stopped_after_the_rejoin_window(
    tmp_path: Path, live: LivePids
) -> None:
    async def body(h: Harness) -> None:
        store = file_store(tmp_path)
        await deploy_ready(h, app_spec("app", "/", dep_spec("Model", num_replicas=2)))
        await Checkpointer(store, h.ctl).flush()
        first, second = h.replicas()
        live.pids.update({first.pid, second.pid})
        live.strays.add(9999)  # started by the crashed head after its last checkpoint
        new = restarted(h, store, tmp_path / "new")
        new.ctl.replica_rejoined(first.replica_id, FakeReplicaConn(), initialized=True)  # type: ignore[arg-type]
        new.clock.now += REJOIN_TIMEOUT_S / 2
        new.ctl.tick()
        assert live.signals == []
        new.clock.now += REJOIN_TIMEOUT_S
        new.ctl.tick()
        # The stray is stopped; the replica that did not rejoin is killed (and replaced).
        assert sorted(live.signals) == [(second.pid, "SIGKILL"), (9999, "SIGTERM")]
        new.ctl.tick()
        assert new.ids() == {first.replica_id, new.launcher.processes[0].replica_id}

    run(tmp_path, body)


def test_a_failed_deployment_is_not_restarted_after_a_restore(
    tmp_path: Path, live: LivePids
) -> None:
    async def body(h: Harness) -> None:
        store = file_store(tmp_path)
        h.ctl.deploy_app(app_spec())
        for _ in range(3):
            h.ctl.tick()
            h.launcher.processes[-1].exit(1)
        h.ctl.tick()
        assert h.dep().status == DeploymentStatus.DEPLOY_FAILED
        await Checkpointer(store, h.ctl).flush()
        new = restarted(h, store, tmp_path / "new")
        for _ in range(3):
            new.ctl.tick()
        assert new.launcher.processes == []
        assert new.dep().status == DeploymentStatus.DEPLOY_FAILED
        assert "exited with code 1" in new.dep().message
        assert new.ctl.apps["app"].status == ApplicationStatus.DEPLOY_FAILED

    run(tmp_path, body)


def test_an_app_saved_while_being_deleted_finishes_deleting(tmp_path: Path, live: LivePids) -> None:
    async def body(h: Harness) -> None:
        store = file_store(tmp_path)
        h.launcher.exit_on_terminate = False
        await deploy_ready(h, app_spec())
        h.ctl.delete_app("app")
        h.ctl.tick()
        await h.settle()
        (old,) = h.replicas()
        assert old.state == ReplicaState.STOPPING
        await Checkpointer(store, h.ctl).flush()
        live.pids.add(old.pid)
        new = restarted(h, store, tmp_path / "new")
        assert new.ctl.apps["app"].status == ApplicationStatus.DELETING
        new.clock.now += REJOIN_TIMEOUT_S + 1  # it never rejoins
        new.ctl.tick()
        new.ctl.tick()
        assert "app" not in new.ctl.apps
        assert new.launcher.processes == []
        assert new.pool.used["CPU"] == 0

    run(tmp_path, body)


def test_a_restored_controller_checkpoints_the_same_goal_state(
    tmp_path: Path, live: LivePids
) -> None:
    async def body(h: Harness) -> None:
        first = file_store(tmp_path)
        await deploy_ready(h, app_spec("app", "/", dep_spec("Model", num_replicas=2)))
        await Checkpointer(first, h.ctl).flush()
        live.pids.update(r.pid for r in h.replicas())
        new = restarted(h, first, tmp_path / "new")
        second = Recording(FileStore(tmp_path / "second"))
        await Checkpointer(second, new.ctl).flush()
        a, b = loaded(first), loaded(second)
        assert a.specs == b.specs
        assert a.state.node_id == b.state.node_id
        (dep_a,), (dep_b,) = a.state.apps[0].deployments, b.state.apps[0].deployments
        assert sorted((r.replica_id, r.pid, r.version) for r in dep_a.replicas) == sorted(
            (r.replica_id, r.pid, r.version) for r in dep_b.replicas
        )
        assert dep_a.target_num_replicas == dep_b.target_num_replicas == 2

    run(tmp_path, body)


def test_replica_ranks_survive_a_head_restart(tmp_path: Path, live: LivePids) -> None:
    async def body(h: Harness) -> None:
        store = file_store(tmp_path)
        await deploy_ready(h, app_spec("app", "/", dep_spec("Model", num_replicas=3)))
        ranks = {r.replica_id: h.dep().ranks.get(r.replica_id) for r in h.replicas()}
        await Checkpointer(store, h.ctl).flush()
        live.pids.update(r.pid for r in h.replicas())
        new = restarted(h, store, tmp_path / "new")
        assert {r.replica_id: new.dep().ranks.get(r.replica_id) for r in new.replicas()} == ranks
        # A replica started after the restart takes a free rank, not one already held.
        (gone,) = [rid for rid, rank in ranks.items() if rank.rank == 0]
        new.dep().replicas[gone].process.kill()  # it dies: reaped, its rank freed
        new.ctl.tick()
        (started,) = new.ids(state=ReplicaState.STARTING)
        assert new.dep().ranks.get(started).rank == 0

    run(tmp_path, body)
