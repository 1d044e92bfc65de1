"""Request time limits: `x-request-timeout-seconds` and `http_options.request_timeout_s` → 408,
and the replica's work is cancelled."""

from __future__ import annotations

import textwrap
import threading
import time
from pathlib import Path

import httpx
import pytest
import yaml
from detached import Foreground
from helpers import free_port, wait_for
from starlette.requests import Request

import schooner as serve
from conftest import Instance


@serve.deployment(max_ongoing_requests=10)
class Slow:
    def __init__(self) -> None:
        self.cancelled = 0

    async def __call__(self, request: Request) -> object:
        import asyncio

        if request.url.path.endswith("/cancelled"):
            return self.cancelled
        mark = request.query_params.get("mark")
        if mark:  # tell the test this request has started
            Path(mark).touch()
        try:
            await asyncio.sleep(float(request.query_params.get("s", "5")))
        except asyncio.CancelledError:
            self.cancelled += 1
            raise
        return "done"


def test_timeout_header_gives_408_and_cancels_the_work(clean: Instance) -> None:
    serve.run(Slow.bind(), name="slow", route_prefix="/slow")
    start = time.monotonic()
    resp = clean.http.get("/slow", headers={"x-request-timeout-seconds": "0.3"})
    elapsed = time.monotonic() - start
    assert resp.status_code == 408
    assert "timed out after 0.3 s" in resp.text
    assert resp.headers["x-request-id"] in resp.text
    assert elapsed < 3
    wait_for(lambda: clean.http.get("/slow/cancelled").json() == 1, message="the cancellation")
    # A request that finishes in time is answered as usual.
    fast = clean.http.get("/slow?s=0.01", headers={"x-request-timeout-seconds": "5"})
    assert fast.status_code == 200 and fast.text == "done"
    bad = clean.http.get("/slow", headers={"x-request-timeout-seconds": "soon"})
    assert bad.status_code == 400 and "x-request-timeout-seconds" in bad.text


def test_requests_waiting_for_a_busy_replica_time_out_too(clean: Instance, tmp_path: Path) -> None:
    """A request still waiting for a replica slot (the slow path) is held to its limit."""
    serve.run(Slow.options(max_ongoing_requests=1).bind(), name="one", route_prefix="/one")
    mark = tmp_path / "started"
    with httpx.Client(base_url=clean.url, timeout=30) as other:
        hog = threading.Thread(target=lambda: other.get("/one", params={"s": 2, "mark": mark}))
        hog.start()
        wait_for(mark.exists, message="the first request to take the only slot")
        resp = clean.http.get("/one?s=0.01", headers={"x-request-timeout-seconds": "0.5"})
        hog.join()
    assert resp.status_code == 408


def test_request_timeout_s_from_the_config(tmp_path: Path) -> None:
    (tmp_path / "slowapp.py").write_text(
        textwrap.dedent(
            """
            import asyncio
            import schooner as serve

            @serve.deployment
            async def slow(request):
                await asyncio.sleep(float(request.query_params.get("s", "5")))
                return "done"

            app = slow.bind()
            """
        )
    )
    port = free_port()
    config = {
        "http_options": {"host": "127.0.0.1", "port": port, "request_timeout_s": 0.5},
        "applications": [{"name": "s", "route_prefix": "/", "import_path": "slowapp:app"}],
    }
    (tmp_path / "slow.yaml").write_text(yaml.safe_dump(config))
    run = Foreground(["slow.yaml", "--admin-port", "-1"], tmp_path)
    try:
        run.wait_line("serving application 's'")
        url = f"http://127.0.0.1:{port}/"
        assert httpx.get(url, timeout=10).status_code == 408
        assert httpx.get(url + "?s=0.01", timeout=10).text == "done"
        # The header overrides the instance's limit.
        longer = httpx.get(url + "?s=1", headers={"x-request-timeout-seconds": "5"}, timeout=10)
        assert longer.text == "done"
    finally:
        assert run.stop() == 0


def test_backpressure_answers_at_once_with_retry_after(clean: Instance, tmp_path: Path) -> None:
    limited = Slow.options(
        max_ongoing_requests=1,
        max_queued_requests=1,
        backpressure_config={"status_code": 429, "retry_after_s": 2.5},
    )
    serve.run(limited.bind(), name="limited", route_prefix="/limited")
    mark = tmp_path / "started"
    answers: list[httpx.Response] = []

    def get(params: dict[str, object]) -> None:
        with httpx.Client(base_url=clean.url, timeout=30) as client:
            answers.append(client.get("/limited", params=params))

    hog = threading.Thread(target=get, args=({"s": 1, "mark": mark},))
    hog.start()
    wait_for(mark.exists, message="the first request to take the only slot")
    # One of these two waits in the queue (its one place), the other is turned away.
    others = [threading.Thread(target=get, args=({"s": 0.01},)) for _ in range(2)]
    start = time.monotonic()
    for t in others:
        t.start()
    for t in others:
        t.join()
    hog.join()
    rejected = [r for r in answers if r.status_code == 429]
    assert len(rejected) == 1 and len(answers) == 3, [r.status_code for r in answers]
    assert rejected[0].headers["retry-after"] == "3"
    assert "backpressure" in rejected[0].text
    assert sorted(r.status_code for r in answers) == [200, 200, 429]
    assert time.monotonic() - start < 5


def test_client_disconnect_cancels_the_work_in_the_replica(clean: Instance, tmp_path: Path) -> None:
    import socket

    serve.run(Slow.bind(), name="gone", route_prefix="/gone")
    before = clean.http.get("/gone/cancelled").json()
    mark = tmp_path / "started"
    with socket.create_connection(("127.0.0.1", clean.port)) as sock:
        sock.sendall(f"GET /gone?s=30&mark={mark} HTTP/1.1\r\nHost: x\r\n\r\n".encode())
        wait_for(mark.exists, message="the request to reach the replica")
    # The socket is closed: the proxy sees the client go and cancels the replica's work.
    wait_for(
        lambda: clean.http.get("/gone/cancelled").json() == before + 1,
        timeout_s=10,
        message="the replica's coroutine to be cancelled",
    )
    from schooner import api

    proxy_log = Path(api._controller_call("instance_info")["session"]) / "logs" / "proxy.log"
    wait_for(
        lambda: "cancelled: the client disconnected (499)" in proxy_log.read_text(),
        message="the proxy to log the request as 499",
    )


class _Url:
    def __init__(self, path: str) -> None:
        self.path = path


class _CallArgs:
    """What Slow reads from a request, for calls through a handle."""

    def __init__(self, path: str, **query: str) -> None:
        self.url = _Url(path)
        self.query_params = query


def test_handle_result_timeout_and_cancel(clean: Instance, tmp_path: Path) -> None:
    handle = serve.run(Slow.bind(), name="h", route_prefix=None)
    before = handle.remote(_CallArgs("/cancelled")).result()
    mark = tmp_path / "started"
    response = handle.remote(_CallArgs("/", s="30", mark=str(mark)))
    with pytest.raises(TimeoutError):
        response.result(timeout_s=0.2)
    wait_for(mark.exists, message="the call to reach the replica")
    response.cancel()
    wait_for(
        lambda: handle.remote(_CallArgs("/cancelled")).result() == before + 1,
        message="the cancelled call to stop in the replica",
    )
