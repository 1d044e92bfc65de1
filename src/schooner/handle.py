"""Calling deployments from Python: handles and responses.

``handle.remote(...)`` (or ``handle.method.remote(...)``) sends a request at
once and returns a :class:`DeploymentResponse` (await it, or call
``.result()`` from sync code). With ``handle.options(stream=True)`` it returns
a :class:`DeploymentResponseGenerator` to iterate over. A response passed as
an argument to another ``.remote()`` call is resolved first.

Exceptions raised by user code are re-raised in the caller as the same
exception type when it can be rebuilt (the remote traceback is chained as
its cause), else as :class:`~schooner.exceptions.RemoteUserError`.

Traffic policies (:mod:`schooner.router.traffic`): a call to the ingress deployment
of an application that owns a policy goes to the ingress of the application the
policy chooses (by ``handle.options(shard_key=...)`` when given; the key is also
passed to that router, so it keeps the call on one replica). Calls made from inside
the owner application itself are never split. Shadow applications get a copy of
the call only if their router has a free slot at that moment; the copy's result is
discarded and it never delays or fails the caller. A call whose arguments hold
unresolved :class:`DeploymentResponse` objects is not copied (copying would mean
waiting for them before sending, or running the upstream work twice).
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import itertools
import uuid
import warnings
from collections.abc import AsyncIterator, Generator
from dataclasses import dataclass, replace
from typing import Any

from schooner import _core, context
from schooner.context import current_request
from schooner.exceptions import RemoteUserError, ReplicaUnavailableError, RequestCancelledError
from schooner.router.registry import LoopRouters, RouterRegistry
from schooner.router.router import Router
from schooner.router.shadow import send_copy, send_stream_copy
from schooner.rpc.connection import Connection, ConnectionLost, RemoteCallError
from schooner.rpc.messages import DeploymentID, ReplicaInfo, TrafficTarget
from schooner.telemetry import catalog, recorder, reporter, tracing

__all__ = ["DeploymentHandle", "DeploymentResponse", "DeploymentResponseGenerator"]


class RemoteTraceback(Exception):
    """Carries the traceback of an exception raised in another process (shown as its cause)."""

    def __init__(self, tb: str) -> None:
        super().__init__(tb)
        self.tb = tb

    def __str__(self) -> str:
        return "\n\nRemote traceback:\n" + self.tb


def _user_exception(exc: RemoteCallError) -> BaseException:
    error = exc.error
    original = error.exc
    if original is None:
        return RemoteUserError(error.type_name, error.message, error.traceback)
    original.__cause__ = RemoteTraceback(error.traceback)
    return original


@dataclass(frozen=True)
class _HandleOptions:
    method_name: str = "__call__"
    multiplexed_model_id: str = ""
    stream: bool = False
    session_id: str = ""
    #: Session affinity: the same key reaches the same application of a traffic split
    #: and the same replica of the deployment (while the replica set is unchanged).
    shard_key: str = ""


class DeploymentHandle:
    """A reference to a deployment that can be called from any process of the instance."""

    def __init__(
        self,
        deployment_name: str,
        app_name: str = "default",
        *,
        _options: _HandleOptions | None = None,
    ) -> None:
        self._deployment_id = DeploymentID(deployment_name, app_name)
        self._options = _options or _HandleOptions()

    @property
    def deployment_name(self) -> str:
        return self._deployment_id.name

    @property
    def app_name(self) -> str:
        return self._deployment_id.app_name

    def __repr__(self) -> str:
        return (
            f"DeploymentHandle(deployment={self.deployment_name!r}, "
            f"app={self.app_name!r}, method={self._options.method_name!r})"
        )

    def __reduce__(self) -> tuple[Any, ...]:
        return (_rebuild_handle, (self.deployment_name, self.app_name, self._options))

    def __eq__(self, other: object) -> bool:
        return (
            isinstance(other, DeploymentHandle)
            and other._deployment_id == self._deployment_id
            and other._options == self._options
        )

    def __hash__(self) -> int:
        return hash((self._deployment_id, self._options))

    def options(
        self,
        *,
        method_name: str | None = None,
        multiplexed_model_id: str | None = None,
        stream: bool | None = None,
        session_id: str | None = None,
        shard_key: str | None = None,
        use_new_handle_api: bool | None = None,
        _prefer_local_routing: bool | None = None,
        _by_reference: bool | None = None,
        request_serialization: str | None = None,
        response_serialization: str | None = None,
    ) -> DeploymentHandle:
        """A copy of this handle with some call options changed.

        Unknown keywords raise ``TypeError``, as in Ray. ``use_new_handle_api`` (Ray
        2.7-2.9) and ``_prefer_local_routing`` are accepted for old programs and do
        nothing; ``_by_reference`` and the serialization options are accepted for
        compatibility (Schooner always pickles, with cloudpickle for code).
        ``shard_key`` (Schooner's, as in Ray Serve 1.x): see the module docstring.
        """
        for name, value in (
            ("request_serialization", request_serialization),
            ("response_serialization", response_serialization),
        ):
            if value is not None and value not in _SERIALIZATIONS:
                raise ValueError(
                    f"Unsupported {name} {value!r}; use one of {sorted(_SERIALIZATIONS)}."
                )
        if _prefer_local_routing is not None:
            warnings.warn(
                "Modifying `_prefer_local_routing` with `options()` is deprecated.",
                DeprecationWarning,
                stacklevel=2,
            )
        changes: dict[str, Any] = {}
        if method_name is not None:
            changes["method_name"] = method_name
        if multiplexed_model_id is not None:
            changes["multiplexed_model_id"] = multiplexed_model_id
        if stream is not None:
            changes["stream"] = bool(stream)
        if session_id is not None:
            changes["session_id"] = session_id
        if shard_key is not None:
            if not isinstance(shard_key, str):
                raise TypeError(
                    f"shard_key must be a str, got {type(shard_key).__name__}: convert it "
                    "with str() (the same string always lands on the same application)."
                )
            changes["shard_key"] = shard_key
        return self._with_options(replace(self._options, **changes))

    def _with_options(self, options: _HandleOptions) -> DeploymentHandle:
        return DeploymentHandle(self.deployment_name, self.app_name, _options=options)

    def __getattr__(self, name: str) -> DeploymentHandle:
        if name.startswith("__") and name.endswith("__"):
            raise AttributeError(name)
        cache = self.__dict__.setdefault("_method_handles", {})
        handle: DeploymentHandle | None = cache.get(name)
        if handle is None:
            handle = cache[name] = self.options(method_name=name)
        return handle

    def remote(self, *args: Any, **kwargs: Any) -> DeploymentResponse | DeploymentResponseGenerator:
        """Send a request; see the module docstring for what comes back."""
        core = _core.get_core()
        options = self._options
        request = current_request()
        request_id = request.request_id or _new_request_id()
        if recorder.ENABLED:
            deployment = self._deployment_id
            _handle_requests.inc(
                (reporter.identity()[1], deployment.name, request.route, deployment.app_name)
            )
        meta = (
            request_id,
            options.method_name,
            options.multiplexed_model_id,
            options.session_id,
            request.route,
            tracing.current_traceparent() if tracing.enabled() else "",
        )
        deployment = self._deployment_id
        shard_key = options.shard_key
        shadows: tuple[TrafficTarget, ...] = ()
        traffic = core.registry.traffic  # replaced whole on change: safe from any thread
        if traffic:
            policy = traffic.get(deployment)
            if policy is not None and not _inside_app(deployment.app_name, request):
                deployment = policy.choose(shard_key).ingress
                if policy.shadows and not _has_responses(args, kwargs):
                    shadows = policy.shadow_copies()
        if options.stream:
            return DeploymentResponseGenerator(
                core, deployment, meta, args, kwargs, shard_key, shadows
            )
        try:
            loop: asyncio.AbstractEventLoop | None = asyncio.get_running_loop()
        except RuntimeError:
            loop = None
        if loop is None:  # sync caller: run on the core's loop thread
            coro = _call(core.registry, deployment, meta, args, kwargs, shard_key)
            future = core.submit(coro)
            if shadows:
                core.loop.call_soon_threadsafe(
                    _send_copies, core.registry, shadows, "call", meta, args, kwargs, shard_key
                )
            return DeploymentResponse(core, future, core.loop)
        routers = core.routers_for(loop)
        router = routers.router(deployment)
        response: DeploymentResponse | None = None
        if not _has_responses(args, kwargs):
            # Fast path: a free slot and an open connection -> write the request now, no task.
            replica = router.try_acquire(shard_key, options.multiplexed_model_id)
            if replica is not None:
                conn = routers.pool.get_nowait(replica.address)
                if conn is not None:
                    req_id, reply = conn.call_future("call", (meta, args, kwargs), {})
                    reply.add_done_callback(_Finish(router, replica, conn, req_id))
                    response = DeploymentResponse(core, reply, loop, raw=True)
                else:
                    router.release(replica)
        if response is None:
            task = loop.create_task(_call(routers, deployment, meta, args, kwargs, shard_key))
            response = DeploymentResponse(core, task, loop)
        if shadows:
            _send_copies(routers, shadows, "call", meta, args, kwargs, shard_key)
        return response


#: Values Ray accepts for ``request_serialization`` / ``response_serialization``.
#: ``ray_serve_handle_request_counter``; handles may be called from any thread.
_handle_requests = recorder.counter(catalog.HANDLE_REQUESTS, lock=True)
_SERIALIZATIONS = frozenset({"cloudpickle", "pickle", "msgpack", "orjson"})
_ID_PREFIX = uuid.uuid4().hex[:12]
_id_counter = itertools.count(1)


def _new_request_id() -> str:
    """A request id unique across processes (random per process, then a counter)."""
    return f"{_ID_PREFIX}-{next(_id_counter):x}"


def _inside_app(app_name: str, request: context.RequestContext) -> bool:
    """The caller runs in a replica of ``app_name`` (a nested call: never split)."""
    if request.app_name:
        return request.app_name == app_name
    replica = context._local_replica_context.get() or context._replica_context
    return replica is not None and replica.app_name == app_name


def _send_copies(
    routers: RouterRegistry | LoopRouters,
    shadows: tuple[TrafficTarget, ...],
    method: str,
    meta: tuple[str, ...],
    args: tuple[Any, ...],
    kwargs: dict[str, Any],
    shard_key: str,
) -> None:
    """Fire-and-forget copies of a call to ``shadows`` (on the loop ``routers`` live on)."""
    send = send_stream_copy if method == "call_stream" else send_copy
    for shadow in shadows:
        send(
            routers.router(shadow.ingress),
            routers.pool,
            shadow.app_name,
            method,
            (meta, args, kwargs),
            shard_key,
            meta[2],
        )


def _has_responses(args: tuple[Any, ...], kwargs: dict[str, Any]) -> bool:
    for a in args:
        if isinstance(a, DeploymentResponse):
            return True
    return bool(kwargs) and any(isinstance(v, DeploymentResponse) for v in kwargs.values())


class _Finish:
    """Done-callback of a fast-path call: free the router slot; tell the replica on cancel."""

    __slots__ = ("conn", "replica", "req_id", "router")

    def __init__(self, router: Router, replica: ReplicaInfo, conn: Connection, req_id: int) -> None:
        self.router, self.replica, self.conn, self.req_id = router, replica, conn, req_id

    def __call__(self, reply: asyncio.Future[Any]) -> None:
        self.router.release(self.replica)
        if reply.cancelled():
            self.conn.cancel_request(self.req_id)


def _rebuild_handle(name: str, app: str, options: _HandleOptions) -> DeploymentHandle:
    return DeploymentHandle(name, app, _options=options)


async def _resolve(
    args: tuple[Any, ...], kwargs: dict[str, Any]
) -> tuple[tuple[Any, ...], dict[str, Any]]:
    """Replace top-level DeploymentResponse arguments by their results."""
    if any(isinstance(a, DeploymentResponse) for a in args):
        args = tuple([await a if isinstance(a, DeploymentResponse) else a for a in args])
    if any(isinstance(v, DeploymentResponse) for v in kwargs.values()):
        kwargs = {
            k: (await v if isinstance(v, DeploymentResponse) else v) for k, v in kwargs.items()
        }
    return args, kwargs


async def _call(
    routers: RouterRegistry | LoopRouters,
    deployment: DeploymentID,
    meta: tuple[str, ...],
    args: tuple[Any, ...],
    kwargs: dict[str, Any],
    shard_key: str = "",
) -> Any:
    args, kwargs = await _resolve(args, kwargs)
    router = routers.router(deployment)
    try:
        return await router.call("call", meta, args, kwargs, shard_key=shard_key, model_id=meta[2])
    except RemoteCallError as exc:
        user_exc = _user_exception(exc)
        raise user_exc from user_exc.__cause__


def _on_loop_thread_error() -> RuntimeError:
    return RuntimeError(
        "Sync methods should not be called from within an `asyncio` event loop. "
        "Use `await response` instead of `response.result()`."
    )


class DeploymentResponse:
    """The future result of a ``handle.remote()`` call."""

    def __init__(
        self,
        core: _core.Core,
        future: asyncio.Future[Any] | concurrent.futures.Future[Any],
        loop: asyncio.AbstractEventLoop,
        *,
        raw: bool = False,
    ) -> None:
        self._core = core
        self._future = future
        self._loop = loop  # the loop running the call
        self._raw = raw  # the future is an RPC reply: errors still need translating

    def __await__(self) -> Generator[Any, None, Any]:
        future = self._future
        if isinstance(future, concurrent.futures.Future):
            return asyncio.wrap_future(future).__await__()
        try:
            current = asyncio.get_running_loop()
        except RuntimeError:
            current = None
        if current is self._loop:
            return self._await_here() if self._raw else future.__await__()
        cross = asyncio.run_coroutine_threadsafe(self._await_any(), self._loop)
        return asyncio.wrap_future(cross).__await__()

    def result(self, timeout_s: float | None = None, *, _skip_asyncio_check: bool = False) -> Any:
        """Block until the result is ready (raises ``TimeoutError`` after ``timeout_s``)."""
        if not _skip_asyncio_check:
            try:
                asyncio.get_running_loop()
            except RuntimeError:
                pass
            else:
                raise _on_loop_thread_error()
        future = self._future
        if not isinstance(future, concurrent.futures.Future):
            future = asyncio.run_coroutine_threadsafe(self._await_any(), self._loop)
        try:
            return future.result(timeout_s)
        except concurrent.futures.TimeoutError:
            raise TimeoutError(f"Timed out waiting for the result after {timeout_s}s.") from None
        except concurrent.futures.CancelledError:
            raise RequestCancelledError("The request was cancelled.") from None

    def _await_here(self) -> Generator[Any, None, Any]:
        """Await the RPC reply on its own loop, translating errors as user code expects."""
        try:
            return (yield from self._future.__await__())  # type: ignore[union-attr]
        except RemoteCallError as exc:
            user_exc = _user_exception(exc)
            raise user_exc from user_exc.__cause__
        except ConnectionLost as exc:
            raise ReplicaUnavailableError("The replica died while handling the request.") from exc

    async def _await_any(self) -> Any:
        return await self

    def cancel(self) -> None:
        """Cancel the request (the replica's task is cancelled too)."""
        future = self._future
        if isinstance(future, concurrent.futures.Future):
            future.cancel()
        else:
            self._loop.call_soon_threadsafe(future.cancel)

    def cancelled(self) -> bool:
        return self._future.cancelled()

    def done(self) -> bool:
        return self._future.done()


_END = object()


class DeploymentResponseGenerator:
    """The items of a streaming call (``handle.options(stream=True).remote()``).

    Iterate with ``for`` from sync code or ``async for`` from async code. The
    request is sent at once; items are buffered until read.
    """

    def __init__(
        self,
        core: _core.Core,
        deployment: DeploymentID,
        meta: tuple[str, ...],
        args: tuple[Any, ...],
        kwargs: dict[str, Any],
        shard_key: str = "",
        shadows: tuple[TrafficTarget, ...] = (),
    ) -> None:
        self._core = core
        self._queue: asyncio.Queue[Any] | None = None
        self._ready = concurrent.futures.Future[asyncio.Queue[Any]]()
        self._task = core.submit(self._pump(deployment, meta, args, kwargs, shard_key, shadows))
        self._done = False

    async def _pump(
        self,
        deployment: DeploymentID,
        meta: tuple[str, ...],
        args: tuple[Any, ...],
        kwargs: dict[str, Any],
        shard_key: str,
        shadows: tuple[TrafficTarget, ...],
    ) -> None:
        queue: asyncio.Queue[Any] = asyncio.Queue()
        self._queue = queue
        self._ready.set_result(queue)
        try:
            args, kwargs = await _resolve(args, kwargs)
            registry = self._core.registry
            router = registry.router(deployment)
            stream = router.stream(
                "call_stream", meta, args, kwargs, shard_key=shard_key, model_id=meta[2]
            )
            if shadows:
                _send_copies(registry, shadows, "call_stream", meta, args, kwargs, shard_key)
            async for item in stream:
                queue.put_nowait(item)
        except RemoteCallError as exc:
            queue.put_nowait(_Raise(_user_exception(exc)))
        except asyncio.CancelledError:
            queue.put_nowait(_Raise(RequestCancelledError("The request was cancelled.")))
            raise
        except BaseException as exc:
            queue.put_nowait(_Raise(exc))
        else:
            queue.put_nowait(_END)

    async def _next_on_loop(self) -> Any:
        queue = self._queue
        if queue is None:
            queue = await asyncio.wrap_future(self._ready)
        item = await queue.get()
        return item

    def _unwrap(self, item: Any) -> Any:
        if item is _END:
            self._done = True
            raise StopAsyncIteration
        if isinstance(item, _Raise):
            self._done = True
            raise item.exc
        return item

    def __aiter__(self) -> AsyncIterator[Any]:
        return self

    async def __anext__(self) -> Any:
        if self._done:
            raise StopAsyncIteration
        if self._core.in_loop_thread():
            item = await self._next_on_loop()
        else:
            item = await asyncio.wrap_future(
                asyncio.run_coroutine_threadsafe(self._next_on_loop(), self._core.loop)
            )
        return self._unwrap(item)

    def __iter__(self) -> DeploymentResponseGenerator:
        return self

    def __next__(self) -> Any:
        if self._done:
            raise StopIteration
        if self._core.in_loop_thread():
            raise _on_loop_thread_error()
        item = self._core.run_sync(self._next_on_loop())
        try:
            return self._unwrap(item)
        except StopAsyncIteration:
            raise StopIteration from None

    def cancel(self) -> None:
        task = self._task
        if isinstance(task, concurrent.futures.Future):
            task.cancel()
        else:
            self._core.loop.call_soon_threadsafe(task.cancel)


@dataclass
class _Raise:
    exc: BaseException
