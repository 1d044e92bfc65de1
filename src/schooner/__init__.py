"""Schooner: serve Python models and business logic as scalable deployments.

Use it exactly like Ray Serve 2.x::

    import schooner as serve

    @serve.deployment
    class Hello:
        def __call__(self, request):
            return "hello"

    serve.run(Hello.bind())

Names are imported on first use, so that Schooner's own processes (head,
proxy, replicas) start without loading what they don't need.
"""

from __future__ import annotations

import importlib
import sys
import types
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

__version__ = "0.1.0"

#: public name -> module that defines it
_EXPORTS = {
    "Application": "schooner.deployment",
    "AutoscalingConfig": "schooner.config",
    "ControllerOptions": "schooner.config",
    "Deployment": "schooner.deployment",
    "DeploymentHandle": "schooner.handle",
    "DeploymentResponse": "schooner.handle",
    "DeploymentResponseGenerator": "schooner.handle",
    "HTTPOptions": "schooner.config",
    "RunTarget": "schooner.api",
    "TracingConfig": "schooner.config",
    "_run": "schooner.api",
    "_run_many": "schooner.api",
    "batch": "schooner.batching",
    "delete": "schooner.api",
    "deployment": "schooner.deployment",
    "gRPCOptions": "schooner.config",
    "get_app_handle": "schooner.api",
    "get_deployment_actor": "schooner.context",
    "get_deployment_actor_context": "schooner.context",
    "get_deployment_handle": "schooner.api",
    "get_multiplexed_model_id": "schooner.multiplex",
    "get_replica_context": "schooner.context",
    "get_trace_context": "schooner.tracing",
    "get_rollout": "schooner.rollout",
    "get_traffic": "schooner.traffic",
    "ingress": "schooner.ingress",
    "multiplexed": "schooner.multiplex",
    "rollout": "schooner.rollout",
    "run": "schooner.api",
    "run_many": "schooner.api",
    "set_traffic": "schooner.traffic",
    "shadow_traffic": "schooner.traffic",
    "shutdown": "schooner.api",
    "shutdown_async": "schooner.api",
    "start": "schooner.api",
    "status": "schooner.api",
}
_SUBMODULES = {
    "config",
    "context",
    "exceptions",
    "grpc_util",
    "handle",
    "metrics",
    "schema",
    "deployment",
    "api",
    "tracing",
    "traffic",
}

__all__ = [
    "Application",
    "AutoscalingConfig",
    "ControllerOptions",
    "Deployment",
    "DeploymentHandle",
    "DeploymentResponse",
    "DeploymentResponseGenerator",
    "HTTPOptions",
    "RunTarget",
    "TracingConfig",
    "_run",
    "_run_many",
    "batch",
    "delete",
    "deployment",
    "gRPCOptions",
    "get_app_handle",
    "get_deployment_actor",
    "get_deployment_actor_context",
    "get_deployment_handle",
    "get_multiplexed_model_id",
    "get_replica_context",
    "get_rollout",
    "get_trace_context",
    "get_traffic",
    "ingress",
    "multiplexed",
    "rollout",
    "run",
    "run_many",
    "set_traffic",
    "shadow_traffic",
    "shutdown",
    "shutdown_async",
    "start",
    "status",
]


def __getattr__(name: str) -> Any:
    module = _EXPORTS.get(name)
    if module is not None:
        value = getattr(importlib.import_module(module), name)
        globals()[name] = value
        return value
    if name in _SUBMODULES:
        return importlib.import_module(f"schooner.{name}")
    raise AttributeError(f"module 'schooner' has no attribute {name!r}")


class _Package(types.ModuleType):
    """Keeps ``schooner.deployment`` and ``schooner.ingress`` the public functions.

    Importing the submodules of the same names would otherwise replace the
    package attributes with the modules (the modules stay importable with
    ``from schooner.deployment import ...``).
    """

    def __setattr__(self, name: str, value: Any) -> None:
        if name in _EXPORTS and isinstance(value, types.ModuleType):
            return
        super().__setattr__(name, value)

    def __reduce__(self) -> tuple[Callable[[str], types.ModuleType], tuple[str]]:
        # Code pickled by value in a driver's ``__main__`` (cloudpickle) refers to
        # this package through its globals (``serve.batch``...): it must travel by
        # reference, as plain modules do, and be imported again where it lands.
        return importlib.import_module, (self.__name__,)


sys.modules[__name__].__class__ = _Package


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(__all__) | _SUBMODULES)


if TYPE_CHECKING:
    from schooner.api import (
        RunTarget,
        _run,
        _run_many,
        delete,
        get_app_handle,
        get_deployment_handle,
        run,
        run_many,
        shutdown,
        shutdown_async,
        start,
        status,
    )
    from schooner.batching import batch
    from schooner.config import (
        AutoscalingConfig,
        ControllerOptions,
        HTTPOptions,
        TracingConfig,
        gRPCOptions,
    )
    from schooner.context import (
        get_deployment_actor,
        get_deployment_actor_context,
        get_replica_context,
    )
    from schooner.deployment import Application, Deployment, deployment
    from schooner.handle import DeploymentHandle, DeploymentResponse, DeploymentResponseGenerator
    from schooner.ingress import ingress
    from schooner.multiplex import get_multiplexed_model_id, multiplexed
    from schooner.rollout import get_rollout, rollout
    from schooner.tracing import get_trace_context
    from schooner.traffic import get_traffic, set_traffic, shadow_traffic
