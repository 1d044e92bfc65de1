"""The RPC connection, two ends wired over an in-process socketpair (no network, no processes)."""

from __future__ import annotations

import asyncio
import socket
import threading
from collections.abc import AsyncGenerator, AsyncIterator, Awaitable, Callable, Coroutine
from typing import Any, cast

import numpy as np
import pytest

from schooner.rpc import connection as rpc
from schooner.rpc.connection import Connection, ConnectionLost, RemoteCallError

TIMEOUT_S = 5.0


def run(test: Callable[[], Coroutine[Any, Any, None]]) -> None:
    """Run one async test body with a deadline (a hung test fails instead of blocking)."""

    async def main() -> None:
        await asyncio.wait_for(test(), TIMEOUT_S)

    asyncio.run(main())


class Recording(Connection):
    """A Connection that remembers every message it received."""

    def __init__(self, handler: object | None = None) -> None:
        super().__init__(handler)
        self.received: list[tuple[Any, ...]] = []

    def _dispatch(self, kind: int, req_id: int, payload: Any) -> None:
        self.received.append((kind, req_id, payload))
        super()._dispatch(kind, req_id, payload)


async def wire(
    server_handler: object | None, client_handler: object | None = None
) -> tuple[Recording, Recording]:
    """(client, server) connected over a socketpair; the server end serves ``server_handler``."""
    loop = asyncio.get_running_loop()
    a, b = socket.socketpair()
    _, client = await loop.create_connection(lambda: Recording(client_handler), sock=a)
    _, server = await loop.create_connection(lambda: Recording(server_handler), sock=b)
    return client, server


class BadArgsError(Exception):
    """Pickles fine, but unpickling calls ``__init__(message)`` and fails."""

    def __init__(self, code: int, detail: str) -> None:
        super().__init__(f"{code}: {detail}")
        self.code = code


class Handler:
    def __init__(self) -> None:
        self.started: dict[str, asyncio.Event] = {}
        self.cancelled: dict[str, asyncio.Event] = {}
        self.notes: list[Any] = []
        self.noted = asyncio.Event()
        self.release = asyncio.Event()
        self.sync_in_task: list[bool] = []

    def _event(self, table: dict[str, asyncio.Event], key: str) -> asyncio.Event:
        return table.setdefault(key, asyncio.Event())

    # plain calls
    def rpc_add(self, a: int, b: int, *, scale: int = 1) -> int:
        self.sync_in_task.append(asyncio.current_task() is not None)
        return (a + b) * scale

    async def rpc_echo(self, value: Any) -> Any:
        return value

    def rpc_later(self, value: Any) -> Awaitable[Any]:
        """Not ``async def`` but returns an awaitable: still awaited before replying."""
        return self.rpc_echo(value)

    async def rpc_fail(self, message: str) -> None:
        raise ValueError(message)

    def rpc_fail_sync(self) -> None:
        raise KeyError("missing")

    async def rpc_fail_unpicklable(self) -> None:
        err = RuntimeError("holds a lock")
        err.lock = threading.Lock()  # type: ignore[attr-defined]
        raise err

    async def rpc_fail_bad_args(self) -> None:
        raise BadArgsError(404, "not here")

    def rpc_unpicklable_result(self) -> Any:
        return threading.Lock()

    async def rpc_block(self, key: str) -> str:
        self._event(self.started, key).set()
        try:
            await self.release.wait()
        except asyncio.CancelledError:
            self._event(self.cancelled, key).set()
            raise
        return key

    async def rpc_gated(self, index: int) -> int:
        """Returns once ``self.release`` is set."""
        self._event(self.started, str(index)).set()
        await self.release.wait()
        return index * 10

    # notifications
    def rpc_note(self, value: Any) -> None:
        self.notes.append(value)
        self.noted.set()

    async def rpc_note_async(self, value: Any) -> str:
        self.notes.append(value)
        self.noted.set()
        return "a reply nobody asked for"

    # streams
    async def rpc_count(self, n: int) -> AsyncIterator[int]:
        for i in range(n):
            yield i

    async def rpc_count_then_fail(self, n: int) -> AsyncIterator[int]:
        for i in range(n):
            yield i
        raise RuntimeError(f"failed after {n}")

    async def rpc_endless(self, key: str) -> AsyncIterator[int]:
        i = 0
        try:
            while True:
                yield i
                i += 1
                self._event(self.started, key).set()
                await self.release.wait()
        except asyncio.CancelledError:
            self._event(self.cancelled, key).set()
            raise


# -- call / return --------------------------------------------------------------


def test_call_returns_value() -> None:
    async def body() -> None:
        client, _ = await wire(Handler())
        assert await client.call("add", 2, 3) == 5
        assert await client.call("add", 2, 3, scale=10) == 50
        assert await client.call("echo", {"nested": [1, (2, 3)]}) == {"nested": [1, (2, 3)]}
        assert await client.call("later", "x") == "x"

    run(body)


def test_sync_handler_answers_without_a_task() -> None:
    async def body() -> None:
        handler = Handler()
        client, _ = await wire(handler)
        assert await client.call("add", 1, 1) == 2
        assert handler.sync_in_task == [False]

    run(body)


def test_large_array_arguments_and_results() -> None:
    async def body() -> None:
        client, _ = await wire(Handler())
        arr = np.random.default_rng(0).random((512, 512))  # 2 MiB, many socket reads
        out = await client.call("echo", arr)
        np.testing.assert_array_equal(out, arr)

    run(body)


def test_either_side_may_call_the_other() -> None:
    async def body() -> None:
        client, server = await wire(Handler(), client_handler=Handler())
        assert await server.call("add", 4, 5) == 9
        assert await client.call("add", 1, 2) == 3

    run(body)


def test_call_future_and_cancel_request() -> None:
    async def body() -> None:
        handler = Handler()
        client, _ = await wire(handler)
        _, fut = client.call_future("echo", ("v",), {})
        assert await fut == "v"
        req_id, fut = client.call_future("block", ("k",), {})
        await handler._event(handler.started, "k").wait()
        client.cancel_request(req_id)
        await handler._event(handler.cancelled, "k").wait()
        assert not fut.done()  # the caller's future is its own to cancel

    run(body)


# -- errors --------------------------------------------------------------------------


def test_handler_exception_comes_back_as_remote_call_error() -> None:
    async def body() -> None:
        client, _ = await wire(Handler())
        with pytest.raises(RemoteCallError) as info:
            await client.call("fail", "bad input")
        error = info.value.error
        assert error.type_name == "ValueError"
        assert error.message == "bad input"
        assert "rpc_fail" in error.traceback
        assert "ValueError: bad input" in error.traceback
        assert isinstance(error.exc, ValueError) and error.exc.args == ("bad input",)
        assert str(info.value) == "ValueError: bad input"
        # The connection stays usable.
        assert await client.call("add", 1, 2) == 3

    run(body)


def test_sync_handler_exception() -> None:
    async def body() -> None:
        client, _ = await wire(Handler())
        with pytest.raises(RemoteCallError) as info:
            await client.call("fail_sync")
        assert info.value.error.type_name == "KeyError"
        assert isinstance(info.value.error.exc, KeyError)

    run(body)


def test_unpicklable_exception_keeps_its_description() -> None:
    async def body() -> None:
        client, _ = await wire(Handler())
        with pytest.raises(RemoteCallError) as info:
            await client.call("fail_unpicklable")
        error = info.value.error
        assert error.exc is None
        assert error.type_name == "RuntimeError"
        assert error.message == "holds a lock"
        assert "rpc_fail_unpicklable" in error.traceback
        assert await client.call("add", 1, 2) == 3

    run(body)


def test_exception_that_cannot_be_rebuilt_does_not_kill_the_connection() -> None:
    async def body() -> None:
        client, _ = await wire(Handler())
        with pytest.raises(RemoteCallError) as info:
            await client.call("fail_bad_args")
        assert info.value.error.type_name == "BadArgsError"
        assert info.value.error.message == "404: not here"
        assert await client.call("add", 1, 2) == 3

    run(body)


def test_unpicklable_result_becomes_an_error() -> None:
    async def body() -> None:
        client, _ = await wire(Handler())
        with pytest.raises(RemoteCallError) as info:
            await client.call("unpicklable_result")
        error = info.value.error
        assert error.type_name == "TypeError"
        assert "The result (of type '_thread.lock') cannot be sent back" in error.message
        assert isinstance(error.exc, TypeError)  # rebuilt in the caller
        assert await client.call("echo", 1) == 1

    run(body)


def test_unknown_method() -> None:
    async def body() -> None:
        client, _ = await wire(Handler())
        with pytest.raises(RemoteCallError) as info:
            await client.call("nope")
        assert info.value.error.type_name == "AttributeError"
        assert "'nope'" in info.value.error.message

    run(body)


# -- streaming ------------------------------------------------------------------------


def test_stream_yields_items_then_ends() -> None:
    async def body() -> None:
        client, _ = await wire(Handler())
        assert [i async for i in client.stream("count", 5)] == [0, 1, 2, 3, 4]
        assert [i async for i in client.stream("count", 0)] == []
        kinds = [m[0] for m in client.received]
        assert kinds == [rpc.ITEM] * 5 + [rpc.END, rpc.END]
        assert await client.call("echo", "after") == "after"

    run(body)


def test_stream_error_mid_stream() -> None:
    async def body() -> None:
        client, _ = await wire(Handler())
        items = []
        with pytest.raises(RemoteCallError) as info:
            async for item in client.stream("count_then_fail", 3):
                items.append(item)
        assert items == [0, 1, 2]
        assert info.value.error.type_name == "RuntimeError"
        assert info.value.error.message == "failed after 3"

    run(body)


def test_closing_a_stream_early_cancels_the_generator() -> None:
    async def body() -> None:
        handler = Handler()
        client, _ = await wire(handler)
        stream = cast(AsyncGenerator[Any, None], client.stream("endless", "s"))
        assert await anext(stream) == 0
        await handler._event(handler.started, "s").wait()
        await stream.aclose()
        await handler._event(handler.cancelled, "s").wait()

    run(body)


# -- cancellation ------------------------------------------------------------------------


def test_cancelling_a_call_cancels_the_handler_task() -> None:
    async def body() -> None:
        handler = Handler()
        client, _ = await wire(handler)
        task = asyncio.ensure_future(client.call("block", "c"))
        await handler._event(handler.started, "c").wait()
        task.cancel()
        await handler._event(handler.cancelled, "c").wait()
        assert task.cancelled()
        # No reply is sent for a cancelled call, and the connection keeps working.
        assert await client.call("echo", 1) == 1
        assert [m[0] for m in client.received] == [rpc.OK]

    run(body)


def test_cancelling_one_call_leaves_others_running() -> None:
    async def body() -> None:
        handler = Handler()
        client, _ = await wire(handler)
        doomed = asyncio.ensure_future(client.call("block", "doomed"))
        kept = asyncio.ensure_future(client.call("block", "kept"))
        await handler._event(handler.started, "doomed").wait()
        await handler._event(handler.started, "kept").wait()
        doomed.cancel()
        await handler._event(handler.cancelled, "doomed").wait()
        handler.release.set()
        assert await kept == "kept"
        assert "kept" not in handler.cancelled

    run(body)


# -- connection loss ------------------------------------------------------------------------


def test_connection_loss_fails_pending_calls_and_streams() -> None:
    async def body() -> None:
        handler = Handler()
        client, server = await wire(handler)
        closed_callbacks: list[Connection] = []
        client.on_close.append(closed_callbacks.append)
        call = asyncio.ensure_future(client.call("block", "lost"))
        stream = client.stream("endless", "stream")
        assert await anext(stream) == 0
        await handler._event(handler.started, "lost").wait()
        await handler._event(handler.started, "stream").wait()
        server.close()  # the peer goes away
        with pytest.raises(ConnectionLost):
            await call
        with pytest.raises(ConnectionLost):
            await anext(stream)
        await client.closed
        assert closed_callbacks == [client]
        assert not client.is_open
        # The peer's own handler tasks were cancelled with the connection.
        await handler._event(handler.cancelled, "lost").wait()
        with pytest.raises(ConnectionLost):
            await client.call("echo", 1)

    run(body)


# -- notifications -------------------------------------------------------------------------


def test_notify_gets_no_reply() -> None:
    async def body() -> None:
        handler = Handler()
        client, _ = await wire(handler)
        client.notify("note", "sync")
        await handler.noted.wait()
        handler.noted.clear()
        client.notify("note_async", "async")
        await handler.noted.wait()
        # A later call's reply is the only message that comes back.
        assert await client.call("echo", "done") == "done"
        assert handler.notes == ["sync", "async"]
        assert [(m[0], m[-1]) for m in client.received] == [(rpc.OK, "done")]

    run(body)


def test_notify_unknown_method_gets_no_reply() -> None:
    async def body() -> None:
        client, _ = await wire(Handler())
        client.notify("nope")
        assert await client.call("echo", "done") == "done"
        assert [m[0] for m in client.received] == [rpc.OK]

    run(body)


def test_notify_on_closed_connection_is_a_no_op() -> None:
    async def body() -> None:
        client, server = await wire(Handler())
        server.close()
        await client.closed
        client.notify("note", 1)  # must not raise

    run(body)


# -- multiplexing ----------------------------------------------------------------------------


def test_many_concurrent_calls_are_multiplexed() -> None:
    async def body() -> None:
        handler = Handler()
        client, _ = await wire(handler)
        n = 200
        calls = [asyncio.ensure_future(client.call("gated", i)) for i in range(n)]
        for i in range(n):  # all are in flight on the one connection at the same time
            await handler._event(handler.started, str(i)).wait()
        assert not any(c.done() for c in calls)
        handler.release.set()
        assert await asyncio.gather(*calls) == [i * 10 for i in range(n)]
        assert len({m[1] for m in client.received}) == n  # one reply per distinct request id

    run(body)


def test_replies_are_matched_by_id_when_out_of_order() -> None:
    async def body() -> None:
        handler = Handler()
        client, _ = await wire(handler)
        slow = asyncio.ensure_future(client.call("block", "slow"))
        await handler._event(handler.started, "slow").wait()
        assert await client.call("add", 1, 1) == 2  # answered while "slow" is in flight
        assert not slow.done()
        handler.release.set()
        assert await slow == "slow"

    run(body)


def test_result_that_cannot_be_decoded_fails_only_its_own_call() -> None:
    class Unloadable:
        def __reduce__(self):
            return (_explode, ())

    class Handler:
        def rpc_bad(self) -> object:
            return Unloadable()

        def rpc_good(self) -> str:
            return "fine"

    async def test() -> None:
        client, _server = await wire(Handler())
        with pytest.raises(RemoteCallError) as info:
            await client.call("bad")
        assert info.value.error.type_name == "DecodeError"
        assert "cannot be loaded here" in info.value.error.message
        assert await client.call("good") == "fine"  # the connection survived

    run(test)


def _explode() -> object:
    raise RuntimeError("cannot be loaded here")


def test_emit_style_stream_sends_items_and_a_final_value() -> None:
    class Handler:
        async def rpc_parts(self, emit: Callable[[Any], None], n: int) -> str:
            for i in range(n):
                emit(i)
            return "last"

    async def test() -> None:
        client, _server = await wire(Handler())
        assert [x async for x in client.stream("parts", 3)] == [0, 1, 2, "last"]

    run(test)


def test_large_frames_interleave_in_order_with_small_calls() -> None:
    """Big payloads are written in slices; small calls queued behind them keep their order."""
    import numpy as np

    class Handler:
        def rpc_echo(self, x: Any) -> Any:
            return x

    async def test() -> None:
        client, _server = await wire(Handler())
        big = np.arange(3 * 1024 * 1024, dtype=np.float32)  # 12 MiB
        calls = [client.call("echo", big if i % 3 == 0 else i) for i in range(9)]
        results = await asyncio.gather(*calls)
        for i, result in enumerate(results):
            if i % 3 == 0:
                assert np.array_equal(result, big)
            else:
                assert result == i

    run(test)


# -- duplex calls ------------------------------------------------------------------------


class Collect(rpc.StreamSink):
    """A StreamSink that queues what arrives (items, then "END" or the error)."""

    def __init__(self) -> None:
        self.queue: asyncio.Queue[Any] = asyncio.Queue()

    def on_item(self, item: Any) -> None:
        self.queue.put_nowait(item)

    def on_end(self, last: Any) -> None:
        self.queue.put_nowait(("END", last))

    def on_error(self, error: BaseException) -> None:
        self.queue.put_nowait(error)


class DuplexHandler:
    def __init__(self) -> None:
        self.cancelled = asyncio.Event()
        self.inboxes: list[rpc.Inbox] = []

    async def rpc_upper(self, emit: Callable[[Any], None], inbox: rpc.Inbox, stop: str) -> str:
        """Emits each pushed string upper-cased; returns once ``stop`` is pushed."""
        done = asyncio.get_running_loop().create_future()
        self.inboxes.append(inbox)

        def pushed(item: Any) -> None:
            if item == stop:
                done.set_result(None)
            else:
                emit(item.upper())

        inbox.listen(pushed)
        try:
            await done
        except asyncio.CancelledError:
            self.cancelled.set()
            raise
        return "bye"


def test_duplex_call_carries_pushes_and_items_both_ways() -> None:
    async def body() -> None:
        handler = DuplexHandler()
        client, server = await wire(handler)
        sink = Collect()
        req_id = client.open_duplex("upper", ("stop",), sink)
        client.push(req_id, "a")  # may arrive with the call itself, before the handler runs
        client.push(req_id, "b")
        assert await sink.queue.get() == "A"
        assert await sink.queue.get() == "B"
        client.push(req_id, "stop")
        assert await sink.queue.get() == ("END", "bye")
        client.push(req_id, "late")  # the call has ended: dropped, nothing breaks
        assert not server._inboxes

    run(body)


def test_cancelling_a_duplex_call_cancels_its_handler() -> None:
    async def body() -> None:
        handler = DuplexHandler()
        client, _ = await wire(handler)
        sink = Collect()
        req_id = client.open_duplex("upper", ("stop",), sink)
        client.push(req_id, "x")
        assert await sink.queue.get() == "X"
        client.cancel_request(req_id)
        await handler.cancelled.wait()
        assert sink.queue.empty()

    run(body)
