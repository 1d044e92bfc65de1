"""The admin HTTP server: Ray dashboard's Serve REST API, on the head's event loop.

Routes (paths match exactly; ``/api/serve/applications`` without the trailing
slash is a 404, as in Ray):

======  ===================================================  ===============================
GET     /api/ray/version                                     versions, for the ``serve`` CLI
GET     /api/serve/applications/  [?api_type=...]            ServeInstanceDetails
PUT     /api/serve/applications/                             deploy a ServeDeploySchema
DELETE  /api/serve/applications/                             delete every application
POST    /api/v1/applications/{app}/deployments/{dep}/scale   set a deployment's replica count
GET     /api/gcs_healthz, /api/local_raylet_healthz,         probes; never need a token
        /api/healthz
GET     /metrics                                             Prometheus metrics of the instance
GET     /api/schooner/instance                               how local clients attach
POST    /api/schooner/shutdown                               stop the whole instance
GET     /  (Ray users open ``/#/serve``), /static/<file>     the web dashboard; no token
GET     /api/authentication_mode                             ``token`` or ``disabled``; no token
POST    /api/authenticate                                    token header → HttpOnly cookie
GET     /api/schooner/controller/logs?lines=N                the controller's recent lines
GET     /api/schooner/replicas/{replica_id}/logs?lines=N     a replica's recent lines
GET     /api/schooner/traffic/{app}                          its traffic policy and rates, ETag
PUT     /api/schooner/traffic/{app}                          replace its policy (If-Match: 412)
GET     /api/schooner/rollouts/{app}                         the app's latest rollout (404: none)
POST    /api/schooner/rollouts/{app}                         start one: ``{"to": ..., options}``
POST    /api/schooner/rollouts/{app}/pause|resume|abort      control it
======  ===================================================  ===============================

``GET /api/serve/applications/?include=traffic,rollout`` adds each application's
traffic policy under ``traffic`` and its latest rollout under ``rollout``
(Schooner's extensions, each asked for by name; off by default because Ray's own
tools refuse unknown keys at the application level).

The work is done by the :class:`AdminBackend` the head provides; this module
only speaks HTTP: routing, token auth, and the status codes, headers and bodies
Ray's dashboard sends (the KubeRay REST contract, §1.4 and §2). GET routes
also answer HEAD. Requests are answered on the event loop: synchronous backend
calls at once, awaited ones (DELETE, shutdown) in tasks, so a slow request
never holds up the others.

The dashboard's files (:mod:`schooner.admin.static`) and the authentication
mode need no token, as in Ray: they hold no data, and the page must load to
ask for the token. It then presents it to ``POST /api/authenticate``, which
answers with the ``ray-authentication-token`` cookie (HttpOnly, SameSite=Strict)
that every later request of the page carries.
"""

from __future__ import annotations

import asyncio
import contextlib
import hmac
import json
import logging
import re
import socket
import time
import traceback
from collections.abc import Awaitable, Callable, Collection, Coroutine, Iterable
from typing import Any, Protocol
from urllib.parse import parse_qs, unquote_to_bytes

from schooner.admin.etag import matches, policy_etag
from schooner.admin.static import dashboard_files
from schooner.exceptions import RayServeException, ServeConfigError
from schooner.proxy import http_server
from schooner.proxy.http_server import Request
from schooner.runtime.sockets import bind_listening

__all__ = [
    "API_TYPES",
    "DETAIL_EXTRAS",
    "AdminBackend",
    "AdminServer",
    "ReplicaLogsUnavailable",
    "ReplicaNotFound",
    "ScaleNotFound",
    "ScaleRejected",
    "TrafficNotFound",
    "bind_admin_socket",
]

logger = logging.getLogger("schooner.admin")

RAY_VERSION = "2.60.0"
"""The Ray version whose API this mirrors (the ``serve`` CLI wants at least 1.12)."""
API_VERSION = "4"
"""Ray dashboard's ``CURRENT_VERSION`` of this API."""
API_TYPES = ("imperative", "declarative")
"""The accepted values of ``?api_type=`` (case-insensitive)."""
DETAIL_EXTRAS = frozenset({"traffic", "rollout"})
"""What ``?include=`` may add to each application of the details (Schooner's extensions)."""

KEEP_ALIVE_S = 75.0
MAX_BODY_BYTES = 64 * 1024 * 1024
SHUTDOWN_DELAY_S = 0.1
"""How long ``POST /api/schooner/shutdown`` leaves the answer to reach the client."""
CLOSE_TIMEOUT_S = 1.0

_JSON = b"application/json; charset=utf-8"
_TEXT = b"text/plain; charset=utf-8"
_PROBE = b"application/text; charset=utf-8"
_EMPTY = b"application/octet-stream"
METRICS_CONTENT_TYPE = (
    b"text/plain; version=0.0.4; charset=utf-8"  # what aiohttp sends with an empty body
)

_PROBE_BODIES = {
    "/api/gcs_healthz": b"success",
    "/api/local_raylet_healthz": b"success",
    "/api/healthz": b"raylet: success\ngcs: success",
}
_SCALE_PATH = re.compile(rb"/api/v1/applications/([^/]+)/deployments/([^/]+)/scale")
_REPLICA_LOGS_PATH = re.compile(rb"/api/schooner/replicas/([^/]+)/logs")
_TRAFFIC_PATH = re.compile(rb"/api/schooner/traffic/([^/]+)")
_ROLLOUT_PATH = re.compile(rb"/api/schooner/rollouts/([^/]+)(?:/(pause|resume|abort))?")
_PUBLIC_PATHS = ("/api/authentication_mode",)
_SCALE_ACCEPTED = {
    "message": "Scaling request received. Deployment will get scaled asynchronously."
}
_SCALE_NOT_FOUND = "Application or Deployment not found"
_TOKEN_HEADERS = (b"authorization", b"x-ray-authorization")
_TOKEN_COOKIE = b"ray-authentication-token"
_TOKEN_COOKIE_MAX_AGE_S = 30 * 24 * 60 * 60  # as Ray's dashboard
LOG_LINES = 100
"""Lines a log route answers when ``?lines=`` is not given."""
MAX_LOG_LINES = 1000


class ScaleNotFound(RayServeException):
    """Raised by :meth:`AdminBackend.scale` when the application or deployment does not exist.

    Answered with 404 and the message (``Application or Deployment not found``
    when there is none). A deployment that exists but is being deleted is a
    :class:`ScaleRejected` instead.
    """


class ScaleRejected(RayServeException):
    """Raised by :meth:`AdminBackend.scale` when the deployment exists but may not be scaled.

    For example it is being deleted, or its application does not have
    ``external_scaler_enabled: true``. Answered with 412 and the message.
    """


class ReplicaNotFound(RayServeException):
    """Raised by :meth:`AdminBackend.replica_logs` when no live replica has that id.

    Answered with 404 and the message."""


class ReplicaLogsUnavailable(RayServeException):
    """Raised by :meth:`AdminBackend.replica_logs` when the replica exists but cannot
    answer (not connected yet, or its process went away meanwhile). Answered with 503.

    A replica that does not answer in time raises :class:`TimeoutError` instead (504)."""


class TrafficNotFound(RayServeException):
    """Raised by :meth:`AdminBackend.get_traffic` / ``put_traffic`` when there is no such
    application. Answered with 404 and the message."""


class AdminBackend(Protocol):
    """What the admin API does; the head implements it. All methods run on the event loop."""

    def details(
        self, api_type: str | None, include: frozenset[str] = frozenset()
    ) -> dict[str, Any]:
        """ServeInstanceDetails as JSON-able data; ``api_type``: None or one of API_TYPES.

        ``include`` (``?include=...``, some of :data:`DETAIL_EXTRAS`): each application
        also says its traffic policy under ``traffic``, its latest rollout under
        ``rollout``."""
        ...

    def get_traffic(self, app: str) -> dict[str, Any]:
        """``{"split": ..., "shadows": ..., "rates": {app: {...}}}`` of application ``app``;
        raises TrafficNotFound."""
        ...

    def put_traffic(self, app: str, body: Any) -> Awaitable[None] | None:
        """Replace ``app``'s traffic policy with ``body`` (``{"split": ..., "shadows":
        ...}``); raises TrafficNotFound, or ServeConfigError if the policy is invalid. May
        return an awaitable: the answer is sent once it is done (checkpointed)."""
        ...

    def put_config(self, body: Any) -> Awaitable[None] | None:
        """Deploy the parsed ServeDeploySchema document; raises ServeConfigError if invalid.

        May return an awaitable: the answer is sent once it is done (the change is
        checkpointed then)."""
        ...

    async def delete_all(self) -> None:
        """Delete every application; return when they are gone."""
        ...

    def scale(self, app: str, deployment: str, target_num_replicas: int) -> None:
        """Set a deployment's replica count; raises ScaleNotFound or ScaleRejected."""
        ...

    def version_info(self) -> dict[str, str]:
        """``{"session_name": ..., "schooner_version": ...}``, merged into the version answer."""
        ...

    def metrics_text(self) -> bytes:
        """Every process's metrics in the Prometheus text format."""
        ...

    def instance_info(self) -> dict[str, Any]:
        """How local clients attach to this instance (answered as JSON)."""
        ...

    async def shutdown(self) -> None:
        """Stop the whole instance."""
        ...

    def controller_logs(self, limit: int) -> list[str]:
        """The controller's last ``limit`` log lines (oldest first)."""
        ...

    async def replica_logs(self, replica_id: str, limit: int) -> list[str]:
        """A replica's last ``limit`` log lines, asked of the replica itself; raises
        ReplicaNotFound, ReplicaLogsUnavailable, or TimeoutError when it does not answer."""
        ...

    async def start_rollout(self, app: str, body: Any) -> dict[str, Any]:
        """Start a rollout of ``app`` (body: ``{"to": ..., options}``); its status as
        data. Raises ServeConfigError (answered 400) if it cannot start."""
        ...

    def rollout_status(self, app: str) -> dict[str, Any] | None:
        """The latest rollout of ``app`` as data, None if it never had one."""
        ...

    async def rollout_control(self, app: str, action: str) -> dict[str, Any]:
        """``pause``, ``resume`` or ``abort`` the rollout of ``app``; ServeConfigError (400)
        if there is none or it has ended."""
        ...


_Route = Callable[["_Exchange"], None]


class _Exchange:
    """One request being answered: sends the response and writes the access-log line."""

    __slots__ = ("_started_s", "request")

    def __init__(self, request: Request) -> None:
        self.request = request
        self._started_s = time.perf_counter()

    def send(
        self,
        status: int,
        content_type: bytes,
        body: bytes,
        headers: Iterable[tuple[bytes, bytes]] = (),
    ) -> None:
        request = self.request
        # The raw path: percent-decoding could put line breaks into the log.
        path = request.raw_path.partition(b"?")[0].decode("latin-1")
        elapsed_ms = (time.perf_counter() - self._started_s) * 1000
        logger.info("%s %s %d %.1fms", request.method, path, status, elapsed_ms)
        request.respond(status, [(b"content-type", content_type), *headers], body)

    def text(self, status: int, text: str) -> None:
        self.send(status, _TEXT, text.encode())

    def json(self, status: int, doc: Any, headers: Iterable[tuple[bytes, bytes]] = ()) -> None:
        self.send(status, _JSON, json.dumps(doc).encode(), headers)

    def empty(self) -> None:
        self.send(200, _EMPTY, b"")

    def method_not_allowed(self, methods: Collection[str]) -> None:
        allowed = {*methods, "HEAD"} if "GET" in methods else set(methods)
        allow = ",".join(sorted(allowed)).encode()
        self.send(405, _TEXT, b"405: Method Not Allowed", [(b"allow", allow)])

    def failed(self) -> None:
        """Log the exception being handled and answer 500 with its traceback."""
        logger.exception("%s %s failed", self.request.method, self.request.path)
        if not self.request.started:
            self.text(500, traceback.format_exc())


class AdminServer:
    """Serves the admin API on the running event loop, delegating the work to ``backend``.

    ``token``: when set (non-empty), every route but the three health probes
    needs it, as ``Authorization: Bearer <token>``, else ``X-Ray-Authorization:
    Bearer <token>``, else the cookie ``ray-authentication-token``. Missing:
    401; wrong: 403.

    ``probes_only``: answer the health probes alone (every other path is 404);
    for the port KubeRay's injected probes call (Ray's agent port, 52365).
    ``metrics_only``: answer ``GET /metrics`` alone, without a token (``--metrics-port``).
    """

    def __init__(
        self,
        backend: AdminBackend,
        *,
        token: str | None = None,
        probes_only: bool = False,
        metrics_only: bool = False,
    ) -> None:
        self.backend = backend
        self._token = token.encode() if token else None
        self._server: asyncio.Server | None = None
        self._tasks: set[asyncio.Task[None]] = set()
        self._shutdown_task: asyncio.Task[None] | None = None
        self._routes: dict[str, dict[str, _Route]] = {
            "/api/ray/version": {"GET": self._get_version},
            "/api/serve/applications/": {
                "GET": self._get_applications,
                "PUT": self._put_applications,
                "DELETE": self._delete_applications,
            },
            "/api/schooner/instance": {"GET": self._get_instance},
            "/metrics": {"GET": self._get_metrics},
            "/api/schooner/shutdown": {"POST": self._post_shutdown},
            "/api/authentication_mode": {"GET": self._get_authentication_mode},
            "/api/authenticate": {"POST": self._post_authenticate},
            "/api/schooner/controller/logs": {"GET": self._get_controller_logs},
        }
        self._probes_only = probes_only
        self._metrics_only = metrics_only

    async def start(self, sock: socket.socket) -> None:
        """Serve on ``sock``, a bound and listening socket (see :func:`bind_admin_socket`)."""
        self._server = await http_server.serve(
            self.handle, sock, keep_alive_s=KEEP_ALIVE_S, max_body_bytes=MAX_BODY_BYTES
        )

    async def close(self) -> None:
        """Stop listening and cancel DELETEs still running (they are answered 503).

        A shutdown asked for with ``POST /api/schooner/shutdown`` is left to
        finish: it may well be what is calling this. Idle keep-alive connections
        are left to their idle timeout (``http_server`` does not expose them).
        """
        server, self._server = self._server, None
        if server is not None:
            server.close()
        current = asyncio.current_task()
        pending = [task for task in self._tasks if task is not current]
        for task in pending:
            task.cancel()
        await asyncio.gather(*pending, return_exceptions=True)
        if server is not None:
            # Python 3.12+ waits here for open connections; do not wait for idle ones.
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(server.wait_closed(), CLOSE_TIMEOUT_S)

    # -- dispatch -----------------------------------------------------------------
    def handle(self, request: Request) -> None:
        """Answer ``request``; the handler given to :func:`schooner.proxy.http_server.serve`."""
        exchange = _Exchange(request)
        try:
            self._dispatch(exchange)
        except Exception:
            exchange.failed()

    def _dispatch(self, exchange: _Exchange) -> None:
        request = exchange.request
        method = "GET" if request.method == "HEAD" else request.method
        if self._metrics_only:
            if request.path != "/metrics":
                exchange.text(404, "404: Not Found (this port serves /metrics only)")
            elif method != "GET":
                exchange.method_not_allowed(("GET",))
            else:
                self._get_metrics(exchange)
            return
        probe = _PROBE_BODIES.get(request.path)
        if probe is not None:
            if method == "GET":
                exchange.send(200, _PROBE, probe)
            else:
                exchange.method_not_allowed(("GET",))
            return
        if not self._probes_only and self._public(exchange, method):
            return
        # As with Ray's auth middleware, unknown paths need the token too.
        if self._token is not None and not self._authorized(exchange):
            return
        routes = self._routes_for(request)
        if routes is None:
            exchange.text(404, "404: Not Found")
            return
        route = routes.get(method)
        if route is None:
            exchange.method_not_allowed(routes)
            return
        route(exchange)

    def _routes_for(self, request: Request) -> dict[str, _Route] | None:
        if self._probes_only:  # the agent port: health probes, nothing else
            return None
        routes = self._routes.get(request.path)
        if routes is not None:
            return routes
        # Split the raw path: the decoded one would split an encoded '/' in a name.
        raw_path = request.raw_path.partition(b"?")[0]
        match = _SCALE_PATH.fullmatch(raw_path)
        if match is not None:
            app, deployment = (_decode_segment(segment) for segment in match.groups())
            return {"POST": lambda exchange: self._post_scale(exchange, app, deployment)}
        match = _REPLICA_LOGS_PATH.fullmatch(raw_path)
        if match is not None:
            replica_id = _decode_segment(match.group(1))
            return {"GET": lambda exchange: self._get_replica_logs(exchange, replica_id)}
        match = _TRAFFIC_PATH.fullmatch(raw_path)
        if match is not None:
            app = _decode_segment(match.group(1))
            return {
                "GET": lambda exchange: self._get_traffic(exchange, app),
                "PUT": lambda exchange: self._put_traffic(exchange, app),
            }
        match = _ROLLOUT_PATH.fullmatch(raw_path)
        if match is not None:
            app = _decode_segment(match.group(1))
            action = match.group(2)
            if action is not None:
                name = action.decode()
                return {"POST": lambda exchange: self._post_rollout_control(exchange, app, name)}
            return {
                "GET": lambda exchange: self._get_rollout(exchange, app),
                "POST": lambda exchange: self._post_rollout(exchange, app),
            }
        return None

    def _public(self, exchange: _Exchange, method: str) -> bool:
        """Answer the routes that need no token (the dashboard's files); True if answered."""
        path = exchange.request.path
        static = dashboard_files().get(path)
        if static is None and path not in _PUBLIC_PATHS:
            return False
        if method != "GET":
            exchange.method_not_allowed(("GET",))
        elif static is not None:
            headers = [(b"cache-control", static.cache_control), *_PAGE_HEADERS]
            exchange.send(200, static.content_type, static.body, headers)
        else:
            self._routes[path]["GET"](exchange)
        return True

    def _authorized(self, exchange: _Exchange) -> bool:
        assert self._token is not None
        presented = _presented_token(exchange.request)
        if presented is None:
            exchange.text(401, "Unauthorized: Missing authentication token")
            return False
        if not hmac.compare_digest(presented, self._token):
            exchange.text(403, "Forbidden: Invalid authentication token")
            return False
        return True

    def _spawn(self, work: Coroutine[Any, Any, None]) -> None:
        task = asyncio.get_running_loop().create_task(work)
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    # -- routes -------------------------------------------------------------------
    def _get_version(self, exchange: _Exchange) -> None:
        version = {"version": API_VERSION, "ray_version": RAY_VERSION, "ray_commit": "schooner"}
        exchange.json(200, {**version, **self.backend.version_info()})

    def _get_applications(self, exchange: _Exchange) -> None:
        query = parse_qs(exchange.request.query_string.decode("utf-8", "replace"))
        given = query.get("api_type", [""])[0]
        api_type = given.lower() or None
        if api_type is not None and api_type not in API_TYPES:
            exchange.text(
                400,
                f"Invalid 'api_type' value: '{given}'. Must be one of: {', '.join(API_TYPES)}",
            )
            return
        include = {
            part.strip().lower()
            for value in query.get("include", [])
            for part in value.split(",")
            if part.strip()
        }
        unknown = sorted(include - DETAIL_EXTRAS)
        if unknown:
            exchange.text(
                400,
                f"Invalid 'include' value: {', '.join(unknown)}. "
                f"Must be one or more of: {', '.join(sorted(DETAIL_EXTRAS))}",
            )
            return
        if include:
            exchange.json(200, self.backend.details(api_type, frozenset(include)))
        else:
            exchange.json(200, self.backend.details(api_type))

    def _get_traffic(self, exchange: _Exchange, app: str) -> None:
        try:
            policy = self.backend.get_traffic(app)
        except TrafficNotFound as exc:
            exchange.json(404, {"error": str(exc)})
            return
        exchange.json(200, policy, [(b"etag", policy_etag(policy).encode())])

    def _put_traffic(self, exchange: _Exchange, app: str) -> None:
        try:
            body = json.loads(exchange.request.body)
        except ValueError as exc:
            exchange.json(400, {"error": f"The request body is not valid JSON: {exc}"})
            return
        if_match = exchange.request.header(b"if-match")
        try:
            if if_match is not None:  # checked and applied with no await in between
                etag = policy_etag(self.backend.get_traffic(app))
                if not matches(if_match.decode("latin-1"), etag):
                    exchange.json(
                        412,
                        {
                            "error": f"The traffic policy of '{app}' changed since it was read "
                            f"(If-Match {if_match.decode('latin-1')}, now {etag}). Read it "
                            "again and make your change to what it is now."
                        },
                        [(b"etag", etag.encode())],
                    )
                    return
            pending = self.backend.put_traffic(app, body)
        except TrafficNotFound as exc:
            exchange.json(404, {"error": str(exc)})
            return
        except ServeConfigError as exc:
            exchange.json(400, {"error": str(exc)})
            return
        if pending is None:
            policy = self.backend.get_traffic(app)
            exchange.json(200, policy, [(b"etag", policy_etag(policy).encode())])
        else:
            self._spawn(self._answer_traffic_when_done(pending, exchange, app))

    async def _answer_traffic_when_done(
        self, pending: Awaitable[None], exchange: _Exchange, app: str
    ) -> None:
        try:
            await pending
            policy = self.backend.get_traffic(app)
        except Exception:
            exchange.failed()
            return
        exchange.json(200, policy, [(b"etag", policy_etag(policy).encode())])

    def _put_applications(self, exchange: _Exchange) -> None:
        try:
            doc = json.loads(exchange.request.body)
        except ValueError as exc:  # JSONDecodeError, or bytes that are not UTF-8/16/32
            exchange.text(400, f"The request body is not valid JSON: {exc}")
            return
        try:
            pending = self.backend.put_config(doc)
        except ServeConfigError as exc:
            exchange.text(400, str(exc))
            return
        if pending is None:
            exchange.empty()
        else:
            self._spawn(self._answer_when_done(pending, exchange))

    async def _answer_when_done(self, pending: Awaitable[None], exchange: _Exchange) -> None:
        try:
            await pending
        except Exception:
            exchange.failed()
            return
        exchange.empty()

    def _delete_applications(self, exchange: _Exchange) -> None:
        self._spawn(self._delete_all(exchange))

    async def _delete_all(self, exchange: _Exchange) -> None:
        try:
            await self.backend.delete_all()
        except asyncio.CancelledError:
            exchange.text(503, "The admin server is shutting down.")
            raise
        except Exception:
            exchange.failed()
            return
        exchange.empty()

    def _post_scale(self, exchange: _Exchange, app: str, deployment: str) -> None:
        target = _target_num_replicas(exchange.request.body)
        if isinstance(target, str):
            exchange.json(400, {"error": f"Invalid request body: {target}"})
            return
        try:
            self.backend.scale(app, deployment, target)
        except ScaleNotFound as exc:
            exchange.json(404, {"error": str(exc) or _SCALE_NOT_FOUND})
        except ScaleRejected as exc:
            exchange.json(412, {"error": str(exc)})
        except Exception:
            # Ray's answer to anything else; the traceback goes to the log only.
            logger.exception("scaling %s/%s failed", app, deployment)
            exchange.json(503, {"error": "Internal Server Error"})
        else:
            exchange.json(200, _SCALE_ACCEPTED)

    def _get_metrics(self, exchange: _Exchange) -> None:
        exchange.send(200, METRICS_CONTENT_TYPE, self.backend.metrics_text())

    def _get_instance(self, exchange: _Exchange) -> None:
        exchange.json(200, self.backend.instance_info())

    def _post_shutdown(self, exchange: _Exchange) -> None:
        exchange.json(200, {"message": "shutting down"})
        if self._shutdown_task is None:
            self._shutdown_task = asyncio.get_running_loop().create_task(self._shutdown())

    def _get_authentication_mode(self, exchange: _Exchange) -> None:
        mode = "token" if self._token is not None else "disabled"
        headers = [] if self._token is not None else [(b"set-cookie", _clear_cookie())]
        exchange.send(200, _JSON, json.dumps({"authentication_mode": mode}).encode(), headers)

    def _post_authenticate(self, exchange: _Exchange) -> None:
        """The page hands over the token the user typed (``Authorization: Bearer``; the
        dispatch has checked it) and gets it back as an HttpOnly cookie, as from Ray."""
        if self._token is None:
            exchange.text(401, "Unauthorized: Token authentication is not enabled")
            return
        doc = {"status": "authenticated", "message": "Token is valid"}
        cookie = (
            _TOKEN_COOKIE
            + b"="
            + self._token
            + b"; Max-Age=%d; Path=/; HttpOnly; SameSite=Strict" % _TOKEN_COOKIE_MAX_AGE_S
        )
        exchange.send(200, _JSON, json.dumps(doc).encode(), [(b"set-cookie", cookie)])

    def _get_controller_logs(self, exchange: _Exchange) -> None:
        limit = _log_lines(exchange)
        if limit is not None:
            exchange.json(200, {"lines": self.backend.controller_logs(limit)})

    def _get_replica_logs(self, exchange: _Exchange, replica_id: str) -> None:
        limit = _log_lines(exchange)
        if limit is not None:
            self._spawn(self._answer_replica_logs(exchange, replica_id, limit))

    async def _answer_replica_logs(self, exchange: _Exchange, replica_id: str, limit: int) -> None:
        try:
            lines = await self.backend.replica_logs(replica_id, limit)
        except ReplicaNotFound as exc:
            exchange.json(404, {"error": str(exc)})
        except ReplicaLogsUnavailable as exc:
            exchange.json(503, {"error": str(exc)})
        except TimeoutError:
            error = f"Replica {replica_id} did not send its log lines in time."
            exchange.json(504, {"error": error})
        except asyncio.CancelledError:
            exchange.json(503, {"error": "The admin server is shutting down."})
            raise
        except Exception:
            exchange.failed()
        else:
            exchange.json(200, {"replica_id": replica_id, "lines": lines})

    def _get_rollout(self, exchange: _Exchange, app: str) -> None:
        status = self.backend.rollout_status(app)
        if status is None:
            exchange.json(404, {"error": f"Application '{app}' has had no rollout."})
        else:
            exchange.json(200, status)

    def _post_rollout(self, exchange: _Exchange, app: str) -> None:
        try:
            body = json.loads(exchange.request.body or b"{}")
        except ValueError as exc:
            exchange.json(400, {"error": f"The request body is not valid JSON: {exc}"})
            return
        self._spawn(self._answer_rollout(exchange, self.backend.start_rollout(app, body)))

    def _post_rollout_control(self, exchange: _Exchange, app: str, action: str) -> None:
        self._spawn(self._answer_rollout(exchange, self.backend.rollout_control(app, action)))

    async def _answer_rollout(
        self, exchange: _Exchange, pending: Awaitable[dict[str, Any]]
    ) -> None:
        try:
            status = await pending
        except ServeConfigError as exc:
            exchange.json(400, {"error": str(exc)})
        except Exception:
            exchange.failed()
        else:
            exchange.json(200, status)

    async def _shutdown(self) -> None:
        # The answer is with the transport; give it time to reach the client
        # before the process goes away.
        await asyncio.sleep(SHUTDOWN_DELAY_S)
        try:
            await self.backend.shutdown()
        except Exception:
            logger.exception("shutting down failed")


_PAGE_HEADERS = (
    (b"x-content-type-options", b"nosniff"),
    (b"x-frame-options", b"DENY"),
)


def _clear_cookie() -> bytes:
    return _TOKEN_COOKIE + b"=; Max-Age=0; Path=/"


def _log_lines(exchange: _Exchange) -> int | None:
    """``?lines=N`` of a log route (default LOG_LINES, at most MAX_LOG_LINES); None if
    invalid, after answering 400."""
    query = parse_qs(exchange.request.query_string.decode("utf-8", "replace"))
    given = query.get("lines", [""])[0]
    if not given:
        return LOG_LINES
    if not given.isdigit() or int(given) < 1:
        exchange.json(400, {"error": f"'lines' must be a positive integer, got {given!r}"})
        return None
    return min(int(given), MAX_LOG_LINES)


def _decode_segment(segment: bytes) -> str:
    return unquote_to_bytes(segment).decode("utf-8", "replace")


def _presented_token(request: Request) -> bytes | None:
    """The token the request carries (b"" for a non-Bearer header), or None if it has none."""
    for name in _TOKEN_HEADERS:
        value = request.header(name)
        if value:
            scheme, _, token = value.strip().partition(b" ")
            return token.strip() if scheme.lower() == b"bearer" else b""
    for name, value in request.headers:
        if name != b"cookie":
            continue
        for cookie in value.split(b";"):
            key, _, token = cookie.partition(b"=")
            if key.strip() == _TOKEN_COOKIE and token.strip():
                return token.strip().strip(b'"')
    return None


def _target_num_replicas(body: bytes) -> int | str:
    """``target_num_replicas`` from a scale request body, or what is wrong with the body."""
    try:
        doc = json.loads(body)
    except ValueError as exc:
        return f"not valid JSON: {exc}"
    if not isinstance(doc, dict):
        return "expected a JSON object with 'target_num_replicas'"
    if "target_num_replicas" not in doc:
        return "'target_num_replicas' is required"
    target = doc["target_num_replicas"]
    if not isinstance(target, int) or isinstance(target, bool):
        return f"'target_num_replicas' must be an integer, got {json.dumps(target)}"
    if target < 0:
        return f"'target_num_replicas' must be >= 0, got {target}"
    return target


def bind_admin_socket(host: str, port: int) -> socket.socket:
    """A listening TCP socket on ``host:port`` for :meth:`AdminServer.start` (port 0: any)."""
    return bind_listening(host, port, what="the admin API", flag="--admin-port", backlog=128)
