"""LongPollHost: versioned snapshots that subscribers wait on."""

from __future__ import annotations

import asyncio
from collections.abc import Callable, Coroutine
from typing import Any

from schooner.controller.long_poll import LongPollHost

TIMEOUT_S = 5.0


def run(test: Callable[[], Coroutine[Any, Any, None]]) -> None:
    async def main() -> None:
        await asyncio.wait_for(test(), TIMEOUT_S)

    asyncio.run(main())


def test_versions_start_at_one_and_go_up_on_change() -> None:
    host = LongPollHost()
    assert host.get("k") == (0, None)
    host.publish("k", {"a": 1})
    assert host.get("k") == (1, {"a": 1})
    host.publish("k", {"a": 2})
    assert host.get("k") == (2, {"a": 2})


def test_equal_value_does_not_bump_the_version() -> None:
    host = LongPollHost()
    host.publish("k", [1, 2])
    host.publish("k", [1, 2])  # a different but equal object
    assert host.get("k") == (1, [1, 2])
    host.publish("k", [1, 2, 3])
    assert host.get("k")[0] == 2


def test_listen_returns_at_once_on_version_mismatch() -> None:
    async def body() -> None:
        host = LongPollHost()
        host.publish("a", "A")
        host.publish("b", "B")
        host.publish("b", "B2")
        # Only the keys asked about, and only those whose version differs.
        assert await host.listen({"a": 1, "b": 1}, timeout_s=60) == {"b": (2, "B2")}
        # A subscriber that knows nothing yet (-1) gets the current value.
        assert await host.listen({"a": -1}, timeout_s=60) == {"a": (1, "A")}
        # A key never published is reported as version 0 / None to a -1 subscriber.
        assert await host.listen({"never": -1}, timeout_s=60) == {"never": (0, None)}

    run(body)


def test_listen_waits_for_publish() -> None:
    async def body() -> None:
        host = LongPollHost()
        host.publish("k", 1)
        host.publish("other", "x")
        listener = asyncio.ensure_future(host.listen({"k": 1}, timeout_s=60))
        for _ in range(5):
            await asyncio.sleep(0)  # let it start waiting
        assert not listener.done()
        host.publish("k", 1)  # unchanged: nobody is woken with a result
        host.publish("other", "y")  # a key the listener does not watch
        for _ in range(5):
            await asyncio.sleep(0)
        assert not listener.done()
        host.publish("k", 2)
        assert await listener == {"k": (2, 2)}

    run(body)


def test_one_publish_wakes_every_listener() -> None:
    async def body() -> None:
        host = LongPollHost()
        host.publish("k", "v1")
        listeners = [asyncio.ensure_future(host.listen({"k": 1}, timeout_s=60)) for _ in range(3)]
        for _ in range(5):
            await asyncio.sleep(0)
        host.publish("k", "v2")
        assert await asyncio.gather(*listeners) == [{"k": (2, "v2")}] * 3

    run(body)


def test_listen_times_out_with_empty_dict() -> None:
    async def body() -> None:
        host = LongPollHost()
        host.publish("k", 1)
        assert await host.listen({"k": 1}, timeout_s=0.01) == {}
        assert await host.listen({"k": 1}, timeout_s=0) == {}

    run(body)
