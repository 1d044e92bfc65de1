"""Running sync user code off the event loop, cheaply.

A plain ``ThreadPoolExecutor`` starts a thread for every call that arrives
while the others are busy: a burst of 32 quick requests makes 32 threads that
then fight over the GIL. This executor instead:

- starts with one worker, and adds one (up to ``max_workers``) only when work
  is queued and *no call has finished* for ``SPAWN_AFTER_S``: that is what a
  slow call looks like. Quick calls keep finishing, so however many arrive
  they are drained by one thread; a slow call holds its thread while a new one
  takes the rest of the work, so it never blocks the replica's other requests
  for more than about ``SPAWN_AFTER_S``;
- hands work to the most recently idle worker (a stack), so after a burst the
  extra workers stay idle and exit after ``IDLE_EXIT_S``;
- sends results back to the loop in batches: one ``call_soon_threadsafe``
  per batch, not per call.
"""

from __future__ import annotations

import asyncio
import contextvars
import threading
import time
from collections import deque
from collections.abc import Callable
from typing import Any

#: With work queued and no call finished for this long, another worker is started.
SPAWN_AFTER_S = 0.002
#: Idle workers beyond the first exit after this long.
IDLE_EXIT_S = 10.0

_Job = tuple[asyncio.Future[Any], contextvars.Context, Callable[..., Any], tuple[Any, ...]]


class _Worker:
    __slots__ = ("job", "permanent", "wake")

    def __init__(self, permanent: bool) -> None:
        self.permanent = permanent
        self.wake = threading.Event()
        self.job: _Job | None = None


class SyncExecutor:
    """A bounded, lazily growing thread pool bound to one event loop."""

    def __init__(
        self, loop: asyncio.AbstractEventLoop, max_workers: int, name: str = "replica"
    ) -> None:
        self._loop = loop
        self._max_workers = max(1, max_workers)
        self._name = name
        self._lock = threading.Lock()
        self._jobs: deque[_Job] = deque()
        self._parked: list[_Worker] = []  # idle workers, most recently idle last
        self._workers = 0
        self._last_finish = time.monotonic()
        self._check_scheduled = False
        self._done: deque[tuple[asyncio.Future[Any], bool, Any]] = deque()
        self._delivery_scheduled = False
        self._closed = False

    def set_max_workers(self, max_workers: int) -> None:
        """Change the bound (extra idle workers beyond it exit over time)."""
        self._max_workers = max(1, max_workers)

    def submit(self, fn: Callable[..., Any], *args: Any) -> asyncio.Future[Any]:
        """Run ``fn(*args)`` in a worker (with the caller's context variables)."""
        fut = self._loop.create_future()
        job: _Job = (fut, contextvars.copy_context(), fn, args)
        with self._lock:
            if self._parked:
                worker = self._parked.pop()
                worker.job = job
                worker.wake.set()
                return fut
            self._jobs.append(job)
            first = self._workers == 0
        if first:
            self._spawn()
        elif not self._check_scheduled:
            self._check_scheduled = True
            self._loop.call_later(SPAWN_AFTER_S, self._check_backlog)
        return fut

    def _check_backlog(self) -> None:
        self._check_scheduled = False
        with self._lock:
            waiting = bool(self._jobs)
            stalled = time.monotonic() - self._last_finish >= SPAWN_AFTER_S
            can_grow = self._workers < self._max_workers
        if not waiting:
            return
        if stalled and can_grow:
            self._spawn()
        self._check_scheduled = True
        self._loop.call_later(SPAWN_AFTER_S, self._check_backlog)

    def _spawn(self) -> None:
        with self._lock:
            if self._workers >= self._max_workers or self._closed:
                return
            self._workers += 1
            worker = _Worker(permanent=self._workers == 1)
            self._last_finish = time.monotonic()  # give the new worker its chance
        threading.Thread(
            target=self._work, args=(worker,), name=f"{self._name}-worker", daemon=True
        ).start()

    def _next_job(self, worker: _Worker) -> _Job | None:
        """The next job for ``worker``; parks it while there is none (None: exit)."""
        with self._lock:
            if self._jobs:
                return self._jobs.popleft()
            if self._closed:
                self._workers -= 1
                return None
            worker.wake.clear()
            self._parked.append(worker)
        woken = worker.wake.wait(None if worker.permanent else IDLE_EXIT_S)
        with self._lock:
            if worker.job is not None:
                job, worker.job = worker.job, None
                return job
            if not woken or self._closed:
                if worker in self._parked:
                    self._parked.remove(worker)
                self._workers -= 1
                return None
        return self._next_job(worker)

    def _work(self, worker: _Worker) -> None:
        while True:
            job = self._next_job(worker)
            if job is None:
                return
            fut, ctx, fn, args = job
            try:
                result = ctx.run(fn, *args)
            except BaseException as exc:  # handed to the awaiting caller
                self._deliver(fut, False, exc)
            else:
                self._deliver(fut, True, result)
            self._last_finish = time.monotonic()

    def _deliver(self, fut: asyncio.Future[Any], ok: bool, value: Any) -> None:
        self._done.append((fut, ok, value))
        if not self._delivery_scheduled:
            self._delivery_scheduled = True
            try:
                self._loop.call_soon_threadsafe(self._drain)
            except RuntimeError:  # loop closed: nobody is waiting any more
                pass

    def _drain(self) -> None:
        self._delivery_scheduled = False
        done = self._done
        while done:
            fut, ok, value = done.popleft()
            if fut.cancelled():
                continue
            if ok:
                fut.set_result(value)
            else:
                fut.set_exception(value)

    def shutdown(self) -> None:
        """Let the workers exit once the queued calls are done."""
        with self._lock:
            self._closed = True
            parked, self._parked = self._parked, []
        for worker in parked:
            worker.wake.set()
