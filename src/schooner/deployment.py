"""Deployments and applications: what ``@serve.deployment`` and ``.bind()`` produce.

A :class:`Deployment` is a class or function plus its options (one
:class:`~schooner.config.DeploymentConfig`). ``Deployment.bind(*args,
**kwargs)`` makes an :class:`Application`: a graph of bound deployments,
where bound deployments passed as arguments (also inside lists, tuples and
dicts) become :class:`~schooner.handle.DeploymentHandle` objects in the
replica. :func:`build_app` turns that graph into the
:class:`~schooner.rpc.messages.AppSpec` the controller deploys.
"""

from __future__ import annotations

import hashlib
import importlib
import inspect
import logging
import sys
from collections.abc import Callable
from typing import Any, TypeVar, overload

import cloudpickle

# Ray Serve's package loads these, and programs written for it lean on that:
# after a bare ``import starlette``, ``starlette.requests.Request`` must resolve.
import starlette.requests
import starlette.responses  # noqa: F401

from schooner.config import DEPLOYMENT_OPTION_NAMES, DeploymentConfig
from schooner.exceptions import DeploymentOptionError, ServeConfigError
from schooner.handle import DeploymentHandle
from schooner.rpc import codec
from schooner.rpc.messages import AppSpec, CodeRef, DeploymentSpec

__all__ = ["Application", "Deployment", "build_app", "deployment"]

T = TypeVar("T")

logger = logging.getLogger("schooner.deployment")


class Deployment:
    """A class or function with its deployment options. Bind it to deploy it."""

    def __init__(self, func_or_class: Callable[..., Any], config: DeploymentConfig) -> None:
        if not (inspect.isclass(func_or_class) or inspect.isfunction(func_or_class)):
            raise TypeError(
                "@serve.deployment must decorate a class or a function, got "
                f"{type(func_or_class).__name__}."
            )
        self._func_or_class = func_or_class
        self._config = config

    @property
    def name(self) -> str:
        return self._config.name or self._func_or_class.__name__

    @property
    def func_or_class(self) -> Callable[..., Any]:
        return self._func_or_class

    @property
    def config(self) -> DeploymentConfig:
        return self._config

    @property
    def version(self) -> None:
        return None

    def __getattr__(self, name: str) -> Any:
        # Read-only option properties: num_replicas, user_config, max_ongoing_requests, ...
        if name in DEPLOYMENT_OPTION_NAMES:
            return getattr(self._config, name)
        raise AttributeError(f"'Deployment' object has no attribute {name!r}")

    def __call__(self, *args: Any, **kwargs: Any) -> Any:
        raise RuntimeError(
            f"Deployment '{self.name}' cannot be constructed or called directly. Use "
            f"`{self.name}.bind(...)` to build an application, then `serve.run(app)`."
        )

    def __repr__(self) -> str:
        return f"Deployment(name={self.name!r})"

    def bind(self, *args: Any, **kwargs: Any) -> Application:
        """Bind constructor arguments, making an application rooted at this deployment."""
        return Application(self, args, kwargs)

    def options(
        self, *, func_or_class: Callable[..., Any] | None = None, **options: Any
    ) -> Deployment:
        """A copy with some options changed (validated like the decorator's)."""
        options.pop("_internal", None)
        if "route_prefix" in options:
            raise DeploymentOptionError(
                "Deployment option 'route_prefix' was removed; pass route_prefix to "
                "serve.run() or set it per application in the config file."
            )
        return Deployment(func_or_class or self._func_or_class, self._config.merge(options))


class Application:
    """A bound deployment graph, ready for ``serve.run``."""

    def __init__(
        self, deployment: Deployment, args: tuple[Any, ...], kwargs: dict[str, Any]
    ) -> None:
        self._deployment = deployment
        self._args = args
        self._kwargs = kwargs

    @property
    def deployment(self) -> Deployment:
        return self._deployment

    def __repr__(self) -> str:
        return f"Application(ingress={self._deployment.name!r})"


@overload
def deployment(_func_or_class: type[T], /) -> Deployment: ...
@overload
def deployment(_func_or_class: Callable[..., Any], /) -> Deployment: ...
@overload
def deployment(
    _func_or_class: None = None, /, **options: Any
) -> Callable[[Callable[..., Any]], Deployment]: ...


def deployment(_func_or_class: Any = None, /, **options: Any) -> Any:
    """Turn a class or function into a :class:`Deployment` (usable bare or with options).

    Every option of Ray Serve 2.x is accepted with Ray's defaults (see
    :class:`~schooner.config.DeploymentConfig`); invalid ones raise
    :class:`~schooner.exceptions.DeploymentOptionError` naming the option.
    """
    if "route_prefix" in options:
        raise DeploymentOptionError(
            "Deployment option 'route_prefix' was removed; pass route_prefix to serve.run() "
            "or set it per application in the config file."
        )
    config = DeploymentConfig.from_options(**options)
    if _func_or_class is not None:
        return Deployment(_func_or_class, config)

    def decorator(func_or_class: Callable[..., Any]) -> Deployment:
        return Deployment(func_or_class, config)

    return decorator


def _deployment_signature() -> inspect.Signature:
    params = [inspect.Parameter("_func_or_class", inspect.Parameter.POSITIONAL_ONLY, default=None)]
    defaults = DeploymentConfig.model_fields
    for name in DEPLOYMENT_OPTION_NAMES:
        field = defaults.get(name)
        default = field.default if field is not None else None
        params.append(inspect.Parameter(name, inspect.Parameter.KEYWORD_ONLY, default=default))
    return inspect.Signature(params)


deployment.__signature__ = _deployment_signature()  # type: ignore[attr-defined]


# ----------------------------------------------------------------------------- build
def code_ref(target: Callable[..., Any]) -> CodeRef:
    """How replicas will find ``target``: by import path if importable, else by value."""
    module_name = getattr(target, "__module__", None)
    qualname = getattr(target, "__qualname__", "")
    if module_name and module_name != "__main__" and "<locals>" not in qualname:
        try:
            found: Any = importlib.import_module(module_name)
            for part in qualname.split("."):
                found = getattr(found, part)
        except (ImportError, AttributeError):
            found = None
        if found is target or (isinstance(found, Deployment) and found.func_or_class is target):
            return CodeRef(import_path=f"{module_name}:{qualname}")
    return CodeRef(pickled=cloudpickle.dumps(target))


def _source_digest(target: Callable[..., Any]) -> bytes:
    module = sys.modules.get(getattr(target, "__module__", ""), None)
    path = getattr(module, "__file__", None)
    if path:
        try:
            with open(path, "rb") as f:
                return hashlib.sha1(f.read()).digest()
        except OSError:
            pass
    return b""


def validate_route_prefix(route_prefix: str | None) -> None:
    if route_prefix is None:
        return
    if not isinstance(route_prefix, str) or not route_prefix.startswith("/"):
        raise ServeConfigError(
            f"Invalid route_prefix {route_prefix!r}: it must start with '/' (for example "
            "'/api'), or be None to serve no HTTP."
        )
    if route_prefix != "/" and route_prefix.endswith("/"):
        raise ServeConfigError(
            f"Invalid route_prefix {route_prefix!r}: it must not end with '/'; use "
            f"{route_prefix.rstrip('/')!r}."
        )
    if "{" in route_prefix or "}" in route_prefix:
        raise ServeConfigError(
            f"Invalid route_prefix {route_prefix!r}: it must not contain '{{' or '}}'."
        )


def check_app_target(app: object, name: object, route_prefix: str | None) -> None:
    """What ``serve.run`` checks of its arguments before building anything."""
    if not isinstance(app, Application):
        raise TypeError(
            f"Expected an Application (the result of `Deployment.bind(...)`), got "
            f"{type(app).__name__}. Did you forget `.bind()`?"
        )
    if not isinstance(name, str) or not name:
        raise ServeConfigError("Application name must be a non-empty string.")
    validate_route_prefix(route_prefix)


def build_app(
    app: Application,
    name: str = "default",
    route_prefix: str | None = "/",
    *,
    source: str = "imperative",
) -> AppSpec:
    """Flatten a bound graph into the spec the controller deploys."""
    check_app_target(app, name, route_prefix)
    specs: dict[str, DeploymentSpec] = {}
    seen: dict[int, str] = {}

    def visit(node: Application) -> str:
        if id(node) in seen:
            return seen[id(node)]
        dep = node.deployment
        # Children first, then this node's name: the order Ray names them in.
        args = _replace_apps(node._args, visit, name)
        kwargs = _replace_apps(node._kwargs, visit, name)
        dep_name = _unique_name(dep.name, specs)
        seen[id(node)] = dep_name
        init_blob = cloudpickle.dumps((args, kwargs))
        code = code_ref(dep.func_or_class)
        digest = hashlib.sha1()
        digest.update(code.import_path.encode() if code.import_path else code.pickled or b"")
        digest.update(_source_digest(dep.func_or_class))
        digest.update(init_blob)
        config = dep.config.merge({"name": dep_name})
        specs[dep_name] = DeploymentSpec(
            name=dep_name,
            code=code,
            init_blob=init_blob,
            config=config,
            is_function=inspect.isfunction(dep.func_or_class),
            code_version=digest.hexdigest()[:16],
        )
        return dep_name

    ingress = visit(app)
    return AppSpec(
        name=name,
        route_prefix=route_prefix,
        ingress=ingress,
        deployments=list(specs.values()),
        source=source,
        sys_path=[p for p in sys.path if p],
    )


def _unique_name(base: str, taken: dict[str, DeploymentSpec]) -> str:
    """``base``, or the first free ``base_1``, ``base_2``... (as Ray names repeated binds)."""
    candidate, index = base, 1
    while candidate in taken:
        candidate = f"{base}_{index}"
        index += 1
    if candidate != base:
        logger.warning(
            "There are multiple deployments named '%s' in one application; "
            "renaming one of them to '%s'.",
            base,
            candidate,
        )
    return candidate


def _replace_apps(value: Any, visit: Callable[[Application], str], app_name: str) -> Any:
    if isinstance(value, Application):
        return DeploymentHandle(visit(value), app_name)
    if isinstance(value, list):
        return [_replace_apps(v, visit, app_name) for v in value]
    if isinstance(value, tuple):
        return tuple(_replace_apps(v, visit, app_name) for v in value)
    if isinstance(value, dict):
        return {k: _replace_apps(v, visit, app_name) for k, v in value.items()}
    return value


_ = codec  # the codec decides how arguments travel; imported for its docs
