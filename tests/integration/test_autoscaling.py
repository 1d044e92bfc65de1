"""Autoscaling end to end: real replica processes, real HTTP load and handle calls.

Delays are short (a second or two) so each test takes seconds; the numbers a user
would check are the ones asserted: replica counts reached, requests answered, zero
failed requests while replicas come and go.
"""

from __future__ import annotations

import asyncio
from typing import Any

import httpx
import pytest
from helpers import Load, wait_for

import schooner as serve
from schooner.autoscaling_policy import AutoscalingContext


def fast(**fields: Any) -> dict[str, Any]:
    """An autoscaling config that reacts within a second or two."""
    base: dict[str, Any] = {
        "min_replicas": 1,
        "max_replicas": 3,
        "target_ongoing_requests": 1,
        "upscale_delay_s": 0.5,
        "downscale_delay_s": 1.5,
        "look_back_period_s": 1,
    }
    return {**base, **fields}


@serve.deployment(ray_actor_options={"num_cpus": 0.1})
class Slow:
    async def __call__(self, request: Any = None) -> dict[str, str]:
        await asyncio.sleep(0.05)
        return {"answer": "ok"}


def deployment_status(app: str, name: str) -> Any:
    return serve.status().applications[app].deployments[name]


def running(app: str, name: str) -> int:
    states = deployment_status(app, name).replica_states
    return int(states.get("RUNNING", 0))


def settled_at(app: str, name: str, count: int) -> bool:
    status = deployment_status(app, name)
    return bool(status.replica_states == ({"RUNNING": count} if count else {}))


@pytest.mark.both_backends
def test_grows_under_load_and_shrinks_after_with_no_failed_request(clean) -> None:
    app = Slow.options(autoscaling_config=fast()).bind()
    serve.run(app, name="auto", route_prefix="/auto")
    assert running("auto", "Slow") == 1
    with Load(f"{clean.url}/auto", threads=4) as load:
        wait_for(lambda: running("auto", "Slow") == 3, timeout_s=60, message="three replicas")
        status = deployment_status("auto", "Slow")
        assert status.autoscaling["target_num_replicas"] == 3
        assert status.autoscaling["max_replicas"] == 3
        mark = load.ok
        wait_for(lambda: load.ok > mark + 20, message="answers at three replicas")
    wait_for(lambda: settled_at("auto", "Slow", 1), timeout_s=60, message="back to one replica")
    assert load.failures == []
    status = deployment_status("auto", "Slow")
    assert status.status.value == "HEALTHY"
    assert status.status_trigger.value == "DOWNSCALE_COMPLETED"
    decision = status.autoscaling["last_decision"]
    assert (decision["prev_num_replicas"], decision["curr_num_replicas"]) == (3, 1)


@pytest.mark.both_backends
def test_scale_from_zero_by_http_and_by_handle(clean) -> None:
    config = fast(min_replicas=0, max_replicas=1, downscale_to_zero_delay_s=0.5)
    handle = serve.run(
        Slow.options(autoscaling_config=config).bind(), name="zero", route_prefix="/zero"
    )
    status = deployment_status("zero", "Slow")
    assert status.replica_states == {}
    assert status.status.value == "HEALTHY"
    assert "zero" in status.message
    assert serve.status().applications["zero"].status.value == "RUNNING"
    # Over HTTP: the request waits for the replica it wakes, then is answered.
    resp = clean.http.get("/zero")
    assert (resp.status_code, resp.json()) == (200, {"answer": "ok"})
    assert running("zero", "Slow") == 1
    wait_for(lambda: settled_at("zero", "Slow", 0), timeout_s=60, message="back to zero")
    # Through a handle, the same.
    assert handle.remote().result(timeout_s=60) == {"answer": "ok"}
    wait_for(lambda: settled_at("zero", "Slow", 0), timeout_s=60, message="zero again")


def test_concurrent_requests_at_zero_are_all_answered(clean) -> None:
    config = fast(min_replicas=0, max_replicas=2)
    serve.run(Slow.options(autoscaling_config=config).bind(), name="burst", route_prefix="/b")

    async def burst() -> list[httpx.Response]:
        async with httpx.AsyncClient(base_url=clean.url, timeout=60) as client:
            return list(await asyncio.gather(*[client.get("/b") for _ in range(20)]))

    answers = asyncio.run(burst())
    assert [r.status_code for r in answers] == [200] * 20


def five_replicas(ctx: AutoscalingContext) -> tuple[int, dict[str, Any]]:
    return 2, {"calls": ctx.policy_state.get("calls", 0) + 1}


def broken_policy(ctx: AutoscalingContext) -> tuple[int, dict[str, Any]]:
    raise RuntimeError("this policy has a bug")


def test_a_custom_policy_is_called_and_obeyed(clean) -> None:
    config = fast(min_replicas=1, max_replicas=4, policy={"policy_function": five_replicas})
    serve.run(Slow.options(autoscaling_config=config).bind(), name="custom", route_prefix="/c")
    wait_for(lambda: settled_at("custom", "Slow", 2), timeout_s=60, message="two replicas")
    decision = deployment_status("custom", "Slow").autoscaling["last_decision"]
    assert decision["policy"].endswith(":five_replicas")
    assert decision["curr_num_replicas"] == 2


def test_a_policy_defined_in_a_function_travels_with_the_app(clean) -> None:
    def three(ctx: AutoscalingContext) -> tuple[int, dict[str, Any]]:
        return 3, {}

    config = fast(min_replicas=1, max_replicas=4, policy={"policy_function": three})
    serve.run(Slow.options(autoscaling_config=config).bind(), name="local", route_prefix="/l")
    wait_for(lambda: settled_at("local", "Slow", 3), timeout_s=60, message="three replicas")


def test_a_policy_that_raises_does_not_stop_the_deployment(clean) -> None:
    config = fast(policy={"policy_function": broken_policy})
    serve.run(Slow.options(autoscaling_config=config).bind(), name="broken", route_prefix="/x")
    with Load(f"{clean.url}/x", threads=4) as load:
        # The default policy decides instead: the load still grows the deployment.
        wait_for(lambda: running("broken", "Slow") >= 2, timeout_s=60, message="an upscale")
    assert load.failures == []
    assert deployment_status("broken", "Slow").status.value in ("HEALTHY", "UPSCALING")
    assert serve.status().applications["broken"].status.value == "RUNNING"
