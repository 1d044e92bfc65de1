"""Where code is running: the replica context and the current request's context."""

from __future__ import annotations

import contextvars
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, NamedTuple

from schooner.exceptions import RayServeException
from schooner.rpc.messages import DeploymentID

if TYPE_CHECKING:
    from schooner.schema import ReplicaRank

__all__ = [
    "ReplicaContext",
    "ReplicaID",
    "RequestContext",
    "get_deployment_actor",
    "get_deployment_actor_context",
    "get_replica_context",
]


@dataclass(frozen=True)
class ReplicaID:
    """Identifies one replica: a unique id within its deployment."""

    unique_id: str
    deployment_id: DeploymentID

    def to_full_id_str(self) -> str:
        return f"{self.deployment_id.app_name}#{self.deployment_id.name}#{self.unique_id}"

    def __str__(self) -> str:
        return self.to_full_id_str()


@dataclass
class ReplicaContext:
    """What :func:`get_replica_context` returns inside a replica.

    ``rank`` is the replica's :class:`~schooner.schema.ReplicaRank` (``None`` until
    the controller assigned one) and ``world_size`` the deployment's target number
    of replicas; both are kept up to date as the deployment scales.
    """

    replica_id: ReplicaID
    servable_object: Any = None
    rank: ReplicaRank | None = None
    world_size: int = 0
    _extra: dict[str, Any] = field(default_factory=dict, repr=False)

    @property
    def app_name(self) -> str:
        return self.replica_id.deployment_id.app_name

    @property
    def deployment(self) -> str:
        return self.replica_id.deployment_id.name

    @property
    def replica_tag(self) -> str:
        """The replica's unique id (older Ray name for it)."""
        return self.replica_id.unique_id


_replica_context: ReplicaContext | None = None
#: The replica context of code running in a local-testing-mode replica (several run in
#: one process, each on its own loop: see :mod:`schooner.local_testing`).
_local_replica_context: contextvars.ContextVar[ReplicaContext | None] = contextvars.ContextVar(
    "schooner_local_replica_context", default=None
)


def _set_replica_context(context: ReplicaContext | None) -> None:
    global _replica_context
    _replica_context = context


def get_replica_context() -> ReplicaContext:
    """The context of the replica this code runs in.

    Raises :class:`~schooner.exceptions.RayServeException` when called outside
    a replica (for example in the driver script).
    """
    replica = _local_replica_context.get() or _replica_context
    if replica is None:
        raise RayServeException(
            "`serve.get_replica_context()` may only be called from within a deployment replica."
        )
    return replica


def get_deployment_actor_context() -> Any:
    """Ray's context of a deployment-scoped actor; Schooner has no deployment actors yet,
    so this raises :class:`~schooner.exceptions.RayServeException` (as Ray does outside one).
    """
    raise RayServeException(
        "`serve.get_deployment_actor_context()` may only be called from within a deployment "
        "actor, and Schooner does not run deployment actors (`deployment_actors`) yet."
    )


def get_deployment_actor(actor_name: str) -> Any:
    """A handle to a deployment-scoped actor (Ray's ``deployment_actors``).

    Raises :class:`~schooner.exceptions.RayServeException`: outside a replica (as in
    Ray), and inside one because Schooner does not run deployment actors yet.
    """
    get_replica_context()
    raise RayServeException(
        f"Cannot get deployment actor {actor_name!r}: Schooner does not run deployment-scoped "
        "actors (`deployment_actors`) yet."
    )


class RequestContext(NamedTuple):
    """The request being served by the current task (empty outside requests).

    A named tuple rather than a dataclass: one is made per request.
    """

    route: str = ""
    request_id: str = ""
    app_name: str = ""
    multiplexed_model_id: str = ""
    session_id: str = ""


_request_context: contextvars.ContextVar[RequestContext] = contextvars.ContextVar(
    "schooner_request_context",
    default=RequestContext(),  # noqa: B039 - a tuple, immutable
)


def current_request() -> RequestContext:
    return _request_context.get()
