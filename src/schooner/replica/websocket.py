"""Serving one WebSocket connection inside a replica.

The proxy accepts the client's TCP connection and opens a duplex RPC call
(``rpc_websocket``) to a replica; the replica runs the ASGI app with a
``websocket`` scope whose ``receive`` and ``send`` travel over that call.

What travels, replica to proxy (emitted items):

- ASGI messages as dicts: ``websocket.accept``, ``websocket.close``,
  ``websocket.http.response.start`` / ``.body`` (a denial response);
- ``str`` / ``bytes``: a message for the client (``websocket.send``);
- ``int`` n: the replica consumed n more of the proxy's messages.

Proxy to replica (pushed items):

- ``str`` / ``bytes``: a message from the client (``websocket.receive``);
- ``(code, reason)``: the client is gone (``websocket.disconnect``);
- ``int`` n: the proxy delivered n more of the replica's messages to the
  client's socket (it was not full).

Flow control (:mod:`schooner.rpc.flow`): each side keeps at most a window
of its own messages unacknowledged: the proxy stops reading the client's
socket, and the app's ``send`` waits, until acknowledgements come back.
Memory therefore stays bounded whatever the speed of the client or of the app.

After the client is gone, ``receive`` reports ``websocket.disconnect`` and
``send`` raises :class:`ClientDisconnected` (an ``OSError``, which Starlette
turns into ``WebSocketDisconnect``), so a handler ends at its next use of
the connection.
"""

from __future__ import annotations

import asyncio
import logging
from collections import deque
from collections.abc import Callable
from typing import Any

from schooner.replica import http
from schooner.rpc.connection import Inbox
from schooner.rpc.flow import WINDOW_BYTES, Acks, Credit

logger = logging.getLogger("schooner.replica")

Message = dict[str, Any]

_CONNECTING, _ACCEPTED, _RESPONDING, _CLOSED = range(4)


class ClientDisconnected(OSError):
    """Raised by ``send`` once the WebSocket client has gone (as uvicorn does)."""


def make_scope(request: tuple[Any, ...]) -> dict[str, Any]:
    """The ASGI ``websocket`` scope of a connection forwarded by the proxy.

    ``request`` has the fields of :func:`schooner.replica.http.make_scope`'s; the
    scheme is ``wss`` behind an HTTPS proxy, else ``ws``.
    """
    scope = http.make_scope(request)
    del scope["method"]
    subprotocols: list[str] = []
    for name, value in scope["headers"]:
        if name == b"sec-websocket-protocol":
            subprotocols.extend(p.strip() for p in value.decode("latin-1").split(",") if p.strip())
    scope.update(
        type="websocket",
        asgi={"version": "3.0", "spec_version": "2.4"},
        http_version="1.1",
        scheme="wss" if scope["scheme"] == "https" else "ws",
        subprotocols=subprotocols,
        extensions={"websocket.http.response": {}},
    )
    return scope


class WebSocketSession:
    """The ASGI ``receive`` and ``send`` of one connection; see the module docstring."""

    def __init__(
        self, emit: Callable[[Any], None], inbox: Inbox, window_bytes: int = WINDOW_BYTES
    ) -> None:
        loop = asyncio.get_running_loop()
        self._emit = emit
        self._acks = Acks(emit, loop)
        self._credit = Credit(window_bytes)
        self._loop = loop
        self._state = _CONNECTING
        self._connect_sent = False
        self._received: deque[Any] = deque()
        self._disconnect: Message | None = None  # set once the client is gone
        self._receivers: list[asyncio.Future[None]] = []  # receive() calls waiting
        self._senders: list[asyncio.Future[None]] = []  # send() calls waiting for credit
        inbox.listen(self._pushed)

    @property
    def handshake_done(self) -> bool:
        """Whether the app answered the handshake (accepted, closed or denied)."""
        return self._state != _CONNECTING

    @property
    def closed(self) -> bool:
        """Whether the app closed the connection (or finished a denial response)."""
        return self._state == _CLOSED

    # -- from the proxy ------------------------------------------------------------------
    def _pushed(self, item: Any) -> None:
        if type(item) is int:
            self._credit.acknowledged(item)
            if not self._credit.exhausted:
                _wake(self._senders)
            return
        if type(item) is tuple:
            code, reason = item
            self._disconnect = {"type": "websocket.disconnect", "code": code, "reason": reason}
            self._received.append(None)
            _wake(self._senders)
        else:
            self._received.append(item)
        _wake(self._receivers)

    async def _wait(self, waiters: list[asyncio.Future[None]]) -> None:
        waiter = self._loop.create_future()
        waiters.append(waiter)
        try:
            await waiter
        finally:
            if not waiter.done():
                waiters.remove(waiter)

    # -- ASGI ------------------------------------------------------------------------------
    async def receive(self) -> Message:
        if not self._connect_sent:
            self._connect_sent = True
            return {"type": "websocket.connect"}
        while not self._received:
            await self._wait(self._receivers)
        item = self._received[0]
        if item is None:  # the disconnect: it stays, every later receive() reports it
            assert self._disconnect is not None
            return dict(self._disconnect)
        self._received.popleft()
        self._acks.consumed()
        if type(item) is str:
            return {"type": "websocket.receive", "text": item}
        return {"type": "websocket.receive", "bytes": item}

    async def send(self, message: Any) -> None:
        kind = message["type"]
        state = self._state
        if state == _ACCEPTED and kind == "websocket.send":
            await self._send_data(message)
        elif state == _CONNECTING and kind in ("websocket.accept", "websocket.close"):
            self._state = _ACCEPTED if kind == "websocket.accept" else _CLOSED
            self._emit(_plain(message))
        elif state == _CONNECTING and kind == "websocket.http.response.start":
            self._state = _RESPONDING
            self._emit(_plain(message))
        elif state == _RESPONDING and kind == "websocket.http.response.body":
            if not message.get("more_body", False):
                self._state = _CLOSED
            self._emit(_plain(message))
        elif state == _ACCEPTED and kind == "websocket.close":
            self._state = _CLOSED
            if self._disconnect is None:
                self._emit(_plain(message))
        elif self._disconnect is not None and state != _CLOSED:
            raise ClientDisconnected("The WebSocket client has disconnected.")
        else:
            raise RuntimeError(_unexpected(kind, state))

    async def _send_data(self, message: Any) -> None:
        if self._disconnect is not None:
            raise ClientDisconnected("The WebSocket client has disconnected.")
        data = message.get("bytes")
        if data is None:
            data = message.get("text")
        if not isinstance(data, str | bytes):
            if isinstance(data, bytearray | memoryview):
                data = bytes(data)
            else:
                raise TypeError("A websocket.send message needs 'text' (str) or 'bytes' (bytes).")
        self._emit(data)
        self._credit.sent(data)
        while self._credit.exhausted and self._disconnect is None:
            await self._wait(self._senders)


def _wake(waiters: list[asyncio.Future[None]]) -> None:
    for waiter in waiters:
        if not waiter.done():
            waiter.set_result(None)
    waiters.clear()


def _plain(message: Any) -> Message:
    """An ASGI message as a plain dict (it crosses a process boundary)."""
    return message if type(message) is dict else dict(message)


def _unexpected(kind: str, state: int) -> str:
    if state == _CONNECTING:
        return (
            "Expected ASGI message 'websocket.accept', 'websocket.close' or "
            f"'websocket.http.response.start', but got {kind!r}."
        )
    if state == _RESPONDING:
        return f"Expected ASGI message 'websocket.http.response.body', but got {kind!r}."
    if state == _ACCEPTED:
        return f"Expected ASGI message 'websocket.send' or 'websocket.close', but got {kind!r}."
    return f"Unexpected ASGI message {kind!r} after the connection was closed."
