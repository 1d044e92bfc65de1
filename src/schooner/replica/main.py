"""Entry point of a replica process: ``python -m schooner.replica.main``.

Started by the controller's launcher, in one of two ways:

- with its identity (``--replica-id``, ``--app``, ``--deployment``): it
  listens for data RPCs on its Unix socket, connects to the controller (which
  then initializes it over that same connection) and serves;
- as a *spare* (``--spare-id``): it imports what every replica needs, connects
  to the controller and waits to be assigned an identity (``rpc_assign``).
  A spare saves the next replica the start-up of a Python process, which is
  most of an application's cold start.

It serves until told to stop, or until the instance's supervisor dies. If
the head crashes, an identified replica keeps serving and reconnects to the
next head, which re-adopts it (``rpc_rejoin_replica``); a spare just exits.
"""

from __future__ import annotations

import argparse
import asyncio
import logging
import os
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

from schooner import _core, context, logs
from schooner.replica.models import ModelReporter
from schooner.replica.replica import Replica
from schooner.rpc.connection import Connection, serve_unix
from schooner.rpc.messages import DeploymentID
from schooner.runtime.lifeline import watch_parent
from schooner.runtime.loop import new_event_loop
from schooner.runtime.session import Session
from schooner.telemetry import tracing

logger = logging.getLogger("schooner.replica")


def _parse(argv: list[str]) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="schooner-replica")
    parser.add_argument("--session", required=True)
    parser.add_argument("--replica-id")
    parser.add_argument("--app")
    parser.add_argument("--deployment")
    parser.add_argument("--spare-id")
    parser.add_argument("--lifeline-fd", type=int, required=True)
    return parser.parse_args(argv)


def add_sys_path(entries: list[str]) -> None:
    for entry in reversed(entries):
        if entry and entry not in sys.path:
            sys.path.insert(0, entry)


def enter_working_dir(path: str | None) -> None:
    """The runtime_env's working_dir: the process's cwd and first on sys.path."""
    if path:
        os.chdir(path)
        if path not in sys.path:
            sys.path.insert(0, path)


def setup_replica_logging(session: Session, replica_id: str, app: str, deployment: str) -> None:
    """Log to the replica's file, with its deployment's effective logging config (the
    controller puts it in the environment: :data:`schooner.logs.LOGGING_CONFIG_ENV`)."""
    logs.setup_process_logging(
        session.logs,
        logs.replica_file_stem(app, deployment, replica_id),
        "replica",
        echo_prefix=f"(ServeReplica:{app}:{deployment} pid={os.getpid()}) ",
        request_context=context.current_request,
        application=app,
        deployment=deployment,
        replica_id=replica_id,
    )


class ReplicaProcess:
    """What one replica process runs: a Replica once it knows who it is."""

    def __init__(self, session: Session) -> None:
        self.session = session
        self.replica: Replica | None = None
        self.stopped = asyncio.Event()  # created outside a loop: fine since Python 3.10
        self.server: asyncio.Server | None = None
        self.socket_path: str | None = None
        #: Called once a spare has become a replica.
        self.on_assigned: Callable[[], None] | None = None

    async def become(self, replica_id: str, app: str, deployment: str) -> Replica:
        tracing.setup("replica", f"{app}#{deployment}#{replica_id}", self.session.logs)
        replica = Replica(replica_id, DeploymentID(deployment, app))
        replica.stopped = self.stopped
        self.socket_path = self.session.replica_socket(replica_id)
        self.server = await serve_unix(self.socket_path, lambda: replica)
        self.replica = replica
        return replica


class _SpareHandler:
    """The controller's view of a spare until it is assigned (then the Replica takes over)."""

    def __init__(self, process: ReplicaProcess) -> None:
        self.process = process
        self.conn: Connection | None = None

    def on_connect(self, conn: Connection) -> None:
        self.conn = conn

    async def rpc_assign(
        self, replica_id: str, app: str, deployment: str, env: dict[str, str], sys_path: list[str]
    ) -> None:
        os.environ.update(env)
        enter_working_dir(env.get("SCHOONER_CWD"))
        add_sys_path(sys_path)
        setup_replica_logging(self.process.session, replica_id, app, deployment)
        replica = await self.process.become(replica_id, app, deployment)
        assert self.conn is not None
        self.conn.set_handler(replica)
        if self.process.on_assigned is not None:
            self.process.on_assigned()

    def rpc_shutdown(self) -> None:
        self.process.stopped.set()


async def _serve(args: argparse.Namespace, session: Session, process: ReplicaProcess) -> None:
    loop = asyncio.get_running_loop()
    watch_parent(args.lifeline_fd, lambda: loop.call_soon_threadsafe(process.stopped.set))
    handler: Any
    if args.spare_id:
        import schooner.deployment  # noqa: F401 - what user code imports first: load it now

        handler = _SpareHandler(process)
    else:
        handler = await process.become(args.replica_id, args.app, args.deployment)
    core = await _core.Core.connect(session, handler=handler)
    _core.set_core(core)
    if args.spare_id:
        # Until assigned, a spare is only worth something to the head that started it.
        def stop_on_close(_conn: Connection) -> None:
            process.stopped.set()

        def assigned() -> None:
            core.controller.on_close.remove(stop_on_close)
            survive_head_restarts(core, process)

        core.controller.on_close.append(stop_on_close)
        process.on_assigned = assigned
        await core.controller.call("register_spare", args.spare_id)
    else:
        survive_head_restarts(core, process)
        await core.controller.call("register_replica", args.replica_id)
    await process.stopped.wait()
    if process.server is not None:
        process.server.close()
    core.close()


def survive_head_restarts(
    core: _core.Core, process: ReplicaProcess, alive: Callable[[], bool] | None = None
) -> None:
    """Keep serving when the head crashes, and rejoin the next one (while ``alive()``,
    by default while the head's socket comes back). Also reports the replica's
    multiplexed models to the head, now and to the next one (model-aware routing);
    both replica paths (this machine's processes, Ray actors) come through here."""
    replica = process.replica
    assert replica is not None
    models = ModelReporter(replica.replica_id, lambda: core.controller, core.loop)
    models.start()

    async def rejoin(conn: Connection) -> None:
        await conn.call("rejoin_replica", replica.replica_id, replica.initialized)
        models.resend()

    core.keep_connected(handler=replica, on_reconnect=rejoin, alive=alive)
    core.on_lost(process.stopped.set)
    core.on_lost(models.stop)


def main(argv: list[str] | None = None) -> None:
    args = _parse(sys.argv[1:] if argv is None else argv)
    session = Session.open(Path(args.session))
    add_sys_path(os.environ.get("SCHOONER_SYS_PATH", "").split(os.pathsep))
    enter_working_dir(os.environ.get("SCHOONER_CWD"))
    if not args.spare_id:
        setup_replica_logging(session, args.replica_id, args.app, args.deployment)
    loop = new_event_loop()
    process = ReplicaProcess(session)
    try:
        loop.run_until_complete(_serve(args, session, process))
    finally:
        if process.socket_path is not None:
            try:
                os.unlink(process.socket_path)
            except OSError:
                pass
    logs.flush()
    os._exit(0)  # don't wait for stray user threads


if __name__ == "__main__":
    main()
