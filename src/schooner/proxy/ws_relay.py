"""Relaying one WebSocket connection between a client and a replica.

The proxy opens a duplex RPC call (``rpc_websocket``, see
:mod:`schooner.replica.websocket` for what travels on it) to a replica of
the route's ingress deployment, which runs the ASGI app. :class:`WebSocketRelay`
is both ends of that call in the proxy:

- what the app sends: ``websocket.accept`` completes the handshake (101,
  ``Sec-WebSocket-Accept``, the chosen subprotocol and the app's headers) and
  hands the socket to a :class:`~schooner.proxy.ws_connection.WebSocketConnection`;
  ``websocket.close`` before that is refused with 403 (as uvicorn does), a
  ``websocket.http.response`` is sent as it is; messages go to the client;
- what the client sends: messages go to the app; its close (code and reason)
  or its disconnection (1006) becomes ``websocket.disconnect``.

Both directions are flow-controlled (:mod:`schooner.rpc.flow`). The call holds
one of the router's slots on the replica until it ends. When the app ends
without closing, the client gets close 1000; when it fails, or the replica
dies, 1011 (or 500 / 503 if the handshake was not answered yet). An app that
ignores the client's departure is cancelled after ``_ABANDON_AFTER_S``.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable
from typing import Any

from schooner.exceptions import ReplicaUnavailableError, http_status_for
from schooner.proxy import websocket as ws
from schooner.proxy.http_server import Request
from schooner.proxy.ws_connection import WebSocketConnection
from schooner.rpc.connection import Connection, ConnectionLost, RemoteCallError, StreamSink
from schooner.rpc.flow import Acks, Credit

logger = logging.getLogger("schooner.proxy")

#: How long a replica may go on serving a connection whose client has gone.
_ABANDON_AFTER_S = 10.0
#: Headers of the 101 answer that the proxy sets itself.
_HANDSHAKE_HEADERS = frozenset(
    (b"upgrade", b"connection", b"sec-websocket-accept", b"sec-websocket-protocol")
)


class WebSocketRelay(StreamSink):
    """See the module docstring. Call :meth:`start` once."""

    def __init__(
        self,
        request: Request,
        request_id: str,
        conn: Connection,
        release: Callable[[], None],
        *,
        app_header: tuple[bytes, bytes] | None = None,
        max_message_bytes: int = ws.DEFAULT_MAX_MESSAGE_BYTES,
    ) -> None:
        self._request = request
        self._request_id = request_id
        # Every answer to the handshake names the application a traffic split chose.
        self._own_headers = [(b"x-request-id", request_id.encode())]
        if app_header is not None:
            self._own_headers.append(app_header)
        self._conn = conn
        self._release: Callable[[], None] | None = release
        self._max_message_bytes = max_message_bytes
        self._loop = asyncio.get_event_loop()
        self._req_id = 0
        self._ws: WebSocketConnection | None = None
        self._credit = Credit()  # the client's messages on their way to the app
        self._acks: Acks | None = None  # the app's messages written to the client
        self._owed_acks = 0  # written while the client's socket was full
        self._denial: dict[str, Any] | None = None  # a websocket.http.response.start
        self._denial_body: list[bytes] = []
        self._ended = False  # the replica's call ended
        self._abandon_timer: asyncio.TimerHandle | None = None

    def start(self, meta: tuple[str, ...], http_request: tuple[Any, ...]) -> None:
        """Open the call to the replica (the connection was chosen by the router)."""
        conn = self._conn
        self._req_id = conn.open_duplex("websocket", (meta, http_request), self)
        self._acks = Acks(lambda n: conn.push(self._req_id, n), self._loop)
        self._request.on_disconnect = self._left_before_handshake

    def _left_before_handshake(self) -> None:
        logger.info("WebSocket %s: the client left before the handshake", self._request_id)
        self._conn.cancel_request(self._req_id)
        self._end()

    # -- from the replica (StreamSink) -----------------------------------------------------
    def on_item(self, item: Any) -> None:
        kind = type(item)
        if kind is str or kind is bytes:
            connection = self._ws
            if connection is None:
                return
            connection.send(item)
            if connection.writing_paused:
                self._owed_acks += 1
            else:
                assert self._acks is not None
                self._acks.consumed()
        elif kind is int:
            self._credit.acknowledged(item)
            if self._ws is not None and not self._credit.exhausted:
                self._ws.resume_reading()
        else:
            self._app_message(item)

    def on_end(self, last: Any) -> None:
        if last is not None:
            self.on_item(last)
        if self._ws is not None:
            self._ws.close(ws.NORMAL_CLOSURE)
        elif not self._request.finished:
            self._refuse(500, "The ASGI app returned without answering the WebSocket handshake.")
        self._end()

    def on_error(self, error: BaseException) -> None:
        if isinstance(error, ConnectionLost):
            error = ReplicaUnavailableError(
                f"The replica died while serving WebSocket {self._request_id}."
            )
        if isinstance(error, RemoteCallError):
            logger.error("WebSocket %s failed: %s", self._request_id, error.error.traceback)
        else:
            logger.warning("WebSocket %s failed: %r", self._request_id, error)
        if self._ws is not None:
            self._ws.close(ws.INTERNAL_ERROR)
        elif not self._request.finished:
            status = 500 if isinstance(error, RemoteCallError) else http_status_for(error)
            self._refuse(status, f"{type(error).__name__}: {error}")
        self._end()

    def _app_message(self, message: dict[str, Any]) -> None:
        kind = message["type"]
        connection = self._ws
        if kind == "websocket.accept" and connection is None:
            self._accept(message)
        elif kind == "websocket.close":
            if connection is not None:
                connection.close(
                    message.get("code") or ws.NORMAL_CLOSURE, message.get("reason") or ""
                )
            elif not self._request.finished:
                self._refuse(403, "")
        elif kind == "websocket.http.response.start":
            self._denial = message
        elif kind == "websocket.http.response.body":
            self._denial_body.append(bytes(message.get("body", b"")))
            if not message.get("more_body", False):
                self._deny()

    # -- handshake ---------------------------------------------------------------------------
    def _accept(self, message: dict[str, Any]) -> None:
        request = self._request
        if request.finished:
            return
        key = request.header(b"sec-websocket-key") or b""
        head = [
            b"HTTP/1.1 101 Switching Protocols\r\n"
            b"upgrade: websocket\r\nconnection: Upgrade\r\nsec-websocket-accept: ",
            ws.accept_key(key),
            b"\r\n",
        ]
        head.extend(name + b": " + value + b"\r\n" for name, value in self._own_headers)
        subprotocol = message.get("subprotocol")
        if subprotocol:
            head.append(b"sec-websocket-protocol: " + str(subprotocol).encode() + b"\r\n")
        for name, value in message.get("headers") or ():
            if bytes(name).lower() not in _HANDSHAKE_HEADERS:
                head.append(bytes(name) + b": " + bytes(value) + b"\r\n")
        head.append(b"\r\n")
        try:
            transport, rest = request.detach()
        except ConnectionError:
            return  # the disconnect callback ends the call
        transport.write(b"".join(head))
        connection = WebSocketConnection(self, max_message_bytes=self._max_message_bytes)
        self._ws = connection
        if self._credit.exhausted:
            connection.pause_reading()
        connection.start(transport, rest)

    def _refuse(self, status: int, text: str) -> None:
        request = self._request
        headers = list(self._own_headers)
        if text:
            headers.append((b"content-type", b"text/plain; charset=utf-8"))
        request.respond(status, headers, text.encode())

    def _deny(self) -> None:
        """Send the app's own answer to the handshake (``websocket.http.response``)."""
        start, self._denial = self._denial, None
        if start is None or self._request.finished:
            return
        headers = [(bytes(k), bytes(v)) for k, v in start.get("headers", ())]
        headers.extend(self._own_headers)
        self._request.respond(int(start["status"]), headers, b"".join(self._denial_body))

    # -- from the client (ws_connection.Listener) ------------------------------------------
    def on_message(self, data: str | bytes) -> None:
        self._conn.push(self._req_id, data)
        self._credit.sent(data)
        if self._credit.exhausted and self._ws is not None:
            self._ws.pause_reading()

    def on_close(self, code: int, reason: str) -> None:
        self._conn.push(self._req_id, (code, reason))
        if not self._ended:
            self._abandon_timer = self._loop.call_later(_ABANDON_AFTER_S, self._abandon)

    def on_writable(self) -> None:
        owed, self._owed_acks = self._owed_acks, 0
        if owed and self._acks is not None:
            self._acks.consumed(owed)

    def _abandon(self) -> None:
        if not self._ended:
            logger.warning(
                "WebSocket %s: the app went on %g s after the client left; cancelling it",
                self._request_id,
                _ABANDON_AFTER_S,
            )
            self._conn.cancel_request(self._req_id)
            self._end()

    def _end(self) -> None:
        self._ended = True
        if self._abandon_timer is not None:
            self._abandon_timer.cancel()
            self._abandon_timer = None
        release, self._release = self._release, None
        if release is not None:
            release()
