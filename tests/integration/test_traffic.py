"""Traffic splitting, shard keys and shadows end to end: real HTTP through the proxy and
handles from the driver (sync and asyncio), against replicas that say who answered."""

from __future__ import annotations

import asyncio
import os
import threading
import time
from collections import Counter
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import httpx
import pytest
from helpers import wait_for

import schooner as serve

SPLIT_REQUESTS = 3_000
HTTP_THREADS = 8


@serve.deployment(num_replicas=2)
class Who:
    """Answers with the application, replica id and pid that served the request."""

    def __init__(self) -> None:
        self.calls = 0

    def _me(self) -> dict[str, Any]:
        ctx = serve.get_replica_context()
        return {"app": ctx.app_name, "replica": ctx.replica_tag, "pid": os.getpid()}

    async def __call__(self, request: Any = None) -> dict[str, Any]:
        self.calls += 1
        return self._me()

    async def frames(self, n: int) -> Any:
        for _ in range(n):
            yield self._me()["app"]

    async def count(self) -> int:
        return self.calls


@serve.deployment(max_ongoing_requests=100)
class Recorder:
    """A shadow that counts the copies it receives."""

    def __init__(self) -> None:
        self.calls = 0

    async def __call__(self, request: Any = None) -> str:
        self.calls += 1
        return "shadow answer (discarded)"

    async def count(self) -> int:
        return self.calls


@serve.deployment
class Broken:
    async def __call__(self, request: Any = None) -> str:
        raise RuntimeError("the shadow under test fails every request")


@serve.deployment(max_ongoing_requests=2)
class Slow:
    async def __call__(self, request: Any = None) -> str:
        await asyncio.sleep(2)
        return "slow"


@pytest.fixture(scope="module")
def apps(_module_instances: Any, request: pytest.FixtureRequest) -> Iterator[httpx.Client]:
    """``app`` (route /, the owner) and ``canary`` (no route), two replicas each."""
    inst = _module_instances.use("embedded", request)
    serve.run(Who.bind(), name="app", route_prefix="/")
    serve.run(Who.bind(), name="canary", route_prefix=None)
    client = httpx.Client(
        base_url=inst.url, timeout=30, limits=httpx.Limits(max_keepalive_connections=16)
    )
    yield client
    client.close()
    names = list(serve.status().applications)
    for name in names:  # all at once: each drains its replicas (the slow shadow's for 2 s)
        serve.delete(name, _blocking=False)
    wait_for(
        lambda: not set(names) & set(serve.status().applications),
        timeout_s=60,
        message="the module's applications deleted",
    )


@pytest.fixture
def traffic(apps: httpx.Client) -> Iterator[httpx.Client]:
    """The module's apps with no policy before and after the test."""
    serve.set_traffic("app", None)
    yield apps
    serve.set_traffic("app", None)
    for shadow in ("shadow", "broken", "slow"):
        if shadow in serve.status().applications:
            serve.shadow_traffic("app", shadow, 0)


def _get(client: httpx.Client, headers: dict[str, str] | None = None) -> dict[str, Any]:
    r = client.get("/", headers=headers)
    assert r.status_code == 200, r.text
    body: dict[str, Any] = r.json()
    body["header"] = r.headers.get("x-serve-application")
    body["latency_s"] = r.elapsed.total_seconds()
    return body


def _many(client: httpx.Client, n: int, headers: dict[str, str] | None = None) -> list[dict]:
    with ThreadPoolExecutor(HTTP_THREADS) as pool:
        return list(pool.map(lambda _: _get(client, headers), range(n)))


def _wait_split_applied(client: httpx.Client, app: str) -> None:
    """The proxy has the policy once answers carry the header (it comes with the policy)."""
    wait_for(lambda: _get(client)["header"] is not None, timeout_s=10, message="the split")
    del app


def test_split_accuracy_over_http_and_live_weight_change(traffic: httpx.Client) -> None:
    before = {(a["app"], a["pid"]) for a in _many(traffic, 200)}
    assert {app for app, _ in before} == {"app"}
    assert "x-serve-application" not in traffic.get("/").headers  # no policy: no header

    serve.set_traffic("app", {"app": 0.7, "canary": 0.3})
    _wait_split_applied(traffic, "app")
    answers = _many(traffic, SPLIT_REQUESTS)
    counts = Counter(a["app"] for a in answers)
    assert all(a["header"] == a["app"] for a in answers)
    share = counts["canary"] / SPLIT_REQUESTS
    assert abs(share - 0.3) <= 0.03, counts

    serve.set_traffic("app", {"canary": 1.0})
    wait_for(
        lambda: all(a["app"] == "canary" for a in _many(traffic, 20)),
        timeout_s=10,
        message="all requests on canary",
    )
    serve.set_traffic("app", {"app": 1.0})
    wait_for(
        lambda: all(a["app"] == "app" for a in _many(traffic, 20)),
        timeout_s=10,
        message="all requests back on app",
    )
    pids = {(a["app"], a["pid"]) for a in answers}
    assert {p for app, p in before} == {p for app, p in pids if app == "app"}  # no restarts
    after = {(a["app"], a["pid"]) for a in _many(traffic, 200)}
    assert after == before


def test_shard_keys_pin_one_app_and_one_replica_over_http_and_handles(
    traffic: httpx.Client,
) -> None:
    serve.set_traffic("app", {"app": 0.5, "canary": 0.5})
    _wait_split_applied(traffic, "app")
    keys = [f"user-{i}" for i in range(100)]
    seen: dict[str, set[tuple[str, str]]] = {k: set() for k in keys}
    for round_ in range(3):
        for key in keys:
            # Header names are case-insensitive: vary the spelling.
            name = "X-SERVE-SHARD-KEY" if round_ % 2 else "x-serve-shard-key"
            a = _get(traffic, {name: key})
            assert a["header"] == a["app"]
            seen[key].add((a["app"], a["replica"]))
    handle = serve.get_app_handle("app")
    for key in keys:
        for _ in range(2):
            a = handle.options(shard_key=key).remote().result()
            seen[key].add((a["app"], a["replica"]))
    assert all(len(places) == 1 for places in seen.values()), {
        k: v for k, v in seen.items() if len(v) > 1
    }
    places = [next(iter(v)) for v in seen.values()]
    apps = Counter(app for app, _ in places)
    assert 25 <= apps["canary"] <= 75, apps  # keys follow the 0.5/0.5 weights
    for app in ("app", "canary"):  # and spread over both replicas of each app
        assert len({replica for a, replica in places if a == app}) == 2

    # A streaming call follows the same key; a shard key without a split pins a replica.
    key = keys[0]
    frames = list(handle.options(shard_key=key, stream=True).frames.remote(3))
    assert frames == [places[0][0]] * 3
    serve.set_traffic("app", None)
    wait_for(lambda: _get(traffic)["header"] is None, timeout_s=10, message="split removed")
    for key in keys[:20]:
        replicas = {_get(traffic, {"x-serve-shard-key": key})["replica"] for _ in range(3)}
        assert len(replicas) == 1


def test_app_handle_follows_the_split_sync_and_async(traffic: httpx.Client) -> None:
    serve.set_traffic("app", {"app": 0.5, "canary": 0.5})
    handle = serve.get_app_handle("app")
    wait_for(lambda: handle.remote().result()["app"] == "canary", timeout_s=10, message="the split")
    sync = Counter(handle.remote().result()["app"] for _ in range(300))
    assert 0.4 <= sync["canary"] / 300 <= 0.6, sync

    async def calls() -> Counter[str]:  # a user's event loop: routers on that loop
        answers = await asyncio.gather(*(handle.remote() for _ in range(300)))
        return Counter(a["app"] for a in answers)

    on_loop = asyncio.run(calls())
    assert 0.4 <= on_loop["canary"] / 300 <= 0.6, on_loop


def _shadow_count(name: str, before: int = -1) -> int:
    """The shadow's count once it has stopped changing (copies still arriving)."""
    handle = serve.get_app_handle(name).count
    last = handle.remote().result()
    deadline = time.monotonic() + 10
    while time.monotonic() < deadline:
        time.sleep(0.2)
        now = handle.remote().result()
        if now == last and now != before:
            return int(now)
        last = now
    return int(last)


def test_shadow_gets_its_fraction_and_the_primary_is_unchanged(traffic: httpx.Client) -> None:
    serve.run(Recorder.bind(), name="shadow", route_prefix=None)
    serve.shadow_traffic("app", "shadow", 0.5)
    _wait_split_applied(traffic, "app")  # the shadow's policy also brings the header
    start = _shadow_count("shadow")
    answers = [traffic.get("/") for _ in range(400)]
    assert all(r.status_code == 200 and r.json()["app"] == "app" for r in answers)
    assert all(r.headers["x-serve-application"] == "app" for r in answers)
    http_copies = _shadow_count("shadow", start) - start
    assert abs(http_copies / 400 - 0.5) <= 0.10, http_copies

    handle = serve.get_app_handle("app")
    results = [handle.remote().result() for _ in range(400)]
    assert all(r["app"] == "app" for r in results)
    handle_copies = _shadow_count("shadow", start + http_copies) - start - http_copies
    assert abs(handle_copies / 400 - 0.5) <= 0.10, handle_copies


def test_failing_or_slow_shadows_never_change_or_delay_the_primary(
    traffic: httpx.Client,
) -> None:
    serve.run(Broken.bind(), name="broken", route_prefix=None)
    serve.run(Slow.bind(), name="slow", route_prefix=None)
    serve.shadow_traffic("app", "broken", 1.0)
    serve.shadow_traffic("app", "slow", 1.0)
    _wait_split_applied(traffic, "app")
    answers = _many(traffic, 200)
    assert all(a["app"] == "app" for a in answers)
    slowest = max(a["latency_s"] for a in answers)
    assert slowest < 1.0, f"a request took {slowest:.2f} s: it waited for a shadow"

    handle = serve.get_app_handle("app")
    started = time.monotonic()
    assert all(handle.remote().result()["app"] == "app" for _ in range(50))
    streamed = list(handle.options(stream=True).frames.remote(2))
    assert streamed == ["app", "app"]
    assert time.monotonic() - started < 5.0  # 50 calls next to a 2 s shadow


def test_deleting_the_canary_sends_everything_back_without_failures(
    traffic: httpx.Client,
) -> None:
    serve.run(Who.options(num_replicas=1).bind(), name="canary2", route_prefix=None)
    serve.set_traffic("app", {"app": 0.5, "canary2": 0.5})
    _wait_split_applied(traffic, "app")
    failures: list[str] = []
    landed: Counter[str] = Counter()
    stop = threading.Event()

    def load() -> None:
        while not stop.is_set():
            try:
                r = traffic.get("/")
            except httpx.HTTPError as exc:
                failures.append(repr(exc))
                continue
            if r.status_code != 200:
                failures.append(f"{r.status_code}: {r.text}")
            else:
                landed[r.json()["app"]] += 1

    threads = [threading.Thread(target=load) for _ in range(4)]
    for t in threads:
        t.start()
    try:
        wait_for(lambda: landed["canary2"] > 20, timeout_s=10, message="canary2 answering")
        serve.delete("canary2")
        mark = landed["canary2"]
        # Everything goes back to the owner: canary2's count stops growing.
        wait_for(
            lambda: landed["app"] > 200 and _stable(landed, "canary2", mark),
            timeout_s=20,
            message="all requests back on app",
        )
    finally:
        stop.set()
        for t in threads:
            t.join()
    assert not failures, failures[:5]
    assert serve.get_traffic("app")["split"] in ({}, {"app": 1.0})


def _stable(landed: Counter[str], app: str, mark: int) -> bool:
    before = landed[app]
    now = landed["app"]
    wait_for(lambda: landed["app"] > now + 50, timeout_s=10, message="more requests")
    return landed[app] == before and before >= mark
