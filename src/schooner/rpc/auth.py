"""Mutual challenge-response authentication for RPC connections over TCP.

Both ends hold the instance secret (bytes). Before the :class:`Connection`
protocol sees a single byte, the two ends run this exchange on the raw stream
(inside TLS when TLS is used)::

    server -> client   MAGIC | server_nonce                          (8 + 32 bytes)
    client -> server   MAGIC | client_nonce | client_proof           (8 + 32 + 32 bytes)
    server -> client   ACCEPT | server_proof                         (1 + 32 bytes)
                  or   REJECT, then the server closes                (1 byte)

    client_proof = HMAC-SHA256(secret, b"client" | MAGIC | server_nonce | client_nonce)
    server_proof = HMAC-SHA256(secret, b"server" | MAGIC | server_nonce | client_nonce)

Fresh nonces on both sides make a recorded exchange useless to replay, and the
two labels keep one side's proof from being reflected back as the other's.
Only once the peer's proof checks (``hmac.compare_digest``) does the
handshake protocol hand the transport to a :class:`Connection`
(``transport.set_protocol``), so a peer that fails never gets a frame
decoded, and its connection never reaches a handler (no ``on_connect``).
After the hand-over the transport talks to the :class:`Connection` directly:
authentication costs nothing per frame.

The server closes a connection whose handshake is not done within
:data:`HANDSHAKE_TIMEOUT_S`, and logs one warning naming the peer for each
failed handshake (a peer that connects and closes without sending a byte, as
TCP health probes do, is logged at debug level only).

What this does not do: it authenticates the peer at connection time; it does
not protect the bytes that follow. Without TLS an attacker on the network path
who can inject into an established TCP connection is not stopped; use TLS
(with the client verifying the server certificate) where that matters.
"""

from __future__ import annotations

import asyncio
import hashlib
import hmac
import logging
import secrets
from collections.abc import Callable
from typing import Any, cast

from schooner.rpc.connection import Connection

logger = logging.getLogger("schooner.rpc")

#: Protocol tag and version; a peer that sends anything else is not one of ours.
MAGIC = b"SCHRPC\x00\x01"
NONCE_BYTES = 32
_PROOF_BYTES = hashlib.sha256().digest_size
_SERVER_HELLO_BYTES = len(MAGIC) + NONCE_BYTES
_CLIENT_HELLO_BYTES = len(MAGIC) + NONCE_BYTES + _PROOF_BYTES
ACCEPT, REJECT = b"\x01", b"\x00"

#: A handshake not finished within this many seconds fails (read at each connection).
HANDSHAKE_TIMEOUT_S = 5.0


class HandshakeError(ConnectionError):
    """The RPC handshake did not complete: the peer closed the connection, sent
    something that is not the Schooner RPC handshake (another program, another
    protocol version), or did not answer in time. Raised by ``connect`` for TCP
    addresses. See :class:`AuthenticationError` for a peer with another secret.
    """


class AuthenticationError(HandshakeError):
    """The peer speaks the handshake but holds another secret: the server
    rejected ours, or could not prove it holds it. Raised by ``connect``.
    """


def new_secret() -> bytes:
    """A fresh random instance secret (32 bytes)."""
    return secrets.token_bytes(32)


def check_secret(secret: bytes | None) -> bytes:
    """``secret`` if it is usable as an instance secret; else a ValueError (never showing it)."""
    if not isinstance(secret, bytes | bytearray) or not secret:
        raise ValueError(
            "RPC over TCP needs the instance secret: non-empty bytes (see "
            "schooner.rpc.transport.set_default_secret or the SCHOONER_SECRET variable)"
        )
    return bytes(secret)


def _proof(secret: bytes, label: bytes, server_nonce: bytes, client_nonce: bytes) -> bytes:
    return hmac.digest(secret, label + MAGIC + server_nonce + client_nonce, "sha256")


def peer_name(transport: asyncio.BaseTransport) -> str:
    """``host:port`` (``[host]:port`` for IPv6) of the transport's peer, for log lines."""
    peer: Any = transport.get_extra_info("peername")
    if isinstance(peer, tuple) and len(peer) >= 2:
        host, port = peer[0], peer[1]
        return f"[{host}]:{port}" if ":" in str(host) else f"{host}:{port}"
    return str(peer)


class ServerHandshake(asyncio.Protocol):
    """The server's side: challenge the client, then serve it with ``make_connection()``.

    ``make_connection`` is called only once the client has proved it holds the
    secret; nothing is built for a peer that fails.
    """

    def __init__(self, secret: bytes, make_connection: Callable[[], Connection]) -> None:
        self._secret = secret
        self._make_connection = make_connection
        self._transport: asyncio.Transport | None = None
        self._nonce = secrets.token_bytes(NONCE_BYTES)
        self._received = bytearray()
        self._timer: asyncio.TimerHandle | None = None
        self._finished = False

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self._transport = cast(asyncio.Transport, transport)  # uvloop's is not a subclass
        self._transport.write(MAGIC + self._nonce)
        loop = asyncio.get_running_loop()
        self._timer = loop.call_later(HANDSHAKE_TIMEOUT_S, self._timed_out)

    def data_received(self, data: bytes) -> None:
        if self._finished:
            return
        received = self._received
        received += data
        if received[: len(MAGIC)] != MAGIC[: len(received)]:
            self._fail("did not send the Schooner RPC handshake (another program or version)")
            return
        if len(received) < _CLIENT_HELLO_BYTES:
            return
        if len(received) > _CLIENT_HELLO_BYTES:
            self._fail("sent data before the handshake was done")
            return
        client_nonce = bytes(received[len(MAGIC) : len(MAGIC) + NONCE_BYTES])
        proof = bytes(received[len(MAGIC) + NONCE_BYTES :])
        expected = _proof(self._secret, b"client", self._nonce, client_nonce)
        transport = self._transport
        assert transport is not None
        if not hmac.compare_digest(proof, expected):
            transport.write(REJECT)
            self._fail("holds another secret", abort=False)
            return
        self._finish()
        transport.write(ACCEPT + _proof(self._secret, b"server", self._nonce, client_nonce))
        conn = self._make_connection()
        transport.set_protocol(conn)
        conn.connection_made(transport)

    def eof_received(self) -> bool | None:
        return None  # close our side too; connection_lost reports it

    def connection_lost(self, exc: Exception | None) -> None:
        if self._finished:
            return
        self._finish()
        if self._transport is None:
            return
        if self._received:
            logger.warning(
                "RPC handshake failed: %s closed the connection during it",
                peer_name(self._transport),
            )
        else:  # a TCP probe, or a client that gave up
            logger.debug(
                "%s closed the connection before the handshake", peer_name(self._transport)
            )

    def _timed_out(self) -> None:
        self._timer = None
        self._fail(f"did not complete the handshake within {HANDSHAKE_TIMEOUT_S:g} s")

    def _fail(self, reason: str, *, abort: bool = True) -> None:
        self._finish()
        transport = self._transport
        assert transport is not None
        logger.warning("RPC handshake failed: %s %s", peer_name(transport), reason)
        # abort() drops the peer at once (a silent peer cannot hold a TLS shutdown open);
        # close() first sends the REJECT byte so an honest client can say what happened.
        if abort:
            transport.abort()
        else:
            transport.close()

    def _finish(self) -> None:
        self._finished = True
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None


class ClientHandshake(asyncio.Protocol):
    """The client's side: answer the challenge, check the server's proof, then hand
    the transport to ``connection``. ``done`` gets the result (or the error)."""

    def __init__(self, secret: bytes, connection: Connection) -> None:
        self._secret = secret
        self._connection = connection
        self._transport: asyncio.Transport | None = None
        self._received = bytearray()
        self._server_nonce: bytes | None = None
        self._nonce = secrets.token_bytes(NONCE_BYTES)
        self.done: asyncio.Future[Connection] = asyncio.get_running_loop().create_future()

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self._transport = cast(asyncio.Transport, transport)  # uvloop's is not a subclass

    def data_received(self, data: bytes) -> None:
        if self.done.done():
            return
        received = self._received
        received += data
        if self._server_nonce is None:
            if received[: len(MAGIC)] != MAGIC[: len(received)]:
                self._fail(HandshakeError("the peer is not a Schooner RPC server of this version"))
                return
            if len(received) < _SERVER_HELLO_BYTES:
                return
            if len(received) > _SERVER_HELLO_BYTES:
                self._fail(HandshakeError("the server sent data before the handshake was done"))
                return
            self._server_nonce = bytes(received[len(MAGIC) :])
            del received[:]
            proof = _proof(self._secret, b"client", self._server_nonce, self._nonce)
            assert self._transport is not None
            self._transport.write(MAGIC + self._nonce + proof)
            return
        if received[:1] == REJECT:
            self._fail(AuthenticationError("the server rejected this client: the secrets differ"))
            return
        if received[:1] != ACCEPT:
            self._fail(HandshakeError("the server answered the handshake with something else"))
            return
        if len(received) < 1 + _PROOF_BYTES:
            return
        expected = _proof(self._secret, b"server", self._server_nonce, self._nonce)
        if not hmac.compare_digest(bytes(received[1 : 1 + _PROOF_BYTES]), expected):
            self._fail(AuthenticationError("the server could not prove it holds the secret"))
            return
        rest = bytes(received[1 + _PROOF_BYTES :])  # frames the server sent right after
        transport, conn = self._transport, self._connection
        assert transport is not None
        transport.set_protocol(conn)
        conn.connection_made(transport)
        if rest:
            conn.data_received(rest)
        self.done.set_result(conn)

    def eof_received(self) -> bool | None:
        return None

    def connection_lost(self, exc: Exception | None) -> None:
        if not self.done.done():
            self.done.set_exception(
                HandshakeError(
                    "the server closed the connection during the RPC handshake (it is not a "
                    "Schooner RPC server of this version, or it dropped this client)"
                )
            )

    def _fail(self, error: HandshakeError) -> None:
        if not self.done.done():
            self.done.set_exception(error)
        if self._transport is not None:
            self._transport.abort()
