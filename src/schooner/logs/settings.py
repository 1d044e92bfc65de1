"""Which logging config a process uses, and the settings that are not in it.

``LoggingConfig`` (``schooner.config``) is set at four levels; the first one set
wins, whole (fields are not merged across levels, as in Ray):

1. the deployment's own (``@serve.deployment(logging_config=)``, ``.options()``,
   a config file's ``deployments[].logging_config``);
2. the application's (``serve.run(logging_config=)``, a config file's
   ``applications[].logging_config``), for deployments that set none;
3. the instance's (``serve.start(logging_config=)``, a config file's top-level
   ``logging_config``): what the controller and proxies use, and the fallback of
   applications and deployments that set none;
4. the defaults (TEXT, INFO, the session's ``logs/``, access log on).

Rotation is set by environment variables read once when a process sets up its
logging: ``SCHOONER_LOG_ROTATION_MAX_BYTES`` / ``SCHOONER_LOG_ROTATION_BACKUP_COUNT``,
else Ray's ``RAY_ROTATION_MAX_BYTES`` / ``RAY_ROTATION_BACKUP_COUNT``, else Ray's
defaults (512 MiB, 5 backups).
"""

from __future__ import annotations

import json
import logging
import os
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

__all__ = [
    "DEFAULT_BACKUP_COUNT",
    "DEFAULT_MAX_BYTES",
    "LOGGING_CONFIG_ENV",
    "LogSettings",
    "Rotation",
    "deployment_logging_config",
    "effective_logging_config",
    "instance_logging_config",
    "log_file_path",
    "replica_file_stem",
]

#: Environment variable holding a process's ``LoggingConfig`` as JSON. The head sets it
#: from ``serve.start(logging_config=...)`` (children inherit it: the instance-wide
#: config); a replica's is set by the controller to its deployment's effective config.
LOGGING_CONFIG_ENV = "SCHOONER_LOGGING_CONFIG"

DEFAULT_MAX_BYTES = 512 * 1024 * 1024
DEFAULT_BACKUP_COUNT = 5


@dataclass(frozen=True)
class LogSettings:
    """A ``LoggingConfig`` as this package uses it (plain data: no pydantic needed)."""

    encoding: str = "TEXT"
    log_level: str = "INFO"
    logs_dir: str | None = None
    enable_access_log: bool = True
    additional_log_standard_attrs: tuple[str, ...] = ()

    @classmethod
    def from_config(cls, config: Mapping[str, Any] | None) -> LogSettings:
        """From a ``LoggingConfig`` dumped to a dict (unknown keys ignored)."""
        config = config or {}
        level = config.get("log_level") or "INFO"
        if isinstance(level, int):
            level = logging.getLevelName(level)
        return cls(
            encoding=str(config.get("encoding") or "TEXT").upper(),
            log_level=str(level).upper(),
            logs_dir=config.get("logs_dir") or None,
            enable_access_log=bool(config.get("enable_access_log", True)),
            additional_log_standard_attrs=tuple(config.get("additional_log_standard_attrs") or ()),
        )

    @property
    def json(self) -> bool:
        return self.encoding == "JSON"

    @property
    def level_no(self) -> int:
        value = logging.getLevelName(self.log_level)
        return value if isinstance(value, int) else logging.INFO

    @property
    def access_log_on(self) -> bool:
        """Access lines are INFO lines: off when disabled or when the level is above INFO."""
        return self.enable_access_log and self.level_no <= logging.INFO


def _as_dict(config: Any) -> dict[str, Any] | None:
    if config is None:
        return None
    if isinstance(config, Mapping):
        return dict(config)
    dump = getattr(config, "model_dump", None)
    if dump is not None:
        value = dump(mode="json")
        assert isinstance(value, dict)
        return value
    raise TypeError(f"a logging config must be a dict or a LoggingConfig, got {config!r}")


def effective_logging_config(
    deployment: Any = None, application: Any = None, instance: Any = None
) -> dict[str, Any]:
    """The config a deployment's replicas use: the first level that sets one (as a dict;
    ``{}`` means the defaults). Each argument is a dict, a ``LoggingConfig`` or None."""
    for level in (deployment, application, instance):
        value = _as_dict(level)
        if value is not None:
            return value
    return {}


def deployment_logging_config(own: Any) -> dict[str, Any]:
    """The logging config of a deployment's replicas, as the controller hands it to them:
    the deployment's own (an application's ``logging_config`` was already merged into the
    deployments that set none when it was built), else the instance's (this process's
    :data:`LOGGING_CONFIG_ENV`), else the defaults (``{}``)."""
    return effective_logging_config(own, None, instance_logging_config())


def instance_logging_config(environ: Mapping[str, str] | None = None) -> dict[str, Any]:
    """This process's logging config from :data:`LOGGING_CONFIG_ENV` (``{}``: the defaults)."""
    raw = (os.environ if environ is None else environ).get(LOGGING_CONFIG_ENV)
    if not raw:
        return {}
    try:
        value = json.loads(raw)
    except ValueError:
        return {}
    return value if isinstance(value, dict) else {}


def _env_int(environ: Mapping[str, str], names: tuple[str, ...], default: int) -> int:
    for name in names:
        raw = environ.get(name, "").strip()
        if raw:
            try:
                return max(0, int(raw))
            except ValueError:
                logging.getLogger("schooner").warning("%s=%r is not an integer; ignored", name, raw)
    return default


@dataclass(frozen=True)
class Rotation:
    """When a log file rotates (``RotatingFileHandler`` semantics: 0 never rotates)."""

    max_bytes: int = DEFAULT_MAX_BYTES
    backup_count: int = DEFAULT_BACKUP_COUNT

    @classmethod
    def from_env(cls, environ: Mapping[str, str] | None = None) -> Rotation:
        env = os.environ if environ is None else environ
        return cls(
            max_bytes=_env_int(
                env,
                ("SCHOONER_LOG_ROTATION_MAX_BYTES", "RAY_ROTATION_MAX_BYTES"),
                DEFAULT_MAX_BYTES,
            ),
            backup_count=_env_int(
                env,
                ("SCHOONER_LOG_ROTATION_BACKUP_COUNT", "RAY_ROTATION_BACKUP_COUNT"),
                DEFAULT_BACKUP_COUNT,
            ),
        )


def replica_file_stem(app: str, deployment: str, replica_id: str) -> str:
    """A replica's log file name without ``.log``: ``replica_<app>_<deployment>_<id>``."""
    return f"replica_{app}_{deployment}_{replica_id}"


def log_file_path(default_dir: Path, config: Mapping[str, Any] | None, stem: str) -> Path:
    """Where a process's log file is: ``logs_dir`` if the config sets one, else ``default_dir``."""
    logs_dir = (config or {}).get("logs_dir")
    return Path(logs_dir).expanduser() / f"{stem}.log" if logs_dir else default_dir / f"{stem}.log"
