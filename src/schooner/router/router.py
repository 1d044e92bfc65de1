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

Two preferences come before that choice. A request with a *shard key* goes to
the replica the key lands on by rendezvous hashing over the replica ids (the
same replica from every caller while the set is unchanged; adding or removing
a replica moves about 1/N of the keys) when that replica has a free slot. A
request for a *multiplexed model* goes to the least loaded replica that has the
model (as replicas report it, or as this router last sent it) with a free slot,
else to a free replica holding the fewest models. Otherwise, and when queued,
the usual choice applies. ``SCHOONER_MODEL_AWARE_ROUTING=0`` in the environment
(inherited by every process of an instance) turns the model preference off: model
ids are then ignored in the choice (the benchmark's A/B).
"""

from __future__ import annotations

import asyncio
import os
import random
import time
from collections import deque
from collections.abc import AsyncIterator, Callable
from typing import Any

from schooner.exceptions import (
    BackPressureError,
    DeploymentUnavailableError,
    ReplicaUnavailableError,
)
from schooner.router.hashing import key_hash, mix
from schooner.router.pool import ConnectionPool, dial
from schooner.rpc.connection import ConnectionLost
from schooner.rpc.messages import DeploymentID, ReplicaInfo, ReplicaSet

#: Published in place of a ReplicaSet when a deployment has been deleted.
DELETED = "DELETED"

#: Environment switch: ``SCHOONER_MODEL_AWARE_ROUTING=0`` makes routers ignore multiplexed
#: model ids (plain power of two choices). Read once; each Router copies it when made.
MODEL_AWARE_ENV = "SCHOONER_MODEL_AWARE_ROUTING"
MODEL_AWARE_ROUTING = os.environ.get(MODEL_AWARE_ENV, "1").strip().lower() not in (
    "0",
    "false",
    "off",
    "no",
)
#: At most this many models hinted per replica (a replica that never reports, e.g. one
#: without ``@serve.multiplexed``, must not grow them without bound between snapshots).
MAX_HINTS_PER_REPLICA = 64
#: A hint not confirmed by its replica's report within this long is dropped (at the next
#: snapshot): long enough for the request to get there and the report to come back.
HINT_TTL_S = 2.0


class Router:
    """Routes this process's requests to the replicas of one deployment."""

    def __init__(
        self,
        deployment: DeploymentID,
        pool: ConnectionPool,
        model_aware: bool | None = None,
    ) -> None:
        """``model_aware``: prefer replicas holding a request's model (default:
        :data:`MODEL_AWARE_ROUTING`)."""
        self.deployment = deployment
        self.model_aware = MODEL_AWARE_ROUTING if model_aware is None else model_aware
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
        self._id_hashes: dict[str, int] = {}  # replica id -> key_hash(id), for shard keys
        #: Models this router sent to each replica and not yet in the replica's own report
        #: (a hint until the report confirms it, or for at most HINT_TTL_S).
        self._sent_models: dict[str, dict[str, float]] = {}  # replica -> model -> when
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
        self._id_hashes = {r.replica_id: key_hash(r.replica_id) for r in self._replicas}
        self._forget_hints()
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

    def _forget_hints(self) -> None:
        """Drop hints the replicas' reports now confirm, hints of replicas gone, and hints
        older than :data:`HINT_TTL_S` (never confirmed: e.g. the request failed, or the
        replica does not report). An unconfirmed young hint stays even when its replica's
        report changed: that report may have left the replica before the request got
        there (models loading at once on one replica are reported as they start)."""
        if not self._sent_models:
            return
        reported = {r.replica_id: r.model_ids for r in self._replicas}
        expired = time.monotonic() - HINT_TTL_S
        for rid, hints in list(self._sent_models.items()):
            models = reported.get(rid)
            if models is not None:
                for model_id in [m for m, at in hints.items() if m in models or at < expired]:
                    del hints[model_id]
            if models is None or not hints:
                del self._sent_models[rid]

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
    def _choose(self, shard_key: str = "", model_id: str = "") -> ReplicaInfo | None:
        if shard_key:
            replica = self._by_key(shard_key)
            if replica is not None:
                return replica
        if model_id and self.model_aware:
            replica = self._by_model(model_id)
            if replica is not None:
                return replica
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

    def _by_key(self, shard_key: str) -> ReplicaInfo | None:
        """The replica ``shard_key`` lands on, if it has a free slot."""
        key = key_hash(shard_key)
        hashes = self._id_hashes
        best, best_score = None, -1
        for replica in self._replicas:
            score = mix(key, hashes[replica.replica_id])
            if score > best_score:
                best, best_score = replica, score
        if best is not None and self._inflight.get(best.replica_id, 0) < self._max_ongoing:
            return best
        return None

    def _by_model(self, model_id: str) -> ReplicaInfo | None:
        """A free replica with ``model_id`` loaded (least loaded first), else a free one
        holding the fewest models; records the choice as a hint."""
        limit = self._max_ongoing
        inflight = self._inflight
        sent = self._sent_models
        best: ReplicaInfo | None = None
        best_rank: tuple[int, int, int] | None = None
        for replica in self._replicas:
            rid = replica.replica_id
            n = inflight.get(rid, 0)
            if n >= limit:
                continue
            hinted = sent.get(rid, ())
            has = model_id in replica.model_ids or model_id in hinted
            rank = (0 if has else 1, 0 if has else len(replica.model_ids) + len(hinted), n)
            if best_rank is None or rank < best_rank:
                best, best_rank = replica, rank
        if best is not None and model_id not in best.model_ids:
            hints = sent.setdefault(best.replica_id, {})
            if len(hints) >= MAX_HINTS_PER_REPLICA:
                hints.clear()
            hints[model_id] = time.monotonic()
        return best

    def try_acquire(self, shard_key: str = "", model_id: str = "") -> ReplicaInfo | None:
        """Take a slot at once if one is free and nobody is queued (else None); see release()."""
        if self._waiters or not self._known.is_set() or self._deleted:
            return None
        replica = self._choose(shard_key, model_id)
        if replica is not None:
            self._inflight[replica.replica_id] = self._inflight.get(replica.replica_id, 0) + 1
            self.requests += 1
        return replica

    def release(self, replica: ReplicaInfo) -> None:
        """Give back a slot taken with try_acquire()."""
        self._release(replica)

    async def _acquire(self, shard_key: str = "", model_id: str = "") -> ReplicaInfo:
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
            replica = self._choose(shard_key, model_id)
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

    async def _connect(self, shard_key: str = "", model_id: str = "") -> tuple[ReplicaInfo, Any]:
        while True:
            replica = await self._acquire(shard_key, model_id)
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

    async def connect(self, shard_key: str = "", model_id: str = "") -> tuple[ReplicaInfo, Any]:
        """Take a slot on a replica (queueing as a request would) and its connection.

        For a call made on the connection directly (a long-lived duplex call); give the
        slot back with :meth:`release`. Raises like :meth:`call` before sending.
        """
        return await self._connect(shard_key, model_id)

    async def call(self, method: str, *args: Any, shard_key: str = "", model_id: str = "") -> Any:
        """Send ``rpc_<method>(*args)`` to a chosen replica and return the result
        (``shard_key``, ``model_id``: the request's preferences, see the module)."""
        replica, conn = await self._connect(shard_key, model_id)
        try:
            return await conn.call(method, *args)
        except ConnectionLost as exc:
            raise ReplicaUnavailableError(
                f"Replica {replica.replica_id} of {self.deployment} died while handling "
                "the request."
            ) from exc
        finally:
            self._release(replica)

    async def stream(
        self, method: str, *args: Any, shard_key: str = "", model_id: str = ""
    ) -> AsyncIterator[Any]:
        """Like :meth:`call` for a streaming RPC; yields the items."""
        replica, conn = await self._connect(shard_key, model_id)
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
