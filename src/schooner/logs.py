"""Process logging: one file per process in the session's ``logs/`` directory.

Each line carries the component (controller, proxy, replica), the deployment
and replica id, and the id of the request being served, e.g.::

    INFO 2026-11-22 10:00:00,123 replica default#Model#ab12cd34 req=5f0e... model.py:12 - hello

Replicas also copy their ``print`` output and log lines to the terminal of
the process that started the instance, prefixed with
``(ServeReplica:app:Deployment pid=N)``, and into their log file.
"""

from __future__ import annotations

import io
import json
import logging
import os
import sys
import threading
from collections import deque
from collections.abc import Callable
from pathlib import Path
from typing import Any, TextIO

LINE_FORMAT = (
    "%(levelname)s %(asctime)s %(component)s %(replica)s "
    "req=%(request_id)s %(filename)s:%(lineno)d - %(message)s"
)


#: Environment variable holding the instance-wide ``LoggingConfig`` as JSON (set when the
#: instance is started with ``serve.start(logging_config=...)``; read once per process).
LOGGING_CONFIG_ENV = "SCHOONER_LOGGING_CONFIG"


class JSONFormatter(logging.Formatter):
    """One JSON object per line (``LoggingConfig(encoding="JSON")``), with Ray's field names."""

    def __init__(self, extra_attrs: list[str] | None = None) -> None:
        super().__init__()
        self.extra_attrs = extra_attrs or []

    def format(self, record: logging.LogRecord) -> str:
        entry: dict[str, Any] = {
            "asctime": self.formatTime(record),
            "levelname": record.levelname,
            "message": record.getMessage(),
            "filename": record.filename,
            "lineno": record.lineno,
            "component_name": getattr(record, "component", ""),
            "replica": getattr(record, "replica", "-"),
            "request_id": getattr(record, "request_id", "-"),
        }
        for attr in self.extra_attrs:
            entry[attr] = getattr(record, attr, None)
        if record.exc_info:
            entry["exc_text"] = self.formatException(record.exc_info)
        return json.dumps(entry, default=str)


def instance_logging_config() -> dict[str, Any]:
    """The instance-wide logging config given to ``serve.start`` (empty: the defaults)."""
    raw = os.environ.get(LOGGING_CONFIG_ENV)
    if not raw:
        return {}
    try:
        value = json.loads(raw)
    except ValueError:
        return {}
    return value if isinstance(value, dict) else {}


#: The last lines this process logged, for the dashboard (see :func:`recent_lines`).
RECENT_LINES = 200
_recent: deque[str] = deque(maxlen=RECENT_LINES)


def recent_lines(limit: int = RECENT_LINES) -> list[str]:
    """The last ``limit`` formatted lines this process logged (oldest first)."""
    lines = list(_recent)
    return lines[-limit:] if limit < len(lines) else lines


class _RecentLines(logging.Handler):
    """Keeps the last :data:`RECENT_LINES` formatted records in memory."""

    def emit(self, record: logging.LogRecord) -> None:
        try:
            _recent.append(self.format(record))
        except Exception:
            self.handleError(record)


class AccessLog:
    """Access lines of one process: the proxy's one per HTTP request, a replica's one
    per call it serves (``logging_config.enable_access_log``).

    ``record`` is called on the hot path, once per request: it must not do I/O itself.
    """

    def __init__(self, component: str, enabled: bool | None = None) -> None:
        self.component = component
        if enabled is None:
            enabled = bool(instance_logging_config().get("enable_access_log", True))
        self.enabled = enabled
        self._logger = logging.getLogger(f"schooner.access.{component}")

    def record(
        self,
        *,
        method: str,
        route: str,
        status: int | str,
        latency_ms: float,
        request_id: str,
        application: str = "",
        deployment: str = "",
        client: str = "",
    ) -> None:
        """One finished request (proxy) or call (replica; ``method`` is the
        deployment method's name, ``status`` ``OK``/``ERROR``/``CANCELLED``)."""
        if not self.enabled:
            return
        self._logger.info(
            "%s %s %s %.1fms",
            method,
            route,
            status,
            latency_ms,
            extra={"request_id_override": request_id, "route": route, "application": application},
        )


class _ContextFilter(logging.Filter):
    def __init__(self, component: str, replica: str, request_id: Callable[[], str] | None) -> None:
        super().__init__()
        self.component = component
        self.replica = replica
        self.request_id = request_id

    def filter(self, record: logging.LogRecord) -> bool:
        record.component = self.component
        record.replica = self.replica
        record.request_id = (self.request_id() if self.request_id else "") or "-"
        return True


class _Tee(io.TextIOBase):
    """A text stream that writes to a log file and, line-prefixed, to the terminal."""

    def __init__(self, terminal: TextIO | None, logfile: TextIO, prefix: str) -> None:
        self._terminal = terminal
        self._logfile = logfile
        self._prefix = prefix
        self._lock = threading.Lock()
        self._at_line_start = True

    def writable(self) -> bool:
        return True

    def write(self, text: str) -> int:
        with self._lock:
            self._logfile.write(text)
            self._logfile.flush()
            if self._terminal is not None:
                out = []
                for piece in text.splitlines(keepends=True):
                    if self._at_line_start:
                        out.append(self._prefix)
                    out.append(piece)
                    self._at_line_start = piece.endswith("\n")
                try:
                    self._terminal.write("".join(out))
                    self._terminal.flush()
                except (OSError, ValueError):
                    self._terminal = None
        return len(text)

    def flush(self) -> None:
        with self._lock:
            self._logfile.flush()

    def fileno(self) -> int:
        return self._logfile.fileno()


def setup_process_logging(
    logs_dir: Path,
    file_stem: str,
    component: str,
    *,
    replica: str = "-",
    echo_prefix: str | None = None,
    request_id: Callable[[], str] | None = None,
    level: str | int | None = None,
) -> Path:
    """Send this process's logging (and, with ``echo_prefix``, stdout/stderr) to its log file.

    The level and encoding (TEXT or JSON) come from the instance-wide logging config
    (:func:`instance_logging_config`) unless ``level`` is given. Returns the log file's path.
    """
    config = instance_logging_config()
    if level is None:
        level = str(config.get("log_level") or "INFO")
    logs_dir.mkdir(parents=True, exist_ok=True)
    path = logs_dir / f"{file_stem}.log"
    logfile = open(path, "a", buffering=1, encoding="utf-8")  # noqa: SIM115 - lives with the process
    os.chmod(path, 0o600)
    root = logging.getLogger()
    for handler in list(root.handlers):
        root.removeHandler(handler)
    if echo_prefix is not None:
        sys.stdout = _Tee(sys.__stdout__, logfile, echo_prefix)
        sys.stderr = _Tee(sys.__stderr__, logfile, echo_prefix)
        stream: Any = sys.stderr
    else:
        stream = logfile
    handler = logging.StreamHandler(stream)
    if config.get("encoding") == "JSON":
        handler.setFormatter(JSONFormatter(config.get("additional_log_standard_attrs")))
    else:
        handler.setFormatter(logging.Formatter(LINE_FORMAT))
    context_filter = _ContextFilter(component, replica, request_id)
    handler.addFilter(context_filter)
    root.addHandler(handler)
    recent = _RecentLines()
    recent.setFormatter(logging.Formatter(LINE_FORMAT))
    recent.addFilter(context_filter)
    root.addHandler(recent)
    root.setLevel(level)
    return path
