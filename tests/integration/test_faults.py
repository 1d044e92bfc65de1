"""Fault injection (marked slow: select with `-m slow`, skip with `-m "not slow"`).

Replicas killed one after another under steady load, and a deployment offered far more
than it can take: what fails, how fast, and whether the instance stays responsive.
"""

from __future__ import annotations

import asyncio
import os
import random
import signal
import time

import pytest
from helpers import Load, wait_for
from starlette.requests import Request

import schooner as serve
from conftest import Instance

pytestmark = pytest.mark.slow


@serve.deployment(num_replicas=3, max_ongoing_requests=16)
async def steady(request: Request) -> int:
    await asyncio.sleep(0.002)
    return os.getpid()


@serve.deployment(max_ongoing_requests=2, max_queued_requests=4)
async def saturated(request: Request) -> str:
    await asyncio.sleep(0.01)
    return "ok"


def running_pids(app: str) -> list[int]:
    from schooner import api

    details = api._controller_call("details")
    deps = details["applications"][app]["deployments"]
    return [r["pid"] for d in deps.values() for r in d["replicas"] if r["state"] == "RUNNING"]


def test_a_replica_killed_every_second_fails_only_its_requests(clean: Instance) -> None:
    serve.run(steady.bind(), name="steady", route_prefix="/steady")
    killed = 0
    with Load(f"{clean.url}/steady", threads=6) as load:
        for _ in range(8):
            pids = running_pids("steady")
            if pids:
                os.kill(random.choice(pids), signal.SIGKILL)
                killed += 1
            time.sleep(1.0)  # the injection's pace (one kill a second), not a wait for a state
        wait_for(lambda: len(running_pids("steady")) == 3, 30, message="three replicas again")
        mark = load.ok
        wait_for(lambda: load.ok > mark + 200, message="answers after the last kill")
    total = load.ok + len(load.failures)
    print(f"{killed} replicas killed: {len(load.failures)} failed of {total}")
    assert killed == 8
    # Only requests running on a killed replica fail: at most one per client per kill.
    assert len(load.failures) <= 6 * killed, load.failures[:5]
    assert len(load.failures) / total < 0.01
    assert all("died" in f for f in load.failures), load.failures[:5]


async def _hammer(port: int, seconds: float) -> tuple[list[tuple[int, float]], int]:
    request = b"GET /saturated HTTP/1.1\r\nHost: x\r\n\r\n"
    answers: list[tuple[int, float]] = []
    deadline = time.perf_counter() + seconds

    async def client() -> None:
        reader, writer = await asyncio.open_connection("127.0.0.1", port)
        while time.perf_counter() < deadline:
            start = time.perf_counter()
            writer.write(request)
            head = await reader.readuntil(b"\r\n\r\n")
            length = int(head.lower().split(b"content-length:")[1].split(b"\r\n")[0])
            await reader.readexactly(length)
            answers.append((int(head[9:12]), time.perf_counter() - start))
        writer.close()

    healthy = 0

    async def probe() -> None:
        nonlocal healthy
        while time.perf_counter() < deadline:
            reader, writer = await asyncio.open_connection("127.0.0.1", port)
            writer.write(b"GET /-/healthz HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
            if (await reader.read()).startswith(b"HTTP/1.1 200"):
                healthy += 1
            writer.close()
            await asyncio.sleep(0.1)

    await asyncio.gather(probe(), *(client() for _ in range(48)))
    return answers, healthy


def test_overload_is_refused_fast_and_health_keeps_answering(clean: Instance) -> None:
    serve.run(saturated.bind(), name="saturated", route_prefix="/saturated")
    answers, healthy = asyncio.run(_hammer(clean.port, 3.0))
    ok = [t for status, t in answers if status == 200]
    refused = sorted(t for status, t in answers if status == 503)
    assert len(ok) + len(refused) == len(answers)  # nothing but 200s and 503s
    assert ok and len(refused) > 10 * len(ok)
    assert refused[int(0.99 * (len(refused) - 1))] < 0.1  # refusals are immediate
    assert healthy >= 20  # /-/healthz answered throughout (about every 0.1 s)
    # Other applications are not affected.
    assert clean.http.get("/-/routes").status_code == 200
