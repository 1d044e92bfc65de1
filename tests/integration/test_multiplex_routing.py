"""End to end: model-aware routing of ``@serve.multiplexed`` requests over HTTP and handles.

Three replicas of two model slots each serve three models. Once every model has
been loaded somewhere and the replicas' reports have reached this process's
router (polled with a deadline), every request for a model, from the proxy or
from a handle, lands on the replica that holds it, and no model is loaded twice.
"""

from __future__ import annotations

import asyncio
import random
import sys
from pathlib import Path

import httpx
import pytest
from starlette.requests import Request

import schooner as serve
from schooner import _core
from schooner.multiplex import get_multiplexed_model_id, multiplexed
from schooner.rpc.messages import DeploymentID, ReplicaSet

sys.path.insert(0, str(Path(__file__).parent))
from helpers import wait_for

APP = "muxroute"
MODELS = ("m1", "m2", "m3")
REQUESTS_PER_MODEL = 10
IN_FLIGHT = 6  # below max_ongoing_requests: a holder always has a free slot


@serve.deployment(num_replicas=3, max_ongoing_requests=16)
class Models:
    def __init__(self) -> None:
        self.loads: list[str] = []

    @multiplexed(max_num_models_per_replica=2)
    async def get_model(self, model_id: str) -> str:
        self.loads.append(model_id)
        await asyncio.sleep(0.05)
        return model_id

    def _me(self) -> str:
        return serve.get_replica_context().replica_id.unique_id

    async def __call__(self, request: Request | None = None) -> dict:
        model = await self.get_model(get_multiplexed_model_id())
        return {"model": model, "replica": self._me()}

    def stats(self) -> dict:
        return {"replica": self._me(), "loads": list(self.loads)}


def _reported_models(key: str) -> dict[str, tuple[str, ...]]:
    """Model id -> replicas holding it, in the replica set this process's routers have."""
    # The registry's latest snapshot: what the handle's router routes by.
    value = _core.get_core().registry._values.get(key)
    if not isinstance(value, ReplicaSet):
        return {}
    found: dict[str, tuple[str, ...]] = {}
    for replica in value.replicas:
        for model_id in replica.model_ids:
            found[model_id] = (*found.get(model_id, ()), replica.replica_id)
    return found


async def _http_requests(url: str, model_ids: list[str]) -> list[dict]:
    limit = asyncio.Semaphore(IN_FLIGHT)
    async with httpx.AsyncClient(base_url=url, timeout=30) as client:

        async def one(model_id: str) -> dict:
            async with limit:
                headers = {"serve_multiplexed_model_id": model_id}
                response = await client.get("/mux", headers=headers)
            assert response.status_code == 200, response.text
            return dict(response.json())

        return await asyncio.gather(*(one(m) for m in model_ids))


def _handle_requests(handle: serve.DeploymentHandle, model_ids: list[str]) -> list[dict]:
    results: list[dict] = []
    for start in range(0, len(model_ids), IN_FLIGHT):
        batch = [
            handle.options(multiplexed_model_id=m).remote()
            for m in model_ids[start : start + IN_FLIGHT]
        ]
        results.extend(response.result(timeout_s=30) for response in batch)
    return results


def _loads_per_replica(handle: serve.DeploymentHandle) -> dict[str, list[str]]:
    """Every replica's loads (plain calls reach replicas at random: ask until all three
    answered)."""
    seen: dict[str, list[str]] = {}

    def ask() -> bool:
        stats = handle.stats.remote().result(timeout_s=30)
        seen[stats["replica"]] = stats["loads"]
        return len(seen) == 3

    wait_for(ask, timeout_s=60, interval_s=0, message="stats from all three replicas")
    return seen


@pytest.mark.both_backends
def test_each_model_stays_on_one_replica_and_loads_once(clean) -> None:
    handle = serve.run(Models.bind(), name=APP, route_prefix="/mux")
    key = DeploymentID("Models", APP).key

    # Warm-up: one request per model over HTTP (each finds a replica with a free model slot).
    warm = asyncio.run(_http_requests(clean.url, list(MODELS)))
    assert [w["model"] for w in warm] == list(MODELS)
    handle.stats.remote().result(timeout_s=30)  # this process's router is subscribed now

    def all_reported() -> dict[str, tuple[str, ...]] | None:
        found = _reported_models(key)
        return found if set(found) == set(MODELS) else None

    reported = wait_for(
        all_reported,
        timeout_s=30,
        message=f"the replicas' reports of {MODELS} to reach this process's router",
    )
    assert all(len(holders) == 1 for holders in reported.values()), reported

    rng = random.Random(14)
    model_ids = [m for m in MODELS for _ in range(REQUESTS_PER_MODEL)]
    rng.shuffle(model_ids)
    over_http = asyncio.run(_http_requests(clean.url, model_ids))
    rng.shuffle(model_ids)
    over_handle = _handle_requests(handle, model_ids)

    served: dict[str, set[str]] = {}
    for answer in [*warm, *over_http, *over_handle]:
        served.setdefault(answer["model"], set()).add(answer["replica"])
    for model_id in MODELS:
        assert served[model_id] == set(reported[model_id]), (
            f"requests for {model_id} went to {sorted(served[model_id])}; the replica that "
            f"reported it is {reported[model_id]}; all: {served}"
        )

    loads = _loads_per_replica(handle)
    total = sorted(m for replica_loads in loads.values() for m in replica_loads)
    assert total == sorted(MODELS), f"model loads per replica: {loads}"
