"""@batch on an event loop, no processes: batch sizes, timeouts, concurrency, errors,
cancellation, setters, streaming, batch_size_fn, model-id split, validation.

Waiting is by loop turns (``until``/``turns``) or on the callers' results; the only
wall-clock waits are the batch timeouts under test themselves.
"""

from __future__ import annotations

import asyncio
import contextlib
import inspect
import time
from collections.abc import AsyncIterator, Callable, Coroutine
from typing import Any

import cloudpickle
import pytest

from schooner import context
from schooner.batching import batch
from schooner.exceptions import RayServeException

TIMEOUT_S = 10.0
FOREVER_S = 1000.0  # a batch timeout that never fires during a test


def run(test: Callable[[], Coroutine[Any, Any, None]]) -> None:
    async def main() -> None:
        await asyncio.wait_for(test(), TIMEOUT_S)

    asyncio.run(main())


async def until(predicate: Callable[[], bool], what: str = "condition") -> None:
    for _ in range(500):
        if predicate():
            return
        await asyncio.sleep(0)
    raise AssertionError(f"{what} never became true")


async def turns(n: int = 30) -> None:
    for _ in range(n):
        await asyncio.sleep(0)


class Recorder:
    """A deployment-like class whose batch method records every batch it gets."""

    def __init__(self) -> None:
        self.batches: list[list[Any]] = []
        self.release: asyncio.Event | None = None  # when set, batches wait for it
        self.running = 0
        self.max_running = 0

    async def _record(self, items: list[Any]) -> list[Any]:
        self.batches.append(list(items))
        self.running += 1
        self.max_running = max(self.max_running, self.running)
        try:
            if self.release is not None:
                await self.release.wait()
        finally:
            self.running -= 1
        return [item * 10 for item in items]

    @batch(max_batch_size=4, batch_wait_timeout_s=FOREVER_S)
    async def slow_fill(self, items: list[int]) -> list[int]:
        return await self._record(items)

    @batch(max_batch_size=3, batch_wait_timeout_s=0)
    async def no_wait(self, items: list[int]) -> list[int]:
        return await self._record(items)

    @batch(max_batch_size=2, batch_wait_timeout_s=0, max_concurrent_batches=2)
    async def two_at_once(self, items: list[int]) -> list[int]:
        return await self._record(items)

    @batch(max_batch_size=10, batch_wait_timeout_s=0.05)
    async def short_wait(self, items: list[int]) -> list[int]:
        return await self._record(items)


def sizes(recorder: Recorder) -> list[int]:
    return [len(b) for b in recorder.batches]


# -- batch formation ------------------------------------------------------------------------


def test_full_batch_runs_at_once_and_results_go_to_their_callers() -> None:
    async def test() -> None:
        r = Recorder()
        results = await asyncio.gather(*(r.slow_fill(i) for i in range(4)))
        assert results == [0, 10, 20, 30]
        assert r.batches == [[0, 1, 2, 3]]

    run(test)


def test_partial_batch_waits_until_full() -> None:
    async def test() -> None:
        r = Recorder()
        waiting = [asyncio.ensure_future(r.slow_fill(i)) for i in range(3)]
        await turns()
        assert r.batches == []
        assert await r.slow_fill(3) == 30
        assert await asyncio.gather(*waiting) == [0, 10, 20]
        assert r.batches == [[0, 1, 2, 3]]

    run(test)


def test_timeout_flushes_a_partial_batch() -> None:
    async def test() -> None:
        r = Recorder()
        started = time.monotonic()
        assert await asyncio.gather(*(r.short_wait(i) for i in range(3))) == [0, 10, 20]
        assert time.monotonic() - started >= 0.045
        assert r.batches == [[0, 1, 2]]

    run(test)


def test_zero_timeout_still_batches_calls_made_together() -> None:
    async def test() -> None:
        r = Recorder()
        assert await asyncio.gather(*(r.no_wait(i) for i in range(7))) == [i * 10 for i in range(7)]
        assert r.batches == [[0, 1, 2], [3, 4, 5], [6]]

    run(test)


def test_items_wait_while_a_batch_runs_then_go_together() -> None:
    async def test() -> None:
        r = Recorder()
        r.release = asyncio.Event()
        first = asyncio.ensure_future(r.no_wait(0))
        await until(lambda: r.running == 1)
        rest = [asyncio.ensure_future(r.no_wait(i)) for i in range(1, 4)]
        await turns()
        assert r.batches == [[0]]  # max_concurrent_batches=1: the others wait
        r.release.set()
        assert await asyncio.gather(first, *rest) == [0, 10, 20, 30]
        assert r.batches == [[0], [1, 2, 3]]

    run(test)


def test_max_concurrent_batches() -> None:
    async def test() -> None:
        r = Recorder()
        r.release = asyncio.Event()
        calls = [asyncio.ensure_future(r.two_at_once(i)) for i in range(6)]
        await until(lambda: r.running == 2, "two batches running")
        await turns()
        assert r.running == 2 and sizes(r) == [2, 2]
        r.release.set()
        assert await asyncio.gather(*calls) == [i * 10 for i in range(6)]
        assert r.max_running == 2 and sizes(r) == [2, 2, 2]

    run(test)


def test_each_instance_has_its_own_queue() -> None:
    async def test() -> None:
        a, b = Recorder(), Recorder()
        calls = [a.slow_fill(1), b.slow_fill(2), a.slow_fill(3), b.slow_fill(4)]
        calls += [a.slow_fill(5), b.slow_fill(6), a.slow_fill(7), b.slow_fill(8)]
        await asyncio.gather(*calls)
        assert a.batches == [[1, 3, 5, 7]] and b.batches == [[2, 4, 6, 8]]

    run(test)


# -- errors and cancellation ------------------------------------------------------------------


class Failing:
    @batch(max_batch_size=3, batch_wait_timeout_s=0)
    async def boom(self, items: list[int]) -> list[int]:
        raise ValueError(f"bad batch {items}")

    @batch(max_batch_size=3, batch_wait_timeout_s=0)
    async def short(self, items: list[int]) -> list[int]:
        return items[:-1]

    @batch(max_batch_size=3, batch_wait_timeout_s=0)
    async def not_a_list(self, items: list[int]) -> Any:
        return 42


def test_exception_reaches_every_caller_of_the_batch() -> None:
    async def test() -> None:
        f = Failing()
        results = await asyncio.gather(*(f.boom(i) for i in range(3)), return_exceptions=True)
        assert all(isinstance(e, ValueError) for e in results)
        assert str(results[0]) == "bad batch [0, 1, 2]"

    run(test)


def test_result_of_the_wrong_length_or_type_is_a_clear_error() -> None:
    async def test() -> None:
        f = Failing()
        results = await asyncio.gather(*(f.short(i) for i in range(3)), return_exceptions=True)
        assert all(isinstance(e, RayServeException) for e in results)
        assert "returned 2 results for a batch of 3 inputs" in str(results[0])
        with pytest.raises(RayServeException, match=r"must return a list .* not int"):
            await f.not_a_list(1)

    run(test)


def test_cancelled_caller_is_left_out_of_its_batch() -> None:
    async def test() -> None:
        r = Recorder()
        first = asyncio.ensure_future(r.slow_fill(0))
        second = asyncio.ensure_future(r.slow_fill(1))
        await turns()
        first.cancel()
        await turns()
        results = await asyncio.gather(second, r.slow_fill(2), r.slow_fill(3), r.slow_fill(4))
        assert results == [10, 20, 30, 40]
        assert r.batches == [[1, 2, 3, 4]]
        assert first.cancelled()

    run(test)


def test_caller_cancelled_while_its_batch_runs_does_not_disturb_the_others() -> None:
    async def test() -> None:
        r = Recorder()
        r.release = asyncio.Event()
        calls = [asyncio.ensure_future(r.no_wait(i)) for i in range(3)]
        await until(lambda: r.running == 1)
        calls[1].cancel()
        r.release.set()
        assert await calls[0] == 0 and await calls[2] == 20
        assert calls[1].cancelled()

    run(test)


def test_wrong_arguments_fail_at_the_call() -> None:
    async def test() -> None:
        r = Recorder()
        with pytest.raises(TypeError):
            await r.slow_fill(1, 2)
        with pytest.raises(TypeError):
            await r.slow_fill(nope=1)
        assert r.batches == []

    run(test)


# -- settings ----------------------------------------------------------------------------------


class Tunable:
    def __init__(self) -> None:
        self.batches: list[list[int]] = []

    @batch(max_batch_size=10, batch_wait_timeout_s=FOREVER_S)
    async def handle(self, items: list[int]) -> list[int]:
        self.batches.append(items)
        return items

    def reconfigure(self, config: dict[str, Any]) -> None:
        self.handle.set_max_batch_size(config["max_batch_size"])
        self.handle.set_batch_wait_timeout_s(config["batch_wait_timeout_s"])


def test_setters_getters_and_their_effect_on_waiting_items() -> None:
    async def test() -> None:
        t = Tunable()
        assert t.handle.get_max_batch_size() == 10
        assert t.handle.get_batch_wait_timeout_s() == FOREVER_S
        assert t.handle._get_max_batch_size() == 10  # Ray's private spelling
        waiting = [asyncio.ensure_future(t.handle(i)) for i in range(3)]
        await turns()
        assert t.batches == []
        t.handle.set_max_batch_size(2)  # now full: runs without waiting for the timeout
        await until(lambda: t.batches == [[0, 1]])
        t.handle.set_batch_wait_timeout_s(0)  # the last one is now due
        assert await asyncio.gather(*waiting) == [0, 1, 2]
        assert t.batches == [[0, 1], [2]]
        assert t.handle.get_max_batch_size() == 2
        assert t.handle.get_batch_wait_timeout_s() == 0
        with pytest.raises(ValueError, match="max_batch_size must be an integer >= 1"):
            t.handle.set_max_batch_size(0)
        with pytest.raises(ValueError, match="batch_wait_timeout_s must be a number >= 0"):
            t.handle.set_batch_wait_timeout_s(-1)

    run(test)


def test_setters_work_from_a_thread_like_a_sync_reconfigure() -> None:
    async def test() -> None:
        Tunable.handle.set_max_batch_size(10)
        Tunable.handle.set_batch_wait_timeout_s(FOREVER_S)
        t = Tunable()
        waiting = [asyncio.ensure_future(t.handle(i)) for i in range(3)]
        await turns()
        config = {"max_batch_size": 3, "batch_wait_timeout_s": 0.5}
        await asyncio.to_thread(t.reconfigure, config)
        assert await asyncio.gather(*waiting) == [0, 1, 2]
        assert t.batches == [[0, 1, 2]]
        Tunable.handle.set_max_batch_size(10)
        Tunable.handle.set_batch_wait_timeout_s(FOREVER_S)

    run(test)


# -- arguments, functions, contexts ------------------------------------------------------------


def test_plain_function_and_bare_decorator() -> None:
    seen: list[list[str]] = []

    @batch
    async def upper(items: list[str]) -> list[str]:
        seen.append(items)
        return [s.upper() for s in items]

    async def test() -> None:
        assert await asyncio.gather(upper("a"), upper("b")) == ["A", "B"]
        assert seen[-1] == ["a", "b"]

    run(test)
    run(test)  # a new event loop gets a new queue
    assert len(seen) == 2


def test_several_arguments_are_batched_one_list_each() -> None:
    class Adder:
        @batch(max_batch_size=3, batch_wait_timeout_s=FOREVER_S)
        async def add(self, xs: list[int], ys: list[int], *, scale: list[int] | None = None):
            factors = scale or [1] * len(xs)
            return [(x + y) * f for x, y, f in zip(xs, ys, factors, strict=True)]

    async def test() -> None:
        a = Adder()
        assert await asyncio.gather(a.add(1, 2), a.add(3, 4), a.add(5, 6)) == [3, 7, 11]
        calls = (a.add(1, ys=1, scale=2), a.add(2, ys=2, scale=3), a.add(3, ys=3, scale=4))
        assert await asyncio.gather(*calls) == [4, 12, 24]
        mixed = await asyncio.gather(
            a.add(1, 2), a.add(1, ys=2), a.add(1, 2), return_exceptions=True
        )
        assert all(isinstance(e, TypeError) for e in mixed)
        assert "passed different arguments" in str(mixed[0])

    run(test)


def test_batches_split_by_multiplexed_model_id_and_see_it() -> None:
    seen: list[tuple[str, str, list[str]]] = []

    class Model:
        @batch(max_batch_size=10, batch_wait_timeout_s=0)
        async def predict(self, items: list[str]) -> list[str]:
            request = context.current_request()
            seen.append((request.multiplexed_model_id, request.request_id, items))
            return [f"{request.multiplexed_model_id}:{item}" for item in items]

    async def call(m: Model, model_id: str, item: str) -> str:
        context._request_context.set(
            context.RequestContext(request_id=f"req-{item}", multiplexed_model_id=model_id)
        )
        return await m.predict(item)

    async def test() -> None:
        m = Model()
        calls = [call(m, "a", "1"), call(m, "b", "2"), call(m, "a", "3"), call(m, "b", "4")]
        assert await asyncio.gather(*calls) == ["a:1", "b:2", "a:3", "b:4"]
        assert sorted(seen) == [("a", "", ["1", "3"]), ("b", "", ["2", "4"])]

    run(test)


def test_batch_size_fn_bounds_the_total_size() -> None:
    batches: list[list[str]] = []

    class Tokens:
        @batch(
            max_batch_size=10, batch_wait_timeout_s=0, batch_size_fn=lambda xs: sum(map(len, xs))
        )
        async def run(self, texts: list[str]) -> list[int]:
            batches.append(texts)
            return [len(t) for t in texts]

    async def test() -> None:
        t = Tokens()
        texts = ["aaaa", "bbbb", "cccc", "dd", "eeeeeeeeee"]
        assert await asyncio.gather(*(t.run(x) for x in texts)) == [4, 4, 4, 2, 10]
        assert batches == [["aaaa", "bbbb"], ["cccc", "dd"], ["eeeeeeeeee"]]
        with pytest.raises(RuntimeError, match="more than max_batch_size"):
            await t.run("x" * 11)

    run(test)


def test_decorated_methods_look_async_to_the_replica() -> None:
    class Both:
        @batch
        async def unary(self, items: list[int]) -> list[int]:
            return items

        @batch
        async def stream(self, items: list[int]) -> AsyncIterator[list[int]]:
            yield items

    assert inspect.iscoroutinefunction(Both().unary)
    assert inspect.isasyncgenfunction(Both().stream)
    assert Both.unary.__name__ == "unary" and Both.unary.__wrapped__ is not None


def test_decorated_class_pickles_before_and_after_use() -> None:
    async def use(cls: Any) -> None:
        t = cls()
        assert await asyncio.gather(t.handle(1), t.handle(2), t.handle(3)) == [1, 2, 3]

    Local = type("Local", (Tunable,), {})
    Local.handle = batch(max_batch_size=3, batch_wait_timeout_s=FOREVER_S)(
        Tunable.handle.__wrapped__
    )
    asyncio.run(use(cloudpickle.loads(cloudpickle.dumps(Local))))
    asyncio.run(use(Local))
    asyncio.run(use(cloudpickle.loads(cloudpickle.dumps(Local))))


# -- streaming --------------------------------------------------------------------------------


class Streamer:
    def __init__(self) -> None:
        self.closed = 0
        self.batches: list[list[int]] = []

    @batch(max_batch_size=4, batch_wait_timeout_s=FOREVER_S)
    async def count(self, ns: list[int]) -> AsyncIterator[list[Any]]:
        """Caller i gets 0..ns[i]-1, then its stream ends (StopIteration)."""
        self.batches.append(ns)
        try:
            for step in range(max(ns)):
                yield [step if step < n else StopIteration for n in ns]
        finally:
            self.closed += 1

    @batch(max_batch_size=2, batch_wait_timeout_s=FOREVER_S)
    async def fail_after_one(self, ns: list[int]) -> AsyncIterator[list[int]]:
        yield ns
        raise KeyError("stream broke")

    @batch(max_batch_size=2, batch_wait_timeout_s=FOREVER_S)
    async def endless(self, ns: list[int]) -> AsyncIterator[list[int]]:
        try:
            while True:
                yield ns
                await asyncio.sleep(0)
        finally:
            self.closed += 1


async def collect(stream: AsyncIterator[Any]) -> list[Any]:
    return [item async for item in stream]


def test_streaming_gives_each_caller_its_own_stream() -> None:
    async def test() -> None:
        s = Streamer()
        results = await asyncio.gather(*(collect(s.count(n)) for n in (3, 1, 0, 2)))
        assert results == [[0, 1, 2], [0], [], [0, 1]]
        assert s.batches == [[3, 1, 0, 2]] and s.closed == 1

    run(test)


def test_streaming_error_reaches_every_caller_after_their_items() -> None:
    async def test() -> None:
        s = Streamer()
        got: list[list[int]] = [[], []]

        async def read(i: int) -> None:
            async for item in s.fail_after_one(i + 5):
                got[i].append(item)

        results = await asyncio.gather(read(0), read(1), return_exceptions=True)
        assert all(isinstance(e, KeyError) for e in results)
        assert got == [[5], [6]]

    run(test)


def test_streaming_generator_is_closed_when_nobody_listens() -> None:
    async def test() -> None:
        s = Streamer()

        async def take_two(n: int) -> list[int]:
            out = []
            async with contextlib.aclosing(s.endless(n)) as stream:
                async for item in stream:
                    out.append(item)
                    if len(out) == 2:
                        break
            return out

        assert await asyncio.gather(take_two(1), take_two(2)) == [[1, 1], [2, 2]]
        await until(lambda: s.closed == 1, "the batch generator closed")

    run(test)


# -- validation -------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("kwargs", "error", "message"),
    [
        ({"max_batch_size": 0}, ValueError, "max_batch_size must be an integer >= 1, got 0"),
        ({"max_batch_size": "8"}, TypeError, "max_batch_size must be an integer"),
        ({"max_batch_size": 2.5}, TypeError, "max_batch_size must be an integer"),
        ({"max_batch_size": True}, TypeError, "max_batch_size must be an integer"),
        ({"batch_wait_timeout_s": -0.1}, ValueError, "batch_wait_timeout_s must be a number >= 0"),
        ({"batch_wait_timeout_s": "1"}, TypeError, "batch_wait_timeout_s must be a number"),
        ({"max_concurrent_batches": 0}, ValueError, "max_concurrent_batches must be an integer"),
        ({"batch_size_fn": 3}, TypeError, "batch_size_fn must be a callable"),
    ],
)
def test_invalid_settings_are_rejected(kwargs: dict[str, Any], error: type, message: str) -> None:
    with pytest.raises(error, match=message):
        batch(**kwargs)


def test_float_batch_size_that_is_whole_is_accepted() -> None:
    @batch(max_batch_size=4.0)
    async def f(items: list[int]) -> list[int]:
        return items

    assert f.get_max_batch_size() == 4


def test_sync_functions_and_non_callables_are_rejected() -> None:
    def sync(items: list[int]) -> list[int]:
        return items

    def gen(items: list[int]) -> Any:
        yield items

    with pytest.raises(TypeError, match=r"'async def'.*must be async"):
        batch(sync)
    with pytest.raises(TypeError, match="must be async"):
        batch(max_batch_size=2)(gen)
    with pytest.raises(TypeError, match="can only decorate functions or methods"):
        batch(3)  # type: ignore[arg-type]

    class NoArgs:
        async def f(self) -> list[int]:
            return []

    with pytest.raises(TypeError, match="must take the batch as an argument"):
        batch(NoArgs.f)
