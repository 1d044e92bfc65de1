"""The options of ``serve.start()``: checked, normalized, and compared with a running instance.

``serve.start(proxy_location=, http_options=, grpc_options=, logging_config=,
tracing_config=, controller_options=)`` sets options of the whole instance. They
take effect only when the instance starts (as in Ray): given to a process that
connects to an instance already running, the ones that differ are reported in a
warning and ignored. ``grpc_options.grpc_servicer_functions`` are imported here, so a
bad import path fails before anything starts.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field
from typing import Any

from schooner.grpc_servicers import SYS_PATH_ENV, load_servicer_functions, starter_sys_path
from schooner.instance_config import (
    ControllerOptions,
    HTTPOptions,
    LoggingConfig,
    ProxyLocation,
    TracingConfig,
    gRPCOptions,
)
from schooner.logs import LOGGING_CONFIG_ENV
from schooner.telemetry.tracing import TRACING_ENV

__all__ = [
    "LOGGING_CONFIG_ENV",
    "StartOptions",
    "ignored_options",
    "normalize",
    "warn_ignored",
]

logger = logging.getLogger("schooner")


@dataclass
class StartOptions:
    """``serve.start``'s options, validated; ``given`` names the ones the caller set."""

    proxy_location: ProxyLocation = ProxyLocation.EveryNode
    http: HTTPOptions = field(default_factory=HTTPOptions)
    grpc: gRPCOptions = field(default_factory=gRPCOptions)
    logging: LoggingConfig = field(default_factory=LoggingConfig)
    tracing: TracingConfig = field(default_factory=TracingConfig)
    controller: ControllerOptions = field(default_factory=ControllerOptions)
    given: frozenset[str] = frozenset()

    @property
    def serves_http(self) -> bool:
        return self.proxy_location != ProxyLocation.Disabled and self.http.host is not None

    def head_env(self) -> dict[str, str]:
        """Environment of the instance's processes: the controller's ``env_vars`` and the
        instance-wide logging config (when not the default)."""
        runtime_env = self.controller.runtime_env or {}
        env = dict(runtime_env.get("env_vars", {}))
        if "logging_config" in self.given:
            env[LOGGING_CONFIG_ENV] = self.logging.model_dump_json()
        if self.tracing.enabled:
            env[TRACING_ENV] = self.tracing.model_dump_json()
        if self.grpc.grpc_servicer_functions:
            env[SYS_PATH_ENV] = starter_sys_path()
        return env


def _model(cls: Any, value: Any, what: str) -> Any:
    if value is None:
        return cls()
    if isinstance(value, cls):
        return value
    if isinstance(value, dict):
        return cls.model_validate(value)
    raise TypeError(f"{what} must be a dict or a {cls.__name__}, got {type(value).__name__}")


def normalize(
    proxy_location: Any = None,
    http_options: Any = None,
    grpc_options: Any = None,
    logging_config: Any = None,
    tracing_config: Any = None,
    controller_options: Any = None,
) -> StartOptions:
    """Validate ``serve.start``'s arguments; refuse or warn about what is not supported."""
    given = {
        name
        for name, value in (
            ("proxy_location", proxy_location),
            ("http_options", http_options),
            ("grpc_options", grpc_options),
            ("logging_config", logging_config),
            ("tracing_config", tracing_config),
            ("controller_options", controller_options),
        )
        if value is not None
    }
    http = _model(HTTPOptions, http_options, "http_options")
    if proxy_location is None and http.location is not None:
        proxy_location = http.location  # the deprecated HTTPOptions.location
    location = ProxyLocation(proxy_location or ProxyLocation.EveryNode)
    grpc = _model(gRPCOptions, grpc_options, "grpc_options")
    # Imported now (ServeConfigError naming the entry) so a bad path fails before start-up.
    load_servicer_functions(grpc.grpc_servicer_functions)
    logging_options = _model(LoggingConfig, logging_config, "logging_config")
    tracing = _model(TracingConfig, tracing_config, "tracing_config")
    return StartOptions(
        proxy_location=location,
        http=http,
        grpc=grpc,
        logging=logging_options,
        tracing=tracing,
        controller=_model(ControllerOptions, controller_options, "controller_options"),
        given=frozenset(given),
    )


def _http_differences(wanted: HTTPOptions, running: dict[str, Any]) -> list[str]:
    values = wanted.model_dump(mode="json", exclude={"location"})
    return sorted(k for k, v in values.items() if k in running and running[k] != v)


def ignored_options(options: StartOptions, details: dict[str, Any]) -> list[str]:
    """Options the caller gave that differ from those of the running instance
    (``details``: its ``ServeInstanceDetails`` as a dict)."""
    ignored: list[str] = []
    if "proxy_location" in options.given:
        running = details.get("proxy_location")
        if running is None:
            ignored.append("proxy_location")
        elif ProxyLocation(running) != options.proxy_location:
            ignored.append(f"proxy_location ({options.proxy_location.value} != {running})")
    if "http_options" in options.given:
        running_http = details.get("http_options")
        diff = _http_differences(options.http, running_http) if running_http else ["?"]
        if diff:
            ignored.append(f"http_options {diff}")
    if "grpc_options" in options.given:
        running_grpc = details.get("grpc_options")
        wanted = options.grpc.model_dump(mode="json")
        if not running_grpc:
            ignored.append("grpc_options")
        else:
            diff = sorted(k for k, v in wanted.items() if running_grpc.get(k, v) != v)
            if diff:
                ignored.append(f"grpc_options {diff}")
    for name in ("logging_config", "tracing_config", "controller_options"):
        if name in options.given:
            ignored.append(name)
    return ignored


def warn_ignored(options: StartOptions, details: dict[str, Any]) -> None:
    """Log, as Ray does, that options given for an instance already running are ignored."""
    ignored = ignored_options(options, details)
    if ignored:
        logger.warning(
            "Schooner is already running; these options of serve.start() differ from or cannot "
            "change the running instance and are ignored: %s. Shut it down and start it again "
            "to change them.",
            "; ".join(ignored),
        )
