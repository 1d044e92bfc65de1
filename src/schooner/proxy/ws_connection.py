"""One client's WebSocket connection in the proxy, after the handshake.

:class:`WebSocketConnection` is the ``asyncio.Protocol`` that takes the
socket over from the HTTP server (see :meth:`Request.detach
<schooner.proxy.http_server.Request.detach>`). It speaks the protocol of
:mod:`schooner.proxy.websocket` and reports to a :class:`Listener`:

- whole messages from the client (``on_message``);
- the end of the connection, once (``on_close``): the client's close code and
  reason, ``1006`` if the connection dropped without a close frame, or the
  code the proxy closed it with after a protocol error or a missed pong;
- that the socket's write buffer drained (``on_writable``).

It answers pings itself, sends a keepalive ping every ``ping_interval_s``
and closes the connection (1011) when no pong comes within
``ping_timeout_s`` (uvicorn's defaults: 20 s and 20 s). Closing follows the
RFC: on the client's close frame it echoes the code and closes the socket;
:meth:`close` sends the server's close frame and waits up to
``close_timeout_s`` for the client's before closing the socket.
"""

from __future__ import annotations

import asyncio
import logging
import os
from collections.abc import Callable
from typing import Protocol

from schooner.proxy import websocket as ws

logger = logging.getLogger("schooner.proxy")

_OPEN, _CLOSING, _CLOSED = range(3)


class Listener(Protocol):
    """What a :class:`WebSocketConnection` reports to."""

    def on_message(self, data: str | bytes) -> None: ...

    def on_close(self, code: int, reason: str) -> None: ...

    def on_writable(self) -> None: ...


class WebSocketConnection(asyncio.Protocol):
    """See the module docstring."""

    def __init__(
        self,
        listener: Listener,
        *,
        max_message_bytes: int = ws.DEFAULT_MAX_MESSAGE_BYTES,
        ping_interval_s: float | None = 20.0,
        ping_timeout_s: float = 20.0,
        close_timeout_s: float = 10.0,
    ) -> None:
        self._listener = listener
        self._reader = ws.FrameReader(max_message_bytes)
        self._ping_interval_s = ping_interval_s
        self._ping_timeout_s = ping_timeout_s
        self._close_timeout_s = close_timeout_s
        self._transport: asyncio.Transport | None = None
        self._loop = asyncio.get_event_loop()
        self._state = _OPEN
        self._notified = False
        self._write_paused = False
        self._read_paused = False
        self._timer: asyncio.TimerHandle | None = None  # keepalive, pong or close deadline
        self._ping_payload: bytes | None = None  # the keepalive ping awaiting its pong

    def start(self, transport: asyncio.Transport, rest: bytes) -> None:
        """Serve the connection on ``transport``; ``rest`` is what the client sent already."""
        self._transport = transport
        transport.set_protocol(self)
        if rest:
            self.data_received(rest)
        if self._state != _CLOSED and not self._read_paused:
            transport.resume_reading()
        self._arm_keepalive()

    @property
    def writing_paused(self) -> bool:
        """Whether the socket's write buffer is full (the client reads slowly)."""
        return self._write_paused

    # -- sending -------------------------------------------------------------------------
    def send(self, data: str | bytes) -> None:
        """Send one message (``str``: text, ``bytes``: binary); dropped once closing."""
        if self._state != _OPEN:
            return
        if isinstance(data, str):
            self._write(ws.TEXT, data.encode())
        else:
            self._write(ws.BINARY, data)

    def close(self, code: int = ws.NORMAL_CLOSURE, reason: str = "") -> None:
        """Start the closing handshake (the server's side); nothing if already closing."""
        if self._state != _OPEN:
            return
        self._state = _CLOSING
        self._write(ws.CLOSE, ws.close_payload(code, reason))
        self._set_timer(self._close_timeout_s, self._abort)

    def _write(self, opcode: int, payload: bytes) -> None:
        transport = self._transport
        if transport is None:
            return
        head, body = ws.encode_frame(opcode, payload)
        if len(body) < 4096:
            transport.write(head + body)
        else:
            transport.write(head)
            transport.write(body)

    # -- reading ---------------------------------------------------------------------------
    def pause_reading(self) -> None:
        """Stop reading the client (flow control) until :meth:`resume_reading`."""
        if not self._read_paused:
            self._read_paused = True
            if self._transport is not None and self._state != _CLOSED:
                self._transport.pause_reading()

    def resume_reading(self) -> None:
        if self._read_paused:
            self._read_paused = False
            if self._transport is not None and self._state != _CLOSED:
                self._transport.resume_reading()

    def data_received(self, data: bytes) -> None:
        if self._state == _CLOSED:
            return
        try:
            events = self._reader.feed(data)
        except ws.ProtocolError as exc:
            logger.info("closing a WebSocket connection: %s", exc)
            self._fail(exc.code, exc.reason)
            return
        listener = self._listener
        for event in events:
            if isinstance(event, str | bytes):
                if self._state == _OPEN:
                    listener.on_message(event)
            elif isinstance(event, ws.Ping):
                self._write(ws.PONG, event.payload)
            elif isinstance(event, ws.Pong):
                if event.payload == self._ping_payload:
                    self._ping_payload = None
                    self._arm_keepalive()
            else:
                self._closed_by_client(event)
                return

    def _closed_by_client(self, close: ws.Close) -> None:
        if self._state == _OPEN:  # echo the client's code, as the RFC asks
            self._write(ws.CLOSE, ws.close_payload(close.code))
        self._state = _CLOSED
        if self._transport is not None:
            self._transport.close()
        self._notify(close.code, close.reason)

    def _fail(self, code: int, reason: str) -> None:
        """Close at once, with ``code``, after a protocol error or a missed pong."""
        if self._state == _OPEN:
            self._write(ws.CLOSE, ws.close_payload(code, reason))
        self._state = _CLOSED
        if self._transport is not None:
            self._transport.close()
        self._notify(code, reason)

    def _abort(self) -> None:
        """The client did not answer our close frame in time."""
        self._state = _CLOSED
        if self._transport is not None:
            self._transport.abort()

    def _notify(self, code: int, reason: str) -> None:
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None
        if not self._notified:
            self._notified = True
            self._listener.on_close(code, reason)

    # -- keepalive -------------------------------------------------------------------------
    def _set_timer(self, delay_s: float, callback: Callable[[], None]) -> None:
        if self._timer is not None:
            self._timer.cancel()
        self._timer = self._loop.call_later(delay_s, callback)

    def _arm_keepalive(self) -> None:
        if self._ping_interval_s is not None and self._state == _OPEN:
            self._set_timer(self._ping_interval_s, self._ping)

    def _ping(self) -> None:
        if self._state != _OPEN:
            return
        self._ping_payload = os.urandom(4)
        self._write(ws.PING, self._ping_payload)
        self._set_timer(self._ping_timeout_s, self._pong_missed)

    def _pong_missed(self) -> None:
        logger.info("closing a WebSocket connection: no pong within %g s", self._ping_timeout_s)
        self._fail(ws.INTERNAL_ERROR, "keepalive ping timeout")

    # -- asyncio.Protocol ------------------------------------------------------------------
    def connection_lost(self, exc: Exception | None) -> None:
        self._transport = None
        self._state = _CLOSED
        self._notify(ws.ABNORMAL_CLOSURE, "")

    def pause_writing(self) -> None:
        self._write_paused = True

    def resume_writing(self) -> None:
        self._write_paused = False
        self._listener.on_writable()
