"""Versioned snapshots that subscribers wait on (the controller's push channel).

The controller publishes a value under a key; the version goes up only when
the value changes. A subscriber calls :meth:`LongPollHost.listen` with the
versions it knows and gets back every key whose version differs, waiting
until at least one does (or the timeout passes).
"""

from __future__ import annotations

import asyncio
from typing import Any


class LongPollHost:
    def __init__(self) -> None:
        self._versions: dict[str, int] = {}
        self._values: dict[str, Any] = {}
        self._changed = asyncio.Event()

    def publish(self, key: str, value: Any) -> None:
        """Set ``key`` to ``value``; subscribers are woken if it differs from before."""
        if key in self._values and self._values[key] == value:
            return
        self._values[key] = value
        self._versions[key] = self._versions.get(key, 0) + 1
        self._changed.set()
        self._changed = asyncio.Event()

    def get(self, key: str) -> tuple[int, Any]:
        return self._versions.get(key, 0), self._values.get(key)

    def _diff(self, known: dict[str, int]) -> dict[str, tuple[int, Any]]:
        return {
            key: self.get(key)
            for key, version in known.items()
            if self._versions.get(key, 0) != version
        }

    async def listen(self, known: dict[str, int], timeout_s: float) -> dict[str, tuple[int, Any]]:
        """Changes relative to ``known``; waits up to ``timeout_s`` for one (``{}`` on timeout)."""
        loop = asyncio.get_running_loop()
        deadline = loop.time() + timeout_s
        while True:
            changes = self._diff(known)
            if changes:
                return changes
            remaining = deadline - loop.time()
            if remaining <= 0:
                return {}
            try:
                await asyncio.wait_for(self._changed.wait(), remaining)
            except TimeoutError:
                return {}
