"""Serving one HTTP request inside a replica.

The proxy forwards the request as an ASGI scope plus the whole body; the
replica answers with a stream of ASGI ``send`` messages that the proxy
relays. A deployment with ``@serve.ingress`` runs its ASGI app; a plain
deployment's ``__call__`` gets a Starlette ``Request`` and its return value is
turned into a response (:func:`to_response`).
"""

from __future__ import annotations

import inspect
import json
import logging
from collections.abc import Awaitable, Callable, MutableMapping
from typing import Any

from starlette.responses import JSONResponse, Response, StreamingResponse

logger = logging.getLogger("schooner.replica")

Message = MutableMapping[str, Any]
Send = Callable[[Message], Awaitable[None]]


def make_scope(request: tuple[Any, ...]) -> dict[str, Any]:
    """The ASGI scope of a request forwarded by the proxy.

    ``request`` is (method, path, raw_path, query_string, headers,
    http_version, client, server, root_path, scheme); ``path`` is the full path,
    ``root_path`` the application's route prefix and ``scheme`` ``http`` or ``https``.
    """
    method, path, raw_path, query, headers, version, client, server, root_path, scheme = request
    return {
        "type": "http",
        "asgi": {"version": "3.0", "spec_version": "2.3"},
        "http_version": version,
        "method": method,
        "scheme": scheme,
        "path": path,
        "raw_path": raw_path,
        "query_string": query,
        "root_path": root_path,
        "headers": headers,
        "client": client,
        "server": server,
        "state": {},
    }


def make_receive(body: bytes) -> Callable[[], Awaitable[Message]]:
    """An ASGI ``receive`` that delivers ``body`` once, then blocks like a live client."""
    sent = False

    async def receive() -> Message:
        nonlocal sent
        if not sent:
            sent = True
            return {"type": "http.request", "body": body, "more_body": False}
        import asyncio

        await asyncio.Event().wait()  # a client that stays connected
        return {"type": "http.disconnect"}

    return receive


def to_response(result: Any) -> Response:
    """Turn what a deployment returned into an HTTP response.

    Responses pass through; ``str`` becomes ``text/plain``, ``bytes`` an
    ``application/octet-stream`` body; generators stream; anything else
    (dicts, lists, numbers, pydantic models, ``None``) is encoded as JSON.
    """
    if isinstance(result, Response):
        return result
    if isinstance(result, str):
        return Response(result, media_type="text/plain; charset=utf-8")
    if isinstance(result, bytes | bytearray | memoryview):
        return Response(bytes(result), media_type="application/octet-stream")
    if inspect.isasyncgen(result) or inspect.isgenerator(result):
        return StreamingResponse(result, media_type="text/plain; charset=utf-8")  # type: ignore[arg-type]
    try:
        return JSONResponse(result)
    except (TypeError, ValueError):
        from fastapi.encoders import jsonable_encoder

        try:
            return Response(json.dumps(jsonable_encoder(result)), media_type="application/json")
        except (TypeError, ValueError):
            raise TypeError(
                f"The deployment returned a value of type {type(result).__name__!r}, which "
                "cannot be sent as an HTTP response. Return a str, bytes, a JSON-serializable "
                "value (dict, list, number, None), a pydantic model, or a Starlette Response."
            ) from None


_TEXT = [(b"content-type", b"text/plain; charset=utf-8")]
_BYTES = [(b"content-type", b"application/octet-stream")]
_JSON = [(b"content-type", b"application/json")]


def whole_response(result: Any) -> tuple[int, list[tuple[bytes, bytes]], bytes] | None:
    """``(status, headers, body)`` for the common results, without building a Response.

    None for results that need :func:`to_response` (Responses, generators, ...).
    The proxy adds content-length.
    """
    kind = type(result)
    if kind is str:
        return 200, _TEXT, result.encode()
    if kind is bytes:
        return 200, _BYTES, result
    if kind is dict or kind is list or kind is int or kind is float or result is None:
        try:
            body = json.dumps(
                result, ensure_ascii=False, allow_nan=False, separators=(",", ":")
            ).encode()
        except (TypeError, ValueError):
            return None
        return 200, _JSON, body
    return None


def error_response(exc: BaseException) -> Response:
    """The 500 answer for an exception raised by user code: type and message, no traceback."""
    return Response(
        f"Internal Server Error: {type(exc).__name__}: {exc}\n",
        status_code=500,
        media_type="text/plain; charset=utf-8",
    )


class ResponseTracker:
    """Wraps ``send`` to know whether a response was started (to answer 500 only if not)."""

    def __init__(self, send: Send) -> None:
        self._send = send
        self.started = False

    async def __call__(self, message: Message) -> None:
        if message["type"] == "http.response.start":
            self.started = True
        await self._send(message)
