"""Spare replica processes: one started ahead of need, so the next replica skips the
start-up of a Python process (most of an application's cold start).

A spare connects to the controller and waits (``register_spare``); the next
replica that needs no runtime_env variables takes it and assigns it an
identity. An unused spare exits after :data:`SPARE_IDLE_S`. The embedded
runtime only: on a Ray cluster, Ray starts the replica actors.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable
from dataclasses import dataclass, field

from schooner.rpc.connection import Connection
from schooner.runtime.launcher import Launcher, ProcessHandle, ProcessSpec

logger = logging.getLogger("schooner.controller")

#: An unused spare replica process exits after this long (it only speeds up cold starts).
SPARE_IDLE_S = 30.0


@dataclass
class Spare:
    """A replica process started ahead of need, waiting to be assigned an identity."""

    spare_id: str
    process: ProcessHandle
    launched_at: float
    conn: Connection | None = None
    registered: asyncio.Event = field(default_factory=asyncio.Event)


class Spares:
    """The spare process (at most one) and those being adopted by new replicas."""

    def __init__(
        self,
        launcher: Launcher,
        spec: Callable[[list[str]], ProcessSpec],
        clock: Callable[[], float],
        new_id: Callable[[], str],
    ) -> None:
        """``spec(identity_args)``: how to start a replica process."""
        self._launcher = launcher
        self._spec = spec
        self._clock = clock
        self._new_id = new_id
        self.spare: Spare | None = None
        self.adopting: dict[str, Spare] = {}

    def launch(self) -> None:
        """Start a spare unless there is one."""
        if self.spare is not None:
            return
        spare_id = self._new_id()
        try:
            process = self._launcher.launch(self._spec(["--spare-id", spare_id]))
        except OSError as exc:
            logger.warning("could not start a spare replica process: %s", exc)
            return
        self.spare = Spare(spare_id, process, self._clock())

    def registered(self, spare_id: str, conn: Connection) -> None:
        spare = self.spare or self.adopting.get(spare_id)
        if spare is not None and spare.spare_id == spare_id:
            spare.conn = conn
            spare.registered.set()
        else:
            conn.notify("shutdown")

    def check(self, shutting_down: bool) -> None:
        """Forget a spare that exited; stop one left unused too long (or at shutdown)."""
        spare = self.spare
        if spare is None:
            return
        if spare.process.poll() is not None:
            self.spare = None
        elif shutting_down or self._clock() - spare.launched_at > SPARE_IDLE_S:
            spare.process.terminate()
            self.spare = None

    def take(self) -> Spare | None:
        """The spare, if any; one still starting is taken too (it is ahead of a new process)."""
        spare = self.spare
        if spare is None or spare.process.poll() is not None:
            return None
        self.spare = None
        self.adopting[spare.spare_id] = spare
        return spare

    async def connection(self, spare: Spare, timeout_s: float) -> Connection | None:
        """The taken spare's connection once it registered (None if it never does)."""
        try:
            await asyncio.wait_for(spare.registered.wait(), timeout_s)
        except TimeoutError:
            return None
        finally:
            self.adopting.pop(spare.spare_id, None)
        return spare.conn

    def pids(self) -> list[int]:
        return [self.spare.process.pid] if self.spare is not None else []

    def adopting_pids(self) -> set[int]:
        return {s.process.pid for s in self.adopting.values()}

    def kill(self) -> None:
        if self.spare is not None:
            self.spare.process.kill()
