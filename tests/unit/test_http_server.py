"""The proxy's HTTP server over a real socket: the request body limit (413).

Each test serves on a free port of 127.0.0.1 in its own event loop and talks
to the server with asyncio streams, so it can send a request's head and body
separately and see when the answer comes.
"""

from __future__ import annotations

import asyncio
import socket
from collections.abc import Awaitable, Callable
from typing import Any

from schooner.proxy import http_server

LIMIT = 1024
HINT = "Raise it with http_options.max_request_body_bytes."
TIMEOUT_S = 5.0


class Server:
    """Answers 200 with the body's length; ``hold`` keeps requests to ``/slow`` unanswered."""

    def __init__(self) -> None:
        self.seen: list[tuple[str, int]] = []
        self.hold = asyncio.Event()
        self.port = 0
        self.ended: list[tuple[str, int]] = []

    def handle(self, request: http_server.Request) -> None:
        self.seen.append((request.path, len(request.body)))
        request.on_end = lambda r: self.ended.append((r.path, r.status))
        if request.path == "/slow":
            asyncio.get_running_loop().create_task(self._answer_later(request))
        else:
            request.respond(200, [], b"%d" % len(request.body))

    async def _answer_later(self, request: http_server.Request) -> None:
        await self.hold.wait()
        request.respond(200, [], b"slow")


def run(body: Callable[[Server], Awaitable[None]]) -> None:
    async def main() -> None:
        server = Server()
        sock = socket.socket()
        sock.bind(("127.0.0.1", 0))
        sock.listen()
        server.port = sock.getsockname()[1]
        listener = await http_server.serve(
            server.handle, sock, max_body_bytes=LIMIT, too_large_hint=HINT
        )
        try:
            await asyncio.wait_for(body(server), TIMEOUT_S)
        finally:
            listener.close()

    asyncio.run(main())


async def connect(server: Server) -> tuple[asyncio.StreamReader, asyncio.StreamWriter]:
    return await asyncio.open_connection("127.0.0.1", server.port)


async def read_response(reader: asyncio.StreamReader) -> tuple[int, dict[str, str], bytes]:
    head = await reader.readuntil(b"\r\n\r\n")
    lines = head.decode("latin-1").split("\r\n")
    status = int(lines[0].split()[1])
    headers: dict[str, Any] = {}
    for line in lines[1:]:
        if line:
            name, _, value = line.partition(":")
            headers[name.lower()] = value.strip()
    body = await reader.readexactly(int(headers.get("content-length", "0")))
    return status, headers, body


def post(path: str, length: int, extra: bytes = b"") -> bytes:
    return b"POST %s HTTP/1.1\r\nHost: x\r\nContent-Length: %d\r\n%s\r\n" % (
        path.encode(),
        length,
        extra,
    )


def test_body_at_the_limit_is_served() -> None:
    async def body(server: Server) -> None:
        reader, writer = await connect(server)
        writer.write(post("/ok", LIMIT) + b"x" * LIMIT)
        status, _, text = await read_response(reader)
        assert (status, text) == (200, b"%d" % LIMIT)
        writer.close()

    run(body)


def test_announced_length_over_the_limit_is_refused_before_the_body_is_sent() -> None:
    async def body(server: Server) -> None:
        reader, writer = await connect(server)
        writer.write(post("/big", LIMIT + 1, b"X-Request-Id: abc\r\n"))  # the head only
        status, headers, text = await read_response(reader)
        assert status == 413
        assert text.decode() == f"Request body is larger than the limit of {LIMIT} bytes. {HINT}"
        assert headers["x-request-id"] == "abc"
        assert headers["connection"] == "close"
        assert await reader.read() == b""  # then the connection closes
        assert server.seen == []  # the handler never saw it
        writer.close()

    run(body)


def test_expect_continue_over_the_limit_gets_413_not_100() -> None:
    async def body(server: Server) -> None:
        reader, writer = await connect(server)
        writer.write(post("/big", 10 * LIMIT, b"Expect: 100-continue\r\n"))
        status, _, _ = await read_response(reader)
        assert status == 413  # read_response would have read "100 Continue" first
        writer.close()

    run(body)


def test_chunked_body_growing_over_the_limit_is_refused() -> None:
    async def body(server: Server) -> None:
        reader, writer = await connect(server)
        writer.write(b"POST /chunks HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n\r\n")
        chunk = b"%x\r\n%s\r\n" % (600, b"y" * 600)
        writer.write(chunk)
        await writer.drain()
        writer.write(chunk)  # 1200 bytes so far, and no last chunk: the body never ends
        status, _, text = await read_response(reader)
        assert status == 413 and f"limit of {LIMIT} bytes" in text.decode()
        writer.write(chunk)  # a client still sending is ignored, then the connection closes
        assert await reader.read() == b""
        assert server.seen == []
        writer.close()

    run(body)


def test_refusal_waits_for_the_responses_owed_to_earlier_requests() -> None:
    async def body(server: Server) -> None:
        reader, writer = await connect(server)
        # One write: the server parses both heads before the handler's first await, so a
        # 413 sent at once would come before the slow answer.
        writer.write(post("/slow", 0) + post("/big", 5 * LIMIT))
        while not server.seen:
            await asyncio.sleep(0)
        server.hold.set()
        assert (await read_response(reader))[::2] == (200, b"slow")
        assert (await read_response(reader))[0] == 413
        assert server.seen == [("/slow", 0)]
        writer.close()

    run(body)


def test_keep_alive_continues_after_a_body_within_the_limit() -> None:
    async def body(server: Server) -> None:
        reader, writer = await connect(server)
        for size in (0, 10, LIMIT):
            writer.write(post("/ok", size) + b"z" * size)
            assert (await read_response(reader))[::2] == (200, b"%d" % size)
        writer.close()

    run(body)


# -- on_end: when a response has ended, or the client left (metrics, access log) -------------
def test_on_end_sees_the_status_once_the_response_is_written() -> None:
    async def body(server: Server) -> None:
        ended = server.ended
        reader, writer = await connect(server)
        writer.write(post("/fast", 3) + b"abc")
        assert (await read_response(reader))[0] == 200
        assert ended == [("/fast", 200)]
        writer.write(post("/slow", 0))
        await writer.drain()
        while len(server.seen) < 2:
            await asyncio.sleep(0.01)
        writer.close()  # the client leaves before /slow is answered
        while len(ended) < 2:
            await asyncio.sleep(0.01)
        assert ended == [("/fast", 200), ("/slow", 499)]
        server.hold.set()  # answering later does not call it again
        await asyncio.sleep(0.05)
        assert ended == [("/fast", 200), ("/slow", 499)]

    run(body)
