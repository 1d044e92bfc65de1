"""WebSockets through the proxy to an ``@serve.ingress`` FastAPI app, with a real client."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Awaitable, Callable
from typing import Any

import pytest
import websockets
from fastapi import FastAPI, WebSocket, WebSocketDisconnect
from helpers import wait_for
from websockets.asyncio.client import ClientConnection, connect

import schooner as serve

TIMEOUT_S = 30.0
app = FastAPI()


@serve.deployment(max_ongoing_requests=20)
@serve.ingress(app)
class Chat:
    """WebSocket endpoints that record what they saw, readable over plain HTTP."""

    def __init__(self) -> None:
        self.events: list[list[Any]] = []
        self.sent = 0
        self.draining = asyncio.Event()

    @app.get("/events")
    def get_events(self) -> list[list[Any]]:
        return self.events

    @app.get("/sent")
    def get_sent(self) -> int:
        return self.sent

    @app.post("/drain")
    async def drain(self) -> None:
        self.draining.set()

    @app.websocket("/sink")
    async def sink(self, websocket: WebSocket) -> None:
        """Reads nothing until /drain is called; then counts bytes until a text message."""
        await websocket.accept()
        await self.draining.wait()
        total = 0
        while True:
            message = await websocket.receive()
            if message.get("bytes") is None:
                await websocket.send_text(str(total))
                return
            total += len(message["bytes"])

    @app.websocket("/echo")
    async def echo(self, websocket: WebSocket) -> None:
        offered = websocket.scope["subprotocols"]
        await websocket.accept(subprotocol=offered[0] if offered else None)
        while True:
            message = await websocket.receive()
            if message["type"] == "websocket.disconnect":
                self.events.append(["disconnect", message["code"], message.get("reason") or ""])
                return
            text = message.get("text")
            if text is None:
                await websocket.send_bytes(message["bytes"][::-1])
            elif text.startswith("close "):
                await websocket.close(int(text.split()[1]), "bye from the server")
                return
            else:
                await websocket.send_text("echo: " + text)

    @app.websocket("/whoami")
    async def whoami(self, websocket: WebSocket) -> None:
        await websocket.accept()
        await websocket.send_text(serve.get_replica_context().app_name)
        await websocket.close()

    @app.websocket("/reject")
    async def reject(self, websocket: WebSocket) -> None:
        await websocket.close()  # before accept: the client gets 403

    @app.websocket("/boom")
    async def boom(self, websocket: WebSocket) -> None:
        await websocket.accept()
        await websocket.receive_text()
        raise RuntimeError("boom")

    @app.websocket("/stream")
    async def stream(self, websocket: WebSocket) -> None:
        count = int(websocket.query_params["count"])
        size = int(websocket.query_params["size"])
        await websocket.accept()
        chunk = b"x" * size
        try:
            for _ in range(count):
                await websocket.send_bytes(chunk)
                self.sent += 1
        except WebSocketDisconnect as exc:
            self.events.append(["stream ended", exc.code])
            return
        await websocket.close(1000, "all sent")


def run(body: Callable[[], Awaitable[None]]) -> None:
    async def main() -> None:
        await asyncio.wait_for(body(), TIMEOUT_S)

    asyncio.run(main())


@pytest.fixture
def chat(clean: Any) -> Any:
    serve.run(Chat.bind(), name="chat", route_prefix="/chat")
    return clean


def ws_url(instance: Any, path: str) -> str:
    return f"ws://127.0.0.1:{instance.port}{path}"


def events(instance: Any) -> list[list[Any]]:
    response = instance.http.get("/chat/events")
    response.raise_for_status()
    result: list[list[Any]] = response.json()
    return result


def test_echo_text_and_binary(chat: Any) -> None:
    async def body() -> None:
        async with connect(ws_url(chat, "/chat/echo"), subprotocols=["chat.v1"]) as client:
            assert client.subprotocol == "chat.v1"
            await client.send("hello")
            assert await client.recv() == "echo: hello"
            await client.send(b"\x00\x01\x02")
            assert await client.recv() == b"\x02\x01\x00"
            for i in range(50):  # many messages in a row arrive in order
                await client.send(f"m{i}")
            assert [await client.recv() for _ in range(50)] == [f"echo: m{i}" for i in range(50)]

    run(body)


def test_large_messages_both_ways(chat: Any) -> None:
    async def body() -> None:
        async with connect(ws_url(chat, "/chat/echo"), max_size=None) as client:
            big = bytes(range(256)) * (5 * 4096)  # 5 MiB
            await client.send(big)
            assert await client.recv() == big[::-1]
            text = "é" * 1_000_000
            await client.send(text)
            assert await client.recv() == "echo: " + text

    run(body)


def test_ping_is_answered(chat: Any) -> None:
    async def body() -> None:
        async with connect(ws_url(chat, "/chat/echo")) as client:
            latency = await asyncio.wait_for(await client.ping(b"are you there"), 5)
            assert latency >= 0
            await client.send("still open")
            assert await client.recv() == "echo: still open"

    run(body)


def test_server_close_code_and_reason_reach_the_client(chat: Any) -> None:
    async def body() -> None:
        async with connect(ws_url(chat, "/chat/echo")) as client:
            await client.send("close 4001")
            with pytest.raises(websockets.ConnectionClosed):
                await client.recv()
            assert client.close_code == 4001
            assert client.close_reason == "bye from the server"

    run(body)


def test_client_close_code_and_reason_reach_the_handler(chat: Any) -> None:
    async def body() -> None:
        async with connect(ws_url(chat, "/chat/echo")) as client:
            await client.close(4005, "client says bye")

    run(body)
    wait_for(lambda: ["disconnect", 4005, "client says bye"] in events(chat), TIMEOUT_S)


def test_handler_closing_before_accept_gets_403(chat: Any) -> None:
    async def body() -> None:
        with pytest.raises(websockets.InvalidStatus) as info:
            async with connect(ws_url(chat, "/chat/reject")):
                pass
        assert info.value.response.status_code == 403

    run(body)


def test_unknown_route_prefix_gets_404_and_app_errors_close_with_1011(chat: Any) -> None:
    async def body() -> None:
        with pytest.raises(websockets.InvalidStatus) as info:
            async with connect(ws_url(chat, "/nowhere/echo")):
                pass
        assert info.value.response.status_code == 404
        async with connect(ws_url(chat, "/chat/boom")) as client:
            await client.send("go")
            with pytest.raises(websockets.ConnectionClosed):
                await client.recv()
            assert client.close_code == 1011

    run(body)


def _abort(client: ClientConnection) -> None:
    """Drop the TCP connection without a close frame, as a crashed client would."""
    client.transport.abort()


def test_client_disconnect_ends_the_handlers(chat: Any) -> None:
    async def body() -> None:
        idle = await connect(ws_url(chat, "/chat/echo"))
        await idle.send("hi")
        await idle.recv()
        sending = await connect(ws_url(chat, "/chat/stream?count=100000000&size=100"))
        await sending.recv()
        _abort(idle)
        _abort(sending)

    run(body)
    # The idle handler was waiting in receive(); the sending one was in send().
    wait_for(lambda: ["disconnect", 1006, ""] in events(chat), TIMEOUT_S)
    wait_for(lambda: ["stream ended", 1006] in events(chat), TIMEOUT_S)
    # Their replica slots were given back: new connections are served.
    run(_echo_once(chat))


def _echo_once(instance: Any) -> Callable[[], Awaitable[None]]:
    async def body() -> None:
        async with connect(ws_url(instance, "/chat/echo")) as client:
            await client.send("again")
            assert await client.recv() == "echo: again"

    return body


def test_a_slow_reader_holds_the_sender_back(chat: Any) -> None:
    count, size = 2000, 64 * 1024  # 128 MiB if nothing held the handler back

    def sent() -> int:
        value: int = chat.http.get("/chat/sent").json()
        return value

    async def body() -> None:
        async with connect(
            ws_url(chat, f"/chat/stream?count={count}&size={size}"), max_size=None, max_queue=4
        ) as client:
            plateau = _Plateau(sent, still_for_s=1.0)
            await asyncio.to_thread(wait_for, plateau, TIMEOUT_S, 0.1, "the sender to stop")
            assert plateau.value * size < 32 * 1024 * 1024, plateau.value  # bounded, far < all
            received = 0
            async for message in client:
                assert len(message) == size
                received += 1
            assert received == count
            assert client.close_code == 1000

    run(body)


def test_a_slow_handler_holds_the_client_back(chat: Any) -> None:
    size = 64 * 1024

    async def body() -> None:
        async with connect(ws_url(chat, "/chat/sink"), max_size=None) as client:
            chunk = b"y" * size
            sent = 0
            while True:  # send until sending blocks: the proxy stopped reading
                sending = asyncio.ensure_future(client.send(chunk))
                done, _ = await asyncio.wait({sending}, timeout=1.0)
                sent += 1
                if not done:
                    break
                assert sent * size < 32 * 1024 * 1024, "nothing held the client back"
            await asyncio.to_thread(chat.http.post, "/chat/drain")
            await sending
            await client.send("done")
            assert await client.recv() == str(sent * size)

    run(body)


class _Plateau:
    """A ``wait_for`` predicate: true once ``read()`` is above 0 and unchanged for a while."""

    def __init__(self, read: Callable[[], int], still_for_s: float) -> None:
        self.read = read
        self.still_for_s = still_for_s
        self.value = -1
        self.since = time.monotonic()

    def __call__(self) -> bool:
        value = self.read()
        now = time.monotonic()
        if value != self.value:
            self.value, self.since = value, now
            return False
        return value > 0 and now - self.since >= self.still_for_s


def test_a_traffic_split_applies_to_websockets_and_the_handshake_names_the_app(
    chat: Any,
) -> None:
    """A split over two apps chooses per connection; a shard key pins it; the 101 answer
    (and a refusal) says which app was chosen, as HTTP answers do."""
    serve.run(Chat.bind(), name="chat_canary", route_prefix=None)
    serve.set_traffic("chat", {"chat": 0.5, "chat_canary": 0.5})

    async def whoami(key: str) -> tuple[str, str]:
        headers = {"x-serve-shard-key": key}
        async with connect(ws_url(chat, "/chat/whoami"), additional_headers=headers) as client:
            assert client.response is not None
            said = await client.recv()
            assert isinstance(said, str)
            return client.response.headers["x-serve-application"], said

    async def split_applied() -> bool:
        try:
            await whoami("probe")
        except KeyError:  # no header yet: the proxy does not have the policy
            return False
        return True

    async def body() -> None:
        deadline = time.monotonic() + 10
        while not await split_applied():
            assert time.monotonic() < deadline, "the proxy never got the split"
            await asyncio.sleep(0.1)
        chosen: dict[str, set[tuple[str, str]]] = {}
        for _ in range(2):
            for i in range(20):
                chosen.setdefault(f"user-{i}", set()).add(await whoami(f"user-{i}"))
        assert all(len(answers) == 1 for answers in chosen.values()), chosen
        answers = [next(iter(a)) for a in chosen.values()]
        assert all(header == app for header, app in answers)
        assert {app for _, app in answers} == {"chat", "chat_canary"}
        # A refused handshake names the chosen app too.
        key = next(k for k, a in chosen.items() if next(iter(a))[1] == "chat_canary")
        with pytest.raises(websockets.InvalidStatus) as refused:
            async with connect(
                ws_url(chat, "/chat/reject"), additional_headers={"x-serve-shard-key": key}
            ):
                pass
        assert refused.value.response.status_code == 403
        assert refused.value.response.headers["x-serve-application"] == "chat_canary"

    try:
        run(body)
    finally:
        serve.set_traffic("chat", None)
