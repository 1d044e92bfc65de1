"""A replica process killed under load: only its in-flight requests fail, with an error
naming it; callers stop using it at once and the controller replaces it."""

from __future__ import annotations

import os
import signal

from helpers import Load, wait_for
from starlette.requests import Request

import schooner as serve
from conftest import Instance


@serve.deployment(num_replicas=3, max_ongoing_requests=8)
class Worker:
    async def __call__(self, request: Request) -> int:
        import asyncio

        await asyncio.sleep(0.005)
        return os.getpid()


def test_killed_replica_fails_only_its_requests_and_is_replaced(clean: Instance) -> None:
    serve.run(Worker.bind(), name="crash", route_prefix="/crash")
    with Load(f"{clean.url}/crash", threads=6) as load:
        wait_for(lambda: len(set(load.answers)) == 3, message="all three replicas answering")
        victim = int(load.answers[-1])  # type: ignore[call-overload]
        os.kill(victim, signal.SIGKILL)
        mark = len(load.answers)
        # Replaced: three replicas again, none of them the victim, all answering.
        wait_for(
            lambda: len(set(load.since(mark)[-300:]) - {victim}) == 3,
            timeout_s=30,
            message="a replacement replica answering",
        )
        ok_before_check = load.ok
        wait_for(lambda: load.ok > ok_before_check + 200, message="more answers")
    assert victim not in set(load.since(mark)[-200:])
    # At most the requests that were running on it failed (6 clients: at most 6),
    # each with a 503 that names the dead replica.
    print(f"killed replica: {len(load.failures)} failed of {load.ok + len(load.failures)}")
    assert len(load.failures) <= 6, load.failures
    for failure in load.failures:
        assert "503" in failure and "Replica " in failure and "died" in failure, failure
    app = serve.status().applications["crash"]
    assert app.deployments["Worker"].replica_states == {"RUNNING": 3}
