"""Schooner on a Ray cluster: what only the Ray backend does (issue 11).

Placement by resources, ``max_replicas_per_node``, placement groups, proxies on
every node, replica and node death, an instance that outlives its driver, the
authenticated data path, and the REST details Ray's tools read. The cluster is
the session's ``ray_cluster`` (a head and ``node_a``/``node_b`` workers); tests
that kill nodes add their own first. Most tests share the module's instance
(``ray_clean``); those that need another one (EveryNode, a driver in a
subprocess) stop it first and leave none behind.
"""

from __future__ import annotations

import os
import socket
import subprocess
import sys
import textwrap
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
from helpers import Load, free_port, wait_for
from ray_cluster import (
    LocalRayCluster,
    RayNode,
    ray_connect,
    ray_disconnect_and_check,
    schooner_actors,
)
from starlette.requests import Request

import schooner as serve

ray = pytest.importorskip("ray", reason="ray is not installed: pip install -e '.[ray]'")

pytestmark = pytest.mark.ray

NAMESPACE = "schooner"


# -- fixtures and helpers ----------------------------------------------------------------
@pytest.fixture
def ray_clean(_module_instances: Any, request: pytest.FixtureRequest) -> Iterator[Any]:
    """The module's instance on the Ray cluster; applications are deleted after each test."""
    inst = _module_instances.use("ray", request)
    yield inst
    for name in list(serve.status().applications):
        serve.delete(name)


@pytest.fixture
def no_instance(_module_instances: Any) -> Iterator[None]:
    """No instance of this module is running (for tests that start their own)."""
    _module_instances.stop()
    yield


def node_with(cluster: LocalRayCluster, resource: str) -> RayNode:
    return next(n for n in cluster.nodes if resource in n.resources)


def rest_details() -> dict[str, Any]:
    """``GET /api/serve/applications/`` from the instance's admin REST API."""
    info = serve.api.attached_instance()
    assert info is not None and info.get("backend") == "ray", info
    resp = httpx.get(f"{info['admin_url']}/api/serve/applications/", timeout=30)
    assert resp.status_code == 200, resp.text
    body: dict[str, Any] = resp.json()
    return body


def replicas_of(app: str, deployment: str) -> list[dict[str, Any]]:
    return list(rest_details()["applications"][app]["deployments"][deployment]["replicas"])


def running_replicas(app: str, deployment: str, n: int) -> list[dict[str, Any]]:
    """Wait until ``deployment`` has exactly ``n`` replicas, all RUNNING."""

    def ready() -> list[dict[str, Any]] | None:
        replicas = replicas_of(app, deployment)
        if len(replicas) == n and all(r["state"] == "RUNNING" for r in replicas):
            return replicas
        return None

    result: list[dict[str, Any]] = wait_for(
        ready, timeout_s=90, interval_s=0.2, message=f"{n} RUNNING replicas of {deployment}"
    )
    return result


def deploy_without_waiting(app: Any, name: str, route_prefix: str | None) -> None:
    """Deploy and return at once (serve.run would wait for RUNNING)."""
    from schooner import _core
    from schooner.deployment import build_app

    _core.get_core().call_controller_sync("deploy_app", build_app(app, name, route_prefix))


def waiting_message(app: str, deployment: str) -> str:
    status = serve.status().applications.get(app)
    if status is None or status.status == "RUNNING":
        return ""
    return str(status.deployments[deployment].message)


def answers(url: str) -> bool:
    try:
        return httpx.get(url, timeout=5).status_code == 200
    except httpx.HTTPError:
        return False


# -- deployments -------------------------------------------------------------------------
@serve.deployment(ray_actor_options={"num_cpus": 0.25})
class Where:
    """Says where it runs, as Ray sees it."""

    def __call__(self, request: Request) -> dict[str, Any]:
        return self.where()

    def where(self) -> dict[str, Any]:
        import ray

        context = ray.get_runtime_context()
        return {
            "node_id": context.get_node_id(),
            "actor_id": context.get_actor_id(),
            "worker_id": context.get_worker_id(),
            "pid": os.getpid(),
        }

    def placement(self, child_bundle: int) -> dict[str, Any]:
        """The placement group this replica runs in, and where a task it starts in bundle
        ``child_bundle`` of that group runs."""
        import ray
        from ray.util.placement_group import get_current_placement_group
        from ray.util.scheduling_strategies import PlacementGroupSchedulingStrategy

        group = get_current_placement_group()
        assert group is not None, "the replica is not in a placement group"
        table = ray.util.placement_group_table(group)

        @ray.remote(num_cpus=0.25)
        def child_node() -> str:
            return str(ray.get_runtime_context().get_node_id())

        in_bundle = PlacementGroupSchedulingStrategy(
            group, placement_group_bundle_index=child_bundle
        )
        return {
            "node_id": ray.get_runtime_context().get_node_id(),
            "strategy": table["strategy"],
            "bundles": {int(k): v for k, v in table["bundles"].items()},
            "child_node": ray.get(
                child_node.options(scheduling_strategy=in_bundle).remote(), timeout=60
            ),
        }


# -- placement ---------------------------------------------------------------------------
def test_replicas_run_on_the_node_that_has_their_resource(
    ray_clean: Any, ray_cluster: LocalRayCluster
) -> None:
    for resource in ("node_a", "node_b", "head_node"):
        options = {"num_cpus": 0.25, "resources": {resource: 1}}
        handle = serve.run(
            Where.options(ray_actor_options=options).bind(),
            name=resource,
            route_prefix=f"/{resource}",
        )
        expected = node_with(ray_cluster, resource).node_id
        assert handle.where.remote().result()["node_id"] == expected
        # Over HTTP: the head's proxy reaches a replica on another node (TCP between nodes).
        assert ray_clean.http.get(f"/{resource}").json()["node_id"] == expected
        (replica,) = replicas_of(resource, "Where")
        assert replica["node_id"] == expected


def test_max_replicas_per_node_spreads_and_says_when_no_node_is_left(
    ray_clean: Any, ray_cluster: LocalRayCluster
) -> None:
    spread = Where.options(num_replicas=3, max_replicas_per_node=1)
    handle = serve.run(spread.bind(), name="spread", route_prefix=None)
    replicas = running_replicas("spread", "Where", 3)
    assert {r["node_id"] for r in replicas} == {n.node_id for n in ray_cluster.nodes}
    seen = {handle.where.remote().result()["node_id"] for _ in range(30)}
    assert seen <= {n.node_id for n in ray_cluster.nodes}

    deploy_without_waiting(
        Where.options(num_replicas=4, max_replicas_per_node=1).bind(), "spread", None
    )
    message = wait_for(
        lambda: waiting_message("spread", "Where"), timeout_s=60, message="a waiting reason"
    )
    assert "max_replicas_per_node" in message
    status = serve.status().applications["spread"]
    assert status.status != "RUNNING"
    assert status.deployments["Where"].replica_states.get("RUNNING") == 3  # they keep serving


def test_placement_group_bundles_and_strategy(ray_clean: Any, ray_cluster: LocalRayCluster) -> None:
    """STRICT_SPREAD puts bundle 0 on node_b and bundle 1 on node_a: the replica runs in
    bundle 0, and a task it starts in bundle 1 runs on node_a."""
    bundles = [{"CPU": 0.25, "node_b": 1}, {"CPU": 0.25, "node_a": 1}]
    grouped = Where.options(
        ray_actor_options={"num_cpus": 0.25},
        placement_group_bundles=bundles,
        placement_group_strategy="STRICT_SPREAD",
    )
    handle = serve.run(grouped.bind(), name="grouped", route_prefix=None)
    info = handle.placement.remote(1).result()
    assert info["strategy"] == "STRICT_SPREAD"
    assert info["bundles"] == {0: bundles[0], 1: bundles[1]}
    assert info["node_id"] == node_with(ray_cluster, "node_b").node_id
    assert info["child_node"] == node_with(ray_cluster, "node_a").node_id
    (replica,) = replicas_of("grouped", "Where")
    assert replica["node_id"] == info["node_id"]


def test_a_replica_that_cannot_be_placed_names_the_resource(ray_clean: Any) -> None:
    deploy_without_waiting(
        Where.options(ray_actor_options={"num_cpus": 0.25, "resources": {"nowhere": 1}}).bind(),
        "unplaceable",
        None,
    )
    message = wait_for(
        lambda: waiting_message("unplaceable", "Where"), timeout_s=60, message="a reason"
    )
    assert "nowhere" in message
    assert serve.status().applications["unplaceable"].status != "RUNNING"


# -- REST details ------------------------------------------------------------------------
def test_rest_details_carry_ray_ids_for_replicas_and_proxies(
    ray_clean: Any, ray_cluster: LocalRayCluster
) -> None:
    options = {"num_cpus": 0.25, "resources": {"node_a": 1}}
    handle = serve.run(
        Where.options(ray_actor_options=options).bind(), name="ids", route_prefix="/ids"
    )
    where = handle.where.remote().result()
    body = rest_details()
    (replica,) = body["applications"]["ids"]["deployments"]["Where"]["replicas"]
    node_a = node_with(ray_cluster, "node_a")
    assert replica["node_id"] == node_a.node_id == where["node_id"]
    assert replica["node_ip"] == node_a.node.node_ip_address
    assert replica["actor_id"] == where["actor_id"]
    assert replica["pid"] == where["pid"]
    assert replica["actor_name"] == f"SERVE_REPLICA::ids#Where#{replica['replica_id']}"
    assert replica["state"] == "RUNNING"
    assert replica["worker_id"] == where["worker_id"]
    ray.get_actor(replica["actor_name"], namespace=NAMESPACE)  # the actor has that name
    head = ray_cluster.head.node_id
    proxy = body["proxies"][head]
    assert proxy["node_id"] == head and proxy["status"] == "HEALTHY"
    assert proxy["node_ip"] and proxy["actor_name"] == f"SERVE_PROXY_ACTOR-{head}"
    assert body["controller_info"]["node_id"] == head


# -- failures ----------------------------------------------------------------------------
def test_a_killed_replica_actor_is_replaced_and_http_keeps_answering(
    ray_clean: Any,
) -> None:
    serve.run(Where.options(num_replicas=2).bind(), name="victim", route_prefix="/victim")
    before = running_replicas("victim", "Where", 2)
    with Load(f"{ray_clean.url}/victim", threads=4) as load:
        doomed = before[0]
        ray.kill(ray.get_actor(doomed["actor_name"], namespace=NAMESPACE), no_restart=True)

        def replaced() -> bool:
            replicas = replicas_of("victim", "Where")
            ids = {r["replica_id"] for r in replicas}
            return (
                doomed["replica_id"] not in ids
                and len(replicas) == 2
                and all(r["state"] == "RUNNING" for r in replicas)
            )

        wait_for(replaced, timeout_s=90, interval_s=0.2, message="a replacement replica")
        mark = load.ok
        wait_for(lambda: load.ok > mark + 20, message="answers after the replacement")
    # Only requests running on the killed replica may fail (4 clients: at most 4).
    assert len(load.failures) <= 4, load.failures
    pids = {answer["pid"] for answer in load.since(mark)}  # type: ignore[index]
    assert doomed["pid"] not in pids


@pytest.mark.slow
@pytest.mark.timeout(300)  # nodes start and die; each wait has its own deadline
def test_node_death_moves_its_replicas_and_the_others_keep_serving(
    ray_clean: Any, ray_cluster: LocalRayCluster
) -> None:
    spot_1 = ray_cluster.add_worker({"spot": 1}, num_cpus=1)
    spot_2 = ray_cluster.add_worker({"spot": 1}, num_cpus=1)
    try:
        mover = Where.options(ray_actor_options={"num_cpus": 0.25, "resources": {"spot": 1}})
        handle = serve.run(mover.bind(), name="mover", route_prefix="/mover")
        serve.run(Where.options(num_replicas=2).bind(), name="steady", route_prefix="/steady")
        first = handle.where.remote().result()["node_id"]
        doomed, other = (spot_1, spot_2) if first == spot_1.node_id else (spot_2, spot_1)
        assert first == doomed.node_id
        with Load(f"{ray_clean.url}/steady", threads=2) as load:
            ray_cluster.kill_node(doomed)

            def moved() -> bool:
                return bool(handle.where.remote().result(timeout_s=10)["node_id"] == other.node_id)

            wait_for(moved, timeout_s=120, interval_s=0.5, message="the replica on the other node")
            assert ray_clean.http.get("/mover").json()["node_id"] == other.node_id
        assert load.failures == [], "the other application lost requests"
        assert serve.status().applications["steady"].status == "RUNNING"
    finally:
        for node in (spot_1, spot_2):
            if node in ray_cluster.workers:
                ray_cluster.kill_node(node)


@pytest.mark.slow
@pytest.mark.timeout(300)  # nodes start and die; each wait has its own deadline
def test_node_death_without_room_waits_with_a_reason_until_a_node_joins(
    ray_clean: Any, ray_cluster: LocalRayCluster
) -> None:
    gpuish = ray_cluster.add_worker({"accel": 1}, num_cpus=1)
    added: RayNode | None = None
    try:
        needy = Where.options(ray_actor_options={"num_cpus": 0.25, "resources": {"accel": 1}})
        handle = serve.run(needy.bind(), name="needy", route_prefix="/needy")
        assert handle.where.remote().result()["node_id"] == gpuish.node_id
        ray_cluster.kill_node(gpuish)
        # First the replica is reported dead, then its replacement waits, saying for what.
        message = wait_for(
            lambda: (
                (m := waiting_message("needy", "Where"))
                and "Waiting for resources" in m
                and "accel" in m
                and m
            ),
            timeout_s=90,
            interval_s=0.5,
            message="a reason naming the missing resource in serve.status()",
        )
        assert "Waiting for resources" in message, message
        added = ray_cluster.add_worker({"accel": 1}, num_cpus=1)
        wait_for(
            lambda: serve.status().applications["needy"].status == "RUNNING",
            timeout_s=120,
            interval_s=0.5,
            message="the replica to start on the new node",
        )
        assert handle.where.remote().result()["node_id"] == added.node_id
        assert ray_clean.http.get("/needy").json()["node_id"] == added.node_id
    finally:
        serve.delete("needy")
        for node in (gpuish, added):
            if node is not None and node in ray_cluster.workers:
                ray_cluster.kill_node(node)


# -- the authenticated data path ---------------------------------------------------------
class _SideEffect:
    """Unpickling this creates a directory: proof that a frame was decoded."""

    def __init__(self, path: Path) -> None:
        self.path = str(path)

    def __reduce__(self) -> tuple[Any, tuple[str]]:
        return (os.mkdir, (self.path,))


def _evil_frame(marker: Path) -> bytes:
    """A REQ frame (the layout of schooner.rpc.codec) whose payload runs os.mkdir."""
    from schooner.rpc import codec
    from schooner.rpc.connection import REQ

    payload = ("call", (_SideEffect(marker),), {}, 0)
    frame = b"".join(bytes(chunk) for chunk in codec.encode(payload, REQ, 1))
    codec.decode(memoryview(frame)[4:])  # decoding it really has the side effect
    assert marker.is_dir()
    marker.rmdir()
    return frame


def _read_until_closed(sock: socket.socket, timeout_s: float) -> bytes:
    """What the peer sends until it closes; fails if it keeps the connection open."""
    sock.settimeout(timeout_s)
    received = b""
    try:
        while chunk := sock.recv(65536):
            received += chunk
    except ConnectionResetError:
        pass
    except TimeoutError:
        pytest.fail(f"the server kept an unauthenticated connection open ({received!r})")
    return received


def _tcp(address: str) -> tuple[str, int]:
    assert address.startswith("tcp://"), address
    host, port = address[len("tcp://") :].rsplit(":", 1)
    return host.strip("[]"), int(port)


def test_a_connection_without_the_secret_is_closed_before_anything_is_unpickled(
    ray_clean: Any, tmp_path: Path
) -> None:
    from schooner import _core
    from schooner.rpc import auth

    handle = serve.run(Where.bind(), name="guarded", route_prefix=None)
    handle.where.remote().result()
    key = "replicas:guarded#Where"  # what routers subscribe to: the replicas' addresses
    _, replica_set = _core.get_core().call_controller_sync("listen", {key: -1}, 0)[key]
    addresses = [_tcp(r.address) for r in replica_set.replicas]
    info = serve.api.attached_instance()
    assert info is not None
    addresses.append(_tcp(info["controller_address"]))
    marker = tmp_path / "unpickled"
    evil = _evil_frame(marker)
    for host, port in addresses:
        # 1. A frame straight away, without the handshake.
        with socket.create_connection((host, port), timeout=10) as sock:
            sock.sendall(evil)
            _read_until_closed(sock, auth.HANDSHAKE_TIMEOUT_S + 10)
        # 2. A well-formed client hello with a wrong proof, then the frame.
        with socket.create_connection((host, port), timeout=10) as sock:
            sock.settimeout(10)
            hello = b""
            while len(hello) < len(auth.MAGIC) + auth.NONCE_BYTES:
                chunk = sock.recv(64)
                assert chunk, "the server closed before its hello"
                hello += chunk
            assert hello.startswith(auth.MAGIC)
            try:
                sock.sendall(auth.MAGIC + os.urandom(auth.NONCE_BYTES) + os.urandom(32) + evil)
            except (BrokenPipeError, ConnectionResetError):
                pass
            answer = _read_until_closed(sock, auth.HANDSHAKE_TIMEOUT_S + 10)
            assert answer in (b"", auth.REJECT)
    # The replica and the controller served calls since: they have read what was sent.
    assert handle.where.remote().result()["pid"]
    assert serve.status().applications["guarded"].status == "RUNNING"
    assert not marker.exists(), "an unauthenticated frame was unpickled"


# -- instances of their own (the module's shared instance is stopped first) --------------
@pytest.mark.slow
@pytest.mark.timeout(300)  # nodes start and die; each wait has its own deadline
def test_every_node_proxies_follow_the_nodes(
    no_instance: None, ray_cluster: LocalRayCluster
) -> None:
    port = free_port()
    ray_connect(ray_cluster)
    try:
        serve.start(proxy_location="EveryNode", http_options={"host": "127.0.0.1", "port": port})
        serve.run(Where.bind(), name="everywhere", route_prefix="/")

        def healthy_proxies() -> set[str]:
            proxies = rest_details()["proxies"]
            return {n for n, p in proxies.items() if p["status"] == "HEALTHY"}

        base = {n.node_id for n in ray_cluster.nodes}
        wait_for(lambda: healthy_proxies() == base, timeout_s=90, message="a proxy per node")
        for node_id, proxy in rest_details()["proxies"].items():
            assert proxy["actor_name"] == f"SERVE_PROXY_ACTOR-{node_id}"
            assert proxy["node_ip"]
        for node_id in base - {ray_cluster.head.node_id}:
            ray.get_actor(f"SERVE_PROXY_ACTOR-{node_id}", namespace=NAMESPACE)
        # The proxies share the port on this one machine: every connection is answered.
        for _ in range(20):
            with httpx.Client(timeout=10) as client:  # a new connection each time
                assert client.get(f"http://127.0.0.1:{port}/-/healthz").status_code == 200
                assert client.get(f"http://127.0.0.1:{port}/").status_code == 200

        joined = ray_cluster.add_worker({"node_joined": 1}, num_cpus=1)
        try:
            wait_for(
                lambda: healthy_proxies() == base | {joined.node_id},
                timeout_s=90,
                message="a proxy on the node that joined",
            )
        finally:
            ray_cluster.kill_node(joined)
        wait_for(lambda: healthy_proxies() == base, timeout_s=90, message="its proxy to go")
        assert answers(f"http://127.0.0.1:{port}/")
    finally:
        ray_disconnect_and_check()


DRIVER = textwrap.dedent(
    """
    import sys
    import ray
    import schooner as serve

    @serve.deployment(ray_actor_options={"num_cpus": 0.25})
    def hello(request) -> str:
        return "hello from the cluster"

    ray.init(address=sys.argv[1], log_to_driver=False)
    serve.start(http_options={"host": "127.0.0.1", "port": int(sys.argv[2])})
    serve.run(hello.bind(), name="outlives", route_prefix="/hello")
    print("deployed", flush=True)
    """
)


@pytest.mark.slow
@pytest.mark.timeout(300)  # nodes start and die; each wait has its own deadline
def test_the_instance_outlives_the_driver_that_created_it(
    no_instance: None, ray_cluster: LocalRayCluster, tmp_path: Path
) -> None:
    port = free_port()
    script = tmp_path / "driver.py"
    script.write_text(DRIVER)
    started = time.monotonic()
    proc = subprocess.run(
        [sys.executable, str(script), ray_cluster.address, str(port)],
        capture_output=True,
        text=True,
        timeout=180,
        stdin=subprocess.DEVNULL,
        cwd=tmp_path,
    )
    assert proc.returncode == 0, proc.stderr[-4000:]
    assert "deployed" in proc.stdout
    url = f"http://127.0.0.1:{port}/hello"
    try:
        assert httpx.get(url, timeout=10).text == "hello from the cluster"  # driver gone
        ray_connect(ray_cluster)  # a second driver
        assert serve.status().applications["outlives"].status == "RUNNING"
        info = serve.api.attached_instance()
        assert info is not None and info["backend"] == "ray" and info["http_port"] == port
        assert info["node_id"] == ray_cluster.head.node_id
        actors = schooner_actors()
        assert "SCHOONER_CONTROLLER" in actors
        assert any(name.startswith("SERVE_REPLICA::outlives#hello#") for name in actors)
        assert httpx.get(url, timeout=10).text == "hello from the cluster"
    finally:
        import ray as ray_module

        if not ray_module.is_initialized():
            ray_connect(ray_cluster)
        ray_disconnect_and_check()  # serve.shutdown(): every actor goes
    assert not answers(url)
    assert time.monotonic() - started < 240
