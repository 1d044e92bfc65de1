"""The replica as a Ray actor: Schooner's replica server inside a Ray worker process.

The actor's constructor starts a thread with its own event loop that runs
the same replica as :mod:`schooner.replica.main`: it serves data RPCs on a
Unix socket (callers on this node) and on authenticated TCP (callers on
other nodes), connects to the controller and registers with those
addresses. User code runs in this process, so ``ray.get_runtime_context()``
works in it and Ray's resource assignment (``CUDA_VISIBLE_DEVICES``) applies.

The controller watches the actor through :meth:`ReplicaActor.wait_stopped`,
which returns when the replica stops and fails when the actor dies.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import sys
import threading
from dataclasses import dataclass, field
from typing import Any

import ray

from schooner import _core
from schooner.logs import current_log_file
from schooner.replica.main import (
    ReplicaProcess,
    add_sys_path,
    enter_working_dir,
    setup_replica_logging,
    survive_head_restarts,
)
from schooner.router.pool import set_local_node_id
from schooner.rpc.transport import format_tcp_address, serve_tcp, set_default_secret
from schooner.runtime.loop import new_event_loop
from schooner.runtime.ray_backend.names import (
    InstanceAlive,
    host_exists,
    node_session,
)

logger = logging.getLogger("schooner.replica")


@dataclass
class ReplicaLaunch:
    """What a replica actor needs to know to start."""

    instance: str
    controller_address: str
    secret: bytes
    replica_id: str
    app: str
    deployment: str
    env: dict[str, str] = field(default_factory=dict)
    sys_path: list[str] = field(default_factory=list)


class ReplicaActor:
    """A Schooner replica hosted by a Ray actor (see the module docstring)."""

    def __init__(self, launch: ReplicaLaunch) -> None:
        self.launch = launch
        os.environ.update(launch.env)
        add_sys_path(launch.sys_path)
        cwd = launch.env.get("SCHOONER_CWD")
        if cwd and os.path.isdir(cwd):  # a working_dir of the head's node; Ray ships its own
            enter_working_dir(cwd)
        context = ray.get_runtime_context()
        self.node_id = context.get_node_id()
        self.placement = {
            "node_id": self.node_id,
            "node_ip": ray.util.get_node_ip_address(),
            "actor_id": context.get_actor_id(),
            "worker_id": context.get_worker_id(),
            "pid": os.getpid(),
        }
        self._loop: asyncio.AbstractEventLoop | None = None
        self.replica_process: ReplicaProcess | None = None
        self._done = threading.Event()
        self.stop_requested = threading.Event()
        self._thread = threading.Thread(target=self._run, name="schooner-replica", daemon=True)
        self._thread.start()

    def _run(self) -> None:
        loop = new_event_loop()
        asyncio.set_event_loop(loop)
        self._loop = loop
        try:
            loop.run_until_complete(_serve(self))
        except Exception:
            logger.exception("replica %s failed", self.launch.replica_id)
        finally:
            self._done.set()

    # -- called through Ray ------------------------------------------------------
    def info(self) -> dict[str, Any]:
        """Where this replica runs (node, pid, actor and worker ids)."""
        return dict(self.placement)

    def wait_stopped(self) -> int:
        """Block until the replica has stopped (the controller's view of the process)."""
        self._done.wait()
        return 0

    def stop(self) -> None:
        """Stop serving (as SIGTERM does to a local replica process)."""
        self.stop_requested.set()
        loop, process = self._loop, self.replica_process
        if loop is not None and process is not None and not loop.is_closed():
            with contextlib.suppress(RuntimeError):
                loop.call_soon_threadsafe(process.stopped.set)
        elif self._done.is_set() or loop is None:
            sys.stderr.flush()


async def _serve(actor: ReplicaActor) -> None:
    """The replica's life on the actor's own loop thread (a module function: a coroutine
    method would make Ray run the actor as an async actor, whose blocking methods would
    then block each other)."""
    launch = actor.launch
    session = node_session(launch.instance, actor.node_id)
    setup_replica_logging(session, launch.replica_id, launch.app, launch.deployment)
    set_default_secret(launch.secret)
    set_local_node_id(actor.node_id)
    process = ReplicaProcess(session)
    actor.replica_process = process
    if actor.stop_requested.is_set():
        return
    replica = await process.become(launch.replica_id, launch.app, launch.deployment)
    host = str(actor.placement["node_ip"])
    tcp = await serve_tcp(host, 0, lambda: replica, secret=launch.secret)
    port = tcp.sockets[0].getsockname()[1]
    core = await _core.Core.connect(session, handler=replica, address=launch.controller_address)
    _core.set_core(core)
    survive_head_restarts(core, process, InstanceAlive(host_exists))
    endpoint = {
        **actor.placement,
        "address": format_tcp_address(host, port),
        "local_address": process.socket_path,
        "log_file": str(current_log_file()),
    }
    await core.controller.call("register_replica", launch.replica_id, endpoint)
    await process.stopped.wait()
    tcp.close()
    if process.server is not None:
        process.server.close()
    core.close()
    if process.socket_path is not None:
        with contextlib.suppress(OSError):
            os.unlink(process.socket_path)
