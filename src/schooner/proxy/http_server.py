"""A small HTTP/1.1 server on asyncio protocols and httptools, built for proxying.

The proxy does not need ASGI: it reads a request (method, target, headers,
whole body), hands it to a handler, and writes back a status line, headers
and a body, or a stream of chunks. Doing that directly on an
``asyncio.Protocol`` saves a task, a scope dict and several message dicts per
request compared to an ASGI server.

Supported: keep-alive with an idle timeout, pipelined requests (answered in
order), chunked request bodies, ``Expect: 100-continue``, HEAD, streamed
responses (chunked transfer encoding when no content-length is known),
backpressure on slow readers, a request body size limit (413), and malformed
requests (400). When a client disconnects, the request's ``disconnected``
callback runs so the work behind it can be cancelled.

Upgrades: a request with ``Upgrade: websocket`` goes, in its turn, to the
``on_websocket`` handler instead, which answers it with an HTTP response
(a refusal) or takes the connection over with :meth:`Request.detach` (after
writing ``101 Switching Protocols``). Nothing after it is parsed as HTTP;
bytes that arrive meanwhile are kept for the new protocol. Other upgrades
(``h2c``...) are answered over HTTP/1.1, then the connection closes. Only
requests the parser flags as upgrades take this path.

A body over the limit is refused as soon as that is known: at the headers
when ``content-length`` announces it (before any ``100 Continue``), else when
the chunks received pass the limit. Nothing more of that connection is
parsed or kept; the 413 goes out after the responses still owed to earlier
pipelined requests, then the connection closes.
"""

from __future__ import annotations

import asyncio
import logging
import ssl
import time
import uuid
from collections import deque
from collections.abc import Callable
from email.utils import formatdate
from http import HTTPStatus
from typing import Any
from urllib.parse import unquote

import httptools

logger = logging.getLogger("schooner.proxy")

#: Default request body limit (``http_options.max_request_body_bytes``): 100 MiB.
DEFAULT_MAX_REQUEST_BODY_BYTES = 100 * 1024 * 1024

Headers = list[tuple[bytes, bytes]]

_REASONS = {status.value: status.phrase.encode() for status in HTTPStatus}

#: Bytes kept (for the new protocol) from a client that goes on sending after an upgrade
#: request before it is answered; past this, reading pauses.
_MAX_BYTES_AFTER_UPGRADE = 1024 * 1024

#: After a 413, how long the client may go on sending (discarded) before the connection
#: closes. Closing a socket that still has unread data resets the connection, and a
#: client that is still sending would then lose the 413 before reading it.
_LINGER_AFTER_REFUSAL_S = 2.0


class _BodyTooLarge(Exception):
    """Raised from a parser callback to stop parsing a body over the limit."""


def _status_line(status: int) -> bytes:
    return b"HTTP/1.1 %d %s\r\n" % (status, _REASONS.get(status, b""))


def _new_request_id_header() -> bytes:
    return b"x-request-id: " + uuid.uuid4().hex.encode() + b"\r\n"


class _DateHeader:
    """The ``date`` header, formatted at most once per second."""

    value = b""
    second = -1

    @classmethod
    def get(cls, now: float) -> bytes:
        second = int(now)
        if second != cls.second:
            cls.second = second
            cls.value = b"date: " + formatdate(second, usegmt=True).encode() + b"\r\n"
        return cls.value


class Request:
    """One parsed request and the means to answer it."""

    __slots__ = (
        "_chunked",
        "_conn",
        "_finished",
        "_head",
        "_started",
        "body",
        "client",
        "headers",
        "http_version",
        "keep_alive",
        "method",
        "on_disconnect",
        "on_end",
        "path",
        "query_string",
        "raw_path",
        "received_at",
        "status",
        "tags",
    )

    def __init__(
        self,
        conn: HttpProtocol,
        method: str,
        raw_path: bytes,
        headers: Headers,
        http_version: str,
        keep_alive: bool,
    ) -> None:
        self._conn = conn
        self.method = method
        self.raw_path = raw_path
        path, _, query = raw_path.partition(b"?")
        self.path = unquote(path.decode("latin-1")) if b"%" in path else path.decode("latin-1")
        self.query_string = query
        self.headers = headers
        self.http_version = http_version
        self.keep_alive = keep_alive
        self.body = b""
        self.client = conn.client
        self._head = method == "HEAD"
        self._started = False
        self._finished = False
        self._chunked = False
        self.on_disconnect: Callable[[], None] | None = None
        #: Called once when the response has ended, or the client left before it did
        #: (``status`` is then 499). For metrics and access logs.
        self.on_end: Callable[[Request], None] | None = None
        #: The status of the response once started (0 before).
        self.status = 0
        #: What the application attaches for ``on_end`` (when it started, its route...).
        self.received_at = 0.0
        self.tags: Any = None

    def header(self, name: bytes) -> bytes | None:
        for key, value in self.headers:
            if key == name:
                return value
        return None

    # -- answering -----------------------------------------------------------------
    def respond(self, status: int, headers: Headers, body: bytes) -> None:
        """Send a whole response (adds content-length)."""
        head = [_status_line(status), self._conn.date()]
        for key, value in headers:
            if key != b"content-length" and key != b"transfer-encoding":
                head.append(key + b": " + value + b"\r\n")
        head.append(b"content-length: %d\r\n" % len(body))
        self.status = status
        if not self.keep_alive:
            head.append(b"connection: close\r\n")
        head.append(b"\r\n")
        if not self._head:
            head.append(body)
        self._started = True
        self._finish(b"".join(head))

    def start(self, status: int, headers: Headers) -> None:
        """Start a streamed response; chunked unless ``headers`` give a content-length."""
        self._started = True
        self.status = status
        chunked = True
        head = [_status_line(status), self._conn.date()]
        for key, value in headers:
            if key == b"content-length":
                chunked = False
            elif key == b"transfer-encoding":
                continue
            head.append(key + b": " + value + b"\r\n")
        if chunked and not self._head:
            head.append(b"transfer-encoding: chunked\r\n")
        if not self.keep_alive:
            head.append(b"connection: close\r\n")
        head.append(b"\r\n")
        self._chunked = chunked and not self._head
        self._conn.write(b"".join(head))

    def send(self, data: bytes) -> None:
        """Send part of a streamed body."""
        if self._head or not data:
            return
        if self._chunked:
            self._conn.write(b"%x\r\n%s\r\n" % (len(data), data))
        else:
            self._conn.write(data)

    def end(self, data: bytes = b"") -> None:
        """Finish a streamed response."""
        if self._head:
            self._finish(b"")
        elif self._chunked:
            tail = b"%x\r\n%s\r\n0\r\n\r\n" % (len(data), data) if data else b"0\r\n\r\n"
            self._finish(tail)
        else:
            self._finish(data)

    @property
    def started(self) -> bool:
        return self._started

    @property
    def finished(self) -> bool:
        return self._finished

    async def drain(self) -> None:
        """Wait while the client is not reading fast enough."""
        await self._conn.drain()

    def _finish(self, data: bytes) -> None:
        if self._finished:
            return
        self._finished = True
        self._conn.finish(self, data)
        on_end = self.on_end
        if on_end is not None:
            self.on_end = None
            on_end(self)

    def detach(self) -> tuple[asyncio.Transport, bytes]:
        """Take this upgrade request's connection over from the HTTP server.

        Returns the transport (give it a new protocol at once with
        ``transport.set_protocol``; reading may be paused: resume it) and the
        bytes the client already sent after the request. The HTTP server no
        longer touches the connection. Raises ``ConnectionError`` if the client
        has gone.
        """
        self._started = self._finished = True
        return self._conn.detach()


class HttpProtocol(asyncio.Protocol):
    """One client connection."""

    def __init__(
        self,
        handler: Callable[[Request], Any],
        *,
        keep_alive_s: float = 90.0,
        max_body_bytes: int = DEFAULT_MAX_REQUEST_BODY_BYTES,
        too_large_hint: str = "",
        on_websocket: Callable[[Request], Any] | None = None,
    ) -> None:
        self._handler = handler
        self._on_websocket = on_websocket
        self._keep_alive_s = keep_alive_s
        self._max_body = max_body_bytes
        self._too_large_hint = too_large_hint
        self._loop = asyncio.get_event_loop()
        self._parser = httptools.HttpRequestParser(self)
        self._transport: asyncio.Transport | None = None
        self.client: tuple[str, int] | None = None
        self._url = b""
        self._headers: Headers = []
        self._body: list[bytes] = []
        self._body_size = 0
        self._current: Request | None = None
        self._pipeline: deque[Request] = deque()
        self._idle_timer: asyncio.TimerHandle | None = None
        self._write_paused = False
        self._drain_waiters: list[asyncio.Future[None]] = []
        self._too_large = False  # set by the parser callbacks before they stop the parser
        self._refused: Request | None = None  # the 413 owed; nothing is parsed after it
        #: Where received bytes go instead of the parser, once nothing more is HTTP.
        self._diverted: Callable[[bytes], None] | None = None
        self._upgrade: Request | None = None  # parsed, waiting for the parser's upgrade signal
        self._websocket: Request | None = None  # the WebSocket upgrade, for on_websocket
        self._after_upgrade = bytearray()  # what the client sent after its upgrade request

    # -- connection --------------------------------------------------------------
    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self._transport = transport  # type: ignore[assignment]
        peer = transport.get_extra_info("peername")
        self.client = (str(peer[0]), int(peer[1])) if isinstance(peer, tuple) else None
        self._arm_idle_timer()

    def connection_lost(self, exc: Exception | None) -> None:
        self._transport = None
        if self._idle_timer is not None:
            self._idle_timer.cancel()
        current = self._current
        if current is not None and not current.finished:
            if current.on_disconnect is not None:
                current.on_disconnect()
            on_end = current.on_end
            if on_end is not None:
                current.on_end = None
                current.status = 499
                on_end(current)
        self._pipeline.clear()
        for waiter in self._drain_waiters:
            if not waiter.done():
                waiter.set_result(None)

    def data_received(self, data: bytes) -> None:
        diverted = self._diverted
        if diverted is not None:
            diverted(data)  # after a refused body or an upgrade request: not HTTP
            return
        try:
            self._parser.feed_data(data)
        except httptools.HttpParserUpgrade as exc:
            self._upgraded(data[exc.args[0] :] if exc.args else b"")
        except httptools.HttpParserError as exc:
            if self._too_large:
                self._refuse_body()
            else:
                self._reject(400, f"Malformed HTTP request: {exc}".encode())

    def _upgraded(self, rest: bytes) -> None:
        """The parser stopped after an upgrade request; ``rest`` is what followed it."""
        request, self._upgrade = self._upgrade, None
        self._after_upgrade += rest
        self._diverted = self._keep_after_upgrade
        if request is None:
            self._reject(400, b"Unsupported upgrade request.")
            return
        upgrade = (request.header(b"upgrade") or b"").lower()
        if self._on_websocket is not None and b"websocket" in upgrade.split(b","):
            self._websocket = request
        # else another protocol (h2c...): answered over HTTP/1.1, then the connection closes
        self._pipeline.append(request)
        if self._current is None:
            self._next()

    def _keep_after_upgrade(self, data: bytes) -> None:
        self._after_upgrade += data
        if len(self._after_upgrade) > _MAX_BYTES_AFTER_UPGRADE and self._transport is not None:
            self._transport.pause_reading()

    def _discard(self, data: bytes) -> None:
        pass

    def detach(self) -> tuple[asyncio.Transport, bytes]:
        """See :meth:`Request.detach`."""
        transport = self._transport
        if transport is None:
            raise ConnectionError("The client disconnected before the upgrade completed.")
        self._transport = None
        self._current = None
        self._pipeline.clear()
        if self._idle_timer is not None:
            self._idle_timer.cancel()
            self._idle_timer = None
        rest, self._after_upgrade = bytes(self._after_upgrade), bytearray()
        return transport, rest

    def _reject(self, status: int, text: bytes) -> None:
        if self._transport is None:
            return
        head = _status_line(status) + self.date() + _new_request_id_header()
        self._transport.write(
            head + b"content-type: text/plain; charset=utf-8\r\n"
            b"connection: close\r\ncontent-length: %d\r\n\r\n%s" % (len(text), text)
        )
        self._transport.close()

    def _arm_idle_timer(self) -> None:
        if self._idle_timer is not None:
            self._idle_timer.cancel()
        self._idle_timer = self._loop.call_later(self._keep_alive_s, self._idle_timeout)

    def _idle_timeout(self) -> None:
        if self._current is None and self._transport is not None:
            self._transport.close()

    def date(self) -> bytes:
        return _DateHeader.get(time.time())

    # -- httptools callbacks --------------------------------------------------------
    def on_message_begin(self) -> None:
        self._url = b""
        self._headers = []
        self._body = []
        self._body_size = 0
        self._too_large = False

    def on_url(self, url: bytes) -> None:
        self._url += url

    def on_header(self, name: bytes, value: bytes) -> None:
        self._headers.append((name.lower(), value))

    def on_headers_complete(self) -> None:
        expects_continue = False
        for name, value in self._headers:
            if name == b"expect" and value.lower() == b"100-continue":
                expects_continue = True
            elif name == b"content-length" and value.isdigit() and int(value) > self._max_body:
                self._too_large = True
                raise _BodyTooLarge
        if expects_continue and self._transport is not None:
            self._transport.write(b"HTTP/1.1 100 Continue\r\n\r\n")

    def on_body(self, body: bytes) -> None:
        self._body_size += len(body)
        if self._body_size > self._max_body:
            self._too_large = True
            raise _BodyTooLarge
        self._body.append(body)

    def on_message_complete(self) -> None:
        parser = self._parser
        method = parser.get_method().decode("ascii")
        request = Request(
            self,
            method,
            self._url,
            self._headers,
            parser.get_http_version(),
            parser.should_keep_alive(),
        )
        request.body = b"".join(self._body) if len(self._body) != 1 else self._body[0]
        if parser.should_upgrade():  # dispatched once the parser signals the upgrade
            request.keep_alive = False
            self._upgrade = request
            return
        self._pipeline.append(request)
        self._body = []
        if self._current is None:
            self._next()

    def _refuse_body(self) -> None:
        """Owe a 413 for the request being parsed, and parse nothing more on this connection."""
        parser = self._parser
        request = Request(
            self,
            parser.get_method().decode("ascii"),
            self._url,
            self._headers,
            parser.get_http_version(),
            keep_alive=False,
        )
        self._refused = request
        self._diverted = self._discard  # the rest of the refused body, or whatever follows
        self._body = []
        self._pipeline.append(request)
        if self._current is None:
            self._next()

    # -- dispatch -------------------------------------------------------------------
    def _next(self) -> None:
        if not self._pipeline or self._transport is None:
            self._current = None
            self._arm_idle_timer()
            return
        request = self._pipeline.popleft()
        self._current = request
        if self._idle_timer is not None:
            self._idle_timer.cancel()
            self._idle_timer = None
        if request is self._refused:
            text = f"Request body is larger than the limit of {self._max_body} bytes."
            if self._too_large_hint:
                text += " " + self._too_large_hint
            request_id = request.header(b"x-request-id") or uuid.uuid4().hex.encode()
            request.respond(
                413,
                [(b"content-type", b"text/plain; charset=utf-8"), (b"x-request-id", request_id)],
                text.encode(),
            )
            return
        try:
            if request is self._websocket:
                self._websocket = None
                assert self._on_websocket is not None
                self._on_websocket(request)
            else:
                self._handler(request)
        except Exception:
            logger.exception("request handler failed")
            if not request.started:
                request.respond(
                    500, [(b"content-type", b"text/plain; charset=utf-8")], b"Internal Server Error"
                )

    def finish(self, request: Request, data: bytes) -> None:
        transport = self._transport
        if transport is None:
            return
        if data:
            transport.write(data)
        if request is self._refused:
            self._linger(transport)
            return
        if not request.keep_alive:
            transport.close()
            return
        if request is self._current:
            self._next()

    def _linger(self, transport: asyncio.Transport) -> None:
        """Close after a 413, letting the client finish sending first (see
        ``_LINGER_AFTER_REFUSAL_S``); it closes sooner if the client closes."""
        if transport.can_write_eof():
            transport.write_eof()
            self._loop.call_later(_LINGER_AFTER_REFUSAL_S, transport.close)
        else:
            transport.close()

    def write(self, data: bytes) -> None:
        if self._transport is not None:
            self._transport.write(data)

    # -- flow control -------------------------------------------------------------
    def pause_writing(self) -> None:
        self._write_paused = True

    def resume_writing(self) -> None:
        self._write_paused = False
        waiters, self._drain_waiters = self._drain_waiters, []
        for waiter in waiters:
            if not waiter.done():
                waiter.set_result(None)

    async def drain(self) -> None:
        if self._write_paused and self._transport is not None:
            waiter = self._loop.create_future()
            self._drain_waiters.append(waiter)
            await waiter


async def serve(
    handler: Callable[[Request], Any],
    sock: Any,
    *,
    keep_alive_s: float = 90.0,
    max_body_bytes: int = DEFAULT_MAX_REQUEST_BODY_BYTES,
    too_large_hint: str = "",
    ssl_context: ssl.SSLContext | None = None,
    on_websocket: Callable[[Request], Any] | None = None,
) -> asyncio.Server:
    """Serve HTTP on the listening socket ``sock``; ``handler(request)`` must answer it.

    Request bodies over ``max_body_bytes`` get 413; ``too_large_hint`` is added to
    its text to say how to raise the limit. With ``ssl_context``, HTTPS.
    ``on_websocket(request)`` answers WebSocket upgrade requests (see the module
    docstring); without it they are answered by ``handler`` as plain HTTP requests.
    """
    loop = asyncio.get_running_loop()
    return await loop.create_server(
        lambda: HttpProtocol(
            handler,
            keep_alive_s=keep_alive_s,
            max_body_bytes=max_body_bytes,
            too_large_hint=too_large_hint,
            on_websocket=on_websocket,
        ),
        sock=sock,
        backlog=2048,
        ssl=ssl_context,
    )
