"""Router choice: shard-key affinity (rendezvous hashing) and model-aware routing.

Real Router objects fed replica sets as the controller publishes them; slots are
taken with ``try_acquire`` and given back with ``release`` on a running loop. No
process, no socket: nothing here dials a replica.
"""

from __future__ import annotations

import asyncio
from collections import Counter
from collections.abc import Callable, Coroutine
from typing import Any

import pytest

from schooner.router import router as router_module
from schooner.router.pool import ConnectionPool
from schooner.router.router import Router
from schooner.rpc.messages import DeploymentID, ReplicaInfo, ReplicaSet

DEP = DeploymentID("Model", "app")
KEYS = [f"user-{i}" for i in range(1000)]


def run(test: Callable[[], Coroutine[Any, Any, None]]) -> None:
    asyncio.run(asyncio.wait_for(test(), 5.0))


def info(replica_id: str, *model_ids: str) -> ReplicaInfo:
    return ReplicaInfo(replica_id, f"/tmp/{replica_id}.sock", DEP, model_ids=model_ids)


def replica_set(*replicas: ReplicaInfo, max_ongoing: int = 5) -> ReplicaSet:
    return ReplicaSet(tuple(replicas), max_ongoing, -1)


def make_router(*replicas: ReplicaInfo, max_ongoing: int = 5, **kw: Any) -> Router:
    router = Router(DEP, ConnectionPool(), **kw)
    router.update(replica_set(*replicas, max_ongoing=max_ongoing))
    return router


def ids(*names: str) -> list[ReplicaInfo]:
    return [info(name) for name in names]


def pick(router: Router, shard_key: str = "", model_id: str = "") -> str:
    """The replica a request goes to; its slot is given back at once."""
    replica = router.try_acquire(shard_key, model_id)
    assert replica is not None, f"no free replica for key={shard_key!r} model={model_id!r}"
    router.release(replica)
    return replica.replica_id


def hold(router: Router, shard_key: str = "", model_id: str = "") -> ReplicaInfo:
    """Take a slot and keep it (a request in flight)."""
    replica = router.try_acquire(shard_key, model_id)
    assert replica is not None, f"no free replica for key={shard_key!r} model={model_id!r}"
    return replica


def placement(router: Router) -> dict[str, str]:
    return {key: pick(router, shard_key=key) for key in KEYS}


# -- shard keys -------------------------------------------------------------------------------


def test_same_key_same_replica_in_two_routers_as_in_two_processes() -> None:
    async def body() -> None:
        a = make_router(*ids("r1", "r2", "r3", "r4"))
        # Another caller learnt the same set in another order: the choice must not depend on it.
        b = make_router(*ids("r4", "r2", "r1", "r3"))
        assert placement(a) == placement(b)
        assert placement(a) == placement(a)  # and stable over time in one router

    run(body)


def test_keys_spread_roughly_evenly_over_replicas() -> None:
    async def body() -> None:
        counts = Counter(placement(make_router(*ids("r1", "r2", "r3", "r4"))).values())
        assert set(counts) == {"r1", "r2", "r3", "r4"}
        for replica_id, n in counts.items():
            assert 150 <= n <= 350, f"{replica_id} got {n / 10:.1f}% of 1000 keys: {counts}"

    run(body)


def test_adding_a_replica_moves_about_a_fifth_of_keys_and_only_onto_it() -> None:
    async def body() -> None:
        router = make_router(*ids("r1", "r2", "r3", "r4"))
        before = placement(router)
        router.update(replica_set(*ids("r1", "r2", "r3", "r4", "r5")))
        after = placement(router)
        moved = [key for key in KEYS if before[key] != after[key]]
        assert 100 <= len(moved) <= 300, f"{len(moved)} of 1000 keys moved"
        assert {after[key] for key in moved} == {"r5"}

    run(body)


def test_removing_a_replica_moves_only_its_own_keys() -> None:
    async def body() -> None:
        router = make_router(*ids("r1", "r2", "r3", "r4"))
        before = placement(router)
        router.update(replica_set(*ids("r1", "r2", "r4")))
        after = placement(router)
        moved = {key for key in KEYS if before[key] != after[key]}
        assert moved == {key for key in KEYS if before[key] == "r3"}
        assert moved, "r3 had no keys: the test shows nothing"

    run(body)


def test_saturated_preferred_replica_falls_back_to_another() -> None:
    async def body() -> None:
        router = make_router(*ids("r1", "r2", "r3"), max_ongoing=1)
        preferred = pick(router, shard_key="user-7")
        first = hold(router, shard_key="user-7")
        assert first.replica_id == preferred
        second = hold(router, shard_key="user-7")
        assert second.replica_id != preferred
        router.release(first)
        router.release(second)
        assert pick(router, shard_key="user-7") == preferred  # back once it has room

    run(body)


# -- multiplexed models -----------------------------------------------------------------------


def test_replica_reporting_the_model_is_chosen_while_it_has_a_free_slot() -> None:
    async def body() -> None:
        router = make_router(info("r1", "a"), info("r2", "b"), info("r3", "c", "d"), max_ongoing=3)
        held = [hold(router, model_id="b") for _ in range(3)]
        assert [r.replica_id for r in held] == ["r2", "r2", "r2"]
        # r2 is full: the next goes elsewhere, to the free replica with the fewest models.
        overflow = hold(router, model_id="b")
        assert overflow.replica_id == "r1"
        router.release(held[0])
        # Room again on r2; r1 now holds "b" too (sent there): either, never r3.
        assert {pick(router, model_id="b") for _ in range(20)} <= {"r1", "r2"}

    run(body)


def test_least_loaded_of_the_replicas_holding_the_model() -> None:
    async def body() -> None:
        router = make_router(info("r1", "a"), info("r2", "a"), info("r3"), max_ongoing=5)
        first = hold(router, model_id="a")
        second = hold(router, model_id="a")
        assert {first.replica_id, second.replica_id} == {"r1", "r2"}

    run(body)


def test_unknown_model_goes_to_a_replica_holding_the_fewest_models() -> None:
    async def body() -> None:
        router = make_router(info("r1", "a", "b"), info("r2", "c"), info("r3", "d", "e"))
        assert pick(router, model_id="new") == "r2"

    run(body)


def test_hint_sends_the_same_model_to_the_same_replica_before_any_report() -> None:
    async def body() -> None:
        for _ in range(20):  # ties among empty replicas are broken at random: try several
            router = make_router(info("r1"), info("r2"), info("r3"))
            first = pick(router, model_id="m")
            assert [pick(router, model_id="m") for _ in range(5)] == [first] * 5
            # Another model goes to another (still empty-looking) replica, not onto ``first``.
            assert pick(router, model_id="other") != first

    run(body)


def test_hint_survives_reports_until_confirmed() -> None:
    async def body() -> None:
        router = make_router(info("r1", "a"), info("r2", "b", "c"), info("r3", "d", "e"))
        assert pick(router, model_id="m") == "r1"  # the fewest models; "m" hinted there
        # r2 reported (it dropped both models): without the hint, r2 (now empty) would win.
        router.update(replica_set(info("r1", "a"), info("r2"), info("r3", "d", "e")))
        assert pick(router, model_id="m") == "r1"
        # r1 reports a change made before the request for "m" got there: the hint stays.
        router.update(replica_set(info("r1", "a", "x"), info("r2"), info("r3", "d", "e")))
        assert pick(router, model_id="m") == "r1"
        # r1's report confirms "m": the hint goes, the report routes.
        router.update(replica_set(info("r1", "m", "x"), info("r2"), info("r3", "d", "e")))
        assert router._sent_models.get("r1", {}) == {}
        assert pick(router, model_id="m") == "r1"
        # r1 evicts "m": the next request goes to the replica holding the fewest models.
        router.update(replica_set(info("r1", "x", "y"), info("r2"), info("r3", "d", "e")))
        assert pick(router, model_id="m") == "r2"

    run(body)


def test_unconfirmed_hint_expires_and_gone_replicas_lose_theirs(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    async def body() -> None:
        router = make_router(info("r1", "a"), info("r2", "b", "c"), info("r3", "d", "e"))
        assert pick(router, model_id="m") == "r1"
        monkeypatch.setattr(router_module, "HINT_TTL_S", -1.0)  # every hint is now too old
        router.update(replica_set(info("r1", "a"), info("r2"), info("r3", "d", "e")))
        assert router._sent_models == {}
        assert pick(router, model_id="m") == "r2"
        router.update(replica_set(info("r1", "a"), info("r3", "d", "e")))  # r2 removed
        assert "r2" not in router._sent_models

    run(body)


def test_model_aware_off_ignores_model_ids() -> None:
    async def body() -> None:
        replicas = (info("r1", "a"), info("r2", "b"), info("r3", "c"))
        on = make_router(*replicas, model_aware=True)
        off = make_router(*replicas, model_aware=False)
        assert {pick(on, model_id="a") for _ in range(50)} == {"r1"}
        assert {pick(off, model_id="a") for _ in range(50)} == {"r1", "r2", "r3"}

    run(body)


def test_routers_read_the_switch_when_made(monkeypatch: pytest.MonkeyPatch) -> None:
    async def body() -> None:
        monkeypatch.setattr(router_module, "MODEL_AWARE_ROUTING", False)
        assert Router(DEP, ConnectionPool()).model_aware is False
        monkeypatch.setattr(router_module, "MODEL_AWARE_ROUTING", True)
        assert Router(DEP, ConnectionPool()).model_aware is True

    run(body)
