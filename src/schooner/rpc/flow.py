"""Credit-based flow control for duplex RPC calls.

A duplex call (:meth:`schooner.rpc.connection.Connection.open_duplex`) has
no flow control of its own: a fast sender could fill the receiver's memory.
Protocols on top of it keep each direction bounded with these two halves:

- the sender records each message in its :class:`Credit` and stops sending
  (stops reading its source, or makes its producer wait) while the
  unacknowledged total is over the window;
- the receiver counts the messages it has consumed in :class:`Acks`, which
  sends the count back (as an ``int`` item) at most once per event-loop
  iteration.

Messages are acknowledged in the order they were sent, by count, so the two
sides need not agree on sizes. A message counts for its length plus a fixed
overhead, so a flood of tiny messages is bounded too.
"""

from __future__ import annotations

import asyncio
from collections import deque
from collections.abc import Callable
from typing import Any

#: By default, at most this many bytes of messages are unacknowledged, each way.
WINDOW_BYTES = 1024 * 1024
#: What one message counts for besides its payload.
MESSAGE_OVERHEAD_BYTES = 64


class Credit:
    """The sending side of the flow control: what was sent and not yet acknowledged."""

    __slots__ = ("_costs", "in_flight_bytes", "window_bytes")

    def __init__(self, window_bytes: int = WINDOW_BYTES) -> None:
        self.window_bytes = window_bytes
        self.in_flight_bytes = 0
        self._costs: deque[int] = deque()

    def sent(self, data: str | bytes) -> None:
        cost = len(data) + MESSAGE_OVERHEAD_BYTES
        self._costs.append(cost)
        self.in_flight_bytes += cost

    def acknowledged(self, count: int) -> None:
        costs = self._costs
        for _ in range(min(count, len(costs))):
            self.in_flight_bytes -= costs.popleft()

    @property
    def exhausted(self) -> bool:
        return self.in_flight_bytes >= self.window_bytes


class Acks:
    """The receiving side: counts consumed messages, acknowledged once per loop iteration."""

    __slots__ = ("_emit", "_loop", "_owed", "_scheduled")

    def __init__(self, emit: Callable[[Any], None], loop: asyncio.AbstractEventLoop) -> None:
        self._emit = emit
        self._loop = loop
        self._owed = 0
        self._scheduled = False

    def consumed(self, count: int = 1) -> None:
        self._owed += count
        if not self._scheduled:
            self._scheduled = True
            self._loop.call_soon(self._flush)

    def _flush(self) -> None:
        self._scheduled = False
        owed, self._owed = self._owed, 0
        if owed:
            self._emit(owed)
