"""The proxy's WebSocket server side, without replicas: the HTTP server hands upgrade
requests over, and :class:`WebSocketConnection` serves the socket, against a real
``websockets`` client (and raw sockets where a client must misbehave).
"""

from __future__ import annotations

import asyncio
import base64
import os
import socket
from collections.abc import Awaitable, Callable

import pytest
import websockets
from websockets.asyncio.client import connect
from websockets.frames import Frame, Opcode

from schooner.proxy import http_server
from schooner.proxy import websocket as ws
from schooner.proxy.ws_connection import WebSocketConnection

TIMEOUT_S = 5.0


class Echo:
    """A listener that echoes messages; ``"close <code>"`` makes the server close."""

    def __init__(self, server: Server) -> None:
        self.server = server
        self.conn: WebSocketConnection | None = None

    def on_message(self, data: str | bytes) -> None:
        assert self.conn is not None
        if isinstance(data, str) and data.startswith("close "):
            self.conn.close(int(data.split()[1]), "server says bye")
        else:
            self.conn.send(data)

    def on_close(self, code: int, reason: str) -> None:
        self.server.closed.put_nowait((code, reason))

    def on_writable(self) -> None:
        pass


class Server:
    def __init__(self, ping_interval_s: float | None = None, ping_timeout_s: float = 20.0) -> None:
        self.port = 0
        self.closed: asyncio.Queue[tuple[int, str]] = asyncio.Queue()
        self.plain: list[str] = []
        self.ping_interval_s = ping_interval_s
        self.ping_timeout_s = ping_timeout_s

    def handle(self, request: http_server.Request) -> None:
        self.plain.append(request.path)
        request.respond(200, [], b"plain " + request.path.encode())

    def on_websocket(self, request: http_server.Request) -> None:
        if request.path == "/refuse":
            request.respond(403, [], b"")
            return
        key = request.header(b"sec-websocket-key") or b""
        transport, rest = request.detach()
        transport.write(
            b"HTTP/1.1 101 Switching Protocols\r\nupgrade: websocket\r\nconnection: Upgrade\r\n"
            b"sec-websocket-accept: " + ws.accept_key(key) + b"\r\n\r\n"
        )
        listener = Echo(self)
        listener.conn = WebSocketConnection(
            listener, ping_interval_s=self.ping_interval_s, ping_timeout_s=self.ping_timeout_s
        )
        listener.conn.start(transport, rest)


def run(body: Callable[[Server], Awaitable[None]], server: Server | None = None) -> None:
    async def main() -> None:
        srv = server or Server()
        sock = socket.socket()
        sock.bind(("127.0.0.1", 0))
        sock.listen()
        srv.port = sock.getsockname()[1]
        listener = await http_server.serve(srv.handle, sock, on_websocket=srv.on_websocket)
        try:
            await asyncio.wait_for(body(srv), TIMEOUT_S)
        finally:
            listener.close()

    asyncio.run(main())


def upgrade_request(path: str = "/ws", upgrade: bytes = b"websocket") -> bytes:
    key = base64.b64encode(os.urandom(16))
    return (
        b"GET " + path.encode() + b" HTTP/1.1\r\nhost: x\r\nupgrade: " + upgrade + b"\r\n"
        b"connection: Upgrade\r\nsec-websocket-key: " + key + b"\r\n"
        b"sec-websocket-version: 13\r\n\r\n"
    )


def test_echo_text_binary_and_ping() -> None:
    async def body(server: Server) -> None:
        async with connect(f"ws://127.0.0.1:{server.port}/ws") as client:
            await client.send("hello")
            assert await client.recv() == "hello"
            await client.send(b"\x00\x01")
            assert await client.recv() == b"\x00\x01"
            big = os.urandom(300_000)
            await client.send(big)
            assert await client.recv() == big
            await asyncio.wait_for(await client.ping(b"p"), TIMEOUT_S)

    run(body)


def test_client_close_is_echoed_and_reported() -> None:
    async def body(server: Server) -> None:
        async with connect(f"ws://127.0.0.1:{server.port}/ws") as client:
            await client.close(4002, "client bye")
            assert client.close_code == 4002  # the server echoed the client's code
        assert await server.closed.get() == (4002, "client bye")

    run(body)


def test_server_close_reaches_the_client() -> None:
    async def body(server: Server) -> None:
        async with connect(f"ws://127.0.0.1:{server.port}/ws") as client:
            await client.send("close 4001")
            with pytest.raises(websockets.ConnectionClosed):
                await client.recv()
            assert client.close_code == 4001
            assert client.close_reason == "server says bye"
        assert await server.closed.get() == (4001, "server says bye")

    run(body)


def test_dropped_connection_is_reported_as_1006() -> None:
    async def body(server: Server) -> None:
        reader, writer = await asyncio.open_connection("127.0.0.1", server.port)
        writer.write(upgrade_request())
        assert (await reader.readuntil(b"\r\n\r\n")).startswith(b"HTTP/1.1 101 ")
        writer.close()
        assert await server.closed.get() == (ws.ABNORMAL_CLOSURE, "")

    run(body)


def test_frames_sent_right_behind_the_upgrade_request_are_not_lost() -> None:
    async def body(server: Server) -> None:
        reader, writer = await asyncio.open_connection("127.0.0.1", server.port)
        writer.write(upgrade_request() + Frame(Opcode.TEXT, b"eager").serialize(mask=True))
        assert (await reader.readuntil(b"\r\n\r\n")).startswith(b"HTTP/1.1 101 ")
        assert await reader.readexactly(7) == b"\x81\x05eager"
        writer.close()

    run(body)


def test_protocol_error_closes_with_its_code() -> None:
    async def body(server: Server) -> None:
        reader, writer = await asyncio.open_connection("127.0.0.1", server.port)
        writer.write(upgrade_request())
        await reader.readuntil(b"\r\n\r\n")
        writer.write(Frame(Opcode.TEXT, b"unmasked").serialize(mask=False))
        close = await reader.readexactly(2)
        assert close[0] == 0x88
        payload = await reader.readexactly(close[1])
        assert int.from_bytes(payload[:2], "big") == ws.PROTOCOL_ERROR
        assert await reader.read() == b""  # and the server closed the socket
        assert (await server.closed.get())[0] == ws.PROTOCOL_ERROR
        writer.close()

    run(body)


def test_missed_keepalive_pong_closes_the_connection() -> None:
    async def body(server: Server) -> None:
        reader, writer = await asyncio.open_connection("127.0.0.1", server.port)
        writer.write(upgrade_request())
        await reader.readuntil(b"\r\n\r\n")
        ping = await reader.readexactly(6)  # the server's keepalive ping; never answered
        assert ping[:2] == b"\x89\x04"
        assert (await server.closed.get())[0] == ws.INTERNAL_ERROR
        writer.close()

    run(body, Server(ping_interval_s=0.05, ping_timeout_s=0.05))


def test_answered_keepalive_pings_keep_the_connection() -> None:
    async def body(server: Server) -> None:
        async with connect(f"ws://127.0.0.1:{server.port}/ws") as client:
            for _ in range(5):  # several keepalive rounds pass (the client answers them)
                await client.send("x")
                assert await client.recv() == "x"
                await asyncio.sleep(0.05)
        assert (await server.closed.get())[0] == ws.NORMAL_CLOSURE

    run(body, Server(ping_interval_s=0.02, ping_timeout_s=1.0))


def test_refused_upgrade_gets_the_http_answer() -> None:
    async def body(server: Server) -> None:
        with pytest.raises(websockets.InvalidStatus) as info:
            async with connect(f"ws://127.0.0.1:{server.port}/refuse"):
                pass
        assert info.value.response.status_code == 403

    run(body)


def test_other_upgrades_are_answered_as_plain_http_then_closed() -> None:
    async def body(server: Server) -> None:
        reader, writer = await asyncio.open_connection("127.0.0.1", server.port)
        writer.write(upgrade_request("/h2", upgrade=b"h2c"))
        answer = await reader.read()  # until the server closes
        assert answer.startswith(b"HTTP/1.1 200 ")
        assert answer.endswith(b"plain /h2")
        assert server.plain == ["/h2"]
        writer.close()

    run(body)


def test_plain_requests_before_an_upgrade_are_answered_first() -> None:
    async def body(server: Server) -> None:
        reader, writer = await asyncio.open_connection("127.0.0.1", server.port)
        writer.write(b"GET /first HTTP/1.1\r\nhost: x\r\n\r\n" + upgrade_request())
        head = await reader.readuntil(b"\r\n\r\n")
        assert head.startswith(b"HTTP/1.1 200 ")
        await reader.readexactly(len(b"plain /first"))
        assert (await reader.readuntil(b"\r\n\r\n")).startswith(b"HTTP/1.1 101 ")
        writer.close()

    run(body)
