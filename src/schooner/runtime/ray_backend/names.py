"""Names the Ray backend gives its actors, and where each node keeps its files."""

from __future__ import annotations

import tempfile
from pathlib import Path

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
