"""Per-process registry of routers, fed by a long-poll subscription to the controller.

The controller publishes versioned snapshots under string keys (a deployment's
replica set under ``DeploymentID.key``, the route table under ``"routes"``, the
traffic policies under ``"traffic"``: every registry subscribes to those at once and
keeps them compiled in :attr:`RouterRegistry.traffic`).
The registry keeps one ``listen`` call open on the controller with the
versions it knows; the call returns when any of them changes. When a new key
is needed the open call is cancelled and re-issued with the larger key set.
If the controller is unreachable, routers keep the replicas they know.
"""

from __future__ import annotations

import asyncio
import logging
import weakref
from collections.abc import Callable, Iterator
from typing import Any

from schooner.router.demand import DemandReporter
from schooner.router.pool import ConnectionPool
from schooner.router.router import Router
from schooner.router.traffic import CompiledPolicy, compile_policies
from schooner.rpc.connection import Connection, ConnectionLost
from schooner.rpc.messages import DeploymentID
from schooner.telemetry import catalog, recorder, reporter

logger = logging.getLogger("schooner.router")

#: How long one long-poll call may stay open before it is re-issued.
LISTEN_TIMEOUT_S = 30.0
#: Long-poll key of the traffic policies (the controller's ``TRAFFIC_KEY``).
TRAFFIC_KEY = "traffic"


class RouterRegistry:
    """Routers of this process, kept up to date from the controller."""

    def __init__(self, controller: Connection) -> None:
        self._controller = controller
        self.pool = ConnectionPool()
        self._routers: dict[DeploymentID, Router] = {}
        self._callbacks: dict[str, list[Callable[[Any], None]]] = {}
        self._versions: dict[str, int] = {}
        self._values: dict[str, Any] = {}
        self._listen_task: asyncio.Task[None] | None = None
        self._keys_changed = asyncio.Event()
        self._first_snapshot: dict[str, asyncio.Event] = {}
        self._stop_collecting = recorder.add_collector(self._collect)
        #: Routers of this process on other event loops (their demand is reported too).
        self._loop_routers: weakref.WeakSet[LoopRouters] = weakref.WeakSet()
        self.demand = DemandReporter(lambda: self._controller, self._all_routers)
        #: ``{owner's ingress: compiled policy}``; replaced whole on each change (never
        #: mutated), so routers on other threads may read it without a lock.
        self.traffic: dict[DeploymentID, CompiledPolicy] = {}
        self.subscribe(TRAFFIC_KEY, self._update_traffic)

    def _update_traffic(self, snapshot: Any) -> None:
        self.traffic = compile_policies(
            snapshot if isinstance(snapshot, dict) else None, self.traffic
        )

    def _all_routers(self) -> Iterator[Router]:
        yield from list(self._routers.values())
        for other in list(self._loop_routers):
            yield from list(other.routers.values())

    def on_demand(self, cold: bool) -> None:
        """A router's deployment is autoscaled (``cold``: a request waits at zero replicas)."""
        if cold:
            self.demand.wake()
        else:
            self.demand.watch()

    def add_loop_routers(self, routers: LoopRouters) -> None:
        self._loop_routers.add(routers)

    def _collect(self) -> list[recorder.Series]:
        """Each router's counts, as metrics (read when the process reports them)."""
        actor_id = reporter.identity()[1]
        series: list[recorder.Series] = []
        for deployment, router in list(self._routers.items()):
            labels = (deployment.name, deployment.app_name, "", actor_id)
            series.append((catalog.QUEUED_QUERIES, labels, float(router.num_queued)))
            series.append((catalog.ONGOING_AT_REPLICAS, labels, float(router.num_inflight)))
            if router.requests:
                by_route = (deployment.name, "", deployment.app_name, "", actor_id)
                series.append((catalog.ROUTER_REQUESTS, by_route, float(router.requests)))
        return series

    def router(self, deployment: DeploymentID) -> Router:
        """The router for ``deployment`` (created and subscribed on first use)."""
        router = self._routers.get(deployment)
        if router is None:
            router = Router(deployment, self.pool)
            router.on_demand = self.on_demand
            self._routers[deployment] = router
            self.subscribe(deployment.key, router.update)
        return router

    def subscribe(self, key: str, callback: Callable[[Any], None]) -> None:
        """Call ``callback(value)`` now (if known) and whenever ``key``'s snapshot changes."""
        self._callbacks.setdefault(key, []).append(callback)
        if key in self._values:
            callback(self._values[key])
        if key not in self._versions:
            self._versions[key] = -1
            self._first_snapshot.setdefault(key, asyncio.Event())
            self._restart_listen()

    async def wait_for_snapshot(self, key: str, timeout_s: float) -> None:
        event = self._first_snapshot.setdefault(key, asyncio.Event())
        if key in self._values:
            return
        await asyncio.wait_for(event.wait(), timeout_s)

    def _restart_listen(self) -> None:
        if self._listen_task is not None and not self._listen_task.done():
            self._keys_changed.set()  # the open call is re-issued with the new keys
            return
        self._listen_task = asyncio.get_running_loop().create_task(self._listen_loop())

    async def _listen_once(self) -> dict[str, tuple[int, Any]] | None:
        """One long-poll call; None if it was abandoned because the key set grew."""
        self._keys_changed.clear()
        req_id, reply = self._controller.call_future(
            "listen", (dict(self._versions), LISTEN_TIMEOUT_S), {}
        )
        keys_changed = asyncio.ensure_future(self._keys_changed.wait())
        try:
            await asyncio.wait({reply, keys_changed}, return_when=asyncio.FIRST_COMPLETED)
        finally:
            keys_changed.cancel()
            if not reply.done():
                self._controller.cancel_request(req_id)
                reply.cancel()
        if reply.cancelled():
            return None
        result: dict[str, tuple[int, Any]] = reply.result()
        return result

    async def _listen_loop(self) -> None:
        backoff = 0.05
        while True:
            try:
                changes = await self._listen_once()
            except (ConnectionLost, OSError):
                logger.warning("lost the controller; routers keep their last known replicas")
                return
            except Exception:
                logger.exception("long-poll listen failed; retrying")
                await asyncio.sleep(backoff)
                backoff = min(backoff * 2, 2.0)
                continue
            if changes is None:
                continue
            backoff = 0.05
            for key, (version, value) in changes.items():
                self._versions[key] = version
                self._values[key] = value
                for callback in self._callbacks.get(key, []):
                    try:
                        callback(value)
                    except Exception:
                        logger.exception("snapshot callback for %s failed", key)
                event = self._first_snapshot.get(key)
                if event is not None:
                    event.set()

    def set_controller(self, controller: Connection) -> None:
        """Listen on a new controller (after a head restart). Its versions start over, so
        every key is asked for afresh; routers keep their replicas meanwhile."""
        self._controller = controller
        self._versions = dict.fromkeys(self._versions, -1)
        if self._listen_task is not None:
            self._listen_task.cancel()
        self._listen_task = asyncio.get_running_loop().create_task(self._listen_loop())

    def close(self) -> None:
        if self._listen_task is not None:
            self._listen_task.cancel()
        self.demand.stop()
        self._stop_collecting()
        self.pool.close()


class LoopRouters:
    """Routers bound to another event loop of this process (a user's ``asyncio.run``).

    Calls made from that loop then need no hop to the core's thread: the
    routers and their connections live on the caller's loop, and only
    replica-set updates cross threads (forwarded from the core's registry).
    """

    def __init__(
        self,
        registry: RouterRegistry,
        registry_loop: asyncio.AbstractEventLoop,
        loop: asyncio.AbstractEventLoop,
    ) -> None:
        self._registry = registry
        self._registry_loop = registry_loop
        self._loop = loop
        self.pool = ConnectionPool()
        self.routers: dict[DeploymentID, Router] = {}
        registry_loop.call_soon_threadsafe(registry.add_loop_routers, self)

    @property
    def traffic(self) -> dict[DeploymentID, CompiledPolicy]:
        """The registry's traffic policies (a dict replaced whole, safe to read here)."""
        return self._registry.traffic

    def _on_demand(self, cold: bool) -> None:
        if not self._registry_loop.is_closed():
            self._registry_loop.call_soon_threadsafe(self._registry.on_demand, cold)

    def router(self, deployment: DeploymentID) -> Router:
        router = self.routers.get(deployment)
        if router is None:
            router = Router(deployment, self.pool)
            router.on_demand = self._on_demand
            self.routers[deployment] = router
            loop = self._loop

            def forward(value: Any, router: Router = router) -> None:
                if not loop.is_closed():
                    loop.call_soon_threadsafe(router.update, value)

            self._registry_loop.call_soon_threadsafe(
                self._registry.subscribe, deployment.key, forward
            )
        return router
