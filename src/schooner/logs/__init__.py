"""Process logging: one file per process, in TEXT or JSON, rotated by size.

Files (stable names, for a log agent's glob): ``controller.log``, ``proxy.log`` and
``replica_<app>_<deployment>_<replica id>.log`` in the session's ``logs/``
directory, or in ``logging_config.logs_dir`` when set. Each line carries the
component (controller, proxy, replica), the application, deployment and replica,
and the id and route of the request being served. TEXT, e.g.::

    INFO 2026-11-22 10:00:00,123 replica default#Model#ab12cd34 req=5f0e... model.py:12 - hello

JSON: one object per line with Ray Serve's field names (see :mod:`schooner.logs.output`).

Which ``LoggingConfig`` applies where: :mod:`schooner.logs.settings`. Access
lines: :mod:`schooner.logs.access`. Replicas also copy their ``print`` output and
log lines to the terminal of the process that started the instance, prefixed
with ``(ServeReplica:app:Deployment pid=N)``, and into their log file.
"""

from __future__ import annotations

import logging
import os
import sys
from collections import deque
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from schooner.logs.access import ACCESS, FLUSH_INTERVAL_S, AccessBuffer, AccessLog
from schooner.logs.output import (
    ContextFilter,
    FormattedSink,
    JSONFormatter,
    LogContext,
    LogFile,
    Sink,
    Tee,
    TextFormatter,
    stream_line_formatter,
)
from schooner.logs.settings import (
    LOGGING_CONFIG_ENV,
    LogSettings,
    Rotation,
    deployment_logging_config,
    effective_logging_config,
    instance_logging_config,
    log_file_path,
    replica_file_stem,
)

__all__ = [
    "FLUSH_INTERVAL_S",
    "LOGGING_CONFIG_ENV",
    "RECENT_LINES",
    "AccessLog",
    "JSONFormatter",
    "LogSettings",
    "TextFormatter",
    "configure_process_logging",
    "current_log_file",
    "deployment_logging_config",
    "effective_logging_config",
    "flush",
    "instance_logging_config",
    "log_file_path",
    "recent_lines",
    "replica_file_stem",
    "setup_process_logging",
]

#: Loggers whose records a replica's user code expects in the replica's file: they must
#: reach the root logger (on a Ray worker, Ray gives ``ray`` a handler of its own and
#: stops it propagating).
USER_FACING_LOGGERS = ("ray", "ray.serve", "schooner")

#: The last lines this process logged, for the dashboard (see :func:`recent_lines`).
RECENT_LINES = 200
_recent: deque[str] = deque(maxlen=RECENT_LINES)


def recent_lines(limit: int = RECENT_LINES) -> list[str]:
    """The last ``limit`` lines this process logged (oldest first), in the TEXT format
    whatever the file's encoding, access lines included."""
    lines = list(_recent)
    return lines[-limit:] if limit < len(lines) else lines


class _RecentLines(logging.Handler):
    """Keeps the last :data:`RECENT_LINES` formatted records in memory."""

    def emit(self, record: logging.LogRecord) -> None:
        try:
            _recent.append(self.format(record))
        except Exception:
            self.handleError(record)


class ProcessHandler(logging.Handler):
    """The root logger's handler: formats a record and writes it to the process's sink,
    after any queued access lines (so the file stays in time order)."""

    def __init__(self, sink: Sink, access: AccessBuffer) -> None:
        super().__init__()
        self.sink = sink
        self.access = access

    def emit(self, record: logging.LogRecord) -> None:
        try:
            line = self.format(record) + "\n"
            self.access.flush()
            self.sink.write(line)
        except Exception:
            self.handleError(record)

    def flush(self) -> None:
        self.access.flush()


@dataclass
class _ProcessLogging:
    default_dir: Path
    stem: str
    context: LogContext
    context_filter: ContextFilter
    rotation: Rotation
    settings: LogSettings
    logfile: LogFile
    tee: tuple[Tee, Tee] | None
    handler: ProcessHandler
    level_override: str | int | None

    @property
    def sink(self) -> Sink:
        return FormattedSink(self.tee[1]) if self.tee is not None else self.logfile


_process: _ProcessLogging | None = None


def _formatter(settings: LogSettings) -> logging.Formatter:
    attrs = settings.additional_log_standard_attrs
    return JSONFormatter(attrs) if settings.json else TextFormatter(attrs)


def _to_recent(lines: list[str]) -> None:
    _recent.extend(lines)


def setup_process_logging(
    logs_dir: Path,
    file_stem: str,
    component: str,
    *,
    replica: str = "-",
    echo_prefix: str | None = None,
    request_id: Callable[[], str] | None = None,
    request_context: Callable[[], Any] | None = None,
    application: str = "",
    deployment: str = "",
    replica_id: str = "",
    level: str | int | None = None,
    config: Mapping[str, Any] | None = None,
) -> Path:
    """Send this process's logging (and, with ``echo_prefix``, stdout/stderr) to its log
    file; returns the file's path.

    ``config``: the process's ``LoggingConfig`` as a dict (default: the one in
    :data:`LOGGING_CONFIG_ENV`); ``level`` overrides its ``log_level``. ``logs_dir`` is
    where the file goes unless the config sets ``logs_dir``. ``request_context`` returns
    the current request's context (``request_id``, ``route``, ``app_name``);
    ``request_id`` (older form) only its id. ``replica`` is the TEXT lines' second column
    (default ``app#deployment#replica_id`` when those are given).
    """
    global _process
    if config is None:
        config = instance_logging_config()
    settings = LogSettings.from_config(config)
    if request_context is None and request_id is not None:
        get_id = request_id

        def request_context() -> Any:
            return _RequestId(get_id())

    text_id = replica
    if text_id == "-" and replica_id:
        text_id = f"{application}#{deployment}#{replica_id}"
    context = LogContext(
        component=component,
        application=application,
        deployment=deployment,
        replica=replica_id,
        component_id=replica_id or str(os.getpid()),
        text_id=text_id,
    )
    rotation = Rotation.from_env()
    path = log_file_path(logs_dir, config, file_stem)
    logfile = LogFile(path, rotation)
    tee: tuple[Tee, Tee] | None = None
    if echo_prefix is not None:
        tee = (Tee(sys.__stdout__, logfile, echo_prefix), Tee(sys.__stderr__, logfile, echo_prefix))
        sys.stdout, sys.stderr = tee
    root = logging.getLogger()
    for old in list(root.handlers):
        root.removeHandler(old)
    context_filter = ContextFilter(context, request_context)
    handler = ProcessHandler(FormattedSink(tee[1]) if tee is not None else logfile, ACCESS)
    handler.addFilter(context_filter)
    root.addHandler(handler)
    recent = _RecentLines()
    recent.setFormatter(TextFormatter())
    recent.addFilter(context_filter)
    root.addHandler(recent)
    if component == "replica":
        for name in USER_FACING_LOGGERS:
            logging.getLogger(name).propagate = True
    old_process, _process = (
        _process,
        _ProcessLogging(
            default_dir=logs_dir,
            stem=file_stem,
            context=context,
            context_filter=context_filter,
            rotation=rotation,
            settings=settings,
            logfile=logfile,
            tee=tee,
            handler=handler,
            level_override=level,
        ),
    )
    _apply(_process, settings)
    if old_process is not None and old_process.logfile is not logfile:
        old_process.logfile.close()
    return path


class _RequestId:
    __slots__ = ("request_id",)
    route = ""
    app_name = ""

    def __init__(self, request_id: str) -> None:
        self.request_id = request_id


def _apply(process: _ProcessLogging, settings: LogSettings) -> None:
    process.settings = settings
    formatter = _formatter(settings)
    process.handler.setFormatter(formatter)
    if process.tee is not None:
        for name, tee in zip(("stdout", "stderr"), process.tee, strict=True):
            tee.flush()
            tee.wrap = (
                stream_line_formatter(name, process.context_filter, formatter)
                if settings.json
                else None
            )
    level = process.level_override if process.level_override is not None else settings.log_level
    logging.getLogger().setLevel(level)
    if process.context.component == "replica":
        # Their own level decides for records logged through them (and for their
        # children): where Ray is imported it has set `ray` to INFO, which would hide a
        # deployment's DEBUG lines.
        for name in USER_FACING_LOGGERS:
            logging.getLogger(name).setLevel(level)
    # Access lines go to the file only, never to the terminal a replica's output is copied
    # to: one line per request there is noise, and costs the replica time on every request.
    ACCESS.configure(process.logfile, process.context, settings, _to_recent)


def configure_process_logging(config: Mapping[str, Any] | None) -> Path | None:
    """Apply a changed ``LoggingConfig`` to this process without a restart (level,
    encoding, access log, extra attributes, and ``logs_dir``: the file moves there).
    Returns the log file's path (None if logging was never set up here)."""
    process = _process
    if process is None:
        return None
    settings = LogSettings.from_config(config)
    path = log_file_path(process.default_dir, config, process.stem)
    if path != process.logfile.path:
        ACCESS.flush()
        old = process.logfile
        process.logfile = LogFile(path, process.rotation)
        if process.tee is not None:
            for tee in process.tee:
                tee.logfile = process.logfile
        else:
            process.handler.sink = process.logfile
        old.close()
    if settings != process.settings:
        _apply(process, settings)
        logging.getLogger("schooner").info("logging config changed: %s", dict(config or {}))
    return path


def current_log_file() -> Path | None:
    """This process's log file (None if logging was never set up here)."""
    return _process.logfile.path if _process is not None else None


def flush() -> None:
    """Write queued access lines now (call before ``os._exit``)."""
    ACCESS.flush()
