"""The controller's reconcile loop, driven tick by tick with fakes.

A fake launcher hands out fake processes whose exit the test decides, the
clock is a number the test moves, and the resource pool is the real one.
Replicas "register" over a fake connection, which runs the controller's own
initialization step. Nothing here starts a process or opens a socket.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
from controller_fakes import (
    FakeProcess,
    FakeReplicaConn,
    Harness,
    InstantSleepAsyncio,
    app_spec,
    dep_spec,
    run,
)

from schooner.controller import controller as controller_module
from schooner.controller.controller import STARTUP_TIMEOUT_S, STOP_GRACE_S
from schooner.controller.details import app_info, serve_status
from schooner.exceptions import ServeConfigError
from schooner.router.router import DELETED
from schooner.rpc.connection import RemoteError
from schooner.rpc.messages import (
    DeploymentID,
    Route,
)
from schooner.runtime.launcher import ProcessSpec
from schooner.schema import (
    ApplicationStatus,
    DeploymentStatus,
    DeploymentStatusTrigger,
    ReplicaState,
)


@pytest.fixture(autouse=True)
def instant_drain(monkeypatch: pytest.MonkeyPatch) -> None:
    """Draining a replica pauses for routers to catch up; skip those pauses in unit tests."""
    monkeypatch.setattr(controller_module, "asyncio", InstantSleepAsyncio())


# -- deploying ---------------------------------------------------------------------------------


def test_deploy_starts_target_number_of_replicas(tmp_path: Path) -> None:
    async def body(h: Harness) -> None:
        h.ctl.deploy_app(app_spec("app", "/", dep_spec("Model", num_replicas=3)))
        app = h.ctl.apps["app"]
        assert app.status == ApplicationStatus.DEPLOYING
        h.ctl.tick()
        assert len(h.launcher.processes) == 3
        spec = h.launcher.processes[0].spec
        assert spec.module == "schooner.replica.main"
        assert h.launcher.processes[0].arg("--app") == "app"
        assert h.launcher.processes[0].arg("--deployment") == "Model"
        assert 99 in spec.pass_fds  # the lifeline
        assert h.ids(state=ReplicaState.STARTING) == {p.replica_id for p in h.launcher.processes}
        assert h.dep().status == DeploymentStatus.UPDATING
        h.ctl.tick()
        assert len(h.launcher.processes) == 3  # no more while they start
        await h.all_ready()
        h.ctl.tick()
        assert h.dep().status == DeploymentStatus.HEALTHY
        assert h.dep().status_trigger == DeploymentStatusTrigger.CONFIG_UPDATE_COMPLETED
        assert serve_status(h.ctl)["applications"]["app"]["status"] == ApplicationStatus.RUNNING
        status = serve_status(h.ctl)["applications"]["app"]
        assert status["status"] == "RUNNING"
        assert status["deployments"]["Model"]["replica_states"] == {"RUNNING": 3}
        for conn in h.conns.values():
            assert conn.calls[0][0] == "initialize"

    run(tmp_path, body)


def test_replica_registering_unknown_id_is_told_to_shut_down(tmp_path: Path) -> None:
    async def body(h: Harness) -> None:
        conn = FakeReplicaConn()
        h.ctl.replica_registered("nosuchid", conn)  # type: ignore[arg-type]
        assert conn.notified == ["shutdown"]

    run(tmp_path, body)


def test_deploy_validates_ingress(tmp_path: Path) -> None:
    async def body(h: Harness) -> None:
        spec = app_spec("app", "/", dep_spec("Model"))
        spec.ingress = "Missing"
        with pytest.raises(ServeConfigError, match="Missing"):
            h.ctl.deploy_app(spec)
        assert h.ctl.apps == {}

    run(tmp_path, body)


# -- startup failures --------------------------------------------------------------------------


def test_process_exiting_before_ready_fails_the_deployment_after_the_threshold(
    tmp_path: Path,
) -> None:
    async def body(h: Harness) -> None:
        h.ctl.deploy_app(app_spec())
        threshold = h.dep().failure_threshold
        assert threshold == 3  # min(max_constructor_retry_count=20, 3 * target)
        for attempt in range(1, threshold + 1):
            h.ctl.tick()
            assert len(h.launcher.processes) == attempt
            h.launcher.processes[-1].exit(1)
        h.ctl.tick()
        dep = h.dep()
        assert dep.status == DeploymentStatus.DEPLOY_FAILED
        assert dep.status_trigger == DeploymentStatusTrigger.REPLICA_STARTUP_FAILED
        assert "exited with code 1 before it was ready" in dep.message
        assert "3 times in a row" in dep.message
        app = h.ctl.apps["app"]
        assert app.status == ApplicationStatus.DEPLOY_FAILED
        assert "Model" in app.message and "exited with code 1" in app.message
        assert h.ctl.is_failed("app")
        # It does not retry until redeployed.
        for _ in range(3):
            h.ctl.tick()
        assert len(h.launcher.processes) == threshold
        assert h.pool.used["CPU"] == 0
        # Redeploying resets the failure count and tries again.
        h.ctl.deploy_app(app_spec())
        h.ctl.tick()
        assert len(h.launcher.processes) == threshold + 1
        assert h.dep().status == DeploymentStatus.UPDATING

    run(tmp_path, body)


def test_one_failure_then_success_resets_the_count(tmp_path: Path) -> None:
    async def body(h: Harness) -> None:
        h.ctl.deploy_app(app_spec())
        h.ctl.tick()
        h.launcher.processes[-1].exit(1)
        h.ctl.tick()
        assert h.dep().consecutive_failures == 1
        assert h.dep().status == DeploymentStatus.UPDATING
        await h.all_ready()
        h.ctl.tick()
        assert h.dep().consecutive_failures == 0
        assert h.dep().status == DeploymentStatus.HEALTHY

    run(tmp_path, body)


def test_constructor_error_is_in_the_status_message(tmp_path: Path) -> None:
    async def body(h: Harness) -> None:
        h.ctl.deploy_app(app_spec())
        error = RemoteError(
            "ZeroDivisionError",
            "division by zero",
            'Traceback:\n  File "model.py", line 3, in __init__\nZeroDivisionError: division',
            None,
        )
        for _ in range(3):
            h.ctl.tick()
            (rid,) = h.ids(state=ReplicaState.STARTING)
            await h.ready(rid, init_error=error)
            assert h.launcher.by_id(rid).terminated  # the controller stopped it
        h.ctl.tick()
        assert h.dep().status == DeploymentStatus.DEPLOY_FAILED
        assert 'File "model.py", line 3, in __init__' in h.dep().message
        assert "ZeroDivisionError" in h.ctl.apps["app"].message

    run(tmp_path, body)


def test_launcher_oserror_counts_as_a_startup_failure(tmp_path: Path) -> None:
    async def body(h: Harness) -> None:
        h.launcher.fail_with = OSError("fork failed: out of memory")
        h.ctl.deploy_app(app_spec())
        for _ in range(3):
            h.ctl.tick()
        assert h.dep().status == DeploymentStatus.DEPLOY_FAILED
        assert "fork failed: out of memory" in h.dep().message
        assert h.pool.used["CPU"] == 0  # the allocation was given back each time

    run(tmp_path, body)


def test_replica_that_never_becomes_ready_is_killed_after_the_startup_timeout(
    tmp_path: Path,
) -> None:
    async def body(h: Harness) -> None:
        h.ctl.deploy_app(app_spec())
        h.ctl.tick()
        (process,) = h.launcher.processes
        h.clock.now += STARTUP_TIMEOUT_S - 1
        h.ctl.tick()
        assert not process.killed
        h.clock.now += 2
        h.ctl.tick()
        assert process.killed
        h.ctl.tick()  # reaped: a startup failure with the reason
        assert h.dep().consecutive_failures == 1
        assert len(h.launcher.processes) == 2

    run(tmp_path, body)


# -- replacing, scaling -----------------------------------------------------------------------


def test_running_replica_that_dies_is_replaced(tmp_path: Path) -> None:
    async def body(h: Harness) -> None:
        h.ctl.deploy_app(app_spec("app", "/", dep_spec("Model", num_replicas=2)))
        h.ctl.tick()
        await h.all_ready()
        h.ctl.tick()
        assert h.dep().status == DeploymentStatus.HEALTHY
        victim, survivor = sorted(h.ids())
        h.launcher.by_id(victim).exit(-9)
        h.ctl.tick()
        assert victim not in h.ids()
        assert len(h.launcher.processes) == 3
        (new,) = h.ids(state=ReplicaState.STARTING)
        assert h.dep().consecutive_failures == 0  # a crash of a running replica is not one
        # As in Ray (the dead replica's health check fails): UNHEALTHY until replaced.
        assert h.dep().status == DeploymentStatus.UNHEALTHY
        assert "died unexpectedly" in h.dep().message
        assert [r.replica_id for r in h.replica_set().replicas] == [survivor]
        await h.ready(new)
        h.ctl.tick()
        assert h.dep().status == DeploymentStatus.HEALTHY
        assert {r.replica_id for r in h.replica_set().replicas} == {survivor, new}

    run(tmp_path, body)


def test_scale_down_stops_the_extra_replicas(tmp_path: Path) -> None:
    async def body(h: Harness) -> None:
        h.launcher.exit_on_terminate = False
        h.ctl.deploy_app(app_spec("app", "/", dep_spec("Model", num_replicas=3)))
        h.ctl.tick()
        await h.all_ready()
        h.ctl.tick()
        h.ctl.deploy_app(app_spec("app", "/", dep_spec("Model", num_replicas=1)))
        h.ctl.tick()
        stopping = h.ids(state=ReplicaState.STOPPING)
        (kept,) = h.ids(state=ReplicaState.RUNNING)
        assert len(stopping) == 2
        assert len(h.launcher.processes) == 3  # nothing restarted: num_replicas is a light update
        # Routers stop sending to them at once.
        assert [r.replica_id for r in h.replica_set().replicas] == [kept]
        # Each stopping replica is drained: prepare_shutdown with the graceful options, then
        # shutdown, then its process is terminated.
        await h.settle()
        for rid in stopping:
            assert h.conns[rid].calls[-1] == ("prepare_shutdown", (2.0, 20.0))
            assert h.conns[rid].notified == ["shutdown"]
            assert h.launcher.by_id(rid).terminated
        assert not h.launcher.by_id(kept).terminated
        for rid in stopping:
            h.launcher.by_id(rid).exit(0)
        h.ctl.tick()
        assert h.ids() == {kept}
        assert h.dep().status == DeploymentStatus.HEALTHY
        assert h.pool.used["CPU"] == 1

    run(tmp_path, body)


def test_scale_down_prefers_replicas_that_are_not_running_yet(tmp_path: Path) -> None:
    async def body(h: Harness) -> None:
        h.ctl.deploy_app(app_spec("app", "/", dep_spec("Model", num_replicas=2)))
        h.ctl.tick()
        first, second = sorted(h.replicas(), key=lambda r: r.replica_id)
        await h.ready(first.replica_id)
        h.ctl.deploy_app(app_spec("app", "/", dep_spec("Model", num_replicas=1)))
        h.ctl.tick()
        assert h.launcher.by_id(second.replica_id).terminated
        assert h.ids(state=ReplicaState.RUNNING) == {first.replica_id}

    run(tmp_path, body)


def test_replica_that_does_not_stop_is_killed_after_the_graceful_timeout(tmp_path: Path) -> None:
    async def body(h: Harness) -> None:
        h.launcher.exit_on_terminate = False
        h.ctl.deploy_app(
            app_spec("app", "/", dep_spec("Model", num_replicas=2, graceful_shutdown_timeout_s=7))
        )
        h.ctl.tick()
        h.ctl.deploy_app(
            app_spec("app", "/", dep_spec("Model", num_replicas=1, graceful_shutdown_timeout_s=7))
        )
        h.ctl.tick()
        (stopping,) = h.replicas(state=ReplicaState.STOPPING)
        process = h.launcher.by_id(stopping.replica_id)
        assert process.terminated and not process.killed
        h.clock.now += 7 + STOP_GRACE_S - 0.5
        h.ctl.tick()
        assert not process.killed
        h.clock.now += 1
        h.ctl.tick()
        assert process.killed
        h.ctl.tick()
        assert stopping.replica_id not in h.ids()
        assert h.dep().consecutive_failures == 0  # stopping on purpose is not a failure

    run(tmp_path, body)


def test_new_code_version_rolls_over_replicas_one_at_a_time(tmp_path: Path) -> None:
    async def body(h: Harness) -> None:
        h.ctl.deploy_app(app_spec("app", "/", dep_spec("Model", "v1", num_replicas=2)))
        h.ctl.tick()
        await h.all_ready()
        h.ctl.tick()
        old = h.ids()
        h.ctl.deploy_app(app_spec("app", "/", dep_spec("Model", "v2", num_replicas=2)))
        h.ctl.tick()
        first = h.ids(state=ReplicaState.STARTING)
        assert len(first) == 1  # 20% of 2, at least one at a time
        # Old replicas keep serving until new ones are ready.
        assert h.ids(state=ReplicaState.RUNNING) == old
        assert {r.replica_id for r in h.replica_set().replicas} == old
        assert h.ctl.apps["app"].status == ApplicationStatus.DEPLOYING
        await h.ready(*first)
        h.ctl.tick()
        # One old replica makes way; the next new one starts.
        assert len(h.ids(state=ReplicaState.STOPPING) & old) == 1
        second = h.ids(state=ReplicaState.STARTING)
        assert len(second) == 1 and not (second & first)
        await h.ready(*second)
        h.ctl.tick()
        await h.settle()
        new = first | second
        assert all(h.launcher.by_id(rid).terminated for rid in old)
        assert {r.replica_id for r in h.replica_set().replicas} == new
        h.ctl.tick()
        assert h.ids() == new
        assert h.dep().status == DeploymentStatus.HEALTHY

    run(tmp_path, body)


def test_a_new_version_is_not_running_until_the_old_replica_has_exited(tmp_path: Path) -> None:
    # serve.run returns once the app is RUNNING; a proxy that has not yet heard of the new
    # replica set could still reach a draining old replica and answer with the old code.
    async def body(h: Harness) -> None:
        h.launcher.exit_on_terminate = False
        h.ctl.deploy_app(app_spec("app", "/", dep_spec("Model", "foo")))
        h.ctl.tick()
        await h.all_ready()
        h.ctl.tick()
        (old,) = h.ids()
        h.ctl.deploy_app(app_spec("app", "/", dep_spec("Model", "bar")))
        h.ctl.tick()
        await h.ready(*h.ids(state=ReplicaState.STARTING))
        h.ctl.tick()
        assert h.dep().replicas[old].state == ReplicaState.STOPPING
        assert h.dep().status == DeploymentStatus.UPDATING
        assert h.ctl.apps["app"].status == ApplicationStatus.DEPLOYING
        await h.settle()
        h.launcher.by_id(old).exit(0)
        h.ctl.tick()
        assert h.dep().status == DeploymentStatus.HEALTHY
        assert h.ctl.apps["app"].status == ApplicationStatus.RUNNING

    run(tmp_path, body)


def test_rollout_that_does_not_fit_replaces_one_old_replica_at_a_time(tmp_path: Path) -> None:
    async def body(h: Harness) -> None:
        gpu = {"ray_actor_options": {"num_gpus": 1}, "num_replicas": 2}
        h.ctl.deploy_app(app_spec("app", "/", dep_spec("Model", "v1", **gpu)))
        h.ctl.tick()
        await h.all_ready()
        h.ctl.tick()
        old = h.ids()
        h.ctl.deploy_app(app_spec("app", "/", dep_spec("Model", "v2", **gpu)))
        h.ctl.tick()
        # Both GPUs are held by old replicas: one old replica makes way, the other serves.
        assert not h.ids(state=ReplicaState.STARTING)
        stopping = h.ids(state=ReplicaState.STOPPING)
        assert len(stopping) == 1 and stopping < old
        assert len(h.ids(state=ReplicaState.RUNNING) & old) == 1
        await h.settle()
        h.ctl.tick()  # reaped: its GPU is free, a new replica starts on it
        first = h.ids(state=ReplicaState.STARTING)
        assert len(first) == 1
        await h.ready(*first)
        h.ctl.tick()
        await h.settle()
        h.ctl.tick()
        second = h.ids(state=ReplicaState.STARTING)
        assert len(second) == 1 and not (second & first)
        await h.ready(*second)
        h.ctl.tick()
        assert h.ids(state=ReplicaState.RUNNING) == first | second
        assert h.dep().status == DeploymentStatus.HEALTHY

    run(tmp_path, body, capacity={"CPU": 8, "GPU": 2})


# -- health checks ---------------------------------------------------------------------------


HEALTH = {"health_check_period_s": 1.0, "health_check_timeout_s": 0.05}


async def _health_round(h: Harness) -> None:
    """One health-check period passes: the controller checks every replica."""
    h.clock.now += 1.0
    h.ctl.tick()
    await h.settle()


def test_replica_failing_three_health_checks_is_replaced(tmp_path: Path) -> None:
    async def body(h: Harness) -> None:
        h.ctl.deploy_app(app_spec("app", "/", dep_spec("Model", num_replicas=2, **HEALTH)))
        h.ctl.tick()
        await h.all_ready()
        h.ctl.tick()
        sick, well = sorted(h.ids())
        h.conns[sick].health = RemoteError("RuntimeError", "GPU lost", "", None)
        for _ in range(2):
            await _health_round(h)
        assert h.dep().replicas[sick].state == ReplicaState.RUNNING  # two failures: not yet
        assert h.dep().status == DeploymentStatus.HEALTHY
        await _health_round(h)
        assert h.dep().replicas[sick].state == ReplicaState.STOPPING
        assert h.launcher.by_id(sick).terminated
        assert sick not in {r.replica_id for r in h.replica_set().replicas}
        dep = h.dep()
        assert dep.status == DeploymentStatus.UNHEALTHY
        assert dep.status_trigger == DeploymentStatusTrigger.HEALTH_CHECK_FAILED
        assert sick in dep.message and "RuntimeError: GPU lost" in dep.message
        assert h.ctl.apps["app"].status == ApplicationStatus.UNHEALTHY
        h.ctl.tick()  # reaped; a replacement starts
        (new,) = h.ids(state=ReplicaState.STARTING)
        await h.ready(new)
        h.ctl.tick()
        assert h.ids(state=ReplicaState.RUNNING) == {well, new}
        assert h.dep().status == DeploymentStatus.HEALTHY
        assert h.ctl.apps["app"].status == ApplicationStatus.RUNNING

    run(tmp_path, body)


def test_a_passing_health_check_resets_the_failure_count(tmp_path: Path) -> None:
    async def body(h: Harness) -> None:
        h.ctl.deploy_app(app_spec("app", "/", dep_spec("Model", **HEALTH)))
        h.ctl.tick()
        await h.all_ready()
        h.ctl.tick()
        (rid,) = h.ids()
        conn = h.conns[rid]
        for _ in range(3):
            conn.health = RemoteError("RuntimeError", "flaky", "", None)
            await _health_round(h)
            await _health_round(h)
            conn.health = None
            await _health_round(h)
        assert conn.health_checks() == 9
        assert h.dep().replicas[rid].state == ReplicaState.RUNNING
        assert h.dep().status == DeploymentStatus.HEALTHY

    run(tmp_path, body)


def test_a_hung_health_check_replaces_the_replica_at_once(tmp_path: Path) -> None:
    async def body(h: Harness) -> None:
        h.ctl.deploy_app(app_spec("app", "/", dep_spec("Model", **HEALTH)))
        h.ctl.tick()
        await h.all_ready()
        h.ctl.tick()
        (rid,) = h.ids()
        h.conns[rid].health = "hang"
        await _health_round(h)
        assert h.dep().replicas[rid].state == ReplicaState.STOPPING
        assert "did not answer its health check within 0.05 s" in h.dep().message
        assert h.dep().status == DeploymentStatus.UNHEALTHY

    run(tmp_path, body)


def test_health_checks_wait_for_their_period(tmp_path: Path) -> None:
    async def body(h: Harness) -> None:
        h.ctl.deploy_app(app_spec("app", "/", dep_spec("Model", **HEALTH)))
        h.ctl.tick()
        await h.all_ready()
        h.ctl.tick()
        await h.settle()
        (rid,) = h.ids()
        first = h.conns[rid].health_checks()
        for _ in range(5):
            h.clock.now += 0.1
            h.ctl.tick()
            await h.settle()
        assert h.conns[rid].health_checks() == first  # 0.5 s < period
        await _health_round(h)
        assert h.conns[rid].health_checks() == first + 1

    run(tmp_path, body)


# -- resources ----------------------------------------------------------------------------------


def test_gpu_request_that_does_not_fit_waits_and_says_why(tmp_path: Path) -> None:
    async def body(h: Harness) -> None:
        h.ctl.deploy_app(app_spec("app", "/", dep_spec("Model", ray_actor_options={"num_gpus": 1})))
        h.ctl.tick()
        h.ctl.tick()
        assert h.launcher.processes == []
        dep = h.dep()
        assert dep.status == DeploymentStatus.UPDATING
        assert "GPU" in dep.message and "waiting" in dep.message.lower()
        app = h.ctl.apps["app"]
        assert app.status == ApplicationStatus.DEPLOYING
        assert "GPU" in app.message
        assert (
            "GPU" in serve_status(h.ctl)["applications"]["app"]["deployments"]["Model"]["message"]
        )

    run(tmp_path, body, capacity={"CPU": 8, "GPU": 0})


def test_gpus_are_assigned_until_they_run_out(tmp_path: Path) -> None:
    async def body(h: Harness) -> None:
        h.ctl.deploy_app(
            app_spec(
                "app",
                "/",
                dep_spec("Model", num_replicas=3, ray_actor_options={"num_gpus": 1}),
            )
        )
        h.ctl.tick()
        assert sorted(p.spec.env["CUDA_VISIBLE_DEVICES"] for p in h.launcher.processes) == [
            "0",
            "1",
        ]
        assert "GPU: needs 1, 0 of 2 free" in h.dep().message
        # A GPU freed by a replica that exits goes to the waiting one.
        h.launcher.processes[0].exit(1)
        h.ctl.tick()
        assert len(h.launcher.processes) == 3
        assert h.launcher.processes[-1].spec.env["CUDA_VISIBLE_DEVICES"] == "0"

    run(tmp_path, body, capacity={"CPU": 8, "GPU": 2})


def test_cpu_oversubscription_is_allowed(tmp_path: Path) -> None:
    async def body(h: Harness) -> None:
        h.ctl.deploy_app(app_spec("app", "/", dep_spec("Model", num_replicas=4)))
        h.ctl.tick()
        assert len(h.launcher.processes) == 4
        assert h.pool.used["CPU"] == 4
        assert h.dep().message == ""
        # No GPU asked for, none visible (not the node's: as Ray does).
        assert all(p.spec.env["CUDA_VISIBLE_DEVICES"] == "" for p in h.launcher.processes)

    run(tmp_path, body, capacity={"CPU": 1, "GPU": 0})


# -- deleting ------------------------------------------------------------------------------------


def test_delete_app_stops_replicas_and_removes_the_app_once_they_exit(tmp_path: Path) -> None:
    async def body(h: Harness) -> None:
        h.launcher.exit_on_terminate = False
        h.ctl.deploy_app(
            app_spec("app", "/api", dep_spec("Ingress"), dep_spec("Model", num_replicas=2))
        )
        h.ctl.tick()
        await h.ready(*h.ids("Ingress", state=ReplicaState.STARTING))
        h.ctl.tick()  # Model's replicas are still starting
        assert h.ctl.delete_app("app")
        assert not h.ctl.delete_app("nope")
        h.ctl.tick()
        assert h.ctl.apps["app"].status == ApplicationStatus.DELETING
        assert h.published("routes") == {}
        await h.settle()
        processes = list(h.launcher.processes)
        assert len(processes) == 3 and all(p.terminated for p in processes)
        assert app_info(h.ctl, "app") is None
        # Gone only once every process has exited.
        for p in processes[:-1]:
            p.exit(0)
        h.ctl.tick()
        assert "app" in h.ctl.apps
        processes[-1].exit(0)
        h.ctl.tick()
        assert "app" not in h.ctl.apps
        assert h.published(DeploymentID("Model", "app").key) == DELETED
        assert h.published(DeploymentID("Ingress", "app").key) == DELETED
        assert h.pool.used["CPU"] == 0
        assert serve_status(h.ctl)["applications"] == {}
        assert len(h.launcher.processes) == 3  # nothing was restarted meanwhile

    run(tmp_path, body)


def test_redeploy_while_deleting_is_refused(tmp_path: Path) -> None:
    async def body(h: Harness) -> None:
        h.launcher.exit_on_terminate = False
        h.ctl.deploy_app(app_spec())
        h.ctl.tick()
        h.ctl.delete_app("app")
        h.ctl.tick()
        with pytest.raises(ServeConfigError, match="being deleted"):
            h.ctl.deploy_app(app_spec())

    run(tmp_path, body)


def test_deployment_removed_from_app_is_stopped_and_unpublished(tmp_path: Path) -> None:
    async def body(h: Harness) -> None:
        h.ctl.deploy_app(app_spec("app", "/", dep_spec("Ingress"), dep_spec("Helper")))
        h.ctl.tick()
        helper_pids = [r.pid for r in h.replicas("Helper")]
        h.ctl.deploy_app(app_spec("app", "/", dep_spec("Ingress")))
        h.ctl.tick()  # stop (the fake exits on terminate)
        h.ctl.tick()  # reap, forget
        assert "Helper" not in h.ctl.apps["app"].deployments
        assert h.published(DeploymentID("Helper", "app").key) == DELETED
        assert all(p.terminated for p in h.launcher.processes if p.pid in helper_pids)

    run(tmp_path, body)


def test_readding_a_deployment_while_its_old_replicas_stop_does_not_leak_them(
    tmp_path: Path,
) -> None:
    async def body(h: Harness) -> None:
        h.launcher.exit_on_terminate = False
        gpu: dict[str, Any] = {"ray_actor_options": {"num_gpus": 1}}
        h.ctl.deploy_app(app_spec("app", "/", dep_spec("Ingress"), dep_spec("Helper", **gpu)))
        h.ctl.tick()
        (old,) = h.replicas("Helper")
        h.ctl.deploy_app(app_spec("app", "/", dep_spec("Ingress")))
        h.ctl.tick()
        assert old.state == ReplicaState.STOPPING
        # Helper comes back before its old replica has exited.
        h.ctl.deploy_app(app_spec("app", "/", dep_spec("Ingress"), dep_spec("Helper", **gpu)))
        h.ctl.tick()
        h.launcher.by_id(old.replica_id).exit(0)
        h.ctl.tick()
        h.ctl.tick()
        # The GPU of the old replica is free again and the new one gets it.
        assert len(h.ids("Helper", state=ReplicaState.STARTING)) == 1
        assert h.pool.used["GPU"] == 1

    run(tmp_path, body, capacity={"CPU": 8, "GPU": 1})


# -- validation -------------------------------------------------------------------------------


def test_two_apps_with_the_same_route_prefix(tmp_path: Path) -> None:
    async def body(h: Harness) -> None:
        h.ctl.deploy_app(app_spec("a", "/shared"))
        h.ctl.tick()
        before = serve_status(h.ctl)
        with pytest.raises(ServeConfigError) as info:
            h.ctl.deploy_app(app_spec("b", "/shared", dep_spec("Other")))
        assert "/shared" in str(info.value) and "'a'" in str(info.value)
        assert set(h.ctl.apps) == {"a"}
        h.ctl.tick()
        assert serve_status(h.ctl) == before
        assert len(h.launcher.processes) == 1
        assert set(h.published("routes")) == {"/shared"}
        # The same app may keep its own prefix, and other prefixes are fine.
        h.ctl.deploy_app(app_spec("a", "/shared"))
        h.ctl.deploy_app(app_spec("b", "/other", dep_spec("Other")))
        assert set(h.ctl.apps) == {"a", "b"}

    run(tmp_path, body)


def test_deploy_refused_while_shutting_down(tmp_path: Path) -> None:
    async def body(h: Harness) -> None:
        h.ctl.deploy_app(app_spec())
        h.ctl.tick()
        h.ctl.begin_shutdown()
        with pytest.raises(ServeConfigError):
            h.ctl.deploy_app(app_spec("other", "/other"))
        h.ctl.tick()  # stop
        h.ctl.tick()  # reap
        assert h.ctl.apps == {}
        assert h.ctl.stopped.is_set()

    run(tmp_path, body)


# -- what subscribers see --------------------------------------------------------------------------


def test_published_replica_sets_and_routes_reflect_running_replicas_only(tmp_path: Path) -> None:
    async def body(h: Harness) -> None:
        h.ctl.deploy_app(
            app_spec(
                "app",
                "/api",
                dep_spec("Ingress", max_ongoing_requests=7, max_queued_requests=11),
                dep_spec("Model", num_replicas=3),
            )
        )
        h.ctl.deploy_app(app_spec("internal", None, dep_spec("Worker")))
        h.ctl.tick()
        assert h.replica_set("Ingress").replicas == ()
        assert h.replica_set("Ingress").max_ongoing_requests == 7
        assert h.replica_set("Ingress").max_queued_requests == 11
        assert h.replica_set("Model").max_queued_requests == -1
        # Routes are published for apps with a prefix, pointing at the ingress.
        assert h.published("routes") == {
            "/api": Route("/api", "app", DeploymentID("Ingress", "app"))
        }
        model = sorted(h.ids("Model"))
        await h.ready(model[0], model[2])
        h.ctl.tick()
        published = h.replica_set("Model")
        assert [r.replica_id for r in published.replicas] == [model[0], model[2]]
        record = h.dep("Model").replicas[model[0]]
        assert published.replicas[0].address == record.address
        assert published.replicas[0].deployment == DeploymentID("Model", "app")
        version = h.ctl.long_poll.get(DeploymentID("Model", "app").key)[0]
        h.ctl.tick()  # nothing changed: same version
        assert h.ctl.long_poll.get(DeploymentID("Model", "app").key)[0] == version
        # A dead replica disappears from the set at the next tick.
        h.launcher.by_id(model[0]).exit(1)
        h.ctl.tick()
        assert [r.replica_id for r in h.replica_set("Model").replicas] == [model[2]]

    run(tmp_path, body)


# -- isolation ------------------------------------------------------------------------------


def test_one_failing_deployment_does_not_stop_the_others(tmp_path: Path) -> None:
    async def body(h: Harness) -> None:
        h.ctl.deploy_app(app_spec("a", "/a", dep_spec("A")))
        h.ctl.deploy_app(app_spec("b", "/b", dep_spec("B")))
        original = h.launcher.launch

        def launch(spec: ProcessSpec) -> FakeProcess:
            if FakeProcess(spec).arg("--deployment") == "A":
                raise RuntimeError("bug in the launcher")
            return original(spec)

        h.launcher.launch = launch  # type: ignore[method-assign]
        h.ctl.tick()
        assert [p.arg("--deployment") for p in h.launcher.processes] == ["B"]
        assert set(h.published("routes")) == {"/a", "/b"}

    run(tmp_path, body)
