"""One running instance per checkpoint path: claims, heartbeats, take-overs.

A real FileStore; the clock and sleep are the test's; which supervisor pids run
on this host is decided by the test (``running``).
"""

from __future__ import annotations

import asyncio
from pathlib import Path

import pytest

from schooner.checkpoint import FileStore
from schooner.controller import ownership
from schooner.controller.ownership import (
    HEARTBEAT_S,
    STALE_AFTER_S,
    CheckpointInUse,
    Owner,
    claim,
    read_owner,
    release,
    write_owner,
)


class Clock:
    def __init__(self) -> None:
        self.now = 1.7e9
        self.slept = 0.0

    def __call__(self) -> float:
        return self.now

    def sleep(self, seconds: float) -> None:
        self.now += seconds
        self.slept += seconds


@pytest.fixture
def running(monkeypatch: pytest.MonkeyPatch) -> set[int]:
    pids: set[int] = set()
    monkeypatch.setattr(ownership, "is_session_process", lambda pid, module, session: pid in pids)
    return pids


@pytest.fixture
def store(tmp_path: Path) -> FileStore:
    return FileStore(tmp_path / "ckpt")


ME = Owner("/tmp/session_me", 100, "host-a")


def test_a_free_path_is_claimed(store: FileStore, running: set[int]) -> None:
    clock = Clock()
    claim(store, ME, clock=clock, sleep=clock.sleep)
    owner = read_owner(store)
    assert owner is not None
    assert (owner.session, owner.supervisor_pid, owner.host) == (ME.session, 100, "host-a")
    assert owner.heartbeat == clock.now


def test_a_live_instance_on_this_host_keeps_its_path(store: FileStore, running: set[int]) -> None:
    clock = Clock()
    other = Owner("/tmp/session_other", 200, "host-a")
    write_owner(store, other, clock.now - 60)  # an old heartbeat does not matter here
    running.add(200)
    with pytest.raises(CheckpointInUse, match=r"session_other, supervisor pid 200 on host"):
        claim(store, ME, clock=clock, sleep=clock.sleep)
    assert clock.slept == 0  # decided at once
    owner = read_owner(store)
    assert owner is not None and owner.session == other.session


def test_a_dead_instance_on_this_host_is_taken_over_at_once(
    store: FileStore, running: set[int]
) -> None:
    clock = Clock()
    write_owner(store, Owner("/tmp/session_other", 200, "host-a"), clock.now)
    claim(store, ME, clock=clock, sleep=clock.sleep)
    assert clock.slept == 0
    owner = read_owner(store)
    assert owner is not None and owner.session == ME.session


def test_another_host_is_waited_for_until_its_claim_goes_stale(
    store: FileStore, running: set[int]
) -> None:
    clock = Clock()
    write_owner(store, Owner("/tmp/session_other", 200, "host-b"), clock.now)
    claim(store, ME, clock=clock, sleep=clock.sleep)
    assert STALE_AFTER_S < clock.slept <= STALE_AFTER_S + 1
    owner = read_owner(store)
    assert owner is not None and owner.session == ME.session


def test_another_host_that_keeps_its_claim_fresh_wins(store: FileStore, running: set[int]) -> None:
    clock = Clock()
    other = Owner("/tmp/session_other", 200, "host-b")

    def sleep_while_the_other_beats(seconds: float) -> None:
        clock.sleep(seconds)
        write_owner(store, other, clock.now)

    write_owner(store, other, clock.now)
    with pytest.raises(CheckpointInUse, match="host-b"):
        claim(store, ME, clock=clock, sleep=sleep_while_the_other_beats)
    assert clock.slept <= STALE_AFTER_S + HEARTBEAT_S + 1


def test_a_restarted_head_of_the_same_instance_goes_on(store: FileStore, running: set[int]) -> None:
    clock = Clock()
    write_owner(store, ME, clock.now)
    running.add(ME.supervisor_pid)
    claim(store, ME, clock=clock, sleep=clock.sleep)
    assert clock.slept == 0


def test_release_removes_only_our_own_claim(store: FileStore) -> None:
    other = Owner("/tmp/session_other", 200, "host-b")
    write_owner(store, other, 1.0)
    release(store, ME)
    assert read_owner(store) == Owner(other.session, 200, "host-b", 1.0)
    write_owner(store, ME, 2.0)
    release(store, ME)
    assert read_owner(store) is None


def test_keep_claim_refreshes_the_heartbeat(
    store: FileStore, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(ownership, "HEARTBEAT_S", 0.01)

    async def main() -> None:
        write_owner(store, ME, 1.0)
        task = asyncio.get_running_loop().create_task(ownership.keep_claim(store, ME))
        for _ in range(500):
            owner = read_owner(store)
            if owner is not None and owner.heartbeat > 1.0:
                break
            await asyncio.sleep(0.01)
        task.cancel()

    asyncio.run(main())
    owner = read_owner(store)
    assert owner is not None and owner.heartbeat > 1.0
