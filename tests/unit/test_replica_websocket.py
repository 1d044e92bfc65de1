"""The replica's side of a WebSocket: ASGI receive/send over a duplex call, with flow control."""

from __future__ import annotations

import asyncio
from collections.abc import Callable, Coroutine
from typing import Any

import pytest

from schooner.replica.websocket import ClientDisconnected, WebSocketSession, make_scope
from schooner.rpc.connection import Inbox
from schooner.rpc.flow import MESSAGE_OVERHEAD_BYTES, Acks, Credit

TIMEOUT_S = 5.0


def run(test: Callable[[], Coroutine[Any, Any, None]]) -> None:
    async def main() -> None:
        await asyncio.wait_for(test(), TIMEOUT_S)

    asyncio.run(main())


def session(window_bytes: int = 1 << 20) -> tuple[WebSocketSession, Inbox, list[Any]]:
    emitted: list[Any] = []
    inbox = Inbox()
    return WebSocketSession(emitted.append, inbox, window_bytes), inbox, emitted


async def settle() -> None:
    """Let callbacks scheduled with call_soon (coalesced acks) run."""
    for _ in range(3):
        await asyncio.sleep(0)


def test_credit_counts_messages_until_acknowledged_in_order() -> None:
    credit = Credit(window_bytes=300)
    credit.sent(b"x" * 100)
    assert not credit.exhausted
    credit.sent("y" * 100)
    assert credit.exhausted  # 2 * (100 + overhead) >= 300
    credit.acknowledged(1)
    assert credit.in_flight_bytes == 100 + MESSAGE_OVERHEAD_BYTES
    credit.acknowledged(5)  # more than sent: ignored past what is in flight
    assert credit.in_flight_bytes == 0


def test_acks_are_coalesced_per_loop_iteration() -> None:
    async def body() -> None:
        sent: list[int] = []
        acks = Acks(sent.append, asyncio.get_running_loop())
        for _ in range(5):
            acks.consumed()
        acks.consumed(3)
        assert sent == []
        await settle()
        assert sent == [8]

    run(body)


def test_scope_lists_offered_subprotocols() -> None:
    request = (
        "GET",
        "/app/ws",
        b"/app/ws",
        b"a=1",
        [(b"sec-websocket-protocol", b"chat, superchat")],
        "1.1",
        ("127.0.0.1", 5000),
        ("127.0.0.1", 8000),
        "/app",
        "http",
    )
    scope = make_scope(request)
    assert scope["type"] == "websocket"
    assert scope["scheme"] == "ws"
    assert scope["subprotocols"] == ["chat", "superchat"]
    assert scope["root_path"] == "/app"
    assert scope["query_string"] == b"a=1"
    # Behind an HTTPS proxy the connection is a secure WebSocket.
    assert make_scope((*request[:-1], "https"))["scheme"] == "wss"


def test_connect_accept_receive_send_close() -> None:
    async def body() -> None:
        ws, inbox, emitted = session()
        inbox.put("early")  # pushed before the app reads: kept in order
        assert await ws.receive() == {"type": "websocket.connect"}
        await ws.send({"type": "websocket.accept", "subprotocol": "chat"})
        assert ws.handshake_done
        assert await ws.receive() == {"type": "websocket.receive", "text": "early"}
        inbox.put(b"\x00")
        assert await ws.receive() == {"type": "websocket.receive", "bytes": b"\x00"}
        await ws.send({"type": "websocket.send", "text": "hi"})
        await ws.send({"type": "websocket.send", "bytes": b"yo"})
        await ws.send({"type": "websocket.close", "code": 4000, "reason": "done"})
        await settle()
        assert emitted == [
            {"type": "websocket.accept", "subprotocol": "chat"},
            "hi",
            b"yo",
            {"type": "websocket.close", "code": 4000, "reason": "done"},
            2,  # the two messages received, acknowledged together
        ]
        with pytest.raises(RuntimeError):
            await ws.send({"type": "websocket.send", "text": "after close"})

    run(body)


def test_send_waits_while_the_window_is_full() -> None:
    async def body() -> None:
        ws, inbox, emitted = session(window_bytes=1000)
        await ws.receive()
        await ws.send({"type": "websocket.accept"})
        await ws.send({"type": "websocket.send", "bytes": b"x" * 500})
        blocked = asyncio.ensure_future(ws.send({"type": "websocket.send", "bytes": b"y" * 500}))
        await settle()
        assert not blocked.done()  # 2 * (500 + overhead) is over the window
        assert emitted[-1] == b"y" * 500  # sent, but the app waits before its next one
        inbox.put(1)
        await settle()
        assert blocked.done()

    run(body)


def test_disconnect_is_reported_and_ends_sending() -> None:
    async def body() -> None:
        ws, inbox, _ = session(window_bytes=100)
        await ws.receive()
        await ws.send({"type": "websocket.accept"})
        blocked = asyncio.ensure_future(ws.send({"type": "websocket.send", "bytes": b"x" * 200}))
        waiting = asyncio.ensure_future(ws.receive())
        await settle()
        inbox.put((1001, "going away"))
        await settle()
        assert blocked.done()  # released: the client is gone, no ack will come
        assert waiting.result() == {
            "type": "websocket.disconnect",
            "code": 1001,
            "reason": "going away",
        }
        assert (await ws.receive())["type"] == "websocket.disconnect"  # and stays so
        with pytest.raises(ClientDisconnected):
            await ws.send({"type": "websocket.send", "text": "anyone?"})

    run(body)


def test_close_before_accept_and_denial_response() -> None:
    async def body() -> None:
        ws, _, emitted = session()
        await ws.receive()
        await ws.send({"type": "websocket.close", "code": 1000})
        assert ws.closed
        assert emitted == [{"type": "websocket.close", "code": 1000}]

        ws, _, emitted = session()
        await ws.receive()
        with pytest.raises(RuntimeError):
            await ws.send({"type": "websocket.send", "text": "before accept"})
        await ws.send({"type": "websocket.http.response.start", "status": 401, "headers": []})
        await ws.send({"type": "websocket.http.response.body", "body": b"no"})
        assert ws.closed
        assert [m["type"] for m in emitted] == [
            "websocket.http.response.start",
            "websocket.http.response.body",
        ]

    run(body)
