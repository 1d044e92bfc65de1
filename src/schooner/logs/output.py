"""Log lines and where they go: the TEXT and JSON formats, the rotating log file,
and the stream that copies a replica's stdout/stderr to its file and the terminal.

Field names are Ray Serve's (``asctime``, ``levelname``, ``message``, ``filename``,
``lineno``, ``process``, ``exc_text``, ``component_name``, ``component_id``,
``application``, ``deployment``, ``replica``, ``request_id``, ``route``,
``timestamp_ns``); access lines add ``method``, ``status_code``, ``latency_ms``
(and ``client`` when known).
"""

from __future__ import annotations

import io
import json
import logging
import logging.handlers
import os
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol, TextIO

from schooner.logs.settings import Rotation

__all__ = [
    "FormattedSink",
    "JSONFormatter",
    "LogContext",
    "LogFile",
    "Sink",
    "TextFormatter",
    "asctime",
    "stream_line_formatter",
]

#: The attributes every ``LogRecord`` has; anything else on a record came from
#: ``extra=`` (or from us) and goes into JSON lines, as in Ray.
_STANDARD_ATTRS = frozenset(logging.makeLogRecord({}).__dict__) | {"message", "asctime"}
#: Set on records by :class:`ContextFilter`; emitted explicitly, not as extras.
_CONTEXT_ATTRS = frozenset(
    {
        "component_name",
        "component_id",
        "component_text",
        "application",
        "deployment",
        "replica",
        "request_id",
        "request_text",
        "route",
    }
)


_ENCODER = json.JSONEncoder(default=str)  # made once: json.dumps(default=) makes one per call


class Sink(Protocol):
    """Where formatted text goes (a :class:`LogFile`, or a :class:`Tee` in front of one)."""

    def write(self, text: str) -> int: ...


@dataclass(frozen=True)
class LogContext:
    """Who is logging: the process's component and, for a replica, its identity."""

    component: str  # controller, proxy or replica
    application: str = ""
    deployment: str = ""
    replica: str = ""  # the replica's id
    component_id: str = ""  # JSON ``component_id`` (the pid for the controller and proxies)
    text_id: str = "-"  # the TEXT line's second column (``app#deployment#id`` for a replica)


_time_cache: tuple[int, str] = (0, "")


def asctime(created: float) -> str:
    """``logging.Formatter``'s default time format (``2026-01-01 10:00:00,123``), with the
    seconds part formatted once per second."""
    global _time_cache
    second = int(created)
    cached = _time_cache
    if cached[0] != second:
        cached = (second, time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(created)))
        _time_cache = cached
    return f"{cached[1]},{int((created - second) * 1000):03d}"


class ContextFilter(logging.Filter):
    """Tags each record with the process's context and the request being served."""

    def __init__(self, context: LogContext, request: Callable[[], Any] | None = None) -> None:
        super().__init__()
        self.context = context
        #: Returns the current request's context (``request_id``, ``route``, ``app_name``).
        self.request = request

    def filter(self, record: logging.LogRecord) -> bool:
        ctx = self.context
        record.component_name = ctx.component
        record.component_id = ctx.component_id
        record.component_text = ctx.text_id
        record.deployment = ctx.deployment
        record.replica = ctx.replica
        request = self.request() if self.request is not None else None
        if not hasattr(record, "request_id"):
            record.request_id = (request.request_id if request is not None else "") or ""
        record.request_text = record.__dict__["request_id"] or "-"
        if not hasattr(record, "route"):
            record.route = (request.route if request is not None else "") or ""
        if not hasattr(record, "application"):
            app = request.app_name if request is not None else ""
            record.application = app or ctx.application
        return True


class TextFormatter(logging.Formatter):
    """Schooner's line format, e.g.::

        INFO 2026-11-22 10:00:00,123 replica default#Model#ab12cd34 req=5f0e model.py:12 - hi

    ``additional_log_standard_attrs`` come as ``name=value`` before the ``-``.
    """

    def __init__(self, extra_attrs: tuple[str, ...] = ()) -> None:
        extras = "".join(f"{attr}=%({attr})s " for attr in extra_attrs)
        super().__init__(
            "%(levelname)s %(asctime)s %(component_name)s %(component_text)s "
            f"req=%(request_text)s %(filename)s:%(lineno)d {extras}- %(message)s"
        )
        self.extra_attrs = extra_attrs

    def formatTime(self, record: logging.LogRecord, datefmt: str | None = None) -> str:
        return asctime(record.created) if datefmt is None else super().formatTime(record, datefmt)


class JSONFormatter(logging.Formatter):
    """One JSON object per line (``LoggingConfig(encoding="JSON")``), with Ray's field names.

    A traceback is in ``exc_text`` (the line stays one line); ``extra=`` attributes and
    ``additional_log_standard_attrs`` are added as fields.
    """

    def __init__(self, extra_attrs: tuple[str, ...] | list[str] | None = None) -> None:
        super().__init__()
        self.extra_attrs = tuple(extra_attrs or ())

    def formatTime(self, record: logging.LogRecord, datefmt: str | None = None) -> str:
        return asctime(record.created) if datefmt is None else super().formatTime(record, datefmt)

    def format(self, record: logging.LogRecord) -> str:
        get = record.__dict__.get
        entry: dict[str, Any] = {
            "asctime": self.formatTime(record),
            "levelname": record.levelname,
            "message": record.getMessage(),
            "filename": record.filename,
            "lineno": record.lineno,
            "process": record.process,
            "timestamp_ns": int(record.created * 1e9),
            "component_name": get("component_name", ""),
            "component_id": get("component_id", ""),
            "application": get("application", ""),
            "deployment": get("deployment", ""),
            "replica": get("replica", ""),
            "request_id": get("request_id", ""),
            "route": get("route", ""),
        }
        if record.exc_info and not record.exc_text:
            record.exc_text = self.formatException(record.exc_info)
        if record.exc_text:
            entry["exc_text"] = record.exc_text
        if record.stack_info:
            entry["stack_info"] = self.formatStack(record.stack_info)
        for attr in self.extra_attrs:
            entry[attr] = getattr(record, attr, None)
        for key, value in record.__dict__.items():
            if key not in _STANDARD_ATTRS and key not in _CONTEXT_ATTRS and key not in entry:
                entry[key] = value
        return _ENCODER.encode(entry)


class LogFile(logging.handlers.RotatingFileHandler):
    """A process's log file (mode 0600), rotated by size as ``RotatingFileHandler`` does
    (``name.log`` -> ``name.log.1`` ... ``name.log.<backup_count>``; 0 in either setting:
    never). Everything written to the file goes through :meth:`write`, under one lock, so
    log lines, access lines and stdout/stderr copies rotate together.

    Not attached to a logger itself: :class:`ProcessHandler` and :class:`Tee` write to it.
    """

    def __init__(self, path: Path, rotation: Rotation) -> None:
        path.parent.mkdir(parents=True, exist_ok=True)
        super().__init__(
            path,
            mode="a",
            maxBytes=rotation.max_bytes,
            backupCount=rotation.backup_count,
            encoding="utf-8",
        )
        self.path = path
        self._size = self.stream.tell() if self.stream is not None else 0

    def _open(self) -> Any:
        fd = os.open(self.baseFilename, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o600)
        os.fchmod(fd, 0o600)  # an existing file keeps its mode otherwise
        return open(fd, "a", encoding=self.encoding, errors=self.errors)

    @property
    def rotates(self) -> bool:
        return self.maxBytes > 0 and self.backupCount > 0

    def write(self, text: str) -> int:
        """Append ``text`` (whole lines, or a stdout chunk) and flush; rotate first if it
        would take the file past ``max_bytes``."""
        with self._lock():
            if self.stream is None:
                return 0  # closed
            if self.rotates and self._size and self._size + len(text) > self.maxBytes:
                self.doRollover()
                self._size = 0
            self.stream.write(text)
            self.stream.flush()
            self._size += len(text)
        return len(text)

    def _lock(self) -> threading.RLock:
        assert self.lock is not None
        return self.lock

    def emit(self, record: logging.LogRecord) -> None:
        try:
            self.write(self.format(record) + "\n")
        except Exception:
            self.handleError(record)

    def fileno(self) -> int:
        assert self.stream is not None
        return int(self.stream.fileno())


class Tee(io.TextIOBase):
    """A text stream (a replica's ``sys.stdout``/``sys.stderr``) that writes to its
    log file and, line-prefixed, to the terminal.

    With ``wrap`` set (JSON files), what user code writes is cut into lines and each
    goes to the file as ``wrap(line)`` (a JSON object), so every line of the file
    parses; the terminal still gets the text as written. Lines that are already
    formatted (log records, access lines) come in through :meth:`write_formatted`.
    """

    def __init__(
        self,
        terminal: TextIO | None,
        logfile: LogFile,
        prefix: str,
        wrap: Callable[[str], str] | None = None,
    ) -> None:
        self._terminal = terminal
        self.logfile = logfile
        self._prefix = prefix
        self.wrap = wrap
        self._lock = threading.Lock()
        self._at_line_start = True
        self._partial = ""
        self._echo_partial = ""

    def writable(self) -> bool:
        return True

    def write(self, text: str) -> int:
        with self._lock:
            wrap = self.wrap
            if wrap is None:
                self.logfile.write(text)
            else:
                pieces = (self._partial + text).split("\n")
                self._partial = pieces.pop()
                if pieces:
                    self.logfile.write("".join(wrap(piece) for piece in pieces))
            self._echo(text)
        return len(text)

    def write_formatted(self, text: str) -> int:
        """Write whole lines that are already in the file's format."""
        with self._lock:
            self.logfile.write(text)
            self._echo(text)
        return len(text)

    def _echo(self, text: str) -> None:
        """Copy ``text`` to the terminal a whole line at a time, each line prefixed and
        written in one call, so that lines of processes sharing the terminal never mix
        (``print`` writes its arguments one by one); :meth:`flush` sends what is left."""
        if self._terminal is None:
            return
        text = self._echo_partial + text
        end = text.rfind("\n") + 1
        self._echo_partial = text[end:]
        if end:
            self._send(text[:end])

    def _send(self, text: str) -> None:
        if self._terminal is None:
            return
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

    def flush(self) -> None:
        """Send an unfinished line to the terminal (``print(..., end="", flush=True)``)
        and, in a JSON file, write it as a line of its own (as Ray does)."""
        with self._lock:
            if self._partial and self.wrap is not None:
                self.logfile.write(self.wrap(self._partial))
                self._partial = ""
            if self._echo_partial:
                partial, self._echo_partial = self._echo_partial, ""
                self._send(partial)

    def fileno(self) -> int:
        return self.logfile.fileno()


class FormattedSink:
    """The :class:`Sink` of already formatted lines in front of a :class:`Tee`."""

    def __init__(self, tee: Tee) -> None:
        self.tee = tee

    def write(self, text: str) -> int:
        return self.tee.write_formatted(text)


def stream_line_formatter(
    stream: str, context_filter: ContextFilter, formatter: logging.Formatter
) -> Callable[[str], str]:
    """``wrap`` for a :class:`Tee`: one line printed to ``stream`` (``stdout``/``stderr``)
    as a formatted INFO record (tagged like any other, with ``"stream"``), as Ray logs
    a replica's redirected output."""

    def wrap(line: str) -> str:
        record = logging.LogRecord(stream, logging.INFO, stream, 0, line, None, None)
        record.filename = stream
        record.stream = stream
        context_filter.filter(record)
        return formatter.format(record) + "\n"

    return wrap
