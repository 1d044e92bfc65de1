"""The proxy's request handling: route, forward, relay.

Routes come from the controller (long-poll key ``"routes"``); the longest
route prefix matching the path wins. The request body is read whole and sent
with the request line and headers to a replica of the application's ingress deployment
(chosen by that deployment's router); the replica streams back the ASGI
messages of its response, which are relayed as they come. Every response
carries ``x-request-id``.
"""

from __future__ import annotations

import asyncio
import json
import logging
import uuid
from typing import Any

from schooner._core import Core
from schooner.exceptions import BackPressureError, http_status_for
from schooner.proxy.http_server import Request
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
    """Request handling of one proxy process (on top of :mod:`schooner.proxy.http_server`)."""

    def __init__(
        self, core: Core, root_path: str = "", server: tuple[str, int] | None = None
    ) -> None:
        self.core = core
        self.root_path = root_path
        self.server = server
        self.routes: dict[str, Route] | None = None
        self._prefixes: list[str] = []
        self._loop = asyncio.get_event_loop()
        self._tasks: set[asyncio.Task[None]] = set()
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

    def handle(self, request: Request) -> None:
        """Answer ``request``: built-in endpoints here, everything else via a replica."""
        rid = request.header(b"x-request-id")
        request_id = rid.decode("latin-1") if rid else str(uuid.uuid4())
        path = request.path
        if self.root_path and path.startswith(self.root_path):
            path = path[len(self.root_path) :] or "/"
        if path == "/-/healthz":
            if self.routes:
                _text(request, 200, b"success", request_id)
            else:
                _text(request, 503, b"Route table is not populated yet.", request_id)
            return
        if path == "/-/routes":
            if self.routes:
                table = {p: r.app_name for p, r in self.routes.items()}
                body = json.dumps(table, separators=(",", ":")).encode()
                request.respond(
                    200,
                    [
                        (b"content-type", b"application/json"),
                        (b"x-request-id", request_id.encode()),
                    ],
                    body,
                )
            else:
                _text(request, 503, b"Route table is not populated yet.", request_id)
            return
        route = self.match(path) if self.routes else None
        if route is None:
            host = (request.header(b"host") or b"127.0.0.1").decode("latin-1")
            _text(
                request,
                404,
                (
                    f"Path '{path}' not found. Ping http://{host}/-/routes for available routes."
                ).encode(),
                request_id,
            )
            return
        task = self._loop.create_task(self._forward(request, route, request_id))
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)
        request.on_disconnect = task.cancel  # type: ignore[assignment]

    async def _forward(self, request: Request, route: Route, request_id: str) -> None:
        prefix = "" if route.route_prefix == "/" else route.route_prefix
        model_id = (
            request.header(b"serve_multiplexed_model_id")
            or request.header(b"serve-multiplexed-model-id")
            or b""
        )
        session_id = request.header(b"x-session-id") or b""
        meta = (
            request_id,
            "__call__",
            model_id.decode("latin-1"),
            session_id.decode("latin-1"),
            route.route_prefix,
        )
        http_request = (
            request.method,
            request.path,
            request.raw_path.partition(b"?")[0],
            request.query_string,
            request.headers,
            request.http_version,
            request.client,
            self.server,
            self.root_path + prefix,
        )
        router = self.core.registry.router(route.ingress)
        rid_header = (b"x-request-id", request_id.encode())
        pending_start: dict[str, Any] | None = None
        try:
            async for part in router.stream("http", meta, http_request, request.body):
                if type(part) is tuple:  # a whole response from a plain deployment
                    status, headers, body = part
                    request.respond(status, [*headers, rid_header], body)
                    continue
                for message in part:
                    kind = message["type"]
                    if kind == "http.response.start":
                        pending_start = message
                        continue
                    if kind != "http.response.body":
                        continue
                    body = message.get("body", b"")
                    more = message.get("more_body", False)
                    if pending_start is not None:
                        headers = [*_byte_headers(pending_start.get("headers", ())), rid_header]
                        status = pending_start["status"]
                        pending_start = None
                        if not more:
                            request.respond(status, headers, body)
                            continue
                        request.start(status, headers)
                    if more:
                        request.send(body)
                    else:
                        request.end(body)
                if request.started and not request.finished:
                    await request.drain()
        except asyncio.CancelledError:
            logger.info("request %s cancelled: the client disconnected (499)", request_id)
            raise
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
            if not request.started:
                _text(request, status, text.encode(), request_id)
            else:
                request.keep_alive = False
                request.end()
            return
        if not request.finished:
            if pending_start is not None:
                request.respond(
                    pending_start["status"],
                    [*_byte_headers(pending_start.get("headers", ())), rid_header],
                    b"",
                )
            else:
                request.keep_alive = False
                request.end()


def _byte_headers(headers: Any) -> list[tuple[bytes, bytes]]:
    return [(bytes(k), bytes(v)) for k, v in headers]


def _text(request: Request, status: int, body: bytes, request_id: str) -> None:
    request.respond(
        status,
        [(b"content-type", b"text/plain; charset=utf-8"), (b"x-request-id", request_id.encode())],
        body,
    )
