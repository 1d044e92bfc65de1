"""RPC over TCP: the authentication handshake, TLS, addresses, and the pool, on real sockets."""

from __future__ import annotations

import asyncio
import logging
import os
import socket
import ssl
from collections.abc import AsyncIterator, Callable, Coroutine
from pathlib import Path
from typing import Any

import pytest
from tls_certs import Certs, make_certs

from schooner.router.pool import ConnectionPool
from schooner.rpc import auth, codec, transport
from schooner.rpc.auth import AuthenticationError, HandshakeError
from schooner.rpc.connection import REQ, Connection, serve_unix
from schooner.rpc.transport import (
    connect,
    default_secret,
    format_tcp_address,
    parse_tcp_address,
    serve_tcp,
    set_default_secret,
)

SECRET = b"s" * 32
TIMEOUT_S = 10.0

try:
    import uvloop
except ImportError:
    LOOPS = ["asyncio"]
else:
    LOOPS = ["asyncio", "uvloop"]

Run = Callable[[Callable[[], Coroutine[Any, Any, None]]], None]


@pytest.fixture(params=LOOPS)
def run(request: pytest.FixtureRequest) -> Run:
    """Run one async test body on the loop named by the parameter, with a deadline."""
    factory = uvloop.new_event_loop if request.param == "uvloop" else asyncio.new_event_loop

    def runner(test: Callable[[], Coroutine[Any, Any, None]]) -> None:
        async def main() -> None:
            await asyncio.wait_for(test(), TIMEOUT_S)

        with asyncio.Runner(loop_factory=factory) as r:
            r.run(main())

    return runner


@pytest.fixture(autouse=True)
def no_default_secret(monkeypatch: pytest.MonkeyPatch) -> None:
    """Each test starts without a process-wide secret and without reading the environment."""
    monkeypatch.setattr(transport, "_default_secret", None)
    monkeypatch.setattr(transport, "_default_secret_loaded", True)


@pytest.fixture(scope="module")
def certs(tmp_path_factory: pytest.TempPathFactory) -> Certs:
    return make_certs(tmp_path_factory.mktemp("certs"))


class Handler:
    """Serves calls; greets each client with a notification as soon as it connects."""

    def __init__(self) -> None:
        self.conn: Connection | None = None

    def on_connect(self, conn: Connection) -> None:
        self.conn = conn
        conn.notify("hello", "from the server")

    def rpc_add(self, a: int, b: int) -> int:
        return a + b

    async def rpc_echo(self, value: Any) -> Any:
        return value

    async def rpc_count(self, n: int) -> AsyncIterator[int]:
        for i in range(n):
            yield i


class ClientHandler:
    def __init__(self) -> None:
        self.greeted = asyncio.Event()

    def rpc_hello(self, text: str) -> None:
        self.greeted.set()

    def rpc_name(self) -> str:
        return "client"


class Factory:
    """A handler factory that remembers every handler it made."""

    def __init__(self) -> None:
        self.made: list[Handler] = []

    def __call__(self) -> Handler:
        handler = Handler()
        self.made.append(handler)
        return handler


async def start(
    factory: Factory, *, secret: bytes = SECRET, ssl: ssl.SSLContext | None = None
) -> tuple[asyncio.Server, str]:
    server = await serve_tcp("127.0.0.1", 0, factory, secret=secret, ssl=ssl)
    port = server.sockets[0].getsockname()[1]
    return server, format_tcp_address("127.0.0.1", port)


async def stop(server: asyncio.Server, *conns: Connection) -> None:
    for conn in conns:
        conn.close()
        await conn.closed
    server.close()
    await server.wait_closed()


async def round_trips(conn: Connection, factory: Factory, client: ClientHandler) -> None:
    assert await conn.call("add", 2, 3) == 5
    assert [i async for i in conn.stream("count", 4)] == [0, 1, 2, 3]
    big = os.urandom(1 << 20)  # a frame larger than the shared read buffer
    assert await conn.call("echo", big) == big
    await client.greeted.wait()  # a frame the server sent right after the handshake
    server_conn = factory.made[0].conn
    assert server_conn is not None
    assert await server_conn.call("name") == "client"  # and calls the other way


def nodelay(conn: Connection) -> int:
    assert conn._transport is not None
    sock = conn._transport.get_extra_info("socket")
    return int(sock.getsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY))


def test_calls_and_streams_over_tcp(run: Run) -> None:
    async def body() -> None:
        factory = Factory()
        server, address = await start(factory)
        client = ClientHandler()
        conn = await connect(address, client, secret=SECRET)
        await round_trips(conn, factory, client)
        server_conn = factory.made[0].conn
        assert server_conn is not None
        assert nodelay(conn) == nodelay(server_conn) == 1
        await stop(server, conn)

    run(body)


def test_ipv6(run: Run) -> None:
    if not socket.has_ipv6:
        pytest.skip("no IPv6")

    async def body() -> None:
        factory = Factory()
        try:
            server = await serve_tcp("::1", 0, factory, secret=SECRET)
        except OSError:
            pytest.skip("no IPv6 loopback")
        address = format_tcp_address("::1", server.sockets[0].getsockname()[1])
        assert address.startswith("tcp://[::1]:")
        conn = await connect(address, secret=SECRET)
        assert await conn.call("add", 1, 1) == 2
        await stop(server, conn)

    run(body)


def test_wrong_secret_is_refused_before_any_handler(
    run: Run, caplog: pytest.LogCaptureFixture
) -> None:
    async def body() -> None:
        factory = Factory()
        server, address = await start(factory)
        with (
            caplog.at_level(logging.WARNING, "schooner.rpc"),
            pytest.raises(AuthenticationError, match="secrets differ"),
        ):
            await connect(address, secret=b"x" * 32)  # the server logs before it answers
        assert factory.made == []
        failures = [r for r in caplog.records if "handshake failed" in r.getMessage()]
        assert len(failures) == 1
        assert "127.0.0.1:" in failures[0].getMessage()
        assert "another secret" in failures[0].getMessage()
        assert failures[0].exc_info is None
        await stop(server)

    run(body)


def test_tcp_needs_a_secret() -> None:
    async def body() -> None:
        with pytest.raises(ValueError, match="secret"):
            await connect("tcp://127.0.0.1:9")
        with pytest.raises(ValueError, match="secret"):
            await serve_tcp("127.0.0.1", 0, Factory(), secret=b"")

    asyncio.run(body())


def test_default_secret_set_and_from_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    set_default_secret(SECRET)
    assert default_secret() == SECRET
    monkeypatch.setattr(transport, "_default_secret_loaded", False)
    monkeypatch.setenv("SCHOONER_SECRET", "ab" * 16)
    assert default_secret() == b"\xab" * 16
    monkeypatch.setattr(transport, "_default_secret_loaded", False)
    monkeypatch.setenv("SCHOONER_SECRET", "not hex, and secret")
    with pytest.raises(ValueError) as info:
        default_secret()
    assert "secret" not in str(info.value).replace("SCHOONER_SECRET", "")


@pytest.mark.parametrize(
    ("address", "expected"),
    [
        ("tcp://127.0.0.1:8000", ("127.0.0.1", 8000)),
        ("tcp://replica-3.cluster:80", ("replica-3.cluster", 80)),
        ("tcp://[::1]:9", ("::1", 9)),
    ],
)
def test_parse_and_format_addresses(address: str, expected: tuple[str, int]) -> None:
    assert parse_tcp_address(address) == expected
    assert format_tcp_address(*expected) == address


@pytest.mark.parametrize(
    "address",
    ["127.0.0.1:80", "tcp://127.0.0.1", "tcp://::1:80", "tcp://h:0", "tcp://h:x", "tcp://:5"],
)
def test_bad_addresses(address: str) -> None:
    with pytest.raises(ValueError, match="tcp://"):
        parse_tcp_address(address)


# -- an unauthenticated peer never gets a pickle decoded ----------------------------------


class Mkdir:
    """Unpickling this creates a directory: the side effect an attacker's pickle would have."""

    def __init__(self, path: Path) -> None:
        self.path = path

    def __reduce__(self) -> tuple[Any, ...]:
        return (os.mkdir, (str(self.path),))


def evil_frame(marker: Path) -> bytes:
    """A well-formed request frame whose payload creates ``marker`` when unpickled."""
    return b"".join(codec.encode(("add", (Mkdir(marker),), {}, 0), REQ, 1))


async def send_raw(
    address: str, *chunks: bytes, read_hello: bool, then: bytes | None = None
) -> bytes:
    """Connect with a plain socket, send ``chunks`` and read until the server hangs up.

    With ``then``: read one byte of answer to ``chunks`` first, then send ``then``.
    """
    host, port = parse_tcp_address(address)
    reader, writer = await asyncio.open_connection(host, port)
    received = b""
    if read_hello:
        received = await reader.readexactly(len(auth.MAGIC) + auth.NONCE_BYTES)
    try:
        writer.writelines(chunks)
        await writer.drain()
        if then is not None:
            received += await reader.readexactly(1)
            writer.write(then)
            await writer.drain()
        received += await reader.read()  # returns at EOF: the server dropped us
    except ConnectionResetError:
        pass
    writer.close()
    return received


def test_the_evil_frame_is_live(tmp_path: Path) -> None:
    """The control for the test below: on an unauthenticated Unix socket the frame does
    run its side effect, so its absence over TCP means something."""
    marker = tmp_path / "pwned"

    async def body() -> None:
        path = str(tmp_path / "rpc.sock")
        server = await serve_unix(path, Handler)
        reader, writer = await asyncio.open_unix_connection(path)
        writer.write(evil_frame(marker))
        await reader.read(1)  # the answer (an error: Handler.rpc_add takes two numbers)
        writer.close()
        server.close()

    asyncio.run(asyncio.wait_for(body(), TIMEOUT_S))
    assert marker.is_dir()


def test_pickles_from_an_unauthenticated_peer_are_never_decoded(
    run: Run, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    marker = tmp_path / "pwned"
    frame = evil_frame(marker)
    forged_hello = auth.MAGIC + os.urandom(auth.NONCE_BYTES) + os.urandom(32)

    async def body() -> None:
        factory = Factory()
        server, address = await start(factory)
        with caplog.at_level(logging.WARNING, "schooner.rpc"):
            # straight away, without looking at the server's challenge
            await send_raw(address, frame, read_hello=False)
            # after reading the challenge
            await send_raw(address, frame, read_hello=True)
            # behind a forged answer to the challenge, at once and after the server's answer
            await send_raw(address, forged_hello + frame, read_hello=True)
            reply = await send_raw(address, forged_hello, read_hello=True, then=frame)
        assert reply.endswith(auth.REJECT)
        assert not marker.exists()
        assert factory.made == []
        assert len([r for r in caplog.records if "handshake failed" in r.getMessage()]) == 4
        # and the server still serves clients that hold the secret
        conn = await connect(address, secret=SECRET)
        assert await conn.call("add", 1, 2) == 3
        await stop(server, conn)

    run(body)
    assert not marker.exists()


def test_client_decodes_nothing_from_a_server_without_the_secret(run: Run, tmp_path: Path) -> None:
    """Mutual: a fake server accepts anyone and sends a pickle; the client refuses it."""
    marker = tmp_path / "pwned"

    async def fake_server(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        writer.write(auth.MAGIC + os.urandom(auth.NONCE_BYTES))
        await reader.readexactly(len(auth.MAGIC) + auth.NONCE_BYTES + 32)
        writer.write(auth.ACCEPT + os.urandom(32) + evil_frame(marker))
        await reader.read()
        writer.close()

    async def body() -> None:
        server = await asyncio.start_server(fake_server, "127.0.0.1", 0)
        address = format_tcp_address("127.0.0.1", server.sockets[0].getsockname()[1])
        client = ClientHandler()
        with pytest.raises(AuthenticationError, match="could not prove"):
            await connect(address, client, secret=SECRET)
        server.close()

    run(body)
    assert not marker.exists()


def test_a_server_that_is_not_ours(run: Run) -> None:
    async def banner(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        writer.write(b"SSH-2.0-OpenSSH_9.6\r\n")
        await reader.read()
        writer.close()

    async def body() -> None:
        server = await asyncio.start_server(banner, "127.0.0.1", 0)
        address = format_tcp_address("127.0.0.1", server.sockets[0].getsockname()[1])
        with pytest.raises(HandshakeError, match="not a Schooner RPC server") as info:
            await connect(address, secret=SECRET)
        assert not isinstance(info.value, AuthenticationError)
        server.close()

    run(body)


# -- deadlines --------------------------------------------------------------------------------


def test_a_silent_client_is_dropped_at_the_deadline(
    run: Run, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    monkeypatch.setattr(auth, "HANDSHAKE_TIMEOUT_S", 0.2)

    async def body() -> None:
        factory = Factory()
        server, address = await start(factory)
        loop = asyncio.get_running_loop()
        started = loop.time()
        with caplog.at_level(logging.WARNING, "schooner.rpc"):
            hello = await send_raw(address, read_hello=True)  # says nothing, waits for EOF
        assert loop.time() - started < 3.0
        assert hello.startswith(auth.MAGIC)
        assert any("within 0.2 s" in r.getMessage() for r in caplog.records)
        assert factory.made == []
        await stop(server)

    run(body)


def test_a_silent_server_fails_the_connect_at_the_deadline(
    run: Run, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(auth, "HANDSHAKE_TIMEOUT_S", 0.2)

    async def silent(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await reader.read()
        writer.close()

    async def body() -> None:
        server = await asyncio.start_server(silent, "127.0.0.1", 0)
        address = format_tcp_address("127.0.0.1", server.sockets[0].getsockname()[1])
        with pytest.raises(HandshakeError, match=r"within 0\.2 s"):
            await connect(address, secret=SECRET)
        server.close()

    run(body)


# -- TLS ----------------------------------------------------------------------------------------


def tls_contexts(certs: Certs) -> tuple[ssl.SSLContext, ssl.SSLContext]:
    server = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    server.load_cert_chain(certs.cert, certs.key)
    client = ssl.create_default_context(cafile=str(certs.ca))  # verifies the server
    return server, client


def test_tls_round_trips_and_the_handshake_inside(run: Run, certs: Certs) -> None:
    server_ctx, client_ctx = tls_contexts(certs)

    async def body() -> None:
        factory = Factory()
        server, address = await start(factory, ssl=server_ctx)
        client = ClientHandler()
        conn = await connect(address, client, secret=SECRET, ssl=client_ctx)
        assert conn._transport is not None
        assert conn._transport.get_extra_info("ssl_object") is not None
        await round_trips(conn, factory, client)
        with pytest.raises(AuthenticationError):
            await connect(address, secret=b"x" * 32, ssl=client_ctx)
        assert len(factory.made) == 1
        await stop(server, conn)

    run(body)


def test_tls_server_refuses_a_plain_client(
    run: Run, certs: Certs, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(auth, "HANDSHAKE_TIMEOUT_S", 0.3)
    server_ctx, _ = tls_contexts(certs)

    async def body() -> None:
        factory = Factory()
        server, address = await start(factory, ssl=server_ctx)
        # Each waits for the other to speak first, until a deadline: the client's
        # ("did not complete ... within") or the server's TLS one ("closed the connection").
        with pytest.raises(HandshakeError):
            await connect(address, secret=SECRET)
        assert factory.made == []
        await stop(server)

    run(body)


# -- the router's pool -------------------------------------------------------------------------


def test_pool_connects_to_tcp_and_unix_addresses(run: Run, tmp_path: Path) -> None:
    set_default_secret(SECRET)

    async def body() -> None:
        factory = Factory()
        server, address = await start(factory)
        path = str(tmp_path / "replica.sock")
        unix_server = await serve_unix(path, Handler)
        pool = ConnectionPool()
        conn = await pool.get(address)
        assert await conn.call("add", 20, 22) == 42
        assert await pool.get(address) is conn
        unix_conn = await pool.get(path)
        assert await unix_conn.call("add", 1, 1) == 2
        pool.close()
        await conn.closed
        await unix_conn.closed
        unix_server.close()
        await stop(server)

    run(body)


# -- TLS from the environment (SCHOONER_RPC_TLS_*) ------------------------------------------
@pytest.fixture
def tls_env(certs: Certs, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("SCHOONER_RPC_TLS_CERTFILE", str(certs.cert))
    monkeypatch.setenv("SCHOONER_RPC_TLS_KEYFILE", str(certs.key))
    monkeypatch.setenv("SCHOONER_RPC_TLS_CA_CERTS", str(certs.ca))
    monkeypatch.setattr(transport, "_tls_contexts", {})


def test_tls_from_the_environment_wraps_every_tcp_connection(run: Run, tls_env: None) -> None:
    async def body() -> None:
        server = await serve_tcp("127.0.0.1", 0, Factory(), secret=SECRET)
        port = server.sockets[0].getsockname()[1]
        conn = await connect(f"tcp://127.0.0.1:{port}", secret=SECRET)
        assert await conn.call("add", 2, 3) == 5
        assert conn._transport is not None
        assert conn._transport.get_extra_info("ssl_object") is not None  # TLS, not plain TCP
        conn.close()
        server.close()

    run(body)
    assert transport.tls_environment() == {
        k: os.environ[k] for k in transport.TLS_ENV_VARS
    }  # what the head hands to replicas and proxies


def test_a_plain_tcp_client_cannot_talk_to_a_tls_server(
    run: Run, tls_env: None, monkeypatch: pytest.MonkeyPatch
) -> None:
    async def body() -> None:
        server = await serve_tcp("127.0.0.1", 0, Factory(), secret=SECRET)
        port = server.sockets[0].getsockname()[1]
        monkeypatch.setattr(transport, "_tls_contexts", {False: None})  # this client: no TLS
        with pytest.raises((HandshakeError, OSError)):
            await connect(f"tcp://127.0.0.1:{port}", secret=SECRET)
        server.close()

    run(body)


def test_tls_needs_both_the_certificate_and_its_key(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("SCHOONER_RPC_TLS_CERTFILE", "/some/cert.pem")
    monkeypatch.delenv("SCHOONER_RPC_TLS_KEYFILE", raising=False)
    monkeypatch.setattr(transport, "_tls_contexts", {})
    with pytest.raises(ValueError, match="SCHOONER_RPC_TLS_KEYFILE"):
        transport.default_tls(server=True)
