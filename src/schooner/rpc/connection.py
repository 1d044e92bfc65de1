"""A persistent, multiplexed, bidirectional RPC connection.

Either side may call the other. Requests carry an id; many are in flight on
one connection at once. Each frame has a kind and a request id (see
:mod:`schooner.rpc.codec`) and a payload:

- ``REQ``: ``(method, args, kwargs, stream)``: call ``rpc_<method>`` on the
  peer's handler. Request id 0 is a notification: no answer is sent.
- ``OK`` / ``ERR``: the call's value, or a :class:`RemoteError`.
- ``ITEM`` / ``END``: for a streaming call (``stream=True``), each item, then
  the end. ``END`` may carry a last item.
- ``CANCEL``: the caller gave up; the handler's task is cancelled.
- ``PUSH``: for a duplex call (see :meth:`Connection.open_duplex`), an item
  the caller sends into the open call; the handler gets it through its
  :class:`Inbox`. Pushes for a call that has ended are dropped.

A streaming handler is either an async generator (each yielded value is an
``ITEM``) or a coroutine function taking an ``emit`` callable as its first
argument (each ``emit(x)`` sends an ``ITEM``; the return value, unless None,
rides on ``END``), so a short stream costs one frame. A duplex handler is a
coroutine function taking ``emit`` and an :class:`Inbox`. The RPC layer does
no flow control on pushes: a duplex protocol bounds what is in flight itself
(for instance with acknowledgements riding on its items).

Writes are coalesced: everything sent during one event-loop iteration goes out
in one ``writelines``. A handler method that returns a plain value (not an
awaitable) is answered without creating a task. A payload that cannot be
decoded fails only its own request.
"""

from __future__ import annotations

import asyncio
import collections
import inspect
import itertools
import logging
import os
import pickle
import struct
import traceback
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass
from typing import Any

from schooner.rpc import codec

logger = logging.getLogger("schooner.rpc")

REQ, OK, ERR, ITEM, END, CANCEL, PUSH = range(7)
#: The ``stream`` field of a REQ: an ordinary call, a streaming call, a duplex call.
_UNARY, _STREAM, _DUPLEX = 0, 1, 2
_LEN = struct.Struct("!I")
#: What a :class:`QueueSink` queues after the last item of a call that ended well.
END_OF_STREAM = object()


class ConnectionLost(ConnectionError):
    """The peer closed the connection or its process died while calls were pending."""


@dataclass
class RemoteError:
    """An exception raised by the peer's handler, in a form that always decodes.

    ``type_name``, ``message`` and ``traceback`` describe it; :attr:`exc` is
    the original exception when it can be rebuilt on this side (else None).
    """

    type_name: str
    message: str
    traceback: str
    exc_blob: bytes | None = None

    @property
    def exc(self) -> BaseException | None:
        if self.exc_blob is None:
            return None
        try:
            exc = pickle.loads(self.exc_blob)
        except Exception:
            return None
        return exc if isinstance(exc, BaseException) else None

    @classmethod
    def from_exception(cls, exc: BaseException) -> RemoteError:
        tb = "".join(traceback.format_exception(type(exc), exc, exc.__traceback__))
        blob: bytes | None
        try:
            blob = codec.dumps(exc)
            pickle.loads(blob)  # an exception that pickles may still not unpickle
        except Exception:
            blob = None
        return cls(type(exc).__name__, str(exc), tb, blob)


def _decode_error(exc: BaseException) -> RemoteError:
    return RemoteError(
        "DecodeError",
        f"The message could not be decoded on the receiving side: {type(exc).__name__}: {exc}",
        "".join(traceback.format_exception(type(exc), exc, exc.__traceback__)),
    )


class RemoteCallError(Exception):
    """Raised in the caller when the peer's handler raised; wraps a :class:`RemoteError`."""

    def __init__(self, error: RemoteError) -> None:
        self.error = error
        super().__init__(f"{error.type_name}: {error.message}")


class StreamSink:
    """Receives a streaming call's items by callback (see :meth:`Connection.stream_to`)."""

    def on_item(self, item: Any) -> None:
        raise NotImplementedError

    def on_end(self, last: Any) -> None:
        """The stream ended; ``last`` is the final item riding on END (or None)."""
        raise NotImplementedError

    def on_error(self, error: BaseException) -> None:
        """The call failed (RemoteCallError) or the connection was lost (ConnectionLost)."""
        raise NotImplementedError


class QueueSink(StreamSink):
    """Queues a call's items, then :data:`END_OF_STREAM` (or the error), for a coroutine
    (:meth:`Connection.stream`'s async iterator, the gRPC proxy's duplex calls)."""

    __slots__ = ("queue",)

    def __init__(self) -> None:
        self.queue: asyncio.Queue[Any] = asyncio.Queue()

    def on_item(self, item: Any) -> None:
        self.queue.put_nowait(item)

    def on_end(self, last: Any) -> None:
        if last is not None:
            self.queue.put_nowait(last)
        self.queue.put_nowait(END_OF_STREAM)

    def on_error(self, error: BaseException) -> None:
        self.queue.put_nowait(error)


class Inbox:
    """The items a caller pushes into a duplex call, as its handler receives them.

    Items that arrive before the handler calls :meth:`listen` are kept and handed
    over then, in order (a push can arrive in the same read as the call itself).
    """

    __slots__ = ("_early", "_listener")

    def __init__(self) -> None:
        self._early: list[Any] = []
        self._listener: Callable[[Any], None] | None = None

    def listen(self, listener: Callable[[Any], None]) -> None:
        """Call ``listener(item)`` for each pushed item from now on (and for those kept)."""
        self._listener = listener
        early, self._early = self._early, []
        for item in early:
            listener(item)

    def put(self, item: Any) -> None:
        if self._listener is None:
            self._early.append(item)
        else:
            self._listener(item)


#: Data is written at most this much at a time while the peer keeps up.
_WRITE_SLICE_BYTES = 256 * 1024

#: Frames up to this size are read into a shared buffer; larger ones get their own,
#: filled straight from the socket (one copy, kernel to user).
_SMALL_BUFFER_BYTES = 256 * 1024


class Connection(asyncio.BufferedProtocol):
    """One end of an RPC connection; see the module docstring for the protocol."""

    def __init__(self, handler: object | None = None) -> None:
        self._handler = handler
        self._transport: asyncio.Transport | None = None
        self._small = bytearray(_SMALL_BUFFER_BYTES)
        self._small_view = memoryview(self._small)
        self._filled = 0  # bytes of self._small in use
        self._big: bytearray | None = None  # a large frame being received
        self._big_filled = 0
        self._ids = itertools.count(1)
        self._pending: dict[int, asyncio.Future[Any] | StreamSink] = {}
        self._tasks: dict[int, asyncio.Task[Any]] = {}
        self._inboxes: dict[int, Inbox] = {}  # duplex calls served here, by request id
        self._notifications: set[asyncio.Task[Any]] = set()
        self._out: list[bytes | memoryview] = []
        self._flush_scheduled = False
        self._backlog: collections.deque[memoryview] = collections.deque()
        self._write_paused = False
        self._loop = asyncio.get_event_loop()
        self.closed: asyncio.Future[None] = self._loop.create_future()
        self.on_close: list[Callable[[Connection], None]] = []

    # -- asyncio.Protocol -------------------------------------------------
    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self._transport = transport  # type: ignore[assignment]  # uvloop's is not a subclass
        on_connect = getattr(self._handler, "on_connect", None)
        if on_connect is not None:
            on_connect(self)

    def get_buffer(self, sizehint: int) -> memoryview:
        if self._big is not None:
            return memoryview(self._big)[self._big_filled :]
        return self._small_view[self._filled :]

    def buffer_updated(self, nbytes: int) -> None:
        if self._big is not None:
            self._big_filled += nbytes
            if self._big_filled == len(self._big):
                big_frame = self._big
                self._big = None
                self._frame(memoryview(big_frame))
            return
        self._filled += nbytes
        small, filled = self._small, self._filled
        offset = 0
        while filled - offset >= 4:
            (length,) = _LEN.unpack_from(small, offset)
            end = offset + 4 + length
            if end <= filled:
                frame = bytes(small[offset + 4 : end])
                offset = end
                self._frame(memoryview(frame))
                continue
            if 4 + length > len(small):  # too big for the shared buffer: give it its own
                big = bytearray(length)
                have = filled - offset - 4
                big[:have] = small[offset + 4 : filled]
                self._big, self._big_filled = big, have
                offset = filled
            break
        rest = filled - offset
        if offset and rest:
            small[:rest] = small[offset:filled]
        self._filled = rest

    def data_received(self, data: bytes) -> None:
        """For transports without buffered-protocol support."""
        view = memoryview(data)
        while view:
            buf = self.get_buffer(len(view))
            n = min(len(buf), len(view))
            buf[:n] = view[:n]
            self.buffer_updated(n)
            view = view[n:]

    def _frame(self, frame: memoryview) -> None:
        kind, req_id = codec.decode_header(frame)
        try:
            payload = codec.decode(frame)
        except Exception as exc:
            logger.warning("could not decode a frame (kind %d, request %d): %r", kind, req_id, exc)
            self._undecodable(kind, req_id, exc)
            return
        self._dispatch(kind, req_id, payload)

    def connection_lost(self, exc: Exception | None) -> None:
        self._transport = None
        lost = ConnectionLost("connection closed by peer")
        pending, self._pending = self._pending, {}
        for entry in pending.values():
            if isinstance(entry, StreamSink):
                entry.on_error(lost)
            elif not entry.done():
                entry.set_exception(lost)
        for task in self._tasks.values():
            task.cancel()
        self._tasks.clear()
        self._inboxes.clear()
        if not self.closed.done():
            self.closed.set_result(None)
        for callback in self.on_close:
            callback(self)

    def set_handler(self, handler: object) -> None:
        """Serve the peer's calls with ``handler`` from now on."""
        self._handler = handler

    # -- sending ------------------------------------------------------------
    @property
    def is_open(self) -> bool:
        return self._transport is not None and not self._transport.is_closing()

    def _send(self, kind: int, req_id: int, payload: Any) -> None:
        if self._transport is None:
            raise ConnectionLost("connection is closed")
        self._out.extend(codec.encode(payload, kind, req_id))
        if not self._flush_scheduled:
            self._flush_scheduled = True
            self._loop.call_soon(self._flush)

    def _flush(self) -> None:
        self._flush_scheduled = False
        out, self._out = self._out, []
        if self._transport is None or not out:
            return
        if not self._backlog and sum(len(chunk) for chunk in out) <= _WRITE_SLICE_BYTES:
            self._transport.write(out[0] if len(out) == 1 else b"".join(out))
            return
        self._backlog.extend(memoryview(chunk).cast("B") for chunk in out)
        self._pump()

    def _pump(self) -> None:
        """Write queued data in slices, as fast as the peer reads it.

        Large frames go out ``_WRITE_SLICE_BYTES`` at a time while the transport
        is not paused, so its buffer never holds (and shifts) megabytes; small
        chunks are gathered into one write.
        """
        backlog, transport = self._backlog, self._transport
        while backlog and not self._write_paused and transport is not None:
            head = backlog[0]
            if len(head) > _WRITE_SLICE_BYTES:
                backlog[0] = head[_WRITE_SLICE_BYTES:]
                transport.write(head[:_WRITE_SLICE_BYTES])
                continue
            batch, size = [], 0
            while backlog and size + len(backlog[0]) <= _WRITE_SLICE_BYTES:
                chunk = backlog.popleft()
                batch.append(chunk)
                size += len(chunk)
            transport.write(batch[0] if len(batch) == 1 else b"".join(batch))

    def pause_writing(self) -> None:
        self._write_paused = True

    def resume_writing(self) -> None:
        self._write_paused = False
        self._pump()

    def close(self) -> None:
        if self._transport is not None:
            self._flush()
            while self._backlog:  # the transport sends what is left before closing
                self._transport.write(self._backlog.popleft())
            self._transport.close()

    # -- outgoing calls -----------------------------------------------------
    async def call(self, method: str, *args: Any, **kwargs: Any) -> Any:
        """Call ``rpc_<method>`` on the peer and return its result."""
        req_id, fut = self.call_future(method, args, kwargs)
        try:
            return await fut
        except asyncio.CancelledError:
            self._cancel(req_id)
            raise

    def notify(self, method: str, *args: Any) -> None:
        """Call ``rpc_<method>`` on the peer without waiting for (or getting) an answer."""
        if self.is_open:
            self._send(REQ, 0, (method, args, {}, _UNARY))

    def call_future(
        self, method: str, args: tuple[Any, ...], kwargs: dict[str, Any]
    ) -> tuple[int, asyncio.Future[Any]]:
        """Start a call without a coroutine; returns (request id, future)."""
        req_id = next(self._ids)
        fut: asyncio.Future[Any] = self._loop.create_future()
        self._pending[req_id] = fut
        self._send(REQ, req_id, (method, args, kwargs, _UNARY))
        return req_id, fut

    async def stream(self, method: str, *args: Any, **kwargs: Any) -> AsyncIterator[Any]:
        """Call a streaming ``rpc_<method>`` on the peer and yield its items."""
        req_id = next(self._ids)
        stream = QueueSink()
        self._pending[req_id] = stream
        self._send(REQ, req_id, (method, args, kwargs, _STREAM))
        finished = False
        try:
            while True:
                item = await stream.queue.get()
                if item is END_OF_STREAM:
                    finished = True
                    return
                if isinstance(item, BaseException):
                    finished = True
                    raise item
                yield item
        finally:
            if not finished:
                self._cancel(req_id)

    def stream_to(self, method: str, args: tuple[Any, ...], sink: StreamSink) -> int:
        """Start a streaming call whose items go to ``sink`` by callback; returns its id."""
        req_id = next(self._ids)
        self._pending[req_id] = sink
        self._send(REQ, req_id, (method, args, {}, _STREAM))
        return req_id

    def open_duplex(self, method: str, args: tuple[Any, ...], sink: StreamSink) -> int:
        """Start a duplex call: like :meth:`stream_to`, and :meth:`push` sends items into it.

        The peer's ``rpc_<method>(emit, inbox, *args)`` receives the pushed items
        through ``inbox`` (an :class:`Inbox`). Returns the call's id.
        """
        req_id = next(self._ids)
        self._pending[req_id] = sink
        self._send(REQ, req_id, (method, args, {}, _DUPLEX))
        return req_id

    def push(self, req_id: int, item: Any) -> None:
        """Send ``item`` into the open duplex call ``req_id`` (nothing if it has ended)."""
        if req_id in self._pending and self.is_open:
            self._send(PUSH, req_id, item)

    def _cancel(self, req_id: int) -> None:
        if self._pending.pop(req_id, None) is not None and self.is_open:
            self._send(CANCEL, req_id, None)

    def cancel_request(self, req_id: int) -> None:
        """Tell the peer to cancel request ``req_id`` (started with :meth:`call_future`)."""
        self._cancel(req_id)

    # -- incoming messages ----------------------------------------------------
    def _dispatch(self, kind: int, req_id: int, payload: Any) -> None:
        if kind == OK:
            fut = self._pending.pop(req_id, None)
            if fut is not None and not isinstance(fut, StreamSink) and not fut.done():
                fut.set_result(payload)
        elif kind == REQ:
            method, args, kwargs, stream = payload
            self._handle_request(req_id, method, args, kwargs, stream)
        elif kind == ITEM:
            entry = self._pending.get(req_id)
            if isinstance(entry, StreamSink):
                entry.on_item(payload)
        elif kind == END:
            entry = self._pending.pop(req_id, None)
            if isinstance(entry, StreamSink):
                entry.on_end(payload)
        elif kind == ERR:
            self._fail(req_id, RemoteCallError(payload))
        elif kind == PUSH:
            inbox = self._inboxes.get(req_id)
            if inbox is not None:
                inbox.put(payload)
        elif kind == CANCEL:
            task = self._tasks.pop(req_id, None)
            if task is not None:
                task.cancel()

    def _fail(self, req_id: int, error: BaseException) -> None:
        entry = self._pending.pop(req_id, None)
        if isinstance(entry, StreamSink):
            entry.on_error(error)
        elif entry is not None and not entry.done():
            entry.set_exception(error)

    def _undecodable(self, kind: int, req_id: int, exc: BaseException) -> None:
        if kind == REQ:
            self._reply(ERR, req_id, _decode_error(exc))
        elif kind in (OK, ITEM, END, ERR):  # an undecodable PUSH is dropped
            self._fail(req_id, RemoteCallError(_decode_error(exc)))

    def _handle_request(
        self, req_id: int, method: str, args: tuple[Any, ...], kwargs: dict[str, Any], stream: int
    ) -> None:
        fn = getattr(self._handler, "rpc_" + method, None)
        if fn is None:
            error = AttributeError(f"peer has no RPC method {method!r}")
            self._reply(ERR, req_id, RemoteError.from_exception(error))
            return
        if stream == _DUPLEX and req_id:
            inbox = Inbox()
            self._inboxes[req_id] = inbox
            self._start_task(req_id, self._run_stream(req_id, fn, (inbox, *args), kwargs))
            return
        if stream:
            self._start_task(req_id, self._run_stream(req_id, fn, args, kwargs))
            return
        try:
            result = fn(*args, **kwargs)
        except Exception as exc:
            self._reply(ERR, req_id, RemoteError.from_exception(exc))
            return
        if inspect.isawaitable(result):
            self._start_task(req_id, self._run_call(req_id, result))
        else:
            self._reply(OK, req_id, result)

    def _start_task(self, req_id: int, coro: Any) -> None:
        task = self._loop.create_task(coro)
        if req_id == 0:  # a notification: keep it alive, nobody can cancel it
            self._notifications.add(task)
            task.add_done_callback(self._notifications.discard)
            return
        self._tasks[req_id] = task
        task.add_done_callback(lambda _t: self._call_ended(req_id))

    def _call_ended(self, req_id: int) -> None:
        self._tasks.pop(req_id, None)
        self._inboxes.pop(req_id, None)

    async def _run_call(self, req_id: int, awaitable: Awaitable[Any]) -> None:
        try:
            result = await awaitable
        except asyncio.CancelledError:
            return
        except Exception as exc:
            self._reply(ERR, req_id, RemoteError.from_exception(exc))
        else:
            self._reply(OK, req_id, result)

    async def _run_stream(
        self, req_id: int, fn: Callable[..., Any], args: tuple[Any, ...], kwargs: dict[str, Any]
    ) -> None:
        last = None
        try:
            if inspect.isasyncgenfunction(fn):
                async for item in fn(*args, **kwargs):
                    self._reply(ITEM, req_id, item)
            else:
                last = await fn(lambda item: self._reply(ITEM, req_id, item), *args, **kwargs)
        except asyncio.CancelledError:
            return
        except Exception as exc:
            self._reply(ERR, req_id, RemoteError.from_exception(exc))
        else:
            self._reply(END, req_id, last)

    def _reply(self, kind: int, req_id: int, payload: Any) -> None:
        if self._transport is None or req_id == 0:
            return
        try:
            self._send(kind, req_id, payload)
        except ConnectionLost:
            return
        except (TypeError, AttributeError, pickle.PicklingError) as exc:
            if kind == ERR:
                raise
            self._send(ERR, req_id, RemoteError.from_exception(_unpicklable(kind, payload, exc)))
        except Exception as exc:
            if kind == ERR:
                raise
            self._send(ERR, req_id, RemoteError.from_exception(exc))


def _unpicklable(kind: int, payload: Any, exc: Exception) -> TypeError:
    """The error the caller gets for a result or streamed item that cannot be pickled."""
    what = "streamed item" if kind == ITEM else "result"
    cls = type(payload)
    name = (
        cls.__qualname__ if cls.__module__ == "builtins" else f"{cls.__module__}.{cls.__qualname__}"
    )
    error = TypeError(
        f"The {what} (of type {name!r}) cannot be sent back to the caller: {exc}. Return "
        "something pickle or cloudpickle can serialize (not a lock, open file, socket, ...)."
    )
    error.__cause__ = exc
    return error


async def connect_unix(path: str, handler: object | None = None) -> Connection:
    """Open a connection to the RPC server listening on the Unix socket ``path``."""
    loop = asyncio.get_running_loop()
    _, protocol = await loop.create_unix_connection(lambda: Connection(handler), path)
    return protocol


async def serve_unix(path: str, handler_factory: Callable[[], object]) -> asyncio.Server:
    """Listen on the Unix socket ``path`` (mode 0600); each connection gets a new handler."""
    loop = asyncio.get_running_loop()
    if os.path.exists(path):
        os.unlink(path)
    old_umask = os.umask(0o177)
    try:
        server = await loop.create_unix_server(lambda: Connection(handler_factory()), path)
    finally:
        os.umask(old_umask)
    return server
