"""Local testing mode: ``serve.run(app, _local_testing_mode=True)`` runs an application
inside the calling process, as Ray Serve's local testing mode does.

No instance is started: no head, proxy or replica processes and no HTTP server.
Each deployment gets one in-process replica: its object is constructed at once
(so constructor errors surface in ``serve.run``) and, like a real replica, runs
on an event loop of its own in a daemon thread, sync methods in a thread pool
bounded by ``max_ongoing_requests``. ``reconfigure(user_config)`` is called after
construction (with ``rank=`` when it takes one; the rank is 0 of a world of 1).

Handles work as usual: ``.remote()``, ``await`` and ``.result()``, method
handles and ``.options(...)``, streaming (``stream=True``), ``DeploymentResponse``
arguments (resolved first; streaming responses cannot be passed on, as in Ray),
composition (bound deployments arrive in constructors as local handles),
``@serve.batch`` and ``@serve.multiplexed``. Arguments and results are not
copied between deployments except that arguments go through a pickle round
trip, so a call that would fail to serialize across processes fails here too.
``serve.get_replica_context()`` works inside a local deployment.
``num_replicas``, autoscaling, resources and ``runtime_env`` are ignored (with a
warning for GPUs and ``runtime_env``, as in Ray).
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import contextvars
import functools
import inspect
import logging
import threading
from collections.abc import AsyncIterator, Callable, Iterator
from typing import Any

import cloudpickle

from schooner import context
from schooner.deployment import Application, Deployment, check_app_target
from schooner.exceptions import RayServeException, RequestCancelledError, ServeConfigError
from schooner.handle import (
    DeploymentHandle,
    DeploymentResponse,
    DeploymentResponseGenerator,
    _HandleOptions,
    _new_request_id,
)
from schooner.replica.replica import construct
from schooner.rpc.messages import DeploymentID

__all__ = ["LocalDeploymentHandle", "run", "shutdown"]

logger = logging.getLogger("schooner")

#: Live local replicas of this process, by (application, deployment).
_replicas: dict[DeploymentID, _LocalReplica] = {}
_replicas_lock = threading.Lock()


class _LocalReplica:
    """The single in-process replica of one deployment: its object, loop and thread pool."""

    def __init__(self, deployment_id: DeploymentID, deployment: Deployment) -> None:
        self.id = deployment_id
        self.deployment = deployment
        config = deployment.config
        self.loop = asyncio.new_event_loop()
        self.executor = concurrent.futures.ThreadPoolExecutor(
            max_workers=max(1, int(config.max_ongoing_requests)),
            thread_name_prefix=f"schooner-local-{deployment_id.name}",
        )
        self.thread = threading.Thread(
            target=self.loop.run_forever, name=f"schooner-local-{deployment_id.name}", daemon=True
        )
        self.thread.start()
        self.is_function = not inspect.isclass(deployment.func_or_class)
        self.callable: Any = None
        self.context = context.ReplicaContext(
            replica_id=context.ReplicaID(f"local-{deployment_id.name}", deployment_id),
            world_size=1,
        )

    # -- lifecycle --------------------------------------------------------------------------
    def start(self, args: tuple[Any, ...], kwargs: dict[str, Any]) -> None:
        """Construct the user's object and apply ``user_config``; raises what they raise."""
        self._run(self._start(args, kwargs)).result()

    async def _start(self, args: tuple[Any, ...], kwargs: dict[str, Any]) -> None:
        from schooner.schema import ReplicaRank

        target: Any = self.deployment.func_or_class
        if self.is_function:
            self.callable = target
        else:
            self.callable = await construct(target, args, kwargs)
        self.context.servable_object = self.callable
        self.context.rank = ReplicaRank(rank=0, node_rank=0, local_rank=0)
        await self._reconfigure(self.deployment.config.user_config)

    async def _reconfigure(self, user_config: Any) -> None:
        reconfigure = None if self.is_function else getattr(self.callable, "reconfigure", None)
        takes_rank = reconfigure is not None and "rank" in inspect.signature(reconfigure).parameters
        if user_config is None and not takes_rank:
            return
        if reconfigure is None:
            raise RayServeException(
                f"Deployment '{self.id.name}' has a user_config but "
                + (
                    "is a function: use a class to receive it."
                    if self.is_function
                    else "its class defines no `reconfigure(self, config)` method to receive it."
                )
            )
        kwargs = {"rank": self.context.rank} if takes_rank else {}
        await self._invoke(reconfigure, (user_config,), kwargs)

    def stop(self) -> None:
        """Run ``__del__`` if the class defines one, then stop the loop and the pool."""
        deleter = None if self.is_function else getattr(type(self.callable), "__del__", None)
        if deleter is not None and self.loop.is_running():
            try:
                self._run(self._invoke(functools.partial(deleter, self.callable), (), {})).result(
                    10
                )
            except Exception:
                logger.exception("__del__ of local deployment %s raised", self.id)
        self.loop.call_soon_threadsafe(self.loop.stop)
        self.thread.join(timeout=5)
        self.executor.shutdown(wait=False, cancel_futures=True)

    # -- calls ------------------------------------------------------------------------------
    def _run(self, coro: Any) -> concurrent.futures.Future[Any]:
        """Run ``coro`` on this replica's loop, as this replica (for get_replica_context)."""
        ctx = contextvars.Context()
        ctx.run(context._local_replica_context.set, self.context)
        return ctx.run(asyncio.run_coroutine_threadsafe, coro, self.loop)

    def call(
        self, options: _HandleOptions, args: tuple[Any, ...], kwargs: dict[str, Any]
    ) -> concurrent.futures.Future[Any]:
        return self._run(self._call(options, args, kwargs))

    def stream(
        self, options: _HandleOptions, args: tuple[Any, ...], kwargs: dict[str, Any]
    ) -> tuple[asyncio.Queue[Any], concurrent.futures.Future[Any]]:
        queue: asyncio.Queue[Any] = asyncio.Queue()
        return queue, self._run(self._stream(queue, options, args, kwargs))

    def _enter(self, options: _HandleOptions) -> contextvars.Token[context.RequestContext]:
        caller = context.current_request()
        return context._request_context.set(
            context.RequestContext(
                request_id=caller.request_id or _new_request_id(),
                app_name=self.id.app_name,
                multiplexed_model_id=options.multiplexed_model_id,
                session_id=options.session_id,
            )
        )

    async def _call(
        self, options: _HandleOptions, args: tuple[Any, ...], kwargs: dict[str, Any]
    ) -> Any:
        args, kwargs = await _resolve(args, kwargs)
        self._enter(options)
        fn = self._method(options.method_name)
        if inspect.isgeneratorfunction(fn) or inspect.isasyncgenfunction(fn):
            raise TypeError(
                f"Method '{options.method_name}' of deployment '{self.id.name}' is a generator; "
                "call it with `handle.options(stream=True)`."
            )
        return await self._invoke(fn, args, kwargs)

    async def _stream(
        self,
        queue: asyncio.Queue[Any],
        options: _HandleOptions,
        args: tuple[Any, ...],
        kwargs: dict[str, Any],
    ) -> None:
        try:
            args, kwargs = await _resolve(args, kwargs)
            self._enter(options)
            result = await self._invoke(self._method(options.method_name), args, kwargs)
            if inspect.isasyncgen(result) or hasattr(result, "__aiter__"):
                async for item in result:
                    queue.put_nowait(item)
            elif inspect.isgenerator(result):
                done = object()
                while (item := await self._in_thread(next, (result, done), {})) is not done:
                    queue.put_nowait(item)
            else:
                raise TypeError(
                    f"`stream=True` was requested but the method of deployment "
                    f"'{self.id.name}' returned {type(result).__name__}, not a generator."
                )
        except BaseException as exc:
            queue.put_nowait(_Raise(exc))
            if isinstance(exc, asyncio.CancelledError):
                raise
        else:
            queue.put_nowait(_END)

    def _method(self, name: str) -> Any:
        if self.is_function:
            return self.callable
        try:
            return getattr(self.callable, name)
        except AttributeError:
            raise AttributeError(f"Deployment '{self.id.name}' has no method '{name}'.") from None

    async def _in_thread(self, fn: Callable[..., Any], args: tuple[Any, ...], kwargs: Any) -> Any:
        ctx = contextvars.copy_context()
        call = functools.partial(ctx.run, fn, *args, **kwargs)
        return await self.loop.run_in_executor(self.executor, call)

    async def _invoke(self, fn: Any, args: tuple[Any, ...], kwargs: dict[str, Any]) -> Any:
        if inspect.iscoroutinefunction(fn) or inspect.isasyncgenfunction(fn):
            result = fn(*args, **kwargs)
        elif inspect.isgeneratorfunction(fn):
            return fn(*args, **kwargs)  # iterated by the caller, each step in a thread
        else:
            result = await self._in_thread(fn, args, kwargs)
        if inspect.isawaitable(result):
            result = await result
        return result


async def _resolve(
    args: tuple[Any, ...], kwargs: dict[str, Any]
) -> tuple[tuple[Any, ...], dict[str, Any]]:
    """Await top-level ``DeploymentResponse`` arguments; refuse streaming ones (as Ray)."""

    async def value(arg: Any) -> Any:
        if isinstance(arg, DeploymentResponseGenerator):
            raise TypeError(
                "A DeploymentResponseGenerator (a streaming response) cannot be passed to "
                "another `.remote()` call; iterate over it and pass the items instead."
            )
        if isinstance(arg, DeploymentResponse):
            return await arg
        return arg

    return (
        tuple([await value(a) for a in args]),
        {k: await value(v) for k, v in kwargs.items()},
    )


_END = object()


class _Raise:
    __slots__ = ("exc",)

    def __init__(self, exc: BaseException) -> None:
        self.exc = exc


class _LocalResponse(DeploymentResponse):
    """A :class:`DeploymentResponse` whose call runs on a local replica's loop."""

    def __init__(self, future: concurrent.futures.Future[Any], loop: asyncio.AbstractEventLoop):
        self._core = None  # type: ignore[assignment]  # no instance in local testing mode
        self._future = future
        self._loop = loop
        self._raw = False


class _LocalResponseGenerator(DeploymentResponseGenerator):
    """A :class:`DeploymentResponseGenerator` fed by a local replica's loop."""

    def __init__(
        self,
        queue: asyncio.Queue[Any],
        task: concurrent.futures.Future[Any],
        loop: asyncio.AbstractEventLoop,
    ) -> None:
        self._items = queue
        self._task = task
        self._replica_loop = loop
        self._done = False

    def _take(self) -> concurrent.futures.Future[Any]:
        return asyncio.run_coroutine_threadsafe(self._items.get(), self._replica_loop)

    def _unwrap_local(self, item: Any) -> Any:
        if item is _END:
            self._done = True
            raise StopAsyncIteration
        if isinstance(item, _Raise):
            self._done = True
            if isinstance(item.exc, asyncio.CancelledError):
                raise RequestCancelledError("The request was cancelled.")
            raise item.exc
        return item

    def __aiter__(self) -> AsyncIterator[Any]:
        return self

    async def __anext__(self) -> Any:
        if self._done:
            raise StopAsyncIteration
        return self._unwrap_local(await asyncio.wrap_future(self._take()))

    def __iter__(self) -> Iterator[Any]:  # type: ignore[override]
        return self

    def __next__(self) -> Any:
        if self._done:
            raise StopIteration
        try:
            asyncio.get_running_loop()
        except RuntimeError:
            pass
        else:
            raise RuntimeError(
                "Sync methods should not be called from within an `asyncio` event loop. "
                "Use `async for` instead of `for`."
            )
        try:
            return self._unwrap_local(self._take().result())
        except StopAsyncIteration:
            raise StopIteration from None

    def cancel(self) -> None:
        self._task.cancel()


class LocalDeploymentHandle(DeploymentHandle):
    """A handle to a deployment running in this process (local testing mode)."""

    def _replica(self) -> _LocalReplica:
        with _replicas_lock:
            replica = _replicas.get(self._deployment_id)
        if replica is None:
            raise RayServeException(
                f"Deployment '{self.deployment_name}' of application '{self.app_name}' is not "
                "running in this process (it was shut down or replaced)."
            )
        return replica

    def _with_options(self, options: _HandleOptions) -> DeploymentHandle:
        return LocalDeploymentHandle(self.deployment_name, self.app_name, _options=options)

    def __reduce__(self) -> tuple[Any, ...]:
        return (LocalDeploymentHandle, (self.deployment_name, self.app_name), self.__getstate__())

    def __getstate__(self) -> dict[str, Any]:
        return {"_deployment_id": self._deployment_id, "_options": self._options}

    def __setstate__(self, state: dict[str, Any]) -> None:
        self.__dict__.update(state)

    def remote(self, *args: Any, **kwargs: Any) -> DeploymentResponse | DeploymentResponseGenerator:
        replica = self._replica()
        # Arguments go through pickle, as they would between processes (catches what
        # cannot cross); responses are passed as they are and awaited by the callee.
        passed = (DeploymentResponse, DeploymentResponseGenerator)
        responses = {i: a for i, a in enumerate(args) if isinstance(a, passed)}
        kw_responses = {k: v for k, v in kwargs.items() if isinstance(v, passed)}
        plain_args = tuple(None if i in responses else a for i, a in enumerate(args))
        plain_kwargs = {k: v for k, v in kwargs.items() if k not in kw_responses}
        copied_args, copied_kwargs = cloudpickle.loads(
            cloudpickle.dumps((plain_args, plain_kwargs))
        )
        call_args = tuple(responses.get(i, a) for i, a in enumerate(copied_args))
        call_kwargs = {**copied_kwargs, **kw_responses}
        call_kwargs = {k: call_kwargs[k] for k in kwargs}  # keep the caller's order
        if self._options.stream:
            queue, task = replica.stream(self._options, call_args, call_kwargs)
            return _LocalResponseGenerator(queue, task, replica.loop)
        return _LocalResponse(replica.call(self._options, call_args, call_kwargs), replica.loop)


def _warn_ignored_options(deployment: Deployment, deployment_id: DeploymentID) -> None:
    actor_options = deployment.config.ray_actor_options or {}
    if actor_options.get("num_gpus"):
        logger.warning(
            "Deployment %s has num_gpus configured; CUDA_VISIBLE_DEVICES is not managed in "
            "local testing mode.",
            deployment_id,
        )
    if actor_options.get("runtime_env"):
        logger.warning(
            "Deployment %s has a runtime_env; runtime_envs are ignored in local testing mode.",
            deployment_id,
        )


def run(
    app: Application, name: str = "default", route_prefix: str | None = "/"
) -> DeploymentHandle:
    """Construct every deployment of ``app`` in this process; the ingress's local handle.

    Deployments are constructed dependencies first. Running an application under a
    name already running locally replaces it (its replicas' ``__del__`` run)."""
    check_app_target(app, name, route_prefix)
    _delete_app(name)
    started: dict[int, LocalDeploymentHandle] = {}
    names: set[str] = set()

    def visit(node: Application) -> LocalDeploymentHandle:
        handle = started.get(id(node))
        if handle is not None:
            return handle
        dep = node.deployment
        if dep.name in names:
            raise ServeConfigError(
                f"Application '{name}' has two different deployments named '{dep.name}'. "
                f"Give one of them another name with `.options(name=...)`."
            )
        names.add(dep.name)
        args = _replace_apps(node._args, visit)
        kwargs = _replace_apps(node._kwargs, visit)
        deployment_id = DeploymentID(dep.name, name)
        _warn_ignored_options(dep, deployment_id)
        replica = _LocalReplica(deployment_id, dep)
        try:
            logger.info("Initializing local replica of %s.", deployment_id)
            replica.start(args, kwargs)
        except BaseException:
            replica.stop()
            raise
        with _replicas_lock:
            _replicas[deployment_id] = replica
        handle = started[id(node)] = LocalDeploymentHandle(dep.name, name)
        return handle

    try:
        return visit(app)
    except BaseException:
        _delete_app(name)
        raise


def _replace_apps(value: Any, visit: Callable[[Application], LocalDeploymentHandle]) -> Any:
    if isinstance(value, Application):
        return visit(value)
    if isinstance(value, list):
        return [_replace_apps(v, visit) for v in value]
    if isinstance(value, tuple):
        return tuple(_replace_apps(v, visit) for v in value)
    if isinstance(value, dict):
        return {k: _replace_apps(v, visit) for k, v in value.items()}
    return value


def _delete_app(name: str) -> None:
    with _replicas_lock:
        gone = [r for key, r in _replicas.items() if key.app_name == name]
        for replica in gone:
            del _replicas[replica.id]
    for replica in gone:
        replica.stop()


def shutdown() -> None:
    """Stop every local replica of this process (``serve.shutdown()``)."""
    with _replicas_lock:
        apps = {key.app_name for key in _replicas}
    for app in apps:
        _delete_app(app)
