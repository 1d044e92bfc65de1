"""The admin server's dashboard routes: the page's files, Ray's token cookie flow and the
log tails, over a real socket with the fake backend of test_admin_server.py."""

from __future__ import annotations

import asyncio
from collections.abc import Iterator
from types import SimpleNamespace
from typing import Any

import httpx
import pytest
from test_admin_server import APPS, TIMEOUT_S, TOKEN, FakeBackend, Running, assert_json, assert_text

from schooner.admin.server import (
    LOG_LINES,
    MAX_LOG_LINES,
    ReplicaLogsUnavailable,
    ReplicaNotFound,
)
from schooner.controller import head_api as head_module
from schooner.controller.head_api import AdminAPI
from schooner.rpc.connection import ConnectionLost
from schooner.schema import ReplicaState

STATIC = ("/static/dashboard.js", "/static/dashboard.css")


@pytest.fixture
def backend() -> FakeBackend:
    return FakeBackend()


def _client(
    backend: FakeBackend, token: str | None, probes_only: bool = False
) -> Iterator[httpx.Client]:
    running = Running(backend, token)
    running.server._probes_only = probes_only
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


# -- the page's files ------------------------------------------------------------------
def test_page_is_html_never_cached_and_names_versioned_assets(client: httpx.Client) -> None:
    response = client.get("/")
    assert response.status_code == 200
    assert response.headers["content-type"] == "text/html; charset=utf-8"
    assert response.headers["cache-control"] == "no-store"
    assert response.headers["x-content-type-options"] == "nosniff"
    page = response.text
    assert "<title>Schooner · Serve</title>" in page
    for path in STATIC:
        assert f'"{path[1:]}?v=' in page  # relative: works behind a path prefix too
    assert "http://" not in page and "https://" not in page  # nothing from elsewhere


@pytest.mark.parametrize(
    ("path", "content_type"),
    [
        ("/static/dashboard.js", "text/javascript; charset=utf-8"),
        ("/static/dashboard.css", "text/css; charset=utf-8"),
    ],
)
def test_assets_are_cached_for_a_year(client: httpx.Client, path: str, content_type: str) -> None:
    response = client.get(path + "?v=whatever")
    assert response.status_code == 200
    assert response.headers["content-type"] == content_type
    assert response.headers["cache-control"] == "public, max-age=31536000, immutable"
    assert b"http://" not in response.content and b"https://" not in response.content
    head = client.head(path)
    assert head.status_code == 200 and head.content == b""
    assert head.headers["content-length"] == str(len(response.content))


def test_page_routes_are_get_only(client: httpx.Client) -> None:
    response = client.post("/")
    assert response.status_code == 405
    assert response.headers["allow"] == "GET,HEAD"
    assert client.get("/static/other.js").status_code == 404


def test_page_and_auth_mode_need_no_token(auth_client: httpx.Client, backend: FakeBackend) -> None:
    for path in ("/", *STATIC):
        assert auth_client.get(path).status_code == 200, path
    assert_json(auth_client.get("/api/authentication_mode"), 200, {"authentication_mode": "token"})
    # The data does.
    assert_text(auth_client.get(APPS), 401, "Unauthorized: Missing authentication token")
    assert auth_client.get("/api/schooner/controller/logs").status_code == 401
    assert auth_client.get("/metrics").status_code == 401
    assert backend.calls == []


def test_probe_port_has_no_page(backend: FakeBackend) -> None:
    for client in _client(backend, None, probes_only=True):
        assert client.get("/").status_code == 404
        assert client.get("/api/authentication_mode").status_code == 404


# -- the token cookie (Ray's dashboard flow) -----------------------------------------------
def test_auth_mode_disabled_clears_the_cookie(client: httpx.Client) -> None:
    response = client.get("/api/authentication_mode")
    assert_json(response, 200, {"authentication_mode": "disabled"})
    assert response.headers["set-cookie"] == "ray-authentication-token=; Max-Age=0; Path=/"


def test_authenticate_without_a_token_configured(client: httpx.Client) -> None:
    response = client.post("/api/authenticate", headers={"Authorization": "Bearer x"})
    assert_text(response, 401, "Unauthorized: Token authentication is not enabled")


def test_authenticate_sets_an_http_only_cookie(auth_client: httpx.Client) -> None:
    assert auth_client.post("/api/authenticate").status_code == 401
    wrong = auth_client.post("/api/authenticate", headers={"Authorization": "Bearer nope"})
    assert wrong.status_code == 403 and "set-cookie" not in wrong.headers
    response = auth_client.post("/api/authenticate", headers={"Authorization": f"Bearer {TOKEN}"})
    assert_json(response, 200, {"status": "authenticated", "message": "Token is valid"})
    assert response.headers["set-cookie"] == (
        f"ray-authentication-token={TOKEN}; Max-Age=2592000; Path=/; HttpOnly; SameSite=Strict"
    )
    # httpx keeps the cookie, as a browser would: the API answers now.
    assert auth_client.get(APPS).status_code == 200


# -- log tails -------------------------------------------------------------------------
def test_controller_logs(client: httpx.Client, backend: FakeBackend) -> None:
    assert_json(
        client.get("/api/schooner/controller/logs"),
        200,
        {"lines": ["INFO controller - head ready"]},
    )
    client.get("/api/schooner/controller/logs?lines=5")
    client.get(f"/api/schooner/controller/logs?lines={MAX_LOG_LINES + 1}")
    assert backend.calls == [
        ("controller_logs", LOG_LINES),
        ("controller_logs", 5),
        ("controller_logs", MAX_LOG_LINES),
    ]


@pytest.mark.parametrize("lines", ["0", "-3", "many", "1.5"])
def test_log_lines_must_be_a_positive_integer(
    client: httpx.Client, backend: FakeBackend, lines: str
) -> None:
    for path in ("/api/schooner/controller/logs", "/api/schooner/replicas/r1/logs"):
        response = client.get(f"{path}?lines={lines}")
        assert response.status_code == 400
        assert "'lines' must be a positive integer" in response.json()["error"]
    assert backend.calls == []


def test_replica_logs(client: httpx.Client, backend: FakeBackend) -> None:
    assert_json(
        client.get("/api/schooner/replicas/ab12/logs?lines=7"),
        200,
        {"replica_id": "ab12", "lines": ["INFO replica ab12 - hello"]},
    )
    client.get("/api/schooner/replicas/a%2Fb/logs")  # an encoded '/' stays in the id
    assert backend.calls == [("replica_logs", "ab12", 7), ("replica_logs", "a/b", LOG_LINES)]
    assert client.get("/api/schooner/replicas/ab12/logs/more").status_code == 404
    assert client.post("/api/schooner/replicas/ab12/logs").status_code == 405


@pytest.mark.parametrize(
    ("error", "status", "message"),
    [
        (
            ReplicaNotFound("There is no replica with id 'zz'."),
            404,
            "There is no replica with id 'zz'.",
        ),
        (ReplicaLogsUnavailable("Replica zz is STARTING"), 503, "Replica zz is STARTING"),
        (TimeoutError(), 504, "Replica zz did not send its log lines in time."),
    ],
)
def test_replica_logs_errors(
    client: httpx.Client, backend: FakeBackend, error: Exception, status: int, message: str
) -> None:
    backend.logs_error = error
    assert_json(client.get("/api/schooner/replicas/zz/logs"), status, {"error": message})


# -- the head's side: asking the replica ------------------------------------------------
class FakeConn:
    def __init__(self, answer: Any) -> None:
        self.answer = answer
        self.calls: list[tuple[Any, ...]] = []

    async def call(self, method: str, *args: Any) -> Any:
        self.calls.append((method, *args))
        if isinstance(self.answer, BaseException):
            raise self.answer
        if self.answer is None:
            await asyncio.Event().wait()  # a replica that never answers
        return self.answer


def _head_with(conn: FakeConn | None) -> AdminAPI:
    replica = SimpleNamespace(replica_id="r1", conn=conn, state=ReplicaState.STARTING)
    dep = SimpleNamespace(replicas={"r1": replica})
    app = SimpleNamespace(deployments={"D": dep})
    head = SimpleNamespace(controller=SimpleNamespace(apps={"app": app}))
    return AdminAPI(head)  # type: ignore[arg-type]


def test_replica_logs_are_asked_of_the_replica() -> None:
    conn = FakeConn(["a", "b"])
    assert asyncio.run(_head_with(conn).replica_logs("r1", 5)) == ["a", "b"]
    assert conn.calls == [("recent_logs", 5)]


def test_replica_logs_of_an_unknown_or_unconnected_replica() -> None:
    with pytest.raises(ReplicaNotFound, match="There is no replica with id 'r2'"):
        asyncio.run(_head_with(FakeConn([])).replica_logs("r2", 5))
    with pytest.raises(ReplicaLogsUnavailable, match="r1 is STARTING and not connected yet"):
        asyncio.run(_head_with(None).replica_logs("r1", 5))
    with pytest.raises(ReplicaLogsUnavailable, match="r1 did not send its log lines"):
        asyncio.run(_head_with(FakeConn(ConnectionLost("gone"))).replica_logs("r1", 5))


def test_replica_logs_time_out(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(head_module, "REPLICA_LOGS_TIMEOUT_S", 0.05)
    with pytest.raises(TimeoutError):
        asyncio.run(_head_with(FakeConn(None)).replica_logs("r1", 5))
