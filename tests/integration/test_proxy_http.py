"""HTTP/1.1 details of the proxy, checked with raw sockets and a real client."""

from __future__ import annotations

import socket
import subprocess
import sys
import textwrap
from pathlib import Path

import httpx
from helpers import free_port
from starlette.requests import Request
from starlette.responses import StreamingResponse

import schooner as serve


@serve.deployment
class Echo:
    async def __call__(self, request: Request):
        if request.query_params.get("stream"):

            async def parts():
                for i in range(3):
                    yield f"part{i};"

            return StreamingResponse(parts(), media_type="text/plain")
        body = await request.body()
        return {
            "method": request.method,
            "path": request.url.path,
            "query": request.url.query,
            "len": len(body),
            "body": body[:20].decode(),
        }


def _raw(port: int, payload: bytes, read_until: int = 1) -> bytes:
    """Send raw bytes, return what comes back until ``read_until`` responses or EOF."""
    with socket.create_connection(("127.0.0.1", port), timeout=10) as sock:
        sock.sendall(payload)
        data = b""
        while data.count(b"HTTP/1.1 ") < read_until or not _complete(data):
            chunk = sock.recv(65536)
            if not chunk:
                break
            data += chunk
        return data


def _complete(data: bytes) -> bool:
    _head, sep, body = data.rpartition(b"\r\n\r\n")
    if not sep:
        return False
    for line in data.split(b"\r\n\r\n")[-2].split(b"\r\n"):
        if line.lower().startswith(b"content-length:"):
            return len(body) >= int(line.split(b":")[1])
    return data.endswith(b"0\r\n\r\n")


def test_malformed_request_gets_400_and_close(clean) -> None:
    serve.run(Echo.bind(), name="echo", route_prefix="/")
    data = _raw(clean.port, b"GET / HTTP/1.1\r\nHost: x\r\nNo colon here\r\n\r\n")
    assert data.startswith(b"HTTP/1.1 400 ")
    assert b"x-request-id: " in data.lower()
    assert b"connection: close" in data.lower()


def test_pipelined_requests_are_answered_in_order(clean) -> None:
    serve.run(Echo.bind(), name="echo", route_prefix="/")
    requests = b"".join(b"GET /n%d HTTP/1.1\r\nHost: x\r\n\r\n" % i for i in range(5))
    data = _raw(clean.port, requests, read_until=5)
    paths = [part.split(b'"path":"')[1].split(b'"')[0] for part in data.split(b"HTTP/1.1 200")[1:]]
    assert paths == [b"/n0", b"/n1", b"/n2", b"/n3", b"/n4"]


def test_chunked_request_body_and_expect_continue(clean) -> None:
    serve.run(Echo.bind(), name="echo", route_prefix="/")
    payload = (
        b"POST /up HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n"
        b"Expect: 100-continue\r\n\r\n5\r\nhello\r\n6\r\n world\r\n0\r\n\r\n"
    )
    data = _raw(clean.port, payload, read_until=2)
    assert data.startswith(b"HTTP/1.1 100 Continue\r\n\r\n")
    assert b'"len":11' in data and b'"body":"hello world"' in data


def test_head_has_no_body_and_streaming_is_chunked(clean) -> None:
    serve.run(Echo.bind(), name="echo", route_prefix="/")
    r = clean.http.head("/x")
    assert r.status_code == 200 and r.content == b""
    assert int(r.headers["content-length"]) > 0
    r = clean.http.get("/x", params={"stream": 1})
    assert r.text == "part0;part1;part2;"
    assert r.headers["transfer-encoding"] == "chunked"


def test_query_strings_and_escaped_paths(clean) -> None:
    serve.run(Echo.bind(), name="echo", route_prefix="/api")
    body = clean.http.get("/api/a%20b", params={"q": "1", "r": "x y"}).json()
    assert body["path"] == "/api/a b"
    assert body["query"] == "q=1&r=x+y"


def test_large_body_round_trip(clean) -> None:
    serve.run(Echo.bind(), name="echo", route_prefix="/")
    blob = b"z" * (3 * 1024 * 1024)
    assert clean.http.post("/", content=blob).json()["len"] == len(blob)


def test_request_body_limit_from_http_options(tmp_path: Path) -> None:
    """``serve.start(http_options={"max_request_body_bytes": ...})`` bounds request bodies.

    The limit is fixed when an instance starts, so this one runs in a script of its own.
    """
    port = free_port()
    script = tmp_path / "limited.py"
    script.write_text(
        textwrap.dedent(f"""
        import sys
        import schooner as serve

        @serve.deployment
        async def size(request):
            return len(await request.body())

        options = {{"host": "127.0.0.1", "port": {port}, "max_request_body_bytes": 1024}}
        serve.start(http_options=options)
        serve.run(size.bind(), route_prefix="/")
        print("READY", flush=True)
        sys.stdin.read()  # until the test closes it
        serve.shutdown()
    """)
    )
    proc = subprocess.Popen(
        [sys.executable, str(script)], stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True
    )
    assert proc.stdin is not None and proc.stdout is not None
    try:
        assert proc.stdout.readline().strip() == "READY"
        with httpx.Client(base_url=f"http://127.0.0.1:{port}", timeout=30) as http:
            refused = http.post("/", content=b"x" * 2048)
            assert refused.status_code == 413
            assert "limit of 1024 bytes" in refused.text
            assert "http_options.max_request_body_bytes" in refused.text
            served = http.post("/", content=b"x" * 512)
            assert served.status_code == 200 and served.json() == 512
    finally:
        proc.stdin.close()
        try:
            proc.wait(timeout=60)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
