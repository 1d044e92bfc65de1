"""Replica ranks: the numbering itself, and the controller keeping it dense as a
deployment scales and loses replicas (driven tick by tick with fakes)."""

from __future__ import annotations

from pathlib import Path

import pytest
from controller_fakes import Harness, InstantSleepAsyncio, app_spec, dep_spec, run

from schooner.controller import controller as controller_module
from schooner.controller.ranks import DeploymentRanks, Rank, RankCounter
from schooner.schema import DeploymentStatus, ReplicaState


@pytest.fixture(autouse=True)
def instant_drain(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(controller_module, "asyncio", InstantSleepAsyncio())


# -- the numbering ------------------------------------------------------------------------------


def test_new_keys_take_the_smallest_free_rank() -> None:
    ranks = RankCounter()
    assert [ranks.assign(k) for k in "abc"] == [0, 1, 2]
    ranks.release("b")
    assert ranks.assign("d") == 1
    assert ranks.assign("e") == 3
    assert ranks.assign("a") == 0  # already ranked: unchanged


def test_compaction_keeps_ranks_in_range_and_moves_the_fewest() -> None:
    ranks = RankCounter()
    for key in "abcde":
        ranks.assign(key)
    ranks.release("a")  # 0 free
    ranks.release("c")  # 2 free
    moved = ranks.compact(["b", "d", "e"])  # ranks 1, 3, 4 -> need 0..2
    assert moved == ["d", "e"]
    assert {k: ranks.get(k) for k in "bde"} == {"b": 1, "d": 0, "e": 2}


def test_compaction_of_dense_ranks_changes_nothing() -> None:
    ranks = RankCounter()
    for key in "abc":
        ranks.assign(key)
    assert ranks.compact(["a", "b", "c"]) == []


def test_deployment_ranks_number_nodes_and_replicas_per_node() -> None:
    ranks = DeploymentRanks()
    assert ranks.assign("r1", "n1") == Rank(0, 0, 0)
    assert ranks.assign("r2", "n2") == Rank(1, 1, 0)
    assert ranks.assign("r3", "n1") == Rank(2, 0, 1)
    ranks.release("r2")  # n2 has no replica left: its node rank is free
    assert ranks.assign("r4", "n3") == Rank(1, 1, 0)
    ranks.release("r1")
    changed = ranks.compact(["r3", "r4"])
    assert changed == {"r3"}
    assert ranks.get("r3") == Rank(0, 0, 0)
    assert ranks.get("r4") == Rank(1, 1, 0)


def test_recovered_ranks_are_kept_and_new_ones_fill_the_gaps() -> None:
    ranks = DeploymentRanks()
    ranks.recover("r1", "n1", Rank(1, 0, 1))
    assert ranks.assign("r2", "n1") == Rank(0, 0, 0)
    assert ranks.assign("r3", "n1") == Rank(2, 0, 2)


# -- the controller ------------------------------------------------------------------------------


def _ranks(h: Harness) -> dict[str, Rank]:
    return {r.replica_id: h.dep().ranks.get(r.replica_id) for r in h.replicas()}


def test_replicas_are_initialized_with_dense_ranks_and_the_world_size(tmp_path: Path) -> None:
    async def body(h: Harness) -> None:
        h.ctl.deploy_app(app_spec("app", "/", dep_spec("Model", num_replicas=3)))
        h.ctl.tick()
        await h.all_ready()
        h.ctl.tick()
        sent = sorted(h.conns[rid].calls[0][1][5:] for rid in h.ids())
        assert sent == [((0, 0, 0), 3), ((1, 0, 1), 3), ((2, 0, 2), 3)]
        await h.settle()
        assert all(m != "set_rank" for c in h.conns.values() for m, _ in c.calls)

    run(tmp_path, body)


def test_scale_down_makes_ranks_dense_again_and_tells_the_moved_replica(tmp_path: Path) -> None:
    async def body(h: Harness) -> None:
        h.launcher.exit_on_terminate = False
        h.ctl.deploy_app(app_spec("app", "/", dep_spec("Model", num_replicas=3)))
        h.ctl.tick()
        await h.all_ready()
        h.ctl.tick()
        rank_before = {rid: rank.rank for rid, rank in _ranks(h).items()}
        top = next(rid for rid, rank in rank_before.items() if rank == 2)
        h.ctl.deploy_app(app_spec("app", "/", dep_spec("Model", num_replicas=2)))
        h.ctl.tick()
        (stopping,) = h.ids(state=ReplicaState.STOPPING)
        await h.settle()
        assert h.dep().ranks.has(stopping)  # held until its process is gone, as in Ray
        h.launcher.by_id(stopping).exit(0)
        for _ in range(2):
            h.ctl.tick()
            await h.settle()
        assert h.dep().status == DeploymentStatus.HEALTHY
        assert sorted(r.rank for r in _ranks(h).values()) == [0, 1]
        for rid in h.ids():  # every replica was told the new world size (and its rank)
            assert h.dep().replicas[rid].rank_delivered == (h.dep().ranks.get(rid), 2)
        if stopping != top:  # the top replica moved into the freed rank, and was told so
            new_rank = h.dep().ranks.get(top)
            assert new_rank.rank == rank_before[stopping]
            assert ("set_rank", (tuple(new_rank), 2)) in h.conns[top].calls

    run(tmp_path, body)


def test_a_dead_replicas_rank_goes_to_its_replacement(tmp_path: Path) -> None:
    async def body(h: Harness) -> None:
        h.ctl.deploy_app(app_spec("app", "/", dep_spec("Model", num_replicas=3)))
        h.ctl.tick()
        await h.all_ready()
        h.ctl.tick()
        victim = next(rid for rid, rank in _ranks(h).items() if rank.rank == 1)
        h.launcher.by_id(victim).exit(1)
        h.ctl.tick()  # reaped, and a replacement started
        (new,) = h.ids(state=ReplicaState.STARTING)
        assert h.dep().ranks.get(new).rank == 1
        await h.ready(new)
        assert h.conns[new].calls[0][1][5:] == ((1, 0, 1), 3)

    run(tmp_path, body)
