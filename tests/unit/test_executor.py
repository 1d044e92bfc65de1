"""The replica's sync executor: quick calls stay on few threads, slow ones never block others."""

from __future__ import annotations

import asyncio
import contextvars
import threading
import time

import pytest

from schooner.replica.executor import SyncExecutor


def _run(coro):
    return asyncio.run(coro)


def test_quick_calls_use_few_threads() -> None:
    async def main() -> set[int]:
        ex = SyncExecutor(asyncio.get_running_loop(), 64)
        idents = await asyncio.gather(*(ex.submit(threading.get_ident) for _ in range(500)))
        ex.shutdown()
        return set(idents)

    assert len(_run(main())) <= 4


@pytest.mark.parametrize("warm", [False, True])
def test_slow_calls_run_concurrently_up_to_max_workers(warm: bool) -> None:
    """A burst arriving while one worker idles must still fan out (the idle one takes one)."""

    async def main() -> tuple[float, int]:
        ex = SyncExecutor(asyncio.get_running_loop(), 4)
        if warm:
            await ex.submit(lambda: None)  # one worker now waits idle
        started = time.monotonic()
        idents = await asyncio.gather(*(ex.submit(_sleep_ident, 0.3) for _ in range(4)))
        ex.shutdown()
        return time.monotonic() - started, len(set(idents))

    elapsed, threads = _run(main())
    assert threads == 4
    assert elapsed < 0.3 * 2  # not one after another


def _sleep_ident(seconds: float) -> int:
    time.sleep(seconds)
    return threading.get_ident()


def test_never_more_threads_than_max_workers() -> None:
    async def main() -> int:
        ex = SyncExecutor(asyncio.get_running_loop(), 2)
        idents = await asyncio.gather(*(ex.submit(_sleep_ident, 0.05) for _ in range(8)))
        ex.shutdown()
        return len(set(idents))

    assert _run(main()) == 2


def test_exceptions_and_context_variables_reach_the_caller() -> None:
    var: contextvars.ContextVar[str] = contextvars.ContextVar("var", default="unset")

    def boom() -> None:
        raise KeyError(var.get())

    async def main() -> None:
        ex = SyncExecutor(asyncio.get_running_loop(), 2)
        var.set("from-caller")
        assert await ex.submit(var.get) == "from-caller"
        with pytest.raises(KeyError, match="from-caller"):
            await ex.submit(boom)
        ex.shutdown()

    _run(main())


def test_sustained_quick_calls_do_not_grow_the_pool() -> None:
    """Queueing alone (many quick calls) is not a reason for more threads; a stuck call is."""

    async def main() -> tuple[int, int]:
        ex = SyncExecutor(asyncio.get_running_loop(), 64)
        for _ in range(20):  # waves of 50 quick calls, like a loaded HTTP replica
            await asyncio.gather(*(ex.submit(time.sleep, 0.0001) for _ in range(50)))
        quick_threads = ex._workers
        slow = ex.submit(time.sleep, 0.3)
        quick = await asyncio.wait_for(ex.submit(threading.get_ident), 0.2)  # not behind slow
        await slow
        ex.shutdown()
        return quick_threads, quick

    quick_threads, _ = _run(main())
    # A pool that grew with the queue would have ~50 threads. A few are allowed: on a busy
    # machine a worker descheduled for a moment looks stalled and one more is started.
    assert quick_threads <= 8
