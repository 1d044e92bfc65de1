"""A rollout driven from Python, judged on handle calls: `serve.rollout()` with traffic
that only reaches the application through `serve.get_app_handle()` (no HTTP), so the
checks read what the ingress replicas report."""

from __future__ import annotations

import threading
from collections import Counter
from collections.abc import Iterator
from typing import Any

import pytest
from helpers import wait_for

import schooner as serve


@serve.deployment
class Version:
    def __init__(self, name: str, fail: bool = False) -> None:
        self.name, self.fail = name, fail

    async def __call__(self) -> str:
        if self.fail:
            raise RuntimeError(f"{self.name} is broken")
        return self.name


class HandleTraffic:
    """Calls through the owner's app handle from a background thread."""

    def __init__(self, app: str) -> None:
        self.handle = serve.get_app_handle(app)
        self.answers: list[str] = []
        self.failures: Counter[str] = Counter()
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def _run(self) -> None:
        while not self._stop.is_set():
            try:
                self.answers.append(self.handle.remote().result(timeout_s=10))
            except Exception as exc:
                self.failures[type(exc).__name__] += 1

    def __enter__(self) -> HandleTraffic:
        self._thread.start()
        wait_for(lambda: len(self.answers) > 5, message="handle traffic to get going")
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join(15)


@pytest.fixture(scope="module")
def versions(_module_instances: Any, request: pytest.FixtureRequest) -> Iterator[None]:
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("SCHOONER_METRICS_REPORT_INTERVAL_S", "0.3")  # the instance's processes
        _module_instances.use("embedded", request)
    serve.run(Version.bind("v1"), name="owner", route_prefix=None)
    serve.run(Version.bind("v2"), name="next", route_prefix=None)
    serve.run(Version.bind("broken", fail=True), name="broken", route_prefix=None)
    yield
    for name in list(serve.status().applications):
        serve.delete(name, _blocking=False)
    wait_for(lambda: not serve.status().applications, timeout_s=60, message="apps deleted")


def test_a_rollout_from_python_rolls_back_then_succeeds_on_handle_traffic(
    versions: None,
) -> None:
    with HandleTraffic("owner") as traffic:
        bad = serve.rollout(
            "owner", to="broken", steps=[50, 100], interval_s=2, max_error_rate=0.05,
            min_requests=5,
        )  # fmt: skip
        assert serve.get_traffic("owner")["split"] == {"owner": 0.5, "broken": 0.5}
        status = bad.wait(timeout_s=30)
        assert status.state == "ROLLED_BACK", status.message
        assert "error rate" in status.message and "max 0.05" in status.message
        assert status.history and status.history[-1].outcome == "rolled_back"
        assert serve.get_traffic("owner")["split"] == {}
        assert traffic.failures["RuntimeError"] > 0  # the broken version did answer some
        mark = len(traffic.answers)
        wait_for(lambda: len(traffic.answers) > mark + 50, message="more answers")
        assert set(traffic.answers[mark:]) == {"v1"}

        good = serve.rollout(
            "owner", to="next", steps=[50, 100], interval_s=1.5, max_error_rate=0.05,
            min_requests=5,
        )  # fmt: skip
        status = good.wait(timeout_s=30)
        assert status.state == "SUCCEEDED", status.message
        assert [check.outcome for check in status.history if check.outcome != "waiting"] == [
            "passed",
            "passed",
        ]
        assert serve.get_traffic("owner")["split"] == {"next": 1.0}
        assert serve.get_rollout("owner") is not None
        mark = len(traffic.answers)
        failures_before = sum(traffic.failures.values())
        wait_for(lambda: len(traffic.answers) > mark + 50, message="more answers")
        assert set(traffic.answers[mark:]) == {"v2"}
        assert sum(traffic.failures.values()) == failures_before
