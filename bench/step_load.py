"""Load in steps of connections, and the replica count polled meanwhile (``autoscale``).

- :class:`ReplicaWatch` reads the RUNNING replicas of one deployment from the
  REST API (``GET /api/serve/applications/``, on Schooner's admin port and on
  Ray's dashboard alike) every 0.25 s, from a thread, and keeps every sample.
- :func:`step_load` keeps N keep-alive HTTP connections busy, one request at a
  time on each, stepping N through the phases it is given, and logs every
  request (when it started, how long it took, whether it answered 200). A
  phase ends once it has lasted its minimum and the replica count has not
  changed for a while, or at its maximum. Connections are kept from one phase to
  the next (a step adds or closes some), so the load never pauses.

A request fails when the answer is not 200, the socket errs or no answer comes
within :data:`REQUEST_TIMEOUT_S`; the connection is then reopened.
wrk cannot do this (its phases would need one run each, whose percentiles
cannot be merged, and it cannot end a phase when the replica count settles),
so this generator runs in the suite's process, on asyncio.
"""

from __future__ import annotations

import asyncio
import json
import threading
import time
import urllib.request
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field

from bench.load import read_response

REQUEST_TIMEOUT_S = 10.0
#: Pause before reopening a connection that failed (no busy loop on a refusing port).
RECONNECT_PAUSE_S = 0.05
POLL_INTERVAL_S = 0.25


def replica_states(admin_port: int, app: str, deployment: str) -> list[str] | None:
    """The states of ``app``/``deployment``'s replicas, or None if the REST API did not
    answer or does not list that deployment."""
    url = f"http://127.0.0.1:{admin_port}/api/serve/applications/"
    try:
        with urllib.request.urlopen(url, timeout=2) as response:
            document = json.load(response)
    except (OSError, ValueError):
        return None
    apps = document.get("applications") or {}
    found = apps.get(app, {}).get("deployments", {}).get(deployment)
    if found is None:
        return None
    return [str(replica.get("state")) for replica in found.get("replicas", [])]


def running_replicas(admin_port: int, app: str, deployment: str) -> int | None:
    """How many of ``app``/``deployment``'s replicas are RUNNING (None: no answer)."""
    states = replica_states(admin_port, app, deployment)
    return None if states is None else states.count("RUNNING")


class ReplicaWatch:
    """Polls the RUNNING replicas of one deployment every 0.25 s in a thread.

    ``samples`` holds ``(perf_counter time, count)``, count None when the API did
    not answer; use it as a context manager to start and stop the thread."""

    def __init__(self, admin_port: int, app: str, deployment: str) -> None:
        self.admin_port, self.app, self.deployment = admin_port, app, deployment
        self.samples: list[tuple[float, int | None]] = []
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._poll, daemon=True)

    def __enter__(self) -> ReplicaWatch:
        self._thread.start()
        return self

    def __exit__(self, *exc_info: object) -> None:
        self._stop.set()
        self._thread.join()

    def _poll(self) -> None:
        next_at = time.perf_counter()
        while not self._stop.is_set():
            count = running_replicas(self.admin_port, self.app, self.deployment)
            self.samples.append((time.perf_counter(), count))
            next_at = max(next_at + POLL_INTERVAL_S, time.perf_counter())
            self._stop.wait(next_at - time.perf_counter())

    def answered(self, since: float = 0.0) -> list[tuple[float, int]]:
        """The samples taken at or after ``since`` that have a count."""
        return [(t, n) for t, n in self.samples if n is not None and t >= since]

    def latest(self) -> int | None:
        found = self.answered()
        return found[-1][1] if found else None

    def unchanged_for(self, now: float) -> float:
        """Seconds since the count last changed (0 before two answers)."""
        found = self.answered()
        if len(found) < 2:
            return 0.0
        last = found[-1][1]
        for t, n in reversed(found):
            if n != last:
                return now - t
        return now - found[0][0]


@dataclass(frozen=True)
class Step:
    """One phase: ``connections`` for at least ``min_s``, then until the replica count
    has held ``stable_s`` within the phase, for at most ``max_s``."""

    connections: int
    min_s: float
    stable_s: float
    max_s: float


@dataclass
class PhaseLog:
    """When a phase started and ended, and the system's CPU seconds at both instants."""

    connections: int
    started: float
    ended: float = 0.0
    cpu_s_started: float = 0.0
    cpu_s_ended: float = 0.0


@dataclass
class RequestLog:
    """Every request of a step load: start times, seconds taken, whether it was a 200."""

    started: list[float] = field(default_factory=list)
    took_s: list[float] = field(default_factory=list)
    ok: list[bool] = field(default_factory=list)

    def add(self, started: float, ok: bool) -> None:
        self.started.append(started)
        self.took_s.append(time.perf_counter() - started)
        self.ok.append(ok)


async def _one(reader: asyncio.StreamReader, writer: asyncio.StreamWriter, request: bytes) -> bool:
    writer.write(request)
    return await read_response(reader) == 200


async def _connection(port: int, request: bytes, log: RequestLog, stop: asyncio.Event) -> None:
    """One connection, one request at a time, until ``stop`` (the request in flight is
    finished first); reopened after any failure."""
    while not stop.is_set():
        started = time.perf_counter()
        try:
            reader, writer = await asyncio.wait_for(
                asyncio.open_connection("127.0.0.1", port), REQUEST_TIMEOUT_S
            )
        except (OSError, TimeoutError):
            log.add(started, False)
            await asyncio.sleep(RECONNECT_PAUSE_S)
            continue
        try:
            while not stop.is_set():
                started = time.perf_counter()
                try:
                    ok = await asyncio.wait_for(_one(reader, writer, request), REQUEST_TIMEOUT_S)
                except (OSError, TimeoutError, asyncio.IncompleteReadError, ValueError):
                    log.add(started, False)
                    break
                log.add(started, ok)
        finally:
            writer.close()
        if not stop.is_set():
            await asyncio.sleep(RECONNECT_PAUSE_S)


async def _run_steps(
    port: int, path: str, steps: Sequence[Step], watch: ReplicaWatch, cpu_s: Callable[[], float]
) -> tuple[list[PhaseLog], RequestLog]:
    request = f"GET {path} HTTP/1.1\r\nHost: 127.0.0.1:{port}\r\n\r\n".encode()
    log = RequestLog()
    open_: list[tuple[asyncio.Task[None], asyncio.Event]] = []
    closed: list[asyncio.Task[None]] = []
    phases: list[PhaseLog] = []
    for step in steps:
        phase = PhaseLog(step.connections, time.perf_counter(), cpu_s_started=cpu_s())
        phases.append(phase)
        while len(open_) < step.connections:
            stop = asyncio.Event()
            open_.append((asyncio.create_task(_connection(port, request, log, stop)), stop))
        while len(open_) > step.connections:
            task, stop = open_.pop()
            stop.set()
            closed.append(task)
        while True:
            await asyncio.sleep(POLL_INTERVAL_S)
            now = time.perf_counter()
            lasted = now - phase.started
            if lasted >= step.max_s:
                break
            held_s = min(lasted, watch.unchanged_for(now))  # within this phase
            if lasted >= step.min_s and held_s >= step.stable_s:
                break
        phase.ended, phase.cpu_s_ended = time.perf_counter(), cpu_s()
    for task, stop in open_:
        stop.set()
        closed.append(task)
    await asyncio.gather(*closed)
    return phases, log


def step_load(
    port: int, path: str, steps: Sequence[Step], watch: ReplicaWatch, cpu_s: Callable[[], float]
) -> tuple[list[PhaseLog], RequestLog, float]:
    """Run the phases; returns them, every request, and when the last request ended
    (the load stopped). ``cpu_s`` gives the CPU seconds the system has used so far."""
    phases, log = asyncio.run(_run_steps(port, path, steps, watch, cpu_s))
    return phases, log, time.perf_counter()
