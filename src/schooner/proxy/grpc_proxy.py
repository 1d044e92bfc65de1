"""gRPC ingress: a ``grpc.aio`` server in the proxy process, beside the HTTP server.

Started only when ``grpc_options.grpc_servicer_functions`` are given (as in Ray Serve).
Each generated ``add_*Servicer_to_server`` function registers its service's methods
against a stand-in server (:class:`_Collector`); their handlers keep the generated
request deserializers, and their behaviour is replaced by a forwarder, so a call
``/pkg.Service/Method`` becomes a call of ``Method`` on a replica of the target
application's ingress deployment (the request message travels pickled; the replica
answers serialized responses, relayed as bytes). See :mod:`schooner.replica.grpc_call`.

Which application: the ``application`` metadata; without it, or naming one that does
not exist, the only application when exactly one is running (as Ray Serve), else
NOT_FOUND. ``request_id`` (or a new id) comes back in the trailing metadata;
``multiplexed_model_id`` and ``session_id`` reach the request context; a traffic policy
picks the answering application (by the ``x-serve-shard-key`` metadata, as the HTTP
header). The built-in ``ray.serve.RayServeAPIService`` answers ``ListApplications`` and
``Healthz``. Statuses: see :func:`schooner.exceptions.grpc_status_for`. Client- and
bidirectional-streaming calls are duplex RPCs to the replica: request messages are
pushed as the client sends them (the method gets a ``gRPCInputStream``).
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import AsyncIterator, Callable, Iterable, Sequence
from dataclasses import dataclass
from typing import Any

import grpc

from schooner._core import Core
from schooner.exceptions import (
    RayServeException,
    ReplicaUnavailableError,
    ServeConfigError,
    grpc_status_for,
)
from schooner.instance_config import gRPCOptions
from schooner.proxy import grpc_messages
from schooner.proxy.app import ProxyApp, new_request_id
from schooner.proxy.observer import GrpcObserver
from schooner.rpc.connection import END_OF_STREAM, ConnectionLost, QueueSink, RemoteCallError
from schooner.rpc.messages import DeploymentID, GrpcReply, Route

__all__ = ["CallMetadata", "GrpcProxy", "parse_metadata", "start_grpc_server"]

logger = logging.getLogger("schooner.proxy")

_STATUS_BY_NUMBER = {code.value[0]: code for code in grpc.StatusCode}
_NOT_POPULATED = "Route table is not populated yet."


@dataclass(frozen=True)
class CallMetadata:
    """What Schooner reads from a call's invocation metadata ("" when absent)."""

    application: str = ""
    request_id: str = ""
    multiplexed_model_id: str = ""
    session_id: str = ""
    shard_key: str = ""
    traceparent: str = ""


_METADATA_KEYS = {
    "application": "application",
    "request_id": "request_id",
    "multiplexed_model_id": "multiplexed_model_id",
    "session_id": "session_id",
    "x-serve-shard-key": "shard_key",
    "traceparent": "traceparent",
}


def parse_metadata(pairs: Iterable[tuple[str, Any]] | None) -> CallMetadata:
    """The keys Schooner uses, from ``(key, value)`` pairs (binary ``-bin`` values and
    unknown keys are ignored; the last value of a repeated key wins)."""
    found: dict[str, str] = {}
    for key, value in pairs or ():
        field = _METADATA_KEYS.get(key)
        if field is not None and isinstance(value, str):
            found[field] = value
    return CallMetadata(**found)


def not_found_message(application: str, available: Sequence[str]) -> str:
    what = (
        f"Application '{application}' not found."
        if application
        else ("Application metadata not set.")
    )
    return (
        f"{what} Ping /ray.serve.RayServeAPIService/ListApplications for available "
        f"applications (now: {sorted(available)}); name one in the 'application' metadata."
    )


class _Collector:
    """Stands in for the server while a generated ``add_*Servicer_to_server`` runs: keeps
    the method handlers it registers, by service."""

    def __init__(self) -> None:
        self.services: dict[str, dict[str, grpc.RpcMethodHandler]] = {}

    def add_generic_rpc_handlers(self, handlers: Sequence[Any]) -> None:
        for handler in handlers:
            methods = getattr(handler, "_method_handlers", None)
            name = handler.service_name() if hasattr(handler, "service_name") else None
            if not isinstance(methods, dict) or not name:
                raise ServeConfigError(
                    f"A grpc_options.grpc_servicer_functions entry registered a handler "
                    f"({type(handler).__name__}) that is not a generated service; give "
                    "functions that grpcio-tools generated (add_*Servicer_to_server)."
                )
            service = self.services.setdefault(name, {})
            for path, method_handler in methods.items():
                service[path.rpartition("/")[2]] = method_handler

    def add_registered_method_handlers(
        self, service_name: str, method_handlers: dict[str, grpc.RpcMethodHandler]
    ) -> None:
        self.services.setdefault(service_name, {}).update(method_handlers)


class _Servicer:
    """The servicer handed to ``add_*Servicer_to_server``: any method name resolves (the
    proxy replaces the handlers' behaviour, so these are never called)."""

    def __getattr__(self, name: str) -> Callable[..., Any]:
        def unused(*_args: Any) -> None:
            raise RuntimeError(f"{name} is served by Schooner's proxy")

        return unused


@dataclass
class _Call:
    """One routed call."""

    path: str
    meta: tuple[str, ...]
    request_id: str
    route: str
    app_name: str
    ingress: DeploymentID
    shard_key: str
    call_state: tuple[Any, ...]
    started: float
    client: str


class GrpcProxy:
    """The gRPC side of one proxy process (routes from the same registry as HTTP)."""

    def __init__(
        self, core: Core, http_app: ProxyApp, options: gRPCOptions, observer: GrpcObserver
    ) -> None:
        self.core = core
        self.http_app = http_app
        self.timeout_s = options.request_timeout_s
        self.observer = observer

    # -- routing ----------------------------------------------------------------------
    def _route(self, application: str) -> Route | None:
        routes = self.http_app.routes or {}
        only = len(routes) == 1
        for route in routes.values():
            if only or route.app_name == application:
                return route
        return None

    def _start(self, path: str, context: grpc.aio.ServicerContext) -> _Call | str:
        """The call's target, or the NOT_FOUND message."""
        started = self.observer.begin()
        metadata = list(context.invocation_metadata() or ())
        md = parse_metadata(metadata)
        request_id = md.request_id or new_request_id()
        route = self._route(md.application)
        client = context.peer() or ""
        if route is None:
            names = [r.app_name for r in (self.http_app.routes or {}).values()]
            self.observer.end(
                started,
                method=path,
                route="",
                application="",
                deployment="",
                status="NOT_FOUND",
                request_id=request_id,
                client=client,
            )
            context.set_trailing_metadata((("request_id", request_id),))
            return not_found_message(md.application, names)
        ingress, app_name = route.ingress, route.app_name
        policy = self.core.registry.traffic.get(route.ingress)
        if policy is not None:
            target = policy.choose(md.shard_key)
            ingress, app_name = target.ingress, target.app_name
        call_state = (
            metadata,
            client,
            dict(context.auth_context() or {}),
            context.peer_identities(),
            context.peer_identity_key(),
            [("request_id", request_id)],
        )
        meta = (
            request_id,
            path.rpartition("/")[2],
            md.multiplexed_model_id,
            md.session_id,
            route.route_prefix,
            md.traceparent,
        )
        return _Call(
            path,
            meta,
            request_id,
            route.route_prefix,
            app_name,
            ingress,
            md.shard_key,
            call_state,
            started,
            client,
        )

    # -- forwarding ---------------------------------------------------------------------
    async def _relay(
        self, call: _Call, request: Any, streaming: bool, reply_box: list[GrpcReply]
    ) -> AsyncIterator[bytes]:
        """Send the call to a replica; yield streamed responses; its reply ends in
        ``reply_box``. Raises what the router or the time limit raise."""
        router = self.core.registry.router(call.ingress)
        async with asyncio.timeout(self.timeout_s):
            async for item in router.stream(
                "grpc",
                call.meta,
                request,
                call.call_state,
                streaming,
                shard_key=call.shard_key,
                model_id=call.meta[2],
            ):
                if type(item) is bytes:
                    yield item
                else:
                    reply_box.append(item)

    def _finish(
        self,
        call: _Call,
        context: grpc.aio.ServicerContext,
        reply: GrpcReply | None,
        exc: BaseException | None,
    ) -> None:
        """Set the call's status, details and trailing metadata; record it."""
        trailing: tuple[tuple[str, Any], ...] = (("request_id", call.request_id),)
        if reply is not None:
            trailing = reply.trailing_metadata or trailing
            if reply.compression is not None:
                context.set_compression(grpc.Compression(reply.compression))
            code = _STATUS_BY_NUMBER.get(reply.code) if reply.code is not None else None
            if code is None and not reply.ok:
                code = grpc.StatusCode.INTERNAL
            if code is not None:
                context.set_code(code)
            if reply.details and (code is not None):
                context.set_details(reply.details)
            status = code.name if code is not None else "OK"
        else:
            assert exc is not None
            status = grpc_status_for(exc)
            context.set_code(grpc.StatusCode[status])
            context.set_details(self._error_details(call, exc))
        context.set_trailing_metadata(trailing)
        self.observer.end(
            call.started,
            method=call.path,
            route=call.route,
            application=call.app_name,
            deployment=call.ingress.name,
            status=status,
            request_id=call.request_id,
            client=call.client,
        )

    def _error_details(self, call: _Call, exc: BaseException) -> str:
        if isinstance(exc, TimeoutError):
            return f"Request {call.request_id} timed out after {self.timeout_s:g} s."
        if isinstance(exc, RemoteCallError):
            logger.error("replica failed request %s: %s", call.request_id, exc.error.traceback)
            return f"{exc.error.type_name}: {exc.error.message}"
        if isinstance(exc, RayServeException):
            logger.warning("request %s failed: %r", call.request_id, exc)
            return f"{type(exc).__name__}: {exc}"
        logger.exception("request %s failed", call.request_id, exc_info=exc)
        return f"{type(exc).__name__}: {exc}"

    def _cancelled(self, call: _Call) -> None:
        logger.info("gRPC request %s cancelled by the client", call.request_id)
        self.observer.end(
            call.started,
            method=call.path,
            route=call.route,
            application=call.app_name,
            deployment=call.ingress.name,
            status="CANCELLED",
            request_id=call.request_id,
            client=call.client,
        )

    async def unary(self, path: str, request: Any, context: grpc.aio.ServicerContext) -> bytes:
        call = self._start(path, context)
        if isinstance(call, str):
            context.set_code(grpc.StatusCode.NOT_FOUND)
            context.set_details(call)
            return b""
        box: list[GrpcReply] = []
        try:
            async for _ in self._relay(call, request, False, box):
                pass
        except (asyncio.CancelledError, GeneratorExit):  # GeneratorExit: a stream closed
            self._cancelled(call)
            raise
        except Exception as exc:
            self._finish(call, context, None, exc)
            return b""
        reply = box[-1] if box else None
        self._finish(call, context, reply, None if reply else RuntimeError("no reply"))
        return reply.body or b"" if reply is not None else b""

    async def server_stream(
        self, path: str, request: Any, context: grpc.aio.ServicerContext
    ) -> AsyncIterator[bytes]:
        call = self._start(path, context)
        if isinstance(call, str):
            context.set_code(grpc.StatusCode.NOT_FOUND)
            context.set_details(call)
            return
        box: list[GrpcReply] = []
        try:
            async for item in self._relay(call, request, True, box):
                yield item
        except (asyncio.CancelledError, GeneratorExit):  # GeneratorExit: a stream closed
            self._cancelled(call)
            raise
        except Exception as exc:
            self._finish(call, context, None, exc)
            return
        reply = box[-1] if box else None
        self._finish(call, context, reply, None if reply else RuntimeError("no reply"))

    async def client_stream(
        self,
        path: str,
        requests: AsyncIterator[Any],
        context: grpc.aio.ServicerContext,
        streaming: bool,
    ) -> AsyncIterator[bytes]:
        """A client- or bidirectional-streaming call: the request messages are pushed into a
        duplex call on a replica as they arrive; yields the responses (for a client-streaming
        call, the one response last)."""
        call = self._start(path, context)
        if isinstance(call, str):
            context.set_code(grpc.StatusCode.NOT_FOUND)
            context.set_details(call)
            return
        box: list[GrpcReply] = []
        try:
            async for item in self._relay_duplex(call, requests, streaming, box):
                yield item
        except (asyncio.CancelledError, GeneratorExit):  # GeneratorExit: a stream closed
            self._cancelled(call)
            raise
        except Exception as exc:
            self._finish(call, context, None, exc)
            return
        reply = box[-1] if box else None
        self._finish(call, context, reply, None if reply else RuntimeError("no reply"))
        if reply is not None and not streaming:
            yield reply.body or b""

    async def _relay_duplex(
        self, call: _Call, requests: AsyncIterator[Any], streaming: bool, box: list[GrpcReply]
    ) -> AsyncIterator[bytes]:
        router = self.core.registry.router(call.ingress)
        async with asyncio.timeout(self.timeout_s):
            replica, conn = await router.connect(call.shard_key, call.meta[2])
            sink = QueueSink()
            req_id = conn.open_duplex("grpc_duplex", (call.meta, call.call_state, streaming), sink)

            async def pump() -> None:
                async for message in requests:
                    conn.push(req_id, message)
                conn.push(req_id, None)

            pumping = asyncio.ensure_future(pump())
            finished = False
            try:
                while True:
                    item = await sink.queue.get()
                    if item is END_OF_STREAM:
                        finished = True
                        return
                    if isinstance(item, BaseException):
                        finished = True
                        if isinstance(item, ConnectionLost):
                            raise ReplicaUnavailableError(
                                f"Replica {replica.replica_id} of {call.ingress} died while "
                                f"handling request {call.request_id}."
                            ) from item
                        raise item
                    if type(item) is bytes:
                        yield item
                    else:
                        box.append(item)
            finally:
                pumping.cancel()
                if not finished:
                    conn.cancel_request(req_id)
                router.release(replica)

    # -- built-in service --------------------------------------------------------------------
    async def list_applications(self, _request: bytes, context: grpc.aio.ServicerContext) -> bytes:
        routes = self.http_app.routes
        if not routes:
            context.set_code(grpc.StatusCode.UNAVAILABLE)
            context.set_details(_NOT_POPULATED)
        names = [route.app_name for route in (routes or {}).values()]
        return grpc_messages.encode_list_applications(names)

    async def healthz(self, _request: bytes, context: grpc.aio.ServicerContext) -> bytes:
        if not self.http_app.routes:
            context.set_code(grpc.StatusCode.UNAVAILABLE)
            context.set_details(_NOT_POPULATED)
            return grpc_messages.encode_healthz(_NOT_POPULATED)
        return grpc_messages.encode_healthz("success")

    # -- handlers ----------------------------------------------------------------------------
    def _forwarding_handler(self, path: str, handler: Any) -> Any:
        """``handler`` (a generated method handler) with its behaviour replaced by
        forwarding and its response serializer dropped (replicas answer bytes)."""
        if handler.request_streaming and handler.response_streaming:

            async def bidi(
                requests: Any, context: grpc.aio.ServicerContext
            ) -> AsyncIterator[bytes]:
                async for response in self.client_stream(path, requests, context, True):
                    yield response

            return handler._replace(response_serializer=None, stream_stream=bidi)
        if handler.request_streaming:

            async def client(requests: Any, context: grpc.aio.ServicerContext) -> bytes:
                answers = [b async for b in self.client_stream(path, requests, context, False)]
                return answers[-1] if answers else b""

            return handler._replace(response_serializer=None, stream_unary=client)
        if handler.response_streaming:

            async def stream(
                request: Any, context: grpc.aio.ServicerContext
            ) -> AsyncIterator[bytes]:
                async for response in self.server_stream(path, request, context):
                    yield response

            return handler._replace(response_serializer=None, unary_stream=stream)

        async def unary(request: Any, context: grpc.aio.ServicerContext) -> bytes:
            return await self.unary(path, request, context)

        return handler._replace(response_serializer=None, unary_unary=unary)

    def register(self, server: grpc.aio.Server, servicer_functions: Sequence[Any]) -> list[str]:
        """Add the built-in service and the user's services to ``server``; returns the
        user's service names."""
        builtin = {
            "ListApplications": grpc.unary_unary_rpc_method_handler(self.list_applications),
            "Healthz": grpc.unary_unary_rpc_method_handler(self.healthz),
        }
        _add_service(server, grpc_messages.SERVICE, builtin)
        collector = _Collector()
        for add_servicer in servicer_functions:
            add_servicer(_Servicer(), collector)
        for service, methods in collector.services.items():
            handlers = {
                name: self._forwarding_handler(f"/{service}/{name}", handler)
                for name, handler in methods.items()
            }
            _add_service(server, service, handlers)
        return sorted(collector.services)


def _add_service(server: grpc.aio.Server, service: str, handlers: dict[str, Any]) -> None:
    server.add_generic_rpc_handlers((grpc.method_handlers_generic_handler(service, handlers),))
    add_registered = getattr(server, "add_registered_method_handlers", None)
    if add_registered is not None:
        add_registered(service, handlers)


def _enable_reflection(server: grpc.aio.Server, services: list[str]) -> None:
    try:
        from grpc_reflection.v1alpha import reflection
    except ImportError:
        logger.info(
            "grpc_options.enable_reflection: grpcio-reflection is not installed, so the gRPC "
            "server offers no reflection (pip install 'schooner[grpc]')."
        )
        return
    reflection.enable_server_reflection([*services, reflection.SERVICE_NAME], server)


def grpc_address(host: str, port: int) -> str:
    return f"[{host}]:{port}" if ":" in host else f"{host}:{port}"


async def start_grpc_server(
    proxy: GrpcProxy,
    options: gRPCOptions,
    servicer_functions: Sequence[Any],
    host: str,
    reuse_port: bool,
) -> grpc.aio.Server:
    """Start serving gRPC on ``host:options.port``. ``reuse_port``: proxies of several
    Ray nodes on one machine share the port."""
    server = grpc.aio.server(options=[("grpc.so_reuseport", 1 if reuse_port else 0)])
    services = proxy.register(server, servicer_functions)
    if options.enable_reflection:
        _enable_reflection(server, services)
    address = grpc_address(host, options.port)
    server.add_insecure_port(address)
    await server.start()
    logger.info("gRPC on %s: %s", address, ", ".join(services))
    return server
