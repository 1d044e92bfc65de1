"""The bare baseline: a plain ASGI app served by uvicorn in one process.

``GET`` answers ``hello`` (text/plain); ``POST`` echoes the request body
(application/octet-stream), matching ``bench_apps.Hello`` and ``bench_apps.Echo``.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable, MutableMapping
from typing import Any

Message = MutableMapping[str, Any]
Receive = Callable[[], Awaitable[Message]]
Send = Callable[[Message], Awaitable[None]]

_TEXT = [(b"content-type", b"text/plain; charset=utf-8")]
_BYTES = [(b"content-type", b"application/octet-stream")]


async def app(scope: Message, receive: Receive, send: Send) -> None:
    if scope["type"] == "lifespan":
        while True:
            message = await receive()
            if message["type"] == "lifespan.startup":
                await send({"type": "lifespan.startup.complete"})
            elif message["type"] == "lifespan.shutdown":
                await send({"type": "lifespan.shutdown.complete"})
                return
    if scope["type"] != "http":
        return
    if scope["method"] == "POST":
        chunks = []
        more = True
        while more:
            message = await receive()
            chunks.append(message.get("body", b""))
            more = message.get("more_body", False)
        body, headers = b"".join(chunks), _BYTES
    else:
        body, headers = b"hello", _TEXT
    length = [(b"content-length", str(len(body)).encode())]
    await send({"type": "http.response.start", "status": 200, "headers": headers + length})
    await send({"type": "http.response.body", "body": body})
