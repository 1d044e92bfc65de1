"""Tells the controller which multiplexed models this replica holds (model-aware routing).

The set is the ids of the models loaded or loading in this process
(:func:`schooner.multiplex._multiplexed_model_ids`). It is sent as one one-way
``report_models`` message on the controller connection when it changes, not
per request: a change schedules a send, at once if the last one was at least
:data:`MIN_INTERVAL_S` ago, else at the end of that interval, and the send
carries the set as it is then (a burst of changes is one message with the
latest set). A set equal to the last one sent on the same connection is not
sent again; on a new connection (a restarted head) it is sent afresh. A new
replica process holds no models, so the controller starts with none for it.
"""

from __future__ import annotations

import asyncio
import logging
import threading
import time
from collections.abc import Callable

from schooner import multiplex
from schooner.rpc.connection import Connection

__all__ = ["MIN_INTERVAL_S", "ModelReporter"]

logger = logging.getLogger("schooner.replica")

#: At most one report per this many seconds (the latest set is always sent).
MIN_INTERVAL_S = 0.05


class ModelReporter:
    """Reports the models of replica ``replica_id`` to whatever ``controller()`` returns."""

    def __init__(
        self,
        replica_id: str,
        controller: Callable[[], Connection],
        loop: asyncio.AbstractEventLoop,
        min_interval_s: float = MIN_INTERVAL_S,
    ) -> None:
        self.replica_id = replica_id
        self._controller = controller
        self._loop = loop
        self._thread_id = threading.get_ident()
        self._min_interval_s = min_interval_s
        self._timer: asyncio.TimerHandle | asyncio.Handle | None = None
        self._last_sent_at = -float("inf")
        self._sent: tuple[tuple[str, ...], Connection] | None = None
        #: Reports sent so far (for tests and logs).
        self.reports = 0

    def start(self) -> None:
        """Listen for changes of this process's models (call on ``loop``'s thread)."""
        self._thread_id = threading.get_ident()
        if self._changed not in multiplex._on_change:
            multiplex._on_change.append(self._changed)

    def stop(self) -> None:
        if self._changed in multiplex._on_change:
            multiplex._on_change.remove(self._changed)
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None

    def resend(self) -> None:
        """Send the current set now if there is one (on a new connection to the head)."""
        self._sent = None
        self._schedule()

    def _changed(self) -> None:
        if threading.get_ident() == self._thread_id:
            self._schedule()
        elif not self._loop.is_closed():
            self._loop.call_soon_threadsafe(self._schedule)  # a model loaded on a user thread

    def _schedule(self) -> None:
        if self._timer is not None:
            return  # a send is due: it will take the latest set
        wait_s = self._last_sent_at + self._min_interval_s - time.monotonic()
        if wait_s > 0:
            self._timer = self._loop.call_later(wait_s, self._send)
        else:
            # On the next turn of the loop: changes made in this one go in the same message.
            self._timer = self._loop.call_soon(self._send)

    def _send(self) -> None:
        self._timer = None
        conn = self._controller()
        if not conn.is_open:
            return  # the next head gets the set when the replica rejoins (resend)
        model_ids = tuple(sorted(multiplex._multiplexed_model_ids()))
        if self._sent is not None and self._sent[1] is conn and self._sent[0] == model_ids:
            return
        if self._sent is None and not model_ids:
            self._sent = (model_ids, conn)  # the controller starts with none: nothing to say
            return
        try:
            conn.notify("report_models", self.replica_id, model_ids)
        except Exception:  # the connection is closing; the rejoin resends
            logger.debug("could not report multiplexed models", exc_info=True)
            return
        self._sent = (model_ids, conn)
        self._last_sent_at = time.monotonic()
        self.reports += 1
