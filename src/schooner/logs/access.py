"""Access lines: the proxy's one per HTTP request, a replica's one per call it serves.

:meth:`AccessLog.record` is on the hot path, so it only appends a tuple to an
in-memory queue. A background thread formats what is queued, every
:data:`FLUSH_INTERVAL_S`, into the process's log file (TEXT or JSON, as the
process's other lines); so does any other line the process logs, first, so the
file stays in order, and so does :func:`schooner.logs.flush` at exit.

Text as in Ray: ``GET /route 200 1.2ms`` (proxy), ``CALL method OK 1.2ms`` (replica).
"""

from __future__ import annotations

import asyncio
import atexit
import json
import os
import threading
import time
from collections import deque
from collections.abc import Callable
from typing import Any

from schooner.logs.output import LogContext, Sink, asctime
from schooner.logs.settings import LogSettings

__all__ = ["FLUSH_INTERVAL_S", "AccessBuffer", "AccessLog"]

_ENCODER = json.JSONEncoder(default=str)  # made once: json.dumps(default=) makes one per call

#: How often queued access lines are written.
FLUSH_INTERVAL_S = 0.1
#: At most this many lines wait; past it the oldest are dropped (the file cannot keep up).
MAX_PENDING = 100_000

# (created, proxy_style, method, route, status, latency_ms, request_id, application,
#  deployment, client)
_Entry = tuple[float, bool, str, str, "int | str", float, str, str, str, str]


class AccessBuffer:
    """Queued access records of one process and the thread that writes them."""

    def __init__(self) -> None:
        self.pending: deque[_Entry] = deque(maxlen=MAX_PENDING)
        #: Lines already formatted by :meth:`AccessLog.record` (TEXT without extra
        #: attributes, the default: cheaper than queueing a tuple and formatting later).
        self.lines: list[str] = []
        #: Whether :meth:`AccessLog.record` formats the line itself, and what it needs.
        self.text_fast = False
        self.head = ""
        self.second = -1
        self.stamp = ""
        #: Whether access lines are written (``enable_access_log`` and level <= INFO).
        self.on = False
        self.sink: Sink | None = None
        self.context = LogContext("")
        self.settings = LogSettings()
        #: Receives each flushed batch's TEXT lines (the recent-lines ring).
        self.on_text: Callable[[list[str]], None] | None = None
        self._flush_lock = threading.Lock()
        self._thread: threading.Thread | None = None
        self._stop = threading.Event()
        self._static: tuple[Any, str] = (None, "")
        self._loop: asyncio.AbstractEventLoop | None = None

    def configure(
        self,
        sink: Sink | None,
        context: LogContext,
        settings: LogSettings,
        on_text: Callable[[list[str]], None] | None = None,
    ) -> None:
        self.flush()  # what is queued is written as it was configured
        self.sink, self.context, self.settings, self.on_text = sink, context, settings, on_text
        self.on = sink is not None and settings.access_log_on
        self.text_fast = not settings.json and not settings.additional_log_standard_attrs
        self.head = f" {context.component} {context.text_id} req="
        if sink is not None and self._thread is None and self._loop is None:
            self._stop.clear()
            self._thread = threading.Thread(
                target=self._run, name="schooner-access-log", daemon=True
            )
            self._thread.start()
            atexit.register(self.flush)

    def use_loop(self, loop: asyncio.AbstractEventLoop) -> None:
        """Flush from ``loop`` (a timer every :data:`FLUSH_INTERVAL_S`) instead of the
        thread. Processes serving requests on an event loop call this: a second thread
        formatting lines would fight the loop for the GIL, and the loop would lose (each
        of its many system calls gives the GIL away and it waits to get it back)."""
        if self._loop is loop:
            return
        self._stop.set()
        thread, self._thread = self._thread, None
        if thread is not None and thread is not threading.current_thread():
            thread.join(5)
        self._loop = loop
        loop.call_soon(self._tick)

    def _tick(self) -> None:
        loop = self._loop
        if loop is None or loop.is_closed():
            return
        try:
            self.flush()
        except Exception:  # a full disk must not stop the timer
            pass
        loop.call_later(FLUSH_INTERVAL_S, self._tick)

    def stop(self) -> None:
        """Stop the thread (after a last flush). For tests; processes just exit."""
        self._stop.set()
        if self._thread is not None:
            self._thread.join(5)
            self._thread = None
        self.flush()

    def _run(self) -> None:
        while not self._stop.wait(FLUSH_INTERVAL_S):
            try:
                self.flush()
            except Exception:  # a full disk must not kill the thread
                pass

    @property
    def queued(self) -> int:
        """Access lines waiting to be written."""
        return len(self.pending) + len(self.lines)

    def flush(self) -> None:
        """Write what is queued (in this thread)."""
        if self.lines:
            self._flush_lines()
        pending = self.pending
        if not pending:
            return
        with self._flush_lock:
            entries = []
            try:
                while True:
                    entries.append(pending.popleft())
            except IndexError:
                pass
            sink = self.sink
            if not entries or sink is None:
                return
            settings = self.settings
            if settings.json:
                lines = [self._json_line(e) for e in entries]
            elif settings.additional_log_standard_attrs:
                lines = [self._text_line(e) for e in entries]
            else:
                lines = self._text_lines(entries)
            sink.write("".join(lines))
            if self.on_text is not None:
                tail = entries[-50:]
                if settings.json:
                    self.on_text([self._text_line(e).rstrip("\n") for e in tail])
                else:
                    self.on_text([line.rstrip("\n") for line in lines[-len(tail) :]])

    def _flush_lines(self) -> None:
        with self._flush_lock:
            lines = self.lines
            count = len(lines)
            chunk = lines[:count]
            del lines[:count]  # lines appended meanwhile (another thread) stay queued
            sink = self.sink
            if not chunk or sink is None:
                return
            sink.write("".join(chunk))
            if self.on_text is not None:
                self.on_text([line.rstrip("\n") for line in chunk[-50:]])

    @staticmethod
    def message(entry: _Entry) -> str:
        _, proxy_style, method, route, status, latency_ms, *_ = entry
        if proxy_style:
            return f"{method} {route} {status} {latency_ms:.1f}ms"
        return f"CALL {method} {status} {latency_ms:.1f}ms"

    def _attr(self, name: str, entry: _Entry) -> Any:
        """A ``LogRecord`` attribute asked for by ``additional_log_standard_attrs``."""
        created = entry[0]
        values: dict[str, Any] = {
            "name": f"schooner.access.{self.context.component}",
            "levelname": "INFO",
            "levelno": 20,
            "filename": "access",
            "module": "access",
            "lineno": 0,
            "funcName": "record",
            "process": os.getpid(),
            "created": created,
            "msecs": int((created - int(created)) * 1000),
        }
        return values.get(name)

    def _text_line(self, entry: _Entry) -> str:
        ctx = self.context
        extras = "".join(
            f"{attr}={self._attr(attr, entry)} "
            for attr in self.settings.additional_log_standard_attrs
        )
        return (
            f"INFO {asctime(entry[0])} {ctx.component} {ctx.text_id} req={entry[6] or '-'} "
            f"access {extras}- {self.message(entry)}\n"
        )

    def _text_lines(self, entries: list[_Entry]) -> list[str]:
        """:meth:`_text_line` of each entry (without extra attributes), the time's
        seconds formatted once per second: this runs for every request served."""
        ctx = self.context
        head = f" {ctx.component} {ctx.text_id} req="
        lines = []
        second = -1
        stamp = ""
        for created, proxy_style, method, route, status, latency_ms, request_id, *_ in entries:
            if int(created) != second:
                second = int(created)
                stamp = asctime(created)[:-4]
            millis = int((created - second) * 1000)
            if proxy_style:
                message = f"{method} {route} {status} {latency_ms:.1f}ms"
            else:
                message = f"CALL {method} {status} {latency_ms:.1f}ms"
            lines.append(f"INFO {stamp},{millis:03d}{head}{request_id or '-'} access - {message}\n")
        return lines

    def _static_json(self) -> str:
        """The fields every access line of this process shares, serialized once."""
        ctx = self.context
        key = (ctx, os.getpid())
        if self._static[0] != key:
            static = {
                "levelname": "INFO",
                "filename": "access",
                "lineno": 0,
                "process": key[1],
                "component_name": ctx.component,
                "component_id": ctx.component_id,
                "replica": ctx.replica,
            }
            self._static = (key, json.dumps(static)[1:-1])
        return self._static[1]

    def _json_line(self, entry: _Entry) -> str:
        created, _, method, route, status, latency_ms, request_id, app, deployment, client = entry
        ctx = self.context
        line: dict[str, Any] = {
            "asctime": asctime(created),
            "message": self.message(entry),
            "timestamp_ns": int(created * 1e9),
            "application": app or ctx.application,
            "deployment": deployment or ctx.deployment,
            "request_id": request_id,
            "route": route,
            "method": method,
            "status_code": status,
            "latency_ms": round(latency_ms, 3),
        }
        if client:
            line["client"] = client
        for attr in self.settings.additional_log_standard_attrs:
            line[attr] = self._attr(attr, entry)
        return f"{_ENCODER.encode(line)[:-1]}, {self._static_json()}}}\n"


#: This process's access lines (configured by ``setup_process_logging``).
ACCESS = AccessBuffer()


class AccessLog:
    """Access lines of one process: the proxy's one per HTTP request, a replica's one
    per call it serves (``logging_config.enable_access_log``).

    ``record`` is called on the hot path, once per request: it does no I/O and no
    formatting (see the module's docstring). ``enabled=None`` follows the process's
    logging config, also when it changes; ``True``/``False`` override it.
    """

    def __init__(
        self, component: str, enabled: bool | None = None, *, buffer: AccessBuffer | None = None
    ) -> None:
        self.component = component
        self._enabled = enabled
        self._buffer = buffer if buffer is not None else ACCESS
        self._proxy_style = component != "replica"

    def use_running_loop(self) -> None:
        """Flush this process's access lines from the running event loop, if there is one
        (see :meth:`AccessBuffer.use_loop`)."""
        try:
            loop = asyncio.get_running_loop()
        except RuntimeError:
            return
        self._buffer.use_loop(loop)

    @property
    def enabled(self) -> bool:
        buffer = self._buffer
        if self._enabled is None:
            return buffer.on
        return self._enabled and buffer.sink is not None

    @enabled.setter
    def enabled(self, value: bool | None) -> None:
        self._enabled = value

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
        buffer = self._buffer
        if not (buffer.on if self._enabled is None else self._enabled and buffer.sink):
            return
        if buffer.text_fast:
            if len(buffer.lines) >= MAX_PENDING:
                return  # the file cannot keep up: drop rather than grow without bound
            now = time.time()
            second = int(now)
            if second != buffer.second:
                buffer.second = second
                buffer.stamp = asctime(now)[:-4]
            if self._proxy_style:
                message = f"{method} {route} {status} {latency_ms:.1f}ms"
            else:
                message = f"CALL {method} {status} {latency_ms:.1f}ms"
            buffer.lines.append(
                f"INFO {buffer.stamp},{int((now - second) * 1000):03d}{buffer.head}"
                f"{request_id or '-'} access - {message}\n"
            )
            return
        buffer.pending.append(
            (
                time.time(),
                self._proxy_style,
                method,
                route,
                status,
                latency_ms,
                request_id,
                application,
                deployment,
                client,
            )
        )
