"""The replica: loads the user's class or function once and serves calls to it.

Calls arrive over the data RPC (``rpc_call``, ``rpc_call_stream``,
``rpc_http``). Async methods run on the replica's event loop; sync methods
run in a thread pool bounded by ``max_ongoing_requests``, so a slow sync call
does not block the replica's other requests. Generators stream item by item.
The controller calls ``rpc_initialize`` once (constructor, then
``reconfigure(user_config)``), ``rpc_reconfigure`` on config changes and
``rpc_prepare_shutdown`` before stopping the process.
"""

from __future__ import annotations

import asyncio
import collections
import contextvars
import functools
import importlib
import inspect
import logging
import pickle
import time
from collections.abc import AsyncIterator, Callable
from typing import TYPE_CHECKING, Any

import cloudpickle
from starlette.requests import Request
from starlette.responses import StreamingResponse

from schooner import context
from schooner.logs import AccessLog, recent_lines
from schooner.replica import grpc_call, http, websocket
from schooner.replica.executor import SyncExecutor
from schooner.rpc.connection import Connection, Inbox
from schooner.rpc.messages import CodeRef, DeploymentID, GrpcReply
from schooner.telemetry import catalog, recorder, reporter, tracing

if TYPE_CHECKING:
    from schooner.schema import ReplicaRank

logger = logging.getLogger("schooner.replica")


def load_code(code: CodeRef) -> Any:
    """Find the user's class or function from its reference."""
    if code.pickled is not None:
        target = cloudpickle.loads(code.pickled)
    else:
        assert code.import_path is not None
        module_name, _, qualname = code.import_path.partition(":")
        target = importlib.import_module(module_name)
        for part in qualname.split("."):
            target = getattr(target, part)
    inner = getattr(target, "func_or_class", None)
    return inner if inner is not None and hasattr(target, "bind") else target


class _Serving:
    """One request in a replica: its request context, one of the replica's slots, and
    its metrics and access line once it ends."""

    __slots__ = ("_meta", "_replica", "_span", "_span_token", "_started", "_token", "error")

    def __init__(self, replica: Replica, meta: tuple[str, ...]) -> None:
        self._replica = replica
        self._meta = meta
        #: The type name of an exception user code raised that did not fail the call
        #: (an HTTP handler's exception, answered with a 500).
        self.error: str | None = None

    async def __aenter__(self) -> _Serving:
        self._started = time.perf_counter()
        self._token = self._replica._enter(self._meta)
        self._span = None
        if tracing.enabled():
            self._span = self._replica._open_span(self._meta)
            self._span_token = tracing.activate(self._span)
        try:
            await self._replica._take_slot()
        except BaseException:
            self._end_span("cancelled")
            self._replica._exit(self._token)
            raise
        return self

    def _end_span(self, error: str | None) -> None:
        span, self._span = self._span, None
        if span is not None:
            tracing.deactivate(self._span_token)
            tracing.close_span(span, error)

    async def __aexit__(
        self, exc_type: type[BaseException] | None, exc: object, tb: object
    ) -> None:
        replica = self._replica
        replica._free_slot()
        replica._exit(self._token)
        if exc_type is not None:
            error: str | None = exc_type.__name__
            if issubclass(exc_type, asyncio.CancelledError):
                error = ""
        else:
            error = self.error
        self._end_span(error)
        replica._observe(self._meta, (time.perf_counter() - self._started) * 1000.0, error)


class _MethodInfo:
    __slots__ = ("fn", "is_async", "is_generator", "takes_args", "takes_grpc_context")

    def __init__(self, fn: Any) -> None:
        self.fn = fn
        self.takes_grpc_context = grpc_call.takes_context(fn)
        self.is_async = inspect.iscoroutinefunction(fn)
        self.is_generator = _is_generator_fn(fn)
        #: An HTTP handler without parameters is called without the request (as in Ray).
        self.takes_args = _takes_args(fn)


def _replica_rank(rank: tuple[int, int, int] | None) -> ReplicaRank | None:
    if rank is None:
        return None
    from schooner.schema import ReplicaRank

    return ReplicaRank(rank=rank[0], node_rank=rank[1], local_rank=rank[2])


def _is_generator_fn(fn: Any) -> bool:
    return inspect.isgeneratorfunction(fn) or inspect.isasyncgenfunction(fn)


async def construct(target: Any, args: tuple[Any, ...], kwargs: dict[str, Any]) -> Any:
    """The user's object, made as Ray Serve makes it: an ``async def __init__`` is
    awaited; a sync one runs on the event loop's thread, because constructors call
    ``asyncio.get_running_loop()`` to start background tasks or to set the loop's
    default executor (nothing else runs on that loop until it returns)."""
    init = getattr(target, "__init__", None)
    if inspect.iscoroutinefunction(init):
        instance = target.__new__(target)
        await init(instance, *args, **kwargs)
        return instance
    return target(*args, **kwargs)


def _takes_args(fn: Any) -> bool:
    try:
        return len(inspect.signature(fn).parameters) > 0
    except (TypeError, ValueError):  # a builtin or C callable without a signature
        return True


class Replica:
    """RPC handler of a replica process (the same object serves every connection)."""

    def __init__(self, replica_id: str, deployment: DeploymentID) -> None:
        self.replica_id = replica_id
        self.deployment = deployment
        self._callable: Any = None
        self._is_function = False
        self._asgi_app: Any = None
        self._lifespan_shutdown: Callable[[], Any] | None = None
        self._executor: SyncExecutor | None = None
        self._methods: dict[str, _MethodInfo] = {}
        self._user_config: Any = None
        self._ongoing = 0  # accepted requests, running or waiting for a slot
        self._running = 0  # requests holding one of the max_ongoing_requests slots
        self._max_ongoing = 5
        self._slot_waiters: collections.deque[asyncio.Future[None]] = collections.deque()
        self.stopped = asyncio.Event()
        self._initializing: asyncio.Future[float] | None = None
        self._rank: ReplicaRank | None = None
        recorder.set_replica_labels(deployment.name, replica_id, deployment.app_name)
        reporter.identify(
            "replica",
            f"{deployment.app_name}#{deployment.name}#{replica_id}",
            reporter.identity()[2],
        )
        self._access_log = AccessLog("replica")
        self._access_log.use_running_loop()
        self._metrics = recorder.ENABLED
        self._latency = recorder.histogram(
            catalog.PROCESSING_LATENCY, count_as=catalog.DEPLOYMENT_REQUESTS
        )
        self._errors = recorder.counter(catalog.DEPLOYMENT_ERRORS)
        recorder.counter(catalog.REPLICA_STARTS).inc(())
        recorder.add_collector(lambda: [(catalog.PROCESSING_QUERIES, (), float(self._ongoing))])
        self._world_size = 0

    @property
    def initialized(self) -> bool:
        """Whether the user's object is constructed (``rpc_initialize`` succeeded)."""
        init = self._initializing
        return init is not None and init.done() and not init.cancelled() and not init.exception()

    # -- lifecycle (controller) -----------------------------------------------------------
    async def rpc_initialize(
        self,
        code: CodeRef,
        init_blob: bytes,
        is_function: bool,
        user_config: Any,
        max_ongoing_requests: int,
        rank: tuple[int, int, int] | None = None,
        world_size: int = 0,
    ) -> float:
        """Construct the user's object and apply ``user_config``; returns seconds taken.

        ``rank`` and ``world_size`` are in the replica context from the constructor on.
        Runs once: a second call (from a head that replaced a crashed one) waits for
        the first, which goes on even if the call that started it was cut off."""
        if self._initializing is None:
            self._rank, self._world_size = _replica_rank(rank), world_size
            self._initializing = asyncio.ensure_future(
                self._initialize(code, init_blob, is_function, user_config, max_ongoing_requests)
            )
        return await asyncio.shield(self._initializing)

    async def _initialize(
        self,
        code: CodeRef,
        init_blob: bytes,
        is_function: bool,
        user_config: Any,
        max_ongoing_requests: int,
    ) -> float:
        started = time.monotonic()
        self._executor = SyncExecutor(asyncio.get_running_loop(), max_ongoing_requests)
        self._max_ongoing = max(1, max_ongoing_requests)
        target = await self._in_thread(load_code, code)
        args, kwargs = pickle.loads(init_blob)
        replica_ctx = context.ReplicaContext(
            replica_id=context.ReplicaID(self.replica_id, self.deployment),
            rank=self._rank,
            world_size=self._world_size,
        )
        context._set_replica_context(replica_ctx)
        self._is_function = is_function
        if is_function:
            self._callable = target
        else:
            instance = await construct(target, args, kwargs)
            self._callable = instance
            # Only ingress deployments pay for importing FastAPI.
            if getattr(type(instance), "__schooner_ingress__", None) is not None:
                ingress = importlib.import_module("schooner.ingress")
                if ingress.is_ingress_class(type(instance)):
                    self._asgi_app = await ingress.build_asgi_app(instance)
                    self._lifespan_shutdown = await ingress.start_lifespan(self._asgi_app)
        replica_ctx.servable_object = self._callable
        if user_config is not None or self._reconfigure_takes_rank():
            await self.rpc_reconfigure(user_config)
        return time.monotonic() - started

    def _reconfigure_takes_rank(self) -> bool:
        """Whether the user's ``reconfigure`` has a ``rank`` parameter (then, as in Ray, it
        is called with ``rank=`` at start and whenever the rank changes)."""
        reconfigure = None if self._is_function else getattr(self._callable, "reconfigure", None)
        if reconfigure is None:
            return False
        try:
            return "rank" in inspect.signature(reconfigure).parameters
        except (TypeError, ValueError):
            return False

    async def rpc_set_rank(self, rank: tuple[int, int, int], world_size: int) -> None:
        """The controller assigned this replica a (new) rank, or the deployment's target
        size changed: update the replica context; ``reconfigure`` if the rank changed."""
        new_rank = _replica_rank(rank)
        changed = new_rank != self._rank
        self._rank, self._world_size = new_rank, world_size
        replica_ctx = context._replica_context
        if replica_ctx is not None:
            replica_ctx.rank, replica_ctx.world_size = new_rank, world_size
        if changed and self.initialized and self._reconfigure_takes_rank():
            await self.rpc_reconfigure(self._user_config)

    async def rpc_update(
        self,
        user_config: Any,
        max_ongoing_requests: int,
        logging_config: dict[str, Any] | None = None,
    ) -> str | None:
        """Apply a live config change: ``reconfigure()`` if user_config changed, pool size,
        the effective logging config (when given). Returns the log file's path."""
        log_file = None
        if logging_config is not None:
            from schooner.logs import configure_process_logging

            path = configure_process_logging(logging_config)
            log_file = str(path) if path is not None else None
        if self._executor is not None:
            self._executor.set_max_workers(max_ongoing_requests)
        self._max_ongoing = max(1, max_ongoing_requests)
        while self._slot_waiters and self._running < self._max_ongoing:
            self._hand_slot()
        if user_config != self._user_config:
            await self.rpc_reconfigure(user_config)
        return log_file

    async def rpc_reconfigure(self, user_config: Any) -> None:
        self._user_config = user_config
        reconfigure = getattr(self._callable, "reconfigure", None)
        if reconfigure is None:
            if user_config is not None:
                raise TypeError(
                    f"Deployment '{self.deployment.name}' has a user_config but its class "
                    "defines no `reconfigure(self, config)` method to receive it."
                )
            return
        kwargs = {"rank": self._rank} if self._reconfigure_takes_rank() else {}
        await self._invoke(reconfigure, (user_config,), kwargs)

    async def rpc_prepare_shutdown(self, wait_loop_s: float, timeout_s: float) -> None:
        """Drain (see :meth:`_drain`, at most ``timeout_s``), then end the ASGI lifespan
        and run ``__del__``. Called once routers no longer send here, or are about to stop."""
        try:
            await asyncio.wait_for(self._drain(wait_loop_s), timeout_s)
        except TimeoutError:
            if self._ongoing:
                logger.warning(
                    "graceful_shutdown_timeout_s (%g s) is over; shutting down with %d "
                    "requests still running",
                    timeout_s,
                    self._ongoing,
                )
        if self._lifespan_shutdown is not None:
            try:
                await self._lifespan_shutdown()
            except Exception:
                logger.exception("ASGI lifespan shutdown failed")
        deleter = getattr(type(self._callable), "__del__", None) if not self._is_function else None
        if deleter is not None:
            try:
                await self._invoke(functools.partial(deleter, self._callable), (), {})
            except Exception:
                logger.exception("__del__ raised")

    async def _drain(self, wait_loop_s: float) -> None:
        """Return at the first check, one every ``wait_loop_s``, that finds no request in flight.

        In flight: running, waiting for a slot, waiting in a batch or streaming. The
        first check comes after one period, not at once: a router that has not yet heard
        that this replica is leaving may still send it requests, and those are served
        and waited for like the others.
        """
        logged = False
        while True:
            await asyncio.sleep(wait_loop_s)
            if not self._ongoing:
                return
            if not logged:
                logger.info("draining: waiting for %d requests to finish", self._ongoing)
                logged = True

    def rpc_shutdown(self) -> None:
        self.stopped.set()

    def rpc_ping(self) -> str:
        return "pong"

    def rpc_recent_logs(self, limit: int) -> list[str]:
        """The last ``limit`` lines this process logged (the dashboard's log tail)."""
        return recent_lines(limit)

    async def rpc_check_health(self) -> None:
        check = getattr(self._callable, "check_health", None)
        if check is not None:
            await self._invoke(check, (), {})

    def on_connect(self, conn: Connection) -> None:
        pass

    # -- calls -------------------------------------------------------------------------------
    def _method(self, name: str) -> Any:
        if self._is_function:
            return self._callable
        try:
            return getattr(self._callable, name)
        except AttributeError:
            raise AttributeError(
                f"Deployment '{self.deployment.name}' has no method '{name}'."
            ) from None

    def _method_info(self, name: str) -> _MethodInfo:
        """The method and what kind of callable it is (inspected once per name)."""
        info = self._methods.get(name)
        if info is None:
            info = _MethodInfo(self._method(name))
            self._methods[name] = info
        return info

    async def _in_thread(self, fn: Callable[..., Any], *args: Any, **kwargs: Any) -> Any:
        if self._executor is None:
            self._executor = SyncExecutor(asyncio.get_running_loop(), 5)
        if kwargs:
            return await self._executor.submit(functools.partial(fn, *args, **kwargs))
        return await self._executor.submit(fn, *args)

    async def _invoke(self, fn: Any, args: tuple[Any, ...], kwargs: dict[str, Any]) -> Any:
        if inspect.iscoroutinefunction(fn) or inspect.isasyncgenfunction(fn):
            result = fn(*args, **kwargs)
        elif inspect.isgeneratorfunction(fn):
            return fn(*args, **kwargs)  # iterated by the caller, each step in a thread
        else:
            result = await self._in_thread(fn, *args, **kwargs)
        if inspect.isawaitable(result):
            result = await result
        return result

    def _enter(self, meta: tuple[str, ...]) -> contextvars.Token[context.RequestContext]:
        self._ongoing += 1
        return context._request_context.set(
            context.RequestContext(
                route=meta[4],
                request_id=meta[0],
                app_name=self.deployment.app_name,
                multiplexed_model_id=meta[2],
                session_id=meta[3],
            )
        )

    async def _take_slot(self) -> None:
        """Wait for one of the replica's ``max_ongoing_requests`` slots.

        Callers already keep to the limit, but each caller only counts its own
        requests (a proxy and a driver may both send); this makes the limit
        hold for the replica as a whole.
        """
        if self._running < self._max_ongoing and not self._slot_waiters:
            self._running += 1
            return
        waiter: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        self._slot_waiters.append(waiter)
        try:
            await waiter
        except asyncio.CancelledError:
            if waiter.done() and not waiter.cancelled():
                self._free_slot()  # it was handed to us as we were cancelled
            else:
                try:
                    self._slot_waiters.remove(waiter)
                except ValueError:
                    pass
            raise

    def _hand_slot(self) -> None:
        while self._slot_waiters:
            waiter = self._slot_waiters.popleft()
            if not waiter.done():
                self._running += 1
                waiter.set_result(None)
                return

    def _free_slot(self) -> None:
        self._running -= 1
        if self._slot_waiters and self._running < self._max_ongoing:
            self._hand_slot()

    def _exit(self, token: contextvars.Token[context.RequestContext]) -> None:
        context._request_context.reset(token)
        self._ongoing -= 1

    def _open_span(self, meta: tuple[str, ...]) -> Any:
        """A tracing span for one call (child of the caller's, which ``meta[5]`` names)."""
        return tracing.open_span(
            "replica_handle_request",
            meta[5] if len(meta) > 5 else "",
            {
                "schooner.application": self.deployment.app_name,
                "schooner.deployment": self.deployment.name,
                "schooner.replica": self.replica_id,
                "schooner.method": meta[1],
                "schooner.request_id": meta[0],
                "schooner.route": meta[4],
            },
        )

    def _observe(self, meta: tuple[str, ...], latency_ms: float, error: str | None) -> None:
        """A call ended (``error``: the exception's type name, ``""`` if cancelled)."""
        route = meta[4]
        if self._metrics:
            self._latency.observe((route,), latency_ms)
            if error:
                self._errors.inc((route, error))
        access = self._access_log
        if access.enabled:
            status = "OK" if error is None else ("CANCELLED" if error == "" else "ERROR")
            access.record(
                method=meta[1],
                route=route,
                status=status,
                latency_ms=latency_ms,
                request_id=meta[0],
                application=self.deployment.app_name,
                deployment=self.deployment.name,
            )

    async def rpc_call(
        self, meta: tuple[str, ...], args: tuple[Any, ...], kwargs: dict[str, Any]
    ) -> Any:
        async with _Serving(self, meta):
            info = self._method_info(meta[1])
            if info.is_async:
                result = await info.fn(*args, **kwargs)
            elif info.is_generator:
                raise TypeError(
                    f"Method '{meta[1]}' of deployment '{self.deployment.name}' is a generator; "
                    "call it with `handle.options(stream=True)`."
                )
            else:
                result = await self._in_thread(info.fn, *args, **kwargs)
            if inspect.isawaitable(result):  # a sync method that returned a coroutine
                result = await result
            return result

    async def rpc_call_stream(
        self, meta: tuple[str, ...], args: tuple[Any, ...], kwargs: dict[str, Any]
    ) -> AsyncIterator[Any]:
        async with _Serving(self, meta):
            fn = self._method(meta[1])
            result = await self._invoke(fn, args, kwargs)
            async for item in self._iterate(result):
                yield item

    async def _iterate(self, result: Any) -> AsyncIterator[Any]:
        if inspect.isasyncgen(result) or hasattr(result, "__aiter__"):
            async for item in result:
                yield item
        elif inspect.isgenerator(result):
            done = object()
            while True:
                item = await self._in_thread(next, result, done)
                if item is done:
                    return
                yield item
        else:
            raise TypeError(
                f"`stream=True` was requested but the method of deployment "
                f"'{self.deployment.name}' returned {type(result).__name__}, not a generator."
            )

    async def rpc_http(
        self,
        emit: Callable[[Any], None],
        meta: tuple[str, ...],
        request: tuple[Any, ...],
        body: bytes,
    ) -> Any:
        """Serve one HTTP request (a streaming RPC in the ``emit`` style).

        Returns ``(status, headers, body)`` for a whole response from a plain
        deployment, else a list of ASGI messages; a streamed body is emitted
        in parts as it is produced.
        """
        scope = http.make_scope(request)
        pending: list[http.Message] = []

        async def send(message: http.Message) -> None:
            pending.append(message)
            if message["type"] == "http.response.body" and message.get("more_body", False):
                emit(list(pending))
                pending.clear()

        async with _Serving(self, meta) as serving:
            whole = await self._serve_http(scope, body, send, serving)
        return whole if whole is not None else pending

    async def rpc_grpc(
        self,
        emit: Callable[[Any], None],
        meta: tuple[str, ...],
        request: Any,
        call: tuple[Any, ...],
        streaming: bool,
    ) -> GrpcReply:
        """Serve one gRPC call from the proxy (a streaming RPC in the ``emit`` style; see
        :mod:`schooner.replica.grpc_call`): call method ``meta[1]`` with the request message;
        a server-streaming call (``streaming``) emits each serialized response as the
        method yields it. What the method raises is answered, not re-raised (the proxy
        turns it into a status), and counted as an error."""
        return await self._serve_grpc(emit, meta, request, call, streaming)

    async def rpc_grpc_duplex(
        self,
        emit: Callable[[Any], None],
        inbox: Inbox,
        meta: tuple[str, ...],
        call: tuple[Any, ...],
        streaming: bool,
    ) -> GrpcReply:
        """A client- or bidirectional-streaming gRPC call (a duplex RPC): the method gets a
        ``gRPCInputStream`` of the request messages the proxy pushes (None ends them)."""
        return await self._serve_grpc(emit, meta, grpc_call.input_stream(inbox), call, streaming)

    async def _serve_grpc(
        self,
        emit: Callable[[Any], None],
        meta: tuple[str, ...],
        request: Any,
        call: tuple[Any, ...],
        streaming: bool,
    ) -> GrpcReply:
        context = grpc_call.make_context(call)
        async with _Serving(self, meta) as serving:
            try:
                info = self._method_info(meta[1])
                kwargs = {grpc_call.CONTEXT_ARG: context} if info.takes_grpc_context else {}
                if not streaming and info.is_generator:
                    raise TypeError(
                        f"Method '{meta[1]}' of deployment '{self.deployment.name}' is a "
                        "generator, but the RPC returns one message: declare it "
                        "`returns (stream ...)` in the .proto or return a single message."
                    )
                result = await self._invoke(info.fn, (request,), kwargs)
                if not streaming:
                    return grpc_call.succeeded(context, grpc_call.serialize(result, meta[1]))
                async for item in self._iterate(result):
                    emit(grpc_call.serialize(item, meta[1]))
                return grpc_call.succeeded(context, None)
            except Exception as exc:
                logger.exception("gRPC request %s failed", meta[0])
                serving.error = type(exc).__name__
                return grpc_call.failed(context, exc)

    async def rpc_websocket(
        self,
        emit: Callable[[Any], None],
        inbox: Inbox,
        meta: tuple[str, ...],
        request: tuple[Any, ...],
    ) -> None:
        """Serve one WebSocket connection (a duplex RPC; see :mod:`schooner.replica.websocket`).

        It holds one of the replica's slots while open. An exception before the app
        answered the handshake fails the call (the proxy answers 500); after it, the
        connection is closed with 1011.
        """
        session = websocket.WebSocketSession(emit, inbox)
        async with _Serving(self, meta):
            if self._asgi_app is None:  # only @serve.ingress apps take WebSockets: 403
                await session.send({"type": "websocket.close", "code": 1000})
                return
            scope = _app_scope(websocket.make_scope(request))
            try:
                await self._asgi_app(scope, session.receive, session.send)
            except websocket.ClientDisconnected:
                return
            except Exception:
                if not session.handshake_done:
                    raise
                logger.exception("WebSocket handler raised")
                if not session.closed:
                    emit({"type": "websocket.close", "code": 1011, "reason": ""})
                return
            if not session.handshake_done:
                raise RuntimeError(
                    "The ASGI app returned without answering the WebSocket handshake."
                )

    async def _serve_http(
        self, scope: dict[str, Any], body: bytes, send: http.Send, serving: _Serving
    ) -> tuple[int, list[tuple[bytes, bytes]], bytes] | None:
        if self._asgi_app is not None:
            scope = _app_scope(scope)
            tracker = http.ResponseTracker(send)
            try:
                from schooner.ingress import call_asgi

                await call_asgi(self._asgi_app, scope, body, tracker)
            except Exception as exc:
                logger.exception("ASGI app raised")
                serving.error = type(exc).__name__
                if not tracker.started:
                    await http.error_response(exc)(scope, http.make_receive(b""), send)
            return None
        info = self._method_info("__call__")
        receive = http.make_receive(body)
        request = Request(scope, receive)
        try:
            result = await self._invoke(info.fn, (request,) if info.takes_args else (), {})
            if info.is_generator:
                result = StreamingResponse(
                    self._iterate(result), media_type="text/plain; charset=utf-8"
                )
            whole = http.whole_response(result)
            if whole is not None:
                return whole
            response = http.to_response(result)
        except Exception as exc:
            logger.exception("request failed")
            serving.error = type(exc).__name__
            response = http.error_response(exc)
        await response(scope, receive, send)
        return None


def _app_scope(scope: dict[str, Any]) -> dict[str, Any]:
    """The scope as the ingress app sees it: a request for exactly the route prefix is
    the app's "/" (not a redirect)."""
    if scope["path"] == scope.get("root_path") and scope["path"] not in ("", "/"):
        return {**scope, "path": scope["path"] + "/"}
    return scope
