"""The proxy's ASGI application: route, forward, relay.

Routes come from the controller (long-poll key ``"routes"``); the longest
route prefix matching the path wins. The request body is read whole and sent
with the ASGI scope to a replica of the application's ingress deployment
(chosen by that deployment's router); the replica streams back the ASGI
messages of its response, which are relayed as they come. Every response
carries ``x-request-id``.
"""

from __future__ import annotations

import json
import logging
import uuid
from typing import Any

from schooner._core import Core
from schooner.exceptions import BackPressureError, http_status_for
from schooner.rpc.connection import RemoteCallError
from schooner.rpc.messages import Route

logger = logging.getLogger("schooner.proxy")

Scope = dict[str, Any]
_FORWARDED_SCOPE_KEYS = (
    "type",
    "asgi",
    "http_version",
    "method",
    "scheme",
    "path",
    "raw_path",
    "query_string",
    "headers",
    "client",
    "server",
)
_TEXT = [(b"content-type", b"text/plain; charset=utf-8")]


class ProxyApp:
    """ASGI app of one proxy process."""

    def __init__(self, core: Core, root_path: str = "") -> None:
        self.core = core
        self.root_path = root_path
        self.routes: dict[str, Route] | None = None
        self._prefixes: list[str] = []
        core.registry.subscribe("routes", self.update_routes)

    def update_routes(self, routes: dict[str, Route] | None) -> None:
        if routes is None:
            return
        self.routes = routes
        self._prefixes = sorted(routes, key=len, reverse=True)
        for route in routes.values():
            self.core.registry.router(route.ingress)  # subscribe early: no wait on first request

    def match(self, path: str) -> Route | None:
        assert self.routes is not None
        for prefix in self._prefixes:
            if prefix == "/" or path == prefix or path.startswith(prefix + "/"):
                return self.routes[prefix]
        return None

    async def __call__(self, scope: Scope, receive: Any, send: Any) -> None:
        if scope["type"] == "lifespan":
            await _lifespan(receive, send)
            return
        if scope["type"] != "http":
            await send({"type": "websocket.close", "code": 1003})
            return
        request_id = _header(scope, b"x-request-id") or str(uuid.uuid4())
        path = scope["path"]
        if self.root_path and path.startswith(self.root_path):
            path = path[len(self.root_path) :] or "/"
        if path == "/-/healthz":
            if self.routes:
                await _respond(send, 200, b"success", request_id)
            else:
                await _respond(send, 503, b"Route table is not populated yet.", request_id)
            return
        if path == "/-/routes":
            if self.routes:
                table = {p: r.app_name for p, r in self.routes.items()}
                body = json.dumps(table, separators=(",", ":")).encode()
                await _respond(send, 200, body, request_id, b"application/json")
            else:
                await _respond(send, 503, b"Route table is not populated yet.", request_id)
            return
        route = self.match(path) if self.routes else None
        if route is None:
            host = _header(scope, b"host") or "127.0.0.1"
            await _respond(
                send,
                404,
                (
                    f"Path '{path}' not found. Ping http://{host}/-/routes for available routes."
                ).encode(),
                request_id,
            )
            return
        await self._forward(scope, receive, send, route, request_id)

    async def _forward(
        self, scope: Scope, receive: Any, send: Any, route: Route, request_id: str
    ) -> None:
        body = await _read_body(receive)
        inner = {key: scope[key] for key in _FORWARDED_SCOPE_KEYS if key in scope}
        prefix = "" if route.route_prefix == "/" else route.route_prefix
        inner["root_path"] = scope.get("root_path", "") + prefix
        meta = (
            request_id,
            "__call__",
            _header(scope, b"serve_multiplexed_model_id")
            or _header(scope, b"serve-multiplexed-model-id")
            or "",
            _header(scope, b"x-session-id") or "",
            route.route_prefix,
        )
        router = self.core.registry.router(route.ingress)
        started = False
        rid_header = (b"x-request-id", request_id.encode())
        try:
            async for message in router.stream("http", meta, inner, body):
                if message["type"] == "http.response.start":
                    started = True
                    message["headers"] = [*message.get("headers", ()), rid_header]
                await send(message)
        except Exception as exc:
            if isinstance(exc, RemoteCallError):
                logger.error("replica failed request %s: %s", request_id, exc.error.traceback)
                text = f"Internal Server Error: {exc.error.type_name}: {exc.error.message}"
                status = 500
            else:
                if not isinstance(exc, BackPressureError):
                    logger.warning("request %s failed: %r", request_id, exc)
                text = f"{type(exc).__name__}: {exc}"
                status = http_status_for(exc)
            if not started:
                await _respond(send, status, text.encode(), request_id)
            else:
                await send({"type": "http.response.body", "body": b"", "more_body": False})


def _header(scope: Scope, name: bytes) -> str | None:
    for key, value in scope.get("headers", ()):
        if key.lower() == name:
            return bytes(value).decode("latin-1")
    return None


async def _read_body(receive: Any) -> bytes:
    chunks = []
    while True:
        message = await receive()
        if message["type"] == "http.disconnect":
            break
        chunks.append(message.get("body", b""))
        if not message.get("more_body", False):
            break
    return b"".join(chunks)


async def _respond(
    send: Any,
    status: int,
    body: bytes,
    request_id: str,
    content_type: bytes = b"text/plain; charset=utf-8",
) -> None:
    await send(
        {
            "type": "http.response.start",
            "status": status,
            "headers": [
                (b"content-type", content_type),
                (b"content-length", str(len(body)).encode()),
                (b"x-request-id", request_id.encode()),
            ],
        }
    )
    await send({"type": "http.response.body", "body": body, "more_body": False})


async def _lifespan(receive: Any, send: Any) -> None:
    while True:
        message = await receive()
        if message["type"] == "lifespan.startup":
            await send({"type": "lifespan.startup.complete"})
        elif message["type"] == "lifespan.shutdown":
            await send({"type": "lifespan.shutdown.complete"})
            return
