"""The admin HTTP server over a real socket, with a fake backend (the HTTP layer only).

Each test runs an :class:`AdminServer` on a free port, on its own event loop
in a background thread, and talks to it with httpx.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import json
import logging
import socket
import threading
from collections.abc import Iterator
from typing import Any

import httpx
import pytest

from schooner.admin.server import (
    AdminServer,
    ScaleNotFound,
    ScaleRejected,
    bind_admin_socket,
)
from schooner.exceptions import RayServeException, ServeConfigError
from schooner.runtime.loop import new_event_loop

TIMEOUT_S = 5.0
TOKEN = "s3cret-token"
APPS = "/api/serve/applications/"
DETAILS: dict[str, Any] = {
    "controller_info": {"node_id": "n1"},
    "proxies": {},
    "applications": {
        "hello": {"name": "hello", "status": "RUNNING", "message": "", "route_prefix": None}
    },
    "target_capacity": None,
}


METRICS_TEXT = b"# TYPE up gauge\nup 1.0\n"


class FakeBackend:
    """Records every call; the test decides what each one does."""

    def __init__(self) -> None:
        self.calls: list[tuple[Any, ...]] = []
        self.put_error: Exception | None = None
        self.scale_error: Exception | None = None
        self.delete_error: Exception | None = None
        self.delete_release: concurrent.futures.Future[None] | None = None
        self.delete_started = threading.Event()
        self.shutdown_called = threading.Event()
        self.logs_error: Exception | None = None

    def details(self, api_type: str | None) -> dict[str, Any]:
        self.calls.append(("details", api_type))
        return DETAILS

    def put_config(self, body: Any) -> None:
        self.calls.append(("put_config", body))
        if self.put_error is not None:
            raise self.put_error

    async def delete_all(self) -> None:
        self.calls.append(("delete_all",))
        self.delete_started.set()
        if self.delete_release is not None:
            await asyncio.wrap_future(self.delete_release)
        if self.delete_error is not None:
            raise self.delete_error

    def scale(self, app: str, deployment: str, target_num_replicas: int) -> None:
        self.calls.append(("scale", app, deployment, target_num_replicas))
        if self.scale_error is not None:
            raise self.scale_error

    def version_info(self) -> dict[str, str]:
        return {"session_name": "session_x", "schooner_version": "0.1.0"}

    def instance_info(self) -> dict[str, Any]:
        return {"address": "unix:///tmp/x.sock", "pid": 42}

    def metrics_text(self) -> bytes:
        return METRICS_TEXT

    async def shutdown(self) -> None:
        self.calls.append(("shutdown",))
        self.shutdown_called.set()

    def controller_logs(self, limit: int) -> list[str]:
        self.calls.append(("controller_logs", limit))
        return ["INFO controller - head ready"]

    async def replica_logs(self, replica_id: str, limit: int) -> list[str]:
        self.calls.append(("replica_logs", replica_id, limit))
        if self.logs_error is not None:
            raise self.logs_error
        return [f"INFO replica {replica_id} - hello"]

    async def start_rollout(self, app: str, body: Any) -> dict[str, Any]:
        self.calls.append(("start_rollout", app, body))
        if body.get("to") == "nope":
            raise ServeConfigError("rollout of application 'app': there is no application 'nope'")
        return {"app": app, "state": "RUNNING"}

    def rollout_status(self, app: str) -> dict[str, Any] | None:
        self.calls.append(("rollout_status", app))
        return {"app": app, "state": "RUNNING"} if app == "app" else None

    async def rollout_control(self, app: str, action: str) -> dict[str, Any]:
        self.calls.append(("rollout_control", app, action))
        if app != "app":
            raise ServeConfigError(f"There is no rollout of application '{app}'.")
        return {"app": app, "state": "PAUSED"}


class Running:
    """An AdminServer on 127.0.0.1:<free port>, served by an event loop in a thread."""

    def __init__(self, backend: FakeBackend, token: str | None, **options: bool) -> None:
        self.loop = new_event_loop()
        self.server = AdminServer(backend, token=token, **options)
        sock = bind_admin_socket("127.0.0.1", 0)
        self.url = f"http://127.0.0.1:{sock.getsockname()[1]}"
        self.thread = threading.Thread(target=self.loop.run_forever, daemon=True)
        self.thread.start()
        self.call(self.server.start(sock))

    def call(self, work: Any) -> Any:
        return asyncio.run_coroutine_threadsafe(work, self.loop).result(TIMEOUT_S)

    def stop(self) -> None:
        self.call(self.server.close())
        self.loop.call_soon_threadsafe(self.loop.stop)
        self.thread.join(TIMEOUT_S)
        self.loop.close()


@pytest.fixture
def backend() -> FakeBackend:
    return FakeBackend()


def _client(backend: FakeBackend, token: str | None) -> Iterator[httpx.Client]:
    running = Running(backend, token)
    try:
        with httpx.Client(base_url=running.url, timeout=TIMEOUT_S) as client:
            yield client
    finally:
        running.stop()


@pytest.fixture
def client(backend: FakeBackend) -> Iterator[httpx.Client]:
    yield from _client(backend, None)


@pytest.fixture
def auth_client(backend: FakeBackend) -> Iterator[httpx.Client]:
    yield from _client(backend, TOKEN)


def assert_text(response: httpx.Response, status: int, text: str) -> None:
    assert response.status_code == status
    assert response.headers["content-type"] == "text/plain; charset=utf-8"
    assert response.text == text


def assert_empty_ok(response: httpx.Response) -> None:
    assert response.status_code == 200
    assert response.content == b""
    assert response.headers["content-length"] == "0"
    assert "content-type" in response.headers


def assert_json(response: httpx.Response, status: int, doc: Any) -> None:
    assert response.status_code == status
    assert response.headers["content-type"] == "application/json; charset=utf-8"
    assert response.json() == doc


# -- version, details --------------------------------------------------------------
def test_version(client: httpx.Client) -> None:
    response = client.get("/api/ray/version")
    assert_json(
        response,
        200,
        {
            "version": "4",
            "ray_version": "2.60.0",
            "ray_commit": "schooner",
            "session_name": "session_x",
            "schooner_version": "0.1.0",
        },
    )


def test_details_are_json_dumps_with_default_separators(
    client: httpx.Client, backend: FakeBackend
) -> None:
    response = client.get(APPS)
    assert response.status_code == 200
    assert response.headers["content-type"] == "application/json; charset=utf-8"
    assert response.content == json.dumps(DETAILS).encode()
    assert b'"target_capacity": null' in response.content
    assert backend.calls == [("details", None)]


@pytest.mark.parametrize(
    ("query", "api_type"),
    [
        ("?api_type=declarative", "declarative"),
        ("?api_type=DECLARATIVE", "declarative"),
        ("?api_type=Imperative", "imperative"),
        ("?api_type=", None),
        ("?other=1", None),
    ],
)
def test_details_api_type(
    client: httpx.Client, backend: FakeBackend, query: str, api_type: str | None
) -> None:
    assert client.get(APPS + query).status_code == 200
    assert backend.calls == [("details", api_type)]


def test_details_bad_api_type(client: httpx.Client, backend: FakeBackend) -> None:
    response = client.get(APPS + "?api_type=bogus")
    assert_text(
        response,
        400,
        "Invalid 'api_type' value: 'bogus'. Must be one of: imperative, declarative",
    )
    assert backend.calls == []


def test_head_answers_like_get_without_body(client: httpx.Client) -> None:
    get = client.get(APPS)
    head = client.head(APPS)
    assert head.status_code == 200
    assert head.content == b""
    assert head.headers["content-length"] == get.headers["content-length"]


# -- PUT, DELETE -------------------------------------------------------------------
def test_put_deploys_and_answers_empty(client: httpx.Client, backend: FakeBackend) -> None:
    doc = {"applications": [{"name": "hello", "import_path": "krhello:app"}]}
    response = client.put(APPS, content=json.dumps(doc))
    assert_empty_ok(response)
    assert backend.calls == [("put_config", doc)]


def test_put_body_not_json(client: httpx.Client, backend: FakeBackend) -> None:
    response = client.put(APPS, content=b'{"applications": [')
    assert response.status_code == 400
    assert response.headers["content-type"] == "text/plain; charset=utf-8"
    assert response.text.startswith("The request body is not valid JSON: ")
    assert "line 1 column 19 (char 18)" in response.text
    assert backend.calls == []


def test_put_invalid_config(client: httpx.Client, backend: FakeBackend) -> None:
    backend.put_error = ServeConfigError("applications: field required")
    assert_text(client.put(APPS, content=b"{}"), 400, "applications: field required")


def test_put_unexpected_error_is_500_with_traceback(
    client: httpx.Client, backend: FakeBackend
) -> None:
    backend.put_error = KeyError("surprise")
    response = client.put(APPS, content=b"{}")
    assert response.status_code == 500
    assert response.headers["content-type"] == "text/plain; charset=utf-8"
    assert response.text.startswith("Traceback (most recent call last):")
    assert "KeyError: 'surprise'" in response.text


def test_delete(client: httpx.Client, backend: FakeBackend) -> None:
    assert_empty_ok(client.delete(APPS))
    assert backend.calls == [("delete_all",)]


def test_delete_error_is_500_with_traceback(client: httpx.Client, backend: FakeBackend) -> None:
    backend.delete_error = RuntimeError("stuck")
    response = client.delete(APPS)
    assert response.status_code == 500
    assert "RuntimeError: stuck" in response.text


def test_slow_delete_does_not_block_other_requests(
    client: httpx.Client, backend: FakeBackend
) -> None:
    backend.delete_release = concurrent.futures.Future()
    with concurrent.futures.ThreadPoolExecutor(1) as pool:
        deleting = pool.submit(client.delete, APPS)
        assert backend.delete_started.wait(TIMEOUT_S)
        with httpx.Client(base_url=str(client.base_url), timeout=TIMEOUT_S) as other:
            assert other.get(APPS).status_code == 200
            assert other.get("/api/ray/version").status_code == 200
        assert not deleting.done()
        backend.delete_release.set_result(None)
        assert_empty_ok(deleting.result(TIMEOUT_S))


def test_close_answers_pending_delete_with_503(backend: FakeBackend) -> None:
    backend.delete_release = concurrent.futures.Future()
    running = Running(backend, None)
    try:
        with (
            httpx.Client(base_url=running.url, timeout=TIMEOUT_S) as client,
            concurrent.futures.ThreadPoolExecutor(1) as pool,
        ):
            deleting = pool.submit(client.delete, APPS)
            assert backend.delete_started.wait(TIMEOUT_S)
            running.call(running.server.close())
            assert_text(deleting.result(TIMEOUT_S), 503, "The admin server is shutting down.")
    finally:
        running.stop()


# -- routing -----------------------------------------------------------------------
@pytest.mark.parametrize(
    "path", ["/api/serve/applications", "/nope", "/api/v1/applications/a/deployments/b"]
)
def test_unknown_path_is_404(client: httpx.Client, path: str) -> None:
    assert_text(client.get(path), 404, "404: Not Found")


@pytest.mark.parametrize(
    ("method", "path", "allow"),
    [
        ("POST", APPS, "DELETE,GET,HEAD,PUT"),
        ("PUT", "/api/ray/version", "GET,HEAD"),
        ("POST", "/api/healthz", "GET,HEAD"),
        ("GET", "/api/v1/applications/a/deployments/b/scale", "POST"),
        ("GET", "/api/schooner/shutdown", "POST"),
    ],
)
def test_wrong_method_is_405(client: httpx.Client, method: str, path: str, allow: str) -> None:
    response = client.request(method, path)
    assert_text(response, 405, "405: Method Not Allowed")
    assert response.headers["allow"] == allow


# -- scale -------------------------------------------------------------------------
SCALE = "/api/v1/applications/{app}/deployments/{dep}/scale"


def test_scale(client: httpx.Client, backend: FakeBackend) -> None:
    response = client.post(
        SCALE.format(app="my%20app", dep="a%2Fb"), json={"target_num_replicas": 3}
    )
    assert_json(
        response,
        200,
        {"message": "Scaling request received. Deployment will get scaled asynchronously."},
    )
    assert backend.calls == [("scale", "my app", "a/b", 3)]


def test_scale_to_zero(client: httpx.Client, backend: FakeBackend) -> None:
    response = client.post(SCALE.format(app="a", dep="d"), json={"target_num_replicas": 0})
    assert response.status_code == 200
    assert backend.calls == [("scale", "a", "d", 0)]


@pytest.mark.parametrize(
    ("body", "wrong"),
    [
        (b"nope", "not valid JSON"),
        (b"[3]", "JSON object"),
        (b"{}", "'target_num_replicas' is required"),
        (b'{"target_num_replicas": "3"}', "must be an integer"),
        (b'{"target_num_replicas": true}', "must be an integer"),
        (b'{"target_num_replicas": 1.5}', "must be an integer"),
        (b'{"target_num_replicas": -1}', "must be >= 0"),
    ],
)
def test_scale_bad_body(
    client: httpx.Client, backend: FakeBackend, body: bytes, wrong: str
) -> None:
    response = client.post(SCALE.format(app="a", dep="d"), content=body)
    assert response.status_code == 400
    assert response.headers["content-type"] == "application/json; charset=utf-8"
    error = response.json()["error"]
    assert error.startswith("Invalid request body: ")
    assert wrong in error
    assert backend.calls == []


@pytest.mark.parametrize(
    ("exc", "status", "error"),
    [
        (ScaleNotFound(), 404, "Application or Deployment not found"),
        (ScaleNotFound("Application 'a' not found"), 404, "Application 'a' not found"),
        (ScaleRejected("Deployment is deleted"), 412, "Deployment is deleted"),
        (RuntimeError("boom"), 503, "Internal Server Error"),
    ],
)
def test_scale_errors(
    client: httpx.Client, backend: FakeBackend, exc: Exception, status: int, error: str
) -> None:
    backend.scale_error = exc
    response = client.post(SCALE.format(app="a", dep="d"), json={"target_num_replicas": 1})
    assert_json(response, status, {"error": error})


# -- health, Schooner's own routes ---------------------------------------------------
@pytest.mark.parametrize(
    ("path", "body"),
    [
        ("/api/gcs_healthz", "success"),
        ("/api/local_raylet_healthz", "success"),
        ("/api/healthz", "raylet: success\ngcs: success"),
    ],
)
def test_health(client: httpx.Client, path: str, body: str) -> None:
    response = client.get(path)
    assert response.status_code == 200
    assert response.headers["content-type"] == "application/text; charset=utf-8"
    assert response.text == body


def test_instance(client: httpx.Client) -> None:
    assert_json(client.get("/api/schooner/instance"), 200, FakeBackend().instance_info())


def test_shutdown_answers_first_then_shuts_down_once(
    client: httpx.Client, backend: FakeBackend
) -> None:
    response = client.post("/api/schooner/shutdown")
    assert_json(response, 200, {"message": "shutting down"})
    assert_json(client.post("/api/schooner/shutdown"), 200, {"message": "shutting down"})
    assert backend.shutdown_called.wait(TIMEOUT_S)
    # Health answers once more on the same connection, then shutdown has run exactly once.
    assert client.get("/api/healthz").status_code == 200
    assert backend.calls == [("shutdown",)]


# -- auth --------------------------------------------------------------------------
def test_auth_missing_token_is_401(auth_client: httpx.Client, backend: FakeBackend) -> None:
    assert_text(auth_client.get(APPS), 401, "Unauthorized: Missing authentication token")
    assert_text(auth_client.get("/nope"), 401, "Unauthorized: Missing authentication token")
    assert backend.calls == []


@pytest.mark.parametrize(
    "headers",
    [
        {"Authorization": "Bearer wrong"},
        {"X-Ray-Authorization": "Bearer wrong"},
        {"Cookie": "ray-authentication-token=wrong"},
        {"Authorization": TOKEN},  # not a Bearer value
        {"Authorization": "Bearer wrong", "X-Ray-Authorization": f"Bearer {TOKEN}"},
    ],
)
def test_auth_wrong_token_is_403(
    auth_client: httpx.Client, backend: FakeBackend, headers: dict[str, str]
) -> None:
    response = auth_client.get(APPS, headers=headers)
    assert_text(response, 403, "Forbidden: Invalid authentication token")
    assert backend.calls == []


@pytest.mark.parametrize(
    "headers",
    [
        {"Authorization": f"Bearer {TOKEN}"},
        {"Authorization": f"bearer {TOKEN}"},
        {"X-Ray-Authorization": f"Bearer {TOKEN}"},
        {"Cookie": f"theme=dark; ray-authentication-token={TOKEN}"},
        {"Authorization": f"Bearer {TOKEN}", "Cookie": "ray-authentication-token=wrong"},
    ],
)
def test_auth_token_accepted(
    auth_client: httpx.Client, backend: FakeBackend, headers: dict[str, str]
) -> None:
    assert auth_client.get(APPS, headers=headers).status_code == 200
    assert_empty_ok(auth_client.put(APPS, content=b"{}", headers=headers))
    assert backend.calls == [("details", None), ("put_config", {})]


def test_health_needs_no_token(auth_client: httpx.Client) -> None:
    for path in ("/api/gcs_healthz", "/api/local_raylet_healthz", "/api/healthz"):
        assert auth_client.get(path).status_code == 200


# -- logging, socket -----------------------------------------------------------------
def test_access_log(client: httpx.Client, caplog: pytest.LogCaptureFixture) -> None:
    with caplog.at_level(logging.INFO, logger="schooner.admin"):
        client.get("/api/ray/version")
        client.get("/nope")
    lines = [r.getMessage() for r in caplog.records if r.name == "schooner.admin"]
    assert len(lines) == 2
    assert lines[0].startswith("GET /api/ray/version 200 ")
    assert lines[1].startswith("GET /nope 404 ")
    assert lines[0].endswith("ms")


def test_bind_admin_socket_port_in_use() -> None:
    taken = bind_admin_socket("127.0.0.1", 0)
    port = taken.getsockname()[1]
    try:
        with pytest.raises(RayServeException, match=rf"127\.0\.0\.1:{port}.*--admin-port"):
            bind_admin_socket("127.0.0.1", port)
    finally:
        taken.close()


def test_bind_admin_socket_ipv6() -> None:
    if not socket.has_ipv6:
        pytest.skip("no IPv6")
    try:
        sock = bind_admin_socket("::1", 0)
    except RayServeException:
        pytest.skip("::1 is not available here")
    try:
        assert sock.family == socket.AF_INET6
    finally:
        sock.close()


def test_metrics_in_prometheus_text_format(client: httpx.Client) -> None:
    response = client.get("/metrics")
    assert response.status_code == 200
    assert response.headers["content-type"].startswith("text/plain; version=0.0.4")
    assert response.content == METRICS_TEXT


def test_metrics_need_the_token_on_the_admin_port(auth_client: httpx.Client) -> None:
    assert auth_client.get("/metrics").status_code == 401


def test_metrics_port_serves_metrics_alone_without_token(backend: FakeBackend) -> None:
    running = Running(backend, TOKEN, metrics_only=True)
    try:
        with httpx.Client(base_url=running.url, timeout=TIMEOUT_S) as client:
            assert client.get("/metrics").content == METRICS_TEXT
            assert client.get(APPS).status_code == 404
            assert client.post("/metrics").status_code == 405
    finally:
        running.stop()


ROLLOUTS = "/api/schooner/rollouts/"


def test_rollout_routes(client: httpx.Client, backend: FakeBackend) -> None:
    assert_json(client.get(ROLLOUTS + "app"), 200, {"app": "app", "state": "RUNNING"})
    missing = {"error": "Application 'other' has had no rollout."}
    assert_json(client.get(ROLLOUTS + "other"), 404, missing)
    response = client.post(ROLLOUTS + "my%20app", json={"to": "v2", "steps": [50, 100]})
    assert_json(response, 200, {"app": "my app", "state": "RUNNING"})
    assert_json(client.post(ROLLOUTS + "app/pause"), 200, {"app": "app", "state": "PAUSED"})
    assert backend.calls == [
        ("rollout_status", "app"),
        ("rollout_status", "other"),
        ("start_rollout", "my app", {"to": "v2", "steps": [50, 100]}),
        ("rollout_control", "app", "pause"),
    ]


def test_rollout_errors_are_400_with_the_message(client: httpx.Client) -> None:
    response = client.post(ROLLOUTS + "app", json={"to": "nope"})
    assert_json(
        response, 400, {"error": "rollout of application 'app': there is no application 'nope'"}
    )
    response = client.post(ROLLOUTS + "other/abort")
    assert_json(response, 400, {"error": "There is no rollout of application 'other'."})
    response = client.post(ROLLOUTS + "app", content=b"{not json")
    assert response.status_code == 400 and "not valid JSON" in response.json()["error"]
    assert client.post(ROLLOUTS + "app/restart").status_code == 404
    assert client.delete(ROLLOUTS + "app").status_code == 405
