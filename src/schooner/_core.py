"""The per-process core: event loop, controller connection and routers.

Every process that talks to an instance (driver, proxy, replica) has one
:class:`Core`. In replicas and proxies it lives on the process's main event
loop; in a driver it runs its own loop on a daemon thread, so that sync user
code can call handles.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import threading
import weakref
from collections.abc import Coroutine
from typing import Any, TypeVar

from schooner.exceptions import RayServeException
from schooner.router.registry import LoopRouters, RouterRegistry
from schooner.rpc.connection import Connection, connect_unix
from schooner.runtime.session import Session

T = TypeVar("T")

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
    ) -> None:
        self.loop = loop
        self.session = session
        self.controller = controller
        self.registry = RouterRegistry(controller)
        self._thread = thread
        self._thread_id = thread.ident if thread is not None else threading.get_ident()
        self._loop_routers: weakref.WeakKeyDictionary[asyncio.AbstractEventLoop, LoopRouters] = (
            weakref.WeakKeyDictionary()
        )

    # -- construction -------------------------------------------------------------
    @classmethod
    async def connect(cls, session: Session, handler: object | None = None) -> Core:
        """Connect from the running loop (replicas, proxies)."""
        conn = await connect_unix(session.controller_socket, handler)
        return cls(asyncio.get_running_loop(), session, conn)

    @classmethod
    def start_background(cls, session: Session) -> Core:
        """Start a loop thread and connect from it (drivers)."""
        loop = asyncio.new_event_loop()
        ready: concurrent.futures.Future[Core] = concurrent.futures.Future()

        def run() -> None:
            asyncio.set_event_loop(loop)

            async def setup() -> None:
                try:
                    conn = await connect_unix(session.controller_socket)
                    ready.set_result(cls(loop, session, conn, thread))
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

    def call_controller_sync(self, method: str, *args: Any, timeout_s: float | None = 60) -> Any:
        return self.run_sync(self.controller.call(method, *args), timeout_s)

    def close(self) -> None:
        """Disconnect; stops the loop thread of a driver core."""

        def shutdown() -> None:
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
