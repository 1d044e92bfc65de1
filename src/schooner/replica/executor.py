"""Running sync user code off the event loop, cheaply.

A plain ``ThreadPoolExecutor`` starts a thread for every call that arrives
while the others are busy: a burst of 32 quick requests makes 32 threads that
then fight over the GIL. This executor instead starts with one worker and
adds one (up to ``max_workers``) only when work is queued and every worker has
been on its current call for at least ``SPAWN_AFTER_S``. Quick calls are
drained by one thread however many arrive; a slow call holds its thread while
a new one takes the rest of the work, so it never blocks the replica's other
requests for more than about ``SPAWN_AFTER_S``.

Results come back to the loop in batches: one ``call_soon_threadsafe`` per
batch, not per call.
"""

from __future__ import annotations

import asyncio
import contextvars
import queue
import threading
import time
from collections import deque
from collections.abc import Callable
from typing import Any

#: How long a queued call may wait before another worker thread is started.
SPAWN_AFTER_S = 0.001
#: Idle workers beyond the first exit after this long.
IDLE_EXIT_S = 30.0

_STOP = object()
_Job = tuple[asyncio.Future[Any], contextvars.Context, Callable[..., Any], tuple[Any, ...]]


class SyncExecutor:
    """A bounded, lazily growing thread pool bound to one event loop."""

    def __init__(
        self, loop: asyncio.AbstractEventLoop, max_workers: int, name: str = "replica"
    ) -> None:
        self._loop = loop
        self._max_workers = max(1, max_workers)
        self._name = name
        self._queue: queue.SimpleQueue[Any] = queue.SimpleQueue()
        self._lock = threading.Lock()
        self._workers = 0
        self._idle = 0
        self._queued = 0
        self._job_started: dict[int, float] = {}  # worker id -> when its current call began
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
        with self._lock:
            self._queued += 1
            need_first = self._workers == 0
            busy = self._queued > self._idle  # more work than waiting workers
        self._queue.put((fut, contextvars.copy_context(), fn, args))
        if need_first:
            self._spawn()
        elif busy and not self._check_scheduled:
            self._check_scheduled = True
            self._loop.call_later(SPAWN_AFTER_S, self._check_backlog)
        return fut

    def _check_backlog(self) -> None:
        self._check_scheduled = False
        now = time.monotonic()
        with self._lock:
            waiting = self._queued > self._idle
            busy = list(self._job_started.values())
            can_grow = self._workers < self._max_workers
        stuck = all(now - started >= SPAWN_AFTER_S for started in busy)
        if waiting and can_grow:
            if stuck:
                self._spawn()
            if not self._check_scheduled:
                self._check_scheduled = True
                self._loop.call_later(SPAWN_AFTER_S, self._check_backlog)

    def _spawn(self) -> None:
        with self._lock:
            if self._workers >= self._max_workers or self._closed:
                return
            self._workers += 1
            first = self._workers == 1
        threading.Thread(
            target=self._work, args=(first,), name=f"{self._name}-worker", daemon=True
        ).start()

    def _work(self, permanent: bool) -> None:
        me = threading.get_ident()
        while True:
            with self._lock:
                self._idle += 1
            try:
                job = self._queue.get(timeout=None if permanent else IDLE_EXIT_S)
            except queue.Empty:
                with self._lock:
                    self._idle -= 1
                    self._workers -= 1
                return
            with self._lock:
                self._idle -= 1
                if job is not _STOP:
                    self._queued -= 1
                    self._job_started[me] = time.monotonic()
            if job is _STOP:
                with self._lock:
                    self._workers -= 1
                return
            fut, ctx, fn, args = job
            try:
                result = ctx.run(fn, *args)
            except BaseException as exc:
                self._deliver(fut, False, exc)
            else:
                self._deliver(fut, True, result)
            with self._lock:
                self._job_started.pop(me, None)

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
            workers = self._workers
        for _ in range(workers):
            self._queue.put(_STOP)
