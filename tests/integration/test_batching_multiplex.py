"""End to end: @batch and @multiplexed in real replicas, called over HTTP and handles.

Concurrency comes from real concurrent clients; batches still form because
the batch timeouts here are generous (they bound a batch's wait, they are
not used to synchronise the test).
"""

from __future__ import annotations

import asyncio

import httpx
import pytest
from starlette.requests import Request

import schooner as serve
from schooner.batching import batch
from schooner.multiplex import get_multiplexed_model_id, multiplexed

CLIENTS = 12


@serve.deployment(max_ongoing_requests=32, user_config={"max_batch_size": 8})
class Batched:
    def __init__(self) -> None:
        self.sizes: list[int] = []

    def reconfigure(self, config: dict) -> None:  # sync: runs in a thread of the replica
        self.double.set_max_batch_size(config["max_batch_size"])

    @batch(max_batch_size=4, batch_wait_timeout_s=0.5)
    async def double(self, requests: list[Request]) -> list[dict]:
        self.sizes.append(len(requests))
        values = [int(r.query_params["x"]) for r in requests]
        return [{"x": v, "doubled": 2 * v, "batch_size": len(values)} for v in values]

    async def __call__(self, request: Request) -> dict:
        return await self.double(request)

    @batch(max_batch_size=8, batch_wait_timeout_s=0.5)
    async def count(self, ns: list[int]):
        for step in range(max(ns)):
            yield [f"{n}:{step}" if step < n else StopIteration for n in ns]

    def stats(self) -> dict:
        return {"sizes": self.sizes, "max_batch_size": self.double.get_max_batch_size()}


@serve.deployment(max_ongoing_requests=16)
class DirectBatch:
    """Ray's other common form: __call__ itself is the batch method."""

    @batch(max_batch_size=16, batch_wait_timeout_s=0.5)
    async def __call__(self, items: list) -> list:
        return [len(items)] * len(items)


class Model:
    def __init__(self, model_id: str, unloaded: list[str]) -> None:
        self.model_id = model_id
        self.unloaded = unloaded
        self.done = False

    def __del__(self) -> None:  # called by the cache on eviction (and maybe later by the GC)
        if not self.done:
            self.done = True
            self.unloaded.append(self.model_id)


@serve.deployment(max_ongoing_requests=32)
class Multiplexed:
    def __init__(self) -> None:
        self.loads: list[str] = []
        self.unloaded: list[str] = []
        self.batches: list[tuple[str, list[str]]] = []

    @multiplexed(max_num_models_per_replica=2)
    async def get_model(self, model_id: str) -> Model:
        self.loads.append(model_id)
        await asyncio.sleep(0.2)  # a slow load, so concurrent requests overlap it
        return Model(model_id, self.unloaded)

    async def __call__(self, request: Request | None = None) -> dict:
        model = await self.get_model(get_multiplexed_model_id())
        return {"model": model.model_id, "requested": get_multiplexed_model_id()}

    @batch(max_batch_size=16, batch_wait_timeout_s=0.5)
    async def predict(self, items: list[str]) -> list[str]:
        model_id = get_multiplexed_model_id()
        self.batches.append((model_id, items))
        model = await self.get_model(model_id)
        return [f"{model.model_id}:{item}" for item in items]

    def stats(self) -> dict:
        return {"loads": self.loads, "unloaded": self.unloaded, "batches": self.batches}


async def _concurrent_gets(
    url: str, requests: list[tuple[str, dict, dict]]
) -> list[httpx.Response]:
    async with httpx.AsyncClient(base_url=url, timeout=30) as client:
        calls = [
            client.get(path, params=params, headers=headers) for path, params, headers in requests
        ]
        return await asyncio.gather(*calls)


@pytest.mark.both_backends
def test_concurrent_http_requests_are_batched(clean) -> None:
    handle = serve.run(Batched.bind(), name="batched", route_prefix="/batched")
    requests = [("/batched", {"x": str(i)}, {}) for i in range(CLIENTS)]
    responses = asyncio.run(_concurrent_gets(clean.url, requests))
    assert [r.status_code for r in responses] == [200] * CLIENTS
    bodies = [r.json() for r in responses]
    assert [b["doubled"] for b in bodies] == [2 * i for i in range(CLIENTS)]
    stats = handle.stats.remote().result()
    assert stats["max_batch_size"] == 8  # set from user_config by reconfigure()
    assert sum(stats["sizes"]) == CLIENTS
    assert max(stats["sizes"]) > 1 and max(stats["sizes"]) <= 8
    assert max(b["batch_size"] for b in bodies) == max(stats["sizes"])


def test_batched_call_method_through_handles_and_http(clean) -> None:
    handle = serve.run(DirectBatch.bind(), name="direct", route_prefix="/direct")
    responses = [handle.remote(i) for i in range(CLIENTS)]
    sizes = [r.result() for r in responses]
    assert max(sizes) > 1
    http = asyncio.run(_concurrent_gets(clean.url, [("/direct", {}, {})] * 4))
    assert all(r.status_code == 200 for r in http)


@pytest.mark.both_backends
def test_streaming_batch_through_handles(clean) -> None:
    handle = serve.run(Batched.bind(), name="batched", route_prefix=None)

    async def drain(n: int) -> list[str]:
        return [x async for x in handle.options(stream=True).count.remote(n)]

    async def consume() -> list[list[str]]:
        return await asyncio.gather(*(drain(n) for n in (3, 1, 2)))

    assert asyncio.run(consume()) == [["3:0", "3:1", "3:2"], ["1:0"], ["2:0", "2:1"]]


@pytest.mark.both_backends
def test_multiplexed_model_id_from_header_and_handle_with_lru_eviction(clean) -> None:
    handle = serve.run(Multiplexed.bind(), name="mux", route_prefix="/mux")
    header = {"serve_multiplexed_model_id": "a"}
    assert clean.http.get("/mux", headers=header).json() == {"model": "a", "requested": "a"}
    assert clean.http.get("/mux", headers=header).json()["model"] == "a"
    assert handle.options(multiplexed_model_id="b").remote().result()["model"] == "b"
    hyphen = {"serve-multiplexed-model-id": "b"}
    assert clean.http.get("/mux", headers=hyphen).json()["model"] == "b"
    stats = handle.stats.remote().result()
    assert stats["loads"] == ["a", "b"] and stats["unloaded"] == []

    # "c" does not fit next to "a" and "b": "a", the least recently used, is evicted.
    assert handle.options(multiplexed_model_id="c").remote().result()["model"] == "c"
    stats = handle.stats.remote().result()
    assert stats["loads"] == ["a", "b", "c"] and stats["unloaded"] == ["a"]

    # Concurrent requests for a model not loaded yet share one load.
    requests = [("/mux", {}, {"serve_multiplexed_model_id": "d"})] * 8
    responses = asyncio.run(_concurrent_gets(clean.url, requests))
    assert {r.json()["model"] for r in responses} == {"d"}
    stats = handle.stats.remote().result()
    assert stats["loads"] == ["a", "b", "c", "d"] and stats["unloaded"] == ["a", "b"]


def test_batches_are_split_by_multiplexed_model_id(clean) -> None:
    handle = serve.run(Multiplexed.bind(), name="mux", route_prefix=None)

    async def send() -> list[str]:
        calls = [
            handle.options(multiplexed_model_id=model_id).predict.remote(f"{model_id}{i}")
            for i in range(4)
            for model_id in ("x", "y")
        ]
        return await asyncio.gather(*calls)

    results = asyncio.run(send())
    assert results == [f"{m}:{m}{i}" for i in range(4) for m in ("x", "y")]
    stats = handle.stats.remote().result()
    for model_id, items in stats["batches"]:
        assert all(item.startswith(model_id) for item in items)
    assert sorted(stats["loads"]) == ["x", "y"]
    assert sum(len(items) for _, items in stats["batches"]) == 8
