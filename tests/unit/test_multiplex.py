"""@multiplexed on an event loop, no processes: LRU cache, eviction and unloading,
shared loads, failures, cancellation, validation, get_multiplexed_model_id().
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable, Coroutine
from typing import Any

import pytest

from schooner import context
from schooner.multiplex import _multiplexed_model_ids, get_multiplexed_model_id, multiplexed

TIMEOUT_S = 10.0


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


class Model:
    def __init__(self, model_id: str) -> None:
        self.model_id = model_id


class Server:
    """A deployment-like class with a multiplexed loader that records loads and unloads."""

    def __init__(self) -> None:
        self.loads: list[str] = []
        self.unloads: list[str] = []
        self.gate: asyncio.Event | None = None  # when set, loads wait for it
        self.loading = 0
        self.max_loading = 0
        self.fail: set[str] = set()
        self.unload_style = "async"

    @multiplexed(max_num_models_per_replica=2)
    async def get_model(self, model_id: str) -> Model:
        self.loads.append(model_id)
        self.loading += 1
        self.max_loading = max(self.max_loading, self.loading)
        try:
            if self.gate is not None:
                await self.gate.wait()
            if model_id in self.fail:
                raise OSError(f"cannot load {model_id}")
        finally:
            self.loading -= 1
        model = Model(model_id)
        # __del__ set on the instance: only the cache calls it (the collector looks at the class).
        if self.unload_style == "async":

            async def unload() -> None:
                self.unloads.append(model_id)

            model.__del__ = unload  # type: ignore[attr-defined]
        elif self.unload_style == "sync":
            model.__del__ = lambda: self.unloads.append(model_id)  # type: ignore[attr-defined]
        elif self.unload_style == "raises":

            def broken() -> None:
                raise RuntimeError("cannot unload")

            model.__del__ = broken  # type: ignore[attr-defined]
        return model

    @multiplexed(max_num_models_per_replica=-1)
    async def get_any(self, model_id: str) -> str:
        self.loads.append(model_id)
        return model_id.upper()


def test_a_loaded_model_is_cached() -> None:
    async def test() -> None:
        s = Server()
        first = await s.get_model("a")
        assert first.model_id == "a"
        assert await s.get_model("a") is first
        assert s.loads == ["a"]
        assert "a" in _multiplexed_model_ids()

    run(test)


def test_least_recently_used_model_is_evicted_and_its_async_del_awaited() -> None:
    async def test() -> None:
        s = Server()
        await s.get_model("a")
        await s.get_model("b")
        await s.get_model("a")  # "b" is now the least recently used
        await s.get_model("c")
        assert s.unloads == ["b"]
        await s.get_model("a")
        await s.get_model("b")  # evicts "c"
        assert s.loads == ["a", "b", "c", "b"]
        assert s.unloads == ["b", "c"]

    run(test)


def test_sync_del_is_called_and_a_failing_one_is_logged(caplog: pytest.LogCaptureFixture) -> None:
    async def test() -> None:
        s = Server()
        s.unload_style = "sync"
        for model_id in ("a", "b", "c"):
            await s.get_model(model_id)
        assert s.unloads == ["a"]
        s.unload_style = "raises"
        for model_id in ("d", "e", "f"):
            await s.get_model(model_id)  # evicting "d" fails: logged, "f" still loads
        assert (await s.get_model("f")).model_id == "f"

    with caplog.at_level(logging.ERROR, logger="schooner.multiplex"):
        run(test)
    assert "Unloading model 'd' failed." in caplog.text


def test_unbounded_cache_never_evicts() -> None:
    async def test() -> None:
        s = Server()
        for i in range(20):
            assert await s.get_any(f"m{i}") == f"M{i}"
        for i in range(20):
            await s.get_any(f"m{i}")
        assert len(s.loads) == 20

    run(test)


def test_concurrent_calls_for_one_model_share_one_load() -> None:
    async def test() -> None:
        s = Server()
        s.gate = asyncio.Event()
        calls = [asyncio.ensure_future(s.get_model("a")) for _ in range(5)]
        await until(lambda: s.loading == 1)
        s.gate.set()
        models = await asyncio.gather(*calls)
        assert s.loads == ["a"]
        assert all(m is models[0] for m in models)

    run(test)


def test_models_load_one_at_a_time_and_the_limit_holds() -> None:
    async def test() -> None:
        s = Server()
        s.gate = asyncio.Event()
        calls = [asyncio.ensure_future(s.get_model(m)) for m in ("a", "b", "c", "d")]
        await until(lambda: s.loading == 1)
        s.gate.set()
        models = await asyncio.gather(*calls)
        assert [m.model_id for m in models] == ["a", "b", "c", "d"]
        assert s.max_loading == 1
        assert s.unloads == ["a", "b"]  # never more than 2 models at once
        cache = s.__dict__[next(k for k in s.__dict__ if k.startswith("_schooner_multiplex_"))]
        assert list(cache.models) == ["c", "d"]

    run(test)


def test_failed_load_reaches_every_waiter_and_caches_nothing() -> None:
    async def test() -> None:
        s = Server()
        s.fail = {"bad"}
        s.gate = asyncio.Event()
        calls = [asyncio.ensure_future(s.get_model("bad")) for _ in range(3)]
        await until(lambda: s.loading == 1)
        s.gate.set()
        results = await asyncio.gather(*calls, return_exceptions=True)
        assert all(isinstance(e, OSError) for e in results)
        s.fail = set()
        assert (await s.get_model("bad")).model_id == "bad"  # tried again
        assert s.loads == ["bad", "bad"]

    run(test)


def test_cancelled_caller_leaves_the_load_to_the_others() -> None:
    async def test() -> None:
        s = Server()
        s.gate = asyncio.Event()
        first = asyncio.ensure_future(s.get_model("a"))
        second = asyncio.ensure_future(s.get_model("a"))
        await until(lambda: s.loading == 1)
        first.cancel()
        await until(first.cancelled)
        s.gate.set()
        assert (await second).model_id == "a"
        assert (await s.get_model("a")) is await second
        assert s.loads == ["a"]

    run(test)


def test_each_instance_has_its_own_cache() -> None:
    async def test() -> None:
        a, b = Server(), Server()
        assert await a.get_model("x") is not await b.get_model("x")
        assert a.loads == ["x"] and b.loads == ["x"]

    run(test)


def test_plain_function_loader_and_bare_decorator() -> None:
    loads: list[str] = []

    @multiplexed
    async def load(model_id: str) -> str:
        loads.append(model_id)
        return model_id * 2

    async def test() -> None:
        assert await load("ab") == "abab"
        assert await load("ab") == "abab"

    run(test)
    run(test)  # a second event loop still finds the cached model
    assert loads == ["ab"]


def test_model_id_must_be_a_non_empty_string() -> None:
    async def test() -> None:
        s = Server()
        with pytest.raises(TypeError, match="model ID must be a string"):
            await s.get_model(3)
        with pytest.raises(ValueError, match="model ID cannot be empty"):
            await s.get_model("")
        with pytest.raises(TypeError, match="exactly one argument"):
            await s.get_model("a", "b")  # type: ignore[call-arg]

    run(test)


def test_get_multiplexed_model_id_reads_the_request_context() -> None:
    async def test() -> None:
        assert get_multiplexed_model_id() == ""
        context._request_context.set(context.RequestContext(multiplexed_model_id="m1"))
        assert get_multiplexed_model_id() == "m1"

    run(test)


@pytest.mark.parametrize(
    ("value", "error", "message"),
    [
        (0, ValueError, "must be >= 1, or -1 for no limit"),
        (-2, ValueError, "must be >= 1, or -1 for no limit"),
        ("3", TypeError, "max_num_models_per_replica must be an integer"),
        (True, TypeError, "max_num_models_per_replica must be an integer"),
    ],
)
def test_invalid_max_num_models_per_replica(value: Any, error: type, message: str) -> None:
    with pytest.raises(error, match=message):
        multiplexed(max_num_models_per_replica=value)


def test_loader_must_be_async_and_take_a_model_id() -> None:
    def sync(model_id: str) -> str:
        return model_id

    async def no_args() -> None:
        return None

    async def too_many(self: Any, model_id: str, extra: int) -> None:
        return None

    with pytest.raises(TypeError, match=r"'async def'.*must be async"):
        multiplexed(sync)
    with pytest.raises(TypeError, match="must take the model id"):
        multiplexed(no_args)
    with pytest.raises(TypeError, match="must take the model id"):
        multiplexed(max_num_models_per_replica=2)(too_many)
    with pytest.raises(TypeError, match="can only decorate functions or methods"):
        multiplexed(3)  # type: ignore[arg-type]
