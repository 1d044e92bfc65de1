"""The instance on a Ray cluster: a detached actor that hosts Schooner's supervisor and head.

``SCHOONER_CONTROLLER`` (namespace ``schooner``) is pinned to the Ray head
node, reserves no CPU and is restarted by Ray if it dies. Its constructor
starts the instance's supervisor (:mod:`schooner.runtime.supervisor`) as a
child tied to the actor's lifetime, with the head told to use the Ray
backend (``--ray-address``). A restarted actor starts a new head that
recovers the goal state from the checkpoint (by default a directory on the
head node) and re-adopts the replica actors, which reconnect to the same
controller address with the same secret (both kept in Ray's GCS key-value
store). The instance outlives the drivers that use it, until
:func:`stop_instance`.
"""

from __future__ import annotations

import contextlib
import json
import os
import secrets
import socket
import tempfile
import threading
from pathlib import Path
from typing import Any

import ray
from ray.experimental import internal_kv
from ray.util.scheduling_strategies import NodeAffinitySchedulingStrategy

from schooner.runtime.head_launch import HeadHandle, launch_head
from schooner.runtime.ray_backend.head_side import SECRET_ENV
from schooner.runtime.ray_backend.names import CONTROLLER_ACTOR, KV_SECRET, NAMESPACE, find_host

#: How long a driver waits for the instance to start on the cluster.
START_TIMEOUT_S = 120.0


def _identity() -> dict[str, Any]:
    """The instance's secret, id and controller port: made once, kept in the GCS."""
    saved = internal_kv._internal_kv_get(KV_SECRET, namespace=NAMESPACE)
    if saved:
        identity: dict[str, Any] = json.loads(saved)
        return identity
    with socket.socket() as probe:
        probe.bind(("", 0))
        port = probe.getsockname()[1]
    identity = {
        "secret": secrets.token_hex(32),
        "instance": secrets.token_hex(8),
        "controller_port": port,
    }
    internal_kv._internal_kv_put(KV_SECRET, json.dumps(identity), namespace=NAMESPACE)
    return identity


class InstanceHost:
    """The actor that owns the instance's supervisor (see the module docstring)."""

    def __init__(self, options: dict[str, Any]) -> None:
        identity = _identity()
        node_ip = ray.util.get_node_ip_address()
        gcs = ray.get_runtime_context().gcs_address
        checkpoint = options.get("checkpoint_path") or (
            "file://"
            + str(
                Path(tempfile.gettempdir())
                / "schooner"
                / "ray"
                / identity["instance"]
                / "checkpoint"
            )
        )
        env = {**options.get("env", {}), SECRET_ENV: identity["secret"]}
        self.head: HeadHandle = launch_head(
            http_host=options.get("http_host", "127.0.0.1"),
            http_port=int(options.get("http_port", 8000)),
            root_path=options.get("root_path", ""),
            proxy_location=options.get("proxy_location", "EveryNode"),
            http_options=options.get("http_options"),
            grpc_options=options.get("grpc_options"),
            check_grpc=False,  # the proxies import the servicers on their nodes
            admin_host=options.get("admin_host", "127.0.0.1"),
            admin_port=options.get("admin_port"),
            metrics_port=options.get("metrics_port"),
            checkpoint_path=checkpoint,
            env=env,
            output_to_log=True,
            extra_args=[
                "--ray-address",
                gcs,
                "--instance-id",
                identity["instance"],
                "--controller-host",
                node_ip,
                "--controller-port",
                str(identity["controller_port"]),
                "--detached",
            ],
        ).wait_ready()
        self.stopping = False
        self.info_ = {
            "backend": "ray",
            "instance": identity["instance"],
            "secret": identity["secret"],
            "session": str(self.head.session.root),
            "controller_socket": self.head.session.controller_socket,
            "controller_address": f"tcp://{node_ip}:{identity['controller_port']}",
            "node_id": ray.get_runtime_context().get_node_id(),
            "http_host": self.head.http_host,
            "http_port": self.head.http_port,
            "http_scheme": self.head.http_scheme,
            "admin_url": self.head.admin_url,
            "detached": True,
            "supervisor_pid": self.head.process.pid,
        }
        threading.Thread(target=self._watch, name="schooner-host", daemon=True).start()

    def _watch(self) -> None:
        """The supervisor exited: after a shutdown this actor is done; after a crash the
        actor exits too, so Ray restarts it and with it the instance."""
        code = self.head.process.wait()
        if self.stopping:
            return
        if code != 0:
            os._exit(1)
        # Shut down from elsewhere (`schooner shutdown`, the admin API): leave for good.
        internal_kv._internal_kv_del(KV_SECRET, namespace=NAMESPACE)
        ray.kill(ray.get_runtime_context().current_actor, no_restart=True)

    def info(self) -> dict[str, Any]:
        return self.info_

    def stopped(self) -> None:
        """The instance was shut down (its supervisor exits by itself): do not restart."""
        self.stopping = True
        with contextlib.suppress(Exception):
            self.head.wait(30)
        self.head.release()


_RemoteHost = ray.remote(InstanceHost)


def _head_node_id() -> str:
    for node in ray.nodes():
        if node.get("Alive") and "node:__internal_head__" in node.get("Resources", {}):
            return str(node["NodeID"])
    return str(ray.get_runtime_context().get_node_id())


def attach(options: dict[str, Any] | None, create: bool) -> dict[str, Any] | None:
    """The running instance's info (its address, secret, ports); with ``create``, start
    it on the cluster first if there is none. None if there is none (and not ``create``)."""
    host = find_host()
    if host is None:
        if not create:
            return None
        host = _RemoteHost.options(
            name=CONTROLLER_ACTOR,
            namespace=NAMESPACE,
            lifetime="detached",
            max_restarts=-1,
            max_concurrency=4,
            num_cpus=0,
            get_if_exists=True,
            scheduling_strategy=NodeAffinitySchedulingStrategy(_head_node_id(), soft=False),
        ).remote(options or {})
    info: dict[str, Any] = ray.get(host.info.remote(), timeout=START_TIMEOUT_S)
    return info


def stop_instance() -> None:
    """After the head shut down: remove the host actor and the instance's identity."""
    host = find_host()
    if host is not None:
        with contextlib.suppress(Exception):
            ray.get(host.stopped.remote(), timeout=40)
        with contextlib.suppress(Exception):
            ray.kill(host, no_restart=True)
    internal_kv._internal_kv_del(KV_SECRET, namespace=NAMESPACE)


def driver_node_id() -> str:
    return str(ray.get_runtime_context().get_node_id())
