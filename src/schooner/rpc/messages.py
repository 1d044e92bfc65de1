"""Plain records that cross process boundaries between controller, routers and replicas.

They hold no user objects (user code and arguments travel as opaque pickled
blobs), so the head process never imports user code.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, NamedTuple


@dataclass(frozen=True, order=True)
class DeploymentID:
    """Identifies a deployment: its name within an application."""

    name: str
    app_name: str = "default"

    def __str__(self) -> str:
        return f"{self.app_name}#{self.name}"

    @property
    def key(self) -> str:
        """Long-poll key under which the controller publishes this deployment's replicas."""
        return f"replicas:{self}"


@dataclass(frozen=True)
class ReplicaInfo:
    """A running replica as routers see it."""

    replica_id: str
    address: str  # Unix socket path (embedded runtime) or tcp://host:port (Ray backend)
    deployment: DeploymentID
    #: Ray backend: the node the replica runs on, and its Unix socket there (callers on the
    #: same node use it instead of TCP). Empty on the embedded runtime.
    node_id: str = ""
    local_address: str = ""
    #: Multiplexed models the replica has loaded or is loading (model-aware routing).
    model_ids: tuple[str, ...] = ()


@dataclass(frozen=True)
class ReplicaSet:
    """What the controller publishes for one deployment: live replicas and routing limits."""

    replicas: tuple[ReplicaInfo, ...]
    max_ongoing_requests: int
    max_queued_requests: int
    #: Why requests can't be served while there are no replicas (e.g. the deployment failed
    #: to start); empty while replicas may still come, in which case requests wait.
    unavailable: str = ""
    #: ``backpressure_config``: the HTTP status of a rejected request, and its Retry-After.
    backpressure_status_code: int = 503
    retry_after_s: float | None = None
    #: The deployment is autoscaled: callers report their demand for it.
    autoscaling: bool = False


@dataclass(frozen=True)
class Route:
    """One entry of the proxy's route table."""

    route_prefix: str
    app_name: str
    ingress: DeploymentID


@dataclass(frozen=True)
class TrafficTarget:
    """An application a route's traffic goes to: its ingress deployment and its share
    (a split's weight, or the fraction of requests a shadow gets a copy of)."""

    app_name: str
    ingress: DeploymentID
    weight: float


@dataclass(frozen=True)
class TrafficPolicy:
    """Where the requests for one application (its route and its handles) go.

    ``split``: the applications that answer, with weights summing to 1 (the owner may be
    one of them); empty means the owner answers everything. ``shadows``: applications
    that get a copy of a fraction of the requests, their answers discarded.
    """

    app_name: str
    ingress: DeploymentID
    split: tuple[TrafficTarget, ...] = ()
    shadows: tuple[TrafficTarget, ...] = ()


@dataclass(frozen=True)
class CodeRef:
    """How a replica finds the user's class or function.

    Either ``import_path`` (``module:qualname``) when the driver could import
    it the same way, or ``pickled`` (cloudpickle by value) for code defined in
    ``__main__`` or otherwise not importable.
    """

    import_path: str | None = None
    pickled: bytes | None = None


@dataclass(frozen=True)
class ProcessEnv:
    """Where and how a replica process runs: its resolved ``runtime_env``."""

    cwd: str | None = None
    sys_path: tuple[str, ...] = ()  # put first on sys.path, in order
    env_vars: dict[str, str] = field(default_factory=dict)
    #: On a Ray cluster: runtime_env fields Ray sets up itself (conda, uv, container, ...).
    ray_fields: dict[str, Any] = field(default_factory=dict)

    @property
    def is_default(self) -> bool:
        return self.cwd is None and not self.sys_path and not self.env_vars


@dataclass
class DeploymentSpec:
    """Everything the controller needs to run one deployment of an application."""

    name: str
    code: CodeRef
    init_blob: bytes  # pickled (args, kwargs); handles inside are DeploymentHandles
    config: Any  # schooner.config.DeploymentConfig
    is_function: bool
    code_version: str  # changes when code or init args change
    process_env: ProcessEnv = field(default_factory=ProcessEnv)


@dataclass
class AppSpec:
    """A whole application as sent to the controller."""

    name: str
    route_prefix: str | None
    ingress: str
    deployments: list[DeploymentSpec]
    source: str = "imperative"
    docs_path: str | None = None
    sys_path: list[str] = field(default_factory=list)
    #: Set by config documents (``external_scaler_enabled``); the scale endpoint needs it.
    external_scaler_enabled: bool = False
    #: An application-level autoscaling policy (``policy_function``, ``policy_kwargs``).
    autoscaling_policy: dict[str, Any] | None = None


class GrpcReply(NamedTuple):
    """How a replica's gRPC call ended (its last message to the proxy).

    ``ok``: the user method returned (False: it raised; ``details`` then says what).
    ``body``: the serialized response of a unary call (None for a stream, whose messages
    came before). ``code``, ``details``, ``trailing_metadata`` and ``compression``: what
    the user set on the call's ``grpc_context`` (``code``: a ``grpc.StatusCode``'s number,
    None if unset; ``trailing_metadata`` starts with the request id).
    """

    ok: bool
    body: bytes | None
    code: int | None
    details: str | None
    trailing_metadata: tuple[tuple[str, Any], ...]
    compression: int | None = None
