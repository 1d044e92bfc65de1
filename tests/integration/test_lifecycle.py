"""Failures and lifecycle: constructor errors, replica deaths, backpressure, deletion."""

from __future__ import annotations

import os
import signal
from pathlib import Path

import httpx
import pytest
from helpers import wait_for
from starlette.requests import Request

import schooner as serve
from schooner.exceptions import BackPressureError, DeployFailedError


@serve.deployment
class Broken:
    def __init__(self) -> None:
        raise RuntimeError("cannot load weights from /nowhere")


@serve.deployment
class Ok:
    def __call__(self, request: Request) -> str:
        return "ok"

    def pid(self) -> int:
        return os.getpid()


@pytest.mark.both_backends
def test_failing_constructor_marks_app_failed_and_others_keep_serving(clean) -> None:
    serve.run(Ok.bind(), name="good", route_prefix="/good")
    with pytest.raises(DeployFailedError) as info:
        serve.run(Broken.bind(), name="bad", route_prefix="/bad")
    message = str(info.value)
    assert "RuntimeError" in message and "cannot load weights from /nowhere" in message
    assert "Traceback" in message
    status = serve.status()
    bad = status.applications["bad"]
    assert bad.status == "DEPLOY_FAILED"
    assert "cannot load weights" in bad.message
    assert bad.deployments["Broken"].status == "DEPLOY_FAILED"
    assert status.applications["good"].status == "RUNNING"
    assert clean.http.get("/good").text == "ok"
    r = clean.http.get("/bad", timeout=5)  # answered at once, not queued forever
    assert r.status_code == 503
    assert "failed to deploy" in r.text


@pytest.mark.both_backends
def test_dead_replica_is_replaced(clean) -> None:
    handle = serve.run(Ok.bind(), name="good", route_prefix="/good")
    pid = handle.pid.remote().result()
    os.kill(pid, signal.SIGKILL)

    def replaced() -> bool:
        return handle.pid.remote().result(timeout_s=5) != pid

    wait_for(replaced, timeout_s=30, message="a new replica")
    assert clean.http.get("/good").text == "ok"
    st = serve.status().applications["good"].deployments["Ok"]
    assert st.replica_states == {"RUNNING": 1}


@serve.deployment(max_ongoing_requests=1, max_queued_requests=1)
class Narrow:
    async def __call__(self, request: Request) -> str:
        import asyncio

        await asyncio.sleep(1.0)
        return "done"

    async def wait(self, seconds: float) -> str:
        import asyncio

        await asyncio.sleep(seconds)
        return "done"


@pytest.mark.both_backends
def test_backpressure_handle_and_http_503(clean) -> None:
    handle = serve.run(Narrow.bind(), name="narrow", route_prefix="/narrow")
    first = handle.wait.remote(1.0)  # in flight
    second = handle.wait.remote(1.0)  # queued
    third = handle.wait.remote(1.0)  # over the queue limit
    with pytest.raises(BackPressureError):
        third.result()
    assert first.result() == "done" and second.result() == "done"

    import concurrent.futures

    with concurrent.futures.ThreadPoolExecutor(4) as pool:
        codes = list(
            pool.map(lambda _: httpx.get(f"{clean.url}/narrow", timeout=30).status_code, range(4))
        )
    assert codes.count(200) >= 1
    assert 503 in codes


@pytest.mark.both_backends
def test_delete_removes_route_and_replicas(clean, tmp_root) -> None:
    handle = serve.run(Ok.bind(), name="good", route_prefix="/good")
    pid = handle.pid.remote().result()
    serve.delete("good")
    assert "good" not in serve.status().applications
    assert clean.http.get("/good").status_code == 404

    def exited() -> bool:
        try:
            return Path(f"/proc/{pid}/stat").read_text().split(")")[-1].split()[0] == "Z"
        except OSError:
            return True

    wait_for(exited, timeout_s=10, message="replica process to exit")


@pytest.mark.both_backends
def test_duplicate_route_prefix_rejected(clean) -> None:
    serve.run(Ok.bind(), name="one", route_prefix="/same")
    with pytest.raises(serve.exceptions.ServeConfigError, match="already used"):
        serve.run(Ok.bind(), name="two", route_prefix="/same")
    assert serve.status().applications["one"].status == "RUNNING"


@serve.deployment(ray_actor_options={"num_gpus": 1})
class NeedsGpu:
    def __call__(self, request: Request) -> str:
        return "gpu"


def test_replica_waiting_for_resources_says_why(clean) -> None:
    from schooner import _core

    core = _core.get_core()
    from schooner.deployment import build_app

    spec = build_app(NeedsGpu.bind(), "gpu", "/gpu")
    core.call_controller_sync("deploy_app", spec)

    def waiting_message() -> str:
        app = serve.status().applications["gpu"]
        return app.deployments["NeedsGpu"].message if app.status == "DEPLOYING" else ""

    message = wait_for(waiting_message, timeout_s=10, message="resource message")
    assert "GPU" in message and "needs 1" in message


@serve.deployment
class SyncCaller:
    def __init__(self, adder) -> None:
        self.adder = adder

    def __call__(self, request: Request) -> int:
        # A sync method runs in a worker thread, so it may block on a handle call.
        return self.adder.remote(int(request.query_params["x"])).result()


@serve.deployment
def plus_one(x: int) -> int:
    import logging

    logging.getLogger("user.code").info("adding one to %s", x)
    return x + 1


def test_sync_method_blocks_on_nested_handle_and_logs_carry_ids(clean, tmp_root) -> None:
    serve.run(SyncCaller.bind(plus_one.bind()), name="sync", route_prefix="/sync")
    r = clean.http.get("/sync", params={"x": 41}, headers={"x-request-id": "trace-me-42"})
    assert r.json() == 42
    logs = tmp_root / "schooner" / "session_latest" / "logs"
    replica_logs = list(logs.glob("replica_sync_plus_one_*.log"))
    assert len(replica_logs) == 1
    line = next(
        line for line in replica_logs[0].read_text().splitlines() if "adding one to 41" in line
    )
    assert "replica sync#plus_one#" in line
    assert "req=trace-me-42" in line  # the request id follows the call across deployments
    assert (logs / "controller.log").exists() and (logs / "proxy.log").exists()


def test_proxy_process_is_restarted_if_it_dies(clean) -> None:
    serve.run(Ok.bind(), name="good", route_prefix="/good")
    from helpers import schooner_processes

    proxies = [pid for pid, cmd in schooner_processes() if "schooner.proxy.main" in cmd]
    assert len(proxies) == 1
    os.kill(proxies[0], signal.SIGKILL)

    def answers() -> bool:
        try:
            return clean.http.get("/good", timeout=2).text == "ok"
        except httpx.HTTPError:
            return False

    wait_for(answers, timeout_s=30, message="a restarted proxy")


def test_bad_targets_and_names_give_clear_errors(clean) -> None:
    with pytest.raises(TypeError, match="bind"):
        serve.run(Ok)  # type: ignore[arg-type]
    with pytest.raises(serve.exceptions.RayServeException, match="does not exist"):
        serve.get_app_handle("nope")
    with pytest.raises(serve.exceptions.ServeConfigError, match="must start with '/'"):
        serve.run(Ok.bind(), name="x", route_prefix="no-slash")
    with pytest.raises(RuntimeError, match="cannot be constructed"):
        Ok()


@serve.deployment(user_config={"version": 1})
class Versioned:
    def __init__(self) -> None:
        self.calls: list[int] = []

    def reconfigure(self, config: dict) -> None:
        self.calls.append(config["version"])

    def get(self) -> tuple[list[int], int]:
        return self.calls, os.getpid()


@pytest.mark.both_backends
def test_user_config_change_reconfigures_live_replicas_without_restart(clean) -> None:
    handle = serve.run(Versioned.bind(), name="v", route_prefix=None)
    calls, pid = handle.get.remote().result()
    assert calls == [1]
    handle = serve.run(
        Versioned.options(user_config={"version": 2}).bind(), name="v", route_prefix=None
    )
    calls, pid_after = handle.get.remote().result()
    assert (calls, pid_after) == ([1, 2], pid)  # same process, reconfigure() called again
    handle = serve.run(
        Versioned.options(ray_actor_options={"num_cpus": 0.5}, user_config={"version": 2}).bind(),
        name="v",
        route_prefix=None,
    )
    calls, pid_restarted = handle.get.remote().result()
    assert pid_restarted != pid and calls == [2]  # a restart-cost change replaces the replica


@serve.deployment(max_ongoing_requests=2)
class Counted:
    def __init__(self) -> None:
        self.active = 0
        self.peak = 0

    async def _work(self) -> int:
        import asyncio

        self.active += 1
        self.peak = max(self.peak, self.active)
        await asyncio.sleep(0.3)
        self.active -= 1
        return self.peak

    async def __call__(self, request: Request) -> int:
        return await self._work()

    async def work(self) -> int:
        return await self._work()

    async def peak_seen(self) -> int:
        return self.peak


def test_max_ongoing_requests_holds_across_callers(clean) -> None:
    """The proxy and a driver each keep to the limit; the replica holds the sum to it too."""
    import concurrent.futures

    handle = serve.run(Counted.bind(), name="counted", route_prefix="/counted")
    with concurrent.futures.ThreadPoolExecutor(2) as pool:
        http_calls = [pool.submit(httpx.get, f"{clean.url}/counted", timeout=30) for _ in range(2)]
        handle_calls = [handle.work.remote() for _ in range(2)]
        assert all(c.result().status_code == 200 for c in http_calls)
        assert all(r.result() <= 2 for r in handle_calls)
    assert handle.peak_seen.remote().result() == 2


@pytest.mark.both_backends
def test_status_and_details_describe_the_running_replicas(clean) -> None:
    """serve.status() and the REST API's details body (here through the controller, which
    serves it) agree with where the replicas really run."""
    from schooner import _core

    handle = serve.run(Ok.options(num_replicas=2).bind(), name="good", route_prefix="/good")
    app_status = serve.status().applications["good"]
    assert app_status.status == "RUNNING"
    assert app_status.deployments["Ok"].replica_states == {"RUNNING": 2}
    details = _core.get_core().call_controller_sync("details", None)
    app = details["applications"]["good"]
    assert (app["status"], app["route_prefix"]) == ("RUNNING", "/good")
    replicas = app["deployments"]["Ok"]["replicas"]
    assert len(replicas) == 2
    for replica in replicas:
        assert replica["state"] == "RUNNING"
        assert replica["node_id"] and replica["node_ip"] and replica["worker_id"]
        assert replica["actor_name"] == f"SERVE_REPLICA::good#Ok#{replica['replica_id']}"
    seen = {handle.pid.remote().result() for _ in range(20)}
    assert seen <= {replica["pid"] for replica in replicas}
    assert details["proxies"], "a proxy serves HTTP"
    assert all(p["status"] == "HEALTHY" for p in details["proxies"].values())
