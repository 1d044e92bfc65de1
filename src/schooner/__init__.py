"""Schooner: serve Python models and business logic as scalable deployments.

Use it exactly like Ray Serve 2.x::

    import schooner as serve

    @serve.deployment
    class Hello:
        def __call__(self, request):
            return "hello"

    serve.run(Hello.bind())
"""

from schooner.api import (
    delete,
    get_app_handle,
    get_deployment_handle,
    run,
    shutdown,
    start,
    status,
)
from schooner.config import AutoscalingConfig, HTTPOptions, gRPCOptions
from schooner.context import get_replica_context
from schooner.deployment import Application, Deployment, deployment
from schooner.handle import DeploymentHandle, DeploymentResponse, DeploymentResponseGenerator
from schooner.ingress import ingress

__version__ = "0.1.0"

__all__ = [
    "Application",
    "AutoscalingConfig",
    "Deployment",
    "DeploymentHandle",
    "DeploymentResponse",
    "DeploymentResponseGenerator",
    "HTTPOptions",
    "delete",
    "deployment",
    "gRPCOptions",
    "get_app_handle",
    "get_deployment_handle",
    "get_replica_context",
    "ingress",
    "run",
    "shutdown",
    "start",
    "status",
]
