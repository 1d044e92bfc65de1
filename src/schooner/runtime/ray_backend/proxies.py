"""Proxies on the nodes of a Ray cluster (``proxy_location``).

Each proxy is a proxy actor (:class:`ProxyActor`, no CPU reserved, pinned to
its node) whose child process is the same proxy as on the embedded runtime
(:mod:`schooner.proxy.main`): it binds the HTTP port on its node (with
SO_REUSEPORT, so nodes sharing one machine can share the port), connects to
the controller over authenticated TCP and routes to replicas on any node.
``HeadOnly``: one on the head node; ``EveryNode``: one on every alive node (a
node that joins gets one; a node that leaves takes its proxy with it). Proxy
actors outlive a restart of the head or of its host actor and are re-adopted.
"""

from __future__ import annotations

import contextlib
import logging
import os
import subprocess
import sys
import threading
import time
from typing import Any

import ray
from ray.util.scheduling_strategies import NodeAffinitySchedulingStrategy

from schooner.rpc.transport import forwarded_environment
from schooner.runtime.lifeline import Lifeline
from schooner.runtime.ray_backend.names import (
    NAMESPACE,
    InstanceAlive,
    host_exists,
    node_session,
    proxy_actor_name,
)
from schooner.runtime.ray_backend.placement import Node
from schooner.runtime.sockets import bind_listening

logger = logging.getLogger("schooner.controller")

#: Wait before starting a proxy again on a node where one exited or failed to start.
RESTART_DELAY_S = 2.0


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
        extra_env: dict[str, str],
    ) -> None:
        """``extra_env``: the instance's settings for the proxy process (RPC TLS, ...)."""
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
            **extra_env,
            "SCHOONER_PROXY_ACTOR": f"{context.get_actor_id()} {context.get_worker_id()}",
            "SCHOONER_SECRET": secret.hex(),
            "SCHOONER_NODE_ID": self.node_id,
            "SCHOONER_NODE_IP": ray.util.get_node_ip_address(),
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
        threading.Thread(target=self._watch_instance, name="schooner-proxy", daemon=True).start()

    def _watch_instance(self) -> None:
        """Leave when the instance is gone from the cluster (its host actor was removed)."""
        alive = InstanceAlive(host_exists, interval_s=0)
        while self.process.poll() is None:
            time.sleep(2.0)
            if not alive():
                self.stop()
                ray.kill(ray.get_runtime_context().current_actor, no_restart=True)
                return

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
        self.retry_at: dict[str, float] = {}

    def reconcile(self, nodes: list[Node]) -> None:
        """A proxy on every alive node (``EveryNode``) or on the head node (``HeadOnly``);
        one whose process exited is replaced."""
        alive = {n.node_id for n in nodes}
        wanted = alive if self.every_node else alive & {self.head_node_id}
        now = time.monotonic()
        for node_id in list(self.actors):
            done, _ = ray.wait([self.watch[node_id]], timeout=0)
            if done:
                self._report_exit(node_id, done[0])
                self.retry_at[node_id] = now + RESTART_DELAY_S
            if node_id not in wanted or done:
                self._drop(node_id)
        for node_id in wanted - set(self.actors):
            if now >= self.retry_at.get(node_id, 0.0):
                self._start(node_id)

    def _report_exit(self, node_id: str, ref: Any) -> None:
        try:
            code = ray.get(ref)
        except Exception as exc:  # the actor failed (its constructor: the port is taken, ...)
            logger.warning("the proxy on node %s failed: %s; restarting it", node_id, exc)
        else:
            logger.warning("the proxy on node %s exited (code %s); restarting it", node_id, code)

    def _start(self, node_id: str) -> None:
        name = proxy_actor_name(node_id)
        try:  # one a previous head started serves on: keep it
            actor = ray.get_actor(name, namespace=NAMESPACE)
        except ValueError:
            pass
        else:
            self.actors[node_id] = actor
            self.watch[node_id] = actor.wait_exit.remote()
            logger.info("re-adopted the proxy on node %s", node_id)
            return
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
            forwarded_environment(),
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
