"""The per-process core: event loop, controller connection and routers.

Every process that talks to an instance (driver, proxy, replica) has one
:class:`Core`. In replicas and proxies it lives on the process's main event
loop; in a driver it runs its own loop on a daemon thread, so that sync user
code can call handles.

When the controller connection closes because the head crashed, the core
reconnects to the next head (see :meth:`Core.keep_connected`); meanwhile
routers keep the replicas they know, so requests go on being served.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import logging
import os
import threading
import weakref
from collections.abc import Awaitable, Callable, Coroutine
from typing import Any, TypeVar

from schooner.exceptions import RayServeException
from schooner.router.registry import LoopRouters, RouterRegistry
from schooner.rpc.connection import Connection, ConnectionLost, RemoteCallError
from schooner.rpc.transport import connect
from schooner.runtime.session import Session
from schooner.telemetry.reporter import Reporter

T = TypeVar("T")

logger = logging.getLogger("schooner.core")

#: How often a lost controller is dialled again.
RECONNECT_INTERVAL_S = 0.05
#: The head removes its socket when it shuts down: once it has been missing this long,
#: the instance is gone (a restarting head recreates it at once).
SOCKET_GONE_S = 1.0
#: How long a controller call waits for a restarting head before it fails.
RECONNECT_WAIT_S = 30.0
#: Calls that only read: when the head dies during one, it is asked again of the next head.
_READ_ONLY = frozenset(
    {"ping", "status", "details", "app_info", "app_names", "instance_info", "wait_app"}
)

_core: Core | None = None
_core_lock = threading.Lock()


class Core:
    """Connection of this process to one instance."""

    def __init__(
        self,
        loop: asyncio.AbstractEventLoop,
        session: Session,
        controller: Connection,
        thread: threading.Thread | None = None,
        address: str | None = None,
    ) -> None:
        """``address``: the controller's (a Unix socket path, or ``tcp://host:port`` on the
        Ray backend); by default the session's controller socket."""
        self.loop = loop
        self.session = session
        self.address = address or session.controller_socket
        self.controller = controller
        self.registry = RouterRegistry(controller)
        self._thread = thread
        self._thread_id = thread.ident if thread is not None else threading.get_ident()
        self._loop_routers: weakref.WeakKeyDictionary[asyncio.AbstractEventLoop, LoopRouters] = (
            weakref.WeakKeyDictionary()
        )
        self._closing = False
        self._handler: object | None = None
        self._on_reconnect: Callable[[Connection], Awaitable[object]] | None = None
        self._on_lost: list[Callable[[], None]] = []
        self._alive: Callable[[], bool] = lambda: True
        self._reconnecting: asyncio.Task[None] | None = None
        #: Sends this process's metrics to the head every few seconds.
        self.reporter = Reporter(lambda: self.controller)
        loop.call_soon_threadsafe(self.reporter.start)

    # -- surviving a head restart ---------------------------------------------------
    def keep_connected(
        self,
        handler: object | None = None,
        on_reconnect: Callable[[Connection], Awaitable[object]] | None = None,
        alive: Callable[[], bool] | None = None,
    ) -> None:
        """Reconnect to the controller whenever the connection closes (the head crashed
        and its supervisor starts another). ``handler`` serves the controller's calls on
        the new connection; ``on_reconnect(conn)`` runs once connected (re-register);
        ``alive()`` returning False means the instance is gone for good. Must be called
        on the core loop. Callbacks added with :meth:`on_lost` run when it gives up."""
        self._handler = handler
        self._on_reconnect = on_reconnect
        if alive is not None:
            self._alive = alive
        self.controller.on_close.append(self._controller_closed)

    def on_lost(self, callback: Callable[[], None]) -> None:
        """Call ``callback`` (on the core loop) once the instance is gone for good."""
        self._on_lost.append(callback)

    def _controller_closed(self, _conn: Connection) -> None:
        if self._closing or self.loop.is_closed():
            return
        if self._reconnecting is None or self._reconnecting.done():
            logger.warning("lost the controller; reconnecting (routers keep their replicas)")
            self._reconnecting = self.loop.create_task(self._reconnect())

    async def _reconnect(self) -> None:
        path = self.address
        unix = not path.startswith("tcp://")
        missing_since: float | None = None
        while not self._closing:
            try:
                conn = await connect(path, self._handler)
            except OSError:
                now = self.loop.time()
                gone = unix and not os.path.exists(path)
                missing_since = (missing_since or now) if gone else None
                if not self._alive() or (
                    missing_since is not None and now - missing_since > SOCKET_GONE_S
                ):
                    break
                await asyncio.sleep(RECONNECT_INTERVAL_S)
                continue
            self.controller = conn
            self.registry.set_controller(conn)
            conn.on_close.append(self._controller_closed)
            if self._on_reconnect is not None:
                try:
                    await self._on_reconnect(conn)
                except (ConnectionLost, RemoteCallError, OSError) as exc:
                    logger.warning("re-registering with the new head failed: %r", exc)
                    conn.close()
                    await asyncio.sleep(RECONNECT_INTERVAL_S)
                    continue
            logger.info("reconnected to the controller")
            return
        if not self._closing:
            logger.warning("the instance is gone")
            for callback in self._on_lost:
                callback()

    # -- construction -------------------------------------------------------------
    @classmethod
    async def connect(
        cls, session: Session, handler: object | None = None, address: str | None = None
    ) -> Core:
        """Connect from the running loop (replicas, proxies)."""
        address = address or session.controller_socket
        conn = await connect(address, handler)
        return cls(asyncio.get_running_loop(), session, conn, address=address)

    @classmethod
    def start_background(cls, session: Session, address: str | None = None) -> Core:
        """Start a loop thread and connect from it (drivers)."""
        loop = asyncio.new_event_loop()
        ready: concurrent.futures.Future[Core] = concurrent.futures.Future()

        def run() -> None:
            asyncio.set_event_loop(loop)

            async def setup() -> None:
                try:
                    conn = await connect(address or session.controller_socket)
                    ready.set_result(cls(loop, session, conn, thread, address))
                except BaseException as exc:
                    ready.set_exception(exc)

            setup_task = loop.create_task(setup())
            loop.run_forever()
            del setup_task
            loop.close()

        thread = threading.Thread(target=run, name="schooner-core", daemon=True)
        thread.start()
        try:
            return ready.result(timeout=30)
        except BaseException:
            loop.call_soon_threadsafe(loop.stop)
            raise

    # -- running coroutines ---------------------------------------------------------
    def routers_for(self, loop: asyncio.AbstractEventLoop) -> RouterRegistry | LoopRouters:
        """Routers usable from ``loop``: the registry itself on the core loop, else loop-local."""
        if loop is self.loop:
            return self.registry
        routers = self._loop_routers.get(loop)
        if routers is None:
            routers = LoopRouters(self.registry, self.loop, loop)
            self._loop_routers[loop] = routers
        return routers

    def in_loop_thread(self) -> bool:
        return threading.get_ident() == self._thread_id

    def submit(
        self, coro: Coroutine[Any, Any, T]
    ) -> asyncio.Future[T] | concurrent.futures.Future[T]:
        """Run ``coro`` on the core loop from any thread."""
        if self.in_loop_thread():
            return self.loop.create_task(coro)
        return asyncio.run_coroutine_threadsafe(coro, self.loop)

    def run_sync(self, coro: Coroutine[Any, Any, T], timeout_s: float | None = None) -> T:
        """Run ``coro`` on the core loop and block this (non-loop) thread for the result."""
        if self.in_loop_thread():
            coro.close()
            raise RuntimeError("cannot block on the Schooner event loop from inside it")
        return asyncio.run_coroutine_threadsafe(coro, self.loop).result(timeout_s)

    async def call_controller(self, method: str, *args: Any) -> Any:
        """Call the controller. While a crashed head is being replaced, wait for the next
        one (up to :data:`RECONNECT_WAIT_S`); a read-only call cut off by the crash is
        asked again."""
        for attempt in (1, 2):
            reconnecting = self._reconnecting
            if not self.controller.is_open and reconnecting is not None:
                try:
                    await asyncio.wait_for(asyncio.shield(reconnecting), RECONNECT_WAIT_S)
                except TimeoutError:
                    pass  # the call below fails with ConnectionLost
            try:
                return await self.controller.call(method, *args)
            except ConnectionLost:
                if attempt == 2 or method not in _READ_ONLY or self._reconnecting is None:
                    raise
                await asyncio.sleep(0)  # let the close callback start reconnecting
        raise AssertionError("unreachable")

    def call_controller_sync(self, method: str, *args: Any, timeout_s: float | None = 60) -> Any:
        return self.run_sync(self.call_controller(method, *args), timeout_s)

    def close(self) -> None:
        """Disconnect; stops the loop thread of a driver core."""

        self._closing = True

        def shutdown() -> None:
            if self._reconnecting is not None:
                self._reconnecting.cancel()
            self.reporter.stop()
            self.reporter.report()  # the last counts (a driver's handle calls)
            self.registry.close()
            self.controller.close()
            if self._thread is not None:
                self.loop.call_later(0.05, self.loop.stop)

        if self.in_loop_thread():
            shutdown()
        elif not self.loop.is_closed():
            try:
                self.loop.call_soon_threadsafe(shutdown)
            except RuntimeError:
                return
            if self._thread is not None:
                self._thread.join(timeout=5)


def get_core() -> Core:
    """This process's core; raises if it is not connected to an instance."""
    if _core is None:
        raise RayServeException(
            "Schooner is not running in this process. Call `serve.run(...)` or "
            "`serve.start()` first."
        )
    return _core


def get_core_or_none() -> Core | None:
    return _core


def set_core(core: Core | None) -> None:
    global _core
    with _core_lock:
        _core = core
