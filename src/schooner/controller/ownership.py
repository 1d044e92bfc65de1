"""One running instance per checkpoint path.

Two instances writing the same checkpoint would overwrite each other's goal
state, and each would recover the other's applications. So an instance
claims its checkpoint path when its head starts: it writes an ``owner``
record (session, supervisor pid, host) and refreshes it every
:data:`HEARTBEAT_S` while it runs. Another instance may take the path over
only once the owner is known to be gone:

- on the same host, when the owner's supervisor process no longer runs
  (decided at once, from ``/proc``);
- from another host, when its record has not been refreshed for
  :data:`STALE_AFTER_S` (a new claimant waits that long at most, then gives up
  with an error naming the other instance).

A head restarted by its own supervisor finds its own session in the record
and goes on. A stop releases the claim; a crash leaves it to go stale.
"""

from __future__ import annotations

import asyncio
import json
import logging
import socket
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass

from schooner.checkpoint import CheckpointStore
from schooner.exceptions import RayServeException
from schooner.runtime.launcher import is_session_process

logger = logging.getLogger("schooner.controller")

OWNER_KEY = "owner"
#: How often a running instance refreshes its claim.
HEARTBEAT_S = 5.0
#: A claim from another host not refreshed for this long belongs to a dead instance.
STALE_AFTER_S = 15.0
_SUPERVISOR_MODULE = "schooner.runtime.supervisor"


class CheckpointInUse(RayServeException):
    """Another running instance uses this checkpoint path."""


@dataclass(frozen=True)
class Owner:
    session: str
    supervisor_pid: int
    host: str
    heartbeat: float = 0.0

    @classmethod
    def here(cls, session: str, supervisor_pid: int) -> Owner:
        return cls(session, supervisor_pid, socket.gethostname())

    def describe(self, now: float) -> str:
        return (
            f"session {self.session}, supervisor pid {self.supervisor_pid} on host "
            f"{self.host}, last seen {max(0.0, now - self.heartbeat):.0f} s ago"
        )


def read_owner(store: CheckpointStore) -> Owner | None:
    raw = store.get(OWNER_KEY)
    return Owner(**json.loads(raw)) if raw is not None else None


def write_owner(store: CheckpointStore, owner: Owner, now: float) -> None:
    record = asdict(owner) | {"heartbeat": now}
    store.put(OWNER_KEY, json.dumps(record).encode())


def _gone(owner: Owner, me: Owner, now: float) -> bool:
    if owner.host == me.host:
        return not is_session_process(owner.supervisor_pid, _SUPERVISOR_MODULE, owner.session)
    return now - owner.heartbeat > STALE_AFTER_S


def claim(
    store: CheckpointStore,
    me: Owner,
    *,
    clock: Callable[[], float] = time.time,
    sleep: Callable[[float], None] = time.sleep,
) -> None:
    """Make ``me`` the owner of the checkpoint path, waiting for a silent owner on another
    host to go stale. Raises :class:`CheckpointInUse` if the owner is alive."""
    give_up = clock() + STALE_AFTER_S + HEARTBEAT_S
    while True:
        owner = read_owner(store)
        now = clock()
        if owner is None or owner.session == me.session or _gone(owner, me, now):
            break
        if owner.host == me.host or now > give_up:
            raise CheckpointInUse(
                f"The checkpoint path is in use by another running instance ("
                f"{owner.describe(now)}). Give this instance its own --checkpoint-path, or "
                "stop the other instance first."
            )
        logger.info("waiting for the checkpoint path's owner to go quiet (%s)", owner.describe(now))
        sleep(1.0)
    if owner is not None and owner.session != me.session:
        logger.info("taking over the checkpoint path from %s", owner.describe(clock()))
    write_owner(store, me, clock())


async def keep_claim(store: CheckpointStore, me: Owner) -> None:
    """Refresh the claim every :data:`HEARTBEAT_S` (run as a task; cancel to stop)."""
    failing = False
    while True:
        await asyncio.sleep(HEARTBEAT_S)
        try:
            await asyncio.to_thread(write_owner, store, me, time.time())
        except Exception as exc:
            if not failing:
                logger.warning("cannot refresh the checkpoint path's claim: %r", exc)
            failing = True
        else:
            failing = False


def release(store: CheckpointStore, me: Owner) -> None:
    """Give the path up (the instance is stopping), if it is still ours."""
    try:
        owner = read_owner(store)
        if owner is not None and owner.session == me.session:
            store.delete(OWNER_KEY)
    except Exception:
        logger.exception("could not release the checkpoint path")
