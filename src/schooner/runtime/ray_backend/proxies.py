"""Proxies on the nodes of a Ray cluster (``proxy_location``).

The head node's proxy is the head's own child process, as on the embedded
runtime. With ``EveryNode``, every other alive node gets a proxy actor
(:class:`ProxyActor`, no CPU reserved, pinned to its node) whose child
process is the same proxy (:mod:`schooner.proxy.main`): it binds the HTTP
port on its node, connects to the controller over authenticated TCP and
routes to replicas on any node. A node that joins gets one; a node that
leaves takes its proxy with it.
"""

from __future__ import annotations

import contextlib
import logging
import os
import subprocess
import sys
from typing import Any

import ray
from ray.util.scheduling_strategies import NodeAffinitySchedulingStrategy

from schooner.runtime.lifeline import Lifeline
from schooner.runtime.ray_backend.names import NAMESPACE, node_session, proxy_actor_name
from schooner.runtime.ray_backend.placement import Node
from schooner.runtime.sockets import bind_listening

logger = logging.getLogger("schooner.controller")


class ProxyActor:
    """Runs one proxy process on this node for as long as the actor lives."""

    def __init__(
        self,
        instance: str,
        controller_address: str,
        secret: bytes,
        http_host: str,
        http_port: int,
        proxy_args: list[str],
    ) -> None:
        context = ray.get_runtime_context()
        self.node_id = context.get_node_id()
        session = node_session(instance, self.node_id)
        sock = bind_listening(
            http_host,
            http_port,
            what="HTTP",
            flag="http_options.port",
            backlog=2048,
            reuse_port=True,
        )
        self.lifeline = Lifeline()
        env = {
            **os.environ,
            "SCHOONER_SECRET": secret.hex(),
            "SCHOONER_NODE_ID": self.node_id,
        }
        self.process = subprocess.Popen(
            [
                sys.executable,
                "-m",
                "schooner.proxy.main",
                "--session",
                str(session.root),
                "--http-fd",
                str(sock.fileno()),
                "--lifeline-fd",
                str(self.lifeline.read_fd),
                "--controller-address",
                controller_address,
                *proxy_args,
            ],
            pass_fds=(sock.fileno(), self.lifeline.read_fd),
            stdin=subprocess.DEVNULL,
            env=env,
        )
        sock.close()
        self.lifeline.close_read_end()

    def info(self) -> dict[str, Any]:
        return {"node_id": self.node_id, "pid": self.process.pid}

    def wait_exit(self) -> int:
        """Block until the proxy process exits (the head watches this)."""
        return self.process.wait()

    def stop(self) -> None:
        self.process.terminate()
        try:
            self.process.wait(10)
        except subprocess.TimeoutExpired:
            self.process.kill()
        self.lifeline.close()


_RemoteProxy = ray.remote(ProxyActor)


class ProxyFleet:
    """The head's record of proxy actors on the nodes other than its own."""

    def __init__(
        self,
        instance: str,
        controller_address: str,
        secret: bytes,
        head_node_id: str,
        every_node: bool,
        http_host: str,
        http_port: int,
        proxy_args: list[str],
    ) -> None:
        self.instance = instance
        self.controller_address = controller_address
        self.secret = secret
        self.head_node_id = head_node_id
        self.every_node = every_node
        self.http = (http_host, http_port)
        self.proxy_args = proxy_args
        self.actors: dict[str, Any] = {}
        self.watch: dict[str, Any] = {}

    def reconcile(self, nodes: list[Node]) -> None:
        if not self.every_node:
            return
        alive = {n.node_id for n in nodes}
        for node_id in list(self.actors):
            done, _ = ray.wait([self.watch[node_id]], timeout=0)
            if node_id not in alive or done:
                self._drop(node_id)
        for node_id in alive - set(self.actors) - {self.head_node_id}:
            self._start(node_id)

    def _start(self, node_id: str) -> None:
        name = proxy_actor_name(node_id)
        with contextlib.suppress(ValueError):  # one left by a previous head
            ray.kill(ray.get_actor(name, namespace=NAMESPACE), no_restart=True)
        actor = _RemoteProxy.options(
            name=name,
            namespace=NAMESPACE,
            lifetime="detached",
            num_cpus=0,
            max_restarts=0,
            max_concurrency=2,
            scheduling_strategy=NodeAffinitySchedulingStrategy(node_id, soft=False),
        ).remote(
            self.instance,
            self.controller_address,
            self.secret,
            self.http[0],
            self.http[1],
            self.proxy_args,
        )
        self.actors[node_id] = actor
        self.watch[node_id] = actor.wait_exit.remote()
        logger.info("starting a proxy on node %s", node_id)

    def _drop(self, node_id: str) -> None:
        actor = self.actors.pop(node_id)
        self.watch.pop(node_id, None)
        with contextlib.suppress(Exception):
            ray.kill(actor, no_restart=True)

    def stop_all(self) -> None:
        for node_id in list(self.actors):
            actor = self.actors[node_id]
            with contextlib.suppress(Exception):
                ray.get(actor.stop.remote(), timeout=15)
            self._drop(node_id)
