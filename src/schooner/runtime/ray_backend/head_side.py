"""The head's connection to the Ray cluster (``python -m schooner.controller.head
--ray-address ...``): it joins as a Ray driver and builds the :class:`RayBackend`."""

from __future__ import annotations

import argparse
import logging
import os

import ray

from schooner.router.pool import set_local_node_id
from schooner.rpc.transport import format_tcp_address, set_default_secret
from schooner.runtime.ray_backend.backend import RayBackend
from schooner.runtime.ray_backend.names import NAMESPACE
from schooner.runtime.ray_backend.proxies import ProxyFleet

#: The environment variable that carries the instance secret (hex) to the head and proxies.
SECRET_ENV = "SCHOONER_SECRET"


def connect_backend(args: argparse.Namespace, proxy_args: list[str]) -> RayBackend:
    secret = bytes.fromhex(os.environ[SECRET_ENV])
    ray.init(
        address=args.ray_address,
        namespace=NAMESPACE,
        logging_level=logging.WARNING,
        log_to_driver=False,
        configure_logging=False,
    )
    set_default_secret(secret)
    node_id = ray.get_runtime_context().get_node_id()
    set_local_node_id(node_id)
    os.environ["SCHOONER_NODE_ID"] = node_id  # the head node's proxy process inherits it
    controller_address = format_tcp_address(args.controller_host, args.controller_port)
    fleet = (
        None
        if args.proxy_location == "Disabled"
        else ProxyFleet(
            args.instance_id,
            controller_address,
            secret,
            node_id,
            every_node=args.proxy_location == "EveryNode",
            http_host=args.http_host,
            http_port=args.http_port,
            proxy_args=["--root-path", args.root_path, *proxy_args],
        )
    )
    return RayBackend(args.instance_id, controller_address, secret, fleet)
