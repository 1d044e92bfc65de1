"""Choosing a replica for each request, from the caller's side.

Each process that calls a deployment (proxy, driver, another replica) has one
:class:`Router` per target deployment. The router knows the live replicas
(pushed by the controller) and its own in-flight count per replica. It picks
by *power of two choices* (sample two replicas with a free slot, take the one
with fewer requests in flight), never has more than ``max_ongoing_requests``
in flight to one replica, and when every replica is full it queues up to
``max_queued_requests`` requests (FIFO; -1 means unbounded) and rejects the
rest at once with :class:`~schooner.exceptions.BackPressureError`.

A freed slot is handed directly to the oldest waiter, so waiting costs no
polling and no thundering herd.
"""

from __future__ import annotations

import asyncio
import random
from collections import deque
from collections.abc import AsyncIterator, Callable
from typing import Any

from schooner.exceptions import (
    BackPressureError,
    DeploymentUnavailableError,
    ReplicaUnavailableError,
)
from schooner.router.pool import ConnectionPool, dial
from schooner.rpc.connection import ConnectionLost
from schooner.rpc.messages import DeploymentID, ReplicaInfo, ReplicaSet

#: Published in place of a ReplicaSet when a deployment has been deleted.
DELETED = "DELETED"


class Router:
    """Routes this process's requests to the replicas of one deployment."""

    def __init__(self, deployment: DeploymentID, pool: ConnectionPool) -> None:
        self.deployment = deployment
        self._pool = pool
        self._replicas: list[ReplicaInfo] = []
        self._inflight: dict[str, int] = {}
        self._waiters: deque[asyncio.Future[ReplicaInfo]] = deque()
        self._max_ongoing = 5
        self._max_queued = -1
        self._backpressure: tuple[int, float | None] = (503, None)
        self._deleted = False
        self._unavailable = ""
        self._known = asyncio.Event()  # set once the controller's first snapshot arrived
        self._watched: set[str] = set()  # replica ids whose connection's loss we watch
        #: Requests given a replica so far (a metric: ``ray_serve_num_router_requests``).
        self.requests = 0
        #: The deployment is autoscaled: its demand is reported (see router.demand).
        self.autoscaling = False
        #: Set by the registry: called with False when the deployment becomes autoscaled,
        #: with True when a request waits for an autoscaled deployment with no replicas.
        self.on_demand: Callable[[bool], None] | None = None

    # -- replica set ------------------------------------------------------------
    def update(self, replica_set: ReplicaSet | str | None) -> None:
        """Apply a snapshot from the controller (a ReplicaSet, DELETED, or None = unknown)."""
        if replica_set == DELETED:
            self._deleted = True
            self.autoscaling = False
            self._known.set()
            self._replicas = []
            while self._waiters:
                waiter = self._waiters.popleft()
                if not waiter.done():
                    waiter.set_exception(
                        DeploymentUnavailableError(f"Deployment {self.deployment} was deleted.")
                    )
            return
        if not isinstance(replica_set, ReplicaSet):
            return
        self._deleted = False
        self._known.set()
        self._replicas = [dial(r) for r in replica_set.replicas]
        self._unavailable = replica_set.unavailable
        if self._unavailable and not self._replicas:
            while self._waiters:
                waiter = self._waiters.popleft()
                if not waiter.done():
                    waiter.set_exception(DeploymentUnavailableError(self._unavailable))
        self._max_ongoing = replica_set.max_ongoing_requests
        self._max_queued = replica_set.max_queued_requests
        self.autoscaling = replica_set.autoscaling
        if self.autoscaling and self.on_demand is not None:
            self.on_demand(bool(self._waiters) and not self._replicas)
        self._backpressure = (replica_set.backpressure_status_code, replica_set.retry_after_s)
        live = {r.replica_id for r in self._replicas}
        for replica_id in [r for r in self._inflight if r not in live]:
            if self._inflight[replica_id] == 0:
                del self._inflight[replica_id]
        self._hand_off()

    @property
    def num_replicas(self) -> int:
        return len(self._replicas)

    @property
    def num_queued(self) -> int:
        return len(self._waiters)

    @property
    def num_inflight(self) -> int:
        """Requests of this caller sent to a replica and not finished."""
        return sum(self._inflight.values())

    # -- slots ------------------------------------------------------------------
    def _choose(self) -> ReplicaInfo | None:
        replicas = self._replicas
        limit = self._max_ongoing
        inflight = self._inflight
        if len(replicas) > 2:
            a, b = random.sample(replicas, 2)
            na, nb = inflight.get(a.replica_id, 0), inflight.get(b.replica_id, 0)
            best, n = (a, na) if na <= nb else (b, nb)
            if n < limit:
                return best
        best_n = limit
        chosen = None
        count = len(replicas)
        start = random.randrange(count) if count > 1 else 0  # no favourite on ties
        for i in range(count):
            replica = replicas[(start + i) % count]
            n = inflight.get(replica.replica_id, 0)
            if n < best_n:
                chosen, best_n = replica, n
        return chosen

    def try_acquire(self) -> ReplicaInfo | None:
        """Take a slot at once if one is free and nobody is queued (else None); see release()."""
        if self._waiters or not self._known.is_set() or self._deleted:
            return None
        replica = self._choose()
        if replica is not None:
            self._inflight[replica.replica_id] = self._inflight.get(replica.replica_id, 0) + 1
            self.requests += 1
        return replica

    def release(self, replica: ReplicaInfo) -> None:
        """Give back a slot taken with try_acquire()."""
        self._release(replica)

    async def _acquire(self) -> ReplicaInfo:
        self.requests += 1
        if self._deleted:
            raise DeploymentUnavailableError(f"Deployment {self.deployment} was deleted.")
        if not self._known.is_set():
            await self._known.wait()  # limits are unknown until the first snapshot
            if self._deleted:
                raise DeploymentUnavailableError(f"Deployment {self.deployment} was deleted.")
        if self._unavailable and not self._replicas:
            raise DeploymentUnavailableError(self._unavailable)
        if not self._waiters:
            replica = self._choose()
            if replica is not None:
                self._inflight[replica.replica_id] = self._inflight.get(replica.replica_id, 0) + 1
                return replica
        if self._max_queued != -1 and len(self._waiters) >= self._max_queued:
            status_code, retry_after_s = self._backpressure
            raise BackPressureError(
                num_queued_requests=len(self._waiters),
                max_queued_requests=self._max_queued,
                deployment=str(self.deployment),
                status_code=status_code,
                retry_after_s=retry_after_s,
            )
        waiter: asyncio.Future[ReplicaInfo] = asyncio.get_running_loop().create_future()
        self._waiters.append(waiter)
        if not self._replicas and self.autoscaling and self.on_demand is not None:
            self.on_demand(True)  # scaled to zero: wake the deployment now
        try:
            return await waiter
        except asyncio.CancelledError:
            if waiter.done() and not waiter.cancelled() and waiter.exception() is None:
                self._release(waiter.result())  # got a slot just as we were cancelled
            else:
                try:
                    self._waiters.remove(waiter)
                except ValueError:
                    pass
            raise

    def _release(self, replica: ReplicaInfo) -> None:
        rid = replica.replica_id
        n = self._inflight.get(rid, 1) - 1
        if n <= 0 and all(r.replica_id != rid for r in self._replicas):
            self._inflight.pop(rid, None)
        else:
            self._inflight[rid] = max(n, 0)
        if self._waiters:
            self._hand_off()

    def _hand_off(self) -> None:
        while self._waiters:
            replica = self._choose()
            if replica is None:
                return
            waiter = self._waiters.popleft()
            if waiter.done():
                continue
            self._inflight[replica.replica_id] = self._inflight.get(replica.replica_id, 0) + 1
            waiter.set_result(replica)

    def _drop_replica(self, replica: ReplicaInfo) -> None:
        """Stop sending to a replica we could not reach until the controller says otherwise."""
        self._replicas = [r for r in self._replicas if r.replica_id != replica.replica_id]

    # -- calls ------------------------------------------------------------------
    def _watch(self, replica: ReplicaInfo, conn: Any) -> None:
        """When the connection to ``replica`` is lost (the process died or is leaving), stop
        choosing it at once, without waiting for the controller to notice."""
        if replica.replica_id in self._watched:
            return
        self._watched.add(replica.replica_id)

        def lost(_conn: Any) -> None:
            self._watched.discard(replica.replica_id)
            self._drop_replica(replica)

        conn.on_close.append(lost)

    async def _connect(self) -> tuple[ReplicaInfo, Any]:
        while True:
            replica = await self._acquire()
            conn = self._pool.get_nowait(replica.address)
            if conn is not None:
                self._watch(replica, conn)
                return replica, conn
            try:
                conn = await self._pool.get(replica.address)
                self._watch(replica, conn)
                return replica, conn
            except OSError:
                self._drop_replica(replica)  # before releasing: don't hand it to a waiter
                self._release(replica)
            except BaseException:
                self._release(replica)
                raise

    async def connect(self) -> tuple[ReplicaInfo, Any]:
        """Take a slot on a replica (queueing as a request would) and its connection.

        For a call made on the connection directly (a long-lived duplex call); give the
        slot back with :meth:`release`. Raises like :meth:`call` before sending.
        """
        return await self._connect()

    async def call(self, method: str, *args: Any) -> Any:
        """Send ``rpc_<method>(*args)`` to a chosen replica and return the result."""
        replica, conn = await self._connect()
        try:
            return await conn.call(method, *args)
        except ConnectionLost as exc:
            raise ReplicaUnavailableError(
                f"Replica {replica.replica_id} of {self.deployment} died while handling "
                "the request."
            ) from exc
        finally:
            self._release(replica)

    async def stream(self, method: str, *args: Any) -> AsyncIterator[Any]:
        """Like :meth:`call` for a streaming RPC; yields the items."""
        replica, conn = await self._connect()
        try:
            async for item in conn.stream(method, *args):
                yield item
        except ConnectionLost as exc:
            raise ReplicaUnavailableError(
                f"Replica {replica.replica_id} of {self.deployment} died while streaming "
                "the response."
            ) from exc
        finally:
            self._release(replica)
