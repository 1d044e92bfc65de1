"""Options of a whole instance: HTTP and gRPC proxies, proxy location, controller,
logging and tracing (re-exported by :mod:`schooner.config`, Ray's home for them).
"""

from __future__ import annotations

import logging
import warnings
from enum import StrEnum
from typing import Annotated, Any, Literal, Self

from pydantic import BaseModel, BeforeValidator, ConfigDict, Field, field_validator, model_validator

from schooner.proxy.http_server import DEFAULT_MAX_REQUEST_BODY_BYTES

__all__ = [
    "ControllerOptions",
    "EncodingType",
    "HTTPOptions",
    "LoggingConfig",
    "ProxyLocation",
    "TracingConfig",
    "gRPCOptions",
]


class EncodingType(StrEnum):
    TEXT = "TEXT"
    JSON = "JSON"


_LOGRECORD_ATTRS = frozenset(logging.makeLogRecord({}).__dict__) | {"asctime", "message"}


def _upper_encoding(value: Any) -> Any:
    if isinstance(value, EncodingType):
        return value.value
    return value.upper() if isinstance(value, str) else value


def _level_name(value: Any) -> Any:
    if isinstance(value, bool):
        raise ValueError(f"unknown log level {value!r}")
    if isinstance(value, int):
        name = logging.getLevelName(value)
        if name.startswith("Level "):
            raise ValueError(f"unknown log level {value}")
        return name
    if isinstance(value, str):
        if value.upper() not in logging.getLevelNamesMapping():
            levels = ", ".join(logging.getLevelNamesMapping())
            raise ValueError(f"unknown log level {value!r}; use one of {levels}")
        return value.upper()
    return value


class LoggingConfig(BaseModel):
    """Log options of the instance, an application or a deployment (unknown keys rejected)."""

    model_config = ConfigDict(extra="forbid")

    encoding: Annotated[Literal["TEXT", "JSON"], BeforeValidator(_upper_encoding)] = "TEXT"
    log_level: Annotated[str, BeforeValidator(_level_name)] = "INFO"
    logs_dir: str | None = None
    enable_access_log: bool = True
    additional_log_standard_attrs: list[str] = Field(default_factory=list)

    @field_validator("additional_log_standard_attrs")
    @classmethod
    def _known_attrs(cls, value: list[str]) -> list[str]:
        for attr in value:
            if attr not in _LOGRECORD_ATTRS:
                raise ValueError(f"unknown LogRecord attribute {attr!r}")
        return list(dict.fromkeys(value))


class TracingConfig(BaseModel):
    """Distributed tracing options (off by default)."""

    model_config = ConfigDict(extra="forbid")

    enabled: bool = False
    exporter_import_path: str = ""
    sampling_ratio: float = Field(default=0.01, ge=0.0, le=1.0)


class ProxyLocation(StrEnum):
    """Where proxies run. ``"NoServer"`` (Ray 1.x) is accepted for ``Disabled``."""

    Disabled = "Disabled"
    HeadOnly = "HeadOnly"
    EveryNode = "EveryNode"

    @classmethod
    def _missing_(cls, value: object) -> ProxyLocation | None:
        return cls.Disabled if value == "NoServer" else None


class HTTPOptions(BaseModel):
    """Options of the HTTP proxies; fixed while an instance runs. Unknown keys are ignored.

    ``host`` defaults to ``127.0.0.1``, which is what ``serve.start()`` binds in
    Ray (localhost); Ray's *config-file* schema defaults to ``0.0.0.0`` instead,
    see :class:`schooner.schema.HTTPOptionsSchema`. ``host=None`` disables proxies.
    ``max_request_body_bytes`` is a Schooner extension: larger request bodies get 413.
    """

    model_config = ConfigDict(validate_assignment=True)

    host: str | None = "127.0.0.1"
    port: int = Field(default=8000, ge=0, le=65535)
    root_path: str = ""
    request_timeout_s: float | None = None
    max_request_body_bytes: int = Field(default=DEFAULT_MAX_REQUEST_BODY_BYTES, gt=0)
    keep_alive_timeout_s: int = 90
    ssl_keyfile: str | None = None
    ssl_certfile: str | None = None
    ssl_keyfile_password: str | None = None
    ssl_ca_certs: str | None = None
    location: ProxyLocation | None = None  # deprecated: use proxy_location

    @field_validator("location")
    @classmethod
    def _deprecated_location(cls, value: ProxyLocation | None) -> ProxyLocation | None:
        if value is not None:
            warnings.warn(
                "HTTPOptions.location is deprecated; use proxy_location instead.",
                DeprecationWarning,
                stacklevel=2,
            )
        return value

    @model_validator(mode="after")
    def _check(self) -> Self:
        if bool(self.ssl_keyfile) != bool(self.ssl_certfile):
            raise ValueError("ssl_keyfile and ssl_certfile must be given together to enable HTTPS")
        return self


class gRPCOptions(BaseModel):
    """Options of the gRPC proxy. No servicer functions means no gRPC server."""

    port: int = Field(default=9000, ge=0, le=65535)
    grpc_servicer_functions: list[str] = Field(default_factory=list)
    request_timeout_s: float | None = None
    enable_reflection: bool = True


class ControllerOptions(BaseModel):
    """Options of the controller process: only ``runtime_env.env_vars`` (as Ray 2.60)."""

    model_config = ConfigDict(extra="forbid")

    runtime_env: dict[str, dict[str, str]] | None = None

    @field_validator("runtime_env")
    @classmethod
    def _only_env_vars(cls, value: dict[str, dict[str, str]] | None) -> Any:
        if value is not None and set(value) - {"env_vars"}:
            bad = sorted(set(value) - {"env_vars"})
            raise ValueError(f"only 'env_vars' is supported in runtime_env, got {bad}")
        return value
