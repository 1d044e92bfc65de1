"""serve.run(app, _local_testing_mode=True): the application runs in this process.

No instance is started: the tests check that no child process appears and that no
port is opened. They use the application the way a user test would.
"""

from __future__ import annotations

import asyncio
import os
from collections.abc import AsyncIterator, Iterator
from typing import Any

import pytest

import schooner as serve
from schooner import api
from schooner.exceptions import RayServeException
from schooner.schema import ReplicaRank


@pytest.fixture(autouse=True)
def local_only() -> Iterator[None]:
    children_before = _children()
    yield
    serve.shutdown()
    assert api._head is None and api._core.get_core_or_none() is None  # no instance started
    assert _children() == children_before


def _children() -> set[int]:
    path = f"/proc/{os.getpid()}/task/{os.getpid()}/children"
    try:
        with open(path) as f:
            return {int(p) for p in f.read().split()}
    except OSError:
        return set()


@serve.deployment(user_config={"greeting": "hello"})
class Greeter:
    def __init__(self) -> None:
        self.greeting = ""
        self.rank: ReplicaRank | None = None
        self.deleted = False

    def reconfigure(self, config: dict[str, str], rank: ReplicaRank) -> None:
        self.greeting, self.rank = config["greeting"], rank

    def greet(self, name: str) -> str:
        return f"{self.greeting} {name}"

    def whoami(self) -> tuple[str, str, int]:
        ctx = serve.get_replica_context()
        assert ctx.rank is not None and self.rank is not None
        return ctx.app_name, ctx.deployment, self.rank.rank

    def count(self, n: int) -> Iterator[int]:
        yield from range(n)

    async def acount(self, n: int) -> AsyncIterator[int]:
        for i in range(n):
            yield i

    @serve.batch(max_batch_size=4, batch_wait_timeout_s=0.5)
    async def batched(self, names: list[str]) -> list[int]:
        return [len(names)] * len(names)

    @serve.multiplexed(max_num_models_per_replica=2)
    async def load(self, model_id: str) -> str:
        return f"model:{model_id}"

    async def model(self) -> str:
        return await self.load(serve.get_multiplexed_model_id())

    def fail(self) -> None:
        raise KeyError("no such greeting")


@serve.deployment
class Front:
    def __init__(self, greeter: serve.DeploymentHandle) -> None:
        self.greeter = greeter

    async def __call__(self, name: str) -> str:
        return await self.greeter.greet.remote(name)

    def sync_call(self, name: str) -> str:
        return str(self.greeter.greet.remote(name).result())

    async def chained(self, name: str) -> str:
        return await self.greeter.greet.remote(self.greeter.greet.remote(name))


def test_run_returns_a_working_handle_without_an_instance() -> None:
    handle = serve.run(Front.bind(Greeter.bind()), _local_testing_mode=True)
    assert handle.remote("ada").result() == "hello ada"
    assert handle.sync_call.remote("bob").result() == "hello bob"
    assert handle.chained.remote("cy").result() == "hello hello cy"


def test_handles_can_be_awaited() -> None:
    handle = serve.run(Front.bind(Greeter.bind()), _local_testing_mode=True)

    async def main() -> list[str]:
        return list(await asyncio.gather(*(handle.remote(n) for n in "abc")))

    assert asyncio.run(main()) == ["hello a", "hello b", "hello c"]


def test_replica_context_rank_and_user_config() -> None:
    handle = serve.run(Greeter.bind(), name="greet", _local_testing_mode=True)
    assert handle.whoami.remote().result() == ("greet", "Greeter", 0)
    other = serve.run(
        Greeter.options(user_config={"greeting": "hi"}).bind(), name="g2", _local_testing_mode=True
    )
    assert other.greet.remote("x").result() == "hi x"


def test_streaming_sync_and_async() -> None:
    handle = serve.run(Greeter.bind(), _local_testing_mode=True).options(stream=True)
    assert list(handle.count.remote(3)) == [0, 1, 2]

    async def main() -> list[int]:
        return [i async for i in handle.acount.remote(3)]

    assert asyncio.run(main()) == [0, 1, 2]


def test_batching_and_multiplexing() -> None:
    handle = serve.run(Greeter.bind(), _local_testing_mode=True)

    async def main() -> list[Any]:
        return list(await asyncio.gather(*(handle.batched.remote(n) for n in "abcd")))

    assert asyncio.run(main()) == [4, 4, 4, 4]
    model = handle.options(multiplexed_model_id="m1").model.remote().result()
    assert model == "model:m1"


def test_user_exceptions_reach_the_caller() -> None:
    handle = serve.run(Greeter.bind(), _local_testing_mode=True)
    with pytest.raises(KeyError, match="no such greeting"):
        handle.fail.remote().result()


def test_constructor_errors_are_raised_by_run() -> None:
    @serve.deployment
    class Broken:
        def __init__(self) -> None:
            raise RuntimeError("no weights")

    with pytest.raises(RuntimeError, match="no weights"):
        serve.run(Broken.bind(), _local_testing_mode=True)


def test_unknown_handle_options_and_streaming_composition_are_refused() -> None:
    handle = serve.run(Front.bind(Greeter.bind()), _local_testing_mode=True)
    with pytest.raises(TypeError):
        handle.options(bogus=True)  # type: ignore[call-arg]
    stream = serve.run(Greeter.bind(), name="s", _local_testing_mode=True).options(stream=True)
    gen = stream.count.remote(2)
    with pytest.raises(TypeError, match="streaming response"):
        handle.remote(gen).result()


def test_shutdown_stops_local_apps() -> None:
    handle = serve.run(Greeter.bind(), _local_testing_mode=True)
    serve.shutdown()
    with pytest.raises(RayServeException, match="not running"):
        handle.greet.remote("x")


def test_run_many_in_local_testing_mode() -> None:
    handles = serve.run_many(
        [serve.RunTarget(Greeter.bind(), name="a"), serve.RunTarget(Greeter.bind(), name="b")],
        _local_testing_mode=True,
    )
    assert [h.greet.remote("z").result() for h in handles] == ["hello z", "hello z"]
