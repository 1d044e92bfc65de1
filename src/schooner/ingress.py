"""``@serve.ingress``: serve a deployment class through an ASGI app.

Contract:

- :func:`ingress` ``(app)`` returns a class decorator. ``app`` is a FastAPI
  app or ``APIRouter``, any other ASGI app, or a zero-argument *builder* that
  returns one (called in the replica). The decorator marks the class in place
  and returns it unchanged, so it pickles like any other class. A class with
  ``__call__`` is refused (``ValueError``), as in Ray Serve.
- :func:`build_asgi_app` ``(instance)`` runs once per replica, after the user's
  class was constructed. It returns an :class:`IngressApp`: the ASGI app to
  call, which tells the app which instance serves the request.
- :func:`start_lifespan` runs the app's lifespan startup and returns the
  matching shutdown; :func:`call_asgi` runs one buffered HTTP request.

Class-based views. A FastAPI route whose endpoint is a method of the ingress
class (found by ``__qualname__``, through the class's MRO, so decorated methods
and inherited ones count) is rebuilt once: when the class is decorated (where
the module's globals resolve every annotation), or, for routes added later or
made by a builder, at :func:`build_asgi_app`. The new route's endpoint is a
copy of the function whose signature declares ``self`` as
``Depends(<instance of this request>)`` and the other parameters as
keyword-only. FastAPI then analyses the rest exactly as for a plain function.
The instance travels in the request scope (``scope["schooner.servable"]``), so
one rewritten app serves any number of instances and the user's function
objects are never modified. Plain-function routes are left alone.
"""

from __future__ import annotations

import asyncio
import collections.abc
import copyreg
import inspect
import logging
import types
from collections.abc import Awaitable, Callable, MutableMapping
from dataclasses import dataclass
from typing import Any, TypeVar

from fastapi import Depends, FastAPI, HTTPException
from fastapi.routing import APIRoute, APIRouter, APIWebSocketRoute
from starlette.datastructures import State
from starlette.requests import HTTPConnection
from starlette.routing import Mount
from starlette.types import ASGIApp, Message, Receive, Scope, Send

__all__ = [
    "IngressApp",
    "build_asgi_app",
    "call_asgi",
    "ingress",
    "is_ingress_class",
    "start_lifespan",
]

C = TypeVar("C", bound=type)
DictSend = Callable[[dict[str, Any]], Awaitable[None]]
"""A ``send`` as the replica gives it: it receives plain ``dict`` messages."""

SERVABLE_SCOPE_KEY = "schooner.servable"
_SPEC_ATTR = "__schooner_ingress__"
_BOUND_ATTR = "__schooner_bound_class__"
_LATE_BUILDER = "__serve_build_asgi_app__"  # Ray's name: builds the app from the instance
_LIFESPAN_EXIT_WAIT_S = 1.0
_FUNCTION_ATTRS = (
    "__qualname__",
    "__module__",
    "__doc__",
    "__annotations__",
    "__kwdefaults__",
    "__type_params__",
)  # what FunctionType() does not copy

logger = logging.getLogger("schooner.ingress")


@dataclass(frozen=True)
class _IngressSpec:
    """What :func:`ingress` stores on the class (picklable by reference)."""

    app: Any
    is_builder: bool


def ingress(app: Any = None) -> Callable[..., Any]:
    """Mark a deployment class as served over HTTP by ``app`` (Ray's ``serve.ingress``).

    Without ``app``, the class must define ``__serve_build_asgi_app__``, called
    in the replica after the constructor to make the app. The returned
    decorator, called without a class (``serve.ingress(app)()``), makes a plain
    class named ``ASGIIngressDeployment`` whose constructor keeps its arguments
    as ``self.args`` and ``self.kwargs``.

    Raises ``TypeError`` when ``app`` is neither an ASGI app nor a zero-argument
    builder; the returned decorator raises ``ValueError`` when given something
    other than a class, a class defining ``__call__``, or (without ``app``) a
    class without ``__serve_build_asgi_app__``.
    """
    is_builder = app is not None and _classify_app(app)
    _make_starlette_state_picklable()

    def decorator(cls: type | None = None) -> type:
        if cls is None:
            cls = _default_ingress_class()
        if not inspect.isclass(cls):
            raise ValueError(f"@serve.ingress must be used with a class, not {cls!r}.")
        if issubclass(cls, collections.abc.Callable):  # type: ignore[arg-type]
            raise ValueError(
                f"Class {cls.__qualname__} passed to @serve.ingress may not have a "
                "__call__ method: HTTP requests go to the ASGI app, not to __call__."
            )
        if app is None and not hasattr(cls, _LATE_BUILDER):
            raise ValueError(
                f"serve.ingress() was called without an app, so {cls.__qualname__} must "
                f"define `{_LATE_BUILDER}(self)` returning the ASGI app to serve."
            )
        setattr(cls, _SPEC_ATTR, _IngressSpec(app, is_builder))
        if isinstance(app, FastAPI | APIRouter):
            # Bind now, where the module's globals resolve every annotation; a
            # class pickled by value carries its app with the routes already rebuilt.
            _bind_class_routes(app, cls, seen=set())
        return cls

    return decorator


def _default_ingress_class() -> type:
    """A fresh class for ``serve.ingress(app)()``: it only keeps what it is bound with."""

    class ASGIIngressDeployment:
        def __init__(self, *args: Any, **kwargs: Any) -> None:
            self.args = args
            self.kwargs = kwargs

    return ASGIIngressDeployment


def _classify_app(app: Any) -> bool:
    """True if ``app`` is a builder, False if it is an ASGI app; TypeError otherwise."""
    if isinstance(app, FastAPI | APIRouter) or (callable(app) and not inspect.isroutine(app)):
        return False  # an ASGI object (Starlette, Router, middleware instance...)
    if inspect.isroutine(app):
        try:
            params = inspect.signature(app).parameters.values()
        except (TypeError, ValueError):
            return False
        variadic = (inspect.Parameter.VAR_POSITIONAL, inspect.Parameter.VAR_KEYWORD)
        required = [p for p in params if p.default is p.empty and p.kind not in variadic]
        if len(required) in (0, 3):  # a builder, or `async def app(scope, receive, send)`
            return not required
    raise TypeError(
        "@serve.ingress expects a FastAPI app, an ASGI app, or a function taking no "
        f"arguments that builds one; got {app!r}."
    )


def _make_starlette_state_picklable() -> None:
    """Let ``app.state`` travel by value (a ``__main__`` class carries its app).

    Starlette's ``State`` answers every attribute lookup from a dict that an
    unpickled copy does not have yet, so plain unpickling recurses forever.
    Registering a reducer where pickling happens fixes that for every process.
    """
    copyreg.pickle(State, _reduce_state)


def _reduce_state(state: State) -> tuple[type[State], tuple[dict[str, Any]]]:
    return State, (dict(state._state),)


def is_ingress_class(cls: type) -> bool:
    """Whether ``cls`` (or a base class) was decorated with :func:`ingress`."""
    return isinstance(getattr(cls, _SPEC_ATTR, None), _IngressSpec)


class IngressApp:
    """The ASGI app a replica calls: the user's app, bound to one instance.

    It puts the instance in each request's scope (for class-based views) and
    the lifespan state (what a lifespan context yielded) in ``scope["state"]``.
    """

    def __init__(self, app: ASGIApp, instance: object) -> None:
        self.app = app
        self.instance = instance
        self.lifespan_state: dict[str, Any] = {}

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] in ("http", "websocket"):
            scope = dict(scope)
            scope[SERVABLE_SCOPE_KEY] = self.instance
            scope["state"] = {**self.lifespan_state, **scope.get("state", {})}
        await self.app(scope, receive, send)


async def build_asgi_app(instance: object) -> IngressApp:
    """Build the ASGI app serving ``instance``, whose class was marked by :func:`ingress`.

    A builder is called (once per call here; awaited if it returns an
    awaitable). Class-method routes of a FastAPI app or router not yet bound
    are bound as described in the module docstring; other ASGI apps are used
    as they are.
    """
    cls = type(instance)
    spec = getattr(cls, _SPEC_ATTR, None)
    if not isinstance(spec, _IngressSpec):
        raise TypeError(f"{cls.__qualname__} is not decorated with @serve.ingress.")
    app: Any = spec.app
    if app is None or spec.is_builder:
        builder = getattr(instance, _LATE_BUILDER) if app is None else app
        app = builder()
        if inspect.isawaitable(app):
            app = await app
        if not callable(app):
            raise TypeError(
                f"The @serve.ingress builder {builder!r} returned {app!r}, not an ASGI app."
            )
    if isinstance(app, FastAPI | APIRouter):
        _bind_class_routes(app, cls, seen=set())
    return IngressApp(app, instance)


# -- class-based views -------------------------------------------------------


def _bind_class_routes(app: FastAPI | APIRouter, cls: type, seen: set[int]) -> None:
    """Rebuild, in place, every route of ``app`` whose endpoint is a method of ``cls``."""
    router = app.router if isinstance(app, FastAPI) else app
    if id(router) in seen:
        return
    seen.add(id(router))
    changed = False
    for index, route in enumerate(router.routes):
        nested = getattr(route, "original_router", None)  # FastAPI >= 0.16x include_router
        if isinstance(nested, APIRouter):
            _bind_class_routes(nested, cls, seen)
        elif isinstance(route, Mount) and isinstance(route.app, FastAPI | APIRouter):
            _bind_class_routes(route.app, cls, seen)
        elif isinstance(route, APIRoute | APIWebSocketRoute):
            rebuilt = _rebind_route(route, cls, router)
            if rebuilt is not None:
                router.routes[index] = rebuilt
                changed = True
    if changed:
        mark_changed = getattr(router, "_mark_routes_changed", None)
        if callable(mark_changed):
            mark_changed()  # FastAPI caches per-include views of routes by version
    if isinstance(app, FastAPI):
        app.openapi_schema = None


def _rebind_route(
    route: APIRoute | APIWebSocketRoute, cls: type, router: APIRouter
) -> APIRoute | APIWebSocketRoute | None:
    endpoint = route.endpoint
    if not isinstance(endpoint, types.FunctionType) or hasattr(endpoint, _BOUND_ATTR):
        return None  # not a Python function, or bound by an earlier build (idempotent)
    owner = _owning_class(endpoint, cls)
    bound = None if owner is None else _endpoint_with_injected_self(endpoint, owner)
    return None if bound is None else _clone_route(route, bound, router)


def _owning_class(endpoint: types.FunctionType, cls: type) -> type | None:
    """The class in ``cls``'s MRO that defines ``endpoint`` as a method, if any."""
    for klass in cls.__mro__[:-1]:  # not `object`
        prefix = klass.__qualname__ + "."
        qualname = endpoint.__qualname__
        if endpoint.__module__ != klass.__module__ or not qualname.startswith(prefix):
            continue
        name = qualname[len(prefix) :]
        if "." in name:
            continue  # a function nested in a method, not a method
        if isinstance(vars(klass).get(name), staticmethod | classmethod):
            return None
        return klass
    return None


def _endpoint_with_injected_self(fn: types.FunctionType, owner: type) -> types.FunctionType | None:
    """A copy of ``fn`` whose signature gets ``self`` from the request's scope."""
    try:
        signature = inspect.signature(fn, eval_str=True)
    except NameError:  # annotations only importable under TYPE_CHECKING
        signature = inspect.signature(fn)
    params = list(signature.parameters.values())
    if not params or params[0].kind is not inspect.Parameter.POSITIONAL_OR_KEYWORD:
        return None  # no `self` FastAPI could pass by keyword: leave as a plain function
    keyword_only = inspect.Parameter.KEYWORD_ONLY
    rest = [
        p.replace(kind=keyword_only) if p.kind is not p.VAR_KEYWORD else p
        for p in params[1:]
        if p.kind is not p.VAR_POSITIONAL
    ]
    self_param = inspect.Parameter(
        params[0].name, keyword_only, default=Depends(_ServableInstance(owner))
    )
    clone = types.FunctionType(
        fn.__code__, fn.__globals__, fn.__name__, fn.__defaults__, fn.__closure__
    )
    clone.__dict__.update(fn.__dict__)
    for attr in _FUNCTION_ATTRS:
        if hasattr(fn, attr):
            setattr(clone, attr, getattr(fn, attr))
    clone.__signature__ = signature.replace(  # type: ignore[attr-defined]
        parameters=[self_param, *rest]
    )
    setattr(clone, _BOUND_ATTR, owner)
    return clone


class _ServableInstance:
    """The FastAPI dependency giving a class-method route its ``self`` (a class: picklable)."""

    def __init__(self, owner: type) -> None:
        self.owner = owner

    async def __call__(self, connection: HTTPConnection) -> object:
        instance = connection.scope.get(SERVABLE_SCOPE_KEY)
        if isinstance(instance, self.owner):
            return instance
        if instance is None:
            raise RuntimeError(
                f"The route {connection.url.path!r} is a method of {self.owner.__qualname__} "
                "and can only be served through schooner.ingress.build_asgi_app()."
            )
        # The app is shared with another ingress class: the route is not this replica's.
        raise HTTPException(status_code=404)


def _clone_route(
    route: APIRoute | APIWebSocketRoute, endpoint: Callable[..., Any], router: APIRouter
) -> APIRoute | APIWebSocketRoute:
    """A route of the same class and settings as ``route``, with another endpoint.

    Each constructor argument is read back from the same-named attribute,
    which FastAPI route classes keep; the derived state (dependant, body
    field, response field, handler) is then recomputed by the constructor.
    """
    kwargs: dict[str, Any] = {}
    parameters = list(inspect.signature(type(route).__init__).parameters.values())[1:]
    for param in parameters:
        if param.kind in (param.VAR_POSITIONAL, param.VAR_KEYWORD):
            continue
        if param.name == "endpoint":
            kwargs["endpoint"] = endpoint
        elif hasattr(route, param.name):
            kwargs[param.name] = getattr(route, param.name)
        elif param.name == "dependency_overrides_provider":
            kwargs[param.name] = router.dependency_overrides_provider
        elif param.default is param.empty:
            raise TypeError(
                f"Cannot rebind route {route.path!r}: {type(route).__name__} does not keep "
                f"its required argument {param.name!r} as an attribute."
            )
    return type(route)(**kwargs)


# -- running the app ---------------------------------------------------------


async def start_lifespan(app: ASGIApp) -> Callable[[], Awaitable[None]]:
    """Run the ASGI lifespan startup of ``app``; return the coroutine function that shuts it down.

    An app that does not implement lifespan (raises or returns at once) is
    fine: the shutdown is then a no-op. A failed startup raises
    ``RuntimeError`` with the app's message. For an :class:`IngressApp`, the
    lifespan state is kept and copied into every request's ``scope["state"]``.
    """
    inbox: asyncio.Queue[Message] = asyncio.Queue()
    outbox: asyncio.Queue[Message] = asyncio.Queue()
    state: dict[str, Any] = {}
    scope = {"type": "lifespan", "asgi": {"version": "3.0", "spec_version": "2.0"}, "state": state}

    async def send(message: Message) -> None:
        await outbox.put(message)

    async def run() -> None:
        await app(scope, inbox.get, send)

    task = asyncio.create_task(run(), name="asgi-lifespan")

    async def exchange(event: str) -> Message | None:
        """Send ``event``; wait for the app's answer, or None if the app returned."""
        await inbox.put({"type": event})
        reply = asyncio.ensure_future(outbox.get())
        await asyncio.wait({reply, task}, return_when=asyncio.FIRST_COMPLETED)
        if reply.done():
            return reply.result()
        reply.cancel()
        return None

    started = await exchange("lifespan.startup")
    if started is None:  # the app returned or raised without answering: no lifespan
        error = None if task.cancelled() else task.exception()
        logger.debug("ASGI app does not support lifespan (%r)", error)
        return _no_shutdown
    if started["type"] == "lifespan.startup.failed":
        await asyncio.wait({task})
        cause = None if task.cancelled() else task.exception()
        raise RuntimeError(f"ASGI lifespan startup failed: {started.get('message', '')}") from cause
    if isinstance(app, IngressApp):
        app.lifespan_state = state

    async def shutdown() -> None:
        if task.done():
            return
        finished = await exchange("lifespan.shutdown")
        if finished is not None and finished["type"] == "lifespan.shutdown.failed":
            raise RuntimeError(f"ASGI lifespan shutdown failed: {finished.get('message', '')}")
        await asyncio.wait({task}, timeout=_LIFESPAN_EXIT_WAIT_S)
        if not task.done():
            task.cancel()

    return shutdown


async def _no_shutdown() -> None:
    return None


async def call_asgi(app: ASGIApp, scope: dict[str, Any], body: bytes, send: DictSend) -> None:
    """Run one HTTP request, whose whole ``body`` is known, through ``app``.

    ``receive`` yields the body once, then waits until the response is
    complete before reporting ``http.disconnect``, as a server whose client
    stays connected would. Raises ``RuntimeError`` if the app returns without
    completing its response (the caller decides whether a 500 can still be sent:
    only if nothing was sent).
    """
    body_sent = False
    response_done = asyncio.Event()

    async def receive() -> Message:
        nonlocal body_sent
        if not body_sent:
            body_sent = True
            return {"type": "http.request", "body": body, "more_body": False}
        await response_done.wait()
        return {"type": "http.disconnect"}

    async def send_message(message: MutableMapping[str, Any]) -> None:
        await send(message if isinstance(message, dict) else dict(message))
        if message["type"] == "http.response.body" and not message.get("more_body", False):
            response_done.set()

    try:
        await app(scope, receive, send_message)
        if not response_done.is_set():
            raise RuntimeError("The ASGI app returned without completing its response.")
    finally:
        response_done.set()  # release any receive() still waiting
