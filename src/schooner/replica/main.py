"""Entry point of a replica process: ``python -m schooner.replica.main``.

Started by the controller's launcher. It listens for data RPCs on its Unix
socket, connects to the controller (which then initializes it over that same
connection) and serves until told to stop or until the head process dies.
"""

from __future__ import annotations

import argparse
import asyncio
import logging
import os
import sys
from pathlib import Path

from schooner import _core, context
from schooner.logs import setup_process_logging
from schooner.replica.replica import Replica
from schooner.rpc.connection import serve_unix
from schooner.rpc.messages import DeploymentID
from schooner.runtime.lifeline import watch_parent
from schooner.runtime.loop import new_event_loop
from schooner.runtime.session import Session

logger = logging.getLogger("schooner.replica")


def _parse(argv: list[str]) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="schooner-replica")
    parser.add_argument("--session", required=True)
    parser.add_argument("--replica-id", required=True)
    parser.add_argument("--app", required=True)
    parser.add_argument("--deployment", required=True)
    parser.add_argument("--lifeline-fd", type=int, required=True)
    return parser.parse_args(argv)


async def _serve(args: argparse.Namespace, session: Session) -> None:
    replica = Replica(args.replica_id, DeploymentID(args.deployment, args.app))
    loop = asyncio.get_running_loop()
    watch_parent(args.lifeline_fd, lambda: loop.call_soon_threadsafe(replica.stopped.set))
    server = await serve_unix(session.replica_socket(args.replica_id), lambda: replica)
    core = await _core.Core.connect(session, handler=replica)
    _core.set_core(core)
    core.controller.on_close.append(lambda _c: replica.stopped.set())
    await core.controller.call("register_replica", args.replica_id)
    await replica.stopped.wait()
    server.close()
    core.close()


def main(argv: list[str] | None = None) -> None:
    args = _parse(sys.argv[1:] if argv is None else argv)
    session = Session.open(Path(args.session))
    for entry in reversed(os.environ.get("SCHOONER_SYS_PATH", "").split(os.pathsep)):
        if entry and entry not in sys.path:
            sys.path.insert(0, entry)
    full_id = f"{args.app}#{args.deployment}#{args.replica_id}"
    setup_process_logging(
        session.logs,
        f"replica_{args.app}_{args.deployment}_{args.replica_id}",
        "replica",
        replica=full_id,
        echo_prefix=f"(ServeReplica:{args.app}:{args.deployment} pid={os.getpid()}) ",
        request_id=lambda: context.current_request().request_id,
    )
    loop = new_event_loop()
    try:
        loop.run_until_complete(_serve(args, session))
    finally:
        try:
            os.unlink(session.replica_socket(args.replica_id))
        except OSError:
            pass
    os._exit(0)  # don't wait for stray user threads


if __name__ == "__main__":
    main()
