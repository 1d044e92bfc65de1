"""The admin API client: which address it uses, how it finds an instance, what it sends.

A tiny real HTTP server (port 0, in a thread) plays the instance, or a Ray
dashboard answering 404; it records every request it gets.
"""

from __future__ import annotations

import json
import pickle
import socket
import threading
from collections.abc import Iterator
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

import pytest

from schooner.admin import client as client_module
from schooner.admin.client import (
    DEFAULT_ADMIN_URL,
    AdminClient,
    AdminError,
    AdminUnreachable,
    find_instance,
    resolve_address,
)
from schooner.exceptions import RayServeException


@pytest.fixture(autouse=True)
def clean_env(monkeypatch: pytest.MonkeyPatch) -> None:
    """The suite sets SCHOONER_ADDRESS=local; these tests choose the environment themselves."""
    monkeypatch.delenv("SCHOONER_ADDRESS", raising=False)
    monkeypatch.delenv("SCHOONER_ADMIN_TOKEN", raising=False)


def unused_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


# -- a tiny server ---------------------------------------------------------------------------


@dataclass
class Seen:
    method: str
    path: str
    headers: dict[str, str]
    body: bytes

    def json(self) -> Any:
        return json.loads(self.body)


@dataclass
class Script:
    """What the server answers: (method, path) -> (status, body); anything else is 404."""

    answers: dict[tuple[str, str], tuple[int, bytes]] = field(default_factory=dict)
    seen: list[Seen] = field(default_factory=list)

    def answer(self, method: str, path: str, status: int, body: Any = b"") -> None:
        data = body if isinstance(body, bytes) else json.dumps(body).encode()
        self.answers[(method, path)] = (status, data)


class Handler(BaseHTTPRequestHandler):
    server: Server

    def _handle(self) -> None:
        length = int(self.headers.get("content-length") or 0)
        body = self.rfile.read(length) if length else b""
        script = self.server.script
        script.seen.append(
            Seen(self.command, self.path, {k.lower(): v for k, v in self.headers.items()}, body)
        )
        status, data = script.answers.get(
            (self.command, self.path), (404, b'{"detail": "Not Found"}')
        )
        self.send_response(status)
        self.send_header("content-type", "application/json")
        self.send_header("content-length", str(len(data)))
        self.end_headers()
        self.wfile.write(data)

    do_GET = do_PUT = do_POST = do_DELETE = _handle

    def log_message(self, format: str, *args: Any) -> None:
        pass


class Server(ThreadingHTTPServer):
    daemon_threads = True

    def __init__(self) -> None:
        super().__init__(("127.0.0.1", 0), Handler)
        self.script = Script()

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.server_address[1]}"


@pytest.fixture(scope="module")
def running_server() -> Iterator[Server]:
    srv = Server()
    thread = threading.Thread(target=srv.serve_forever, daemon=True)
    thread.start()
    try:
        yield srv
    finally:
        srv.shutdown()
        srv.server_close()
        thread.join(timeout=5)


@pytest.fixture
def server(running_server: Server) -> Server:
    """The module's server with a fresh script (nothing answered, nothing seen)."""
    running_server.script = Script()
    return running_server


def instance_info(detached: bool) -> dict[str, Any]:
    return {"detached": detached, "pid": 1234, "version": "0.1.0"}


# -- resolve_address -------------------------------------------------------------------------


def test_default_address() -> None:
    assert resolve_address() == DEFAULT_ADMIN_URL == "http://127.0.0.1:8265"


@pytest.mark.parametrize(
    ("given", "url"),
    [
        ("http://10.0.0.1:9000", "http://10.0.0.1:9000"),
        ("http://10.0.0.1:9000/", "http://10.0.0.1:9000"),
        ("10.0.0.1:9000", "http://10.0.0.1:9000"),
        ("https://admin.example.com", "https://admin.example.com"),
    ],
)
def test_explicit_address(given: str, url: str) -> None:
    assert resolve_address(given) == url


def test_address_from_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("SCHOONER_ADDRESS", "host.internal:7000")
    assert resolve_address() == "http://host.internal:7000"
    assert resolve_address("other:1") == "http://other:1"  # explicit wins


def test_local_means_the_default_address(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("SCHOONER_ADDRESS", "local")
    assert resolve_address() == DEFAULT_ADMIN_URL
    assert AdminClient().url == DEFAULT_ADMIN_URL


# -- find_instance ---------------------------------------------------------------------------


@pytest.fixture
def default_at(monkeypatch: pytest.MonkeyPatch) -> Any:
    """Point the default admin address somewhere the test controls."""

    def point(url: str) -> None:
        monkeypatch.setattr(client_module, "DEFAULT_ADMIN_URL", url)

    return point


def test_nothing_listening_at_the_default_is_none(default_at: Any) -> None:
    default_at(f"http://127.0.0.1:{unused_port()}")
    assert find_instance(detached_only=False) is None
    assert find_instance(detached_only=True) is None


def test_nothing_listening_at_an_explicit_address_raises() -> None:
    url = f"http://127.0.0.1:{unused_port()}"
    with pytest.raises(AdminUnreachable, match=f"No Schooner instance answers at {url}"):
        find_instance(url, detached_only=False)


def test_nothing_listening_at_the_environment_address_raises(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setenv("SCHOONER_ADDRESS", f"127.0.0.1:{unused_port()}")
    with pytest.raises(AdminUnreachable, match="SCHOONER_ADDRESS"):
        find_instance(detached_only=False)


def test_local_never_looks(monkeypatch: pytest.MonkeyPatch, server: Server) -> None:
    server.script.answer("GET", "/api/schooner/instance", 200, instance_info(True))
    monkeypatch.setattr(client_module, "DEFAULT_ADMIN_URL", server.url)
    monkeypatch.setenv("SCHOONER_ADDRESS", "local")
    assert find_instance(detached_only=False) is None
    assert server.script.seen == []


@pytest.mark.parametrize("detached", [True, False])
def test_instance_at_the_default_address(server: Server, default_at: Any, detached: bool) -> None:
    server.script.answer("GET", "/api/schooner/instance", 200, instance_info(detached))
    default_at(server.url)
    assert find_instance(detached_only=False) == instance_info(detached)
    found = find_instance(detached_only=True)
    assert found == (instance_info(True) if detached else None)
    assert [(s.method, s.path) for s in server.script.seen] == [
        ("GET", "/api/schooner/instance")
    ] * 2


def test_explicit_address_finds_an_attached_instance_too(server: Server) -> None:
    server.script.answer("GET", "/api/schooner/instance", 200, instance_info(False))
    assert find_instance(server.url, detached_only=True) == instance_info(False)


def test_a_ray_dashboard_at_the_default_address_is_none(server: Server, default_at: Any) -> None:
    default_at(server.url)  # answers 404 to everything
    assert find_instance(detached_only=False) is None
    assert [s.path for s in server.script.seen] == ["/api/schooner/instance"]


def test_a_ray_dashboard_at_an_explicit_address_raises(server: Server) -> None:
    with pytest.raises(AdminError, match="is not a Schooner instance") as info:
        find_instance(server.url, detached_only=False)
    assert info.value.status == 404
    assert "Not Found" in info.value.body


# -- AdminClient requests --------------------------------------------------------------------

DOC = {"applications": [{"name": "a", "import_path": "mod:app", "args": {"n": 1}}]}


def test_put_config_sends_json(server: Server) -> None:
    server.script.answer("PUT", "/api/serve/applications/", 200)
    AdminClient(server.url).put_config(DOC)
    (seen,) = server.script.seen
    assert (seen.method, seen.path) == ("PUT", "/api/serve/applications/")
    assert seen.headers["content-type"] == "application/json"
    assert seen.json() == DOC
    assert "authorization" not in seen.headers


def test_token_from_environment_is_sent_as_bearer(
    server: Server, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("SCHOONER_ADMIN_TOKEN", "s3cret")
    server.script.answer("PUT", "/api/serve/applications/", 200)
    server.script.answer("GET", "/api/serve/applications/", 200, {"applications": {}})
    client = AdminClient(server.url)
    client.put_config(DOC)
    client.details()
    assert [s.headers["authorization"] for s in server.script.seen] == ["Bearer s3cret"] * 2


def test_details(server: Server) -> None:
    details = {"applications": {"a": {"status": "RUNNING"}}, "target_capacity": None}
    server.script.answer("GET", "/api/serve/applications/", 200, details)
    server.script.answer("GET", "/api/serve/applications/?api_type=declarative", 200, {"x": 1})
    client = AdminClient(server.url)
    assert client.details() == details
    assert client.details("declarative") == {"x": 1}
    assert [(s.method, s.body) for s in server.script.seen] == [("GET", b"")] * 2
    assert "content-type" not in server.script.seen[0].headers


def test_delete_all(server: Server) -> None:
    server.script.answer("DELETE", "/api/serve/applications/", 200)
    AdminClient(server.url).delete_all()
    assert [(s.method, s.path, s.body) for s in server.script.seen] == [
        ("DELETE", "/api/serve/applications/", b"")
    ]


def test_shutdown(server: Server) -> None:
    server.script.answer("POST", "/api/schooner/shutdown", 200)
    AdminClient(server.url).shutdown()
    (seen,) = server.script.seen
    assert (seen.method, seen.path, seen.json()) == ("POST", "/api/schooner/shutdown", {})


@pytest.mark.parametrize("status", [400, 401, 403, 500, 503])
def test_error_status_raises_admin_error_with_status_and_body(server: Server, status: int) -> None:
    body = b"Invalid Serve config: applications[0].route_prefix: bad.\n"
    server.script.answer("PUT", "/api/serve/applications/", status, body)
    with pytest.raises(AdminError) as info:
        AdminClient(server.url).put_config(DOC)
    error = info.value
    assert error.status == status
    assert error.body == body.decode().strip()
    assert str(error) == (
        f"PUT /api/serve/applications/ failed with {status}: {body.decode().strip()}"
    )
    assert isinstance(error, RayServeException)


@pytest.mark.parametrize(
    ("call", "method", "path"),
    [
        (lambda c: c.details(), "GET", "/api/serve/applications/"),
        (lambda c: c.delete_all(), "DELETE", "/api/serve/applications/"),
        (lambda c: c.shutdown(), "POST", "/api/schooner/shutdown"),
    ],
)
def test_every_call_raises_on_error_status(
    server: Server, call: Any, method: str, path: str
) -> None:
    server.script.answer(method, path, 500, b"Traceback: boom")
    with pytest.raises(AdminError, match=f"{method} {path} failed with 500: Traceback: boom"):
        call(AdminClient(server.url))


def test_unreachable_request_raises() -> None:
    client = AdminClient(f"127.0.0.1:{unused_port()}")
    with pytest.raises(AdminUnreachable, match="schooner start"):
        client.details()


def test_admin_error_pickles_with_status_and_body() -> None:
    error = pickle.loads(pickle.dumps(AdminError("failed", 409, "conflict")))
    assert (str(error), error.status, error.body) == ("failed", 409, "conflict")
