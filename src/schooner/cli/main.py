"""The ``schooner`` command."""

from __future__ import annotations

import argparse
import importlib
import io
import json
import logging
import os
import sys
from collections.abc import Callable, Sequence
from typing import Any

from schooner.exceptions import RayServeException


def parse_resources(text: str | None) -> dict[str, float] | None:
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


def _add_ray_address(p: argparse.ArgumentParser) -> None:
    p.add_argument(
        "--ray-address",
        default=os.environ.get("SCHOONER_RAY_ADDRESS") or None,
        metavar="ADDRESS",
        help="run on this Ray cluster (HOST:PORT of its GCS, or 'auto'; default "
        "$SCHOONER_RAY_ADDRESS): replicas become Ray actors (needs `pip install schooner[ray]`)",
    )


def _add_address(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--address",
        "-a",
        default=None,
        help="admin API URL of the instance (default: $SCHOONER_ADDRESS or http://127.0.0.1:8265)",
    )


def _add_resources(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--num-cpus",
        type=float,
        default=None,
        help="CPUs replicas may reserve; makes CPUs a hard limit (default: detected, soft)",
    )
    parser.add_argument(
        "--num-gpus", type=float, default=None, help="GPUs of this node (default: detected)"
    )
    parser.add_argument(
        "--resources", default=None, help="custom resources as JSON, e.g. '{\"TPU\": 4}'"
    )


def _add_rollout(sub: Any) -> None:
    """``schooner rollout`` (see :mod:`schooner.cli.rollout_cmd`)."""
    p = sub.add_parser(
        "rollout",
        help="Move an application's traffic to another one step by step, with checks.",
        description="Move APP's traffic to the application --to in steps; after each "
        "--interval the new application's error rate and p99 latency are compared with "
        "the limits, and all traffic goes back to the old version at once if one is "
        "exceeded. Follows the rollout until it ends unless --detach is given (Ctrl-C "
        "stops following, not the rollout). Exit code 0: SUCCEEDED; 1: ROLLED_BACK or "
        "ABORTED.",
    )
    p.add_argument("app", metavar="APP", help="the application callers use (its route)")
    p.add_argument("--to", default=None, metavar="NEW_APP", help="the application to roll out")
    p.add_argument(
        "--steps", default="5,25,50,100", help="the new application's share in percent, in order"
    )
    p.add_argument(
        "--interval", default="30s", help="time per step before its check (30s, 2m, 500ms)"
    )
    p.add_argument("--max-error-rate", type=str, default=None, help="e.g. 0.01 (1%% of requests)")
    p.add_argument("--max-p99-ms", type=str, default=None, help="p99 latency limit in ms")
    p.add_argument(
        "--min-requests",
        type=str,
        default="10",
        help="requests the new application must get in a step before it is judged (default 10)",
    )
    p.add_argument("--retire", action="store_true", help="scale the old application to 0 when done")
    p.add_argument("--detach", action="store_true", help="start it and return at once")
    action = p.add_mutually_exclusive_group()
    action.add_argument("--status", action="store_true", help="print where the rollout stands")
    action.add_argument("--pause", action="store_true", help="freeze the current weight")
    action.add_argument("--resume", action="store_true", help="go on after --pause")
    action.add_argument("--abort", action="store_true", help="put all traffic back on the old app")
    _add_address(p)
    p.set_defaults(handler="schooner.cli.rollout_cmd:cmd_rollout")


def resolve_handler(target: str) -> Callable[[argparse.Namespace], int]:
    """A command's handler from ``module:function``. Handlers are imported only when their
    command runs, so ``schooner run`` starts the instance before importing anything heavy."""
    module, _, name = target.partition(":")
    func: Callable[[argparse.Namespace], int] = getattr(importlib.import_module(module), name)
    return func


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="schooner", description="Serve Python models and business logic."
    )
    sub = parser.add_subparsers(dest="command", required=True)

    p = sub.add_parser(
        "run",
        help="Run an application or a config file in the foreground until Ctrl-C.",
        description="Run an application (import path) or a config file (YAML) in the "
        "foreground. Uses a running `schooner start` instance if there is one, else starts "
        "its own, which stops with this command.",
    )
    p.add_argument(
        "target",
        metavar="IMPORT_PATH_OR_CONFIG",
        help="module:app, path/to/file.py:app (an Application or a builder), or config.yaml",
    )
    p.add_argument("args", nargs="*", help="key=value arguments for an application builder")
    p.add_argument("--host", default="127.0.0.1", help="HTTP host (default 127.0.0.1)")
    p.add_argument("--port", type=int, default=8000, help="HTTP port (default 8000)")
    p.add_argument("--name", default="default", help="application name (default 'default')")
    p.add_argument("--route-prefix", default="/", help="route prefix (default '/')")
    p.add_argument("--app-dir", "-d", default=".", help="directory to import the application from")
    p.add_argument(
        "--reload", action="store_true", help="redeploy whenever a file of the app changes"
    )
    p.add_argument(
        "--admin-port",
        type=int,
        default=None,
        help="admin API port of an instance this command starts (default 8265 when free; -1: none)",
    )
    p.add_argument(
        "--metrics-port",
        type=int,
        default=None,
        help="also serve Prometheus metrics (/metrics) on this port of 127.0.0.1",
    )
    _add_address(p)
    _add_resources(p)
    _add_ray_address(p)
    p.set_defaults(handler="schooner.cli.run:cmd_run")

    p = sub.add_parser(
        "start",
        help="Start a long-running instance in the background.",
        description="Start a detached instance that keeps running after this command; "
        "deploy to it with `schooner deploy`, stop it with `schooner shutdown`.",
    )
    p.add_argument("--http-host", default="127.0.0.1", help="HTTP host (default 127.0.0.1)")
    p.add_argument("--http-port", type=int, default=8000, help="HTTP port (default 8000)")
    p.add_argument("--admin-host", default="127.0.0.1", help="admin API host (default 127.0.0.1)")
    p.add_argument("--admin-port", type=int, default=8265, help="admin API port (default 8265)")
    p.add_argument(
        "--metrics-port",
        type=int,
        default=None,
        help="also serve Prometheus metrics (/metrics) on this port of the admin host "
        "(they are always at the admin API's /metrics)",
    )
    p.add_argument(
        "--probe-port",
        type=int,
        default=None,
        help="also answer the health probes (/api/healthz, /api/local_raylet_healthz, "
        "/api/gcs_healthz), and nothing else, on this port (KubeRay probes 52365)",
    )
    p.add_argument(
        "--block",
        action="store_true",
        help="stay in the foreground until the instance stops; SIGTERM stops it (containers)",
    )
    p.add_argument(
        "--proxy-location",
        default="EveryNode",
        choices=["EveryNode", "HeadOnly", "Disabled"],
        help="where HTTP proxies run (default EveryNode; Disabled: no HTTP)",
    )
    p.add_argument(
        "--checkpoint-path",
        default=None,
        metavar="URI",
        help="where the goal state is checkpointed and recovered from: file:///DIR, "
        "redis://HOST:PORT/DB, s3://BUCKET/PREFIX or custom://module.Class/ARG "
        "(default: the session directory, which only survives a head crash)",
    )
    p.add_argument("--ssl-certfile", default=None, help="serve HTTPS with this certificate (PEM)")
    p.add_argument("--ssl-keyfile", default=None, help="the certificate's private key (PEM)")
    p.add_argument(
        "--ssl-keyfile-password",
        default=None,
        help="password of an encrypted key (or set $SCHOONER_SSL_KEYFILE_PASSWORD, which "
        "keeps it off the command line)",
    )
    p.add_argument(
        "--ssl-ca-certs", default=None, help="CA certificates to load (PEM), as uvicorn's"
    )
    p.add_argument("--grpc-port", type=int, default=9000, help="gRPC port (default 9000)")
    p.add_argument(
        "--grpc-servicer-functions",
        action="append",
        default=[],
        metavar="IMPORT_PATH",
        help="serve gRPC with this generated add_*Servicer_to_server function (module.function; "
        "repeat for several services; none: no gRPC server)",
    )
    reflection = p.add_mutually_exclusive_group()
    reflection.add_argument(
        "--grpc-enable-reflection",
        dest="grpc_enable_reflection",
        action="store_true",
        default=True,
        help="offer gRPC server reflection (the default)",
    )
    reflection.add_argument(
        "--grpc-disable-reflection",
        dest="grpc_enable_reflection",
        action="store_false",
        help="offer no gRPC server reflection",
    )
    _add_resources(p)
    _add_ray_address(p)
    p.set_defaults(handler="schooner.cli.instance:cmd_start")

    p = sub.add_parser("shutdown", help="Stop a running instance and everything it started.")
    p.add_argument("--yes", "-y", action="store_true", help="don't ask for confirmation")
    _add_address(p)
    p.set_defaults(handler="schooner.cli.instance:cmd_shutdown")

    p = sub.add_parser(
        "build", help="Write a config file listing every deployment and setting of apps."
    )
    p.add_argument("import_paths", nargs="+", metavar="IMPORT_PATH")
    p.add_argument("--output", "-o", default=None, help="file to write (default: stdout)")
    p.add_argument("--app-dir", "-d", default=".", help="directory to import the applications from")
    p.set_defaults(handler="schooner.cli.config_cmds:cmd_build")

    p = sub.add_parser(
        "deploy",
        help="Send a config file to a running instance (returns at once).",
        description="Send a config file (or one import path) to the instance's admin API. "
        "The instance converges to it: applications in it are deployed or updated, "
        "applications deployed by earlier configs and missing from it are deleted.",
    )
    p.add_argument("config_or_import_path", metavar="CONFIG_OR_IMPORT_PATH")
    p.add_argument("args", nargs="*", help="key=value arguments for the application builder")
    _add_address(p)
    p.set_defaults(handler="schooner.cli.config_cmds:cmd_deploy")

    p = sub.add_parser("config", help="Print the latest config the instance received.")
    p.add_argument("--name", "-n", default=None, help="only this application")
    _add_address(p)
    p.set_defaults(handler="schooner.cli.config_cmds:cmd_config")

    p = sub.add_parser("status", help="Print the status of applications and deployments.")
    p.add_argument("--name", "-n", default=None, help="only this application")
    _add_address(p)
    p.set_defaults(handler="schooner.cli.config_cmds:cmd_status")

    from schooner.cli import traffic_cmd

    traffic_cmd.add_parser(sub, _add_address)
    _add_rollout(sub)
    return parser


def _whole_lines() -> None:
    """Write each line of the CLI's output in one piece, even under ``python -u`` /
    ``PYTHONUNBUFFERED`` (where ``print`` sends text and newline separately), so that
    lines replicas print to the same terminal never land inside one of ours."""
    for stream in (sys.stdout, sys.stderr):
        if isinstance(stream, io.TextIOWrapper):
            stream.reconfigure(line_buffering=True, write_through=False)


def main(argv: Sequence[str] | None = None) -> None:
    parser = build_parser()
    args = parser.parse_args(argv)
    _whole_lines()
    logging.basicConfig(level=logging.WARNING, format="%(levelname)s %(message)s")
    try:
        code = resolve_handler(args.handler)(args)
    except RayServeException as exc:
        print(f"Error: {exc}", file=sys.stderr)
        code = 1
    sys.exit(code)


if __name__ == "__main__":
    main()
