"""The caller side of autoscaling: routers' demand sampled and reported to the controller,
at once when a request waits for a deployment scaled to zero."""

from __future__ import annotations

import asyncio
from typing import Any

from test_router import DEP, FakePool, run, until

from schooner.router import demand as demand_module
from schooner.router.demand import DemandReporter
from schooner.router.router import DELETED, Router
from schooner.rpc.messages import ReplicaInfo, ReplicaSet


class FakeController:
    is_open = True

    def __init__(self) -> None:
        self.reports: list[tuple[str, dict[str, list[tuple[float, float]]], bool]] = []

    def notify(self, method: str, *args: Any) -> None:
        assert method == "report_demand"
        source, report, urgent = args
        self.reports.append((source, report, urgent))


def autoscaled(*ids: str) -> ReplicaSet:
    return ReplicaSet(tuple(ReplicaInfo(i, i, DEP) for i in ids), 5, -1, autoscaling=True)


def setup() -> tuple[Router, FakeController, DemandReporter]:
    router = Router(DEP, FakePool())  # type: ignore[arg-type]
    controller = FakeController()
    reporter = DemandReporter(lambda: controller, lambda: [router])  # type: ignore[arg-type,return-value]

    def on_demand(cold: bool) -> None:
        reporter.wake() if cold else reporter.watch()

    router.on_demand = on_demand
    return router, controller, reporter


def test_a_request_waiting_at_zero_replicas_is_reported_at_once() -> None:
    async def body() -> None:
        router, controller, reporter = setup()
        router.update(autoscaled())  # scaled to zero
        call = asyncio.ensure_future(router.call("handle_request"))
        await until(lambda: bool(controller.reports), "an urgent report")
        source, report, urgent = controller.reports[0]
        assert urgent
        assert report == {DEP.key: [(report[DEP.key][0][0], 1.0)]}
        assert source == reporter.source
        call.cancel()
        reporter.stop()

    run(body)


def test_in_flight_and_queued_requests_are_sampled_and_pushed(monkeypatch: Any) -> None:
    monkeypatch.setattr(demand_module, "SAMPLE_S", 0.001)

    async def body() -> None:
        router, controller, reporter = setup()
        reporter._push_s = 0.0  # every sample is pushed
        router.update(autoscaled("r1"))
        calls = [asyncio.ensure_future(router.call("handle_request")) for _ in range(7)]
        # 5 in flight at r1 (its max_ongoing_requests) and 2 queued: 7 in all.
        for _ in range(200):  # the sampling timer runs every millisecond here
            if any(r[1].get(DEP.key, [(0, 0)])[-1][1] == 7.0 for r in controller.reports):
                break
            await asyncio.sleep(0.01)
        else:
            raise AssertionError(f"no report of 7 requests: {controller.reports[-3:]}")
        assert not any(urgent for _, _, urgent in controller.reports)
        for call in calls:
            call.cancel()
        reporter.stop()

    run(body)


def test_routers_of_deployments_not_autoscaled_are_not_sampled() -> None:
    async def body() -> None:
        router, controller, _ = setup()
        router.update(ReplicaSet((), 5, -1))
        call = asyncio.ensure_future(router.call("handle_request"))
        await asyncio.sleep(0.3)
        assert controller.reports == []
        call.cancel()

    run(body)


def test_a_deleted_deployment_stops_being_reported() -> None:
    async def body() -> None:
        router, _, reporter = setup()
        router.update(autoscaled("r1"))
        assert router.autoscaling
        router.update(DELETED)
        assert not router.autoscaling
        reporter.stop()

    run(body)
