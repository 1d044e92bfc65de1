"""The ``schooner`` command."""

from __future__ import annotations

import argparse
import json
import logging
import signal
import sys
import threading
from collections.abc import Sequence

from schooner.exceptions import RayServeException


def _cmd_run(args: argparse.Namespace) -> int:
    from schooner.runtime.head_launch import launch_head

    # Boot the instance while this process imports the application's code.
    pending = launch_head(
        http_host=args.host,
        http_port=args.port,
        num_cpus=args.num_cpus,
        num_gpus=args.num_gpus,
        resources=_parse_resources(args.resources),
    )

    import schooner as serve
    from schooner import api
    from schooner.importing import build_application, import_attr, parse_kv_args

    api._pending_head = pending
    try:
        target = import_attr(args.import_path, args.app_dir)
        app = build_application(target, parse_kv_args(args.args), args.import_path)
    except BaseException:
        api._pending_head = None
        pending.process.kill()
        pending.process.wait()
        raise
    stop = threading.Event()
    signal.signal(signal.SIGTERM, lambda *_: stop.set())
    signal.signal(signal.SIGINT, lambda *_: stop.set())
    serve.start()
    try:
        serve.run(app, name=args.name, route_prefix=args.route_prefix)
        prefix = args.route_prefix if args.route_prefix not in (None, "/") else ""
        print(
            f"Schooner is serving application '{args.name}' at "
            f"{api.http_address()}{prefix} (Ctrl-C to stop)",
            flush=True,
        )
        while not stop.wait(0.5):
            pass
        print("Shutting down...", flush=True)
    finally:
        serve.shutdown()
    return 0


def _parse_resources(text: str | None) -> dict[str, float] | None:
    if not text:
        return None
    try:
        value = json.loads(text)
    except json.JSONDecodeError as exc:
        raise RayServeException(
            f"--resources must be a JSON object such as '{{\"TPU\": 4}}': {exc}"
        ) from None
    if not isinstance(value, dict) or not all(
        isinstance(v, int | float) and v >= 0 for v in value.values()
    ):
        raise RayServeException(
            "--resources must be a JSON object of resource names to non-negative numbers, "
            "e.g. '{\"TPU\": 4}'."
        )
    return {str(k): float(v) for k, v in value.items()}


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="schooner", description="Serve Python models and business logic."
    )
    sub = parser.add_subparsers(dest="command", required=True)
    run = sub.add_parser("run", help="Run an application in the foreground until Ctrl-C.")
    run.add_argument(
        "import_path", help="module:app or path/to/file.py:app (an Application or a builder)"
    )
    run.add_argument("args", nargs="*", help="key=value arguments for an application builder")
    run.add_argument("--host", default="127.0.0.1", help="HTTP host (default 127.0.0.1)")
    run.add_argument("--port", type=int, default=8000, help="HTTP port (default 8000)")
    run.add_argument("--name", default="default", help="application name (default 'default')")
    run.add_argument("--route-prefix", default="/", help="route prefix (default '/')")
    run.add_argument(
        "--app-dir",
        "-d",
        default=".",
        help="directory to import the application from (default '.')",
    )
    run.add_argument(
        "--num-cpus",
        type=float,
        default=None,
        help="CPUs replicas may reserve; makes CPUs a hard limit (default: detected, soft)",
    )
    run.add_argument(
        "--num-gpus", type=float, default=None, help="GPUs of this node (default: detected)"
    )
    run.add_argument(
        "--resources", default=None, help="custom resources as JSON, e.g. '{\"TPU\": 4}'"
    )
    run.set_defaults(func=_cmd_run)
    return parser


def main(argv: Sequence[str] | None = None) -> None:
    parser = build_parser()
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.WARNING, format="%(levelname)s %(message)s")
    try:
        code = args.func(args)
    except RayServeException as exc:
        print(f"Error: {exc}", file=sys.stderr)
        code = 1
    sys.exit(code)


if __name__ == "__main__":
    main()
