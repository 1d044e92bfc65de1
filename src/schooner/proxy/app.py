"""The proxy's request handling: route, forward, relay.

Routes come from the controller (long-poll key ``"routes"``); the longest
route prefix matching the path wins. The request body is read whole and sent
with the request line and headers to a replica of the application's ingress deployment
(chosen by that deployment's router); the replica streams back the ASGI
messages of its response, which are relayed as they come. Every response
carries ``x-request-id``. WebSocket upgrade requests are routed the same way
and relayed by :mod:`schooner.proxy.ws_relay`.

Traffic policies (:mod:`schooner.router.traffic`): when the matched route's ingress
owns a policy, the application that answers is chosen per request (by the
``X-SERVE-SHARD-KEY`` header when there is one), the request goes to that
application's ingress router, and the response carries ``x-serve-application``;
metrics and the access log name the answering application. Shadows get
fire-and-forget copies (:mod:`schooner.router.shadow`; not for WebSockets). A
shard key is passed to the ingress router with or without a policy, so it also
keeps the request on one replica.
"""

from __future__ import annotations

import asyncio
import itertools
import json
import logging
import math
import uuid
from collections.abc import Callable
from typing import Any

from schooner._core import Core
from schooner.exceptions import BackPressureError, ReplicaUnavailableError, http_status_for
from schooner.proxy import websocket
from schooner.proxy.http_server import Request
from schooner.proxy.observer import RequestObserver
from schooner.proxy.ws_relay import WebSocketRelay
from schooner.router.router import Router
from schooner.router.shadow import send_stream_copy
from schooner.router.traffic import CompiledPolicy
from schooner.rpc.connection import ConnectionLost, RemoteCallError, StreamSink
from schooner.rpc.messages import DeploymentID, ReplicaInfo, Route

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
        self,
        core: Core,
        root_path: str = "",
        server: tuple[str, int] | None = None,
        request_timeout_s: float | None = None,
        scheme: str = "http",
        observer: RequestObserver | None = None,
    ) -> None:
        self.core = core
        self.observer = observer or RequestObserver("", "127.0.0.1")
        self.scheme = scheme
        self.root_path = root_path
        self.request_timeout_s = request_timeout_s
        self.server = server
        self.routes: dict[str, Route] | None = None
        self._prefixes: list[str] = []
        self._loop = asyncio.get_event_loop()
        self._tasks: set[asyncio.Task[None]] = set()
        core.registry.subscribe("routes", self.update_routes)
        core.registry.subscribe("traffic", self._traffic_changed)

    def _traffic_changed(self, _snapshot: object) -> None:
        """Subscribe early to every application a policy may send requests to."""
        registry = self.core.registry
        for policy in registry.traffic.values():
            for target in (*policy.targets, *policy.shadows):
                registry.router(target.ingress)

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
        request_id = rid.decode("latin-1") if rid else new_request_id()
        path = request.path
        if self.root_path and path.startswith(self.root_path):
            path = path[len(self.root_path) :] or "/"
        observer = self.observer
        if path == "/-/healthz":
            observer.begin(request, request_id, path, "", "")
            if self.routes:
                _text(request, 200, b"success", request_id)
            else:
                _text(request, 503, b"Route table is not populated yet.", request_id)
            return
        if path == "/-/routes":
            observer.begin(request, request_id, path, "", "")
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
            observer.begin(request, request_id, "", "", "")
            host = (request.header(b"host") or b"127.0.0.1").decode("latin-1")
            _text(
                request,
                404,
                (
                    f"Path '{path}' not found. "
                    f"Ping {self.scheme}://{host}/-/routes for available routes."
                ).encode(),
                request_id,
            )
            return
        registry = self.core.registry
        shard = request.header(b"x-serve-shard-key")
        shard_key = shard.decode("latin-1") if shard else ""
        policy = registry.traffic.get(route.ingress)
        ingress: DeploymentID = route.ingress
        app_name = route.app_name
        app_header: tuple[bytes, bytes] | None = None
        if policy is not None:
            target = policy.choose(shard_key)
            ingress, app_name = target.ingress, target.app_name
            app_header = (b"x-serve-application", app_name.encode())
        traceparent = observer.begin(
            request, request_id, route.route_prefix, app_name, ingress.name
        )
        try:
            timeout_s = self._timeout_for(request)
        except ValueError as exc:
            _text(request, 400, str(exc).encode(), request_id)
            return
        meta, http_request = self._request_parts(request, route, request_id, traceparent)
        router = registry.router(ingress)
        replica = router.try_acquire(shard_key, meta[2])
        if policy is not None and policy.shadows:
            self._shadow(policy, meta, http_request, request.body, shard_key)
        if replica is not None:  # fast path: no task, the reply frames are written by callback
            conn = registry.pool.get_nowait(replica.address)
            if conn is not None:
                responder = _Responder(
                    request, request_id, lambda: router.release(replica), app_header
                )
                responder.replica = replica
                req_id = conn.stream_to("http", (meta, http_request, request.body), responder)

                def disconnected() -> None:
                    conn.cancel_request(req_id)
                    responder.abandon()

                request.on_disconnect = disconnected
                if timeout_s is not None:

                    def expired() -> None:
                        conn.cancel_request(req_id)
                        responder.time_out(timeout_s)

                    responder.timer = self._loop.call_later(timeout_s, expired)
                return
            router.release(replica)
        task = self._loop.create_task(
            self._forward(
                request, router, meta, http_request, request_id, timeout_s, shard_key, app_header
            )
        )
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)
        request.on_disconnect = task.cancel  # type: ignore[assignment]

    def _shadow(
        self,
        policy: CompiledPolicy,
        meta: tuple[str, ...],
        http_request: tuple[Any, ...],
        body: bytes,
        shard_key: str,
    ) -> None:
        """Copies for the shadows drawn for this request (only where a slot is free now)."""
        registry = self.core.registry
        for shadow in policy.shadow_copies():
            send_stream_copy(
                registry.router(shadow.ingress),
                registry.pool,
                shadow.app_name,
                "http",
                (meta, http_request, body),
                shard_key,
                meta[2],
            )

    def handle_websocket(self, request: Request) -> None:
        """Answer a WebSocket upgrade request: route it as :meth:`handle` does, then relay the
        connection to a replica (see :mod:`schooner.proxy.ws_relay`). No time limit applies."""
        rid = request.header(b"x-request-id")
        request_id = rid.decode("latin-1") if rid else new_request_id()
        path = request.path
        if self.root_path and path.startswith(self.root_path):
            path = path[len(self.root_path) :] or "/"
        route = self.match(path) if self.routes else None
        if route is None:
            _text(request, 404, f"Path '{path}' not found.".encode(), request_id)
            return
        refusal = websocket.handshake_error(request.method, request.headers)
        if refusal is not None:
            status, text = refusal
            extra = [(b"sec-websocket-version", b"13")] if status == 426 else None
            _text(request, status, text.encode(), request_id, extra)
            return
        meta, http_request = self._request_parts(request, route, request_id)
        task = self._loop.create_task(
            self._open_websocket(request, route, meta, http_request, request_id)
        )
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)
        request.on_disconnect = task.cancel  # type: ignore[assignment]

    async def _open_websocket(
        self,
        request: Request,
        route: Route,
        meta: tuple[str, ...],
        http_request: tuple[Any, ...],
        request_id: str,
    ) -> None:
        """Wait for a replica slot (queueing, backpressure), then start relaying. A traffic
        split applies as for HTTP requests (shadows get no copy of a WebSocket)."""
        registry = self.core.registry
        shard = request.header(b"x-serve-shard-key")
        shard_key = shard.decode("latin-1") if shard else ""
        ingress = route.ingress
        policy = registry.traffic.get(ingress)
        app_header: tuple[bytes, bytes] | None = None
        if policy is not None:
            target = policy.choose(shard_key)
            ingress = target.ingress
            app_header = (b"x-serve-application", target.app_name.encode())
        router = registry.router(ingress)
        try:
            replica, conn = await router.connect(shard_key=shard_key, model_id=meta[2])
        except asyncio.CancelledError:
            logger.info("WebSocket %s: the client left while waiting for a replica", request_id)
            raise
        except Exception as exc:
            _Responder(request, request_id, None, app_header).fail(exc)
            return
        relay = WebSocketRelay(
            request, request_id, conn, lambda: router.release(replica), app_header=app_header
        )
        relay.start(meta, http_request)

    def _timeout_for(self, request: Request) -> float | None:
        """The request's time limit: its ``x-request-timeout-seconds`` header, else
        ``http_options.request_timeout_s``. Raises ValueError for a malformed header."""
        header = request.header(b"x-request-timeout-seconds")
        if header is None:
            return self.request_timeout_s
        try:
            value = float(header)
        except ValueError:
            value = -1.0
        if not value > 0 or value == float("inf"):
            raise ValueError(
                f"Invalid x-request-timeout-seconds header {header.decode('latin-1')!r}: "
                "give a number of seconds greater than 0."
            )
        return value

    def _request_parts(
        self, request: Request, route: Route, request_id: str, traceparent: str = ""
    ) -> tuple[tuple[str, ...], tuple[Any, ...]]:
        """(call metadata, request fields) as the replica's ``rpc_http`` takes them."""
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
            traceparent,
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
            self.scheme,
        )
        return meta, http_request

    async def _forward(
        self,
        request: Request,
        router: Router,
        meta: tuple[str, ...],
        http_request: tuple[Any, ...],
        request_id: str,
        timeout_s: float | None = None,
        shard_key: str = "",
        app_header: tuple[bytes, bytes] | None = None,
    ) -> None:
        """The slow path: wait for a replica slot (queueing, backpressure), then relay."""
        responder = _Responder(request, request_id, None, app_header)
        try:
            async with asyncio.timeout(timeout_s):
                async for part in router.stream(
                    "http", meta, http_request, request.body, shard_key=shard_key, model_id=meta[2]
                ):
                    responder.write(part)
                    if request.started and not request.finished:
                        await request.drain()
        except TimeoutError:
            assert timeout_s is not None
            responder.time_out(timeout_s)
            return
        except asyncio.CancelledError:
            logger.info("request %s cancelled: the client disconnected (499)", request_id)
            raise
        except Exception as exc:
            responder.fail(exc)
            return
        responder.finish()


class _Responder(StreamSink):
    """Writes what a replica answers (whole responses or ASGI messages) to the client."""

    __slots__ = (
        "_app_header",
        "_done",
        "_pending_start",
        "_request",
        "_request_id",
        "_tail",
        "replica",
        "timer",
    )

    def __init__(
        self,
        request: Request,
        request_id: str,
        done: Callable[[], None] | None,
        app_header: tuple[bytes, bytes] | None = None,
    ) -> None:
        self._request = request
        self._request_id = request_id
        rid_header = (b"x-request-id", request_id.encode())
        #: Headers added to the replica's: the request id (and the answering application).
        self._tail = (rid_header,) if app_header is None else (rid_header, app_header)
        self._app_header = app_header
        self._pending_start: dict[str, Any] | None = None
        self._done = done
        #: The request's time limit, if it has one (cancelled when the request ends).
        self.timer: asyncio.TimerHandle | None = None
        #: The replica it was sent to (fast path), to name it if it dies.
        self.replica: ReplicaInfo | None = None

    # -- StreamSink (fast path) -------------------------------------------------------
    def on_item(self, item: Any) -> None:
        self.write(item)

    def on_end(self, last: Any) -> None:
        if last is not None:
            self.write(last)
        self.finish()
        self._release()

    def on_error(self, error: BaseException) -> None:
        if isinstance(error, ConnectionLost):
            replica = self.replica
            who = (
                f"Replica {replica.replica_id} of {replica.deployment}"
                if replica is not None
                else "The replica"
            )
            error = ReplicaUnavailableError(
                f"{who} died while handling request {self._request_id}."
            )
        self.fail(error)
        self._release()

    def abandon(self) -> None:
        logger.info("request %s cancelled: the client disconnected (499)", self._request_id)
        self._release()

    def time_out(self, timeout_s: float) -> None:
        """The time limit passed (the replica was told to cancel): 408, or, if the
        response had started, close the connection."""
        request = self._request
        logger.info("request %s timed out after %g s (408)", self._request_id, timeout_s)
        if not request.finished:
            if not request.started:
                text = f"Request {self._request_id} timed out after {timeout_s:g} s."
                app = [self._app_header] if self._app_header is not None else None
                _text(request, 408, text.encode(), self._request_id, app)
            else:
                request.keep_alive = False
                request.end()
        self._release()

    def _release(self) -> None:
        timer, self.timer = self.timer, None
        if timer is not None:
            timer.cancel()
        done, self._done = self._done, None
        if done is not None:
            done()

    # -- writing ----------------------------------------------------------------------
    def write(self, part: Any) -> None:
        request = self._request
        if type(part) is tuple:  # a whole response from a plain deployment
            status, headers, body = part
            request.respond(status, [*headers, *self._tail], body)
            return
        for message in part:
            kind = message["type"]
            if kind == "http.response.start":
                self._pending_start = message
                continue
            if kind != "http.response.body":
                continue
            body = message.get("body", b"")
            more = message.get("more_body", False)
            start = self._pending_start
            if start is not None:
                headers = [*_byte_headers(start.get("headers", ())), *self._tail]
                self._pending_start = None
                if not more:
                    request.respond(start["status"], headers, body)
                    continue
                request.start(start["status"], headers)
            if more:
                request.send(body)
            else:
                request.end(body)

    def finish(self) -> None:
        request = self._request
        if request.finished:
            return
        start = self._pending_start
        if start is not None:
            headers = [*_byte_headers(start.get("headers", ())), *self._tail]
            request.respond(start["status"], headers, b"")
        else:
            request.keep_alive = False
            request.end()

    def fail(self, exc: BaseException) -> None:
        request, request_id = self._request, self._request_id
        if isinstance(exc, RemoteCallError):
            logger.error("replica failed request %s: %s", request_id, exc.error.traceback)
            text = f"Internal Server Error: {exc.error.type_name}: {exc.error.message}"
            status = 500
        else:
            if not isinstance(exc, BackPressureError):
                logger.warning("request %s failed: %r", request_id, exc)
            text = f"{type(exc).__name__}: {exc}"
            status = http_status_for(exc)
        if request.finished:
            return
        if not request.started:
            extra: list[tuple[bytes, bytes]] = []
            if self._app_header is not None:
                extra.append(self._app_header)
            if isinstance(exc, BackPressureError) and exc.retry_after_s is not None:
                extra.append((b"retry-after", b"%d" % math.ceil(exc.retry_after_s)))
            _text(request, status, text.encode(), request_id, extra)
        else:
            request.keep_alive = False
            request.end()


#: Request ids look like UUIDs: a random prefix per proxy process, then a counter
#: (unique without a call to the OS's random source per request).
_ID_PREFIX = str(uuid.uuid4())[:23]
_id_counter = itertools.count(1)


def new_request_id() -> str:
    return f"{_ID_PREFIX}-{next(_id_counter) & 0xFFFFFFFFFFFF:012x}"


def _byte_headers(headers: Any) -> list[tuple[bytes, bytes]]:
    return [(bytes(k), bytes(v)) for k, v in headers]


def _text(
    request: Request,
    status: int,
    body: bytes,
    request_id: str,
    extra: list[tuple[bytes, bytes]] | None = None,
) -> None:
    headers = [
        (b"content-type", b"text/plain; charset=utf-8"),
        (b"x-request-id", request_id.encode()),
    ]
    request.respond(status, headers + extra if extra else headers, body)
