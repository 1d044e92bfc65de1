"""Names the Ray backend gives its actors, and where each node keeps its files."""

from __future__ import annotations

import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import ray

from schooner.runtime.session import Session

#: The Ray namespace of every actor of a Schooner instance.
NAMESPACE = "schooner"
#: The detached actor that hosts the instance's supervisor and head.
CONTROLLER_ACTOR = "SCHOONER_CONTROLLER"
#: Keys in Ray's GCS key-value store (namespace :data:`NAMESPACE`).
KV_SECRET = b"instance_secret"
KV_PORTS = b"instance_ports"


def replica_actor_name(app: str, deployment: str, replica_id: str) -> str:
    """As Ray Serve names its replica actors."""
    return f"SERVE_REPLICA::{app}#{deployment}#{replica_id}"


def proxy_actor_name(node_id: str) -> str:
    return f"SERVE_PROXY_ACTOR-{node_id}"


def node_session(instance: str, node_id: str) -> Session:
    """This node's directory for an instance's sockets and logs (created, mode 0700)."""
    root = Path(tempfile.gettempdir()) / "schooner" / "ray" / instance[:16] / node_id[:12]
    for sub in ("sockets", "logs"):
        (root / sub).mkdir(mode=0o700, parents=True, exist_ok=True)
    return Session.open(root)


def find_host() -> Any | None:
    """The instance's host actor (alive or being restarted), or None if there is none."""
    try:
        return ray.get_actor(CONTROLLER_ACTOR, namespace=NAMESPACE)
    except ValueError:
        return None


def host_exists() -> bool:
    """Whether the instance's host actor exists (it is alive or being restarted)."""
    return find_host() is not None


class InstanceAlive:
    """Whether the instance still exists on the cluster (its host actor does), asked of
    Ray at most every ``interval_s``: a replica or proxy that lost its controller keeps
    reconnecting while this holds, and stops (no orphan actor) once it does not."""

    def __init__(self, exists: Callable[[], bool], interval_s: float = 2.0) -> None:
        self._exists = exists
        self._interval_s = interval_s
        self._checked = float("-inf")
        self._alive = True

    def __call__(self) -> bool:
        now = time.monotonic()
        if now - self._checked >= self._interval_s:
            self._checked = now
            try:
                self._alive = self._exists()
            except Exception:
                self._alive = True  # Ray itself unreachable for a moment: keep trying
        return self._alive
