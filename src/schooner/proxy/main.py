"""Entry point of a proxy process: ``python -m schooner.proxy.main``.

Serves HTTP with uvicorn (httptools, uvloop) on a listening socket inherited
from the head, so several proxy processes can share one port and a restarted
proxy takes over without the port ever closing.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import socket
import sys
from pathlib import Path

import uvicorn

from schooner import _core
from schooner.logs import setup_process_logging
from schooner.proxy.app import ProxyApp
from schooner.runtime.lifeline import watch_parent
from schooner.runtime.loop import new_event_loop
from schooner.runtime.session import Session


def _parse(argv: list[str]) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="schooner-proxy")
    parser.add_argument("--session", required=True)
    parser.add_argument("--http-fd", type=int, required=True)
    parser.add_argument("--lifeline-fd", type=int, required=True)
    parser.add_argument("--root-path", default="")
    parser.add_argument("--keep-alive-s", type=int, default=90)
    return parser.parse_args(argv)


async def _serve(args: argparse.Namespace, session: Session) -> None:
    loop = asyncio.get_running_loop()
    core = await _core.Core.connect(session)
    _core.set_core(core)
    app = ProxyApp(core, root_path=args.root_path)
    sock = socket.socket(fileno=args.http_fd)
    config = uvicorn.Config(
        app,
        loop="none",
        http="httptools",
        lifespan="off",
        access_log=False,
        log_config=None,
        log_level="warning",
        timeout_keep_alive=args.keep_alive_s,
    )
    server = uvicorn.Server(config)

    def stop() -> None:
        server.should_exit = True

    watch_parent(args.lifeline_fd, lambda: loop.call_soon_threadsafe(stop))
    core.controller.on_close.append(lambda _c: stop())

    async def register_when_started() -> None:
        while not server.started:
            await asyncio.sleep(0.005)
        await core.registry.wait_for_snapshot("routes", 10)
        await core.controller.call("register_proxy")

    registration = loop.create_task(register_when_started())
    await server.serve(sockets=[sock])
    registration.cancel()
    core.close()


def main(argv: list[str] | None = None) -> None:
    args = _parse(sys.argv[1:] if argv is None else argv)
    session = Session.open(Path(args.session))
    setup_process_logging(session.logs, "proxy", "proxy")
    loop = new_event_loop()
    loop.run_until_complete(_serve(args, session))
    os._exit(0)


if __name__ == "__main__":
    main()
